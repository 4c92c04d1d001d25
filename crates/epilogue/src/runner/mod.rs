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
//! A [`Runner`] waits for its work as a `TaskTracker` does, and adds the
//! rest of what a service needs:
//!
//! - **bounds**: at most `max_running` groups run at once and at most
//!   `max_pending` more wait; past that, [`spawn`](Runner::spawn) refuses,
//!   and the HTTP layers admit a request before its handler runs on routes
//!   that admit (`Admitted`, `background(..)`, `RequestTasks`), turning a
//!   refusal into `503 Service Unavailable`, so no work such a handler did
//!   is dropped; a response with tasks on a route that does not admit is
//!   admitted when it comes, and replaced by a `503` when the runner is
//!   full;
//! - **isolation**: a task that returns `Err`, panics or times out is counted
//!   and logged with its name, and the next task of its group still runs;
//! - **blocking tasks** (plain `fn`s) run on tokio's blocking pool, at most
//!   `max_blocking` at once; an async task whose poll blocks for more than
//!   10 ms, stalling the other tasks of its lane, is counted
//!   ([`TaskStats::long_polls`](crate::TaskStats::long_polls)) and logged
//!   once per name;
//! - **drain**: [`shutdown`](Runner::shutdown) stops admitting, waits for
//!   every accepted task up to a deadline and reports what was cut off;
//! - **visibility**: [`stats`](Runner::stats), `tracing` events and spans,
//!   and with the `metrics` feature, counters, gauges and histograms.
//!
//! | | `tokio::spawn` | `TaskTracker` | `Runner` |
//! |---|---|---|---|
//! | waits for the work on shutdown | no | yes | yes, with a deadline and a report |
//! | bounds the work | no | no | yes, refusing before the handler runs on admitted routes |
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
//! - Calling `shutdown` **twice** is harmless, but the deadline is the
//!   runner's: once either call's grace period has passed, every task is cut
//!   off. To cut off at once (a second signal), call
//!   [`cut_off_now`](Runner::cut_off_now).
//! - `shutdown` is **cancel-safe** in the sense that matters: dropping its
//!   future (a `select!` that lost) leaves the runner closed and every task
//!   running; the deadline is only set once a `shutdown` reaches it. Call it
//!   again to wait for them.
//!
//! # Layout
//!
//! Each file imports only those below it. `mod.rs` is the public face
//! ([`Runner`], [`Builder`]); `permit.rs` a group's room from admission to
//! its start (`Permit`, `Deferred`, [`Hold`]); `shutdown.rs` the drain
//! and its [`ShutdownReport`]; `execute.rs` running one group; `state.rs`
//! the shared state and an accepted group's hold on it, which starts
//! groups on the lanes as places free up; `lanes.rs` the few long-lived
//! tokio tasks that poll every running group; `places.rs` the running
//! places and the queue of groups waiting for one; `config.rs` the limits.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::stats::Stats;
use crate::tasks::BackgroundTasks;

pub(crate) mod config;
mod execute;
mod lanes;
mod permit;
mod places;
mod shutdown;
mod state;

pub use config::Limits;
pub use execute::panic_message;
pub(crate) use permit::{Deferred, Permit};
pub use permit::{Hold, Refused};
pub use shutdown::ShutdownReport;

