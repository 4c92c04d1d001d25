//! Building a store: the tasks this process runs, how many at once, River's
//! timings; then starting it beside the application's runner.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use epilogue::runner::Hold;
use epilogue::Runner;
use riverqueue::{
    Client, IntervalSchedule, MaintenanceConfig, PeriodicJob, PeriodicJobOpts, QueueConfig,
    Retention, RunHandle, Workers,
};
use tokio::sync::watch;

use crate::backend::Pool;
use crate::batch::Batcher;
use crate::envelope::Envelope;
use crate::error::DurableError;
use crate::file::StoreFile;
use crate::store::{Inner, Store};
use crate::task::DurableTask;
use crate::worker::RunOnRunner;

/// How long one attempt may run by default ([`StoreBuilder::timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long finished tasks are kept by default ([`StoreBuilder::retention`]).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Tasks run at once by default ([`StoreBuilder::concurrency`]).
pub const DEFAULT_CONCURRENCY: usize = 4;

/// A task that outlived its timeout this long after River cancelled it is
/// aborted (River's stuck threshold). Ours drop the attempt's future at
/// once; this is for the rescue arithmetic below.
const STUCK_THRESHOLD: Duration = Duration::from_secs(2);
/// How long past the longest timeout a running task's worker must be silent
/// before its task is taken over: a process that died.
const RESCUE_MARGIN: Duration = Duration::from_secs(8);
/// How often the leader looks for such tasks, bids for leadership, and makes
/// due retries and delayed tasks available.
const RESCUER_INTERVAL: Duration = Duration::from_secs(2);
const ELECT_INTERVAL: Duration = Duration::from_secs(2);
const SCHEDULER_INTERVAL: Duration = Duration::from_millis(250);
/// The least time between two fetches of a queue. River's 100 ms default
/// caps a process at ten fetches a second and adds up to 100 ms to every
/// pickup; 1 ms is River's least (bench/durable.sh: 2 ms ran 0.74-0.79x
/// River's tasks per second on PostgreSQL at 1 ms).
const FETCH_COOLDOWN: Duration = Duration::from_millis(1);
/// How often a queue looks for tasks when no notification came: the
/// fallback, for a lost notification.
const FETCH_POLL_INTERVAL: Duration = Duration::from_secs(1);

type Register = Box<dyn FnOnce(&mut Workers, &Runner) -> Result<(), riverqueue::Error> + Send>;

/// Builds a [`Store`]: from [`Store::sqlite`], [`Store::postgres`] or
/// [`Store::open`].
#[must_use = "a store builder does nothing until started"]
pub struct StoreBuilder {
    pool: Pool,
    register: Vec<Register>,
    kinds: Vec<&'static str>,
    longest_timeout: Duration,
    periodic: Vec<PeriodicJob>,
    concurrency: usize,
    timeout: Duration,
    retention: Duration,
    leader: bool,
}

impl Store {
    /// A store on your SQLite pool (feature `sqlite`). Give its connect
    /// options WAL, a busy timeout and `synchronous = FULL` (what
    /// [`open`](Self::open) sets): River sets no pragma.
    #[cfg(feature = "sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
    pub fn sqlite(pool: riverqueue::sqlx::SqlitePool) -> StoreBuilder {
        StoreBuilder::new(Pool::Sqlite(pool))
    }

    /// A store on your PostgreSQL pool (feature `postgres`).
    #[cfg(feature = "postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
    pub fn postgres(pool: riverqueue::sqlx::PgPool) -> StoreBuilder {
        StoreBuilder::new(Pool::Postgres(pool))
    }

    /// Opens a pool at `url` and a store on it: `sqlite://PATH` (created if
    /// missing, WAL, `synchronous = FULL`, 8 connections) or
    /// `postgres://USER:PASS@HOST:PORT/DB` (16 connections). For your own
    /// sizes and timeouts, build the pool yourself and use
    /// [`sqlite`](Self::sqlite) or [`postgres`](Self::postgres).
    ///
    /// # Errors
    ///
    /// [`DurableError::UnsupportedUrl`] for another scheme, or one whose
    /// feature is off; [`DurableError::Store`] if it cannot be opened. The
    /// error never shows the URL (it may hold a password).
    pub async fn open(url: &str) -> Result<StoreBuilder, DurableError> {
        Ok(StoreBuilder::new(Pool::open(url).await?))
    }
}

