//! The end of a runner's life: drain with a deadline, then report.

use std::time::{Duration, Instant};

use crate::runner::Runner;
use crate::stats::Stats;

/// What [`Runner::shutdown`] did: whether everything finished in time, and
/// which tasks were cut off if not.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Every accepted task ended (succeeded, failed, panicked, timed out or
    /// was skipped) before the deadline.
    pub drained: bool,
    /// Tasks that ended while the shutdown waited, whatever their outcome.
    pub finished_during_drain: u64,
    /// The names of the tasks stopped by the deadline or never started, in
    /// the order they were cut off. Empty when `drained`.
    pub cut_off: Vec<String>,
    /// How long the shutdown took.
    pub elapsed: Duration,
    /// The runner's counters once it was over.
    pub stats: Stats,
}

/// After the deadline, cut-off groups end at their next poll; this is how
/// long the shutdown waits for them to record what they cut off. Blocking
/// threads are not waited for: they cannot be interrupted.
const CUT_OFF_BOOKKEEPING: Duration = Duration::from_secs(1);

pub(crate) async fn shutdown(runner: &Runner, grace: Duration) -> ShutdownReport {
    let started = Instant::now();
    runner.close();
    let before = finished(&runner.stats());
    tracing::info!(
        pending = runner.stats().pending,
        running = runner.stats().running,
        "draining background tasks for up to {grace:?}"
    );
    let waited = tokio::time::timeout(grace, runner.tracker().wait()).await;
    // Everything may also have ended because the tasks were cut off early
    // (a second signal): that is not a drain.
    let drained = waited.is_ok() && !runner.inner.deadline.is_set();
    if !drained {
        runner.cut_off_now();
        let _ = tokio::time::timeout(CUT_OFF_BOOKKEEPING, runner.tracker().wait()).await;
    }
    let stats = runner.stats();
    let cut_off = std::mem::take(
        &mut *runner
            .inner
            .cut_off
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let report = ShutdownReport {
        drained,
        finished_during_drain: finished(&stats) - before,
        cut_off,
        elapsed: started.elapsed(),
        stats,
    };
    if report.drained {
        tracing::info!(
            finished = report.finished_during_drain,
            succeeded = stats.succeeded,
            failed = stats.failed,
            panicked = stats.panicked,
            timed_out = stats.timed_out,
            "background tasks drained"
        );
    } else {
        tracing::warn!(
            finished = report.finished_during_drain,
            cut_off = report.cut_off.len(),
            tasks = ?report.cut_off,
            "shutdown deadline passed; background tasks cut off"
        );
    }
    report
}

fn finished(stats: &Stats) -> u64 {
    stats.succeeded + stats.failed + stats.panicked + stats.timed_out + stats.skipped
}
