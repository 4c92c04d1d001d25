//! Background tasks for any tower service over `http` 1 types: hyper,
//! tonic, axum, or your own.
//!
//! - [`BackgroundLayer`] is the executing layer. It goes around the whole
//!   application and hands each response's tasks to the [`Runner`](crate::Runner)
//!   once the response body has been handed on ([`BackgroundBody`]).
//! - [`RouteTasksLayer`] sits on a route: route-level tasks, and admission
//!   (`503` before the handler when the runner is full).
//! - A handler attaches its own tasks by putting a
//!   [`BackgroundTasks`](crate::BackgroundTasks) in its response's
//!   extensions; with axum, by returning it as a response part.

mod body;
mod layer;
mod refusal;
mod route;
mod scope;

pub use body::BackgroundBody;
pub use layer::{Background, BackgroundLayer, ResponseFuture};
pub use route::{RouteFuture, RouteTasks, RouteTasksLayer};

pub(crate) use refusal::{missing_layer, refused, MISSING_LAYER};
pub(crate) use scope::{add_or_attach, with_current, ExtractedSink, Origin};

/// Adds `tasks` after the tasks already attached to a response's extensions.
///
/// This is how a handler that is not an axum handler attaches its own tasks;
/// [`BackgroundLayer`] runs them once the response has been sent.
///
/// ```
/// use epilogue::{http::attach, BackgroundTask};
///
/// let mut response = http::Response::new("created");
/// attach(response.extensions_mut(), BackgroundTask::new(|| {}, ()).name("first"));
/// attach(response.extensions_mut(), BackgroundTask::new(|| {}, ()).name("second"));
/// let tasks = response.extensions().get::<epilogue::BackgroundTasks>().unwrap();
/// assert_eq!(tasks.task_names(), ["first", "second"]);
/// ```
pub fn attach(extensions: &mut http::Extensions, tasks: impl Into<crate::BackgroundTasks>) {
    let mut tasks = tasks.into();
    match extensions.get_mut::<crate::BackgroundTasks>() {
        Some(attached) => {
            attached.merge(tasks.take());
        }
        None => {
            extensions.insert(tasks.take());
        }
    }
}
