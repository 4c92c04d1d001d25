//! Running durable tasks: claim, run, record; heartbeats; a drain on
//! shutdown.
//!
//! apalis 1.0's worker loop is not used: it loses wake-ups, retries with no
//! backoff, marks an exhausted task like one still to be retried, refuses a
//! restarted worker of the same name on SQLite, and hangs on shutdown with
//! its retry layer. This loop uses apalis's queries for what needs the
//! engine (register, heartbeat, orphan recovery, the claim itself) and
//! records each outcome with its own status transition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::{Outcome, Registry};
use super::store::{Claimed, Settle};
use super::{DurableError, DurableTask, Job, Store};

/// How often a worker says it is alive, by default. A worker silent for
/// three of these is dead, and its tasks go back to the queue: within 10 s.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// How soon an idle worker looks again for tasks stored by other processes,
/// by default (this process's own wake it at once).
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);
/// The longest an idle worker waits between two looks, by default: looks
/// that find nothing double the wait, from [`DEFAULT_POLL`] up to this.
pub const DEFAULT_MAX_IDLE_POLL: Duration = Duration::from_secs(1);
/// The wait before the second attempt, by default; it doubles each time.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Heartbeats a worker may miss before its tasks are taken back.
const MISSED_HEARTBEATS: u32 = 3;

/// Builds a [`Worker`]: the tasks it knows, how many it runs at once, and
/// its timings. From [`Store::worker`].
#[must_use = "a worker does nothing until started"]
pub struct WorkerBuilder {
    store: Store,
    registry: Registry,
    concurrency: usize,
    heartbeat: Duration,
    poll: Duration,
    max_idle_poll: Duration,
    backoff: Duration,
}

impl WorkerBuilder {
    pub(super) fn new(store: Store) -> Self {
        Self {
            store,
            registry: Registry::default(),
            concurrency: 4,
            heartbeat: DEFAULT_HEARTBEAT,
            poll: DEFAULT_POLL,
            max_idle_poll: DEFAULT_MAX_IDLE_POLL,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Runs the tasks named [`T::NAME`](DurableTask::NAME), each with a
    /// clone of `state`. A stored task whose name no worker registered is
    /// dead, with that reason, when a worker claims it.
    pub fn register<T: DurableTask>(mut self, state: T::State) -> Self {
        self.registry.register::<T>(state);
        self
    }

    /// How many tasks run at once (4 by default, at least 1).
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks.max(1);
        self
    }

    /// How often the worker says it is alive (2 s by default). Its tasks
    /// are taken back by other workers after three missed heartbeats, so a
    /// crash delays them by about three times this.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_secs(1));
        self
    }

    /// How soon an idle worker polls again for tasks other processes
    /// stored (250 ms by default); this process's own enqueues wake it at
    /// once. From the second poll in a row that finds nothing, each one
    /// doubles the wait, up to [`max_idle_poll`](Self::max_idle_poll); a
    /// task found, or stored by this process, brings it back to this.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(10));
        self
    }

    /// The longest an idle worker waits between two polls (1 s by default,
    /// never less than [`poll_interval`](Self::poll_interval)): how late a
    /// task stored by another process may start when the queue was empty.
    ///
    /// Every poll wakes a task on the runtime that also serves requests,
    /// and runs a query: a worker idle at 250 ms wakes 4 times a second,
    /// and on a server pinned to one core at 256 connections, each wake-up
    /// that came with a full run queue delayed 128 requests by a few
    /// milliseconds (the README's Performance section).
    pub fn max_idle_poll(mut self, longest: Duration) -> Self {
        self.max_idle_poll = longest;
        self
    }

    /// The wait before the second attempt (1 s by default); each further
    /// one waits twice as long as the one before, up to an hour.
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// Starts the worker on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(self) -> Worker {
        let name = format!("epilogue-{}-{}", std::process::id(), ulid::Ulid::new());
        let (ready_tx, ready) = watch::channel(false);
        let shared = Arc::new(Shared {
            name,
            store: self.store,
            registry: self.registry,
            slots: Arc::new(Semaphore::new(self.concurrency)),
            heartbeat: self.heartbeat,
            idle_poll: IdlePoll::new(self.poll, self.max_idle_poll),
            backoff: self.backoff,
            stop: CancellationToken::new(),
            cut: CancellationToken::new(),
            running: TaskTracker::new(),
            counts: Counts::default(),
        });
        let task = tokio::spawn(fetch_loop(shared.clone(), ready_tx));
        Worker {
            shared,
            ready,
            task,
        }
    }
}

