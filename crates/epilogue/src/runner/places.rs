//! Running places: at most `max_running` groups run at once; the others
//! wait here, in the order they were accepted, as a compact record rather
//! than as a future.
//!
//! A waiting group costs its [`Accepted`] record in one shared queue (about
//! 130 bytes, no allocation of its own); as a future waiting on a semaphore,
//! as it was before, it cost its whole future and a tokio task (about 1 KB).

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use super::execute::Accepted;
use super::lanes;
use super::state::State;

#[derive(Debug)]
pub(super) struct Places {
    max: usize,
    running: AtomicUsize,
    waiting: Mutex<VecDeque<Accepted>>,
    /// `waiting.len()`, read without the lock on the common paths.
    waiting_len: AtomicUsize,
}

impl Places {
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

    fn try_take(&self) -> bool {
        self.running
            .fetch_update(SeqCst, SeqCst, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Accepted>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a running place back, and hands it to the first waiting group
    /// if there is one.
    pub(super) fn release(&self, state: &Arc<State>) {
        self.running.fetch_sub(1, SeqCst);
        // Pairs with the fence in `start`: either this sees the group that
        // `start` queued, or `start` sees the place given back here.
        fence(SeqCst);
        if self.waiting_len.load(SeqCst) > 0 && !lanes::dropping() {
            self.pump(state);
        }
    }

    /// Starts waiting groups while places are free.
    fn pump(&self, state: &Arc<State>) {
        loop {
            let next = {
                let mut waiting = self.lock();
                if waiting.is_empty() || !self.try_take() {
                    return;
                }
                let next = waiting.pop_front();
                self.waiting_len.store(waiting.len(), SeqCst);
                next
            };
            let Some(mut group) = next else { return };
            group.admission.set_running();
            // Sent outside the lock: a lane that cannot take it drops it,
            // which gives its place back through `release`.
            if let Err(mut group) = lanes::send(state, group) {
                // No lane on this thread (a runtime going away): it waits
                // for the next group to start or end, or for the deadline.
                group.admission.clear_running();
                self.running.fetch_sub(1, SeqCst);
                let mut waiting = self.lock();
                waiting.push_front(group);
                self.waiting_len.store(waiting.len(), SeqCst);
                return;
            }
        }
    }

    /// Removes every waiting group: the shutdown deadline has passed.
    pub(super) fn take_waiting(&self) -> VecDeque<Accepted> {
        let mut waiting = self.lock();
        self.waiting_len.store(0, SeqCst);
        std::mem::take(&mut *waiting)
    }
}

/// Starts `group` now if a running place is free and nobody waits for one,
/// else queues it behind those who do.
pub(super) fn start(mut group: Accepted) {
    let state = group.admission.state().clone();
    let places = state.places();
    if places.waiting_len.load(SeqCst) == 0 && places.try_take() {
        group.admission.set_running();
        if let Err(group) = lanes::send(&state, group) {
            tracing::error!(
                tasks = group.tasks.len(),
                "background group accepted outside a tokio runtime; cut off"
            );
            group.cut_off();
        }
        return;
    }
    {
        let mut waiting = places.lock();
        waiting.push_back(group);
        places.waiting_len.store(waiting.len(), SeqCst);
    }
    fence(SeqCst);
    places.pump(&state);
}
