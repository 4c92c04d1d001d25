//! What the runner has done so far: counters, gauges and their snapshot.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A snapshot of a [`Runner`](crate::Runner)'s counters, from
/// [`Runner::stats`](crate::Runner::stats).
///
/// The outcome counters count **tasks**; `retried` counts extra attempts,
/// `refused` and `unadmitted` count requests (groups), the `groups_*` and
/// `blocking_in_use` gauges count groups and threads, and the `*_us_total`
/// fields are microseconds. Once a runner is idle,
/// `accepted = succeeded + failed + panicked + timed_out + skipped + cut_off + abandoned`;
/// while it works, `running` and `pending` hold the difference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Tasks accepted: handed to the runner ([`Runner::spawn`](crate::Runner::spawn),
    /// or a request whose handler answered), and the tasks counted as
    /// `abandoned`, so that the outcomes add up to it.
    pub accepted: u64,
    /// Tasks running now.
    pub running: u64,
    /// Tasks accepted and not started yet: waiting for their response body to
    /// be sent, for a running slot, or for the task before them in their group.
    pub pending: u64,
    /// Tasks that returned `()` or `Ok(())`.
    pub succeeded: u64,
    /// Tasks that returned an `Err` (after their last retry).
    pub failed: u64,
    /// Tasks that panicked (after their last retry).
    pub panicked: u64,
    /// Tasks stopped by their timeout, their own or the runner's (after
    /// their last retry).
    pub timed_out: u64,
    /// Tasks skipped because an earlier task of a `stop_on_error` group failed.
    pub skipped: u64,
    /// Tasks stopped, or never started, because the shutdown deadline passed.
    pub cut_off: u64,
    /// Tasks of a request that never ran because its handler did not answer:
    /// its future was dropped (a timeout, a server that cancels a request
    /// whose client left) or its service failed; route-level tasks and the
    /// tasks added through [`RequestTasks`](crate::http::RequestTasks) alike.
    /// Also the `RequestTasks` tasks of a handler that answered with a
    /// status of 400 or more (a handler that panicked under a catch-panic
    /// layer answers 500), unless marked `always`, and tasks added to a
    /// request already answered. Counted as accepted too. (The route-level
    /// tasks of a request that was answered with an error are not counted:
    /// they were never promised.)
    pub abandoned: u64,
    /// Extra attempts made by tasks with a [`retry`](crate::BackgroundTask::retry) policy.
    pub retried: u64,
    /// Requests (or [`Runner::spawn`](crate::Runner::spawn) calls) refused
    /// because the runner was full or shutting down. Counts groups, not tasks.
    pub refused: u64,
    /// Responses that carried tasks on a route that did not admit its
    /// requests before the handler ran (no
    /// [`Admitted`](crate::axum::Admitted) or `RequestTasks`). They are
    /// admitted when the response comes, within the runner's bounds; when
    /// it is full, the response is replaced by a `503` and its tasks
    /// dropped (and counted in `refused`). A warning is logged the first
    /// time.
    pub unadmitted: u64,
    /// Groups running now (each holds one of `max_running` permits).
    pub groups_running: u64,
    /// Groups admitted and not finished: running, waiting for a running
    /// permit, or still being answered. At most `max_running + max_pending`.
    pub groups_admitted: u64,
    /// Plain-`fn` tasks on the blocking pool now (at most `max_blocking`).
    pub blocking_in_use: u64,
    /// Time tasks spent between acceptance and their start, summed, in microseconds.
    pub wait_us_total: u64,
    /// Time tasks spent running, summed, in microseconds.
    pub run_us_total: u64,
    /// Polls of async tasks that took more than 10 ms: each stalled the
    /// other groups of its lane (see [`TaskStats::long_polls`]).
    pub long_polls: u64,
    /// The outcomes of the tasks of each name, and the last failure of each.
    /// At most [`MAX_TASK_NAMES`] names are kept apart; the tasks of any
    /// further name are counted under `"(other)"`.
    pub by_task: BTreeMap<String, TaskStats>,
}

/// How many task names [`Stats::by_task`] (and the `task` label of the
/// metrics) keeps apart: a bound on memory and on the metrics' cardinality
/// when names are made at run time.
pub const MAX_TASK_NAMES: usize = 256;

/// The name under which the tasks past [`MAX_TASK_NAMES`] are counted.
pub const OTHER_TASKS: &str = "(other)";

