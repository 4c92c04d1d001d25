//! Running a stored task: River fetches it, epilogue's [`Runner`] runs it.
//!
//! River's executor calls `RunOnRunner`'s `Worker::work` for each attempt,
//! on a tokio task of its own. The attempt runs there, but as a group of
//! the application's runner (`Runner::run_here`), so durable tasks share
//! the runner's limits, per-name stats, metrics and shutdown with the
//! in-memory ones. River keeps everything the store needs: the claim, the
//! attempt count, the retry schedule, rescue and completion.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use epilogue::{BackgroundTask, Runner};
use futures_util::FutureExt;
use riverqueue::jiff::Timestamp;
use riverqueue::{WorkCancelled, WorkContext, WorkError, WorkOutcome, WorkerTimeout};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::envelope::Envelope;
use crate::task::{BoxError, DurableTask, Job, TaskId};

/// The wait before the second attempt; it doubles for each one after.
pub(crate) const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const LONGEST_RETRY: Duration = Duration::from_secs(3600);

/// How long a task refused by a full runner waits before River offers it
/// again; it keeps its attempt.
const REFUSED_SNOOZE: Duration = Duration::from_millis(250);

/// How long an attempt the runner cut off at its shutdown deadline waits
/// for River's hard stop, which puts it back without using up its attempt.
const HARD_STOP_WAIT: Duration = Duration::from_millis(500);

/// River's worker for the tasks of kind `T::NAME`.
pub(crate) struct RunOnRunner<T: DurableTask> {
    pub(crate) state: T::State,
    pub(crate) runner: Runner,
}

/// How one attempt ended, as the runner saw it.
enum Ended {
    Ran(Result<serde_json::Value, String>),
    Panicked(String),
    /// River cancelled it: its timeout, a remote cancel, or a hard stop.
    Cancelled,
}

impl<T: DurableTask> riverqueue::Worker<Envelope<T>> for RunOnRunner<T> {
    type Error = BoxError;

    fn next_retry(
        &self,
        job: &riverqueue::Job<Envelope<T>>,
        _: &WorkError,
        _: Timestamp,
    ) -> Option<Duration> {
        Some(retry_delay(u32::try_from(job.row.attempt).unwrap_or(1)))
    }

    fn timeout(&self, _: &riverqueue::Job<Envelope<T>>) -> WorkerTimeout {
        T::TIMEOUT.map_or(WorkerTimeout::ClientDefault, WorkerTimeout::After)
    }

