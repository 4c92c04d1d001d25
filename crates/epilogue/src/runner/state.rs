//! The runner's shared state: its limits, its places, its deadline and its
//! counters. Private to this file; the rest of the runner goes through the
//! methods below.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::lanes::Lanes;
use super::places::Places;
use crate::latch::Latch;
use crate::stats::{Counters, Stats};

/// What a [`Builder`](super::Builder) sets.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) max_running: usize,
    pub(super) max_pending: usize,
    pub(super) max_blocking: usize,
    pub(super) task_timeout: Option<Duration>,
    pub(super) retry_after: Duration,
    /// `None`: one per worker thread of the runtime.
    pub(super) lanes: Option<usize>,
}

/// Everything the clones of one [`Runner`](super::Runner) share.
#[derive(Debug)]
pub(crate) struct State {
    config: Config,
    /// Places for groups that run now, and the queue of those waiting.
    places: Places,
    /// The tokio tasks that poll the running groups.
    lanes: Lanes,
    /// Permits for plain-`fn` tasks on the blocking pool.
    blocking: Arc<Semaphore>,
    /// Groups holding a permit: admitted, waiting or running. A shutdown
    /// waits for it to reach 0 (a `TaskTracker` counted the same groups
    /// again, with a token of 8 bytes in each).
    admitted: AtomicUsize,
    /// [`Hold`](super::Hold)s: a shutdown waits for them too.
    holds: AtomicUsize,
    closed: AtomicBool,
    /// Set with `closed`, for what waits for the runner to close.
    closing: Arc<Latch>,
    /// Notified when `admitted` reaches 0 once closed.
    idle: Notify,
    /// Passes when a shutdown's grace period ends, or at a second signal.
    deadline: Arc<Latch>,
    counters: Counters,
    /// Names of the tasks cut off, for the shutdown report.
    cut_off: Mutex<Vec<String>>,
}

/// One admitted group's room in the runner, and once it started, its
/// running place: both given back when dropped.
#[derive(Debug)]
pub(super) struct Admission {
    state: Arc<State>,
    running: bool,
}

impl Admission {
    /// Room for one more group, if there is any.
    pub(super) fn try_new(state: &Arc<State>) -> Option<Self> {
        let limit = state.limit();
        state
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Self::new(state))
    }

    /// Room for one more group, whatever the limit.
    pub(super) fn over_limit(state: &Arc<State>) -> Self {
        state.admitted.fetch_add(1, Ordering::SeqCst);
        Self::new(state)
    }

    fn new(state: &Arc<State>) -> Self {
        Self {
            state: state.clone(),
            running: false,
        }
    }

    pub(super) fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The group took a running place (see `places`).
    pub(super) fn set_running(&mut self) {
        self.running = true;
    }

    /// The place was given back before the group started.
    pub(super) fn clear_running(&mut self) {
        self.running = false;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.running {
            self.state.places.release(&self.state);
        }
        self.state.admitted.fetch_sub(1, Ordering::SeqCst);
        self.state.notify_if_idle();
    }
}

impl State {
    pub(super) fn new(config: Config) -> Self {
        Self {
            places: Places::new(config.max_running),
            lanes: Lanes::default(),
            blocking: Arc::new(Semaphore::new(config.max_blocking)),
            config,
            idle: Notify::new(),
            admitted: AtomicUsize::new(0),
            holds: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            closing: Arc::default(),
            deadline: Arc::default(),
            counters: Counters::default(),
            cut_off: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// `max_running + max_pending`: how many groups may hold a permit.
    pub(super) fn limit(&self) -> usize {
        self.config
            .max_running
            .saturating_add(self.config.max_pending)
    }

    pub(super) fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// The counters, with the gauges only the state knows.
    pub(super) fn stats(&self) -> Stats {
        let in_use = |semaphore: &Semaphore, limit: usize| {
            limit.saturating_sub(semaphore.available_permits()) as u64
        };
        let mut stats = self.counters.snapshot();
        stats.groups_running = self.places.running() as u64;
        stats.groups_admitted = self.admitted() as u64;
        stats.blocking_in_use = in_use(&self.blocking, self.config.max_blocking);
        stats
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closing.set();
        self.lanes.retire();
    }

    /// Passes once the runner is closed.
    pub(super) fn closing(&self) -> Arc<Latch> {
        self.closing.clone()
    }

    /// Completes once the runner is closed and no group holds a permit,
    /// nor anything a hold.
    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = std::pin::pin!(self.idle.notified());
            let mut notified = notified;
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    fn is_idle(&self) -> bool {
        self.is_closed()
            && self.admitted.load(Ordering::SeqCst) == 0
            && self.holds.load(Ordering::SeqCst) == 0
    }

    fn notify_if_idle(&self) {
        // SeqCst, as `close` and `wait_idle`: either this sees the runner
        // closed, or the shutdown sees the counts at 0.
        if self.is_idle() {
            self.idle.notify_waiters();
        }
    }

    pub(super) fn hold(&self) {
        self.holds.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn release_hold(&self) {
        self.holds.fetch_sub(1, Ordering::SeqCst);
        self.notify_if_idle();
    }

    /// The shutdown deadline has passed (or a second signal came): running
    /// groups are dropped by their lanes, waiting ones are cut off here.
    pub(super) fn pass_deadline(&self) {
        self.deadline.set();
        for group in self.places.take_waiting() {
            group.cut_off();
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(super) fn places(&self) -> &Places {
        &self.places
    }

    pub(super) fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    pub(super) fn blocking(&self) -> &Arc<Semaphore> {
        &self.blocking
    }

    pub(super) fn deadline(&self) -> &Latch {
        &self.deadline
    }

    /// The deadline, for a blocking thread to check before it starts a task.
    pub(super) fn deadline_flag(&self) -> Arc<Latch> {
        self.deadline.clone()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(super) fn record_cut_off(&self, name: &str) {
        self.counters.cut_off_task(name);
        let mut names = self.cut_off.lock().unwrap_or_else(|e| e.into_inner());
        names.push(name.to_owned());
    }

    pub(super) fn take_cut_off(&self) -> Vec<String> {
        std::mem::take(&mut *self.cut_off.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