/// What the tasks of one name did, in [`Stats::by_task`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TaskStats {
    /// Tasks that returned `()` or `Ok(())`.
    pub succeeded: u64,
    /// Tasks that returned an `Err` (after their last retry).
    pub failed: u64,
    /// Tasks that panicked (after their last retry).
    pub panicked: u64,
    /// Tasks stopped by their timeout (after their last retry).
    pub timed_out: u64,
    /// Tasks stopped, or never started, because the shutdown deadline passed.
    pub cut_off: u64,
    /// Polls of these tasks that took more than 10 ms. A runner's lane polls
    /// many groups on one tokio task, so such a poll (blocking work in an
    /// `async fn`) stalls all of them; the first one of each name is logged
    /// at WARN.
    pub long_polls: u64,
    /// The longest of these polls, in microseconds (0 if none).
    pub longest_poll_us: u64,
    /// The last failure (an error, a panic or a timeout, after the last
    /// retry), if any.
    pub last_error: Option<LastError>,
}

impl TaskStats {
    /// Tasks that ran to an end: succeeded, failed, panicked or timed out.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.panicked + self.timed_out
    }
}

/// A task's last failure: when, and what its error (or panic message) said.
/// Never its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LastError {
    /// When it failed; serialised as milliseconds since the Unix epoch.
    #[cfg_attr(feature = "serde", serde(serialize_with = "unix_ms"))]
    pub at: SystemTime,
    /// The error's `Display`, the panic message, or `timed out`.
    pub error: String,
}

#[cfg(feature = "serde")]
fn unix_ms<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    serializer.serialize_u64(ms)
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    Failed,
    Panicked,
    TimedOut,
}

impl Outcome {
    pub(crate) fn is_success(self) -> bool {
        self == Outcome::Succeeded
    }
}

/// The live counters behind [`Stats`]. Relaxed atomics: each counter is
/// exact, a snapshot of several is not a single instant, which is what a
/// dashboard needs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    running: AtomicU64,
    pending: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    skipped: AtomicU64,
    cut_off: AtomicU64,
    abandoned: AtomicU64,
    retried: AtomicU64,
    refused: AtomicU64,
    unadmitted: AtomicU64,
    wait_us_total: AtomicU64,
    run_us_total: AtomicU64,
    long_polls: AtomicU64,
    by_task: Mutex<BTreeMap<Cow<'static, str>, TaskStats>>,
    #[cfg(feature = "metrics")]
    histograms: Histograms,
}

/// The histograms recorded as tasks run (the `metrics` feature); the rest
/// is copied from a snapshot by `Runner::record_metrics`. Their handles are
/// taken when the runner is built.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Histograms {
    wait: metrics::Histogram,
    run: metrics::Histogram,
}

#[cfg(feature = "metrics")]
impl Default for Histograms {
    fn default() -> Self {
        Self {
            wait: metrics::histogram!("epilogue_task_wait_seconds"),
            run: metrics::histogram!("epilogue_task_run_seconds"),
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            accepted: self.accepted.load(Relaxed),
            running: self.running.load(Relaxed),
            pending: self.pending.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            panicked: self.panicked.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            cut_off: self.cut_off.load(Relaxed),
            abandoned: self.abandoned.load(Relaxed),
            retried: self.retried.load(Relaxed),
            refused: self.refused.load(Relaxed),
            unadmitted: self.unadmitted.load(Relaxed),
            groups_running: 0,
            groups_admitted: 0,
            blocking_in_use: 0,
            wait_us_total: self.wait_us_total.load(Relaxed),
            run_us_total: self.run_us_total.load(Relaxed),
            long_polls: self.long_polls.load(Relaxed),
            by_task: self
                .lock_by_task()
                .iter()
                .map(|(name, stats)| (name.to_string(), stats.clone()))
                .collect(),
        }
    }

    fn lock_by_task(&self) -> std::sync::MutexGuard<'_, BTreeMap<Cow<'static, str>, TaskStats>> {
        self.by_task.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Updates the counts of `name`'s tasks: under its own name, or under
    /// [`OTHER_TASKS`] past [`MAX_TASK_NAMES`].
    // `&Cow`, not `&str`: a name borrowed for `'static` is kept without a copy.
    #[allow(clippy::ptr_arg)]
    fn of_task(&self, name: &Cow<'static, str>, update: impl FnOnce(&mut TaskStats)) {
        let mut by_task = self.lock_by_task();
        if let Some(stats) = by_task.get_mut(name.as_ref()) {
            return update(stats);
        }
        let key = if by_task.len() < MAX_TASK_NAMES {
            name.clone()
        } else {
            Cow::Borrowed(OTHER_TASKS)
        };
        update(by_task.entry(key).or_default());
    }

    /// The last failure of `name`'s tasks.
    // `&Cow`, not `&str`: a name borrowed for `'static` is kept without a copy.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn failure(&self, name: &Cow<'static, str>, error: String) {
        self.of_task(name, |stats| {
            stats.last_error = Some(LastError {
                at: SystemTime::now(),
                error,
            })
        });
    }

    pub(crate) fn accepted(&self, tasks: u64) {
        self.accepted.fetch_add(tasks, Relaxed);
        self.pending.fetch_add(tasks, Relaxed);
    }