/// A running worker: it claims tasks from its store and runs them until
/// [`shutdown`](Self::shutdown). Dropping it stops it at once, leaving its
/// running tasks to be taken back by another worker after its heartbeats
/// stop.
pub struct Worker {
    shared: Arc<Shared>,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

struct Shared {
    /// Unique per start: apalis refuses (SQLite) or strands the tasks of
    /// (PostgreSQL) a worker that registers under a live one's name.
    name: String,
    store: Store,
    registry: Registry,
    slots: Arc<Semaphore>,
    heartbeat: Duration,
    idle_poll: IdlePoll,
    backoff: Duration,
    /// No more claims.
    stop: CancellationToken,
    /// The grace period is over: running tasks go back to the queue.
    cut: CancellationToken,
    running: TaskTracker,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    released: AtomicU64,
}

/// What a worker did, from its start to its shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WorkerReport {
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed and will be tried again.
    pub retried: u64,
    /// Tasks that became dead here.
    pub dead: u64,
    /// Tasks still running at the end of the grace period, put back in the
    /// queue for another run.
    pub released: u64,
    /// Whether every task in flight finished within the grace period.
    pub drained: bool,
}

impl Worker {
    /// This worker's name in the store: unique to this start.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Waits until the worker has registered with the store and is
    /// claiming tasks (it keeps trying while the store is unreachable).
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// What the worker has done so far.
    pub fn report(&self) -> WorkerReport {
        Self::report_of(&self.shared)
    }

    /// Stops claiming tasks, lets the running ones finish within `grace`,
    /// then puts the ones still running back in the queue (they run again,
    /// here or elsewhere: at least once).
    pub async fn shutdown(mut self, grace: Duration) -> WorkerReport {
        self.shared.stop.cancel();
        let _ = (&mut self.task).await;
        let shared = &self.shared;
        shared.running.close();
        let drained = tokio::time::timeout(grace, shared.running.wait())
            .await
            .is_ok();
        if !drained {
            shared.cut.cancel();
            shared.running.wait().await;
        }
        WorkerReport {
            drained,
            ..Worker::report_of(shared)
        }
    }

    fn report_of(shared: &Shared) -> WorkerReport {
        let counts = &shared.counts;
        WorkerReport {
            succeeded: counts.succeeded.load(Ordering::Relaxed),
            retried: counts.retried.load(Ordering::Relaxed),
            dead: counts.dead.load(Ordering::Relaxed),
            released: counts.released.load(Ordering::Relaxed),
            drained: false,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.cut.cancel();
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.shared.name)
            .field("tasks", &self.shared.registry.names())
            .finish_non_exhaustive()
    }
}

