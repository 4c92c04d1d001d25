//! Background tasks for tower, hyper and axum: work that runs **after the
//! response has been sent**, so the client never waits for it, and that is
//! never lost on the way: tracked, bounded, drained on shutdown, counted.
//!
//! It is the model of Esmerald, Lilya, Starlette and FastAPI
//! (`BackgroundTask`, `BackgroundTasks`, `add_task`, `background=` on a route
//! or on a response), made native to Rust:
//!
//! - a [`BackgroundTask`] is a function (`async fn` or plain `fn`) and its
//!   arguments; a [`BackgroundTasks`] is an ordered group of them;
//! - a [`Runner`] owns all background work of the application: it runs the
//!   groups in a few long-lived tokio tasks (lanes, one per worker thread),
//!   bounds how many run and wait, isolates
//!   failures and panics, and [drains](Runner::shutdown) on shutdown;
//! - [`http::BackgroundLayer`] wraps any tower service and starts a
//!   response's tasks once its body has been handed to the server;
//! - with the `axum` feature (on by default), tasks are response parts, an
//!   extractor, and a route layer, and [`axum::serve`]
//!   wires it all and drains on Ctrl-C / SIGTERM.
//!
//! # The five patterns
//!
//! The task functions of every example below:
//!
//! ```
//! async fn send_email_notification(to: Option<String>, message: &'static str) {
//!     // talk to the mail server
//! }
//!
//! // A plain fn: it runs on the blocking pool, never on an async worker.
//! fn write_in_file(email: Option<String>) -> std::io::Result<()> {
//!     // append to a file
//!     Ok(())
//! }
//! ```
//!
//! ## Route-level, one task
//!
//! Esmerald: `@post("/register", background=BackgroundTask(send_email_notification, message="Account created"))`
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! use axum::{handler::Handler, routing::post, Json, Router};
//! use epilogue::{axum::background, BackgroundTask};
//!
//! async fn create_user() -> Json<&'static str> {
//!     Json("Created")
//! }
//!
//! let app: Router = Router::new().route(
//!     "/register",
//!     post(create_user.layer(background(BackgroundTask::new(
//!         send_email_notification,
//!         (None, "Account created"),
//!     )))),
//! );
//! ```
//!
//! `post(create_user).layer(background(..))`, on the method router, works
//! too; on the handler is cheaper (see the [`axum`] module).
//!
//! ## Route-level, a list
//!
//! Esmerald: `background=BackgroundTasks(tasks=[BackgroundTask(...), BackgroundTask(...)])`
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! # fn write_in_file(email: Option<String>) -> std::io::Result<()> { Ok(()) }
//! # async fn create_user() {}
//! use axum::{handler::Handler, routing::post, Router};
//! use epilogue::{axum::background, BackgroundTask, BackgroundTasks};
//!
//! let app: Router = Router::new().route(
//!     "/register",
//!     post(create_user.layer(background(BackgroundTasks::from([
//!         BackgroundTask::new(send_email_notification, (None, "Account created")),
//!         BackgroundTask::new(write_in_file, (None,)),
//!     ])))),
//! );
//! ```
//!
//! ## Response-level, one task
//!
//! Esmerald: `return Response({...}, background=BackgroundTask(send_email_notification, email=..., message=...))`
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! use axum::{http::StatusCode, routing::post, Json, Router};
//! use epilogue::{axum::Admitted, BackgroundTask};
//! use serde_json::{json, Value};
//!
//! // `Admitted`: refused with 503 before it runs while the runner is full.
//! async fn register(
//!     _: Admitted,
//!     Json(email): Json<String>,
//! ) -> (StatusCode, BackgroundTask, Json<Value>) {
//!     let task = BackgroundTask::new(send_email_notification, (Some(email), "Thank you for registering."));
//!     (StatusCode::CREATED, task, Json(json!({ "message": "Email sent" })))
//! }
//!
//! let app: Router = Router::new().route("/register", post(register));
//! ```
//!
//! ## Response-level, a list
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! # fn write_in_file(email: Option<String>) -> std::io::Result<()> { Ok(()) }
//! use axum::{routing::post, Json, Router};
//! use epilogue::{axum::Admitted, BackgroundTask, BackgroundTasks};
//!
//! async fn register(_: Admitted, Json(email): Json<String>) -> (BackgroundTasks, Json<&'static str>) {
//!     let tasks = BackgroundTasks::from([
//!         BackgroundTask::new(send_email_notification, (Some(email.clone()), "Thank you for registering.")),
//!         BackgroundTask::new(write_in_file, (Some(email),)),
//!     ]);
//!     (tasks, Json("Email sent"))
//! }
//!
//! let app: Router = Router::new().route("/register", post(register));
//! ```
//!
//! ## `add_task`
//!
//! Esmerald: `tasks = BackgroundTasks(); tasks.add_task(send_email_notification, email=..., message=...)`
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! # fn write_in_file(email: Option<String>) -> std::io::Result<()> { Ok(()) }
//! use axum::{routing::post, Json, Router};
//! use epilogue::{axum::Admitted, BackgroundTasks};
//!
//! async fn register(_: Admitted, Json(email): Json<String>) -> (BackgroundTasks, Json<&'static str>) {
//!     let mut tasks = BackgroundTasks::new();
//!     tasks.add_task(send_email_notification, (Some(email.clone()), "Thank you for registering."));
//!     tasks.add_task(write_in_file, (Some(email),));
//!     (tasks, Json("Email sent"))
//! }
//!
//! let app: Router = Router::new().route("/register", post(register));
//! ```
//!
//! ## And the extractor, FastAPI style
//!
//! FastAPI's `background_tasks: BackgroundTasks` parameter is
//! [`RequestTasks`](http::RequestTasks): a handle to this request's tasks,
//! which run once the handler has answered with a success.
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! use axum::Json;
//! use epilogue::http::RequestTasks;
//!
//! async fn register(tasks: RequestTasks, Json(email): Json<String>) -> Json<&'static str> {
//!     tasks.add_task(send_email_notification, (Some(email), "Welcome."));
//!     Json("Email sent")
//! }
//!
//! // Taking `RequestTasks` admits the request: no `Admitted` needed.
//! let app: axum::Router = axum::Router::new().route("/register", axum::routing::post(register));
//! ```
//!
//! ## Serving it, with a graceful shutdown
//!
//! ```no_run
//! # async fn create_user(_: epilogue::axum::Admitted) {}
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use epilogue::Runner;
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new().route("/register", post(create_user));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! // Serves until Ctrl-C or SIGTERM, then finishes the responses in flight and
//! // runs every accepted task, within 30 s in all.
//! let report = epilogue::axum::serve(listener, app, Runner::new())
//!     .grace(Duration::from_secs(30))
//!     .await;
//! println!("drained: {}, cut off: {:?}", report.drained, report.cut_off);
//! # Ok(()) }
//! ```
//!
//! # When tasks run
//!
//! - A response's tasks (route-level first, then the response's own, then
//!   those added through [`RequestTasks`](http::RequestTasks), in the order
//!   added) run **in order, one after another**, once the response body has
//!   been handed to the server, or dropped because the client went away.
//! - Running them never delays the response, nor the next request on the same
//!   keep-alive connection: a group runs in one of the runner's lanes, tokio
//!   tasks of their own that yield to connections after every few groups.
//!   A lane polls many groups, so an `async fn` task that blocks in a poll
//!   (a synchronous call, a long computation) stalls all of them: a poll
//!   over 10 ms is counted ([`TaskStats::long_polls`], and
//!   `epilogue_task_long_polls_total` with `metrics`) and logged at WARN
//!   once per task name. Make such work a plain `fn` task, which runs on
//!   the blocking pool, or use `tokio::task::spawn_blocking`.
//! - A failing or panicking task is reported (a `tracing` event with the
//!   task's name, never its arguments, inside the request's span) and the
//!   next task of the group still runs, unless the group was made with
//!   [`BackgroundTasks::stop_on_error`].
//! - **Only a handler that answered runs tasks.** Route-level tasks and
//!   those added through `RequestTasks` run when the response is a success
//!   (status below 400), as in Esmerald and FastAPI: a rejected request (bad
//!   JSON, a missing field) or a handler that returns an error with `?`
//!   sends no "Account created" email. Tasks the handler returned with its
//!   response run whatever the status: it chose them. A handler whose
//!   future was dropped (a timeout, a client gone before the answer) or that
//!   panicked runs none; such tasks are counted as
//!   [`abandoned`](Stats::abandoned).
//! - A client that goes away once its handler has answered does not cancel
//!   the tasks.
//! - When the runner is full, requests to admitted routes (route-level
//!   tasks, the extractor, [`Admitted`](axum::Admitted)) are answered `503`
//!   with `Retry-After` **before their handler runs**, so every request
//!   that got its success response gets all of its tasks. The bounds hold
//!   on every route: a response with tasks on a route that did not admit
//!   its request is admitted when it comes, and replaced by a `503` when
//!   the runner is full ([`Stats::unadmitted`]).
//! - No task is dropped silently: tasks whose
//!   response reached no executing layer are logged as an error and counted
//!   ([`http::tasks_without_layer`]); a [`BackgroundTasks`] dropped with tasks
//!   in it logs a warning.
//!
//! # Durable tasks
//!
//! Tasks that must survive a crash are **stored before the response is
//! sent** and run at least once, by this process or by workers elsewhere:
//! that is the `epilogue-durable` crate, on the River queue engine. It joins
//! this crate's executing layer through [`http::Commit`], and runs its tasks
//! on the same [`Runner`], so one shutdown drains both.
//!
//! # The public API, by use
//!
//! - **Tasks**: [`BackgroundTask`] (one function and its arguments, with a
//!   name, retries, a timeout) and [`BackgroundTasks`] (a list, run in
//!   order or concurrently). [`task::TaskFn`] and [`task::TaskOutput`] are
//!   the bounds a task function meets; their compile errors say what to
//!   fix.
//! - **axum**: [`axum::serve`] and its [`Serve`](axum::Serve) settings,
//!   [`Admitted`](axum::Admitted) (admission), [`axum::background`]
//!   (route-level tasks), [`RequestTasks`](http::RequestTasks) (the
//!   extractor), and tasks returned as response parts.
//! - **Any tower service**: [`http::BackgroundLayer`] (the executing
//!   layer, with its service, future and body types),
//!   [`http::RouteTasksLayer`], the refusals ([`http::Refusal`],
//!   [`http::JsonRefusal`], [`http::GrpcRefusal`], [`http::ScopeError`]),
//!   and [`http::attach`] / [`attached`](http::attached) /
//!   [`detach`](http::detach) for middleware that moves a response's tasks.
//! - **Running and watching**: [`Runner`] (built with
//!   [`Runner::builder`]: [`Limits`]), [`Refused`], [`ShutdownReport`],
//!   [`Stats`] / [`TaskStats`] / [`LastError`], [`shutdown_signal`], and
//!   the `metrics` module (feature `metrics`).
//! - **For crates that build on the runner** (as `epilogue-durable` does):
//!   [`http::Commit`] (work committed before the response leaves),
//!   [`Runner::run_here`] (a group polled on the caller's own task),
//!   [`runner::Hold`] (a shutdown waits for it), [`runner::panic_message`].
//!
//! # How it fits together
//!
//! The core knows nothing of HTTP: [`BackgroundTask`] and
//! [`BackgroundTasks`] are values, the [`runner`] runs them. [`http`]
//! adapts the runner to any tower service:
//! the executing layer puts a scope in each request's extensions, and
//! gathers the request's tasks when its response comes back. [`axum`] adds
//! the extractor, response parts, route layers and [`serve`](axum::serve).
//! The [`http`] module's documentation follows one task from the handler to
//! the runner.
//!
//! # Features
//!
//! - `axum` (default): the [`axum`] module, and `signal`.
//! - `actix`: the [`actix`] module (actix-web 4), and `signal`.
//! - `signal`: [`shutdown_signal`], Ctrl-C or SIGTERM.
//! - `metrics`: counters, gauges and histograms through the `metrics` facade,
//!   with nothing on the request path but two histograms (and `serve`'s
//!   timeout counter, when a timeout fires); see the
//!   `metrics` module for the names.
//! - `serde`: `Serialize` for [`Stats`] and [`ShutdownReport`].

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod latch;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "signal")]
mod signal;
mod stats;

pub mod http;
pub mod runner;
pub mod task;
mod tasks;

#[cfg(feature = "actix")]
#[cfg_attr(docsrs, doc(cfg(feature = "actix")))]
pub mod actix;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;

pub use runner::{Limits, Refused, Runner, ShutdownReport};
#[cfg(feature = "signal")]
#[cfg_attr(docsrs, doc(cfg(feature = "signal")))]
pub use signal::shutdown_signal;
pub use stats::{LastError, Stats, TaskStats, MAX_TASK_NAMES, OTHER_TASKS};
pub use task::BackgroundTask;
pub use tasks::BackgroundTasks;
