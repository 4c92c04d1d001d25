//! The store: where durable tasks wait, and what can be asked of it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::registry::{self, task_name};
use super::worker::WorkerBuilder;
use super::{DurableError, DurableTask, TaskId};

/// The apalis queue (`job_type`) every epilogue task is stored in; the
/// task's own name is in its payload.
pub(crate) const QUEUE: &str = "epilogue";

/// Runs `$body` with `$pool` bound to the store's pool and `db` to its
/// backend's module: the two backends answer the same calls.
macro_rules! with_backend {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.inner.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite($pool) => {
                use super::sqlite as db;
                $body
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres($pool) => {
                use super::postgres as db;
                $body
            }
        }
    };
}

/// A durable task store, SQLite or PostgreSQL: cheap to clone, one pool
/// shared by the clones.
///
/// Enqueue with [`enqueue`](Self::enqueue) (or from a request, through the
/// executing layer), run with [`worker`](Self::worker), look inside with
/// [`stats`](Self::stats), [`task`](Self::task) and [`dead`](Self::dead).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Wakes this process's workers when it stores a task, so they do not
    /// wait for their next poll.
    stored: Notify,
}

enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Opens the store at `url`, creating its tables (and, for SQLite, its
    /// file) if needed: `sqlite://PATH` (feature `sqlite`) or
    /// `postgres://USER:PASS@HOST:PORT/DB` (feature `postgres`).
    ///
    /// # Errors
    ///
    /// [`DurableError::UnsupportedUrl`] for another scheme, or one whose
    /// feature is off; a store error if it cannot be opened or migrated.
    pub async fn connect(url: &str) -> Result<Self, DurableError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        let backend = match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => Backend::Sqlite(super::sqlite::connect(url).await?),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Backend::Postgres(super::postgres::connect(url).await?),
            _ => {
                return Err(DurableError::UnsupportedUrl {
                    scheme: scheme.chars().take(32).collect(),
                })
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                stored: Notify::new(),
            }),
        })
    }

    /// The SQLite pool, for [`sqlite::enqueue`](super::sqlite::enqueue) in
    /// your own transactions; `None` on PostgreSQL.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.inner.backend {
            Backend::Sqlite(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The PostgreSQL pool, for [`postgres::enqueue`](super::postgres::enqueue)
    /// in your own transactions; `None` on SQLite.
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.inner.backend {
            Backend::Postgres(pool) => Some(pool),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Stores `task`; it runs on a worker of this store.
    ///
    /// # Errors
    ///
    /// [`DurableError::Encode`] if it does not serialise; a store error if
    /// it could not be written (then nothing was stored).
    pub async fn enqueue<T: DurableTask>(&self, task: &T) -> Result<TaskId, DurableError> {
        let encoded = Encoded::new(task)?;
        let id = encoded.id.clone();
        self.enqueue_encoded(std::slice::from_ref(&encoded)).await?;
        Ok(id)
    }

    /// Stores `tasks` in one transaction: all of them, or none.
    pub(crate) async fn enqueue_encoded(&self, tasks: &[Encoded]) -> Result<(), DurableError> {
        with_backend!(self, pool => db::push_all(pool, tasks).await)?;
        self.inner.stored.notify_waiters();
        Ok(())
    }

    pub(crate) fn stored(&self) -> &Notify {
        &self.inner.stored
    }

    /// A worker for this store: register the tasks it runs, then start it.
    pub fn worker(&self) -> WorkerBuilder {
        WorkerBuilder::new(self.clone())
    }

    /// How many tasks are in each state.
    ///
    /// # Errors
    ///
    /// A store error if it cannot be read.
    pub async fn stats(&self) -> Result<DurableStats, DurableError> {
        with_backend!(self, pool => db::stats(pool).await)
    }

    /// Sets the `epilogue_durable_tasks{state}` and
    /// `epilogue_durable_store_up` gauges from the store (see the
    /// [`metrics`](crate::metrics) module): call it before each scrape. It
    /// queries the store, so it is not free.
    ///
    /// # Errors
    ///
    /// A store error if it cannot be read; `epilogue_durable_store_up` is
    /// then 0 and the other gauges keep their last values.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub async fn record_metrics(&self) -> Result<(), DurableError> {
        let stats = self.stats().await;
        metrics::gauge!("epilogue_durable_store_up").set(if stats.is_ok() { 1.0 } else { 0.0 });
        let stats = stats?;
        for (state, count) in [
            ("queued", stats.queued),
            ("running", stats.running),
            ("retrying", stats.retrying),
            ("dead", stats.dead),
            ("succeeded", stats.succeeded),
        ] {
            metrics::gauge!("epilogue_durable_tasks", "state" => state).set(count as f64);
        }
        Ok(())
    }

    /// The dead tasks, most recent first, at most `limit`.
    ///
    /// # Errors
    ///
    /// A store error if it cannot be read.
    pub async fn dead(&self, limit: u32) -> Result<Vec<DeadTask>, DurableError> {
        with_backend!(self, pool => db::dead(pool, limit).await)
    }

    /// One task, by id; `None` if there is none.
    ///
    /// # Errors
    ///
    /// A store error if it cannot be read.
    pub async fn task(&self, id: &str) -> Result<Option<TaskInfo>, DurableError> {
        with_backend!(self, pool => db::task(pool, id).await)
    }

    /// Queues a dead task again, with a fresh retry budget. `false` if no
    /// dead task has that id.
    ///
    /// # Errors
    ///
    /// A store error if it cannot be written.
    pub async fn requeue(&self, id: &str) -> Result<bool, DurableError> {
        let requeued = with_backend!(self, pool => db::requeue(pool, id).await)?;
        if requeued {
            self.inner.stored.notify_waiters();
        }
        Ok(requeued)
    }

    /// Deletes the tasks that finished (`Done`) more than `older_than`
    /// ago, and returns how many. Finished tasks are kept until then, for
    /// [`task`](Self::task) and the `succeeded` count; call it from time to
    /// time so that the store (and the cost of each enqueue) does not grow
    /// with everything ever done. Dead tasks are kept: they wait for a
    /// person.
    ///
    /// # Errors
    ///
    /// A store error if it cannot be written.
    pub async fn purge_done(&self, older_than: Duration) -> Result<u64, DurableError> {
        let before =
            unix_now().saturating_sub(i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX));
        with_backend!(self, pool => db::purge_done(pool, before).await)
    }

    pub(crate) async fn register(
        &self,
        worker: &str,
        heartbeat: Duration,
    ) -> Result<(), DurableError> {
        with_backend!(self, pool => db::register(pool, worker, heartbeat).await)
    }

    pub(crate) async fn heartbeat(
        &self,
        worker: &str,
        heartbeat: Duration,
        orphaned_after: Duration,
    ) -> Result<u64, DurableError> {
        with_backend!(self, pool => db::heartbeat(pool, worker, heartbeat, orphaned_after).await)
    }

    pub(crate) async fn claim(
        &self,
        worker: &str,
        heartbeat: Duration,
        at_most: usize,
    ) -> Result<Vec<Claimed>, DurableError> {
        with_backend!(self, pool => db::claim(pool, worker, heartbeat, at_most).await)
    }

    /// Records how a claimed task's attempt ended; `false` if the task was
    /// no longer this worker's (it was taken back as an orphan).
    pub(crate) async fn settle(
        &self,
        worker: &str,
        id: &TaskId,
        settle: &Settle,
    ) -> Result<bool, DurableError> {
        with_backend!(self, pool => db::settle(pool, worker, id, settle).await)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner.backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store").field("kind", &kind).finish()
    }
}

