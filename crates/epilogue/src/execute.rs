//! Running one accepted group: its steps in order (or at once), each task
//! isolated, timed, retried and counted.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use crate::runner::{Accepted, Inner};
use crate::stats::Outcome;
use crate::task::{BackgroundTask, BlockingCall, Run, TaskResult};
use crate::tasks::{BackgroundTasks, Mode, Step};

/// How a step ended, as far as the steps after it care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Ok,
    Failed,
    /// The shutdown deadline passed: nothing more runs.
    Cut,
}

/// The body of a group's tokio task. `place` is the running place the group
/// took when it was started, if one was free.
pub(crate) async fn run_group(accepted: Accepted, place: Option<RunningPlace>) {
    let Accepted {
        slot,
        tasks,
        accepted_at,
        span,
    } = accepted;
    let inner = slot.runner();
    let _place = match place {
        Some(place) => place,
        // Boxed, as every path most groups never take: the group's future
        // is as large as its largest path, and it is moved into its task.
        None => match Box::pin(wait_for_place(inner, &tasks)).await {
            Some(place) => place,
            None => return,
        },
    };
    run_steps(inner, tasks, accepted_at).instrument(span).await;
}

/// Waits for a running place, or for the shutdown deadline, which cuts the
/// group off.
async fn wait_for_place(inner: &Arc<Inner>, tasks: &BackgroundTasks) -> Option<RunningPlace> {
    tokio::select! {
        // The deadline first: a place freed by a cut-off group must not
        // start more work after the deadline.
        biased;
        () = inner.deadline.cancelled() => {
            cut_off_pending(inner, tasks);
            None
        }
        permit = inner.running.acquire() => {
            permit.expect("the running semaphore is never closed").forget();
            Some(RunningPlace(inner.clone()))
        }
    }
}

/// Takes a free running place for a group about to start, without waiting:
/// taken where the group is accepted, so that free places go in acceptance
/// order, whatever order tokio first polls the groups' tasks in.
pub(crate) fn try_take_place(inner: &Arc<Inner>) -> Option<RunningPlace> {
    let permit = inner.running.try_acquire().ok()?;
    permit.forget();
    Some(RunningPlace(inner.clone()))
}

/// Gives a group's running place back when the group is done, or dropped
/// (even before its first poll, by a runtime shutting down).
pub(crate) struct RunningPlace(Arc<Inner>);

impl Drop for RunningPlace {
    fn drop(&mut self) {
        self.0.running.add_permits(1);
    }
}

async fn run_steps(inner: &Arc<Inner>, mut group: BackgroundTasks, accepted_at: Instant) -> Flow {
    let mode = group.mode;
    let mut steps = std::mem::take(&mut group.steps).into_iter();
    if mode == Mode::Concurrent {
        let flows =
            futures_util::future::join_all(steps.map(|step| run_step(inner, step, accepted_at)))
                .await;
        return flows
            .into_iter()
            .fold(Flow::Ok, |worst, flow| match (worst, flow) {
                (Flow::Cut, _) | (_, Flow::Cut) => Flow::Cut,
                (Flow::Failed, _) | (_, Flow::Failed) => Flow::Failed,
                _ => Flow::Ok,
            });
    }
    let mut result = Flow::Ok;
    while let Some(step) = steps.next() {
        // Not `run_step`: one async fn less between the group and its tasks.
        let flow = match step {
            Step::Task(task) => run_task(inner, task, accepted_at).await,
            Step::Group(group) => run_nested(inner, group, accepted_at).await,
        };
        match flow {
            Flow::Ok => {}
            Flow::Failed if mode == Mode::StopOnError => {
                let rest = BackgroundTasks::from_steps(steps.collect());
                inner.counters.dropped_pending(rest.len() as u64, false);
                return Flow::Failed;
            }
            Flow::Failed => result = Flow::Failed,
            Flow::Cut => {
                let rest = BackgroundTasks::from_steps(steps.collect());
                cut_off_pending(inner, &rest);
                return Flow::Cut;
            }
        }
    }
    result
}

type BoxFlow<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

async fn run_step(inner: &Arc<Inner>, step: Step, accepted_at: Instant) -> Flow {
    match step {
        Step::Task(task) => run_task(inner, task, accepted_at).await,
        Step::Group(group) => run_nested(inner, group, accepted_at).await,
    }
}

/// Boxed because nested groups recurse; flat groups, the common case, never
/// pay for it.
fn run_nested(inner: &Arc<Inner>, group: BackgroundTasks, accepted_at: Instant) -> BoxFlow<'_> {
    Box::pin(run_steps(inner, group, accepted_at))
}

/// Counts tasks that will never start because the deadline passed, and keeps
/// their names for the shutdown report.
pub(crate) fn cut_off_pending(inner: &Inner, tasks: &BackgroundTasks) {
    inner.counters.dropped_pending(tasks.len() as u64, true);
    tasks.visit_names(&mut |name| inner.record_cut_off(name));
}

async fn run_task(inner: &Arc<Inner>, task: BackgroundTask, accepted_at: Instant) -> Flow {
    if inner.deadline.is_cancelled() {
        inner.counters.dropped_pending(1, true);
        inner.record_cut_off(task.task_name());
        return Flow::Cut;
    }
    let started = Instant::now();
    inner.counters.started(started - accepted_at);
    let name = task.name_cow();
    let span = tracing::debug_span!("epilogue.task", task = %name);
    let attempts = UntilDeadline {
        inner,
        attempts: attempt_all(inner, task, &name),
        deadline: None,
    };
    let Some(outcome) = attempts.instrument(span).await else {
        inner.counters.cut_running();
        inner.record_cut_off(&name);
        tracing::warn!(task = %name, "background task cut off by the shutdown deadline");
        return Flow::Cut;
    };
    inner.counters.finished(outcome, started.elapsed());
    if outcome.is_success() {
        Flow::Ok
    } else {
        Flow::Failed
    }
}

