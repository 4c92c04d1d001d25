//! axum integration: tasks as response parts, the `BackgroundTasks`
//! extractor, route-level tasks, and a `serve` that drains on shutdown.
//!
//! | you write | what it does |
//! |---|---|
//! | `(BackgroundTask::new(..), Json(..))` returned from a handler | the response's own tasks |
//! | `tasks: BackgroundTasks` as a handler parameter, then `tasks.add_task(..)` | tasks run after this handler's response (FastAPI style) |
//! | `post(handler.layer(background(..)))` | route-level tasks, a fresh copy per request |
//! | `post(handler.layer(admission()))` | `503` before the handler when the runner is full |
//! | `epilogue::axum::serve(listener, app, runner)` | serves `app` (HTTP/1 and HTTP/2) with the executing layer outside it, and drains on Ctrl-C / SIGTERM |
//!
//! The executing [`BackgroundLayer`](crate::http::BackgroundLayer) must wrap the whole `Router`: inside it,
//! axum's HEAD handling and route-level layers would see bodies dropped
//! before they are sent. [`serve`] puts it there, so it cannot be misplaced;
//! a service served another way wraps the router itself:
//! `BackgroundLayer::new(runner).layer(router)`.
//!
//! Route-level layers go on the handler (`handler.layer(..)`, axum's
//! `Handler::layer`) or on the method router (`post(handler).layer(..)`); both
//! work. On the handler is cheaper: axum boxes and clones a method router's
//! layered service for every request, a handler's layer is built in place.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use http::request::Parts;

use crate::http::{add_or_attach, with_current, ExtractedSink, Origin, RouteTasksLayer};
use crate::runner::Refused;
use crate::task::BackgroundTask;
use crate::tasks::BackgroundTasks;

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
/// Add it to routes whose handlers return tasks in their response: without
/// it, such tasks are still run (they are promised once the handler has
/// answered), but past the runner's limits. Routes with
/// [`background`] or the [`BackgroundTasks`] extractor are admitted already.
pub fn admission() -> RouteTasksLayer {
    RouteTasksLayer::admission()
}

impl IntoResponseParts for BackgroundTask {
    type Error = Infallible;

    fn into_response_parts(self, res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        BackgroundTasks::from(self).into_response_parts(res)
    }
}

impl IntoResponseParts for BackgroundTasks {
    type Error = Infallible;

    fn into_response_parts(mut self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        add_or_attach(Origin::Response, self.take(), res.extensions_mut());
        Ok(res)
    }
}

/// The tasks of this handler's response, FastAPI style: take
/// `mut tasks: BackgroundTasks` as a parameter and `add_task` to it; the tasks
/// run after the handler's response has been sent, whatever its status.
///
/// Extracting it takes the request's place in the runner, so when the runner
/// is full the request is refused with `503` before the handler runs. A
/// handler that panics schedules nothing.
///
/// ```
/// use axum::{routing::post, Json};
/// use epilogue::BackgroundTasks;
///
/// async fn send_email(to: String, message: &'static str) { /* ... */ }
///
/// async fn register(mut tasks: BackgroundTasks, Json(email): Json<String>) -> &'static str {
///     tasks.add_task(send_email, (email, "Welcome."));
///     "Email sent"
/// }
/// # let _: axum::Router = axum::Router::new().route("/register", post(register));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for BackgroundTasks {
    type Rejection = BackgroundRejection;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let runner = with_current(|scope| {
            scope
                .admit()
                .map(|()| scope.runner().clone())
                .map_err(|refused| BackgroundRejection::Refused {
                    refused,
                    retry_after: scope.runner().retry_after(),
                })
        })
        .ok_or(BackgroundRejection::MissingLayer)??;
        let mut tasks = BackgroundTasks::new();
        tasks.sink = Some(Arc::new(ExtractedSink(runner)));
        Ok(tasks)
    }
}

/// Why the [`BackgroundTasks`] extractor refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackgroundRejection {
    /// The runner is full or shutting down: `503` with `Retry-After`.
    #[error("{refused}")]
    Refused {
        /// Why.
        refused: Refused,
        /// When to try again.
        retry_after: Duration,
    },
    /// No [`BackgroundLayer`](crate::http::BackgroundLayer) around the router: `500`. Serve the app with
    /// [`serve`], or wrap it in `BackgroundLayer::new(runner)`.
    #[error("{}", crate::http::MISSING_LAYER)]
    MissingLayer,
}

impl IntoResponse for BackgroundRejection {
    fn into_response(self) -> Response {
        match self {
            BackgroundRejection::Refused {
                refused,
                retry_after,
            } => crate::http::refused(refused, retry_after),
            BackgroundRejection::MissingLayer => crate::http::missing_layer(),
        }
    }
}

mod serve;

pub use serve::{serve, IncomingStream, Serve};
