//! Background tasks for any tower service over `http` 1 types: hyper,
//! tonic, axum, or your own.
//!
//! - [`BackgroundLayer`] is the executing layer. It goes around the
//!   application, puts each request's scope in the request's extensions, and
//!   hands each response's tasks to the [`Runner`](crate::Runner) once the
//!   response body has been handed on ([`BackgroundBody`]).
//! - [`RouteTasksLayer`] sits on a route: route-level tasks, and admission
//!   (`503` before the handler when the runner is full; JSON by default,
//!   [`GrpcRefusal`] for gRPC).
//! - [`RequestTasks`] is the request's own list, for a handler to add to;
//!   its tasks run once the handler has answered with a success.
//! - A handler returns tasks by [`attach`]ing them to its response's
//!   extensions; with axum, by returning them as a response part.
//! - [`Commit`] is how work that must be stored before the response leaves
//!   (the `epilogue-durable` crate's durable tasks) joins the layer.
//!
//! # How a task travels
//!
//! 1. `BackgroundLayer` inserts the request's scope into its extensions.
//! 2. Inside, a route layer or an extractor admits the request (takes room
//!    in the runner, or answers `503`) and adds tasks to the scope; a
//!    handler may attach tasks to its response.
//! 3. When the response reaches `BackgroundLayer` carrying tasks on a
//!    request nothing admitted, it is admitted now; if the runner is full,
//!    the client gets `503` in its place and none of its tasks run. Then
//!    what the request must
//!    commit first ([`Commit`], a durable store's tasks) is committed; if
//!    that fails, the client gets `503` and none of the request's tasks run.
//! 4. Then the scope closes: route tasks, the response's tasks and the
//!    extracted tasks become one group, carried by the body.
//! 5. When the body has been sent (or dropped), the group starts on the
//!    runner. If the response never reached the layer, nothing starts, and
//!    the tasks are counted.

/// `get_ref`, `get_mut` and `into_inner` for a service that wraps `inner: S`,
/// as tower-http's services have.
macro_rules! inner_accessors {
    ($service:ident<S $(, $param:ident)*>) => {
        impl<S $(, $param)*> $service<S $(, $param)*> {
            /// The wrapped service.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The wrapped service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// The wrapped service, unwrapped.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}

mod body;
mod commit;
mod error;
mod layer;
mod refusal;
mod route;
mod scope;

use std::sync::atomic::Ordering;

pub use body::BackgroundBody;
pub use commit::{Commit, CommitError, CommitFuture, PendingCommit};
pub use error::ScopeError;
pub use layer::{Background, BackgroundLayer, ResponseFuture};
pub use refusal::{GrpcRefusal, JsonRefusal, Refusal};
pub use route::{RouteFuture, RouteTasks, RouteTasksLayer};
pub use scope::RequestTasks;

pub(crate) use scope::Attached;
#[cfg(feature = "actix")]
pub(crate) use {
    commit::CommitHook,
    refusal::{store_unavailable_with, STORE_UNAVAILABLE},
    route::RouteCopy,
    scope::Scope,
};

/// Adds `tasks` after the tasks already attached to a response's extensions,
/// to run once the response has been sent by [`BackgroundLayer`], whatever
/// the response's status.
///
/// This is how a service that is not an axum handler returns tasks; an axum
/// handler returns them as a response part. Cloning the extensions does not
/// copy the tasks: they run once, with this response. If the response
/// reaches no `BackgroundLayer`, the tasks never run: an error is logged
/// once and they are counted in [`tasks_without_layer`].
///
/// ```
/// use epilogue::{http::attach, BackgroundTask};
///
/// let mut response = http::Response::new("created");
/// attach(response.extensions_mut(), BackgroundTask::new(|| {}, ()).name("first"));
/// attach(response.extensions_mut(), BackgroundTask::new(|| {}, ()).name("second"));
/// assert_eq!(epilogue::http::attached(response.extensions()), ["first", "second"]);
/// # epilogue::http::detach(response.extensions_mut());
/// ```
pub fn attach(extensions: &mut http::Extensions, tasks: impl Into<crate::BackgroundTasks>) {
    let tasks = tasks.into();
    match extensions.get_mut::<Attached>() {
        // Each group keeps its own mode, one after the other.
        Some(attached) => attached.0 = attached.0.take().then(tasks),
        None => {
            extensions.insert(Attached(tasks));
        }
    }
}

/// The names of the tasks [`attach`]ed to a response, in the order they run.
pub fn attached(extensions: &http::Extensions) -> Vec<String> {
    extensions
        .get::<Attached>()
        .map(|attached| attached.0.task_names())
        .unwrap_or_default()
}

/// Takes back the tasks [`attach`]ed to a response, so that they do not run
/// with it (a middleware that replaces the response, say).
pub fn detach(extensions: &mut http::Extensions) -> crate::BackgroundTasks {
    extensions
        .remove::<Attached>()
        .map(|mut attached| attached.0.take())
        .unwrap_or_default()
}

/// Admits the request whose extensions these are: takes its room in the
/// runner, once however many layers and extractors ask.
#[cfg(feature = "axum")]
pub(crate) fn admit(extensions: &http::Extensions) -> Result<(), ScopeError> {
    scope::Scope::admit_in(extensions).map(drop)
}

/// How many tasks, in this process, were attached to responses that reached
/// no [`BackgroundLayer`] and so never ran. Should stay 0: anything else
/// means an app served without the layer (with plain `axum::serve`, or a test
/// calling the router directly).
pub fn tasks_without_layer() -> u64 {
    scope::WITHOUT_LAYER.load(Ordering::Relaxed)
}
