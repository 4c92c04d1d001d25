//! What the integration tests share: a SQLite file of their own, waiting
//! on the store with a deadline, and receiving with one.

// Each test file uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use epilogue_durable::{DurableStats, DurableTask, Store, TaskId, TaskInfo, TaskState};
use tempfile::TempDir;
use tokio::sync::mpsc;

/// How long anything a test waits for may take: generous, for a loaded
/// machine; a test that passes never waits that long.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often a deadline poll looks again.
const POLL: Duration = Duration::from_millis(20);

/// A temporary directory holding one SQLite file (not created yet), and
/// the URL that opens it. The directory goes when the value is dropped.
pub struct Db {
    pub dir: TempDir,
    pub url: String,
}

impl Db {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("tasks.db");
        let url = format!("sqlite://{}", path.display());
        Self { dir, url }
    }
}

/// Polls `check` until it answers `Some`, for at most [`DEADLINE`];
/// panics naming `what` past it.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the task `id` is in a state that `done` accepts, and returns
/// it.
pub async fn task_until<T: DurableTask>(
    store: &Store,
    id: TaskId,
    what: &str,
    done: impl Fn(&TaskInfo<T::Output>) -> bool,
) -> TaskInfo<T::Output> {
    eventually(what, || async {
        let info = store
            .task::<T>(id)
            .await
            .expect("the store can be read")
            .expect("the task is stored");
        done(&info).then_some(info)
    })
    .await
}

/// Waits until the task `id` is in `state`.
pub async fn task_in<T: DurableTask>(
    store: &Store,
    id: TaskId,
    state: TaskState,
) -> TaskInfo<T::Output> {
    task_until::<T>(store, id, &format!("task {id} to be {state:?}"), |info| {
        info.state == state
    })
    .await
}

/// Receives the next message, for at most [`DEADLINE`].
pub async fn recv<T>(receiver: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(DEADLINE, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("gave up after {DEADLINE:?} waiting for {what}"))
        .unwrap_or_else(|| panic!("the channel closed while waiting for {what}"))
}

/// Stored tasks in every state, summed.
pub fn total(stats: &DurableStats) -> u64 {
    TaskState::ALL.iter().map(|&state| stats.get(state)).sum()
}

/// Waits until the runner's stats count `n` finished runs (succeeded,
/// failed, panicked or timed out) of the tasks named `name`.
pub async fn runner_finished(runner: &epilogue::Runner, name: &str, n: u64) {
    eventually(
        &format!("{n} finished runs of {name} on the runner"),
        || async {
            let stats = runner.stats();
            let finished = stats.by_task.get(name).map_or(0, |s| s.finished());
            (finished >= n).then_some(())
        },
    )
    .await;
}
