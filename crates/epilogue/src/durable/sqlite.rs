//! The embedded store: apalis-sqlite's schema and queries, on connections
//! that keep what they commit.
//!
//! [`enqueue`] stores a task inside your own transaction.

use std::str::FromStr;
use std::time::Duration;

use apalis_core::backend::WorkerFilter;
use apalis_core::worker::context::WorkerContext;
use apalis_sqlite::queries;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::store::{unix_now, Claimed, DeadTask, DurableStats, Encoded, Settle, TaskInfo, QUEUE};
use super::{DurableError, DurableTask, TaskId};

/// Stores `task` through `connection`, typically a transaction of yours:
/// it is stored if and when that transaction commits, and never if it
/// rolls back.
///
/// ```no_run
/// # async fn doc(pool: sqlx::SqlitePool, task: impl epilogue::durable::DurableTask) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO users (email) VALUES (?)").bind("ada@example.com").execute(&mut *tx).await?;
/// epilogue::durable::sqlite::enqueue(&mut tx, &task).await?;
/// tx.commit().await?; // the user and the task, or neither
/// # Ok(()) }
/// ```
///
/// The pool must be the store's ([`Store::sqlite_pool`](super::Store::sqlite_pool)),
/// or one on the same file.
///
/// # Errors
///
/// [`DurableError::Encode`] if the task does not serialise; a store error
/// if the insert fails (then roll back).
pub async fn enqueue<T: DurableTask>(
    connection: &mut SqliteConnection,
    task: &T,
) -> Result<TaskId, DurableError> {
    let encoded = Encoded::new(task)?;
    let id = encoded.id.clone();
    push(connection, &[encoded]).await?;
    Ok(id)
}

pub(super) async fn connect(url: &str) -> Result<SqlitePool, DurableError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // A committed task survives a power loss: apalis's own `setup`
        // turns this OFF. NORMAL would be faster and keep the database
        // consistent, but may lose the last commits on a power loss; a 201
        // promises the task is on disk, so FULL.
        .synchronous(SqliteSynchronous::Full)
        // Writers queue behind one another rather than failing at once.
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    apalis_sqlite::SqliteStorage::migrations()
        .run(&pool)
        .await?;
    Ok(pool)
}

pub(super) async fn push(
    connection: &mut SqliteConnection,
    tasks: &[Encoded],
) -> Result<(), DurableError> {
    let tasks: Vec<_> = tasks.iter().map(Encoded::to_apalis).collect();
    queries::push_tasks(connection, QUEUE, &tasks)
        .await
        .map_err(engine)
}

pub(super) async fn push_all(pool: &SqlitePool, tasks: &[Encoded]) -> Result<(), DurableError> {
    let mut tx = pool.begin().await?;
    push(&mut tx, tasks).await?;
    tx.commit().await?;
    Ok(())
}

fn config(batch: usize, heartbeat: Duration) -> apalis_sqlite::Config {
    apalis_sqlite::Config::default()
        .queue(QUEUE)
        .batch_size(batch.max(1))
        .heartbeat_interval(heartbeat)
}

pub(super) async fn register(
    pool: &SqlitePool,
    worker: &str,
    heartbeat: Duration,
) -> Result<(), DurableError> {
    let worker = WorkerContext::new(worker);
    queries::register_worker(pool, &config(1, heartbeat), &worker, "epilogue").await?;
    Ok(())
}

pub(super) async fn heartbeat(
    pool: &SqlitePool,
    worker: &str,
    heartbeat: Duration,
    orphaned_after: Duration,
) -> Result<u64, DurableError> {
    let context = WorkerContext::new(worker);
    let mut tx = pool.begin().await?;
    queries::keep_alive(&mut *tx, &config(1, heartbeat), &context).await?;
    let requeued = queries::reenqueue_orphaned(
        &mut *tx,
        orphaned_after.as_secs() as i64,
        QUEUE,
        &WorkerFilter::AllExcept(worker.to_owned()),
    )
    .await?;
    tx.commit().await?;
    Ok(requeued)
}

