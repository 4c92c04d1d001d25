//! axum integration: tasks as response parts, the [`RequestTasks`]
//! extractor, route-level tasks, and a [`serve`] that drains on shutdown.
//!
//! | you write | what it does |
//! |---|---|
//! | `(BackgroundTask::new(..), Json(..))` returned from a handler | the response's own tasks, run whatever its status |
//! | `tasks: RequestTasks` as a handler parameter, then `tasks.add_task(..)` | run after this handler's response if it is a success (FastAPI style) |
//! | `post(handler.layer(background(..)))` | route-level tasks, a fresh copy per request, run after a success |
//! | `post(handler.layer(admission()))` | `503` before the handler when the runner is full |
//! | `epilogue::axum::serve(listener, app, runner)` | serves `app` (HTTP/1 and HTTP/2) with the executing layer around it, and drains on Ctrl-C / SIGTERM |
//!
//! # Where each layer goes
//!
//! - The executing [`BackgroundLayer`](crate::http::BackgroundLayer) goes
//!   around the app: [`serve`] puts it there; with `axum::serve`,
//!   `app.layer(BackgroundLayer::new(runner))` works too (for every method,
//!   `HEAD` included). Any layer may sit between it and the routes, even one
//!   that runs the service on another task: the request carries its scope.
//! - Route layers ([`background`], [`admission`]) go on the handler
//!   (`handler.layer(..)`, axum's `Handler::layer`), on the method router
//!   (`post(handler).layer(..)`), or on a group of routes
//!   (`Router::route_layer(admission())`). On the handler is cheapest: axum
//!   boxes and clones a method router's layered service for every request.
//! - Every route whose handler returns tasks should be admitted: with
//!   [`admission`], a [`background`] layer, or the [`RequestTasks`]
//!   extractor. A handler that returns tasks on a route that was not still
//!   has them run (they are promised once it answered), but nothing refused
//!   its request when the runner was full: such groups are counted in
//!   [`Stats::unadmitted`](crate::Stats::unadmitted), and a warning is
//!   logged the first time.
//! - A `tower_http::timeout::TimeoutLayer` around the app or around one
//!   route cancels a slow handler: it never answered, so none of its
//!   extracted tasks run, and they are counted as
//!   [`abandoned`](crate::Stats::abandoned). The one case that cannot be told
//!   apart: extracted tasks marked [`always`](RequestTasks::always) on a
//!   route whose timeout layer is *inside* the executing layer run with the
//!   timeout's `408`, since that is a response like any other.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use http::request::Parts;

use crate::http::{attach, JsonRefusal, Refusal, RequestTasks, RouteTasksLayer, ScopeError};
use crate::task::BackgroundTask;
use crate::tasks::BackgroundTasks;

mod serve;

pub use serve::{serve, IncomingStream, Serve};

/// Route-level tasks: `post(create_user.layer(background(task)))`.
///
/// Every request gets a fresh copy of `tasks`, run after a successful
/// response (status below 400; see [`RouteTasksLayer::always`]) and before
/// the tasks the handler adds itself. The request is refused with `503`
/// before its handler runs while the runner is full.
///
/// ```
/// use axum::{handler::Handler, routing::post, Router};
/// use epilogue::{axum::background, BackgroundTask, BackgroundTasks};
///
/// async fn send_email(to: Option<String>, message: &'static str) { /* ... */ }
/// fn write_in_file(email: Option<String>) { /* ... */ }
/// async fn create_user() -> &'static str { "Created" }
///
/// let app: Router = Router::new()
///     .route(
///         "/register",
///         post(create_user.layer(background(BackgroundTask::new(send_email, (None, "Account created"))))),
///     )
///     .route(
///         "/register-and-log",
///         post(create_user).layer(background(BackgroundTasks::from([
///             BackgroundTask::new(send_email, (None, "Account created")),
///             BackgroundTask::new(write_in_file, (None,)),
///         ]))),
///     );
/// ```
pub fn background(tasks: impl Into<BackgroundTasks>) -> RouteTasksLayer {
    RouteTasksLayer::new(tasks)
}

/// Admission only: `post(handler.layer(admission()))` refuses requests with
/// `503` and `Retry-After` before the handler runs while the runner is full.
///
/// Put it on every route whose handler returns tasks in its response (or on
/// a group of them, with `Router::route_layer`). Routes with [`background`]
/// or the [`RequestTasks`] extractor are admitted already.
///
/// ```
/// use axum::{handler::Handler, routing::post, Json, Router};
/// use epilogue::{axum::admission, BackgroundTask};
///
/// async fn send_email(to: String) { /* ... */ }
///
/// async fn register(Json(email): Json<String>) -> (BackgroundTask, &'static str) {
///     (BackgroundTask::new(send_email, (email,)), "Email sent")
/// }
///
/// let app: Router = Router::new().route("/register", post(register.layer(admission())));
/// ```
pub fn admission() -> RouteTasksLayer {
    RouteTasksLayer::admission()
}

/// A task as a response part: `(StatusCode::CREATED, task, Json(..))`. It
/// runs once the response has been sent, whatever its status.
impl IntoResponseParts for BackgroundTask {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        attach(res.extensions_mut(), self);
        Ok(res)
    }
}

/// A group as a response part: `(tasks, Json(..))`.
impl IntoResponseParts for BackgroundTasks {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        attach(res.extensions_mut(), self);
        Ok(res)
    }
}

/// A task as the whole response: an empty `200`, or with a status,
/// `(StatusCode::ACCEPTED, task)`.
impl IntoResponse for BackgroundTask {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}

/// A group as the whole response: an empty `200`, or with a status,
/// `(StatusCode::ACCEPTED, tasks)`.
impl IntoResponse for BackgroundTasks {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}

/// The tasks of this request, FastAPI style: take `tasks: RequestTasks` as a
/// parameter and `add_task` to it; the tasks run after the handler's
/// response has been sent, if it is a success (see [`RequestTasks`]).
///
/// Extracting it admits the request, so when the runner is full the request
/// is refused with `503` before the handler runs.
///
/// ```
/// use axum::{routing::post, Json};
/// use epilogue::http::RequestTasks;
///
/// async fn send_email(to: String, message: &'static str) { /* ... */ }
///
/// async fn register(tasks: RequestTasks, Json(email): Json<String>) -> &'static str {
///     tasks.add_task(send_email, (email, "Welcome."));
///     "Email sent"
/// }
/// # let _: axum::Router = axum::Router::new().route("/register", post(register));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for RequestTasks {
    type Rejection = BackgroundRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        RequestTasks::from_extensions(&parts.extensions).map_err(BackgroundRejection)
    }
}

/// Why the [`RequestTasks`] extractor refused a request: `503` with
/// `Retry-After` when the runner is full or shutting down, `500` without the
/// executing layer. The body is JSON, as [`JsonRefusal`] makes it.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BackgroundRejection(pub ScopeError);

impl IntoResponse for BackgroundRejection {
    fn into_response(self) -> Response {
        JsonRefusal.respond(&self.0)
    }
}