    pub(crate) fn started(&self, waited: Duration) {
        self.pending.fetch_sub(1, Relaxed);
        self.running.fetch_add(1, Relaxed);
        self.wait_us_total
            .fetch_add(waited.as_micros() as u64, Relaxed);
        #[cfg(feature = "metrics")]
        self.histograms.wait.record(waited);
    }

    // `&Cow`, not `&str`: a name borrowed for `'static` is kept without a copy.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn finished(&self, name: &Cow<'static, str>, outcome: Outcome, ran: Duration) {
        self.running.fetch_sub(1, Relaxed);
        self.run_us_total.fetch_add(ran.as_micros() as u64, Relaxed);
        #[cfg(feature = "metrics")]
        self.histograms.run.record(ran);
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Failed => &self.failed,
            Outcome::Panicked => &self.panicked,
            Outcome::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Relaxed);
        self.of_task(name, |stats| {
            *match outcome {
                Outcome::Succeeded => &mut stats.succeeded,
                Outcome::Failed => &mut stats.failed,
                Outcome::Panicked => &mut stats.panicked,
                Outcome::TimedOut => &mut stats.timed_out,
            } += 1;
        });
    }

    /// A poll of one of `name`'s tasks that took `took`, too long; whether
    /// it is the first of that name (or of [`OTHER_TASKS`]).
    // `&Cow`, not `&str`: a name borrowed for `'static` is kept without a copy.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn long_poll(&self, name: &Cow<'static, str>, took: Duration) -> bool {
        self.long_polls.fetch_add(1, Relaxed);
        let mut first = false;
        self.of_task(name, |stats| {
            first = stats.long_polls == 0;
            stats.long_polls += 1;
            stats.longest_poll_us = stats.longest_poll_us.max(took.as_micros() as u64);
        });
        first
    }

    /// One more task of `name` cut off by the shutdown deadline, running or
    /// not, for [`Stats::by_task`].
    pub(crate) fn cut_off_task(&self, name: &str) {
        let name = Cow::Owned(name.to_owned());
        self.of_task(&name, |stats| stats.cut_off += 1);
    }

    /// Tasks that will never start because an earlier one failed in a
    /// `stop_on_error` group.
    pub(crate) fn skipped(&self, tasks: u64) {
        self.never_started(tasks, &self.skipped);
    }

    /// Tasks that will never start because the shutdown deadline passed.
    pub(crate) fn cut_off_pending(&self, tasks: u64) {
        self.never_started(tasks, &self.cut_off);
    }

    fn never_started(&self, tasks: u64, counter: &AtomicU64) {
        self.pending.fetch_sub(tasks, Relaxed);
        counter.fetch_add(tasks, Relaxed);
    }

    /// Tasks a handler added that will never run: accepted and abandoned at
    /// once, so the sum of the outcomes still equals `accepted`.
    pub(crate) fn abandoned(&self, tasks: u64) {
        self.accepted.fetch_add(tasks, Relaxed);
        self.abandoned.fetch_add(tasks, Relaxed);
    }

    /// A response with tasks from a request that was not admitted before
    /// its handler ran.
    pub(crate) fn unadmitted(&self) {
        if self.unadmitted.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                "background tasks returned on a route that does not admit its requests: when \
                 the runner is full, such a response is replaced by a 503 after its handler \
                 has run; take `epilogue::axum::Admitted` in the handler (or put \
                 `RouteTasksLayer::admission()` on the route) to refuse before it runs. \
                 Counted in Stats::unadmitted; logged once"
            );
        }
    }

    /// A running task stopped by the shutdown deadline.
    pub(crate) fn cut_running(&self) {
        self.running.fetch_sub(1, Relaxed);
        self.cut_off.fetch_add(1, Relaxed);
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_bound_are_counted_together() {
        let counters = Counters::default();
        let extra = 44;
        for n in 0..MAX_TASK_NAMES + extra {
            counters.accepted(1);
            counters.started(Duration::ZERO);
            counters.finished(
                &Cow::Owned(format!("task {n}")),
                Outcome::Succeeded,
                Duration::ZERO,
            );
        }
        counters.accepted(1);
        counters.started(Duration::ZERO);
        counters.finished(&Cow::Borrowed("task 0"), Outcome::Failed, Duration::ZERO);
        counters.failure(&Cow::Borrowed("task 0"), "no mail server".to_owned());

        let stats = counters.snapshot();
        assert_eq!(stats.by_task.len(), MAX_TASK_NAMES + 1);
        assert_eq!(stats.by_task[OTHER_TASKS].succeeded, extra as u64);
        let first = &stats.by_task["task 0"];
        assert_eq!((first.succeeded, first.failed), (1, 1));
        assert_eq!(first.last_error.as_ref().unwrap().error, "no mail server");
        let total: u64 = stats.by_task.values().map(TaskStats::finished).sum();
        assert_eq!(total, stats.succeeded + stats.failed);
    }
}
