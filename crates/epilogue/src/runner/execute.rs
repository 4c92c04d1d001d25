//! Running one accepted group: its steps in order (or at once), each task
//! isolated, timed, retried and counted.
//!
//! A group is a plain future here; [`lanes`](super::lanes) polls it. What
//! a group has not finished when its future is dropped (the shutdown
//! deadline, or its runtime going away) is counted as cut off by the drops
//! below, so counts add up however a group ends.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::task::Unconstrained;
use tokio::time::Sleep;
use tracing::Span;

use super::lanes::Group;
use super::state::{Accepted, Admission, State};
use crate::stats::Outcome;
use crate::task::{BackgroundTask, BlockingCall, JobBox, Run, TaskResult};
use crate::tasks::{BackgroundTasks, Mode, Step};

impl Group for Accepted {
    fn run(self) -> (Span, impl Future<Output = ()> + Send) {
        let Accepted {
            admission,
            tasks,
            accepted_at,
            span,
        } = self;
        (span, run_group(admission, tasks, accepted_at))
    }

    fn cut_off(self) {
        Accepted::cut_off(self);
    }
}

/// How a step ended, as far as the steps after it care; ordered from best
/// to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Flow {
    Ok,
    Failed,
    /// The shutdown deadline passed: nothing more runs.
    Cut,
}

/// The future of a group that holds a running place; its lane keeps the
/// group's span and enters it around each poll (see `lanes::Budgeted`), so
/// the future does not carry it.
///
/// Not an `async fn`: as one, the same future is 240 bytes instead of 224.
#[allow(clippy::manual_async_fn)]
fn run_group(
    admission: Admission,
    tasks: BackgroundTasks,
    accepted_at: Instant,
) -> impl Future<Output = ()> + Send {
    async move {
        run_steps(admission.state(), tasks, accepted_at).await;
    }
}

/// Not an `async fn`, for the same reason as [`run_task`]: the group is
/// taken apart before its steps start.
fn run_steps(
    state: &State,
    mut group: BackgroundTasks,
    accepted_at: Instant,
) -> impl Future<Output = Flow> + Send + '_ {
    let mode = group.mode;
    let mut steps = std::mem::take(&mut group.steps);
    if steps.len() == 1 {
        // The usual group, one task: its list is freed before the task
        // starts rather than kept while it runs (96 bytes per sleeping
        // group), and its future is the task's alone.
        let step = steps.pop().expect("one step");
        drop(steps);
        Either::Left(run_step(state, step, accepted_at))
    } else {
        // Boxed: the common group, one task, should not carry the space of
        // a list's future (bench/memory.sh reports bytes per group).
        Either::Right(Box::pin(run_many(state, steps, mode, accepted_at)) as BoxFlow<'_>)
    }
}

async fn run_many(state: &State, steps: Vec<Step>, mode: Mode, accepted_at: Instant) -> Flow {
    if mode == Mode::Concurrent {
        run_concurrent(state, steps, accepted_at).await
    } else {
        let steps = Unstarted {
            state,
            steps: steps.into_iter(),
        };
        run_in_order(steps, mode, accepted_at).await
    }
}

async fn run_concurrent(state: &State, steps: Vec<Step>, accepted_at: Instant) -> Flow {
    let steps = steps
        .into_iter()
        .map(|step| run_step(state, step, accepted_at));
    let flows = futures_util::future::join_all(steps).await;
    flows.into_iter().max().unwrap_or(Flow::Ok)
}

/// The steps of a group not started yet; those left when it is dropped
/// (its group's future was) are counted as cut off.
struct Unstarted<'a> {
    state: &'a State,
    steps: std::vec::IntoIter<Step>,
}

impl Unstarted<'_> {
    fn take_rest(&mut self) -> BackgroundTasks {
        BackgroundTasks::from_steps(self.steps.by_ref().collect())
    }
}

impl Drop for Unstarted<'_> {
    fn drop(&mut self) {
        if self.steps.len() > 0 {
            let rest = self.take_rest();
            self.state.cut_off_pending(&rest);
            rest.discard();
        }
    }
}

