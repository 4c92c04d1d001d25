//! Running one accepted group: its steps in order (or at once), each task
//! isolated, timed, retried and counted.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::task::Unconstrained;
use tokio::time::Sleep;
use tracing::{Instrument, Span};

use crate::latch;
use crate::runner::{Accepted, Inner};
use crate::stats::Outcome;
use crate::task::{BackgroundTask, BlockingCall, Retry, Run, TaskResult};
use crate::tasks::{BackgroundTasks, Mode, Step};

/// How a step ended, as far as the steps after it care; ordered from best
/// to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Flow {
    Ok,
    Failed,
    /// The shutdown deadline passed: nothing more runs.
    Cut,
}

/// The body of a group's tokio task. `place` is the running place the group
/// took when it was started, if one was free.
pub(crate) fn run_group(
    accepted: Accepted,
    place: Option<RunningPlace>,
) -> impl Future<Output = ()> + Send {
    let Accepted {
        slot,
        tasks,
        accepted_at,
        span,
    } = accepted;
    async move {
        let inner = slot.runner();
        let _place = match place {
            Some(place) => place,
            // Boxed, as every path most groups never take: the group's
            // future is as large as its largest path.
            None => match Box::pin(wait_for_place(inner, &tasks)).await {
                Some(place) => place,
                None => return,
            },
        };
        run_steps(inner, tasks, accepted_at).instrument(span).await;
    }
}

