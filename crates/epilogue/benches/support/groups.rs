//! The work of one benchmarked group, shared by `benches/runner.rs` and
//! `examples/group_cost.rs` (its count under callgrind): each uses a part.
#![allow(dead_code)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use epilogue::{BackgroundTasks, Runner};
use tokio::sync::Notify;

/// Groups spawned before waiting for them: fits a worker's local run queue
/// (256), so no spawn spills to the global queue.
pub const BATCH: u64 = 100;

/// Counts groups down to zero, then wakes the waiter.
pub struct Done {
    left: AtomicUsize,
    notify: Notify,
}

impl Done {
    pub fn new(groups: u64) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(groups as usize),
            notify: Notify::new(),
        })
    }

    pub fn arrive(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.notify.notify_one();
        }
    }

    pub async fn wait(&self) {
        // `notify_one` stores a permit when nobody waits yet: no lost wake-up.
        self.notify.notified().await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Async,
    Blocking,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Async => "async",
            Kind::Blocking => "blocking",
        }
    }
}

/// One group of `tasks` tasks through the runner: built with `add_task`,
/// handed to `Runner::spawn`.
pub fn runner_group(runner: &Runner, kind: Kind, tasks: usize, done: &Arc<Done>) {
    let mut group = BackgroundTasks::new();
    for _ in 1..tasks {
        match kind {
            Kind::Async => group.add_task(|| async {}, ()),
            Kind::Blocking => group.add_task(|| {}, ()),
        };
    }
    match kind {
        Kind::Async => group.add_task(
            |done: Arc<Done>| async move { done.arrive() },
            (done.clone(),),
        ),
        Kind::Blocking => group.add_task(|done: Arc<Done>| done.arrive(), (done.clone(),)),
    };
    runner
        .spawn(group)
        .expect("the runner has room for a batch");
}

/// The same group as one spawned future that runs its tasks in order.
pub async fn raw_group(kind: Kind, tasks: usize, done: Arc<Done>) {
    match kind {
        Kind::Async => {
            for _ in 1..tasks {
                black_box(|| async {})().await;
            }
            async move { done.arrive() }.await;
        }
        Kind::Blocking => {
            for _ in 1..tasks {
                let _ = tokio::task::spawn_blocking(black_box(|| {})).await;
            }
            let _ = tokio::task::spawn_blocking(move || done.arrive()).await;
        }
    }
}
