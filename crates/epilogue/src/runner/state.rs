//! The runner's shared state (its limits, its places, its lanes, its
//! deadline and its counters) and an accepted group's hold on it: its
//! [`Admission`], and the [`Accepted`] record that carries the group to a
//! lane. One file because each holds the other: the state queues accepted
//! groups, and a group gives its room back to the state when it ends. The
//! rest of the runner goes through the methods below.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, Semaphore};
use tracing::Span;

use super::config::Config;
use super::lanes::{self, Lanes};
use super::places::Places;
use crate::latch::Latch;
use crate::stats::{Counters, Stats};
use crate::tasks::BackgroundTasks;

/// Everything the clones of one [`Runner`](super::Runner) share.
#[derive(Debug)]
pub(crate) struct State {
    config: Config,
    /// Places for groups that run now, and the queue of those waiting.
    places: Places<Accepted>,
    /// The tokio tasks that poll the running groups.
    lanes: Lanes<Accepted>,
    /// Permits for plain-`fn` tasks on the blocking pool.
    blocking: Arc<Semaphore>,
    /// Groups holding a permit: admitted, waiting or running. A shutdown
    /// waits for it to reach 0 (one counter, rather than a `TaskTracker`
    /// that would count the same groups again with a token in each).
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

    fn new(state: &Arc<State>) -> Self {
        Self {
            state: state.clone(),
            running: false,
        }
    }

    pub(super) fn state(&self) -> &Arc<State> {
        &self.state
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.running {
            self.state.give_place_back();
        }
        self.state.admitted.fetch_sub(1, Ordering::SeqCst);
        self.state.notify_if_idle();
    }
}

/// A group accepted by the runner, with all it needs to run: waiting for a
/// place, on its way to a lane, or taken apart by its lane to run
/// (`execute::run_group`).
pub(super) struct Accepted {
    /// Held until the group is done: its room in the runner (and, once it
    /// started, its running place).
    pub(super) admission: Admission,
    pub(super) tasks: BackgroundTasks,
    pub(super) accepted_at: Instant,
    pub(super) span: Span,
}

impl std::fmt::Debug for Accepted {
    // The tasks' names only: the state holds accepted groups itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("tasks", &self.tasks.task_names())
            .finish_non_exhaustive()
    }
}

impl Accepted {
    /// Counts the group's tasks as cut off: it will never run.
    pub(super) fn cut_off(self) {
        self.admission.state().cut_off_pending(&self.tasks);
        self.tasks.discard();
    }
}

impl State {
    pub(super) fn new(config: Config) -> Self {
        let deadline = Arc::<Latch>::default();
        Self {
            places: Places::new(config.max_running),
            lanes: Lanes::new(config.lanes, config.runtime.clone(), deadline.clone()),
            blocking: Arc::new(Semaphore::new(config.max_blocking)),
            config,
            idle: Notify::new(),
            admitted: AtomicUsize::new(0),
            holds: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            closing: Arc::default(),
            deadline,
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

    /// Starts `group` now if a running place is free and nobody waits for
    /// one, else queues it behind those who do.
    pub(super) fn start(&self, group: Accepted) {
        let Some(group) = self.start_here(group) else {
            return;
        };
        if let Err(group) = self.lanes.send(group) {
            tracing::error!(
                tasks = group.tasks.len(),
                "background group accepted outside a tokio runtime; cut off"
            );
            group.cut_off();
        }
    }

    /// Takes a running place for `group` now, if one is free and nobody
    /// waits for one, and gives the group back, holding it, for the caller
    /// to run ([`start`](State::start) sends it to a lane); else queues it
    /// behind those who wait, to start on a lane.
    pub(super) fn start_here(&self, mut group: Accepted) -> Option<Accepted> {
        if self.places.take_if_none_waits() {
            group.admission.running = true;
            return Some(group);
        }
        self.places.queue(group);
        self.start_waiting();
        None
    }

    /// A running group ended (or never will): its place goes to the first
    /// waiting group, if there is one.
    fn give_place_back(&self) {
        self.places.give_back();
        if self.places.any_waiting() && !lanes::dropping() {
            self.start_waiting();
        }
    }

    /// Starts waiting groups while places are free.
    fn start_waiting(&self) {
        while let Some(mut group) = self.places.next() {
            group.admission.running = true;
            // Sent outside the places' lock: a lane that cannot take it
            // drops it, which gives its place back through here.
            if let Err(mut group) = self.lanes.send(group) {
                // No lane on this thread (a runtime going away): it waits
                // for the next group to start or end, or for the deadline.
                group.admission.running = false;
                self.places.put_back(group);
                return;
            }
        }
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

    /// Counts tasks that will never start because the deadline passed, and
    /// keeps their names for the shutdown report.
    pub(super) fn cut_off_pending(&self, tasks: &BackgroundTasks) {
        self.counters.cut_off_pending(tasks.len() as u64);
        tasks.visit_names(&mut |name| self.record_cut_off(name));
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
