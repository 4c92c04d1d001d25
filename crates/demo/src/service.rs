//! The two ways the demo runs: the service, and a worker-only process.

use std::io::Write;

use epilogue::durable::{Store, Worker, WorkerReport};

use crate::app::{self, Files};
use crate::config::{Config, TaskFlags};
use crate::durable;

/// The service: runs until Ctrl-C or SIGTERM, then drains and logs what
/// ran, per task name.
///
/// # Errors
///
/// A message for stderr when it cannot start.
pub async fn serve(config: Config) -> Result<(), String> {
    // Installed before the runner is built: it takes its histograms' handles.
    let metrics = crate::install_metrics()?;
    let runner = config.runner();
    let flags = &config.tasks;
    // The error names the directory or file that failed.
    let files = Files::open(flags).map_err(|e| e.to_string())?;
    let store = open_store(flags).await?;
    let worker = (flags.workers > 0).then(|| start_worker(&store, &files, flags));
    let state = app::State::new(files, runner.clone(), metrics, store.clone());
    let listener = crate::listen(&config.addr).await?;

    // The durable worker stops fetching on the same signal as the server,
    // and drains beside it.
    let grace = flags.shutdown_grace();
    let worker = tokio::spawn(async move {
        let worker = worker?;
        epilogue::shutdown_signal().await;
        Some(worker.shutdown(grace).await)
    });
    let report = epilogue::axum::serve(listener, app::router(state), runner)
        .durable(store)
        .grace(grace)
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
    if let Ok(Some(durable)) = worker.await {
        log_worker_report(&durable);
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

/// `epilogue-demo worker`: durable tasks only, no listener.
///
/// # Errors
///
/// A message for stderr when it cannot start.
pub async fn work(flags: &TaskFlags) -> Result<(), String> {
    let files = Files::open(flags).map_err(|e| e.to_string())?;
    let store = open_store(flags).await?;
    let worker = start_worker(&store, &files, flags);
    worker.ready().await;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "worker ready")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    epilogue::shutdown_signal().await;
    log_worker_report(&worker.shutdown(flags.shutdown_grace()).await);
    Ok(())
}

async fn open_store(flags: &TaskFlags) -> Result<Store, String> {
    let url = flags.store_url();
    // The URL is not repeated: it may hold a password.
    Store::connect(&url)
        .await
        .map_err(|e| format!("cannot open the durable task store (--store): {e}"))
}

fn start_worker(store: &Store, files: &Files, flags: &TaskFlags) -> Worker {
    let concurrency = flags.workers.max(1);
    durable::worker(
        store,
        files.outbox.clone(),
        files.uploads.clone(),
        concurrency,
    )
    .start()
}

fn log_worker_report(report: &WorkerReport) {
    tracing::info!(
        drained = report.drained,
        succeeded = report.succeeded,
        retried = report.retried,
        dead = report.dead,
        released = report.released,
        "durable worker stopped"
    );
}
