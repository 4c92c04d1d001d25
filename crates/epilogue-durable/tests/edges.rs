//! The less travelled paths: a panic, a full runner, a cancel, the
//! application's own transaction, a task that cannot be stored, a store
//! whose file is deleted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    recv, runner_finished, shut_down, start, stored_total, task_in, task_info, wait_until, Db,
    Parked, SendOnDrop, GRACE,
};
use epilogue::{BackgroundTask, Runner};
use epilogue_durable::riverqueue::database::begin_sqlite_write;
use epilogue_durable::sqlx::{Sqlite, SqlitePool, Transaction};
use epilogue_durable::{
    BoxError, DurableError, DurableTask, DurableTasks, Enqueue, Job, Store, TaskId, TaskState,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;

/// Panics.
#[derive(Serialize, Deserialize)]
struct Boom {}

impl DurableTask for Boom {
    const NAME: &'static str = "boom";
    const MAX_ATTEMPTS: u32 = 1;
    type State = ();
    type Output = ();

    async fn run(self, _: Job, (): ()) -> Result<(), BoxError> {
        panic!("boom: the task panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panic_is_a_failed_attempt_and_the_runner_counts_it() {
    let db = Db::new();
    let runner = Runner::new();
    let store = start(&db, &runner, |store| store.register::<Boom>(())).await;
    let id = store.enqueue(&Boom {}).await.unwrap();
    let dead = task_in::<Boom>(&store, id, TaskState::Dead).await;
    let error = dead.last_error.unwrap();
    assert!(error.contains("boom: the task panicked"), "{error}");
    runner_finished(&runner, Boom::NAME, 1).await;
    assert_eq!(runner.stats().by_task[Boom::NAME].panicked, 1);
    shut_down(&runner).await;
}

common::reporting_task! {
    /// Says which attempt ran.
    Ping = "ping"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_refused_by_a_full_runner_waits_and_keeps_its_attempt() {
    let db = Db::new();
    // One group runs, none waits; the store's own hold on the runner's
    // shutdown takes no room.
    let runner = Runner::builder().max_running(1).max_pending(0).build();
    let (ran, mut runs) = unbounded_channel();
    let store = start(&db, &runner, |store| store.register::<Ping>(ran)).await;
    store.ready().await;

    // An in-memory task fills the runner.
    let gate = Arc::new(Notify::new());
    let blocker = {
        let gate = gate.clone();
        move || {
            let gate = gate.clone();
            async move { gate.notified().await }
        }
    };
    runner
        .spawn(BackgroundTask::new(blocker, ()).name("blocker"))
        .expect("room for the blocker");

    let id = store.enqueue(&Ping {}).await.unwrap();
    wait_until("the runner to refuse the durable task twice", || async {
        runner.stats().refused >= 2
    })
    .await;
    assert!(runs.try_recv().is_err(), "it ran in a full runner");

    gate.notify_one();
    assert_eq!(recv(&mut runs, "the task to run").await, (id, 1));
    let done = task_in::<Ping>(&store, id, TaskState::Succeeded).await;
    assert_eq!(done.attempts, 1);
    shut_down(&runner).await;
}

/// Never ends by itself; tells when it is dropped.
#[derive(Serialize, Deserialize)]
struct Forever {}

impl DurableTask for Forever {
    const NAME: &'static str = "forever";
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(600));
    type State = UnboundedSender<&'static str>;
    type Output = ();

    async fn run(self, _: Job, events: Self::State) -> Result<(), BoxError> {
        let _dropped = SendOnDrop(events.clone(), || "dropped");
        let _ = events.send("started");
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_tasks_stop_or_never_run_and_free_their_key() {
    let db = Db::new();
    let runner = Runner::new();
    let (events, mut seen) = unbounded_channel();
    let store = start(&db, &runner, |store| store.register::<Forever>(events)).await;

    // A running task: its future is dropped.
    let running = store.enqueue(&Forever {}).await.unwrap();
    assert_eq!(recv(&mut seen, "the task to start").await, "started");
    assert!(store.cancel(running).await.unwrap());
    assert_eq!(recv(&mut seen, "the task to be dropped").await, "dropped");
    let cancelled = task_in::<Forever>(&store, running, TaskState::Cancelled).await;
    assert!(cancelled.finalized_at.is_some());
    assert!(!store.cancel(running).await.unwrap(), "cancelled twice");

    // A queued task with a key: cancelled, it no longer holds the key.
    let key = || Enqueue::new().idempotency_key("order-7");
    let queued = store.enqueue_with(&Parked { n: 0 }, key()).await.unwrap();
    assert!(store.cancel(queued.id).await.unwrap());
    let info = task_info::<Parked>(&store, queued.id).await;
    assert_eq!(info.state, TaskState::Cancelled);
    let again = store.enqueue_with(&Parked { n: 0 }, key()).await.unwrap();
    assert!(!again.duplicate);
    assert_ne!(again.id, queued.id);

    // A cancelled task can be queued again.
    let plain = store.enqueue(&Parked { n: 0 }).await.unwrap();
    assert!(store.cancel(plain).await.unwrap());
    assert!(store.retry(plain).await.unwrap());
    let info = task_info::<Parked>(&store, plain).await;
    assert_eq!(info.state, TaskState::Queued);
    assert!(!store
        .cancel(TaskId::from(plain.get() + 1000))
        .await
        .unwrap());
    shut_down(&runner).await;
}

/// Adds the user `email` and a [`Ping`] in one write on `pool`, left open.
async fn user_and_task(
    pool: &SqlitePool,
    store: &Store,
    email: &str,
) -> (Transaction<'static, Sqlite>, TaskId) {
    let mut tx = begin_sqlite_write(pool).await.unwrap();
    epilogue_durable::sqlx::query("INSERT INTO users VALUES (?)")
        .bind(email)
        .execute(&mut *tx)
        .await
        .unwrap();
    let enqueued = store
        .enqueue_tx(&mut tx, &Ping {}, Enqueue::new())
        .await
        .unwrap();
    (tx, enqueued.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_in_the_applications_transaction_exists_only_if_it_commits() {
    let db = Db::new();
    let options = db
        .options()
        .journal_mode(epilogue_durable::sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = epilogue_durable::sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let runner = Runner::new();
    let (ran, mut runs) = unbounded_channel();
    let store = Store::sqlite(pool.clone())
        .register::<Ping>(ran)
        .start(&runner)
        .await
        .unwrap();
    epilogue_durable::sqlx::query("CREATE TABLE users (email TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    let (tx, rolled_back) = user_and_task(&pool, &store, "rolled@back").await;
    tx.rollback().await.unwrap();
    assert!(store.task::<Ping>(rolled_back).await.unwrap().is_none());
    assert_eq!(stored_total(&store).await, 0);

    let (tx, committed) = user_and_task(&pool, &store, "committed").await;
    tx.commit().await.unwrap();
    assert_eq!(
        recv(&mut runs, "the committed task to run").await.0,
        committed
    );
    task_in::<Ping>(&store, committed, TaskState::Succeeded).await;
    let users: Vec<String> = epilogue_durable::sqlx::query_scalar("SELECT email FROM users")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(users, ["committed"]);
    shut_down(&runner).await;
}

/// Serialises as a number, not an object.
#[derive(Serialize, Deserialize)]
struct NotAnObject(u32);

impl DurableTask for NotAnObject {
    const NAME: &'static str = "not_an_object";
    type State = ();
    type Output = ();

    async fn run(self, _: Job, (): ()) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_that_is_not_a_json_object_is_refused_alone() {
    let db = Db::new();
    let runner = Runner::new();
    let store = start(&db, &runner, |store| store).await;
    let refused = store.enqueue(&NotAnObject(1)).await;
    assert!(
        matches!(refused, Err(DurableError::Encode(_))),
        "{refused:?}"
    );
    assert!(matches!(
        DurableTasks::new().add(&NotAnObject(1)),
        Err(DurableError::Encode(_))
    ));
    store.enqueue(&Parked { n: 0 }).await.unwrap();
    assert_eq!(stored_total(&store).await, 1);
    shut_down(&runner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_file_is_deleted_refuses_writes() {
    let db = Db::new();
    let runner = Runner::new();
    let store = start(&db, &runner, |store| store).await;
    store.enqueue(&Parked { n: 0 }).await.unwrap();
    assert!(store.file_intact());

    db.delete_under(&store).await;
    let refused = store.enqueue(&Parked { n: 0 }).await;
    assert!(
        matches!(refused, Err(DurableError::StoreLost { .. })),
        "{refused:?}"
    );
    assert!(refused.unwrap_err().is_unavailable());
    runner.shutdown(GRACE).await;
}