/// Registers, then claims as many tasks as there are free slots, until
/// stopped.
async fn fetch_loop(shared: Arc<Shared>, ready: watch::Sender<bool>) {
    let mut failing = Failing::default();
    while let Err(error) = shared.store.register(&shared.name, shared.heartbeat).await {
        failing.report("register with the durable store", &error);
        if pause(&shared, shared.idle_poll.first.max(Duration::from_secs(1))).await {
            return;
        }
    }
    tokio::spawn(heartbeats(shared.clone()));
    let _ = ready.send(true);
    tracing::info!(worker = %shared.name, tasks = ?shared.registry.names(), "durable worker ready");

    let mut idle_poll = shared.idle_poll;
    while !shared.stop.is_cancelled() {
        let first = tokio::select! {
            () = shared.stop.cancelled() => return,
            permit = shared.slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        // Armed before the claim: a task stored while it runs still wakes us.
        let stored = shared.store.stored().notified();
        tokio::pin!(stored);
        stored.as_mut().enable();

        let free = 1 + shared.slots.available_permits();
        let claimed = match shared
            .store
            .claim(&shared.name, shared.heartbeat, free)
            .await
        {
            Ok(claimed) => {
                failing.recovered("claim durable tasks");
                claimed
            }
            Err(error) => {
                failing.report("claim durable tasks", &error);
                drop(first);
                if pause(&shared, idle_poll.first.max(Duration::from_secs(1))).await {
                    return;
                }
                continue;
            }
        };
        if claimed.is_empty() {
            drop(first);
            tokio::select! {
                () = shared.stop.cancelled() => return,
                () = stored => idle_poll.reset(),
                () = tokio::time::sleep(idle_poll.wait) => idle_poll.found_nothing(),
            }
            continue;
        }
        idle_poll.reset();
        let mut permit = Some(first);
        for task in claimed {
            // As many claimed as slots were free, and only this loop takes
            // slots: there is one for each.
            let slot = permit
                .take()
                .or_else(|| shared.slots.clone().try_acquire_owned().ok())
                .expect("a free slot for each claimed task");
            shared.running.spawn(run_one(shared.clone(), task, slot));
        }
    }
}

/// Sleeps `period`; `true` if the worker was stopped meanwhile.
async fn pause(shared: &Shared, period: Duration) -> bool {
    tokio::select! {
        () = shared.stop.cancelled() => true,
        () = tokio::time::sleep(period) => false,
    }
}

async fn heartbeats(shared: Arc<Shared>) {
    let orphaned_after = shared.heartbeat * MISSED_HEARTBEATS;
    let mut failing = Failing::default();
    let mut every = tokio::time::interval(shared.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Beats on through the drain: the tasks still running are ours.
            () = shared.cut.cancelled() => return,
            _ = every.tick() => {}
        }
        if shared.stop.is_cancelled() && shared.running.is_empty() {
            return;
        }
        match shared
            .store
            .heartbeat(&shared.name, shared.heartbeat, orphaned_after)
            .await
        {
            Ok(requeued) => {
                failing.recovered("send a heartbeat");
                if requeued > 0 {
                    tracing::warn!(
                        tasks = requeued,
                        "durable tasks of a worker that stopped sending heartbeats were queued again"
                    );
                    shared.store.stored().notify_waiters();
                }
            }
            Err(error) => failing.report("send a heartbeat", &error),
        }
    }
}

async fn run_one(shared: Arc<Shared>, task: Claimed, _slot: OwnedSemaphorePermit) {
    let attempt = task.attempts.saturating_add(1);
    let job = Job {
        id: task.id.clone(),
        attempt,
        max_attempts: task.max_attempts,
    };
    let run = shared.registry.run(&task.payload, job);
    let outcome = tokio::select! {
        outcome = run => outcome,
        () = shared.cut.cancelled() => {
            shared.counts.released.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(task_id = %task.id, "durable task still running at the end of the grace period; queued again");
            settle(&shared, &task, Settle::Release { attempts: attempt }).await;
            return;
        }
    };
    let settled = match outcome {
        Outcome::Done(output) => {
            shared.counts.succeeded.fetch_add(1, Ordering::Relaxed);
            Settle::Done {
                attempts: attempt,
                result: serde_json::json!({ "Ok": output }),
            }
        }
        Outcome::Failed(error) if attempt < task.max_attempts => {
            shared.counts.retried.fetch_add(1, Ordering::Relaxed);
            let wait = backoff(shared.backoff, attempt);
            tracing::warn!(task_id = %task.id, attempt, error, retry_in = ?wait, "durable task failed; retried");
            Settle::Retry {
                attempts: attempt,
                result: serde_json::json!({ "Err": error }),
                at: not_before(wait),
            }
        }
        Outcome::Failed(error) | Outcome::Undecodable(error) => {
            shared.counts.dead.fetch_add(1, Ordering::Relaxed);
            tracing::error!(task_id = %task.id, attempt, error, "durable task is dead");
            Settle::Dead {
                attempts: attempt,
                result: serde_json::json!({ "Err": error }),
            }
        }
    };
    settle(&shared, &task, settled).await;
}

