//! Lanes: a few long-lived tokio tasks that poll every running group.
//!
//! Why not a tokio task per group: under load, sleeping groups wake by
//! the thousands a second, each scheduled on its worker's local run queue
//! (256 slots). The queue overflows, and connection tasks are pushed to the
//! shared inject queue, which a worker looks at only every few dozen polls: the
//! request path's tail latency pays for the background work
//! (bench/README.md, "Background work in lanes"). In a lane, a group's
//! wake-up marks it ready in the lane's own set (`FuturesUnordered`), and
//! the lane itself is scheduled once for however many of its groups woke.
//!
//! A lane takes new groups from its inbox (a locked `Vec`; a sender wakes
//! the lane only when the inbox was empty, so a burst of groups costs one
//! wake-up), polls its ready groups in the order they woke, at most
//! [`POLLS_PER_TURN`] per turn before it yields to the other tasks of its
//! worker (connections), and at the shutdown deadline drops what is left,
//! which counts it as cut off.
//!
//! A task that blocks in a poll stalls every group of its lane: each poll
//! of an async task is timed (`execute::long_poll`), and one over 10 ms is
//! counted in `Stats::long_polls` and logged once per task name.
//!
//! There is one lane per worker thread of the runtime by default (see
//! `Builder::lanes`, for tests): tokio's work stealing moves
//! whole lanes between workers, so one lane alone would keep all
//! background work on one core at a time.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tracing::Span;

use crate::latch::Latch;

/// What a lane runs: an accepted group that holds a running place.
// A trait, not the state's `Accepted`: a group ending on a lane starts the
// next waiting one on a lane, so naming it would make state.rs and this file
// import each other. Static dispatch: it costs nothing.
pub(super) trait Group: Send + 'static {
    /// The group's span, entered around each of its polls, and its future.
    fn run(self) -> (Span, impl Future<Output = ()> + Send);

    /// Counts the group as cut off: it will never run.
    fn cut_off(self);
}

/// The lanes of one runtime, in the runner's state.
#[derive(Debug)]
pub(super) struct Lanes<G> {
    /// `None`: one per worker thread of the runtime.
    count: Option<usize>,
    /// The runtime the lanes run on; `None`: the one a group starts on.
    runtime: Option<Handle>,
    /// The shutdown deadline: the lanes drop their groups when it passes.
    deadline: Arc<Latch>,
    /// One set per runtime groups start on (one, unless each thread of the
    /// server runs a runtime of its own, as actix-web's workers do).
    sets: Mutex<Vec<LaneSet<G>>>,
}

#[derive(Debug)]
struct LaneSet<G> {
    runtime: tokio::runtime::Id,
    inboxes: Box<[Arc<Inbox<G>>]>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Inbox<G> {
    groups: Mutex<Vec<G>>,
    /// The lane's task.
    waker: AtomicWaker,
    /// Within a turn: a group's wake-up only sets `woken` (see `Wake`).
    in_turn: AtomicBool,
    woken: AtomicBool,
    /// The lane has ended (its runtime dropped it): it takes nothing more.
    closed: AtomicBool,
    /// The runner no longer sends here: the lane ends once it is idle.
    retired: AtomicBool,
}

impl<G> Default for Inbox<G> {
    fn default() -> Self {
        Self {
            groups: Mutex::default(),
            waker: AtomicWaker::new(),
            in_turn: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }
}

impl<G> Inbox<G> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<G>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, group: G) -> Result<(), G> {
        let mut groups = self.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(group);
        }
        groups.push(group);
        let first = groups.len() == 1;
        drop(groups);
        // Later groups find the lane woken already.
        if first {
            self.waker.wake();
        }
        Ok(())
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl<G> LaneSet<G> {
    /// Every lane has ended: their runtime is gone.
    fn ended(&self) -> bool {
        self.inboxes
            .iter()
            .all(|inbox| inbox.closed.load(Ordering::Acquire))
    }
}

impl<G> Drop for LaneSet<G> {
    fn drop(&mut self) {
        for inbox in self.inboxes.iter() {
            inbox.retire();
        }
    }
}

impl<G: Group> Lanes<G> {
    pub(super) fn new(count: Option<usize>, runtime: Option<Handle>, deadline: Arc<Latch>) -> Self {
        Self {
            count,
            runtime,
            deadline,
            sets: Mutex::new(Vec::new()),
        }
    }

