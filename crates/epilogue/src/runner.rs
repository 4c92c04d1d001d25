//! The runner: where accepted background work lives until it is done.
//!
//! # Why a runner
//!
//! The obvious way to run work after a response is `tokio::spawn` in the
//! handler. It works until the first deploy: the process exits and every
//! spawned task still running or waiting is dropped without a trace, and under
//! a burst nothing stops a service from spawning more work than it can finish.
//! A `tokio_util::task::TaskTracker` fixes the first problem (it can be
//! waited on) but neither bounds the work nor says what happened to it.
//!
//! A [`Runner`] is a `TaskTracker` plus the rest of what a service needs:
//!
//! - **bounds**: at most `max_running` groups run at once and at most
//!   `max_pending` more wait; past that, [`reserve`](Runner::reserve) and
//!   [`spawn`](Runner::spawn) refuse, and the HTTP layers turn the refusal
//!   into `503 Service Unavailable` *before the handler runs*, so no work a
//!   handler already did is ever dropped;
//! - **isolation**: a task that returns `Err`, panics or times out is counted
//!   and logged with its name, and the next task of its group still runs;
//! - **blocking tasks** (plain `fn`s) run on tokio's blocking pool, at most
//!   `max_blocking` at once;
//! - **drain**: [`shutdown`](Runner::shutdown) stops admitting, waits for
//!   every accepted task up to a deadline and reports what was cut off;
//! - **visibility**: [`stats`](Runner::stats), `tracing` events and spans,
//!   and with the `metrics` feature, counters, gauges and histograms.
//!
//! | | `tokio::spawn` | `TaskTracker` | `Runner` |
//! |---|---|---|---|
//! | waits for the work on shutdown | no | yes | yes, with a deadline and a report |
//! | bounds the work | no | no | yes, refusing before the handler runs |
//! | panics and errors | lost in a `JoinHandle` nobody awaits | same | counted, logged by task name |
//! | blocking functions | stall a worker thread | same | run on the blocking pool, bounded |
//!
//! # Shutdown, edge by edge
//!
//! - Work admitted **before** `shutdown` (a request whose handler already had
//!   its place) is accepted and run, even if its response is sent during the
//!   drain; new reservations are refused from the moment `shutdown` (or
//!   [`close`](Runner::close)) is called.
//! - A task that **never ends** is cut off at the deadline: async tasks are
//!   dropped at their next `.await`; a blocking task cannot be interrupted,
//!   so its thread finishes in the background while the report counts it as
//!   cut off.
//! - Calling `shutdown` **twice** (say, on a second signal) is harmless: the
//!   second call waits with its own deadline, which a caller can make zero to
//!   cut everything off at once.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::Span;

use crate::execute;
use crate::latch::Latch;
use crate::stats::{Counters, Stats};
use crate::tasks::BackgroundTasks;