pub(super) async fn claim(
    pool: &SqlitePool,
    worker: &str,
    heartbeat: Duration,
    at_most: usize,
) -> Result<Vec<Claimed>, DurableError> {
    let context = WorkerContext::new(worker);
    let mut tx = pool.begin().await?;
    let tasks = queries::fetch_next(&mut *tx, &config(at_most, heartbeat), &context)
        .await
        .map_err(engine)?;
    let claimed: Vec<Claimed> = tasks.into_iter().filter_map(Claimed::from_apalis).collect();
    let ids: Vec<String> = claimed.iter().map(|c| c.id.to_string()).collect();
    if !ids.is_empty() {
        queries::lock_tasks(&mut *tx, &ids, worker).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

pub(super) async fn settle(
    pool: &SqlitePool,
    worker: &str,
    id: &TaskId,
    settle: &Settle,
) -> Result<bool, DurableError> {
    // ?1 the task, ?2 its worker, then what the transition sets.
    let sql = match settle {
        Settle::Done { .. } => {
            "UPDATE Jobs SET status = 'Done', attempts = ?3, last_result = ?4, \
             done_at = strftime('%s', 'now') \
             WHERE id = ?1 AND lock_by = ?2 AND status = 'Running'"
        }
        Settle::Retry { .. } => {
            "UPDATE Jobs SET status = 'Failed', attempts = ?3, last_result = ?4, run_at = ?5, \
             lock_by = NULL, lock_at = NULL \
             WHERE id = ?1 AND lock_by = ?2 AND status = 'Running'"
        }
        Settle::Dead { .. } => {
            "UPDATE Jobs SET status = 'Killed', attempts = ?3, last_result = ?4, \
             done_at = strftime('%s', 'now') \
             WHERE id = ?1 AND lock_by = ?2 AND status IN ('Queued', 'Running')"
        }
        Settle::Release { .. } => {
            "UPDATE Jobs SET status = 'Pending', attempts = ?3, lock_by = NULL, lock_at = NULL \
             WHERE id = ?1 AND lock_by = ?2 AND status IN ('Queued', 'Running')"
        }
    };
    let mut query = sqlx::query(sql)
        .bind(id.as_str())
        .bind(worker)
        .bind(settle.attempts());
    if let Some(result) = settle.result() {
        query = query.bind(result.to_string());
    }
    if let Settle::Retry { at, .. } = settle {
        query = query.bind(at);
    }
    Ok(query.execute(pool).await?.rows_affected() == 1)
}

pub(super) async fn stats(pool: &SqlitePool) -> Result<DurableStats, DurableError> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM Jobs WHERE job_type = ?1 GROUP BY status")
        .bind(QUEUE)
        .fetch_all(pool)
        .await?;
    Ok(DurableStats::from_counts(rows.iter().map(|row| {
        (row.get::<String, _>(0), row.get::<i64, _>(1))
    })))
}

pub(super) async fn dead(pool: &SqlitePool, limit: u32) -> Result<Vec<DeadTask>, DurableError> {
    let rows = sqlx::query(
        "SELECT id, job, attempts, last_result FROM Jobs \
         WHERE job_type = ?1 AND status = 'Killed' ORDER BY done_at DESC, id LIMIT ?2",
    )
    .bind(QUEUE)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(dead_task).collect())
}

fn dead_task(row: &SqliteRow) -> DeadTask {
    DeadTask::new(
        row.get("id"),
        &row.get::<Vec<u8>, _>("job"),
        row.get::<i64, _>("attempts"),
        row.get::<Option<String>, _>("last_result"),
    )
}

pub(super) async fn task(pool: &SqlitePool, id: &str) -> Result<Option<TaskInfo>, DurableError> {
    let row = sqlx::query(
        "SELECT id, job, status, attempts, max_attempts, last_result FROM Jobs \
         WHERE job_type = ?1 AND id = ?2",
    )
    .bind(QUEUE)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| {
        TaskInfo::new(
            row.get("id"),
            &row.get::<Vec<u8>, _>("job"),
            &row.get::<String, _>("status"),
            row.get::<i64, _>("attempts"),
            row.get::<i64, _>("max_attempts"),
            row.get::<Option<String>, _>("last_result"),
        )
    }))
}

pub(super) async fn requeue(pool: &SqlitePool, id: &str) -> Result<bool, DurableError> {
    let done = sqlx::query(
        "UPDATE Jobs SET status = 'Pending', attempts = 0, run_at = ?3, done_at = NULL, \
         lock_by = NULL, lock_at = NULL \
         WHERE job_type = ?1 AND id = ?2 AND status = 'Killed'",
    )
    .bind(QUEUE)
    .bind(id)
    .bind(unix_now())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn purge_done(pool: &SqlitePool, before: i64) -> Result<u64, DurableError> {
    let done =
        sqlx::query("DELETE FROM Jobs WHERE job_type = ?1 AND status = 'Done' AND done_at < ?2")
            .bind(QUEUE)
            .bind(before)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

fn engine(error: apalis_sqlite::Error) -> DurableError {
    match error {
        apalis_sqlite::Error::Database(error) => DurableError::Store(error),
        other => DurableError::Engine(other.to_string()),
    }
}
