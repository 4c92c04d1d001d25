//! axum integration: tasks as response parts, the [`RequestTasks`](crate::http::RequestTasks)
//! extractor, route-level tasks, and a [`serve`] that drains on shutdown.
//!
//! | you write | what it does |
//! |---|---|
//! | `(BackgroundTask::new(..), Json(..))` returned from a handler | the response's own tasks, run whatever its status |
//! | `tasks: RequestTasks` as a handler parameter, then `tasks.add_task(..)` | run after this handler's response if it is a success (FastAPI style) |
//! | `post(handler.layer(background(..)))` | route-level tasks, a fresh copy per request, run after a success |
//! | `_: Admitted` as a handler's first parameter | `503` before the handler when the runner is full |
//! | `epilogue::axum::serve(listener, app, runner)` | serves `app` (HTTP/1 and HTTP/2) with the executing layer around it, and drains on Ctrl-C / SIGTERM |
//!
//! # Where each layer goes
//!
//! - The executing [`BackgroundLayer`](crate::http::BackgroundLayer) goes
//!   around the app: [`serve`] puts it there; with `axum::serve`,
//!   `app.layer(BackgroundLayer::new(runner))` works too (for every method,
//!   `HEAD` included). Any layer may sit between it and the routes, even one
//!   that runs the service on another task: the request carries its scope.
//! - The route layer [`background`] goes on the handler
//!   (`handler.layer(..)`, axum's `Handler::layer`), on the method router
//!   (`post(handler).layer(..)`), or on a group of routes
//!   (`Router::route_layer(..)`). On the handler is cheapest: axum boxes and
//!   clones a method router's layered service for every request.
//! - **Admission**: a handler that returns tasks takes [`Admitted`] (the
//!   one way to admit an axum handler; a [`background`] layer or the
//!   [`RequestTasks`](crate::http::RequestTasks) extractor admit too), so
//!   that a full runner refuses the request with `503` before the handler
//!   runs. The bounds hold on a route that forgets: its response is
//!   admitted when it comes, and when the runner is full it is replaced by
//!   a `503` and its tasks dropped, after the handler has run. Such
//!   responses are counted in [`Stats::unadmitted`](crate::Stats::unadmitted),
//!   and a warning is logged the first time.
//! - A `tower_http::timeout::TimeoutLayer` around the app or around one
//!   route cancels a slow handler: it never answered, so none of its
//!   extracted tasks run, and they are counted as
//!   [`abandoned`](crate::Stats::abandoned). The one case that cannot be told
//!   apart: extracted tasks marked [`always`](crate::http::RequestTasks::always) on a
//!   route whose timeout layer is *inside* the executing layer run with the
//!   timeout's `408`, since that is a response like any other.

mod extract;
mod parts;
mod route;
mod serve;

pub use extract::{Admitted, BackgroundRejection};
pub use route::background;
pub use serve::{serve, IncomingStream, Serve};