/// Owns every background task of an application: runs them, bounds them,
/// counts them and drains them on shutdown. Cheap to clone: clones share the
/// same runner.
///
/// See the [module documentation](crate::runner) for why it exists and how
/// shutdown treats each edge case.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use epilogue::{BackgroundTasks, Runner};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let runner = Runner::builder().max_running(64).max_pending(1024).build();
///
/// let mut tasks = BackgroundTasks::new();
/// tasks.add_task(|n: u32| async move { assert_eq!(n, 7) }, (7,));
/// runner.spawn(tasks).expect("an idle runner has room");
///
/// let report = runner.shutdown(Duration::from_secs(5)).await;
/// assert!(report.drained);
/// assert_eq!(runner.stats().succeeded, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct Runner {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    tracker: TaskTracker,
    /// Places for groups that run now.
    pub(crate) running: Semaphore,
    /// Places for plain-`fn` tasks on the blocking pool.
    pub(crate) blocking: Arc<Semaphore>,
    /// Groups holding a place: reserved, waiting or running.
    admitted: AtomicUsize,
    closed: AtomicBool,
    /// Passes when a shutdown's grace period ends, or at a second signal.
    pub(crate) deadline: Latch,
    pub(crate) counters: Counters,
    pub(crate) cut_off: Mutex<Vec<String>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    max_running: usize,
    max_pending: usize,
    max_blocking: usize,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retry_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_running: Builder::DEFAULT_MAX_RUNNING,
            max_pending: Builder::DEFAULT_MAX_PENDING,
            max_blocking: Builder::DEFAULT_MAX_BLOCKING,
            task_timeout: None,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Builds a [`Runner`]; from [`Runner::builder`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Default of [`max_running`](Builder::max_running).
    pub const DEFAULT_MAX_RUNNING: usize = 4096;
    /// Default of [`max_pending`](Builder::max_pending).
    pub const DEFAULT_MAX_PENDING: usize = 16_384;
    /// Default of [`max_blocking`](Builder::max_blocking).
    pub const DEFAULT_MAX_BLOCKING: usize = 64;

    /// How many groups may run at once (default 4096). A group takes a free
    /// place when its response has been sent, so free places go in that
    /// order; groups past the limit wait for a place to free up, in the
    /// order tokio first runs their tasks (roughly, not strictly, the order
    /// they were accepted). Async groups are cheap; this bound is
    /// for what the tasks talk to (a mail server, a database pool).
    ///
    /// # Panics
    ///
    /// When `n` is 0: no group could ever run.
    pub fn max_running(mut self, n: usize) -> Self {
        assert!(
            n > 0,
            "max_running must be at least 1, or no task could ever run"
        );
        self.config.max_running = n;
        self
    }

    /// How many accepted groups may wait for a running place (default
    /// 16 384). Past it, new work is refused. A request counts from the moment
    /// its handler is admitted, so a refusal always comes before the handler
    /// runs. 0 means no waiting: refuse as soon as every running place is taken.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.config.max_pending = n;
        self
    }

    /// How many plain-`fn` tasks may occupy tokio's blocking pool at once
    /// (default 64). Tokio's pool has 512 threads by default and the service
    /// shares it (`tokio::fs`, `spawn_blocking`, DNS): this bound keeps slow
    /// background work from taking all of them. Tasks past it wait.
    ///
    /// # Panics
    ///
    /// When `n` is 0: no blocking task could ever run.
    pub fn max_blocking(mut self, n: usize) -> Self {
        assert!(
            n > 0,
            "max_blocking must be at least 1, or no blocking task could ever run"
        );
        self.config.max_blocking = n;
        self
    }

    /// Stops each task attempt after `timeout` and counts it as `timed_out`
    /// (default: no timeout). An async task is dropped; a blocking one cannot
    /// be interrupted, so its thread runs on while the group moves on.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// The `Retry-After` that refused requests are given (default 1 s,
    /// rounded up to whole seconds on the wire).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config.retry_after = retry_after;
        self
    }

    /// The runner. It needs no runtime until the first group starts.
    pub fn build(self) -> Runner {
        let Config {
            max_running,
            max_blocking,
            ..
        } = self.config;
        Runner {
            inner: Arc::new(Inner {
                running: Semaphore::new(max_running),
                blocking: Arc::new(Semaphore::new(max_blocking)),
                config: self.config,
                tracker: TaskTracker::new(),
                admitted: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                deadline: Latch::default(),
                counters: Counters::default(),
                cut_off: Mutex::new(Vec::new()),
            }),
        }
    }
}

/// Why a runner refused new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Every running and waiting place is taken.
    #[error("background work is at capacity ({limit} groups running or waiting); retry later")]
    Full {
        /// `max_running + max_pending`.
        limit: usize,
    },
    /// [`Runner::shutdown`] or [`Runner::close`] was called.
    #[error("the service is shutting down and takes no new background work")]
    ShuttingDown,
}

