//! The store: River's client on the user's pool, what can be asked of it,
//! and how it is started beside the application's runner.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use epilogue::Runner;
use riverqueue::jiff::{RoundMode, Timestamp, TimestampRound, Unit};
use riverqueue::{
    Client, InsertOpts, JobListOrderBy, JobListParams, JobState, SortDirection, UniqueOpts,
};
use tokio::sync::watch;

use crate::backend::Pool;
use crate::batch::{Batcher, Tasks};
use crate::envelope::Envelope;
use crate::error::DurableError;
use crate::file::StoreFile;
use crate::status::{DurableStats, TaskInfo, TaskState};
use crate::task::{DurableTask, TaskId};
use crate::trace;

/// A durable task store, SQLite or PostgreSQL: River's client on your pool.
/// Cheap to clone; the clones share one client.
///
/// Build one with [`Store::sqlite`], [`Store::postgres`] or [`Store::open`],
/// register the tasks this process runs, and
/// [`start`](crate::StoreBuilder::start) it beside your [`Runner`]. Then store
/// tasks with [`enqueue`](Self::enqueue) (or from a request, through the
/// executing layer: see the [crate docs](crate)), and look inside with
/// [`stats`](Self::stats), [`task`](Self::task) and [`dead`](Self::dead).
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) pool: Pool,
    pub(crate) batcher: Batcher,
    /// The SQLite file, watched.
    pub(crate) file: Option<Arc<StoreFile>>,
    /// Whether this process fetches tasks, once ready.
    pub(crate) ready: watch::Receiver<bool>,
}

/// What an enqueue asks besides the task: an idempotency key, a delay.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Enqueue {
    idempotency_key: Option<String>,
    run_at: Option<SystemTime>,
    traceparent: Option<String>,
}

impl Enqueue {
    /// Nothing besides the task.
    pub fn new() -> Self {
        Self::default()
    }

    /// A second enqueue of the same task kind with the same key stores
    /// nothing, and answers with the first task's id, as long as that task
    /// is in the store (until the retention removes it once finished; 24 h
    /// by default). A dead or cancelled task does not hold its key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Runs the task no earlier than `delay` from now.
    pub fn delay(self, delay: Duration) -> Self {
        self.run_at(SystemTime::now() + delay)
    }

    /// Stores a W3C trace context (`traceparent`) with the task: its runs'
    /// spans carry it as their `traceparent` field, on whichever process
    /// runs them, and with the `opentelemetry` feature are linked to it.
    /// [`RequestDurable`](crate::RequestDurable) sets the request's own;
    /// with the `opentelemetry` feature, an enqueue without one takes the
    /// current span's.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Runs the task no earlier than `at`.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// The task as River stores it, and its insert options.
    pub(crate) fn prepare<T: DurableTask>(
        self,
        task: &T,
    ) -> Result<(Envelope<T>, InsertOpts), DurableError> {
        // A task that does not serialise as an object would fail the whole
        // batch it joins: refuse it here, alone.
        let value = serde_json::to_value(task).map_err(DurableError::Encode)?;
        if !value.is_object() {
            return Err(DurableError::Encode(serde::ser::Error::custom(
                "a durable task must serialise as a JSON object",
            )));
        }
        let task = serde_json::from_value(value).map_err(DurableError::Encode)?;
        let mut opts = InsertOpts::default();
        if self.idempotency_key.is_some() {
            opts = opts.with_unique(UniqueOpts::new().with_by_args(true));
        }
        if let Some(at) = self.run_at {
            if let Some(at) = not_before(at) {
                opts = opts.with_scheduled_at(at);
            }
        }
        if let Some(traceparent) = self.traceparent.or_else(trace::current) {
            let mut metadata = serde_json::Map::new();
            metadata.insert(trace::METADATA_KEY.to_owned(), traceparent.into());
            opts = opts.with_metadata(metadata);
        }
        Ok((
            Envelope {
                task,
                idempotency_key: self.idempotency_key,
            },
            opts,
        ))
    }
}

/// The time to store for a task that must not start before `at`. SQLite
/// keeps milliseconds, rounded to the nearest, and River rounds the `now` it
/// compares them with the same way: rounded up, plus a millisecond, the task
/// cannot start (half a millisecond) early.
fn not_before(at: SystemTime) -> Option<Timestamp> {
    let at = Timestamp::try_from(at.checked_add(Duration::from_millis(1))?).ok()?;
    let round = TimestampRound::new()
        .smallest(Unit::Millisecond)
        .mode(RoundMode::Ceil);
    Some(at.round(round).unwrap_or(at))
}

