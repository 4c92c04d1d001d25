//! Durable tasks on a real SQLite file: they run, retry with backoff, die,
//! come back on re-queue, survive a dead worker, and are stored (or not)
//! with the response and with the user's own transaction.
#![cfg(feature = "sqlite")]

mod common;
#[path = "support/durable.rs"]
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use epilogue::durable::{BoxError, DurableTask, DurableTasks, Job, Store, TaskStatus};
use epilogue::http::RequestTasks;
use epilogue::{BackgroundTask, Runner};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use common::{eventually, Connection, PATIENCE};
use support::{info_until, Echo};

/// A store in a file of its own, removed afterwards.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "epilogue-durable-{name}-{}-{}",
            std::process::id(),
            ulid_like()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.join("tasks.db").display())
    }
}

fn ulid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails its first `fail` attempts; counts every attempt and when it began.
#[derive(Serialize, Deserialize)]
struct Flaky {
    fail: u32,
}

#[derive(Clone, Default)]
struct Attempts(Arc<std::sync::Mutex<Vec<Instant>>>);

impl DurableTask for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_ATTEMPTS: u32 = 3;
    type State = Attempts;
    type Output = ();

    async fn run(self, job: Job, attempts: Attempts) -> Result<(), BoxError> {
        attempts.0.lock().unwrap().push(Instant::now());
        if job.attempt() <= self.fail {
            return Err(format!("attempt {} fails on purpose", job.attempt()).into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_stored_task_runs_once_and_its_output_is_kept() {
    let scratch = Scratch::new("runs");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = store.worker().register::<Echo>(runs).start();
    worker.ready().await;

    let id = store
        .enqueue(&Echo {
            text: "hello".into(),
        })
        .await
        .unwrap();
    let (ran_id, text, attempt) = tokio::time::timeout(PATIENCE, ran.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (ran_id.as_str(), text.as_str(), attempt),
        (id.as_str(), "hello", 1)
    );

    let info = info_until(&store, id.as_str(), "the task to be done", |i| {
        i.status == TaskStatus::Done
    })
    .await;
    assert_eq!(info.output, Some(serde_json::json!(5)));
    assert_eq!((info.attempts, info.task.as_deref()), (1, Some("echo")));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.succeeded, stats.queued, stats.running), (1, 0, 0));

    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert_eq!(report.succeeded, 1);
    assert!(ran.try_recv().is_err(), "it ran once");

    assert_eq!(
        store.purge_done(Duration::from_secs(3600)).await.unwrap(),
        0,
        "too recent"
    );
    eventually("a second since it finished", || {
        let store = store.clone();
        async move { store.purge_done(Duration::ZERO).await.unwrap() == 1 }
    })
    .await;
    assert_eq!(store.task(id.as_str()).await.unwrap(), None);
}

#[tokio::test]
async fn every_connection_keeps_what_it_commits_and_a_task_stored_elsewhere_starts_soon() {
    let scratch = Scratch::new("synchronous");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let pool = store.sqlite_pool().unwrap();
    // apalis-sqlite's `setup` turns it OFF; a 201 promises the task is on disk.
    let mut connections = Vec::new();
    for _ in 0..4 {
        let mut connection = pool.acquire().await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        assert_eq!(
            (synchronous, journal.as_str()),
            (2, "wal"),
            "FULL, in WAL mode"
        );
        connections.push(connection);
    }
    drop(connections);

    // Another process's store: its enqueue cannot wake this worker, which
    // finds the task by polling.
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = store.worker().register::<Echo>(runs).start();
    worker.ready().await;
    let waited = started_after_stored_elsewhere(&scratch, &mut ran).await;
    assert!(
        waited < Duration::from_secs(3),
        "started {waited:?} after it was stored (polls every 250 ms at first, 1 s at most)"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Stores a task through a second store, as another process would (its
/// enqueue cannot wake this process's worker), and waits for it to start.
async fn started_after_stored_elsewhere(
    scratch: &Scratch,
    ran: &mut mpsc::UnboundedReceiver<(String, String, u32)>,
) -> Duration {
    let elsewhere = Store::connect(&scratch.url()).await.unwrap();
    let stored = Instant::now();
    elsewhere
        .enqueue(&Echo {
            text: "elsewhere".into(),
        })
        .await
        .unwrap();
    let (_, text, _) = tokio::time::timeout(PATIENCE, ran.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "elsewhere");
    stored.elapsed()
}

/// An idle worker polls less and less often, but never waits longer than
/// its `max_idle_poll`: here 50 ms doubling up to 400 ms. Uncapped, after
/// 3.5 s of empty polls its wait would be 3.2 s.
#[tokio::test]
async fn an_idle_worker_polls_less_often_but_still_finds_a_task_stored_elsewhere() {
    let scratch = Scratch::new("idle");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = store
        .worker()
        .register::<Echo>(runs)
        .poll_interval(Duration::from_millis(50))
        .max_idle_poll(Duration::from_millis(400))
        .start();
    worker.ready().await;
    // Time is what this waits for: the worker's polls finding nothing.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let waited = started_after_stored_elsewhere(&scratch, &mut ran).await;
    assert!(
        waited < Duration::from_millis(1500),
        "started {waited:?} after it was stored (the longest idle wait is 400 ms)"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn failures_back_off_then_the_task_is_dead_and_a_requeue_gives_a_fresh_budget() {
    let scratch = Scratch::new("dead");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let attempts = Attempts::default();
    let worker = store
        .worker()
        .register::<Flaky>(attempts.clone())
        .backoff(Duration::from_secs(1))
        .start();
    let id = store.enqueue(&Flaky { fail: 100 }).await.unwrap();

    let info = info_until(&store, id.as_str(), "the task to be dead", |i| {
        i.status == TaskStatus::Dead
    })
    .await;
    assert_eq!(info.attempts, 3);
    assert_eq!(
        info.last_error.as_deref(),
        Some("attempt 3 fails on purpose")
    );
    {
        let at = attempts.0.lock().unwrap();
        assert_eq!(at.len(), 3);
        // 1 s, then 2 s: never sooner (the store keeps whole seconds, rounded up).
        assert!(
            at[1] - at[0] >= Duration::from_millis(1000),
            "{:?}",
            at[1] - at[0]
        );
        assert!(
            at[2] - at[1] >= Duration::from_millis(2000),
            "{:?}",
            at[2] - at[1]
        );
    }
    let dead = store.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].task_id.as_str(), dead[0].task.as_deref()),
        (id.as_str(), Some("flaky"))
    );
    assert_eq!(store.stats().await.unwrap().dead, 1);

    assert!(store.requeue(id.as_str()).await.unwrap());
    assert!(!store.requeue(id.as_str()).await.unwrap(), "no longer dead");
    assert!(!store.requeue("01JUNKJUNKJUNKJUNKJUNKJUNK").await.unwrap());
    let again = info_until(&store, id.as_str(), "the task to die again", |i| {
        i.status == TaskStatus::Dead && i.attempts == 3
    })
    .await;
    assert_eq!(again.task.as_deref(), Some("flaky"));
    assert_eq!(attempts.0.lock().unwrap().len(), 6, "three more attempts");
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.retried, report.dead), (4, 2));
}

#[tokio::test]
async fn undecodable_payloads_are_dead_with_their_reason_and_the_worker_goes_on() {
    let scratch = Scratch::new("undecodable");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let pool = store.sqlite_pool().unwrap().clone();
    for (id, payload) in [
        ("01AAAAAAAAAAAAAAAAAAAAAAA1", &b"not json at all"[..]),
        (
            "01AAAAAAAAAAAAAAAAAAAAAAA2",
            br#"{"task":"nope","args":{}}"#,
        ),
        (
            "01AAAAAAAAAAAAAAAAAAAAAAA3",
            br#"{"task":"echo","args":{"wrong":1}}"#,
        ),
    ] {
        sqlx::query(
            "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority) \
             VALUES (?1, ?2, 'epilogue', 'Pending', 0, 5, 0, 0)",
        )
        .bind(payload)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = store.worker().register::<Echo>(runs).start();

    eventually("three dead tasks", || {
        let store = store.clone();
        async move { store.dead(10).await.unwrap().len() == 3 }
    })
    .await;
    let mut dead = store.dead(10).await.unwrap();
    dead.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.last_error.as_deref().unwrap())
        .collect();
    assert!(reasons[0].contains("not a task envelope"), "{}", reasons[0]);
    assert!(
        reasons[1].contains(r#"unknown task "nope""#),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains("arguments of echo do not decode"),
        "{}",
        reasons[2]
    );
    assert!(
        dead.iter().all(|d| d.attempts == 1),
        "dead at once, not retried"
    );

    store
        .enqueue(&Echo {
            text: "still here".into(),
        })
        .await
        .unwrap();
    let (_, text, _) = tokio::time::timeout(PATIENCE, ran.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text, "still here");
    worker.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_task_and_a_committed_one_runs() {
    let scratch = Scratch::new("transaction");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let pool = store.sqlite_pool().unwrap().clone();
    sqlx::query("CREATE TABLE users (email TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('gone@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let gone = epilogue::durable::sqlite::enqueue(
        &mut tx,
        &Echo {
            text: "gone".into(),
        },
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.task(gone.as_str()).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap(), Default::default());

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('kept@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = epilogue::durable::sqlite::enqueue(
        &mut tx,
        &Echo {
            text: "kept".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = store.worker().register::<Echo>(runs).start();
    let (id, text, _) = tokio::time::timeout(PATIENCE, ran.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((id.as_str(), text.as_str()), (kept.as_str(), "kept"));
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 1);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Blocks for ever on its first attempt: the worker running it dies.
#[derive(Serialize, Deserialize)]
struct HangsFirst;

impl DurableTask for HangsFirst {
    const NAME: &'static str = "hangs_first";
    type State = mpsc::UnboundedSender<u32>;
    type Output = ();

    async fn run(self, job: Job, started: Self::State) -> Result<(), BoxError> {
        let _ = started.send(job.attempt());
        if job.attempt() == 1 {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_tasks_of_a_worker_that_died_are_taken_back_by_another() {
    let scratch = Scratch::new("orphan");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let id = store.enqueue(&HangsFirst).await.unwrap();

    // A worker on a runtime of its own, dropped mid-task: no shutdown, no
    // outcome recorded, no more heartbeats, as when a process is killed.
    let url = scratch.url();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = Store::connect(&url).await.unwrap();
            let (started, mut attempts) = mpsc::unbounded_channel();
            let worker = store.worker().register::<HangsFirst>(started).start();
            assert_eq!(attempts.recv().await, Some(1));
            std::mem::forget(worker);
        });
    })
    .join()
    .unwrap();
    assert_eq!(
        store.task(id.as_str()).await.unwrap().unwrap().status,
        TaskStatus::Running
    );

    let died = Instant::now();
    let (started, mut attempts) = mpsc::unbounded_channel();
    let worker = store
        .worker()
        .register::<HangsFirst>(started)
        .heartbeat(Duration::from_secs(1))
        .start();
    assert_eq!(
        tokio::time::timeout(PATIENCE, attempts.recv())
            .await
            .unwrap(),
        Some(2)
    );
    assert!(
        died.elapsed() < Duration::from_secs(10),
        "taken back in {:?}",
        died.elapsed()
    );
    let info = info_until(&store, id.as_str(), "the task to be done", |i| {
        i.status == TaskStatus::Done
    })
    .await;
    assert_eq!(info.attempts, 2, "the attempt cut short counts");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Counts its runs; waits for `release` before finishing.
#[derive(Serialize, Deserialize)]
struct Slow;

impl DurableTask for Slow {
    const NAME: &'static str = "slow";
    type State = (Arc<AtomicU32>, Arc<tokio::sync::Semaphore>);
    type Output = ();

    async fn run(self, _: Job, (runs, release): Self::State) -> Result<(), BoxError> {
        runs.fetch_add(1, Ordering::SeqCst);
        release.acquire().await?.forget();
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_finishes_what_runs_within_the_grace_and_puts_back_the_rest() {
    let scratch = Scratch::new("shutdown");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = store
        .worker()
        .register::<Slow>((runs.clone(), release.clone()))
        .concurrency(2)
        .start();
    for _ in 0..5 {
        store.enqueue(&Slow).await.unwrap();
    }
    eventually("two tasks running", || {
        let runs = runs.clone();
        async move { runs.load(Ordering::SeqCst) == 2 }
    })
    .await;
    // One finishes within the grace period; the other is still running at
    // its end.
    release.add_permits(1);
    let report = worker.shutdown(Duration::from_millis(500)).await;
    assert!(!report.drained);
    assert_eq!((report.succeeded, report.released), (1, 1));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.succeeded, stats.queued, stats.running), (1, 4, 0));
}

#[derive(Serialize, Deserialize)]
struct Welcome {
    email: String,
}

impl DurableTask for Welcome {
    const NAME: &'static str = "welcome";
    type State = ();
    type Output = ();

    async fn run(self, _: Job, (): ()) -> Result<(), BoxError> {
        Ok(())
    }
}

/// `app` served by `epilogue::axum::serve` with `store`, until `stop`.
async fn serve(
    app: Router,
    runner: &Runner,
    store: &Store,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<epilogue::ShutdownReport>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        epilogue::axum::serve(listener, app, runner.clone())
            .durable(store.clone())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .into_future(),
    );
    (addr, stop, server)
}

async fn register(tasks: RequestTasks, body: String) -> (http::StatusCode, String) {
    let id = tasks.add_durable(&Welcome { email: body }).unwrap();
    tasks.push(BackgroundTask::new(|| {}, ()).name("in memory"));
    (http::StatusCode::CREATED, id.to_string())
}

#[tokio::test]
async fn a_201_means_stored_and_a_store_that_fails_answers_503_and_runs_nothing() {
    let scratch = Scratch::new("http");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let runner = Runner::new();
    let app = Router::new().route("/register", post(register));
    let (addr, stop, server) = serve(app, &runner, &store).await;
    let mut client = Connection::open(addr).await;

    let created = client.post_json("/register", "ada@example.com").await;
    assert_eq!(created.status, http::StatusCode::CREATED);
    let info = store
        .task(created.text())
        .await
        .unwrap()
        .expect("stored before the 201");
    assert_eq!(
        (info.status, info.task.as_deref()),
        (TaskStatus::Queued, Some("welcome"))
    );
    eventually("the in-memory task to run", || {
        let runner = runner.clone();
        async move { runner.stats().succeeded == 1 }
    })
    .await;

    // The store goes away.
    store.sqlite_pool().unwrap().close().await;
    let refused = client.post_json("/register", "bob@example.com").await;
    assert_eq!(refused.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["reason"], "store_unavailable");
    assert!(
        !refused.text().contains("bob"),
        "the client's value is not echoed"
    );

    let _ = stop.send(());
    let report = server.await.unwrap();
    let stats = runner.stats();
    assert_eq!(
        (stats.succeeded, stats.abandoned),
        (1, 1),
        "the refused request's in-memory task did not run"
    );
    assert!(report.drained);
    let reopened = Store::connect(&scratch.url()).await.unwrap();
    assert_eq!(
        reopened.stats().await.unwrap().queued,
        1,
        "only the first was stored"
    );
}

use std::future::IntoFuture;

async fn returned(status: String) -> (http::StatusCode, DurableTasks, String) {
    let mut tasks = DurableTasks::new();
    let id = tasks
        .add(&Welcome {
            email: status.clone(),
        })
        .unwrap();
    let status = http::StatusCode::from_bytes(status.as_bytes()).unwrap();
    (status, tasks, id.to_string())
}

#[tokio::test]
async fn durable_tasks_returned_with_a_response_are_stored_whatever_its_status() {
    let scratch = Scratch::new("returned");
    let store = Store::connect(&scratch.url()).await.unwrap();
    let app = Router::new().route("/returned", post(returned));
    let runner = Runner::new();
    let (addr, stop, server) = serve(app, &runner, &store).await;
    let mut client = Connection::open(addr).await;
    for status in ["202", "409"] {
        let answer = client.post_json("/returned", status).await;
        assert_eq!(answer.status.as_str(), status);
        let info = store.task(answer.text()).await.unwrap();
        assert_eq!(
            info.map(|i| i.task),
            Some(Some("welcome".to_owned())),
            "stored before the {status}"
        );
    }
    let _ = stop.send(());
    assert!(server.await.unwrap().drained);
}
