//! `epilogue-demo-actix`: `epilogue-demo` on actix-web. The same routes,
//! flags, files and promises up to the contract's "Promises" (see
//! crates/demo-actix/README.md); run it with
//! `cargo run --release -p epilogue-demo-actix`.

mod app;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use epilogue::Runner;
use epilogue_demo::tasks::{AuditLog, Outbox};

/// Background tasks for actix-web services: the demo of epilogue.
#[derive(clap::Parser, Debug)]
#[command(version, about)]
struct Config {
    /// Listen address, HOST:PORT; port 0 picks a free port.
    #[arg(long, env = "EPILOGUE_ADDR", default_value = "127.0.0.1:3000")]
    addr: String,

    /// Where outbox.jsonl and log.txt are written (created if missing).
    #[arg(long, env = "EPILOGUE_DATA_DIR", default_value = "./data")]
    data_dir: std::path::PathBuf,

    /// Simulated time to send one email (an async sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_EMAIL_DELAY_MS", default_value_t = 0)]
    email_delay_ms: u64,

    /// Simulated blocking time of write_in_file (a thread sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_LOG_DELAY_MS", default_value_t = 0)]
    log_delay_ms: u64,

    /// Background groups running at once [default: the library's, 4096].
    #[arg(long, env = "EPILOGUE_MAX_RUNNING", value_parser = clap::value_parser!(u64).range(1..))]
    max_running: Option<u64>,

    /// Accepted groups waiting to run; past it, new requests get 503
    /// [default: the library's, 16384].
    #[arg(long, env = "EPILOGUE_MAX_PENDING")]
    max_pending: Option<u64>,

    /// How long SIGTERM/Ctrl-C waits for accepted tasks, in seconds.
    #[arg(long, env = "EPILOGUE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    shutdown_grace_s: u64,
}

fn main() -> ExitCode {
    epilogue_demo::init_logging();
    epilogue_demo::raise_open_files_limit();
    let config = Config::parse();
    // A multi-threaded runtime for the background work (and the signals):
    // actix-web's workers each run a single-threaded runtime of their own.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return exit(Err(format!("cannot start tokio: {error}"))),
    };
    let result = runtime.block_on(serve(config));
    // As in epilogue-demo: a blocking task cut off at the deadline runs on
    // in its thread; exiting now keeps the report true.
    runtime.shutdown_background();
    exit(result)
}

fn exit(result: Result<(), String>) -> ExitCode {
    epilogue_demo::exit("epilogue-demo-actix", result)
}

async fn serve(config: Config) -> Result<(), String> {
    epilogue_demo::service::reopen_files_on_sighup();
    let runner = runner(&config);
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let files = app::Files {
        outbox: Outbox::open(dir, Duration::from_millis(config.email_delay_ms))
            .map_err(|e| e.to_string())?,
        log: AuditLog::open(dir, Duration::from_millis(config.log_delay_ms))
            .map_err(|e| e.to_string())?,
    };
    let listener = epilogue_demo::listen(&config.addr)
        .await?
        .into_std()
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let grace = Duration::from_secs(config.shutdown_grace_s);
    let app_runner = runner.clone();
    let server = actix_web::HttpServer::new(move || app::app(files.clone(), app_runner.clone()))
        // `epilogue::actix::run` takes the signals, and stops the server
        // and the runner within one grace period.
        .disable_signals()
        .shutdown_timeout(config.shutdown_grace_s)
        .listen(listener)
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?
        .run();
    let report = epilogue::actix::run(server, runner, grace)
        .await
        .map_err(|e| format!("the server failed: {e}"))?;
    epilogue_demo::service::log_report(&report);
    Ok(())
}

/// The runner of the flags, on this (multi-threaded) runtime.
fn runner(config: &Config) -> Runner {
    let mut builder = Runner::builder().runtime(tokio::runtime::Handle::current());
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = config.max_running {
        builder = builder.max_running(to_usize(n));
    }
    if let Some(n) = config.max_pending {
        builder = builder.max_pending(to_usize(n));
    }
    builder.build()
}