pin_project_lite::pin_project! {
    /// A task's attempts, until the shutdown deadline: `None` if it passed
    /// first.
    struct UntilDeadline<'a, F> {
        inner: &'a Inner,
        #[pin]
        attempts: F,
        // Only a task that does not finish on its first poll waits on the
        // deadline: most never register with it.
        deadline: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    }
}

impl<F: Future> Future for UntilDeadline<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The task first: a task that is done when the deadline passes is
        // done, not cut off.
        if let Poll::Ready(output) = this.attempts.poll(cx) {
            return Poll::Ready(Some(output));
        }
        let inner = *this.inner;
        this.deadline
            .get_or_insert_with(|| Box::pin(inner.deadline.clone().cancelled_owned()))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    }
}

/// Runs the task, then its retries while it fails, and reports the last failure.
async fn attempt_all(inner: &Arc<Inner>, task: BackgroundTask, name: &str) -> Outcome {
    let retry = task.retry_policy();
    // Each attempt but the last runs a copy: the last one takes the task.
    let mut task = Some(task);
    let mut backoff = retry.backoff;
    let mut attempt = 0;
    loop {
        let run = match task.take_if(|_| attempt == retry.retries) {
            Some(last) => last.into_run(),
            None => task
                .as_ref()
                .expect("kept until the last attempt")
                .attempt(),
        };
        let (outcome, detail) = attempt_once(inner, run).await;
        if outcome.is_success() {
            return outcome;
        }
        if attempt == retry.retries {
            report_failure(name, outcome, detail.as_deref(), attempt);
            return outcome;
        }
        attempt += 1;
        inner.counters.retried();
        tracing::info!(
            task = %name,
            attempt,
            error = detail.as_deref().unwrap_or(""),
            "background task failed; retrying in {backoff:?}"
        );
        // Boxed: a timer is large, and only failing tasks wait on one.
        Box::pin(tokio::time::sleep(backoff)).await;
        backoff = backoff.saturating_mul(2);
    }
}

fn report_failure(name: &str, outcome: Outcome, detail: Option<&str>, retries: u32) {
    let detail = detail.unwrap_or("");
    match outcome {
        Outcome::Panicked => {
            tracing::error!(task = %name, retries, panic = detail, "background task panicked")
        }
        Outcome::Failed => {
            tracing::warn!(task = %name, retries, error = detail, "background task failed")
        }
        Outcome::TimedOut => {
            tracing::warn!(task = %name, retries, "background task timed out")
        }
        Outcome::Succeeded => {}
    }
}

/// One call of the task function, with the panic caught and the timeout applied.
async fn attempt_once(inner: &Arc<Inner>, run: Run) -> (Outcome, Option<String>) {
    let caught = match run {
        Run::Async(future) => with_timeout(inner, AssertUnwindSafe(future).catch_unwind()).await,
        Run::Blocking(call) => Box::pin(run_blocking(inner, call)).await,
    };
    match caught {
        None => (Outcome::TimedOut, None),
        Some(Ok(Ok(()))) => (Outcome::Succeeded, None),
        Some(Ok(Err(error))) => (Outcome::Failed, Some(error)),
        Some(Err(payload)) => (Outcome::Panicked, Some(panic_message(&*payload))),
    }
}

/// A plain function on the blocking pool. Boxed by its caller, so that the
/// futures of async tasks do not carry its state.
async fn run_blocking(inner: &Arc<Inner>, call: BlockingCall) -> Option<Caught> {
    // Take the blocking place before the thread: a waiting blocking task
    // costs a parked future, not a parked thread.
    let permit = match inner.blocking.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => inner
            .blocking
            .clone()
            .acquire_owned()
            .await
            .expect("the blocking semaphore is never closed"),
    };
    let handle = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        call()
    });
    with_timeout(inner, async {
        handle.await.map_err(|e| match e.try_into_panic() {
            Ok(payload) => payload,
            Err(e) => Box::new(e.to_string()) as Box<dyn Any + Send>,
        })
    })
    .await
}

type Caught = Result<TaskResult, Box<dyn Any + Send>>;

/// Not an `async fn`, which would keep a second copy of `attempt`. The
/// timer is boxed: it is large, and only services that set a timeout pay
/// for it.
fn with_timeout<F>(inner: &Inner, attempt: F) -> impl Future<Output = Option<Caught>>
where
    F: Future<Output = Caught>,
{
    match inner.config.task_timeout {
        None => Either::Left(attempt.map(Some)),
        Some(limit) => Either::Right(Timeout {
            attempt,
            timer: Box::pin(tokio::time::sleep(limit)),
        }),
    }
}

pin_project_lite::pin_project! {
    /// `tokio::time::Timeout` with its timer on the heap.
    struct Timeout<F> {
        #[pin]
        attempt: F,
        timer: Pin<Box<tokio::time::Sleep>>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.attempt.poll(cx) {
            return Poll::Ready(Some(output));
        }
        this.timer.as_mut().poll(cx).map(|()| None)
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
