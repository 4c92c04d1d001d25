//! Durable tasks on a real PostgreSQL (a throwaway cluster per test, the
//! demo's test harness): a task enqueued in the caller's transaction exists
//! if and only if that transaction commits, and a payload no worker can
//! decode is dead with its reason without stopping the worker.
#![cfg(feature = "postgres")]

// The demo's harness (it installs PostgreSQL through `apt` when missing).
#[path = "../../demo/tests/common/apt.rs"]
mod apt;
#[allow(dead_code)] // the harness has more than these tests use
#[path = "../../demo/tests/common/postgres.rs"]
mod postgres;
#[path = "support/durable.rs"]
mod support;

use std::time::{Duration, Instant};

use epilogue::durable::{Store, TaskStatus};
use tokio::sync::mpsc;

use postgres::Postgres;
use support::{info_until, Echo};

/// How long a test waits for an event.
const PATIENCE: Duration = Duration::from_secs(20);

/// A cluster and a store on it (initdb, then the store's migrations).
async fn store() -> (Postgres, Store) {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("the cluster's start");
    let store = Store::connect(&pg.url()).await.expect("the store opens");
    (pg, store)
}

async fn users(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_task_enqueued_in_a_transaction_exists_only_if_it_commits() {
    let (pg, store) = store().await;
    let pool = store.postgres_pool().expect("a PostgreSQL store").clone();
    sqlx::query("CREATE TABLE users (email TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('gone@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let gone = epilogue::durable::postgres::enqueue(
        &mut tx,
        &Echo {
            text: "gone".into(),
        },
    )
    .await
    .unwrap();
    // Inside the transaction it is there; outside, not yet.
    assert_eq!(store.task(gone.as_str()).await.unwrap(), None);
    tx.rollback().await.unwrap();
    assert_eq!(store.task(gone.as_str()).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap(), Default::default());
    assert!(users(&pool).await.is_empty());

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('kept@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = epilogue::durable::postgres::enqueue(
        &mut tx,
        &Echo {
            text: "kept".into(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(users(&pool).await, ["kept@example.com"]);
    let info = store.task(kept.as_str()).await.unwrap().expect("committed");
    assert_eq!(
        (info.status, info.task.as_deref(), info.attempts),
        (TaskStatus::Queued, Some("echo"), 0)
    );

    // A worker on a store of its own, as another process would have.
    let other = Store::connect(&pg.url()).await.unwrap();
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = other.worker().register::<Echo>(runs).start();
    let (id, text, attempt) = tokio::time::timeout(PATIENCE, ran.recv())
        .await
        .expect("the committed task runs")
        .unwrap();
    assert_eq!(
        (id.as_str(), text.as_str(), attempt),
        (kept.as_str(), "kept", 1)
    );
    let info = info_until(&store, kept.as_str(), "the task to be done", |i| {
        i.status == TaskStatus::Done
    })
    .await;
    assert_eq!(info.output, Some(serde_json::json!(4)));
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.succeeded, report.dead), (1, 0));
    assert!(ran.try_recv().is_err(), "only the committed task ran");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.succeeded, stats.queued, stats.running), (1, 0, 0));
}

#[tokio::test]
async fn undecodable_payloads_are_dead_with_their_reason_and_the_worker_goes_on() {
    let (pg, store) = store().await;
    for (id, payload) in [
        ("01AAAAAAAAAAAAAAAAAAAAAAA1", "not json at all"),
        ("01AAAAAAAAAAAAAAAAAAAAAAA2", r#"{"task":"nope","args":{}}"#),
        (
            "01AAAAAAAAAAAAAAAAAAAAAAA3",
            r#"{"task":"echo","args":{"wrong":1}}"#,
        ),
    ] {
        pg.psql(&format!(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority) \
             VALUES ('{id}', 'epilogue', convert_to('{payload}', 'UTF8'), 'Pending', 0, 5, \
             NOW() - interval '1 second', 0)"
        ));
    }
    assert_eq!(store.stats().await.unwrap().queued, 3);
    let (runs, mut ran) = mpsc::unbounded_channel();
    let worker = store.worker().register::<Echo>(runs).start();

    let deadline = Instant::now() + PATIENCE;
    let mut dead = loop {
        let dead = store.dead(10).await.unwrap();
        if dead.len() == 3 {
            break dead;
        }
        assert!(Instant::now() < deadline, "still not 3 dead: {dead:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    dead.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.last_error.as_deref().unwrap_or_default())
        .collect();
    assert!(reasons[0].contains("not a task envelope"), "{dead:?}");
    assert!(reasons[1].contains(r#"unknown task "nope""#), "{dead:?}");
    assert!(
        reasons[2].contains("arguments of echo do not decode"),
        "{dead:?}"
    );
    assert_eq!(
        dead.iter()
            .map(|d| (d.attempts, d.task.as_deref()))
            .collect::<Vec<_>>(),
        [(1, None), (1, Some("nope")), (1, Some("echo"))],
        "dead at once, not retried"
    );
    assert_eq!(store.stats().await.unwrap().dead, 3);

    let id = store
        .enqueue(&Echo {
            text: "still here".into(),
        })
        .await
        .unwrap();
    let (ran_id, text, _) = tokio::time::timeout(PATIENCE, ran.recv())
        .await
        .expect("the worker still runs tasks")
        .unwrap();
    assert_eq!(
        (ran_id.as_str(), text.as_str()),
        (id.as_str(), "still here")
    );
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.succeeded, report.dead), (1, 3));
}