/// What an enqueue stored, from [`Store::enqueue_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enqueued {
    /// The task's id (the first task's, for a repeated idempotency key).
    pub id: TaskId,
    /// The idempotency key was in use: nothing new was stored.
    pub duplicate: bool,
}

impl Store {
    /// Stores `task` now, with the tasks that concurrent calls store (one
    /// transaction for all of them), and returns its id once committed.
    ///
    /// # Errors
    ///
    /// [`DurableError::Encode`] if the task does not serialise as a JSON
    /// object; [`DurableError::Store`] or [`DurableError::StoreLost`] if
    /// it could not be committed (then nothing was stored).
    pub async fn enqueue<T: DurableTask>(&self, task: &T) -> Result<TaskId, DurableError> {
        Ok(self.enqueue_with(task, Enqueue::new()).await?.id)
    }

    /// [`enqueue`](Self::enqueue), with an idempotency key or a delay.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue).
    pub async fn enqueue_with<T: DurableTask>(
        &self,
        task: &T,
        options: Enqueue,
    ) -> Result<Enqueued, DurableError> {
        let (task, opts) = options.prepare(task)?;
        let mut tasks = Tasks::default();
        tasks.push(task, opts);
        let row = self
            .insert(tasks)
            .await?
            .pop()
            .ok_or(DurableError::Closed)?;
        Ok(Enqueued {
            id: TaskId(row.id()),
            duplicate: row.unique_skipped_as_duplicate,
        })
    }

