//! actix-web integration: the same background tasks, bounds and drain as
//! on axum, for a framework that is not tower-based.
//!
//! | you write | what it does |
//! |---|---|
//! | `App::new()…wrap(Background::new(runner))` | the executing middleware: runs each response's tasks once its body has been handed to the server |
//! | `with_tasks(responder, tasks)` returned from a handler | the response's own tasks, run whatever its status |
//! | `tasks: RequestTasks` as a handler parameter, then `tasks.add_task(..)` | run after this handler's response if it is a success (FastAPI style) |
//! | `web::resource(..).wrap(background(..))` | route-level tasks, a fresh copy per request, run after a success |
//! | `_: Admitted` as a handler's first parameter | `503` before the handler when the runner is full |
//! | `epilogue::actix::run(server, runner, grace)` | serves until Ctrl-C / SIGTERM, then stops the server gracefully and drains the runner, within one grace period |
//!
//! # The runtime of the background work
//!
//! Each actix-web worker runs a single-threaded runtime of its own, and
//! `actix_web::rt::spawn` puts work on the worker's thread, beside its
//! requests: a task that blocks, or a burst of them, stalls that worker
//! (actix-web#3049). Give the [`Runner`](crate::Runner) a multi-threaded
//! runtime with [`Builder::runtime`](crate::runner::Builder::runtime), as
//! below: background work then runs on every core, apart from the workers,
//! and plain-`fn` tasks on that runtime's blocking pool. Without it, each
//! worker's tasks run on that worker (cheaper: no hand-off between
//! threads), stall its requests when they block, and are cut off when
//! the server stops its workers, before the runner can drain them: the
//! middleware warns once at start. Tasks must be
//! `Send`, as on axum; a task that is not fails to compile with a message
//! that says so.
//!
//! # When tasks run
//!
//! As with [`http::BackgroundLayer`](crate::http::BackgroundLayer): once
//! the response body has been handed to the server in full (its last chunk
//! written to the connection's buffer, or the body dropped); only a handler
//! that answered runs its tasks: route-level and extracted ones after a
//! success (status below 400), returned ones whatever the status. A
//! handler cancelled before it answered (its client left) runs none, and
//! they are counted as [`abandoned`](crate::Stats::abandoned). The tasks
//! run in the span that was current where the request was admitted: put a
//! tracing middleware (`tracing-actix-web`, say) outside the route, and
//! their log lines carry the request's.
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
//! // A plain fn: it runs on the blocking pool, never on a worker.
//! fn write_in_file(email: Option<String>) -> std::io::Result<()> {
//!     Ok(())
//! }
//! ```
//!
//! Route-level, one task, then a list:
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! # fn write_in_file(email: Option<String>) -> std::io::Result<()> { Ok(()) }
//! use actix_web::{web, App, HttpResponse};
//! use epilogue::actix::{background, Background};
//! use epilogue::{BackgroundTask, BackgroundTasks, Runner};
//!
//! async fn create_user() -> HttpResponse {
//!     HttpResponse::Created().json("Created")
//! }
//!
//! let app = App::new()
//!     .service(
//!         web::resource("/handler/single")
//!             .wrap(background(BackgroundTask::new(send_email_notification, (None, "Account created"))))
//!             .route(web::post().to(create_user)),
//!     )
//!     .service(
//!         web::resource("/handler/list")
//!             .wrap(background(BackgroundTasks::from([
//!                 BackgroundTask::new(send_email_notification, (None, "Account created")),
//!                 BackgroundTask::new(write_in_file, (None,)),
//!             ])))
//!             .route(web::post().to(create_user)),
//!     )
//!     .wrap(Background::new(Runner::new()));
//! ```
//!
//! Response-level, one task, then a list:
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! # fn write_in_file(email: Option<String>) -> std::io::Result<()> { Ok(()) }
//! use actix_web::{web, HttpResponse, Responder};
//! use epilogue::actix::{with_tasks, Admitted};
//! use epilogue::{BackgroundTask, BackgroundTasks};
//!
//! // `Admitted`: refused with 503 before it runs while the runner is full.
//! async fn single(_: Admitted, email: web::Json<String>) -> impl Responder {
//!     let task = BackgroundTask::new(send_email_notification, (Some(email.into_inner()), "Thank you for registering."));
//!     with_tasks(HttpResponse::Created().json("Email sent"), task)
//! }
//!
//! async fn list(_: Admitted, email: web::Json<String>) -> impl Responder {
//!     let email = email.into_inner();
//!     let tasks = BackgroundTasks::from([
//!         BackgroundTask::new(send_email_notification, (Some(email.clone()), "Thank you for registering.")),
//!         BackgroundTask::new(write_in_file, (Some(email),)),
//!     ]);
//!     with_tasks(HttpResponse::Created().json("Email sent"), tasks)
//! }
//! ```
//!
//! `add_task`, on a list or on the request's own tasks:
//!
//! ```
//! # async fn send_email_notification(to: Option<String>, message: &'static str) {}
//! # fn write_in_file(email: Option<String>) -> std::io::Result<()> { Ok(()) }
//! use actix_web::{web, HttpResponse, Responder};
//! use epilogue::actix::{with_tasks, Admitted};
//! use epilogue::http::RequestTasks;
//! use epilogue::BackgroundTasks;
//!
//! async fn add_task(_: Admitted, email: web::Json<String>) -> impl Responder {
//!     let email = email.into_inner();
//!     let mut tasks = BackgroundTasks::new();
//!     tasks.add_task(send_email_notification, (Some(email.clone()), "Thank you for registering."));
//!     tasks.add_task(write_in_file, (Some(email),));
//!     with_tasks(HttpResponse::Created().json("Email sent"), tasks)
//! }
//!
//! async fn extractor(tasks: RequestTasks, email: web::Json<String>) -> HttpResponse {
//!     tasks.add_task(send_email_notification, (Some(email.into_inner()), "Welcome."));
//!     HttpResponse::Created().json("Email sent")
//! }
//! ```

mod body;
mod convert;
mod extract;
mod middleware;
mod respond;
mod route;
mod run;

pub use body::TasksBody;
pub use extract::Admitted;
pub use middleware::{commit_extensions, Background, BackgroundMiddleware, ResponseFuture};
pub use respond::{with_tasks, WithTasks};
pub use route::{background, RouteFuture, RouteTasks, RouteTasksMiddleware};
pub use run::run;
