//! `epilogue-demo`: the five background-task patterns of the reference
//! documentation as one small service. Its behaviour is fixed by
//! its README (crates/demo/README.md); run it with `cargo run --release -p epilogue-demo`.

use std::process::ExitCode;

use clap::Parser;

use epilogue_demo::app;
use epilogue_demo::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    epilogue_demo::init_logging();
    let config = Config::parse();
    epilogue_demo::exit("epilogue-demo", run(config).await)
}

async fn run(config: Config) -> Result<(), String> {
    // Installed before the runner is built: it takes its histograms' handles.
    let metrics = epilogue_demo::install_metrics()?;
    let runner = config.runner();
    // The error names the directory or file that failed.
    let state = app::State::open(&config, runner.clone(), metrics).map_err(|e| e.to_string())?;
    let listener = epilogue_demo::listen(&config.addr).await?;

    let app = app::router(state);
    let report = epilogue::axum::serve(listener, app, runner)
        .grace(config.shutdown_grace())
        .await;
    let stats = &report.stats;
    // One line per task name, however many tasks ran: what an on-call
    // engineer reads after a deploy.
    for (task, counts) in &stats.by_task {
        tracing::info!(
            task,
            finished = counts.finished(),
            failed = counts.failed + counts.panicked + counts.timed_out,
            cut_off = counts.cut_off,
            "background tasks of this name"
        );
    }
    tracing::info!(
        drained = report.drained,
        succeeded = stats.succeeded,
        failed = stats.failed,
        panicked = stats.panicked,
        cut_off = stats.cut_off,
        "stopped"
    );
    Ok(())
}
