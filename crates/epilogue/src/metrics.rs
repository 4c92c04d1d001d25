//! The runner's numbers through the [`metrics`] facade, for Prometheus or
//! any other exporter.
//!
//! Counting costs nothing on the request path: the counters and gauges live
//! in the runner ([`Stats`]), and
//! [`Runner::record_metrics`](crate::Runner::record_metrics) copies a
//! snapshot of them into the facade, to be called before each scrape (or
//! every few seconds by a task of your own). Only the two histograms are
//! recorded as tasks run (their handles are registered when the runner is
//! built, so install the recorder first), and `serve`'s timeout counter as
//! timeouts happen.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `epilogue_tasks_accepted_total` | counter | | tasks accepted |
//! | `epilogue_tasks_finished_total` | counter | `task`, `outcome` (`succeeded`, `failed`, `panicked`, `timed_out`) | tasks that ran to an end, after their last retry |
//! | `epilogue_tasks_cut_off_total` | counter | `task` | tasks stopped or never started because the shutdown deadline passed |
//! | `epilogue_tasks_skipped_total` | counter | | tasks skipped by a `stop_on_error` group |
//! | `epilogue_tasks_abandoned_total` | counter | | tasks of handlers that did not answer with a success |
//! | `epilogue_task_retries_total` | counter | | extra attempts |
//! | `epilogue_task_long_polls_total` | counter | `task` | polls of async tasks that took more than 10 ms, stalling the other tasks of their lane ([`TaskStats::long_polls`](crate::TaskStats::long_polls)) |
//! | `epilogue_requests_refused_total` | counter | | requests refused with `503` (full or shutting down) |
//! | `epilogue_groups_unadmitted_total` | counter | | groups returned on routes that were not admitted |
//! | `epilogue_tasks_running`, `epilogue_tasks_pending` | gauge | | tasks running, and accepted but not started |
//! | `epilogue_groups_running`, `epilogue_groups_admitted` | gauge | | groups running, and holding room in the runner |
//! | `epilogue_blocking_in_use` | gauge | | plain-`fn` tasks on the blocking pool |
//! | `epilogue_max_running`, `epilogue_max_pending`, `epilogue_max_blocking` | gauge | | the runner's limits |
//! | `epilogue_task_wait_seconds` | histogram | | from acceptance to start |
//! | `epilogue_task_run_seconds` | histogram | | from start to end, retries included |
//! | `epilogue_http_timeouts_total` | counter | `part` (`head`, `body`) | connections closed by `serve`'s header read timeout, request bodies answered `408` by its body read timeout |
//! | `epilogue_durable_tasks` | gauge | `state` (`queued`, `scheduled`, `running`, `retrying`, `succeeded`, `dead`, `cancelled`) | durable tasks in the store, by state (`epilogue-durable`'s `Store::record_metrics`) |
//! | `epilogue_durable_store_up` | gauge | | 1 if the durable store answered the last `Store::record_metrics`, else 0 |
//!
//! The `task` label is the task's name, at most
//! [`MAX_TASK_NAMES`](crate::MAX_TASK_NAMES) of them; the others are counted
//! under [`OTHER_TASKS`](crate::OTHER_TASKS).

use metrics::{counter, gauge};

use crate::runner::config::Limits;
use crate::stats::Stats;

/// Copies `stats` and `limits` into the facade, for
/// [`Runner::record_metrics`](crate::Runner::record_metrics).
pub(crate) fn record(stats: &Stats, limits: &Limits) {
    counter!("epilogue_tasks_accepted_total").absolute(stats.accepted);
    for (task, counts) in &stats.by_task {
        for (outcome, value) in [
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("panicked", counts.panicked),
            ("timed_out", counts.timed_out),
        ] {
            counter!("epilogue_tasks_finished_total", "task" => task.clone(), "outcome" => outcome)
                .absolute(value);
        }
        counter!("epilogue_tasks_cut_off_total", "task" => task.clone()).absolute(counts.cut_off);
        counter!("epilogue_task_long_polls_total", "task" => task.clone())
            .absolute(counts.long_polls);
    }
    counter!("epilogue_tasks_skipped_total").absolute(stats.skipped);
    counter!("epilogue_tasks_abandoned_total").absolute(stats.abandoned);
    counter!("epilogue_task_retries_total").absolute(stats.retried);
    counter!("epilogue_requests_refused_total").absolute(stats.refused);
    counter!("epilogue_groups_unadmitted_total").absolute(stats.unadmitted);
    gauge!("epilogue_tasks_running").set(stats.running as f64);
    gauge!("epilogue_tasks_pending").set(stats.pending as f64);
    gauge!("epilogue_groups_running").set(stats.groups_running as f64);
    gauge!("epilogue_groups_admitted").set(stats.groups_admitted as f64);
    gauge!("epilogue_blocking_in_use").set(stats.blocking_in_use as f64);
    gauge!("epilogue_max_running").set(limits.max_running as f64);
    gauge!("epilogue_max_pending").set(limits.max_pending as f64);
    gauge!("epilogue_max_blocking").set(limits.max_blocking as f64);
}