impl Runner {
    /// A runner with the default limits; see [`Builder`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to set the limits.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Admits `tasks` and starts them now, on their own tokio task.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the runner is full or shutting down; `tasks` is then
    /// dropped without running.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn spawn(&self, tasks: impl Into<BackgroundTasks>) -> Result<(), Refused> {
        self.reserve()?.defer(tasks).start();
        Ok(())
    }

    /// Takes a place for one group that will be known later, such as the tasks
    /// of a response that has not been produced yet. Dropping the reservation
    /// gives the place back.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the runner is full or shutting down.
    pub fn reserve(&self) -> Result<Reservation, Refused> {
        let result = if self.is_closed() {
            Err(Refused::ShuttingDown)
        } else {
            let limit = self.inner.limit();
            self.inner
                .admitted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                })
                .map(|_| Reservation {
                    slot: Slot(self.inner.clone()),
                })
                .map_err(|_| Refused::Full { limit })
        };
        if result.is_err() {
            self.inner.counters.refused();
        }
        result
    }

    /// Admits `tasks` whatever the limits. For work that is already promised
    /// (a handler returned it on a route that did not reserve a place), where
    /// refusing would lose it.
    pub(crate) fn defer_over_limit(&self, tasks: BackgroundTasks, parent: &Span) -> Deferred {
        self.inner.admitted.fetch_add(1, Ordering::AcqRel);
        Deferred::new(Slot(self.inner.clone()), tasks, parent)
    }

    /// Stops admitting: from now on [`reserve`](Runner::reserve) and
    /// [`spawn`](Runner::spawn) refuse with [`Refused::ShuttingDown`]. Work
    /// already admitted still runs. [`shutdown`](Runner::shutdown) calls this.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.tracker.close();
    }

    /// Whether [`close`](Runner::close) or [`shutdown`](Runner::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// The `Retry-After` that refused requests are given.
    pub fn retry_after(&self) -> Duration {
        self.inner.config.retry_after
    }

    /// Stops admitting, waits up to `grace` for every accepted task, cuts off
    /// what is left, and reports.
    ///
    /// Tasks of responses still being sent when it is called are waited for
    /// too: they were accepted. See the [module documentation](crate::runner)
    /// for the edge cases.
    pub async fn shutdown(&self, grace: Duration) -> crate::ShutdownReport {
        crate::shutdown::shutdown(self, grace).await
    }

    /// Cuts every running and waiting task off now, as a passed shutdown
    /// deadline does.
    pub(crate) fn cut_off_now(&self) {
        self.inner.deadline.set();
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }
}

impl Default for Runner {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.inner.config)
            .field("admitted", &self.inner.admitted.load(Ordering::Relaxed))
            .field("closed", &self.is_closed())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Inner {
    fn limit(&self) -> usize {
        self.config
            .max_running
            .saturating_add(self.config.max_pending)
    }

    pub(crate) fn record_cut_off(&self, name: &str) {
        let mut names = self.cut_off.lock().unwrap_or_else(|e| e.into_inner());
        names.push(name.to_owned());
    }
}

/// A place taken in the runner: one group's worth of room.
pub(crate) struct Slot(Arc<Inner>);

