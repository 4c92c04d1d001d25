//! Extractors: the request's tasks, and admission alone.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::http::{JsonRefusal, Refusal, RequestTasks, ScopeError};

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

/// Why the [`RequestTasks`] or [`Admitted`] extractor refused a request: `503` with
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

/// Admission: take `_: Admitted` as a handler's first parameter, and the
/// request is refused with `503` and `Retry-After` before the handler runs
/// while the runner is full. Every handler that returns tasks should take
/// it (see [the module docs](super)); for a tower service that is not an
/// axum handler, put [`RouteTasksLayer::admission()`](crate::http::RouteTasksLayer::admission)
/// on it instead.
///
/// ```
/// use axum::{routing::post, Json, Router};
/// use epilogue::{axum::Admitted, BackgroundTask};
///
/// async fn send_email(to: String) { /* ... */ }
///
/// async fn register(_: Admitted, Json(email): Json<String>) -> (BackgroundTask, &'static str) {
///     (BackgroundTask::new(send_email, (email,)), "Email sent")
/// }
///
/// let app: Router = Router::new().route("/register", post(register));
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Admitted;

impl<S: Send + Sync> FromRequestParts<S> for Admitted {
    type Rejection = BackgroundRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        crate::http::admit(&parts.extensions).map_err(BackgroundRejection)?;
        Ok(Admitted)
    }
}
