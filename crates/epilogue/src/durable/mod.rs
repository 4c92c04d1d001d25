//! Durable tasks: named, serialisable tasks stored before the response is
//! sent, and run at least once by this process or by workers on the same
//! store, whatever crashes in between.
//!
//! An in-memory [`BackgroundTask`](crate::BackgroundTask) is lost if the
//! process dies before it runs. A [`DurableTask`] is a value written to a
//! store (SQLite embedded, feature `sqlite`; PostgreSQL for several
//! processes or machines, feature `postgres`) **before** the response
//! leaves: a `201` means the task is on disk.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! use epilogue::durable::{DurableTask, Job, Store};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendWelcome {
//!     email: String,
//! }
//!
//! impl DurableTask for SendWelcome {
//!     const NAME: &'static str = "send_welcome";
//!     type State = ();
//!     type Output = ();
//!
//!     async fn run(self, job: Job, _: ()) -> Result<(), epilogue::durable::BoxError> {
//!         // `job.id()` is the same on every attempt: an idempotency key.
//!         println!("welcome, {} (task {}, attempt {})", self.email, job.id(), job.attempt());
//!         Ok(())
//!     }
//! }
//!
//! let store = Store::connect("sqlite://tasks.db").await?;
//! // Run them here (or in `worker` processes on the same store).
//! let worker = store.worker().register::<SendWelcome>(()).start();
//! let id = store.enqueue(&SendWelcome { email: "ada@example.com".into() }).await?;
//! # let _ = (id, worker);
//! # Ok(()) }
//! ```
//!
//! In a handler, add them to the request
//! ([`RequestTasks::add_durable`](crate::http::RequestTasks::add_durable)),
//! or return them with the response ([`DurableTasks`], a response part),
//! and give the store to the executing layer
//! ([`BackgroundLayer::durable`](crate::http::BackgroundLayer::durable)): the
//! layer stores them, in one transaction, once the handler has answered with
//! a success and before the response is sent. If the store cannot be
//! written, the client gets `503` with a JSON error instead, and none of the
//! request's in-memory tasks run. To store a task in your own transaction
//! (create the user and its welcome email together, or neither), use
//! [`sqlite::enqueue`] or [`postgres::enqueue`].
//!
//! # Semantics: at least once
//!
//! - Every task has an id ([`Job::id`]) its handler sees on every attempt:
//!   use it as an idempotency key. A task runs again only if it failed, or
//!   if its worker died while running it: **at least once**, never "exactly
//!   once".
//! - A failed attempt is recorded and retried after 1, 2, 4, 8… seconds (see
//!   [`WorkerBuilder::backoff`]), up to [`DurableTask::MAX_ATTEMPTS`]; then
//!   the task is **dead**: listed by [`Store::dead`], re-queued by
//!   [`Store::requeue`] with a fresh budget. A panic is a failed attempt.
//! - A worker that dies mid-task stops sending heartbeats; another worker
//!   puts its tasks back in the queue after
//!   [`WorkerBuilder::heartbeat`] × 3 (2 s × 3 by default, so within 10 s),
//!   ahead of newer work (they keep their place by `run_at`).
//! - [`Worker::shutdown`] stops fetching, lets the tasks in flight finish
//!   within the grace period, puts back the ones it fetched but had not
//!   started, and puts back the ones still running at the deadline.
//! - A payload that cannot be decoded, or names a task this worker does not
//!   know, is dead at once with that reason; it never crashes a worker.
//!
//! # The engine
//!
//! The store is [apalis](https://docs.rs/apalis)'s: its schema and
//! migrations, its insert (transactional), its claim query (`FOR UPDATE SKIP
//! LOCKED` on PostgreSQL), its worker registry, heartbeats and orphan
//! recovery. The worker loop that drives them is this module's own, thin
//! one, because apalis 1.0's own worker loop loses wake-ups, retries
//! without backoff, cannot tell a dead task from one still to be retried,
//! and refuses a restarted worker; `docs/apalis-*.md` has the reports. On
//! SQLite the connections use WAL with `synchronous = FULL` (apalis's
//! `setup` turns it `OFF`, which can lose committed tasks on a power loss).

mod error;
mod group;
mod job;
#[cfg(feature = "postgres")]
pub mod postgres;
mod registry;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
mod worker;

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::DurableError;
pub use group::DurableTasks;
pub use job::{Job, TaskId};
pub(crate) use store::Encoded;
pub use store::{DeadTask, DurableStats, Store, TaskInfo, TaskStatus};
pub use worker::{Worker, WorkerBuilder, WorkerReport};

/// The error a durable task's handler returns: anything that can be shown.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A task stored before the response is sent, and run at least once.
///
/// Its fields are its arguments, serialised as JSON into the store: keep
/// them small (an id, not a file; write the file to disk first). Its
/// [`NAME`](Self::NAME) says which handler runs it: keep it stable across
/// deployments, since stored tasks outlive the code that wrote them.
pub trait DurableTask: Serialize + DeserializeOwned + Send + 'static {
    /// The task's name in the store. Stable: renaming a task leaves the
    /// stored ones without a handler (they end dead, "unknown task").
    const NAME: &'static str;

    /// Attempts before the task is dead, the first one included.
    const MAX_ATTEMPTS: u32 = 5;

    /// What the handler needs besides its arguments (a pool, a mailer),
    /// given once to [`WorkerBuilder::register`] and cloned for each run.
    type State: Clone + Send + Sync + 'static;

    /// What a run produces, kept with the task in the store
    /// ([`Store::task`]); `()` for nothing.
    type Output: Serialize + Send;

    /// Runs the task once. An `Err` (or a panic) is a failed attempt: it is
    /// recorded and retried after a backoff, until
    /// [`MAX_ATTEMPTS`](Self::MAX_ATTEMPTS).
    fn run(
        self,
        job: Job,
        state: Self::State,
    ) -> impl Future<Output = Result<Self::Output, BoxError>> + Send;
}