    /// Hands a group that holds a running place to a lane of the runner's
    /// runtime, or else of the current one, starting the lanes if need be.
    /// `Err` outside a runtime.
    pub(super) fn send(&self, group: G) -> Result<(), G> {
        let handle = match &self.runtime {
            Some(handle) => handle.clone(),
            None => match Handle::try_current() {
                Ok(handle) => handle,
                Err(_) => return Err(group),
            },
        };
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        let mut group = group;
        // A second try on fresh lanes, when those of this runtime have ended.
        for _ in 0..2 {
            let index = match sets.iter().position(|set| set.runtime == handle.id()) {
                Some(index) => index,
                None => {
                    // The lanes of runtimes gone since.
                    sets.retain(|set| !set.ended());
                    sets.push(self.spawn(&handle));
                    sets.len() - 1
                }
            };
            let lanes = &sets[index];
            let n = lanes.inboxes.len();
            let first = if n == 1 {
                0
            } else {
                lanes.next.fetch_add(1, Ordering::Relaxed) % n
            };
            for i in 0..n {
                match lanes.inboxes[(first + i) % n].send(group) {
                    Ok(()) => return Ok(()),
                    Err(back) => group = back,
                }
            }
            sets.swap_remove(index);
        }
        Err(group)
    }

    fn spawn(&self, handle: &Handle) -> LaneSet<G> {
        let n = self
            .count
            .unwrap_or_else(|| handle.metrics().num_workers())
            .max(1);
        let inboxes: Box<[Arc<Inbox<G>>]> = (0..n).map(|_| Arc::default()).collect();
        for inbox in inboxes.iter() {
            handle.spawn(lane(inbox.clone(), self.deadline.clone(), G::run));
        }
        LaneSet {
            runtime: handle.id(),
            inboxes,
            next: AtomicUsize::new(0),
        }
    }
}

impl<G> Lanes<G> {
    /// Lets the lanes end once their groups are done: the runner is closed.
    /// Work that still comes (the groups of requests admitted before the
    /// runner closed, started as their bodies are sent) starts new lanes.
    pub(super) fn retire(&self) {
        self.sets.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Group polls per lane turn, the bound on the work a lane does before it
/// yields. A group's poll is a step of real work (a task that ends records
/// its outcome, and its own work is often a system call), where tokio
/// expects a poll to be short. With tokio's cooperative budget as the only
/// bound (about 64 polls of sleeping groups per turn), `/healthz`'s p99
/// during a burst of 10,000 groups was 8-28 ms against 3.7 ms for
/// `tokio::spawn`; with 16, 5-7 ms against 2.9 (a wrk probe, busy machine);
/// with 16 and the yield through `yield_now` (see `lane`), the same as
/// `tokio::spawn`'s.
const POLLS_PER_TURN: u32 = 16;

/// New groups taken into a lane per turn: each is a first poll to come.
const INTAKE_PER_TURN: usize = 64;

thread_local! {
    static DROPPING: Cell<bool> = const { Cell::new(false) };
    /// What is left of the current lane turn's [`POLLS_PER_TURN`]: a turn
    /// runs on one thread, start to end.
    static POLLS_LEFT: Cell<u32> = const { Cell::new(0) };
}

fn take_a_poll() -> bool {
    POLLS_LEFT.with(|left| {
        let n = left.get();
        left.set(n.saturating_sub(1));
        n > 0
    })
}

/// Whether this thread is dropping a lane (its runtime is going away): a
/// place given back then is not handed to a waiting group, which would
/// only be sent to a lane of the same dying runtime.
pub(super) fn dropping() -> bool {
    DROPPING.with(Cell::get)
}

/// The groups of one lane and its inbox; dropped with the lane's tokio
/// task (its runtime going away), it closes the inbox and counts what it
/// held as cut off.
struct Lane<G: Group, F> {
    inbox: Arc<Inbox<G>>,
    /// Unboxed: one allocation per group, the set's own.
    groups: FuturesUnordered<Budgeted<F>>,
    /// Groups taken from the inbox, not yet in `groups`.
    intake: Vec<G>,
    /// The inbox, as the waker the groups are polled with.
    waker: Waker,
}

impl<G: Group, F> Drop for Lane<G, F> {
    fn drop(&mut self) {
        DROPPING.with(|d| d.set(true));
        let left = {
            let mut groups = self.inbox.lock();
            self.inbox.closed.store(true, Ordering::Release);
            std::mem::take(&mut *groups)
        };
        for group in left.into_iter().chain(self.intake.drain(..)) {
            group.cut_off();
        }
        self.groups.clear();
        DROPPING.with(|d| d.set(false));
    }
}

pin_project_lite::pin_project! {
    /// One group in a lane: each poll takes one of the turn's
    /// [`POLLS_PER_TURN`], and a panic that escapes the group's own
    /// isolation (a bug in the runner, or in a task's `Drop`) ends that
    /// group only.
    struct Budgeted<F> {
        // The request's span (see `Permit::defer_in`), entered around each
        // poll of the group.
        span: Span,
        #[pin]
        group: F,
    }
}

impl<F: Future<Output = ()>> Future for Budgeted<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !take_a_poll() {
            // Ready again next turn; `FuturesUnordered` stops polling after
            // two of these.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let this = self.project();
        let _entered = this.span.enter();
        let group = this.group;
        match std::panic::catch_unwind(AssertUnwindSafe(|| group.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("a background group panicked outside its tasks; it is dropped");
                Poll::Ready(())
            }
        }
    }
}

/// A lane's tokio task. `start` is [`Group::run`]: taken as an argument so
/// that the set can hold its future's unnamed type.
fn lane<G, F>(
    inbox: Arc<Inbox<G>>,
    deadline: Arc<Latch>,
    start: fn(G) -> (Span, F),
) -> impl Future<Output = ()> + Send
where
    G: Group,
    F: Future<Output = ()> + Send,
{
    // Made before the future, so that its drop closes the inbox even when
    // the task is dropped unpolled (its runtime went away first).
    let mut lane = Lane {
        waker: Waker::from(inbox.clone()),
        inbox,
        groups: FuturesUnordered::new(),
        intake: Vec::new(),
    };
    async move {
        let mut deadline_passed = std::pin::pin!(deadline.wait());
        loop {
            match std::future::poll_fn(|cx| lane.turn(cx, start, deadline_passed.as_mut())).await {
                Turn::Idle => return,
                // Through tokio's `yield_now`, whose wake-up tokio defers
                // until its run queue is empty and it has polled its I/O
                // driver: a connection whose request just arrived runs
                // before the lane's next turn. A plain self-wake put the
                // lane back in the run queue at once, and tokio polls its
                // I/O driver only every 61 polls when busy: in a burst of
                // 10 000 groups waking at once, /healthz's p99 was 2x that
                // of `tokio::spawn`'s (bench/run.sh, burst case).
                Turn::More => tokio::task::yield_now().await,
            }
        }
    }
}

/// How a lane's turn ended, when it did not wait.
enum Turn {
    /// More groups are ready, or new ones wait in the intake.
    More,
    /// The runner no longer sends here and every group is done.
    Idle,
}

/// The waker a lane's groups get (through `FuturesUnordered`): during a
/// turn, a group waking only marks that more work is ready, which the turn
/// then yields for; between turns, it wakes the lane's task. One waker
/// for the inbox and the groups, registered once, not at every turn
/// (bench/profile.sh measures the difference).
impl<G: Send + 'static> Wake for Inbox<G> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // `woken` first: either the turn ending sees it, or this sees the
        // turn ended and wakes the task.
        self.woken.store(true, Ordering::SeqCst);
        if !self.in_turn.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }
}

