//! What the integration tests share: a SQLite file of their own, a store
//! started on it, waiting on the store with a deadline, receiving with one,
//! and the little task kinds several files use.

// Each test file uses part of it.
#![allow(dead_code, unused_macros)]

use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use epilogue::Runner;
use epilogue_durable::sqlx::sqlite::SqliteConnectOptions;
use epilogue_durable::{
    BoxError, DurableStats, DurableTask, Job, Store, StoreBuilder, TaskId, TaskInfo, TaskState,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long anything a test waits for may take: generous, for a loaded
/// machine; a test that passes never waits that long.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How long a test's runner may take to shut down.
pub const GRACE: Duration = Duration::from_secs(10);

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
        let url = format!("sqlite://{}", dir.path().join("tasks.db").display());
        Self { dir, url }
    }

    /// Options that open the file, created if missing, waiting 5 s on a lock.
    pub fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::from_str(&self.url)
            .unwrap()
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
    }

    /// Deletes the file from under `store`, and waits until the store notices.
    pub async fn delete_under(&self, store: &Store) {
        std::fs::remove_file(self.dir.path().join("tasks.db")).unwrap();
        wait_until("the store to notice its file is gone", || async {
            !store.file_intact()
        })
        .await;
    }
}

/// Opens a store on `db`, with what `setup` registers, and starts it on `runner`.
pub async fn start(
    db: &Db,
    runner: &Runner,
    setup: impl FnOnce(StoreBuilder) -> StoreBuilder,
) -> Store {
    let builder = Store::open(&db.url).await.expect("the store opens");
    setup(builder)
        .start(runner)
        .await
        .expect("the store starts")
}

/// Shuts `runner` down within [`GRACE`], and checks that it drained.
pub async fn shut_down(runner: &Runner) {
    let report = runner.shutdown(GRACE).await;
    assert!(report.drained, "{report:?}");
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

/// Polls `check` until it answers `true`, for at most [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, || {
        let done = check();
        async { done.await.then_some(()) }
    })
    .await
}

/// The stored task `id`, which must exist.
pub async fn task_info<T: DurableTask>(store: &Store, id: TaskId) -> TaskInfo<T::Output> {
    store
        .task::<T>(id)
        .await
        .expect("the store can be read")
        .expect("the task is stored")
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
        let info = task_info::<T>(store, id).await;
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

/// Waits for a spawned task's output, for at most [`DEADLINE`].
pub async fn join<T>(handle: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(DEADLINE, handle)
        .await
        .unwrap_or_else(|_| panic!("gave up after {DEADLINE:?} waiting for {what}"))
        .expect("the spawned task does not panic")
}

/// Stored tasks in every state, summed.
pub fn total(stats: &DurableStats) -> u64 {
    TaskState::ALL.iter().map(|&state| stats.get(state)).sum()
}

/// How many tasks `store` holds, in every state.
pub async fn stored_total(store: &Store) -> u64 {
    total(&store.stats().await.expect("the store can be read"))
}

/// Waits until `store` counts at least `n` succeeded tasks.
pub async fn succeeded_at_least(store: &Store, n: u64) {
    wait_until(&format!("{n} tasks recorded as succeeded"), || async {
        store
            .stats()
            .await
            .expect("the store can be read")
            .succeeded
            >= n
    })
    .await;
}

/// Waits until the runner's stats count `n` finished runs (succeeded,
/// failed, panicked or timed out) of the tasks named `name`.
pub async fn runner_finished(runner: &Runner, name: &str, n: u64) {
    wait_until(
        &format!("{n} finished runs of {name} on the runner"),
        || async {
            let stats = runner.stats();
            stats.by_task.get(name).map_or(0, |s| s.finished()) >= n
        },
    )
    .await;
}

/// A task nobody registers in these tests: it stays where it was stored.
#[derive(Serialize, Deserialize)]
pub struct Parked {
    pub n: u32,
}

impl DurableTask for Parked {
    const NAME: &'static str = "parked";
    type State = ();
    type Output = ();

    async fn run(self, _: Job, (): ()) -> Result<(), BoxError> {
        panic!("a parked task is never registered");
    }
}

/// Sends `message()` on its channel when dropped, as a task's future is.
pub struct SendOnDrop<M, F: Fn() -> M>(pub mpsc::UnboundedSender<M>, pub F);

impl<M, F: Fn() -> M> Drop for SendOnDrop<M, F> {
    fn drop(&mut self) {
        let _ = self.0.send((self.1)());
    }
}

/// Declares a task kind named `$name` that sends its id and attempt when it runs.
macro_rules! reporting_task {
    ($(#[$doc:meta])* $kind:ident = $name:literal) => {
        $(#[$doc])*
        #[derive(::serde::Serialize, ::serde::Deserialize)]
        struct $kind {}

        impl ::epilogue_durable::DurableTask for $kind {
            const NAME: &'static str = $name;
            type State = ::tokio::sync::mpsc::UnboundedSender<(::epilogue_durable::TaskId, u32)>;
            type Output = ();

            async fn run(
                self,
                job: ::epilogue_durable::Job,
                ran: Self::State,
            ) -> Result<(), ::epilogue_durable::BoxError> {
                let _ = ran.send((job.id(), job.attempt()));
                Ok(())
            }
        }
    };
}
#[allow(unused_imports)] // Not every test file declares one.
pub(crate) use reporting_task;

/// A durable task that reports its id and address to the test: the
/// request tests' task, on axum and on actix-web.
#[derive(Serialize, Deserialize)]
pub struct Mail {
    pub to: String,
}

impl DurableTask for Mail {
    const NAME: &'static str = "mail";
    type State = mpsc::UnboundedSender<(TaskId, String)>;
    type Output = ();

    async fn run(self, job: Job, sent: Self::State) -> Result<(), BoxError> {
        let _ = sent.send((job.id(), self.to));
        Ok(())
    }
}

pub fn mail(to: &str) -> Mail {
    Mail { to: to.to_owned() }
}

/// A store on a SQLite file of its own, taking [`Mail`] tasks, seen from a
/// client of the server at `addr` in front of it: what the request tests
/// share, on axum and on actix-web (each starts its own server).
pub struct MailService {
    pub db: Db,
    pub store: Store,
    pub sent: mpsc::UnboundedReceiver<(TaskId, String)>,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

impl MailService {
    /// Opens the store and starts it on `runner`; the server will listen
    /// on `addr`.
    pub async fn open(runner: &Runner, addr: SocketAddr) -> Self {
        let db = Db::new();
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let store = start(&db, runner, |store| store.register::<Mail>(sent_tx)).await;
        Self {
            db,
            store,
            sent,
            addr,
            client: reqwest::Client::new(),
        }
    }

    /// The URL of `path` on the server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Posts to `path`, and checks the response's status.
    pub async fn post_expecting(
        &self,
        path: &str,
        status: reqwest::StatusCode,
    ) -> reqwest::Response {
        let response = self.client.post(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "POST {path}");
        response
    }

    /// How many tasks the store holds.
    pub async fn stored(&self) -> u64 {
        stored_total(&self.store).await
    }

    /// Waits for the next mail to run, checks it went `to`, and returns its id.
    pub async fn sent_to(&mut self, to: &str) -> TaskId {
        let (id, sent_to) = recv(&mut self.sent, &format!("the task for {to:?} to run")).await;
        assert_eq!(sent_to, to);
        id
    }
}
