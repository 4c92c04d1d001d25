//! Running one accepted group: its steps in order (or at once), each task
//! isolated, timed, retried and counted.

use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::Unconstrained;
use tokio::time::Sleep;
use tracing::{Instrument, Span};

use super::state::{Admission, State};
use crate::latch;
use crate::stats::Outcome;
use crate::task::{BackgroundTask, BlockingCall, Retry, Run, TaskResult};
use crate::tasks::{BackgroundTasks, Mode, Step};

/// A group accepted by the runner, with all it needs to run.
pub(super) struct Accepted {
    /// Held until the group is done: its room in the runner.
    pub(super) admission: Admission,
    pub(super) tasks: BackgroundTasks,
    pub(super) accepted_at: Instant,
    pub(super) span: Span,
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

/// Starts `group` on its own tokio task, tracked by the runner. Outside a
/// runtime, the group is counted as cut off.
pub(super) fn spawn(group: Accepted) {
    let state = group.admission.state().clone();
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            // Taken here rather than in the task: free running permits go in
            // the order groups are accepted, whatever order tokio first
            // polls their tasks in.
            let running = state.running().clone().try_acquire_owned().ok();
            // Boxed: moving a box into the task is cheaper than copying
            // the group's future into it (measured with bench/profile.sh).
            let future = Box::pin(run_group(group, running));
            state.tracker().spawn_on(future, &handle);
        }
        Err(_) => {
            tracing::error!(
                tasks = group.tasks.len(),
                "background group accepted outside a tokio runtime; cut off"
            );
            cut_off_pending(&state, &group.tasks);
        }
    }
}

/// The body of a group's tokio task. `running` is the running permit the
/// group took when it was started, if one was free.
fn run_group(
    group: Accepted,
    running: Option<OwnedSemaphorePermit>,
) -> impl Future<Output = ()> + Send {
    let Accepted {
        admission,
        tasks,
        accepted_at,
        span,
    } = group;
    async move {
        let state = admission.state();
        let _running = match running {
            Some(permit) => permit,
            // Boxed, as every path most groups never take: the group's
            // future is as large as its largest path.
            None => match Box::pin(wait_for_running_permit(state, &tasks)).await {
                Some(permit) => permit,
                None => return,
            },
        };
        run_steps(state, tasks, accepted_at).instrument(span).await;
    }
}

