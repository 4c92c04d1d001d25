//! `bench-baseline`: the comparator of epilogue's load benchmarks.
//!
//! It is `POST /response/single` of `epilogue-demo` written the way a Rust
//! user would write it without epilogue: bare axum 0.8, the same JSON input
//! handling, the same middleware (tower-http `TraceLayer` and
//! `CompressionLayer`), the same tracing setup, and the same
//! `send_email_notification` task started with `tokio::spawn`
//! (`--task spawn`, the default) or not at all (`--task none`, the ceiling).
//!
//! The input extractor (`Credentials`) and the task (`send_email_notification`
//! and its `Outbox`) are the demo's own, from its library half
//! (`epilogue_demo::input`, `epilogue_demo::tasks`): a comparator with
//! different code would not measure the library. The rest of this file
//! follows the demo's `main.rs` and `app.rs` line for line, minus epilogue.
//!
//! Same command line as the demo (`--addr`, `--data-dir`,
//! `--email-delay-ms`); prints `listening on http://HOST:PORT` on stdout;
//! on SIGTERM or Ctrl-C it stops serving and returns from `main` (exit 0),
//! dropping whatever spawned task is still running: that is what
//! `tokio::spawn` gives.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use axum::extract::State as Extract;
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;

use epilogue_demo::app::{created, healthz, with_middleware, Created};
use epilogue_demo::input::Credentials;
use epilogue_demo::tasks::{send_email_notification, Outbox};

/// The demo's `POST /response/single` in bare axum, with `tokio::spawn` or no task.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    /// Listen address, HOST:PORT; port 0 picks a free port.
    #[arg(long, env = "EPILOGUE_ADDR", default_value = "127.0.0.1:3000")]
    addr: String,

    /// Where outbox.jsonl is written (created if missing).
    #[arg(long, env = "EPILOGUE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Simulated time to send one email (an async sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_EMAIL_DELAY_MS", default_value_t = 0)]
    email_delay_ms: u64,

    /// `spawn`: the task runs with `tokio::spawn`; `none`: no task at all (the ceiling).
    #[arg(long, env = "BENCH_BASELINE_TASK", value_enum, default_value_t = TaskMode::Spawn)]
    task: TaskMode,
}

impl Config {
    fn email_delay(&self) -> Duration {
        Duration::from_millis(self.email_delay_ms)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TaskMode {
    Spawn,
    None,
}

#[derive(Clone)]
struct State {
    outbox: Outbox,
    task: TaskMode,
}

#[tokio::main]
async fn main() -> ExitCode {
    // The demo's own logging setup, so that both log the same way.
    epilogue_demo::init_logging();
    let config = Config::parse();
    epilogue_demo::exit("bench-baseline", run(config).await)
}

async fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    // The error names the file that failed.
    let outbox = Outbox::open(&config.data_dir, config.email_delay()).map_err(|e| e.to_string())?;
    let state = State {
        outbox,
        task: config.task,
    };
    let listener = epilogue_demo::listen(&config.addr).await?;

    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

fn router(state: State) -> Router {
    // The demo's own middleware and health check: the comparison is only
    // fair if everything but the task handling is the same.
    let routes = Router::new()
        .route("/response/single", post(response_single))
        .route("/healthz", get(healthz))
        .with_state(state);
    with_middleware(routes)
}

/// `POST /response/single`: 201 `{"message":"Email sent"}`, and the email
/// sent in the background with `tokio::spawn`, as users do without epilogue.
async fn response_single(Extract(state): Extract<State>, user: Credentials) -> Created {
    if state.task == TaskMode::Spawn {
        tokio::spawn(async move {
            let sent = send_email_notification(
                state.outbox,
                Some(user.email),
                "Thank you for registering.",
            )
            .await;
            if let Err(error) = sent {
                tracing::warn!(task = "send_email_notification", %error, "background task failed");
            }
        });
    }
    created("Email sent")
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
