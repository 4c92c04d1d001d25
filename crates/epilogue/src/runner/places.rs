//! Running places: at most `max_running` groups run at once; the others
//! wait here, in the order they were accepted, as a compact record rather
//! than as a future.
//!
//! A waiting group costs its record in one shared queue, with no
//! allocation of its own, rather than a whole future and a tokio task
//! waiting on a semaphore (bench/memory.sh measures bytes per group).
//!
//! Generic over the waiting group: the runner's state owns the places and
//! its groups hold the state, so the places need not name either. Which
//! group starts when, and on which lane, is the state's to decide
//! (`State::start`, `State::start_waiting`).

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};

#[derive(Debug)]
pub(super) struct Places<G> {
    max: usize,
    running: AtomicUsize,
    waiting: Mutex<VecDeque<G>>,
    /// `waiting.len()`, read without the lock on the common paths.
    waiting_len: AtomicUsize,
}

impl<G> Places<G> {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            running: AtomicUsize::new(0),
            waiting: Mutex::new(VecDeque::new()),
            waiting_len: AtomicUsize::new(0),
        }
    }

    /// Groups holding a running place.
    pub(super) fn running(&self) -> usize {
        self.running.load(SeqCst)
    }

    /// Whether a group waits for a place; without the lock.
    pub(super) fn any_waiting(&self) -> bool {
        self.waiting_len.load(SeqCst) > 0
    }

    /// Takes a running place, if one is free and no group waits for one.
    pub(super) fn take_if_none_waits(&self) -> bool {
        !self.any_waiting() && self.try_take()
    }

    fn try_take(&self) -> bool {
        self.running
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<G>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a running place back. The caller then starts the waiting
    /// groups, if [`any_waiting`](Places::any_waiting).
    pub(super) fn give_back(&self) {
        self.running.fetch_sub(1, SeqCst);
        // Pairs with the fence in `queue`: either the caller sees the group
        // queued there, or the one who queued it sees the place given back.
        fence(SeqCst);
    }

    /// Queues `group` behind the groups waiting. The caller then starts
    /// waiting groups while places are free.
    pub(super) fn queue(&self, group: G) {
        {
            let mut waiting = self.lock();
            waiting.push_back(group);
            self.waiting_len.store(waiting.len(), SeqCst);
        }
        fence(SeqCst);
    }

    /// The first waiting group, with a running place taken for it, if a
    /// place is free.
    pub(super) fn next(&self) -> Option<G> {
        let mut waiting = self.lock();
        if waiting.is_empty() || !self.try_take() {
            return None;
        }
        let next = waiting.pop_front();
        self.waiting_len.store(waiting.len(), SeqCst);
        next
    }

    /// Puts back a group from [`next`](Places::next) that could not start,
    /// first in the queue, and gives its place back.
    pub(super) fn put_back(&self, group: G) {
        self.running.fetch_sub(1, SeqCst);
        let mut waiting = self.lock();
        waiting.push_front(group);
        self.waiting_len.store(waiting.len(), SeqCst);
    }

    /// Removes every waiting group: the shutdown deadline has passed.
    pub(super) fn take_waiting(&self) -> VecDeque<G> {
        let mut waiting = self.lock();
        self.waiting_len.store(0, SeqCst);
        std::mem::take(&mut *waiting)
    }
}