use config::Config;
use state::State;

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
    state: Arc<State>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_running: Builder::DEFAULT_MAX_RUNNING,
            max_pending: Builder::DEFAULT_MAX_PENDING,
            max_blocking: Builder::DEFAULT_MAX_BLOCKING,
            task_timeout: None,
            retry_after: Duration::from_secs(1),
            lanes: None,
            runtime: None,
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
    /// The largest [`max_running`](Builder::max_running) and
    /// [`max_blocking`](Builder::max_blocking): tokio's
    /// `Semaphore::MAX_PERMITS`. Larger values are lowered to it.
    pub(crate) const MAX_LIMIT: usize = Semaphore::MAX_PERMITS;

    /// How many groups may run at once (default 4096, at most tokio's
    /// `Semaphore::MAX_PERMITS`, to which larger values are lowered). A
    /// group takes a free running
    /// place when its response has been sent; groups past the limit wait in
    /// a queue, in the order they were started, and take the places as they
    /// free up. Async groups are cheap; this bound is for what the tasks
    /// talk to (a mail server, a database pool).
    ///
    /// # Panics
    ///
    /// When `n` is 0: no group could ever run.
    pub fn max_running(mut self, n: usize) -> Self {
        self.config.max_running = permits("max_running", n);
        self
    }

    /// How many accepted groups may wait for a running permit (default
    /// 16 384). Past it, new work is refused. A request counts from the
    /// moment it is admitted: before its handler runs on a route that
    /// admits, so that a refusal comes before the handler; on one that does
    /// not, when its response comes. 0 means no waiting: refuse as soon as
    /// every running permit is taken.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.config.max_pending = n;
        self
    }

    /// How many plain-`fn` tasks may occupy tokio's blocking pool at once
    /// (default 64, at most `Semaphore::MAX_PERMITS`). Tokio's pool
    /// has 512 threads by default and the service shares it (`tokio::fs`,
    /// `spawn_blocking`, DNS): this bound keeps slow background work from
    /// taking all of them. Tasks past it wait.
    ///
    /// # Panics
    ///
    /// When `n` is 0: no blocking task could ever run.
    pub fn max_blocking(mut self, n: usize) -> Self {
        self.config.max_blocking = permits("max_blocking", n);
        self
    }

    /// Stops each task attempt after `timeout` and counts it as `timed_out`
    /// (default: no timeout); a task's own
    /// [`BackgroundTask::timeout`](crate::BackgroundTask::timeout) overrides
    /// it. An async task is dropped; a blocking one cannot be interrupted, so
    /// its thread runs on while the group moves on.
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

    /// Runs every group on `runtime`, whichever runtime starts it (default:
    /// the runtime the group starts on).
    ///
    /// For a server whose workers each run a single-threaded runtime of
    /// their own, as actix-web's do: there, by default, a group would run on
    /// the thread of the worker whose response started it, and a task that
    /// blocks (or a burst of tasks) would stall that worker's requests
    /// (actix-web#3049). Give it a multi-threaded runtime, and background
    /// work runs on every core, apart from the requests; plain-`fn` tasks
    /// then use that runtime's blocking pool.
    ///
    /// ```
    /// let background = tokio::runtime::Runtime::new().unwrap();
    /// let runner = epilogue::Runner::builder()
    ///     .runtime(background.handle().clone())
    ///     .build();
    /// # drop(runner);
    /// ```
    pub fn runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.config.runtime = Some(runtime);
        self
    }

    /// How many lanes poll the running groups: long-lived tokio tasks, each
    /// owning many groups, so that a group waking up marks it ready inside
    /// its lane instead of scheduling a tokio task of its own (see
    /// bench/README.md, "Background work in lanes", for what that buys
    /// under load).
    /// Default: one per worker thread of the runtime the first group
    /// starts on (`Handle::metrics().num_workers()`), so that background
    /// work can use every core; fewer lanes batch more wake-ups per lane
    /// but keep background work on fewer cores at a time. Blocking tasks
    /// run on tokio's blocking pool whatever the number of lanes.
    ///
    /// For tests only: no user, bench or demo sets it.
    ///
    /// # Panics
    ///
    /// When `n` is 0: no group could ever run.
    #[cfg(test)]
    pub(crate) fn lanes(mut self, n: usize) -> Self {
        assert!(n > 0, "lanes must be at least 1, or no task could ever run");
        self.config.lanes = Some(n);
        self
    }

    /// The runner. It needs no runtime until the first group starts.
    pub fn build(self) -> Runner {
        Runner {
            state: Arc::new(State::new(self.config)),
        }
    }
}

