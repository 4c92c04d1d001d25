//! Route-level layers: tasks for every request of a route.

use crate::http::RouteTasksLayer;
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