impl StoreBuilder {
    pub(crate) fn new(pool: Pool) -> Self {
        Self {
            pool,
            register: Vec::new(),
            kinds: Vec::new(),
            longest_timeout: Duration::ZERO,
            periodic: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            timeout: DEFAULT_TIMEOUT,
            retention: DEFAULT_RETENTION,
            leader: true,
        }
    }

    /// Runs the tasks of kind [`T::NAME`](DurableTask::NAME) in this
    /// process, each with a clone of `state`. A process fetches only the
    /// kinds it registered: during a rolling deploy, tasks of a kind an
    /// older release does not know wait for a process that does.
    ///
    /// River's leader takes back the tasks of a dead process after the
    /// longest timeout *it* knows and 10 s more: every process that may
    /// become leader should register the same kinds, with the same
    /// [`TIMEOUT`](DurableTask::TIMEOUT)s (one that does not, build it
    /// [`without_leader_election`](Self::without_leader_election)).
    pub fn register<T: DurableTask>(mut self, state: T::State) -> Self {
        self.kinds.push(T::NAME);
        if let Some(timeout) = T::TIMEOUT {
            self.longest_timeout = self.longest_timeout.max(timeout);
        }
        self.register.push(Box::new(move |workers, runner| {
            workers
                .add::<Envelope<T>, _>(RunOnRunner::<T> {
                    state,
                    runner: runner.clone(),
                })
                .map(drop)
        }));
        self
    }

    /// Stores `make()` once every `period`, **across every process on the
    /// store** (only River's elected leader schedules it), and runs it like
    /// any other task. Register `T` too, in this process or another.
    ///
    /// # Panics
    ///
    /// If `period` is zero.
    pub fn every<T: DurableTask>(
        mut self,
        period: Duration,
        make: impl Fn() -> T + Send + Sync + 'static,
    ) -> Self {
        let schedule =
            IntervalSchedule::new(period).expect("a periodic task needs a period above zero");
        // A stable id: every process registers the same periodic task,
        // and the leader inserts it once per period.
        let opts = PeriodicJobOpts::new().with_id(format!("epilogue:{}", T::NAME));
        self.periodic.push(PeriodicJob::with_options(
            schedule,
            move || Envelope {
                task: make(),
                idempotency_key: None,
            },
            opts,
        ));
        self
    }