/// A task ready to be stored: its id is known before it is, so a handler
/// can answer with it.
#[derive(Clone, Debug)]
pub(crate) struct Encoded {
    pub(crate) id: TaskId,
    pub(crate) payload: Vec<u8>,
    pub(crate) max_attempts: u32,
}

impl Encoded {
    pub(crate) fn new<T: DurableTask>(task: &T) -> Result<Self, DurableError> {
        Ok(Self {
            id: TaskId::generate(),
            payload: registry::encode(task)?,
            max_attempts: T::MAX_ATTEMPTS.max(1),
        })
    }
}

impl Encoded {
    /// The task as apalis stores it, in either backend.
    pub(crate) fn to_apalis(&self) -> apalis_core::task::Task<Vec<u8>> {
        apalis_core::task::builder::TaskBuilder::new(self.payload.clone())
            .task_id(apalis_core::task::task_id::TaskId::from_string(
                self.id.as_str(),
            ))
            .max_attempts(self.max_attempts as usize)
            .build()
    }
}

/// A task this worker claimed.
pub(crate) struct Claimed {
    pub(crate) id: TaskId,
    pub(crate) payload: Vec<u8>,
    /// Attempts made before this one.
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
}

impl Claimed {
    pub(crate) fn from_apalis(task: apalis_core::task::Task<Vec<u8>>) -> Option<Self> {
        let context = task.ctx().clone();
        let Some(id) = context.task_id() else {
            tracing::error!("the store returned a task without an id; skipped");
            return None;
        };
        Some(Self {
            id: TaskId::from_stored(id.to_string()),
            attempts: u32::try_from(context.attempt()).unwrap_or(u32::MAX),
            max_attempts: context
                .max_attempts()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            payload: task.args,
        })
    }
}

/// How a claimed task's attempt ended, as the store records it.
pub(crate) enum Settle {
    Done {
        attempts: u32,
        result: serde_json::Value,
    },
    /// Failed, to be tried again at `at` (seconds since the epoch).
    Retry {
        attempts: u32,
        result: serde_json::Value,
        at: i64,
    },
    Dead {
        attempts: u32,
        result: serde_json::Value,
    },
    /// Back in the queue, not run or cut short.
    Release { attempts: u32 },
}