/// Records an outcome, trying again while the store is unreachable: until
/// it is recorded, the task stays ours in the store, and runs again if this
/// process dies (at least once).
async fn settle(shared: &Shared, task: &Claimed, settle: Settle) {
    let mut failing = Failing::default();
    loop {
        match shared.store.settle(&shared.name, &task.id, &settle).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::warn!(
                    task_id = %task.id,
                    "a durable task was taken back from this worker before its outcome was recorded \
                     (missed heartbeats?); it runs again"
                );
                return;
            }
            Err(error) => failing.report("record a durable task's outcome", &error),
        }
        // At the deadline, stop trying: the task is still ours in the store
        // and goes back to the queue when our heartbeats stop.
        tokio::select! {
            () = shared.cut.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The store's `run_at` (whole seconds since the epoch) for a retry in
/// `wait`: rounded up, so that the wait is never shorter than asked.
fn not_before(wait: Duration) -> i64 {
    let at = std::time::SystemTime::now() + wait;
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let rounded_up = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    i64::try_from(rounded_up).unwrap_or(i64::MAX)
}

/// The wait after failed attempt number `attempt`: `first`, doubled each
/// time, at most an hour.
fn backoff(first: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    first.saturating_mul(factor).min(Duration::from_secs(3600))
}

/// Logs a store that keeps failing once when it starts and once when it
/// recovers, not on every try.
#[derive(Default)]
struct Failing {
    since: Option<std::time::Instant>,
}

impl Failing {
    fn report(&mut self, what: &str, error: &DurableError) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            tracing::error!(%error, "durable worker could not {what}; trying again");
        }
    }

    fn recovered(&mut self, what: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(after = ?since.elapsed(), "durable worker can {what} again");
        }
    }
}

/// The wait of an idle worker between two polls: doubles from `first`
/// while polls find nothing, up to `longest`. Not after the first empty
/// poll: the claim right after one that found tasks usually finds none, as
/// that one took them all, and says nothing of the queue being idle.
#[derive(Clone, Copy, Debug)]
struct IdlePoll {
    first: Duration,
    longest: Duration,
    wait: Duration,
    empty: bool,
}

impl IdlePoll {
    fn new(first: Duration, longest: Duration) -> Self {
        Self {
            first,
            longest: longest.max(first),
            wait: first,
            empty: false,
        }
    }

    fn found_nothing(&mut self) {
        if self.empty {
            self.wait = self.wait.saturating_mul(2).min(self.longest);
        }
        self.empty = true;
    }

    fn reset(&mut self) {
        self.wait = self.first;
        self.empty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_worker_polls_less_often_up_to_its_longest_wait() {
        let mut poll = IdlePoll::new(Duration::from_millis(250), Duration::from_secs(1));
        let mut waits = Vec::new();
        for _ in 0..5 {
            waits.push(poll.wait.as_millis());
            poll.found_nothing();
        }
        assert_eq!(waits, [250, 250, 500, 1000, 1000]);
        poll.reset();
        poll.found_nothing();
        assert_eq!(poll.wait, Duration::from_millis(250), "reset");
        let never_below = IdlePoll::new(Duration::from_millis(250), Duration::from_millis(100));
        assert_eq!(never_below.longest, Duration::from_millis(250));
    }

    #[test]
    fn backoff_doubles_from_the_first_wait() {
        let waits: Vec<u64> = (1..=5)
            .map(|attempt| backoff(Duration::from_secs(1), attempt).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16]);
        assert_eq!(
            backoff(Duration::from_secs(1), 40),
            Duration::from_secs(3600)
        );
    }
}