async fn run_in_order(mut steps: Unstarted<'_>, mode: Mode, accepted_at: Instant) -> Flow {
    let state = steps.state;
    let mut result = Flow::Ok;
    while let Some(step) = steps.steps.next() {
        match run_step(state, step, accepted_at).await {
            Flow::Ok => {}
            Flow::Failed if mode == Mode::StopOnError => {
                let rest = steps.take_rest();
                state.counters().skipped(rest.len() as u64);
                rest.discard();
                return Flow::Failed;
            }
            Flow::Failed => result = Flow::Failed,
            // The rest is counted when `steps` is dropped.
            Flow::Cut => return Flow::Cut,
        }
    }
    result
}

type BoxFlow<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

fn run_step(
    state: &State,
    step: Step,
    accepted_at: Instant,
) -> impl Future<Output = Flow> + Send + '_ {
    match step {
        Step::Task(task) => Either::Left(run_task(state, task, accepted_at)),
        Step::Group(group) => Either::Right(run_nested(state, group, accepted_at)),
    }
}

/// Boxed because nested groups recurse; flat groups, the common case, never
/// pay for it.
fn run_nested(state: &State, group: BackgroundTasks, accepted_at: Instant) -> BoxFlow<'_> {
    Box::pin(run_steps(state, group, accepted_at))
}

/// Not an `async fn`, which would keep the task both as its argument and
/// inside its attempts: this future is part of every group's, and thousands
/// of groups wait at once.
fn run_task(
    state: &State,
    task: BackgroundTask,
    accepted_at: Instant,
) -> impl Future<Output = Flow> + Send + '_ {
    if state.deadline().is_set() {
        state.counters().cut_off_pending(1);
        state.record_cut_off(task.task_name());
        return Either::Left(std::future::ready(Flow::Cut));
    }
    let started = Instant::now();
    state.counters().started(started - accepted_at);
    // Only when DEBUG is on: see `Permit::defer_in`. Boxed, as every
    // group's future would otherwise hold the room of a span (40 bytes)
    // that is almost never there.
    let span = tracing::enabled!(tracing::Level::DEBUG).then(|| {
        Box::new(tracing::debug_span!(
            "epilogue.task",
            task = task.task_name()
        ))
    });
    let attempts = InSpan {
        span,
        inner: Attempts::new(state, task),
    };
    Either::Right(attempts.map(move |(outcome, name)| {
        let Some(outcome) = outcome else {
            state.counters().cut_running();
            state.record_cut_off(&name);
            tracing::debug!(task = %name, "background task cut off by the shutdown deadline");
            return Flow::Cut;
        };
        state.counters().finished(&name, outcome, started.elapsed());
        if outcome.is_success() {
            Flow::Ok
        } else {
            Flow::Failed
        }
    }))
}

/// A future polled inside a span, if there is one.
struct InSpan<F> {
    span: Option<Box<Span>>,
    inner: F,
}

impl<F: Future + Unpin> Future for InSpan<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.span.as_deref().map(Span::enter);
        Pin::new(&mut this.inner).poll(cx)
    }
}

/// One task's attempts: the first, then its retries while it fails, each
/// with its panic caught and its timeout applied. Dropped before its end
/// (the shutdown deadline), it counts its task as cut off.
///
/// Written out by hand because it pays: written as nested `async fn`s, the
/// same steps made every group's future 1.4 KB (bench/memory.sh reports
/// bytes per group).
/// Thousands of groups wait at once under load, each in one allocation.
///
/// Its output is the last attempt's outcome, `None` for a blocking task
/// that got its thread after the deadline, and the task's name.
struct Attempts<'a> {
    state: &'a State,
    name: Cow<'static, str>,
    // Each attempt but the last runs a copy: the last one takes the job.
    job: Option<JobBox>,
    retries: u32,
    attempt: u32,
    /// The wait before the next retry: doubles each time.
    backoff: Duration,
    timeout: Option<Duration>,
    current: Attempt,
}

