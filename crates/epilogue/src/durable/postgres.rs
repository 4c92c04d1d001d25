//! The shared store: apalis-postgres's schema and queries, for several
//! processes or machines (claims use `FOR UPDATE SKIP LOCKED`).
//!
//! [`enqueue`] stores a task inside your own transaction.

use std::time::Duration;

use apalis_core::worker::context::WorkerContext;
use apalis_postgres::queries;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};

use super::store::{unix_now, Claimed, DeadTask, DurableStats, Encoded, Settle, TaskInfo, QUEUE};
use super::{DurableError, DurableTask, TaskId};

/// Stores `task` through `connection`, typically a transaction of yours:
/// it is stored if and when that transaction commits, and never if it
/// rolls back.
///
/// ```no_run
/// # async fn doc(pool: sqlx::PgPool, task: impl epilogue::durable::DurableTask) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO users (email) VALUES ($1)").bind("ada@example.com").execute(&mut *tx).await?;
/// epilogue::durable::postgres::enqueue(&mut tx, &task).await?;
/// tx.commit().await?; // the user and the task, or neither
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`DurableError::Encode`] if the task does not serialise; a store error
/// if the insert fails (then roll back).
pub async fn enqueue<T: DurableTask>(
    connection: &mut PgConnection,
    task: &T,
) -> Result<TaskId, DurableError> {
    let encoded = Encoded::new(task)?;
    let id = encoded.id.clone();
    push(connection, &[encoded]).await?;
    Ok(id)
}

pub(super) async fn connect(url: &str) -> Result<PgPool, DurableError> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        // A store that went away answers 503 within this, not a hang.
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await?;
    apalis_postgres::PostgresStorage::migrations()
        .run(&pool)
        .await?;
    Ok(pool)
}

pub(super) async fn push(
    connection: &mut PgConnection,
    tasks: &[Encoded],
) -> Result<(), DurableError> {
    let tasks = tasks.iter().map(Encoded::to_apalis).collect();
    queries::push_tasks(connection, QUEUE, tasks)
        .await
        .map_err(engine)
}

