//! What the runner has done so far: counters, gauges and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A snapshot of a [`Runner`](crate::Runner)'s counters, from
/// [`Runner::stats`](crate::Runner::stats).
///
/// Every field but `refused` and `unadmitted` counts **tasks**. Once a
/// runner is idle,
/// `accepted = succeeded + failed + panicked + timed_out + skipped + cut_off + abandoned`;
/// while it works, `running` and `pending` hold the difference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Tasks accepted: their request got its response, so they will run.
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
    /// Tasks stopped by the runner's task timeout (after their last retry).
    pub timed_out: u64,
    /// Tasks skipped because an earlier task of a `stop_on_error` group failed.
    pub skipped: u64,
    /// Tasks stopped, or never started, because the shutdown deadline passed.
    pub cut_off: u64,
    /// Tasks a handler added (through the request's
    /// [`RequestTasks`](crate::http::RequestTasks)) that never ran because the
    /// handler did not answer with a success: its future was dropped (a
    /// timeout, a client gone before the answer), it failed, or it answered
    /// with a status of 400 or more. Counted as accepted too.
    pub abandoned: u64,
    /// Extra attempts made by tasks with a [`retry`](crate::BackgroundTask::retry) policy.
    pub retried: u64,
    /// Requests (or [`Runner::spawn`](crate::Runner::spawn) calls) refused
    /// because the runner was full or shutting down. Counts groups, not tasks.
    pub refused: u64,
    /// Groups accepted from requests that were never admitted: a handler
    /// returned tasks on a route without
    /// [`admission()`](crate::axum::admission) (or another admitting layer).
    /// They run, but nothing refused their request when the runner was full,
    /// so they may exceed `max_pending`. A warning is logged the first time.
    pub unadmitted: u64,
    /// Time tasks spent between acceptance and their start, summed, in microseconds.
    pub wait_us_total: u64,
    /// Time tasks spent running, summed, in microseconds.
    pub run_us_total: u64,
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

    #[cfg(feature = "metrics")]
    fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Panicked => "panicked",
            Outcome::TimedOut => "timed_out",
        }
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
            wait_us_total: self.wait_us_total.load(Relaxed),
            run_us_total: self.run_us_total.load(Relaxed),
        }
    }

    pub(crate) fn accepted(&self, tasks: u64) {
        self.accepted.fetch_add(tasks, Relaxed);
        self.pending.fetch_add(tasks, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("epilogue_tasks_accepted_total").increment(tasks);
            metrics::gauge!("epilogue_tasks_pending").increment(tasks as f64);
        }
    }

    pub(crate) fn started(&self, waited: Duration) {
        self.pending.fetch_sub(1, Relaxed);
        self.running.fetch_add(1, Relaxed);
        self.wait_us_total
            .fetch_add(waited.as_micros() as u64, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("epilogue_tasks_pending").decrement(1.0);
            metrics::gauge!("epilogue_tasks_running").increment(1.0);
            metrics::histogram!("epilogue_task_wait_seconds").record(waited);
        }
    }

    pub(crate) fn finished(&self, outcome: Outcome, ran: Duration) {
        self.running.fetch_sub(1, Relaxed);
        self.run_us_total.fetch_add(ran.as_micros() as u64, Relaxed);
        let counter = match outcome {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Failed => &self.failed,
            Outcome::Panicked => &self.panicked,
            Outcome::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("epilogue_tasks_running").decrement(1.0);
            metrics::counter!("epilogue_tasks_total", "outcome" => outcome.label()).increment(1);
            metrics::histogram!("epilogue_task_run_seconds").record(ran);
        }
    }

    /// Tasks that will never start because an earlier one failed in a
    /// `stop_on_error` group.
    pub(crate) fn skipped(&self, tasks: u64) {
        self.never_started(tasks, &self.skipped, "skipped");
    }

    /// Tasks that will never start because the shutdown deadline passed.
    pub(crate) fn cut_off_pending(&self, tasks: u64) {
        self.never_started(tasks, &self.cut_off, "cut_off");
    }

    fn never_started(&self, tasks: u64, counter: &AtomicU64, outcome: &'static str) {
        self.pending.fetch_sub(tasks, Relaxed);
        counter.fetch_add(tasks, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("epilogue_tasks_pending").decrement(tasks as f64);
            metrics::counter!("epilogue_tasks_total", "outcome" => outcome).increment(tasks);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    /// Tasks a handler added that will never run: accepted and abandoned at
    /// once, so the sum of the outcomes still equals `accepted`.
    pub(crate) fn abandoned(&self, tasks: u64) {
        self.accepted.fetch_add(tasks, Relaxed);
        self.abandoned.fetch_add(tasks, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("epilogue_tasks_accepted_total").increment(tasks);
            metrics::counter!("epilogue_tasks_total", "outcome" => "abandoned").increment(tasks);
        }
    }

    /// A group accepted from a request that was never admitted.
    pub(crate) fn unadmitted(&self) {
        if self.unadmitted.fetch_add(1, Relaxed) == 0 {
            tracing::warn!(
                "background tasks returned on a route that was not admitted: they run, but \
                 past the runner's limits, since nothing refused the request when the runner \
                 was full; add `.layer(epilogue::axum::admission())` to every route whose \
                 handler returns tasks (or a `RouteTasksLayer` around them). Counted in \
                 Stats::unadmitted; logged once"
            );
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("epilogue_unadmitted_total").increment(1);
    }

    /// A running task stopped by the shutdown deadline.
    pub(crate) fn cut_running(&self) {
        self.running.fetch_sub(1, Relaxed);
        self.cut_off.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("epilogue_tasks_running").decrement(1.0);
            metrics::counter!("epilogue_tasks_total", "outcome" => "cut_off").increment(1);
        }
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("epilogue_task_retries_total").increment(1);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("epilogue_refused_total").increment(1);
    }
}