impl Slot {
    pub(crate) fn runner(&self) -> &Arc<Inner> {
        &self.0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place in the [`Runner`] for one group of tasks, from
/// [`Runner::reserve`]. Dropping it gives the place back.
#[must_use = "a reservation holds a place in the runner until it is used or dropped"]
pub struct Reservation {
    slot: Slot,
}

impl Reservation {
    /// Accepts `tasks` in the reserved place, to be started by
    /// [`Deferred::start`] or when the [`Deferred`] is dropped, whichever
    /// comes first. The tasks count as accepted (and pending) from now on.
    pub fn defer(self, tasks: impl Into<BackgroundTasks>) -> Deferred {
        Deferred::new(self.slot, tasks.into(), &Span::current())
    }

    pub(crate) fn defer_in(self, tasks: BackgroundTasks, parent: &Span) -> Deferred {
        Deferred::new(self.slot, tasks, parent)
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").finish_non_exhaustive()
    }
}

/// An accepted group that has not started yet: the tasks of a response whose
/// body is still being sent. It starts on [`start`](Deferred::start) or when
/// dropped, so a group can never be forgotten; shutdown waits for it.
#[must_use = "a Deferred group starts when dropped; call start() to make that explicit"]
pub struct Deferred {
    group: Option<Accepted>,
    _token: TaskTrackerToken,
}

/// Everything a group needs to run, gathered when it was accepted.
pub(crate) struct Accepted {
    /// Held until the group is done: the group's place in the runner.
    pub(crate) slot: Slot,
    pub(crate) tasks: BackgroundTasks,
    pub(crate) accepted_at: Instant,
    pub(crate) span: Span,
}

impl Deferred {
    fn new(slot: Slot, mut tasks: BackgroundTasks, parent: &Span) -> Self {
        let inner = slot.runner();
        let tasks = tasks.take();
        inner.counters.accepted(tasks.len() as u64);
        // Asked first: `debug_span!` alone, with `tracing`'s `log` feature
        // on (axum turns it on) and no subscriber set, would hand every
        // disabled span to `log`.
        let span = if tracing::enabled!(tracing::Level::DEBUG) {
            let span = tracing::debug_span!(parent: None, "epilogue.group", tasks = tasks.len());
            span.follows_from(parent);
            span
        } else {
            Span::none()
        };
        Self {
            _token: inner.tracker.token(),
            group: Some(Accepted {
                slot,
                tasks,
                accepted_at: Instant::now(),
                span,
            }),
        }
    }

    /// Starts the group on its own tokio task. Outside a runtime (one that is
    /// shutting down, say) the group is counted as cut off instead.
    pub fn start(mut self) {
        self.start_now();
    }

    fn start_now(&mut self) {
        let Some(accepted) = self.group.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let inner = accepted.slot.runner().clone();
                let place = execute::try_take_place(&inner);
                // Boxed: moving a box into the task is cheaper than copying
                // the group's future into it (measured with bench/profile.sh).
                let group = Box::pin(execute::run_group(accepted, place));
                inner.tracker.spawn_on(group, &handle);
            }
            Err(_) => {
                tracing::error!(
                    tasks = accepted.tasks.len(),
                    "background group accepted outside a tokio runtime; cut off"
                );
                execute::cut_off_pending(accepted.slot.runner(), &accepted.tasks);
            }
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.start_now();
    }
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("tasks", &self.group.as_ref().map(|g| g.tasks.task_names()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::task::BackgroundTask;

    type Journal = Arc<Mutex<Vec<&'static str>>>;

    fn note(journal: &Journal, name: &'static str) -> BackgroundTask {
        BackgroundTask::new(
            |journal: Journal, name: &'static str| async move { journal.lock().unwrap().push(name) },
            (journal.clone(), name),
        )
        .name(name)
    }

    fn note_blocking(journal: &Journal, name: &'static str) -> BackgroundTask {
        BackgroundTask::new(
            |journal: Journal, name: &'static str| {
                std::thread::sleep(Duration::from_millis(20));
                journal.lock().unwrap().push(name)
            },
            (journal.clone(), name),
        )
        .name(name)
    }

    fn failing() -> BackgroundTask {
        BackgroundTask::new(|| async { Err::<(), _>("no mail server") }, ()).name("failing")
    }

    fn panicking() -> BackgroundTask {
        BackgroundTask::new(|| -> () { panic!("boom") }, ()).name("panicking")
    }

    async fn drain(runner: &Runner) -> crate::ShutdownReport {
        runner.shutdown(Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn a_group_runs_in_order_async_and_blocking_alike() {
        let runner = Runner::new();
        let journal = Journal::default();
        runner
            .spawn([
                note(&journal, "a"),
                note_blocking(&journal, "b"),
                note(&journal, "c"),
                note_blocking(&journal, "d"),
            ])
            .unwrap();
        let report = drain(&runner).await;
        assert!(report.drained);
        assert_eq!(*journal.lock().unwrap(), ["a", "b", "c", "d"]);
        let stats = runner.stats();
        assert_eq!(
            (
                stats.accepted,
                stats.succeeded,
                stats.pending,
                stats.running
            ),
            (4, 4, 0, 0)
        );
    }

    #[tokio::test]
    async fn failures_and_panics_are_counted_and_the_next_task_runs() {
        let runner = Runner::new();
        let journal = Journal::default();
        runner
            .spawn([
                failing(),
                note(&journal, "after error"),
                panicking(),
                note(&journal, "after panic"),
            ])
            .unwrap();
        drain(&runner).await;
        assert_eq!(*journal.lock().unwrap(), ["after error", "after panic"]);
        let stats = runner.stats();
        assert_eq!((stats.failed, stats.panicked, stats.succeeded), (1, 1, 2));
    }

    #[tokio::test]
    async fn an_async_panic_is_caught_too() {
        let runner = Runner::new();
        let journal = Journal::default();
        let mut tasks = BackgroundTasks::new();
        tasks.add_task(|| async { panic!("async boom") as () }, ());
        tasks.push(note(&journal, "next"));
        runner.spawn(tasks).unwrap();
        drain(&runner).await;
        assert_eq!(runner.stats().panicked, 1);
        assert_eq!(*journal.lock().unwrap(), ["next"]);
    }

    #[tokio::test]
    async fn stop_on_error_skips_the_rest_of_its_group_only() {
        let runner = Runner::new();
        let journal = Journal::default();
        let mut strict = BackgroundTasks::stop_on_error();
        strict
            .push(note(&journal, "first"))
            .push(failing())
            .push(note(&journal, "skipped"));
        let mut group = BackgroundTasks::new();
        group.merge(strict);
        group.push(note(&journal, "outside"));
        runner.spawn(group).unwrap();
        drain(&runner).await;
        assert_eq!(*journal.lock().unwrap(), ["first", "outside"]);
        let stats = runner.stats();
        assert_eq!((stats.skipped, stats.failed, stats.succeeded), (1, 1, 2));
        assert_eq!(
            stats.accepted,
            stats.skipped + stats.failed + stats.succeeded
        );
    }

    #[tokio::test]
    async fn a_concurrent_group_runs_its_tasks_at_once() {
        let runner = Runner::new();
        let started = Arc::new(AtomicUsize::new(0));
        let all_started = Arc::new(Notify::new());
        let mut set = BackgroundTasks::concurrent();
        for _ in 0..3 {
            // Each task waits until all three have started: only possible
            // when they run at the same time.
            set.add_task(
                |started: Arc<AtomicUsize>, all: Arc<Notify>| async move {
                    if started.fetch_add(1, SeqCst) + 1 == 3 {
                        all.notify_waiters();
                    } else {
                        let wait = all.notified();
                        tokio::time::timeout(Duration::from_secs(5), wait)
                            .await
                            .map_err(|_| "the other tasks never started")?;
                    }
                    Ok::<(), &str>(())
                },
                (started.clone(), all_started.clone()),
            );
        }
        set.push(failing());
        runner.spawn(set).unwrap();
        drain(&runner).await;
        let stats = runner.stats();
        assert_eq!((stats.succeeded, stats.failed), (3, 1), "{stats:?}");
    }

    #[tokio::test]
    async fn full_runner_refuses_and_gives_places_back() {
        let runner = Runner::builder().max_running(1).max_pending(1).build();
        let first = runner.reserve().unwrap();
        let second = runner.reserve().unwrap();
        assert_eq!(runner.reserve().unwrap_err(), Refused::Full { limit: 2 });
        assert_eq!(runner.stats().refused, 1);
        drop(first);
        let third = runner
            .reserve()
            .expect("a dropped reservation frees its place");
        drop((second, third));
        runner.close();
        assert_eq!(runner.reserve().unwrap_err(), Refused::ShuttingDown);
    }

    #[tokio::test]
    async fn groups_past_max_running_wait_their_turn_in_order() {
        let runner = Runner::builder().max_running(1).build();
        let journal = Journal::default();
        let gate = Arc::new(Notify::new());
        let mut first = BackgroundTasks::new();
        first.add_task(
            |gate: Arc<Notify>| async move { gate.notified().await },
            (gate.clone(),),
        );
        runner.spawn(first).unwrap();
        for name in ["second", "third"] {
            runner.spawn(note(&journal, name)).unwrap();
        }
        tokio::task::yield_now().await;
        assert_eq!(
            runner.stats().pending,
            2,
            "two groups wait for the only place"
        );
        assert!(journal.lock().unwrap().is_empty());
        gate.notify_one();
        drain(&runner).await;
        assert_eq!(*journal.lock().unwrap(), ["second", "third"]);
    }

    #[tokio::test]
    async fn retries_until_success_and_counts_them() {
        let runner = Runner::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let task = BackgroundTask::new(
            |calls: Arc<AtomicUsize>| async move {
                match calls.fetch_add(1, SeqCst) {
                    0 | 1 => Err("transient"),
                    _ => Ok(()),
                }
            },
            (calls.clone(),),
        )
        .retry(3, Duration::from_millis(1));
        runner.spawn(task).unwrap();
        drain(&runner).await;
        assert_eq!(calls.load(SeqCst), 3);
        let stats = runner.stats();
        assert_eq!((stats.succeeded, stats.failed, stats.retried), (1, 0, 2));
    }

    #[tokio::test]
    async fn a_task_that_keeps_failing_is_tried_once_per_retry_then_counted_once() {
        let runner = Runner::builder()
            .task_timeout(Duration::from_millis(50))
            .build();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = BackgroundTasks::new();
        // Fails, panics, then times out: every kind of failure is retried.
        tasks.push(
            BackgroundTask::new(
                |calls: Arc<AtomicUsize>| async move {
                    match calls.fetch_add(1, SeqCst) {
                        0 => Err("down"),
                        1 => panic!("bug"),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            Ok(())
                        }
                    }
                },
                (calls.clone(),),
            )
            .retry(2, Duration::from_millis(1)),
        );
        tasks.add_task(|| std::thread::sleep(Duration::from_millis(500)), ());
        runner.spawn(tasks).unwrap();
        drain(&runner).await;
        assert_eq!(calls.load(SeqCst), 3);
        let stats = runner.stats();
        assert_eq!(
            (
                stats.timed_out,
                stats.retried,
                stats.succeeded,
                stats.failed
            ),
            (2, 2, 0, 0),
            "the last attempt's outcome counts, and the blocking task timed out too: {stats:?}"
        );
    }

    #[tokio::test]
    async fn a_task_that_spends_its_whole_budget_still_times_out() {
        let runner = Runner::builder()
            .task_timeout(Duration::from_millis(50))
            .build();
        // Never done, and out of tokio's cooperative budget at every poll,
        // as a task draining a busy channel is.
        async fn spin() {
            loop {
                tokio::task::consume_budget().await;
            }
        }
        runner.spawn(BackgroundTask::new(spin, ())).unwrap();
        let report = runner.shutdown(Duration::from_secs(10)).await;
        assert!(report.drained, "cut off instead of timed out: {report:?}");
        assert_eq!(runner.stats().timed_out, 1);
    }

    #[tokio::test]
    async fn a_task_over_its_timeout_is_counted_and_the_group_goes_on() {
        let runner = Runner::builder()
            .task_timeout(Duration::from_millis(50))
            .build();
        let journal = Journal::default();
        let mut tasks = BackgroundTasks::new();
        tasks.add_task(|| tokio::time::sleep(Duration::from_secs(60)), ());
        tasks.push(note(&journal, "next"));
        runner.spawn(tasks).unwrap();
        drain(&runner).await;
        assert_eq!(runner.stats().timed_out, 1);
        assert_eq!(*journal.lock().unwrap(), ["next"]);
    }

    #[tokio::test]
    async fn shutdown_cuts_off_what_outlives_the_grace_and_reports_it() {
        let runner = Runner::builder().max_running(1).build();
        let journal = Journal::default();
        let mut slow = BackgroundTasks::new();
        slow.push(note(&journal, "quick"));
        slow.add_task(|| tokio::time::sleep(Duration::from_secs(60)), ());
        slow.push(note(&journal, "never"));
        runner.spawn(slow).unwrap();
        runner.spawn(note(&journal, "waiting")).unwrap();
        let report = runner.shutdown(Duration::from_millis(200)).await;
        assert!(!report.drained);
        assert_eq!(*journal.lock().unwrap(), ["quick"]);
        assert_eq!(report.cut_off.len(), 3, "{:?}", report.cut_off);
        assert!(report.cut_off.contains(&"never".to_owned()));
        assert!(report.cut_off.contains(&"waiting".to_owned()));
        let stats = report.stats;
        assert_eq!(
            (stats.cut_off, stats.succeeded, stats.pending, stats.running),
            (3, 1, 0, 0)
        );
        assert!(report.elapsed < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn shutdown_waits_for_deferred_groups_and_admits_no_new_work() {
        let runner = Runner::new();
        let journal = Journal::default();
        let deferred = runner.reserve().unwrap().defer(note(&journal, "sent late"));
        let shutdown = tokio::spawn({
            let runner = runner.clone();
            async move { runner.shutdown(Duration::from_secs(10)).await }
        });
        // Shutdown has begun once the runner is closed.
        while !runner.is_closed() {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            runner.spawn(note(&journal, "too late")),
            Err(Refused::ShuttingDown)
        );
        assert!(
            !shutdown.is_finished(),
            "the deferred group is still to run"
        );
        deferred.start();
        let report = shutdown.await.unwrap();
        assert!(report.drained);
        assert_eq!(report.finished_during_drain, 1);
        assert_eq!(*journal.lock().unwrap(), ["sent late"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_tasks_are_bounded_by_max_blocking() {
        let runner = Runner::builder().max_blocking(2).build();
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        for _ in 0..6 {
            runner
                .spawn(BackgroundTask::new(
                    |now: Arc<AtomicUsize>, peak: Arc<AtomicUsize>| {
                        let n = now.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(n, SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        now.fetch_sub(1, SeqCst);
                    },
                    (now.clone(), peak.clone()),
                ))
                .unwrap();
        }
        drain(&runner).await;
        assert_eq!(runner.stats().succeeded, 6);
        assert_eq!(peak.load(SeqCst), 2);
    }

    #[test]
    fn a_group_deferred_outside_a_runtime_is_cut_off_not_lost_silently() {
        let runner = Runner::new();
        let journal = Journal::default();
        runner
            .reserve()
            .unwrap()
            .defer(note(&journal, "orphan"))
            .start();
        let stats = runner.stats();
        assert_eq!((stats.accepted, stats.cut_off, stats.pending), (1, 1, 0));
    }

    #[test]
    fn a_group_dropped_with_its_runtime_gives_its_running_place_back() {
        let runner = Runner::builder().max_running(1).build();
        let journal = Journal::default();
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        // Started (so it holds the only running place) but never polled.
        runtime().block_on(async { runner.spawn(note(&journal, "dropped")).unwrap() });
        runtime().block_on(async {
            runner.spawn(note(&journal, "runs")).unwrap();
            assert!(drain(&runner).await.drained);
        });
        assert_eq!(*journal.lock().unwrap(), ["runs"]);
    }
}