/// Waits for a running place, or for the shutdown deadline, which cuts the
/// group off.
async fn wait_for_place(inner: &Arc<Inner>, tasks: &BackgroundTasks) -> Option<RunningPlace> {
    tokio::select! {
        // The deadline first: a place freed by a cut-off group must not
        // start more work after the deadline.
        biased;
        () = inner.deadline.wait() => {
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

/// Not an `async fn`, for the same reason as [`run_task`]: the group is
/// taken apart before its steps start.
fn run_steps(
    inner: &Arc<Inner>,
    mut group: BackgroundTasks,
    accepted_at: Instant,
) -> impl Future<Output = Flow> + Send + '_ {
    let mode = group.mode;
    let steps = std::mem::take(&mut group.steps);
    if mode == Mode::Concurrent {
        Either::Left(run_concurrent(inner, steps, accepted_at))
    } else {
        Either::Right(run_in_order(inner, steps.into_iter(), mode, accepted_at))
    }
}

async fn run_concurrent(inner: &Arc<Inner>, steps: Vec<Step>, accepted_at: Instant) -> Flow {
    let steps = steps
        .into_iter()
        .map(|step| run_step(inner, step, accepted_at));
    let flows = futures_util::future::join_all(steps).await;
    flows.into_iter().max().unwrap_or(Flow::Ok)
}

async fn run_in_order(
    inner: &Arc<Inner>,
    mut steps: std::vec::IntoIter<Step>,
    mode: Mode,
    accepted_at: Instant,
) -> Flow {
    let mut result = Flow::Ok;
    while let Some(step) = steps.next() {
        match run_step(inner, step, accepted_at).await {
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

fn run_step(
    inner: &Arc<Inner>,
    step: Step,
    accepted_at: Instant,
) -> impl Future<Output = Flow> + Send + '_ {
    match step {
        Step::Task(task) => Either::Left(run_task(inner, task, accepted_at)),
        Step::Group(group) => Either::Right(run_nested(inner, group, accepted_at)),
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

/// Not an `async fn`, which would keep the task both as its argument and
/// inside its attempts: this future is part of every group's, and the
/// group's is boxed.
fn run_task(
    inner: &Arc<Inner>,
    task: BackgroundTask,
    accepted_at: Instant,
) -> impl Future<Output = Flow> + Send + '_ {
    if inner.deadline.is_set() {
        inner.counters.dropped_pending(1, true);
        inner.record_cut_off(task.task_name());
        return Either::Left(std::future::ready(Flow::Cut));
    }
    let started = Instant::now();
    inner.counters.started(started - accepted_at);
    // Only when DEBUG is on: see `Deferred::new`.
    let span = if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug_span!("epilogue.task", task = task.task_name())
    } else {
        Span::none()
    };
    let attempts = Attempts::new(inner, task).instrument(span);
    Either::Right(attempts.map(move |(outcome, name)| {
        let Some(outcome) = outcome else {
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
    }))
}

pin_project_lite::pin_project! {
    /// One task's attempts: the first, then its retries while it fails, each
    /// with its panic caught and its timeout applied, all of them until the
    /// shutdown deadline. Written out by hand: as `async fn`s, these steps made
    /// every group's future four times larger.
    ///
    /// Its output is the last attempt's outcome, `None` if the deadline passed
    /// first, and the task's name.
    struct Attempts<'a> {
        tries: Tries<'a>,
        // Only a task still pending after its first poll waits on the
        // deadline: most never register with it.
        #[pin]
        deadline: Option<latch::Wait<'a>>,
    }
}

/// The attempts themselves, without the deadline.
struct Tries<'a> {
    inner: &'a Arc<Inner>,
    name: Cow<'static, str>,
    retry: Retry,
    // Each attempt but the last runs a copy: the last one takes the task.
    task: Option<BackgroundTask>,
    attempt: u32,
    backoff: Duration,
    state: Attempt<'a>,
}

enum Attempt<'a> {
    /// The next attempt starts at the next poll.
    Next,
    Async {
        future: Pin<Box<dyn Future<Output = TaskResult> + Send>>,
        // Unconstrained: a task that spends its whole cooperative budget
        // every poll would otherwise leave none for its timer, which would
        // never fire (`tokio::time::timeout` makes the same exception).
        timer: Option<Pin<Box<Unconstrained<Sleep>>>>,
    },
    Blocking(Pin<Box<dyn Future<Output = Option<Caught>> + Send + 'a>>),
    Backoff(Pin<Box<Sleep>>),
    Done,
}

impl<'a> Attempts<'a> {
    fn new(inner: &'a Arc<Inner>, task: BackgroundTask) -> Self {
        let retry = task.retry_policy();
        let tries = Tries {
            inner,
            name: task.name_cow(),
            retry,
            task: Some(task),
            attempt: 0,
            backoff: retry.backoff,
            state: Attempt::Next,
        };
        Self {
            tries,
            deadline: None,
        }
    }
}

impl Tries<'_> {
    fn start(&mut self) {
        let run = match self.task.take_if(|_| self.attempt == self.retry.retries) {
            Some(last) => last.into_run(),
            None => self
                .task
                .as_ref()
                .expect("kept until the last attempt")
                .attempt(),
        };
        self.state =
            match run {
                Run::Async(future) => Attempt::Async {
                    future,
                    timer: self.inner.config.task_timeout.map(|limit| {
                        Box::pin(tokio::task::unconstrained(tokio::time::sleep(limit)))
                    }),
                },
                Run::Blocking(call) => Attempt::Blocking(Box::pin(run_blocking(self.inner, call))),
            };
    }

    /// What comes after an attempt: the outcome, or a retry after a backoff.
    fn finish(&mut self, caught: Option<Caught>) -> Option<Outcome> {
        let (outcome, detail) = match caught {
            None => (Outcome::TimedOut, None),
            Some(Ok(Ok(()))) => (Outcome::Succeeded, None),
            Some(Ok(Err(error))) => (Outcome::Failed, Some(error)),
            Some(Err(payload)) => (Outcome::Panicked, Some(panic_message(&*payload))),
        };
        let name = &self.name;
        if outcome.is_success() {
            return Some(outcome);
        }
        if self.attempt == self.retry.retries {
            report_failure(name, outcome, detail.as_deref(), self.attempt);
            return Some(outcome);
        }
        self.attempt += 1;
        self.inner.counters.retried();
        let backoff = self.backoff;
        tracing::info!(
            task = %name,
            attempt = self.attempt,
            error = detail.as_deref().unwrap_or(""),
            "background task failed; retrying in {backoff:?}"
        );
        self.state = Attempt::Backoff(Box::pin(tokio::time::sleep(backoff)));
        self.backoff = backoff.saturating_mul(2);
        None
    }
}

impl Future for Attempts<'_> {
    type Output = (Option<Outcome>, Cow<'static, str>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let tries = this.tries;
        loop {
            let caught = match &mut tries.state {
                Attempt::Next => {
                    tries.start();
                    continue;
                }
                Attempt::Async { future, timer } => {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                        Ok(Poll::Ready(result)) => Some(Ok(result)),
                        Err(payload) => Some(Err(payload)),
                        Ok(Poll::Pending) => {
                            let timed_out = timer
                                .as_mut()
                                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                            if !timed_out {
                                break;
                            }
                            None
                        }
                    }
                }
                Attempt::Blocking(attempt) => match attempt.as_mut().poll(cx) {
                    Poll::Ready(caught) => caught,
                    Poll::Pending => break,
                },
                Attempt::Backoff(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    tries.state = Attempt::Next;
                    continue;
                }
                Attempt::Done => panic!("Attempts polled after completion"),
            };
            if let Some(outcome) = tries.finish(caught) {
                tries.state = Attempt::Done;
                return Poll::Ready((Some(outcome), std::mem::take(&mut tries.name)));
            }
        }
        // Pending: the task first, then the deadline, so that a task that is
        // done when the deadline passes counts as done, not cut off.
        if this.deadline.is_none() {
            this.deadline.set(Some(tries.inner.deadline.wait()));
        }
        let deadline = this.deadline.as_pin_mut().expect("set above");
        if deadline.poll(cx).is_ready() {
            tries.state = Attempt::Done;
            return Poll::Ready((None, std::mem::take(&mut tries.name)));
        }
        Poll::Pending
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

/// `attempt`, cut short by the task timeout if there is one.
async fn with_timeout<F>(inner: &Inner, attempt: F) -> Option<Caught>
where
    F: Future<Output = Caught>,
{
    match inner.config.task_timeout {
        None => Some(attempt.await),
        Some(limit) => tokio::time::timeout(limit, attempt).await.ok(),
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