impl Settle {
    pub(crate) fn attempts(&self) -> u32 {
        match self {
            Self::Done { attempts, .. }
            | Self::Retry { attempts, .. }
            | Self::Dead { attempts, .. }
            | Self::Release { attempts } => *attempts,
        }
    }

    /// What goes in `last_result`: apalis's `{"Ok": ..}` or `{"Err": ".."}`.
    pub(crate) fn result(&self) -> Option<&serde_json::Value> {
        match self {
            Self::Done { result, .. } | Self::Retry { result, .. } | Self::Dead { result, .. } => {
                Some(result)
            }
            Self::Release { .. } => None,
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum TaskStatus {
    /// Waiting for a worker (or claimed by one that has not started it).
    Queued,
    /// A worker is running it.
    Running,
    /// It ran to success.
    Done,
    /// An attempt failed; it waits for its next one.
    Retrying,
    /// It failed its last attempt, or can never run; see [`Store::dead`].
    Dead,
}

impl TaskStatus {
    fn from_stored(status: &str) -> Self {
        match status {
            "Running" => Self::Running,
            "Done" => Self::Done,
            "Failed" => Self::Retrying,
            "Killed" => Self::Dead,
            // "Pending", "Queued"
            _ => Self::Queued,
        }
    }
}

/// How many tasks are in each state, in the whole store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DurableStats {
    /// Waiting for a worker.
    pub queued: u64,
    /// Being run.
    pub running: u64,
    /// Ran to success.
    pub succeeded: u64,
    /// Waiting for another attempt.
    pub retrying: u64,
    /// Dead: see [`Store::dead`].
    pub dead: u64,
}

impl DurableStats {
    pub(crate) fn from_counts(counts: impl Iterator<Item = (String, i64)>) -> Self {
        let mut stats = Self::default();
        for (status, count) in counts {
            let count = u64::try_from(count).unwrap_or(0);
            let field = match TaskStatus::from_stored(&status) {
                TaskStatus::Queued => &mut stats.queued,
                TaskStatus::Running => &mut stats.running,
                TaskStatus::Done => &mut stats.succeeded,
                TaskStatus::Retrying => &mut stats.retrying,
                TaskStatus::Dead => &mut stats.dead,
            };
            *field += count;
        }
        stats
    }
}

/// A dead task: its last attempt failed, or it could never run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DeadTask {
    /// Its id, for [`Store::requeue`].
    pub task_id: String,
    /// Its name, if its payload could be read.
    pub task: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Why its last attempt failed.
    pub last_error: Option<String>,
}

impl DeadTask {
    pub(crate) fn new(
        id: String,
        payload: &[u8],
        attempts: i64,
        last_result: Option<String>,
    ) -> Self {
        Self {
            task_id: id,
            task: task_name(payload),
            attempts: u32::try_from(attempts).unwrap_or(0),
            last_error: parse(last_result).as_ref().and_then(error_of),
        }
    }
}

/// One task as the store has it.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TaskInfo {
    /// Its id.
    pub task_id: String,
    /// Its name, if its payload could be read.
    pub task: Option<String>,
    /// Where it is.
    pub status: TaskStatus,
    /// Attempts made (started) so far.
    pub attempts: u32,
    /// Attempts it may make.
    pub max_attempts: u32,
    /// Its handler's output, once done.
    pub output: Option<serde_json::Value>,
    /// Why its last attempt failed, if it did.
    pub last_error: Option<String>,
}

impl TaskInfo {
    pub(crate) fn new(
        id: String,
        payload: &[u8],
        status: &str,
        attempts: i64,
        max_attempts: i64,
        last_result: Option<String>,
    ) -> Self {
        let status = TaskStatus::from_stored(status);
        let result = parse(last_result);
        let last_error = result.as_ref().and_then(error_of);
        Self {
            task_id: id,
            task: task_name(payload),
            status,
            attempts: u32::try_from(attempts).unwrap_or(0),
            max_attempts: u32::try_from(max_attempts).unwrap_or(0),
            output: match (status, result) {
                (TaskStatus::Done, Some(serde_json::Value::Object(mut map))) => map.remove("Ok"),
                _ => None,
            },
            last_error,
        }
    }
}

/// A stored `last_result`, as JSON.
fn parse(last_result: Option<String>) -> Option<serde_json::Value> {
    serde_json::from_str(&last_result?).ok()
}

/// The error text of a stored `{"Err": ".."}` result.
fn error_of(last_result: &serde_json::Value) -> Option<String> {
    match last_result.get("Err")? {
        serde_json::Value::String(error) => Some(error.clone()),
        other => Some(other.to_string()),
    }
}
