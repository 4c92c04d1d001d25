//! Durable background tasks for [epilogue]: stored **before the
//! response is sent**, run at least once by this process or by worker
//! processes on the same store, whatever crashes in between.
//!
//! An in-memory [`BackgroundTask`](epilogue::BackgroundTask) is lost if the
//! process dies before it runs. A [`DurableTask`] is a value committed to a
//! store (SQLite embedded, feature `sqlite`, the default; PostgreSQL for
//! several processes or machines, feature `postgres`) before the response
//! leaves: a `201` means the task is on disk. The engine is
//! [River](https://riverqueue.com) (`riverqueue`): its tables, its
//! migrations, its claim, retries, rescue of dead workers' tasks, unique
//! and periodic jobs, and its web UI on PostgreSQL. This crate adds what a
//! web service needs around it: the commit before the response (shared
//! across concurrent requests), one executor and one shutdown with the
//! in-memory tasks, and the fault promises, tested.
//!
//! ```no_run
//! use axum::{routing::post, Json};
//! use epilogue::Runner;
//! use epilogue_durable::{BoxError, DurableTask, Job, RequestDurable, Store};
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
//!     async fn run(self, job: Job, (): ()) -> Result<(), BoxError> {
//!         // `job.id()` is the same on every attempt: an idempotency key.
//!         println!("welcome, {} (task {})", self.email, job.id());
//!         Ok(())
//!     }
//! }
//!
//! async fn register(
//!     durable: RequestDurable,
//!     Json(email): Json<String>,
//! ) -> Result<String, epilogue_durable::DurableError> {
//!     // Committed (with the tasks of concurrent requests, in one
//!     // transaction) before this returns: the 201 means it is on disk.
//!     let id = durable.enqueue(&SendWelcome { email }).await?;
//!     Ok(id.to_string())
//! }
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! let runner = Runner::new();
//! let store = Store::open("sqlite://tasks.db")
//!     .await?
//!     .register::<SendWelcome>(())
//!     .start(&runner)
//!     .await?;
//! let app = axum::Router::new().route("/register", post(register));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // One shutdown: the server, the in-memory tasks and the durable ones.
//! epilogue::axum::serve(listener, app, runner).commit(store).await;
//! # Ok(()) }
//! ```
//!
//! # From a request
//!
//! Give the store to the executing layer (`serve(..).commit(store)`, or
//! [`BackgroundLayer::commit`](epilogue::http::BackgroundLayer::commit)).
//! Then a handler takes [`RequestDurable`] and either:
//!
//! - [`enqueue`](RequestDurable::enqueue)s a task and awaits its commit, for
//!   a response that names its id (map the error to `503`: with axum,
//!   return it); or
//! - [`add`](RequestDurable::add)s it, to be stored once the handler has
//!   answered with a success, before the response leaves; or returns
//!   [`DurableTasks`] with the response, stored whatever its status.
//!
//! For added and returned tasks, a store that cannot be written answers
//! `503` in place of the handler's response, and none of the request's
//! in-memory tasks run. Either way, the durable tasks of concurrent requests
//! share one transaction, so sixteen clients do not wait for sixteen
//! fsyncs. To store a task in your own transaction (create the user and its
//! welcome email together, or neither), use [`Store::enqueue_tx`].
//!
//! # Semantics: at least once
//!
//! - Every task has an id ([`Job::id`]) its run sees on every attempt: use
//!   it as an idempotency key. A task runs again only if an attempt failed,
//!   or if its process died while running it: **at least once**, never
//!   "exactly once". [`Enqueue::idempotency_key`] makes a second enqueue
//!   of the same key a no-op that returns the first id.
//! - A failed attempt (an `Err`, a panic, or its timeout: the attempt's
//!   future is dropped) is recorded and retried after 1, 2, 4, 8… s, up to
//!   [`DurableTask::MAX_ATTEMPTS`]; then the task is **dead**: listed by
//!   [`Store::dead`], queued again by [`Store::retry`].
//! - Tasks run on the application's [`Runner`](epilogue::Runner): they
//!   share its limits, per-name [`Stats`](epilogue::Stats), metrics and
//!   shutdown. Each attempt is polled on River's own task for it, as one of
//!   the runner's groups ([`Runner::run_here`](epilogue::Runner::run_here)),
//!   not on one of the runner's lanes: River waits for it there anyway. When the runner's shutdown starts, the store stops fetching;
//!   tasks still running at its deadline go back to the queue without
//!   using up an attempt.
//! - River writes completions in batches, within about 10 ms of a task's
//!   end: a process that dies just after a task ended may not have recorded
//!   it, and that task runs again.
//! - A process that dies mid-task: River's leader takes its tasks back
//!   after their timeout and 10 s more. A process that is alive keeps its
//!   tasks through a store outage, however long.
//! - A process fetches only the kinds it registered: tasks of a kind it
//!   does not know wait for one that does (rolling deploys).
//!
//! # Tracing
//!
//! Each attempt runs in a DEBUG span `durable_task` (`task`, `id`,
//! `attempt`, `traceparent`). A task stores the W3C trace context of the
//! request that stored it: its `traceparent` header, or with the
//! `opentelemetry` feature the current span's own context (the request's
//! span, when a `tracing-opentelemetry` layer traces the service). With that
//! feature each run's span is **linked** to it, on whichever process runs
//! it: a trace shows the request, then its task seconds later on another
//! worker. Enable `epilogue_durable=debug` in the OpenTelemetry layer's
//! filter to export those spans.
//!
//! # The engine, and where we work around it
//!
//! River's defaults suit a queue, not a request path, so the store sets:
//! a 1 ms fetch cooldown (River's 100 ms caps a process at ten fetches a
//! second), rescue after the longest timeout + 10 s (River's is an hour),
//! a 2 s rescuer and election interval, a 250 ms scheduler interval (so a
//! retry due in 1 s is not 5 s late). It needs sqlx 0.9.1 or later: with
//! 0.9.0 a connection whose `COMMIT` failed (a full disk) stayed inside the
//! dead transaction. River is MPL-2.0 (file-level copyleft): depending on it puts no
//! obligation on your code.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!("epilogue-durable needs a store: enable the `sqlite` or `postgres` feature");

mod backend;
mod batch;
mod builder;
mod envelope;
mod error;
mod file;
mod request;
mod status;
mod store;
mod task;
mod trace;
mod worker;

#[cfg(feature = "actix")]
mod actix;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod admin;
#[cfg(feature = "axum")]
mod axum;

pub use builder::{StoreBuilder, DEFAULT_CONCURRENCY, DEFAULT_RETENTION, DEFAULT_TIMEOUT};
pub use error::DurableError;
pub use request::{DurableTasks, RequestDurable};
pub use status::{DurableStats, TaskInfo, TaskState};
pub use store::{Enqueue, Enqueued, Store};
pub use task::{BoxError, DurableTask, Job, TaskId};

/// River, for what this crate does not wrap.
pub use riverqueue;
/// sqlx, the version River's pools and transactions come from.
pub use riverqueue::sqlx;