    async fn work(
        &self,
        context: WorkContext,
        job: riverqueue::Job<Envelope<T>>,
    ) -> Result<WorkOutcome, BoxError> {
        let id = TaskId(job.row.id);
        let attempt = u32::try_from(job.row.attempt).unwrap_or(1);
        // The trace context of the request that stored it, so that a trace
        // can follow the request to this run, on whichever process.
        let traceparent = crate::trace::stored(&job.row.metadata);
        // DEBUG, as the runner's own task spans: inside River's `river_job`
        // span, and formatting it at INFO cost a tenth of a task's CPU.
        let span = tracing::debug_span!(
            "durable_task",
            task = T::NAME,
            id = %id,
            attempt,
            traceparent = traceparent.as_deref(),
        );
        if let Some(traceparent) = &traceparent {
            crate::trace::link(&span, traceparent);
        }
        let run = Job {
            id,
            attempt,
            max_attempts: u32::try_from(job.row.max_attempts).unwrap_or(1),
        };
        let (sender, ended) = oneshot::channel();
        // The task function must be `Clone` (the runner may retry in-memory
        // tasks); this one runs once, and takes its attempt from the slot.
        let slot = Arc::new(Mutex::new(Some((
            job.args.task,
            self.state.clone(),
            run,
            sender,
            context.cancellation_token().clone(),
            self.runner.clone(),
        ))));
        let attempt_fn = move || {
            let taken = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            async move {
                let Some((task, state, run, sender, cancelled, runner)) = taken else {
                    return Ok(());
                };
                let ran = AssertUnwindSafe(task.run(run, state)).catch_unwind();
                let ran = tokio::select! {
                    // A timeout, a remote cancel or a hard stop drops the
                    // attempt's future: it really stops.
                    () = cancelled.cancelled() => None,
                    ran = ran => Some(ran),
                };
                if ran.is_none() && runner.cut_off().now_or_never().is_some() {
                    // River's hard stop at the runner's shutdown deadline:
                    // the runner drops this attempt in this very turn. Let
                    // it, so that the runner counts it as cut off, not as
                    // failed.
                    std::future::pending::<()>().await;
                }
                let (ended, counted) = match ran {
                    None => (
                        Ended::Cancelled,
                        Err("cancelled (its timeout, a cancel, or a shutdown)".to_owned()),
                    ),
                    Some(Ok(Ok(output))) => match serde_json::to_value(output) {
                        Ok(output) => (Ended::Ran(Ok(output)), Ok(())),
                        Err(e) => {
                            let error = format!("its output did not serialise: {e}");
                            (Ended::Ran(Err(error.clone())), Err(error))
                        }
                    },
                    Some(Ok(Err(error))) => {
                        let error = error_chain(&*error);
                        (Ended::Ran(Err(error.clone())), Err(error))
                    }
                    Some(Err(payload)) => {
                        // River records the message; the runner counts the
                        // panic as one, by the task's name.
                        let _ = sender
                            .send(Ended::Panicked(epilogue::runner::panic_message(&*payload)));
                        std::panic::resume_unwind(payload);
                    }
                };
                // River may have stopped waiting (a hard stop): nothing to tell.
                let _ = sender.send(ended);
                counted
            }
            .instrument(span)
        };
        let task = BackgroundTask::new(attempt_fn, ()).name(T::NAME);
        // On River's own task for this attempt, which waits for it anyway:
        // no hand-off to a lane and back.
        let Ok(run) = self.runner.run_here(task) else {
            // Full, or shutting down: River offers it again later (to this
            // process or another), without using up an attempt.
            return Ok(WorkOutcome::Snooze(REFUSED_SNOOZE));
        };
        run.await;
        match ended.await {
            Ok(Ended::Ran(Ok(output))) => {
                if !output.is_null() {
                    context.record_output(output)?;
                }
                Ok(WorkOutcome::Complete)
            }
            Ok(Ended::Ran(Err(error))) => Err(error.into()),
            Ok(Ended::Panicked(message)) => Err(format!("the task panicked: {message}").into()),
            // Cancelled by River: during a hard stop, River puts it back
            // without using up its attempt.
            Ok(Ended::Cancelled) => Err(WorkCancelled.into()),
            // Dropped by the runner before it ended (the sender went with
            // it): cut off at the runner's shutdown deadline, or by the
            // runner's own task timeout.
            Err(_) => {
                // At the deadline, River's hard stop starts from the same
                // moment (see `supervise`) but may come a little later:
                // returning before it would make the cut-off a failed
                // attempt, not an interrupted one.
                if self.runner.cut_off().now_or_never().is_some() {
                    let cancelled = context.cancellation_token().cancelled();
                    let _ = tokio::time::timeout(HARD_STOP_WAIT, cancelled).await;
                }
                Err(WorkCancelled.into())
            }
        }
    }
}

/// 1, 2, 4, 8… seconds after attempts 1, 2, 3, 4…, at most an hour.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY
        .checked_mul(1 << attempt.saturating_sub(1).min(20))
        .unwrap_or(LONGEST_RETRY)
        .min(LONGEST_RETRY)
}

/// An error and its sources, `outer: inner`, as River records them.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_one_two_four_eight_seconds_then_at_most_an_hour() {
        let waits: Vec<u64> = (1..=5).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(retry_delay(40), LONGEST_RETRY);
    }
}
