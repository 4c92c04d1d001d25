//! The command line of the demo's README: every flag has an environment
//! variable of the same meaning.

use std::path::PathBuf;
use std::time::Duration;

use epilogue::Runner;

/// Background tasks for Rust web services: the demo of epilogue.
#[derive(clap::Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Config {
    /// Run durable tasks only, with no HTTP listener.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Listen address, HOST:PORT; port 0 picks a free port.
    #[arg(long, env = "EPILOGUE_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: String,

    #[command(flatten)]
    pub tasks: TaskFlags,

    /// Background groups running at once [default: the library's, 4096].
    #[arg(long, env = "EPILOGUE_MAX_RUNNING", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_running: Option<u64>,

    /// Accepted groups waiting to run; past it, new requests get 503
    /// [default: the library's, 16384].
    #[arg(long, env = "EPILOGUE_MAX_PENDING")]
    pub max_pending: Option<u64>,
}

/// What the service and `worker` processes both take.
#[derive(clap::Args, Debug, Clone)]
pub struct TaskFlags {
    /// Where outbox.jsonl, log.txt, uploads and the default store are
    /// written (created if missing).
    #[arg(long, env = "EPILOGUE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Simulated time to send one email (an async sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_EMAIL_DELAY_MS", default_value_t = 0)]
    pub email_delay_ms: u64,

    /// Simulated blocking time of write_in_file (a thread sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_LOG_DELAY_MS", default_value_t = 0)]
    pub log_delay_ms: u64,

    /// How long SIGTERM/Ctrl-C waits for accepted tasks, in seconds.
    #[arg(long, env = "EPILOGUE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,

    /// Where durable tasks are kept: sqlite://PATH, or
    /// postgres://USER:PASS@HOST:PORT/DB for several processes or machines
    /// [default: sqlite://DATA_DIR/tasks.db].
    #[arg(long, env = "EPILOGUE_STORE", hide_env_values = true)]
    pub store: Option<String>,

    /// Durable tasks run at once by this process; 0 = enqueue only.
    #[arg(long, env = "EPILOGUE_WORKERS", default_value_t = 4)]
    pub workers: usize,

    /// A periodic durable task `tick` (an email, to null, "tick") once
    /// every N seconds across every process on the store; 0 = off.
    #[arg(long, env = "EPILOGUE_TICK_EVERY_S", default_value_t = 0)]
    pub tick_every_s: u64,

    /// How long one attempt of a durable task may run, in seconds; past
    /// it the attempt fails (and is retried).
    #[arg(long, env = "EPILOGUE_DURABLE_TIMEOUT_S", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub durable_timeout_s: u64,
}

/// `epilogue-demo worker`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerFlags {
    #[command(flatten)]
    pub tasks: TaskFlags,

    /// Runs only these durable task kinds (comma-separated: welcome_durable,
    /// recovering_durable, process_file, tick), as an older release would
    /// during a rolling deploy; tasks of other kinds stay queued.
    #[arg(long, value_delimiter = ',', value_parser = kind)]
    pub only: Option<Vec<String>>,
}

/// A durable task kind of the demo.
fn kind(name: &str) -> Result<String, String> {
    if crate::durable::KINDS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "expected one of {}",
            crate::durable::KINDS.join(", ")
        ))
    }
}

/// The demo's subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Runs durable tasks from the store, with no HTTP listener; prints
    /// "worker ready" once it is fetching, drains on SIGTERM.
    Worker(WorkerFlags),
}

impl Config {
    pub fn runner(&self) -> Runner {
        let mut builder = Runner::builder();
        if let Some(n) = self.max_running {
            builder = builder.max_running(to_usize(n));
        }
        if let Some(n) = self.max_pending {
            builder = builder.max_pending(to_usize(n));
        }
        builder.build()
    }
}

impl TaskFlags {
    pub fn email_delay(&self) -> Duration {
        Duration::from_millis(self.email_delay_ms)
    }

    pub fn log_delay(&self) -> Duration {
        Duration::from_millis(self.log_delay_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    /// `--tick-every-s`, unless 0.
    pub fn tick_every(&self) -> Option<Duration> {
        (self.tick_every_s > 0).then(|| Duration::from_secs(self.tick_every_s))
    }

    pub fn durable_timeout(&self) -> Duration {
        Duration::from_secs(self.durable_timeout_s)
    }

    /// `--store`, or the SQLite file under the data directory.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("tasks.db").display()))
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