enum Attempt {
    /// The next attempt starts at the next poll.
    Next,
    Async {
        future: Pin<Box<dyn Future<Output = TaskResult> + Send>>,
        // Unconstrained: a task that spends its whole cooperative budget
        // every poll would otherwise leave none for its timer, which would
        // never fire (`tokio::time::timeout` makes the same exception).
        timer: Option<Pin<Box<Unconstrained<Sleep>>>>,
    },
    Blocking(Pin<Box<dyn Future<Output = Ended> + Send>>),
    Backoff(Pin<Box<Sleep>>),
    Done,
}

/// How one attempt ended.
enum Ended {
    /// It ran to its end: its result, or its panic.
    Ran(Result<TaskResult, Box<dyn Any + Send>>),
    TimedOut,
    /// A blocking task that got its thread after the shutdown deadline,
    /// and so never started.
    NotStarted,
}

impl<'a> Attempts<'a> {
    fn new(state: &'a State, task: BackgroundTask) -> Self {
        let (name, job, retry, timeout) = task.into_parts_for_attempts();
        Self {
            state,
            name,
            job: Some(job),
            retries: retry.retries,
            attempt: 0,
            backoff: retry.backoff,
            timeout: timeout.or(state.config().task_timeout),
            current: Attempt::Next,
        }
    }

    fn start(&mut self) {
        let run = match self.job.take_if(|_| self.attempt == self.retries) {
            Some(last) => last.into_run(),
            None => self
                .job
                .as_ref()
                .expect("kept until the last attempt")
                .attempt(),
        };
        self.current = match run {
            Run::Async(future) => Attempt::Async {
                future,
                timer: self
                    .timeout
                    .map(|limit| Box::pin(tokio::task::unconstrained(tokio::time::sleep(limit)))),
            },
            Run::Blocking(call) => {
                Attempt::Blocking(Box::pin(run_blocking(self.state, call, self.timeout)))
            }
        };
    }

    /// What comes after an attempt: the outcome, or a retry after a backoff.
    fn finish(&mut self, ended: Ended) -> Option<Outcome> {
        let (outcome, detail) = match ended {
            Ended::TimedOut | Ended::NotStarted => (Outcome::TimedOut, None),
            Ended::Ran(Ok(Ok(()))) => (Outcome::Succeeded, None),
            Ended::Ran(Ok(Err(error))) => (Outcome::Failed, Some(error)),
            Ended::Ran(Err(payload)) => (Outcome::Panicked, Some(panic_message(&*payload))),
        };
        let name = &self.name;
        if outcome.is_success() {
            return Some(outcome);
        }
        if self.attempt == self.retries {
            report_failure(name, outcome, detail.as_deref(), self.attempt);
            let error = detail.unwrap_or_else(|| "timed out".to_owned());
            self.state.counters().failure(name, error);
            return Some(outcome);
        }
        self.attempt += 1;
        self.state.counters().retried();
        let backoff = self.backoff;
        tracing::info!(
            task = %name,
            attempt = self.attempt,
            error = detail.as_deref().unwrap_or(""),
            "background task failed; retrying in {backoff:?}"
        );
        self.current = Attempt::Backoff(Box::pin(tokio::time::sleep(backoff)));
        self.backoff = backoff.saturating_mul(2);
        None
    }

    fn end(&mut self, outcome: Option<Outcome>) -> Poll<(Option<Outcome>, Cow<'static, str>)> {
        self.current = Attempt::Done;
        Poll::Ready((outcome, std::mem::take(&mut self.name)))
    }
}