/// A number of semaphore permits from a user: at least one, at most what
/// tokio can count.
fn permits(what: &str, n: usize) -> usize {
    assert!(
        n > 0,
        "{what} must be at least 1, or no task could ever run"
    );
    n.min(Builder::MAX_LIMIT)
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

    /// Admits `tasks` and starts them now (in one of the runner's lanes,
    /// see the [crate documentation](crate#when-tasks-run)), or queues them
    /// if `max_running` groups run.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the runner is full or shutting down; `tasks` is then
    /// dropped without running.
    ///
    /// Outside a tokio runtime the group is admitted, counted as cut off, and
    /// an error is logged: there is nothing to run it on.
    pub fn spawn(&self, tasks: impl Into<BackgroundTasks>) -> Result<(), Refused> {
        let tasks = tasks.into();
        match self.admit() {
            Ok(permit) => {
                permit.defer(tasks).start();
                Ok(())
            }
            Err(refused) => {
                tasks.discard();
                Err(refused)
            }
        }
    }

    /// Runs `tasks` as one group on the task that awaits the returned
    /// future, rather than on one of the runner's lanes: for a caller that
    /// already has a task of its own and waits for the work to end, such as
    /// a queue's worker running one job (the durable tasks of
    /// `epilogue-durable`). It saves the hand-off to a lane and the wake-up
    /// back.
    ///
    /// Otherwise the group is the runner's as if [spawned](Runner::spawn):
    /// admitted under its limits, counted in its [`Stats`], waited for by
    /// its shutdown, and cut off (the future returns) at the shutdown
    /// deadline. If `max_running` groups run already, it waits for a place
    /// behind the others and starts on a lane, and the future completes at
    /// once. Dropping the future drops the group, counted as cut off.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the runner is full or shutting down; `tasks` is then
    /// dropped without running.
    pub fn run_here(
        &self,
        tasks: impl Into<BackgroundTasks>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, Refused> {
        let tasks = tasks.into();
        let permit = match self.admit() {
            Ok(permit) => permit,
            Err(refused) => {
                tasks.discard();
                return Err(refused);
            }
        };
        let here = permit.defer(tasks).start_here();
        let deadline = self.state.deadline_flag();
        Ok(async move {
            let Some(group) = here else {
                return;
            };
            let (span, group) = lanes::Group::run(group);
            let group = std::panic::AssertUnwindSafe(group.instrument(span)).catch_unwind();
            // The deadline first, as a lane does: the group's drops count
            // what it had not finished as cut off.
            let passed = std::pin::pin!(deadline.wait());
            let group = std::pin::pin!(group);
            let panicked = match futures_util::future::select(passed, group).await {
                futures_util::future::Either::Left(_) => false,
                futures_util::future::Either::Right((ran, _)) => ran.is_err(),
            };
            if panicked {
                tracing::error!("a background group panicked outside its tasks; it is dropped");
            }
        })
    }

    /// Takes room for one group that will be known later, such as the tasks
    /// of a response that has not been produced yet. Dropping the [`Permit`]
    /// gives the room back; [`Permit::defer`] accepts the group.
    ///
    /// # Errors
    ///
    /// [`Refused`] when the runner is full or shutting down.
    pub(crate) fn admit(&self) -> Result<Permit, Refused> {
        Permit::acquire(&self.state)
    }

    /// Counts a request that carries tasks but was not admitted before its
    /// handler ran: see [`Stats::unadmitted`].
    pub(crate) fn count_unadmitted(&self) {
        self.state.counters().unadmitted();
    }

    /// Counts tasks that a handler added but that will never run, because
    /// the handler did not answer with a success: see [`Stats::abandoned`].
    pub(crate) fn abandon(&self, tasks: BackgroundTasks) {
        if !tasks.is_empty() {
            tracing::debug!(tasks = ?tasks.task_names(), "background tasks abandoned: their handler did not answer with a success");
            self.abandon_count(tasks.len() as u64);
            tasks.discard();
        }
    }

    /// [`abandon`](Runner::abandon), for tasks known only by their number.
    pub(crate) fn abandon_count(&self, tasks: u64) {
        if tasks > 0 {
            self.state.counters().abandoned(tasks);
        }
    }

    /// Stops admitting: from now on [`spawn`](Runner::spawn) and the HTTP
    /// layers' admission refuse with [`Refused::ShuttingDown`]. Work
    /// already admitted still runs. [`shutdown`](Runner::shutdown) calls this.
    pub fn close(&self) {
        self.state.close();
    }

    /// Whether [`close`](Runner::close) or [`shutdown`](Runner::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.state.is_closed()
    }

    /// Completes once the runner is closed ([`close`](Runner::close), or
    /// the start of a [`shutdown`](Runner::shutdown)): the moment for
    /// something that feeds the runner, such as a durable queue's client, to
    /// stop fetching new work.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let closing = self.state.closing();
        async move { closing.wait().await }
    }

    /// Completes once a shutdown's grace period has passed, or
    /// [`cut_off_now`](Runner::cut_off_now) was called: running tasks are
    /// being cut off, and whatever feeds the runner should give up its work
    /// in flight too (a durable queue puts it back, for a later process).
    pub fn cut_off(&self) -> impl Future<Output = ()> + Send + 'static {
        let deadline = self.state.deadline_flag();
        async move { deadline.wait().await }
    }

    /// Keeps [`shutdown`](Runner::shutdown) waiting until the returned
    /// [`Hold`] is dropped, within the same grace period as the tasks.
    ///
    /// For something that feeds the runner and must finish its own
    /// bookkeeping before the process exits: a durable queue's client
    /// records the outcome of the tasks it ran here. Past the deadline a
    /// shutdown waits at most one more second for holds, as for tasks that
    /// are being cut off. Holds take no room from the limits.
    pub fn hold(&self) -> Hold {
        Hold::new(&self.state)
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Whether its groups run on a runtime of its own ([`Builder::runtime`]).
    #[cfg(feature = "actix")]
    pub(crate) fn has_runtime(&self) -> bool {
        self.state.config().runtime.is_some()
    }

    /// The limits this runner was built with.
    pub fn limits(&self) -> Limits {
        self.state.config().limits()
    }

    /// The `Retry-After` that refused requests are given.
    pub fn retry_after(&self) -> Duration {
        self.state.config().retry_after
    }

    /// Stops admitting, waits up to `grace` for every accepted task, cuts off
    /// what is left, and reports.
    ///
    /// Tasks of responses still being sent when it is called are waited for
    /// too: they were accepted. See the [module documentation](crate::runner)
    /// for the edge cases, cancel safety included.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        shutdown::drain(&self.state, grace).await
    }

    /// Copies a snapshot of this runner's counters and gauges into the
    /// `metrics` facade: see the [`metrics`](crate::metrics) module for the
    /// names. Cheap enough to call before every scrape.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record_metrics(&self) {
        crate::metrics::record(&self.stats(), &self.limits());
    }

    /// Cuts every running and waiting task off now, as a passed shutdown
    /// deadline does: for a second Ctrl-C during a drain. A
    /// [`shutdown`](Runner::shutdown) under way then returns at once with
    /// what was cut off.
    pub fn cut_off_now(&self) {
        self.state.pass_deadline();
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
            .field("config", self.state.config())
            .field("admitted", &self.state.admitted())
            .field("closed", &self.is_closed())
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
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

    /// A task that holds its running place until `gate` is notified.
    fn waits_for(gate: &Arc<Notify>) -> BackgroundTask {
        BackgroundTask::new(
            |gate: Arc<Notify>| async move { gate.notified().await },
            (gate.clone(),),
        )
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
        let first = runner.admit().unwrap();
        let second = runner.admit().unwrap();
        assert_eq!(runner.admit().unwrap_err(), Refused::Full { limit: 2 });
        assert_eq!(runner.stats().refused, 1);
        drop(first);
        let third = runner.admit().expect("a dropped permit frees its room");
        drop((second, third));
        runner.close();
        assert_eq!(runner.admit().unwrap_err(), Refused::ShuttingDown);
    }

    #[tokio::test]
    async fn groups_past_max_running_wait_their_turn_in_order() {
        let runner = Runner::builder().max_running(1).build();
        let journal = Journal::default();
        let gate = Arc::new(Notify::new());
        runner.spawn(waits_for(&gate)).unwrap();
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

    /// A task that notes which tokio task it ran on.
    fn note_task_id(seen: &Arc<Mutex<Option<tokio::task::Id>>>) -> BackgroundTask {
        BackgroundTask::new(
            |seen: Arc<Mutex<Option<tokio::task::Id>>>| async move {
                *seen.lock().unwrap() = tokio::task::try_id();
            },
            (seen.clone(),),
        )
        .name("note_task_id")
    }

    #[tokio::test]
    async fn run_here_runs_the_group_on_the_awaiting_task_and_counts_it() {
        let runner = Runner::new();
        let journal = Journal::default();
        let seen = Arc::new(Mutex::new(None));
        let awaiting = tokio::spawn({
            let runner = runner.clone();
            let tasks = BackgroundTasks::from([
                note(&journal, "a"),
                failing(),
                note_task_id(&seen),
                note(&journal, "b"),
            ]);
            async move {
                runner.run_here(tasks).unwrap().await;
                tokio::task::id()
            }
        });
        let awaiting = awaiting.await.unwrap();
        // Done when the future is: no lane involved, no drain needed.
        assert_eq!(*journal.lock().unwrap(), ["a", "b"]);
        assert_eq!(*seen.lock().unwrap(), Some(awaiting));
        let stats = runner.stats();
        assert_eq!(
            (stats.accepted, stats.succeeded, stats.failed, stats.running),
            (4, 3, 1, 0)
        );
        assert_eq!(stats.by_task["note_task_id"].succeeded, 1);
        assert!(drain(&runner).await.drained);
    }

    #[tokio::test]
    async fn run_here_waits_its_turn_on_a_lane_when_every_place_is_taken() {
        let runner = Runner::builder().max_running(1).build();
        let journal = Journal::default();
        let gate = Arc::new(Notify::new());
        runner.spawn(waits_for(&gate)).unwrap();
        tokio::task::yield_now().await;
        // Queued behind the place's holder: the future completes at once.
        runner.run_here(note(&journal, "later")).unwrap().await;
        assert!(journal.lock().unwrap().is_empty());
        assert_eq!(runner.stats().pending, 1);
        gate.notify_one();
        assert!(drain(&runner).await.drained);
        assert_eq!(*journal.lock().unwrap(), ["later"]);
    }

    #[tokio::test]
    async fn run_here_is_refused_when_full_and_cut_off_at_the_deadline() {
        let runner = Runner::builder().max_running(1).max_pending(0).build();
        let forever = || BackgroundTask::new(std::future::pending::<()>, ()).name("forever");
        let running = runner.run_here(forever()).unwrap();
        let running = tokio::spawn(running);
        assert_eq!(
            runner.run_here(forever()).err(),
            Some(Refused::Full { limit: 1 })
        );
        let report = runner.shutdown(Duration::from_millis(50)).await;
        assert_eq!(report.cut_off, ["forever"]);
        // The deadline ends the awaiting future too.
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the future returns at the deadline")
            .unwrap();
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
        let deferred = runner.admit().unwrap().defer(note(&journal, "sent late"));
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
            .admit()
            .unwrap()
            .defer(note(&journal, "orphan"))
            .start();
        let stats = runner.stats();
        assert_eq!((stats.accepted, stats.cut_off, stats.pending), (1, 1, 0));
    }

    #[test]
    fn a_group_dropped_with_its_runtime_gives_its_place_back_and_is_counted_cut_off() {
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
            let report = drain(&runner).await;
            assert_eq!(report.cut_off, ["dropped"], "{report:?}");
            let stats = report.stats;
            assert_eq!(
                (stats.accepted, stats.succeeded, stats.cut_off),
                (2, 1, 1),
                "{stats:?}"
            );
            assert_eq!(
                (stats.pending, stats.running, stats.groups_running),
                (0, 0, 0)
            );
        });
        assert_eq!(*journal.lock().unwrap(), ["runs"]);
    }

    #[test]
    fn groups_dropped_with_their_runtime_mid_task_and_queued_keep_counts_sane() {
        let runner = Runner::builder().max_running(2).build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..3 {
                let mut tasks = BackgroundTasks::new();
                tasks.add_task(|| tokio::time::sleep(Duration::from_secs(60)), ());
                tasks.add_task(|| async {}, ());
                runner.spawn(tasks).unwrap();
            }
            // The two running groups are in their first task.
            while runner.stats().running < 2 {
                tokio::task::yield_now().await;
            }
        });
        drop(runtime);
        let stats = runner.stats();
        assert_eq!(
            (stats.accepted, stats.running, stats.cut_off),
            (6, 0, 4),
            "{stats:?}"
        );
        assert_eq!(
            (stats.pending, stats.groups_running, stats.groups_admitted),
            (2, 0, 1),
            "the third group still waits for a place: {stats:?}"
        );
        let report = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(runner.shutdown(Duration::from_millis(100)));
        assert_eq!(report.stats.cut_off, 6, "{report:?}");
        assert_eq!(report.stats.groups_admitted, 0, "{report:?}");
    }

    #[tokio::test]
    async fn a_tasks_own_timeout_overrides_the_runners() {
        let runner = Runner::builder()
            .task_timeout(Duration::from_secs(60))
            .build();
        let journal = Journal::default();
        let mut tasks = BackgroundTasks::new();
        tasks.push(
            BackgroundTask::new(|| tokio::time::sleep(Duration::from_secs(60)), ())
                .timeout(Duration::from_millis(50)),
        );
        tasks.push(note(&journal, "next"));
        runner.spawn(tasks).unwrap();
        let report = runner.shutdown(Duration::from_secs(10)).await;
        assert!(report.drained, "{report:?}");
        assert_eq!(runner.stats().timed_out, 1);
        assert_eq!(*journal.lock().unwrap(), ["next"]);
    }

    /// Runs `test` on a runtime whose one blocking thread is busy until
    /// `test` is done: the runner's blocking tasks wait in tokio's queue.
    /// Returns once every queued blocking task has had its thread.
    fn with_the_blocking_thread_busy<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (release, released) = std::sync::mpsc::channel::<()>();
            let busy = tokio::task::spawn_blocking(move || released.recv());
            test().await;
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
        });
        // Dropping the runtime waits for the blocking queue to empty.
        drop(runtime);
    }

    #[test]
    fn a_blocking_task_that_gets_its_thread_after_the_deadline_never_runs() {
        let runner = Runner::new();
        let ran = Arc::new(AtomicUsize::new(0));
        with_the_blocking_thread_busy(|| async {
            for _ in 0..5 {
                runner
                    .spawn(BackgroundTask::new(
                        |ran: Arc<AtomicUsize>| {
                            ran.fetch_add(1, SeqCst);
                        },
                        (ran.clone(),),
                    ))
                    .unwrap();
            }
            let report = runner.shutdown(Duration::from_millis(100)).await;
            assert!(!report.drained);
            assert_eq!(report.cut_off.len(), 5, "{report:?}");
        });
        assert_eq!(ran.load(SeqCst), 0, "a task reported cut off ran anyway");
    }

    #[test]
    fn limits_past_what_tokio_can_count_are_lowered_not_a_panic() {
        let runner = Runner::builder()
            .max_running(usize::MAX)
            .max_pending(usize::MAX)
            .max_blocking(usize::MAX)
            .build();
        let _permit = runner.admit().expect("room");
        assert!(format!("{runner:?}").contains(&format!("max_running: {}", Builder::MAX_LIMIT)));
    }

    #[tokio::test]
    async fn a_grace_period_of_any_length_is_accepted() {
        let runner = Runner::new();
        runner.spawn(BackgroundTask::new(|| async {}, ())).unwrap();
        let report = runner.shutdown(Duration::MAX).await;
        assert!(report.drained);
    }

    #[test]
    fn a_blocking_attempt_given_up_before_its_thread_never_runs() {
        let runner = Runner::new();
        let calls = Arc::new(AtomicUsize::new(0));
        with_the_blocking_thread_busy(|| async {
            // Each attempt waits for a thread past its timeout, then is retried.
            runner
                .spawn(
                    BackgroundTask::new(
                        |calls: Arc<AtomicUsize>| {
                            calls.fetch_add(1, SeqCst);
                        },
                        (calls.clone(),),
                    )
                    .timeout(Duration::from_millis(50))
                    .retry(1, Duration::from_millis(1)),
                )
                .unwrap();
            let report = runner.shutdown(Duration::from_secs(10)).await;
            assert!(report.drained, "{report:?}");
            assert_eq!((report.stats.timed_out, report.stats.retried), (1, 1));
        });
        assert_eq!(
            calls.load(SeqCst),
            0,
            "an attempt counted as timed out ran late"
        );
    }

    #[tokio::test]
    async fn shutdown_waits_for_a_request_still_holding_its_permit() {
        let runner = Runner::new();
        let journal = Journal::default();
        let permit = runner.admit().unwrap();
        let shutdown = tokio::spawn({
            let runner = runner.clone();
            async move { runner.shutdown(Duration::from_secs(10)).await }
        });
        while !runner.is_closed() {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        assert!(
            !shutdown.is_finished(),
            "the admitted request may still bring tasks"
        );
        permit
            .defer(note(&journal, "answered during the drain"))
            .start();
        let report = shutdown.await.unwrap();
        assert!(report.drained);
        assert_eq!(*journal.lock().unwrap(), ["answered during the drain"]);
    }
}