    /// Stores `task` in your own transaction (`&mut sqlx::Transaction` of
    /// this store's database, begun with
    /// [`riverqueue::database::begin_sqlite_write`] or
    /// [`begin_postgres`](riverqueue::database::begin_postgres)): it exists
    /// once, and only if, your transaction commits. On PostgreSQL the
    /// workers hear of it at the commit; on SQLite within River's 100 ms
    /// notification poll.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue); roll your transaction back on an
    /// error, since part of the insert may be in it.
    pub async fn enqueue_tx<'t, T, E>(
        &'t self,
        transaction: E,
        task: &T,
        options: Enqueue,
    ) -> Result<Enqueued, DurableError>
    where
        T: DurableTask,
        E: riverqueue::database::DatabaseTransactionExecutor<'t>,
    {
        self.check_file()?;
        let (task, opts) = options.prepare(task)?;
        let inserted = self
            .inner
            .client
            .insert(task)
            .opts(opts)
            .tx(transaction)
            .await?;
        Ok(Enqueued {
            id: TaskId(inserted.id()),
            duplicate: inserted.unique_skipped_as_duplicate,
        })
    }

    /// Stores prepared tasks through the shared batch, in one transaction.
    pub(crate) async fn insert(
        &self,
        tasks: Tasks,
    ) -> Result<Vec<riverqueue::InsertBatchResult>, DurableError> {
        self.check_file()?;
        self.inner.batcher.insert(tasks).await
    }

    /// Refuses writes once the SQLite file is gone: they would land in a
    /// file nobody will open again.
    fn check_file(&self) -> Result<(), DurableError> {
        match &self.inner.file {
            Some(file) => file.ensure_intact(),
            None => Ok(()),
        }
    }

    /// How many stored tasks are in each state.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] if the store cannot be read, and
    /// [`DurableError::StoreLost`] once its file is gone.
    pub async fn stats(&self) -> Result<DurableStats, DurableError> {
        self.check_file()?;
        let mut stats = DurableStats::default();
        for (state, count) in self.inner.pool.count_by_state().await? {
            if let Ok(state) = state.parse::<JobState>() {
                stats.add(TaskState::of(state), u64::try_from(count).unwrap_or(0));
            }
        }
        Ok(stats)
    }

    /// The task `id` of type `T`, with its output; `None` if there is none.
    ///
    /// # Errors
    ///
    /// [`DurableError::WrongKind`] if the task is of another kind;
    /// [`DurableError::Store`] if the store cannot be read.
    pub async fn task<T: DurableTask>(
        &self,
        id: TaskId,
    ) -> Result<Option<TaskInfo<T::Output>>, DurableError> {
        let Some(row) = self.row(id).await? else {
            return Ok(None);
        };
        if row.kind != T::NAME {
            return Err(DurableError::WrongKind {
                id,
                expected: T::NAME,
                found: row.kind,
            });
        }
        let output = row.decode_output::<T::Output>().ok().flatten();
        Ok(Some(TaskInfo::with_output(&row, output)))
    }

    /// The task `id` whatever its kind, its output as JSON; `None` if there
    /// is none.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] if the store cannot be read.
    pub async fn task_json(
        &self,
        id: TaskId,
    ) -> Result<Option<TaskInfo<serde_json::Value>>, DurableError> {
        Ok(self.row(id).await?.as_ref().map(TaskInfo::of))
    }

    async fn row(&self, id: TaskId) -> Result<Option<riverqueue::JobRow>, DurableError> {
        match self.inner.client.jobs().get(id.0).await {
            Ok(row) => Ok(Some(row)),
            Err(riverqueue::Error::NotFound(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// The dead tasks, most recently dead first, at most `limit` (1 to
    /// 10,000).
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] if the store cannot be read.
    pub async fn dead(&self, limit: u32) -> Result<Vec<TaskInfo<serde_json::Value>>, DurableError> {
        let params = JobListParams::default()
            .states([JobState::Discarded])
            .order_by(JobListOrderBy::FinalizedAt)
            .direction(SortDirection::Descending)
            .limit(limit.clamp(1, 10_000));
        let page = self.inner.client.jobs().list(params).await?;
        Ok(page.jobs.iter().map(TaskInfo::of).collect())
    }

    /// Queues a dead (or cancelled) task again, for one more attempt.
    /// `false` if no dead or cancelled task has that id.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] if the store cannot be written.
    pub async fn retry(&self, id: TaskId) -> Result<bool, DurableError> {
        match self.row(id).await? {
            Some(row) if matches!(row.state, JobState::Discarded | JobState::Cancelled) => {
                self.inner.client.jobs().retry(id.0).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Cancels a task that has not finished: a queued one never runs, a
    /// running one is asked to stop (its future is dropped). `false` if no
    /// unfinished task has that id.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] if the store cannot be written.
    pub async fn cancel(&self, id: TaskId) -> Result<bool, DurableError> {
        match self.row(id).await? {
            Some(row)
                if !matches!(
                    row.state,
                    JobState::Completed | JobState::Discarded | JobState::Cancelled
                ) =>
            {
                self.inner.client.jobs().cancel(id.0).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// River's client, for what this crate does not wrap (queues, periodic
    /// jobs at run time, events).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Completes once this process fetches tasks (at once if it never
    /// will: no task registered, or a concurrency of 0).
    pub async fn ready(&self) {
        let mut ready = self.inner.ready.clone();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Whether the store's SQLite file is still the one it opened (always
    /// `true` on PostgreSQL). Checked every 2 seconds.
    pub fn file_intact(&self) -> bool {
        self.check_file().is_ok()
    }

    /// Sets the `epilogue_durable_tasks{state}` and
    /// `epilogue_durable_store_up` gauges from the store: call it before each
    /// scrape. It queries the store, so it is not free.
    ///
    /// # Errors
    ///
    /// As [`stats`](Self::stats); `epilogue_durable_store_up` is then 0 and
    /// the other gauges keep their last values.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub async fn record_metrics(&self) -> Result<(), DurableError> {
        let stats = self.stats().await;
        metrics::gauge!("epilogue_durable_store_up").set(if stats.is_ok() { 1.0 } else { 0.0 });
        let stats = stats?;
        for state in TaskState::ALL {
            metrics::gauge!("epilogue_durable_tasks", "state" => state.as_str())
                .set(stats.get(state) as f64);
        }
        Ok(())
    }

    /// Runs until Ctrl-C or SIGTERM, then drains `runner` (durable tasks in
    /// flight included) within `grace`: a worker-only process in one call.
    /// The tasks it has not started stay queued for another process.
    pub async fn work_until_signal(
        &self,
        runner: &Runner,
        grace: Duration,
    ) -> epilogue::ShutdownReport {
        epilogue::shutdown_signal().await;
        let mut drain = std::pin::pin!(runner.shutdown(grace));
        tokio::select! {
            report = &mut drain => report,
            // A second signal cuts everything off at once.
            () = epilogue::shutdown_signal() => {
                runner.cut_off_now();
                drain.await
            }
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("client", &self.inner.client.id())
            .finish_non_exhaustive()
    }
}