pub(super) async fn push_all(pool: &PgPool, tasks: &[Encoded]) -> Result<(), DurableError> {
    let mut tx = pool.begin().await?;
    push(&mut tx, tasks).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn register(
    pool: &PgPool,
    worker: &str,
    _heartbeat: Duration,
) -> Result<(), DurableError> {
    let context = WorkerContext::new(worker);
    let mut connection = pool.acquire().await?;
    let now = unix_now();
    queries::register_worker(&mut *connection, QUEUE, &context, &now.into(), "epilogue")
        .await
        .map_err(engine)
}

pub(super) async fn heartbeat(
    pool: &PgPool,
    worker: &str,
    _heartbeat: Duration,
    orphaned_after: Duration,
) -> Result<u64, DurableError> {
    let context = WorkerContext::new(worker);
    let mut tx = pool.begin().await?;
    queries::keep_alive(&mut *tx, QUEUE, &context)
        .await
        .map_err(engine)?;
    // apalis-postgres puts back the tasks of every worker silent for that
    // long, this one's included: it is not silent, so none of its own.
    let requeued = queries::reenqueue_orphaned(&mut *tx, QUEUE, orphaned_after.as_secs())
        .await
        .map_err(engine)?;
    tx.commit().await?;
    Ok(requeued)
}

pub(super) async fn claim(
    pool: &PgPool,
    worker: &str,
    _heartbeat: Duration,
    at_most: usize,
) -> Result<Vec<Claimed>, DurableError> {
    let context = WorkerContext::new(worker);
    let config = apalis_postgres::Config::default()
        .queue(QUEUE)
        .batch_size(at_most.max(1));
    let mut tx = pool.begin().await?;
    let tasks = queries::fetch_next(&mut *tx, &config, &context)
        .await
        .map_err(engine)?;
    let claimed: Vec<Claimed> = tasks.into_iter().filter_map(Claimed::from_apalis).collect();
    if !claimed.is_empty() {
        let ids: Vec<String> = claimed.iter().map(|c| c.id.to_string()).collect();
        queries::lock_tasks(&mut *tx, &ids, worker).await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

pub(super) async fn settle(
    pool: &PgPool,
    worker: &str,
    id: &TaskId,
    settle: &Settle,
) -> Result<bool, DurableError> {
    // $1 the task, $2 its worker, then what the transition sets.
    let sql = match settle {
        Settle::Done { .. } => {
            "UPDATE apalis.jobs SET status = 'Done', attempts = $3, last_result = $4, \
             done_at = NOW() \
             WHERE id = $1 AND lock_by = $2 AND status = 'Running'"
        }
        Settle::Retry { .. } => {
            "UPDATE apalis.jobs SET status = 'Failed', attempts = $3, last_result = $4, \
             run_at = to_timestamp($5), lock_by = NULL, lock_at = NULL \
             WHERE id = $1 AND lock_by = $2 AND status = 'Running'"
        }
        Settle::Dead { .. } => {
            "UPDATE apalis.jobs SET status = 'Killed', attempts = $3, last_result = $4, \
             done_at = NOW() \
             WHERE id = $1 AND lock_by = $2 AND status IN ('Queued', 'Running')"
        }
        Settle::Release { .. } => {
            "UPDATE apalis.jobs SET status = 'Pending', attempts = $3, \
             lock_by = NULL, lock_at = NULL \
             WHERE id = $1 AND lock_by = $2 AND status IN ('Queued', 'Running')"
        }
    };
    let mut query = sqlx::query(sql)
        .bind(id.as_str())
        .bind(worker)
        .bind(i32::try_from(settle.attempts()).unwrap_or(i32::MAX));
    if let Some(result) = settle.result() {
        query = query.bind(result.clone());
    }
    if let Settle::Retry { at, .. } = settle {
        query = query.bind(*at as f64);
    }
    Ok(query.execute(pool).await?.rows_affected() == 1)
}

pub(super) async fn stats(pool: &PgPool) -> Result<DurableStats, DurableError> {
    let rows =
        sqlx::query("SELECT status, COUNT(*) FROM apalis.jobs WHERE job_type = $1 GROUP BY status")
            .bind(QUEUE)
            .fetch_all(pool)
            .await?;
    Ok(DurableStats::from_counts(rows.iter().map(|row| {
        (row.get::<String, _>(0), row.get::<i64, _>(1))
    })))
}

pub(super) async fn dead(pool: &PgPool, limit: u32) -> Result<Vec<DeadTask>, DurableError> {
    let rows = sqlx::query(
        "SELECT id, job, attempts, last_result::text AS last_result FROM apalis.jobs \
         WHERE job_type = $1 AND status = 'Killed' ORDER BY done_at DESC, id LIMIT $2",
    )
    .bind(QUEUE)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(dead_task).collect())
}

fn dead_task(row: &PgRow) -> DeadTask {
    DeadTask::new(
        row.get("id"),
        &row.get::<Vec<u8>, _>("job"),
        i64::from(row.get::<i32, _>("attempts")),
        row.get::<Option<String>, _>("last_result"),
    )
}

pub(super) async fn task(pool: &PgPool, id: &str) -> Result<Option<TaskInfo>, DurableError> {
    let row = sqlx::query(
        "SELECT id, job, status, attempts, max_attempts, last_result::text AS last_result \
         FROM apalis.jobs WHERE job_type = $1 AND id = $2",
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
            i64::from(row.get::<i32, _>("attempts")),
            i64::from(row.get::<i32, _>("max_attempts")),
            row.get::<Option<String>, _>("last_result"),
        )
    }))
}

pub(super) async fn requeue(pool: &PgPool, id: &str) -> Result<bool, DurableError> {
    let done = sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = NOW(), \
         done_at = NULL, lock_by = NULL, lock_at = NULL \
         WHERE job_type = $1 AND id = $2 AND status = 'Killed'",
    )
    .bind(QUEUE)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn purge_done(pool: &PgPool, before: i64) -> Result<u64, DurableError> {
    let done = sqlx::query(
        "DELETE FROM apalis.jobs WHERE job_type = $1 AND status = 'Done' \
         AND done_at < to_timestamp($2)",
    )
    .bind(QUEUE)
    .bind(before as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

fn engine(error: apalis_postgres::Error) -> DurableError {
    match error {
        apalis_postgres::Error::Database(error) => DurableError::Store(error),
        other => DurableError::Engine(other.to_string()),
    }
}