impl<G: Group, F: Future<Output = ()>> Lane<G, F> {
    fn turn(
        &mut self,
        cx: &mut Context<'_>,
        start: fn(G) -> (Span, F),
        deadline: Pin<&mut crate::latch::Wait<'_>>,
    ) -> Poll<Turn> {
        let inbox = &*self.inbox;
        inbox.waker.register(cx.waker());
        inbox.woken.store(false, Ordering::SeqCst);
        inbox.in_turn.store(true, Ordering::SeqCst);
        {
            let mut new = inbox.lock();
            if self.intake.is_empty() {
                // The usual case: both lists keep their buffers.
                std::mem::swap(&mut *new, &mut self.intake);
            } else {
                self.intake.append(&mut new);
            }
        }
        let n = self.intake.len().min(INTAKE_PER_TURN);
        for group in self.intake.drain(..n) {
            let (span, group) = start(group);
            self.groups.push(Budgeted { span, group });
        }
        // Until no group is ready, or the turn's polls are spent: then
        // `FuturesUnordered` stops, having noted more work in `woken`.
        POLLS_LEFT.with(|left| left.set(POLLS_PER_TURN));
        let mut groups_cx = Context::from_waker(&self.waker);
        while let Poll::Ready(Some(())) = self.groups.poll_next_unpin(&mut groups_cx) {}
        self.inbox.in_turn.store(false, Ordering::SeqCst);
        if deadline.poll(cx).is_ready() && !self.groups.is_empty() {
            // The ready groups have just been polled: what is left waits,
            // and is cut off.
            self.groups.clear();
        }
        if self.inbox.woken.swap(false, Ordering::SeqCst) || !self.intake.is_empty() {
            return Poll::Ready(Turn::More);
        }
        if self.groups.is_empty() && self.inbox.retired.load(Ordering::Acquire) {
            let inbox = self.inbox.lock();
            if inbox.is_empty() {
                self.inbox.closed.store(true, Ordering::Release);
                return Poll::Ready(Turn::Idle);
            }
            return Poll::Ready(Turn::More);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::runtime::Handle;
    use tokio::sync::watch;

    use crate::{BackgroundTask, Runner};

    fn alive_tasks() -> usize {
        Handle::current().metrics().num_alive_tasks()
    }

    /// `n` groups that each wait until `go` turns true.
    fn spawn_waiting(runner: &Runner, n: usize, go: &watch::Receiver<bool>) {
        for _ in 0..n {
            let task = BackgroundTask::new(
                |mut go: watch::Receiver<bool>| async move {
                    let _ = go.wait_for(|go| *go).await;
                },
                (go.clone(),),
            );
            runner.spawn(task).expect("room");
        }
    }

    async fn until(mut done: impl FnMut() -> bool) {
        while !done() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_running_groups_live_in_one_lane_per_worker() {
        let runner = Runner::new();
        let before = alive_tasks();
        let (go, wait) = watch::channel(false);
        spawn_waiting(&runner, 1000, &wait);
        until(|| runner.stats().running == 1000).await;
        let tasks = alive_tasks() - before;
        assert_eq!(tasks, 2, "1000 running groups took {tasks} tokio tasks");
        go.send(true).unwrap();
        let report = runner.shutdown(Duration::from_secs(10)).await;
        assert!(report.drained, "{report:?}");
        assert_eq!(report.stats.succeeded, 1000);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_number_of_lanes_can_be_set_and_lanes_end_with_their_runner() {
        let runner = Runner::builder().lanes(3).build();
        let before = alive_tasks();
        let (go, wait) = watch::channel(false);
        spawn_waiting(&runner, 10, &wait);
        until(|| runner.stats().running == 10).await;
        assert_eq!(alive_tasks() - before, 3);
        go.send(true).unwrap();
        assert!(runner.shutdown(Duration::from_secs(10)).await.drained);
        // Closed and idle: the lanes end.
        until(|| alive_tasks() == before).await;
    }

    /// A group that is always ready again: it wakes itself at every poll
    /// until `stop`, as a task looping over a busy channel would.
    fn busy(stop: Arc<AtomicBool>, polls: Arc<AtomicUsize>) -> BackgroundTask {
        BackgroundTask::new(
            |stop: Arc<AtomicBool>, polls: Arc<AtomicUsize>| {
                std::future::poll_fn(move |cx| {
                    polls.fetch_add(1, SeqCst);
                    if stop.load(SeqCst) {
                        return std::task::Poll::Ready(());
                    }
                    cx.waker().wake_by_ref();
                    std::task::Poll::Pending
                })
            },
            (stop, polls),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lane_full_of_busy_groups_leaves_turns_to_other_tasks() {
        let runner = Runner::new();
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        for _ in 0..1000 {
            runner.spawn(busy(stop.clone(), polls.clone())).unwrap();
        }
        // A connection: a task that is ready again at once 100 times, each
        // time behind the lane in the run queue. (Not `yield_now`, whose
        // wake-up tokio defers until it polls its drivers.) A lane that
        // polled its ready groups until none was left would never let it
        // through.
        let connection = tokio::spawn({
            let polls = polls.clone();
            async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let mut ready = false;
                    std::future::poll_fn(|cx| {
                        if std::mem::replace(&mut ready, true) {
                            return std::task::Poll::Ready(());
                        }
                        cx.waker().wake_by_ref();
                        std::task::Poll::Pending
                    })
                    .await;
                    seen.push(polls.load(SeqCst));
                }
                seen
            }
        });
        let seen = tokio::time::timeout(Duration::from_secs(10), connection)
            .await
            .expect("the connection task was starved")
            .unwrap();
        stop.store(true, SeqCst);
        // Between two turns of the connection, the lane polled a bounded
        // number of groups: POLLS_PER_TURN, and two that found none left.
        let most = seen.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(most > 0, "the lane never ran");
        assert!(
            most <= super::POLLS_PER_TURN as usize + 2,
            "{most} group polls in one turn of the lane"
        );
        let report = runner.shutdown(Duration::from_secs(10)).await;
        assert!(report.drained, "{report:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_outside_any_task_ends_its_group_not_the_lane() {
        // Cloned by the runner for each attempt but the last, outside the
        // task's own isolation.
        struct PanicOnClone;
        impl Clone for PanicOnClone {
            fn clone(&self) -> Self {
                panic!("an argument that cannot be cloned");
            }
        }
        let runner = Runner::new();
        let (go, wait) = watch::channel(false);
        // A group of the same lane, waiting while the other one panics.
        spawn_waiting(&runner, 1, &wait);
        let task = BackgroundTask::new(|_: PanicOnClone| async {}, (PanicOnClone,))
            .retry(1, Duration::from_millis(1));
        runner.spawn(task).unwrap();
        until(|| runner.stats().cut_off == 1).await;
        go.send(true).unwrap();
        let report = runner.shutdown(Duration::from_secs(10)).await;
        assert_eq!(report.stats.succeeded, 1, "the lane lived on: {report:?}");
        assert_eq!(report.stats.groups_admitted, 0, "{report:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panic_while_the_deadline_drops_a_group_spares_the_others() {
        struct PanicOnDrop;
        impl Drop for PanicOnDrop {
            fn drop(&mut self) {
                panic!("a task's state that panics when dropped");
            }
        }
        let runner = Runner::new();
        for _ in 0..3 {
            runner
                .spawn(BackgroundTask::new(
                    || async {
                        let _state = PanicOnDrop;
                        std::future::pending::<()>().await
                    },
                    (),
                ))
                .unwrap();
        }
        until(|| runner.stats().running == 3).await;
        let report = runner.shutdown(Duration::from_millis(50)).await;
        assert_eq!(report.cut_off.len(), 3, "{report:?}");
        assert_eq!(report.stats.groups_admitted, 0, "{report:?}");
    }
}
