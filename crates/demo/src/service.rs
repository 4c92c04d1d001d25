//! The two ways the demo runs: the service, and a worker-only process.

use std::io::Write;

use tokio::signal::unix::{signal, SignalKind};

use epilogue::{Runner, ShutdownReport};
use epilogue_durable::Store;

use crate::app::{self, Files};
use crate::config::{Config, TaskFlags, WorkerFlags};
use crate::durable::Registration;

/// The service: runs until Ctrl-C or SIGTERM, then drains and logs what
/// ran, per task name. The server, the in-memory tasks and the durable
/// ones drain within one grace period: the durable tasks run on the same
/// runner.
///
/// # Errors
///
/// A message for stderr when it cannot start.
pub async fn serve(config: Config) -> Result<(), String> {
    reopen_files_on_sighup();
    // Installed before the runner is built: it takes its histograms' handles.
    let metrics = crate::install_metrics()?;
    let runner = config.runner();
    let flags = &config.tasks;
    // The error names the directory or file that failed.
    let files = Files::open(flags).map_err(|e| e.to_string())?;
    let store = open_store(flags, &files, None, &runner).await?;
    let state = app::State::new(files, runner.clone(), metrics, store.clone());
    let listener = crate::listen(&config.addr).await?;
    let report = epilogue::axum::serve(listener, app::router(state), runner)
        .commit(store)
        .grace(flags.shutdown_grace())
        .await;
    log_report(&report);
    Ok(())
}

/// `epilogue-demo worker`: durable tasks only, no listener.
///
/// # Errors
///
/// A message for stderr when it cannot start.
pub async fn work(flags: &WorkerFlags) -> Result<(), String> {
    reopen_files_on_sighup();
    let runner = Runner::new();
    let files = Files::open(&flags.tasks).map_err(|e| e.to_string())?;
    let store = open_store(&flags.tasks, &files, flags.only.as_deref(), &runner).await?;
    store.ready().await;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "worker ready")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);
    let report = store
        .work_until_signal(&runner, flags.tasks.shutdown_grace())
        .await;
    log_report(&report);
    Ok(())
}

async fn open_store(
    flags: &TaskFlags,
    files: &Files,
    only: Option<&[String]>,
    runner: &Runner,
) -> Result<Store, String> {
    // The URL is never repeated: it may hold a password.
    let cannot = |e: epilogue_durable::DurableError| {
        format!("cannot open the durable task store (--store): {e}")
    };
    let store = Store::open(&flags.store_url()).await.map_err(cannot)?;
    Registration {
        outbox: files.outbox.clone(),
        uploads: files.uploads.clone(),
        concurrency: flags.workers,
        timeout: flags.durable_timeout(),
        tick_every: flags.tick_every(),
        only,
    }
    .register(store)
    .start(runner)
    .await
    .map_err(cannot)
}

/// SIGHUP (logrotate's `postrotate`): the data files are looked at before
/// their next write, and opened again if moved or deleted; otherwise that
/// happens within a second.
pub fn reopen_files_on_sighup() {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!("cannot listen for SIGHUP: {error}");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            crate::tasks::reopen_files();
            tracing::info!("SIGHUP: the data files are opened again at their paths");
        }
    });
}

/// One line per task name, however many tasks ran: what an on-call engineer
/// reads after a deploy. Durable tasks are counted with the others, by
/// their kind.
pub fn log_report(report: &ShutdownReport) {
    let stats = &report.stats;
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
}