impl Future for Attempts<'_> {
    type Output = (Option<Outcome>, Cow<'static, str>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let ended = match &mut this.current {
                Attempt::Next => {
                    this.start();
                    continue;
                }
                Attempt::Async { future, timer } => {
                    let polled_at = Instant::now();
                    let poll =
                        std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)));
                    let took = polled_at.elapsed();
                    if took > LONG_POLL {
                        long_poll(this.state, &this.name, took);
                    }
                    match poll {
                        Ok(Poll::Ready(result)) => Ended::Ran(Ok(result)),
                        Err(payload) => Ended::Ran(Err(payload)),
                        Ok(Poll::Pending) => {
                            let timed_out = timer
                                .as_mut()
                                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                            if !timed_out {
                                return Poll::Pending;
                            }
                            Ended::TimedOut
                        }
                    }
                }
                Attempt::Blocking(attempt) => match attempt.as_mut().poll(cx) {
                    Poll::Ready(Ended::NotStarted) => return this.end(None),
                    Poll::Ready(ended) => ended,
                    Poll::Pending => return Poll::Pending,
                },
                Attempt::Backoff(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.current = Attempt::Next;
                    continue;
                }
                Attempt::Done => panic!("Attempts polled after completion"),
            };
            if let Some(outcome) = this.finish(ended) {
                return this.end(Some(outcome));
            }
        }
    }
}

impl Drop for Attempts<'_> {
    fn drop(&mut self) {
        if matches!(self.current, Attempt::Done) {
            return;
        }
        self.state.counters().cut_running();
        self.state.record_cut_off(&self.name);
        tracing::debug!(task = %self.name, "background task cut off by the shutdown deadline");
        // The task's future and arguments are the user's: a panic in their
        // `Drop` must not stop the lane that drops every cut-off group.
        let user = (
            std::mem::replace(&mut self.current, Attempt::Done),
            self.job.take(),
        );
        if std::panic::catch_unwind(AssertUnwindSafe(|| drop(user))).is_err() {
            tracing::error!(task = %self.name, "background task panicked when it was cut off");
        }
    }
}

/// A poll longer than this stalls the other groups of its lane for long
/// enough to show in their latency; blocking work belongs on the blocking
/// pool.
const LONG_POLL: Duration = Duration::from_millis(10);

// `&Cow`, not `&str`: a name borrowed for `'static` is kept without a copy.
#[allow(clippy::ptr_arg)]
fn long_poll(state: &State, name: &Cow<'static, str>, took: Duration) {
    if state.counters().long_poll(name, took) {
        tracing::warn!(
            task = %name,
            poll = ?took,
            "a poll of a background task took over 10 ms, stalling every other background task \
             on its lane: make blocking work a plain `fn` task (it runs on the blocking pool) or \
             move it into `tokio::task::spawn_blocking`. Counted in Stats::long_polls; logged \
             once per task name"
        );
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
fn run_blocking(
    state: &State,
    call: BlockingCall,
    timeout: Option<Duration>,
) -> impl Future<Output = Ended> + Send + 'static {
    let blocking = state.blocking().clone();
    let deadline = state.deadline_flag();
    async move {
        // Take the blocking permit before the thread: a waiting blocking task
        // costs a parked future, not a parked thread.
        let permit = blocking
            .acquire_owned()
            .await
            .expect("the blocking semaphore is never closed");
        // Set when this attempt is given up (timed out, or cut off by the
        // deadline) before its thread came: it is reported as such by then,
        // so it must not run late, nor beside its own retry.
        let given_up = GiveUpOnDrop(Arc::new(AtomicBool::new(false)));
        let gave_up = given_up.0.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if deadline.is_set() || gave_up.load(Ordering::Acquire) {
                return None;
            }
            Some(call())
        });
        let ran = async {
            match handle.await {
                Ok(Some(result)) => Ended::Ran(Ok(result)),
                Ok(None) => Ended::NotStarted,
                Err(error) => Ended::Ran(Err(match error.try_into_panic() {
                    Ok(payload) => payload,
                    Err(error) => Box::new(error.to_string()),
                })),
            }
        };
        let ended = match timeout {
            None => ran.await,
            Some(limit) => tokio::time::timeout(limit, ran)
                .await
                .unwrap_or(Ended::TimedOut),
        };
        drop(given_up);
        ended
    }
}

/// Marks a blocking attempt as given up when its future ends or is dropped:
/// a thread that comes after that skips the call.
struct GiveUpOnDrop(Arc<AtomicBool>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The text of a panic's payload, as the runner reports it in its log and
/// [`Stats`](crate::Stats): for an executor that catches a task's panic
/// itself (a durable queue records it with the task).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
