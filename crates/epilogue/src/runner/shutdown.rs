//! The end of a runner's life: drain with a deadline, then report.

use std::time::{Duration, Instant};

use super::state::State;
use crate::stats::Stats;

/// What [`Runner::shutdown`](super::Runner::shutdown) did: whether everything finished in time, and
/// which tasks were cut off if not.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Every accepted task ended (succeeded, failed, panicked, timed out or
    /// was skipped) before the deadline, and none was cut off.
    pub drained: bool,
    /// Tasks that ran to an end while the shutdown waited (succeeded, failed,
    /// panicked, timed out or skipped; the cut-off ones are in `cut_off`).
    pub finished_during_drain: u64,
    /// The names of the tasks stopped by a deadline or never started, in the
    /// order they were cut off, since the last report (groups started
    /// outside a runtime are cut off, and named, too). Empty when `drained`.
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

pub(super) async fn drain(state: &State, grace: Duration) -> ShutdownReport {
    let started = Instant::now();
    state.close();
    let before = state.stats();
    tracing::info!(
        pending = before.pending,
        running = before.running,
        "draining background tasks for up to {grace:?}"
    );
    // `timeout` saturates: a grace of `Duration::MAX` waits without end.
    let waited = tokio::time::timeout(grace, state.wait_idle()).await;
    if waited.is_err() {
        state.pass_deadline();
        let _ = tokio::time::timeout(CUT_OFF_BOOKKEEPING, state.wait_idle()).await;
    }
    // Drained: everything ended, and nothing was cut off on the way (by this
    // deadline, or by an earlier one such as a second signal).
    let cut_off = state.take_cut_off();
    let drained = waited.is_ok() && cut_off.is_empty();
    let stats = state.stats();
    let report = ShutdownReport {
        drained,
        finished_during_drain: finished(&stats) - finished(&before),
        cut_off,
        elapsed: started.elapsed(),
        stats,
    };
    if report.drained {
        tracing::info!(
            finished = report.finished_during_drain,
            succeeded = report.stats.succeeded,
            failed = report.stats.failed,
            panicked = report.stats.panicked,
            timed_out = report.stats.timed_out,
            "background tasks drained"
        );
    } else {
        tracing::warn!(
            finished = report.finished_during_drain,
            cut_off = report.cut_off.len(),
            tasks = %report.cut_off_by_name(),
            "shutdown deadline passed; background tasks cut off"
        );
    }
    report
}

impl ShutdownReport {
    /// The cut-off tasks counted by name, most first: `send_email ×120,
    /// write_in_file ×3`. One line however many were cut off.
    pub fn cut_off_by_name(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for name in &self.cut_off {
            match counts.iter_mut().find(|(n, _)| n == name) {
                Some((_, count)) => *count += 1,
                None => counts.push((name, 1)),
            }
        }
        counts.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
        counts
            .iter()
            .map(|(name, count)| format!("{name} ×{count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn finished(stats: &Stats) -> u64 {
    stats.succeeded + stats.failed + stats.panicked + stats.timed_out + stats.skipped
}