    /// How many tasks this process runs at once (4 by default); `0` stores
    /// tasks but runs none, for a process that leaves them to workers. A
    /// process that runs none never becomes River's leader (which schedules
    /// retries, delayed and periodic tasks, and takes over a dead process's
    /// tasks): at least one process on the store must run tasks and stay
    /// eligible.
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks;
        self
    }

    /// How long one attempt may run (30 s by default) unless its kind sets
    /// [`DurableTask::TIMEOUT`]: past it, the attempt's future is dropped
    /// and the attempt fails. A process that dies mid-task has its tasks
    /// taken over by another after the longest timeout and 10 s more.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long finished tasks (succeeded or cancelled) are kept, for
    /// [`Store::task`] and idempotency keys (24 h by default); dead ones are
    /// kept seven times as long, for a look and a retry.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Never becomes River's leader, the process that schedules periodic
    /// tasks and takes over the tasks of dead processes. For a process that
    /// registers only some kinds (an older release during a rolling deploy):
    /// River's leader discards the orphaned tasks of kinds it does not know.
    /// At least one process on the store must stay eligible.
    pub fn without_leader_election(mut self) -> Self {
        self.leader = false;
        self
    }

    /// Creates or upgrades River's tables (in River's own `river_migration`
    /// table, never your `_sqlx_migrations`), starts River's client, and, if
    /// this process runs tasks, starts fetching them. The tasks run on
    /// `runner`: they share its limits, stats and shutdown. When the runner
    /// closes (its shutdown starts), the store stops fetching; when the
    /// runner's deadline passes, the tasks still running are cut off and
    /// go back to the queue without using up an attempt; the runner's
    /// shutdown waits for River to record every outcome.
    ///
    /// Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`DurableError::Migrate`] if River's tables cannot be created,
    /// [`DurableError::Config`] if a kind was registered twice or a setting
    /// is refused, [`DurableError::Store`] if the client cannot start.
    pub async fn start(self, runner: &Runner) -> Result<Store, DurableError> {
        self.pool.migrate().await?;
        let mut workers = Workers::new();
        for register in self.register {
            register(&mut workers, runner).map_err(DurableError::Config)?;
        }
        let works = self.concurrency > 0 && !self.kinds.is_empty();
        let longest = self.timeout.max(self.longest_timeout);
        let maintenance = MaintenanceConfig::default()
            .with_completed_job_retention(Retention::DeleteAfter(self.retention))
            .with_cancelled_job_retention(Retention::DeleteAfter(self.retention))
            .with_discarded_job_retention(Retention::DeleteAfter(self.retention * 7))
            .with_rescue_after(longest + STUCK_THRESHOLD + RESCUE_MARGIN)
            .with_rescuer_interval(RESCUER_INTERVAL)
            .with_elect_interval(ELECT_INTERVAL)
            .with_scheduler_interval(SCHEDULER_INTERVAL);
        let mut builder = river_builder(&self.pool)
            .workers(workers)
            // A process that only stores tasks may store kinds it does not run.
            .allow_unregistered_job_kinds()
            .fetch_only_known_kinds(true)
            .fetch_cooldown(FETCH_COOLDOWN)
            .job_timeout(self.timeout)
            .job_stuck_threshold(STUCK_THRESHOLD)
            .maintenance(maintenance);
        // Only a process that may lead schedules periodic tasks (River
        // refuses them on one that may not); it still runs what the leader
        // stores.
        if self.leader {
            for job in self.periodic {
                builder = builder.periodic_job(job);
            }
        }
        if works {
            builder = builder.queue(
                riverqueue::QUEUE_DEFAULT,
                QueueConfig::new(self.concurrency).with_fetch_poll_interval(FETCH_POLL_INTERVAL),
            );
        }
        if !self.leader {
            builder = builder.without_leader_election();
        }
        let client = builder.build().map_err(DurableError::Config)?;
        let (ready_tx, ready) = watch::channel(!works);
        if works {
            let run = client.start()?;
            tokio::spawn(supervise(run, runner.clone(), runner.hold(), ready_tx));
        }
        let file = self.pool.sqlite_file().map(StoreFile::watch);
        Ok(Store {
            inner: Arc::new(Inner {
                batcher: Batcher::start(client.clone(), file.clone()),
                client,
                pool: self.pool,
                file,
                ready,
            }),
        })
    }
}

/// River's builder on the store's pool.
fn river_builder(pool: &Pool) -> riverqueue::ClientBuilder {
    match pool {
        #[cfg(feature = "sqlite")]
        Pool::Sqlite(pool) => Client::builder(pool.clone()),
        #[cfg(feature = "postgres")]
        Pool::Postgres(pool) => Client::builder(pool.clone()),
    }
}

impl fmt::Debug for StoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("kinds", &self.kinds)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("retention", &self.retention)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

/// Ties River's run to the runner's life: stop fetching when the runner
/// closes, give up the tasks in flight when its deadline passes, and keep
/// its shutdown waiting until River has recorded every outcome.
async fn supervise(mut run: RunHandle, runner: Runner, hold: Hold, ready: watch::Sender<bool>) {
    let stopper = run.stopper();
    tokio::select! {
        ready_or_stopped = run.wait_ready() => {
            if ready_or_stopped.is_ok() {
                let _ = ready.send(true);
            }
        }
        () = runner.closed() => {}
    }
    tokio::select! {
        () = runner.closed() => stopper.stop(),
        ended = run.wait() => return ended_early(ended, hold),
    }
    tokio::select! {
        () = runner.cut_off() => stopper.stop_and_cancel(),
        ended = run.wait() => {
            log_stop(ended);
            drop(hold);
            return;
        }
    }
    log_stop(run.wait().await);
    drop(hold);
}

fn ended_early(ended: Result<(), riverqueue::Error>, hold: Hold) {
    drop(hold);
    match ended {
        Ok(()) => tracing::warn!("the durable store's client stopped before the runner closed"),
        Err(error) => tracing::error!(%error, "the durable store's client stopped"),
    }
}

fn log_stop(ended: Result<(), riverqueue::Error>) {
    if let Err(error) = ended {
        tracing::error!(%error, "the durable store's client stopped with an error");
    }
}