/// Waits for a running permit, or for the shutdown deadline, which cuts the
/// group off.
async fn wait_for_running_permit(
    state: &State,
    tasks: &BackgroundTasks,
) -> Option<OwnedSemaphorePermit> {
    let deadline = std::pin::pin!(state.deadline().wait());
    let permit = std::pin::pin!(state.running().clone().acquire_owned());
    // The deadline first (`select` polls its first future first): a permit
    // freed by a cut-off group must not start more work after the deadline.
    match futures_util::future::select(deadline, permit).await {
        Either::Left(((), _)) => {
            cut_off_pending(state, tasks);
            None
        }
        Either::Right((permit, _)) => Some(permit.expect("the running semaphore is never closed")),
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
    let steps = std::mem::take(&mut group.steps);
    if mode == Mode::Concurrent {
        Either::Left(run_concurrent(state, steps, accepted_at))
    } else {
        Either::Right(run_in_order(state, steps.into_iter(), mode, accepted_at))
    }
}

async fn run_concurrent(state: &State, steps: Vec<Step>, accepted_at: Instant) -> Flow {
    let steps = steps
        .into_iter()
        .map(|step| run_step(state, step, accepted_at));
    let flows = futures_util::future::join_all(steps).await;
    flows.into_iter().max().unwrap_or(Flow::Ok)
}

async fn run_in_order(
    state: &State,
    mut steps: std::vec::IntoIter<Step>,
    mode: Mode,
    accepted_at: Instant,
) -> Flow {
    let mut result = Flow::Ok;
    while let Some(step) = steps.next() {
        match run_step(state, step, accepted_at).await {
            Flow::Ok => {}
            Flow::Failed if mode == Mode::StopOnError => {
                let rest = BackgroundTasks::from_steps(steps.collect());
                state.counters().skipped(rest.len() as u64);
                rest.discard();
                return Flow::Failed;
            }
            Flow::Failed => result = Flow::Failed,
            Flow::Cut => {
                let rest = BackgroundTasks::from_steps(steps.collect());
                cut_off_pending(state, &rest);
                rest.discard();
                return Flow::Cut;
            }
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

/// Counts tasks that will never start because the deadline passed, and keeps
/// their names for the shutdown report.
fn cut_off_pending(state: &State, tasks: &BackgroundTasks) {
    state.counters().cut_off_pending(tasks.len() as u64);
    tasks.visit_names(&mut |name| state.record_cut_off(name));
}

/// Not an `async fn`, which would keep the task both as its argument and
/// inside its attempts: this future is part of every group's, and the
/// group's is boxed.
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
    // Only when DEBUG is on: see `Permit::defer_in`.
    let span = if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug_span!("epilogue.task", task = task.task_name())
    } else {
        Span::none()
    };
    let attempts = Attempts::new(state, task).instrument(span);
    Either::Right(attempts.map(move |(outcome, name)| {
        let Some(outcome) = outcome else {
            state.counters().cut_running();
            state.record_cut_off(&name);
            tracing::debug!(task = %name, "background task cut off by the shutdown deadline");
            return Flow::Cut;
        };
        state.counters().finished(outcome, started.elapsed());
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
    /// shutdown deadline.
    ///
    /// Written out by hand, and it pays: written as nested `async fn`s, the
    /// same steps made every group's future 1.4 KB instead of 0.6 KB (its
    /// size, `size_of_val`, checked by `a_groups_future_stays_small` below),
    /// past glibc's thread cache for small blocks, and cost about 1,100 more
    /// instructions per request (`bench/profile.sh`).
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
    state: &'a State,
    name: Cow<'static, str>,
    retry: Retry,
    timeout: Option<Duration>,
    // Each attempt but the last runs a copy: the last one takes the task.
    task: Option<BackgroundTask>,
    attempt: u32,
    backoff: Duration,
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
        let retry = task.retry_policy();
        let tries = Tries {
            state,
            name: task.name_cow(),
            retry,
            timeout: task.timeout_policy().or(state.config().task_timeout),
            task: Some(task),
            attempt: 0,
            backoff: retry.backoff,
            current: Attempt::Next,
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
        if self.attempt == self.retry.retries {
            report_failure(name, outcome, detail.as_deref(), self.attempt);
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
}

impl Future for Attempts<'_> {
    type Output = (Option<Outcome>, Cow<'static, str>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let tries = this.tries;
        loop {
            let ended = match &mut tries.current {
                Attempt::Next => {
                    tries.start();
                    continue;
                }
                Attempt::Async { future, timer } => {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                        Ok(Poll::Ready(result)) => Ended::Ran(Ok(result)),
                        Err(payload) => Ended::Ran(Err(payload)),
                        Ok(Poll::Pending) => {
                            let timed_out = timer
                                .as_mut()
                                .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                            if !timed_out {
                                break;
                            }
                            Ended::TimedOut
                        }
                    }
                }
                Attempt::Blocking(attempt) => match attempt.as_mut().poll(cx) {
                    Poll::Ready(Ended::NotStarted) => break,
                    Poll::Ready(ended) => ended,
                    Poll::Pending => break,
                },
                Attempt::Backoff(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    tries.current = Attempt::Next;
                    continue;
                }
                Attempt::Done => panic!("Attempts polled after completion"),
            };
            if let Some(outcome) = tries.finish(ended) {
                tries.current = Attempt::Done;
                return Poll::Ready((Some(outcome), std::mem::take(&mut tries.name)));
            }
        }
        // Pending (or a blocking task that did not start because the deadline
        // passed): the task first, then the deadline, so that a task that is
        // done when the deadline passes counts as done, not cut off.
        if this.deadline.is_none() {
            this.deadline.set(Some(tries.state.deadline().wait()));
        }
        let deadline = this.deadline.as_pin_mut().expect("set above");
        if deadline.poll(cx).is_ready() {
            tries.current = Attempt::Done;
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
        let handle = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A thread may come free only after the deadline: the task is
            // reported cut off by then, so it must not run.
            if deadline.is_set() {
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
        match timeout {
            None => ran.await,
            Some(limit) => tokio::time::timeout(limit, ran)
                .await
                .unwrap_or(Ended::TimedOut),
        }
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
