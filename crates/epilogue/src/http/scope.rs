//! One request's background work, between the executing layer and what
//! runs inside it: its room in the runner, and the tasks gathered for it.
//!
//! [`BackgroundLayer`](super::BackgroundLayer) puts a [`Scope`] in each
//! request's extensions, as tower-http's `request_id` does with its id, and
//! keeps a handle to it in its response future. Route layers, the
//! [`RequestTasks`] extractor and anything else inside find it there: on any
//! thread, behind any layer that moves the call to another task
//! (`tower::buffer`, a layer that spawns). Tasks a handler returns travel
//! in the response's extensions ([`attach`](super::attach)). When the
//! response comes back, the executing layer gathers everything in one
//! place, in order: route-level tasks, the response's own, then the
//! extracted ones.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Extensions, StatusCode};
use tracing::Span;

use super::error::ScopeError;
use crate::runner::{Deferred, Permit, Refused, Runner};
use crate::task::{BackgroundTask, TaskFn};
use crate::tasks::BackgroundTasks;

/// A request's scope, shared by the executing layer and the request's
/// extensions.
#[derive(Clone)]
pub(crate) struct Scope(Arc<Shared>);

struct Shared {
    runner: Runner,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    permit: Option<Permit>,
    /// The span current where the request was admitted or first given a
    /// task: inside the service's own tracing layers, so that tasks follow
    /// from the request's span.
    span: Option<Span>,
    route: BackgroundTasks,
    extracted: BackgroundTasks,
    /// The extracted tasks run whatever the status.
    always: bool,
    /// The response was produced (or will never be): nothing more is added.
    closed: bool,
}

impl Scope {
    pub(crate) fn new(runner: Runner) -> Self {
        Self(Arc::new(Shared {
            runner,
            state: Mutex::new(State::default()),
        }))
    }

    /// The scope the executing layer put in these extensions.
    pub(crate) fn of(extensions: &Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }

    /// The scope in these extensions, admitted.
    pub(crate) fn admit_in(extensions: &Extensions) -> Result<&Self, ScopeError> {
        let scope = Self::of(extensions).ok_or(ScopeError::MissingLayer)?;
        scope.admit_or_refuse()?;
        Ok(scope)
    }

    /// [`admit`](Self::admit), with the refusal an HTTP answer is made of.
    pub(crate) fn admit_or_refuse(&self) -> Result<(), ScopeError> {
        self.admit().map_err(|refused| ScopeError::Refused {
            refused,
            retry_after: self.runner().retry_after(),
        })
    }

    pub(crate) fn runner(&self) -> &Runner {
        &self.0.runner
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes this request's room in the runner, once however many route
    /// layers and extractors ask.
    pub(crate) fn admit(&self) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.permit.is_none() {
            state.permit = Some(self.0.runner.admit()?);
            remember_span(&mut state);
        }
        Ok(())
    }

    /// Admits the request now, if its response carries tasks and nothing
    /// admitted it before its handler ran (a route without `Admitted`): the
    /// runner's bounds hold on every route. Counted in
    /// [`Stats::unadmitted`](crate::Stats::unadmitted).
    ///
    /// # Errors
    ///
    /// [`ScopeError::Refused`] when the runner is full or shutting down: the
    /// caller answers `503` in place of the handler's response.
    pub(crate) fn admit_late(&self, returns_tasks: bool) -> Result<(), ScopeError> {
        let mut state = self.lock();
        let carries_tasks = returns_tasks || !state.route.is_empty() || !state.extracted.is_empty();
        if state.permit.is_some() || !carries_tasks {
            return Ok(());
        }
        self.0.runner.count_unadmitted();
        match self.0.runner.admit() {
            Ok(permit) => {
                state.permit = Some(permit);
                Ok(())
            }
            Err(refused) => Err(ScopeError::Refused {
                refused,
                retry_after: self.0.runner.retry_after(),
            }),
        }
    }

    /// Route-level tasks, added as the response passes the route layer on
    /// its way out: an outer layer's come first.
    pub(crate) fn add_route(&self, tasks: BackgroundTasks) {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            self.0.runner.abandon(tasks);
            return;
        }
        let inner = state.route.take();
        state.route = tasks.then(inner);
    }

    fn add_extracted(&self, tasks: BackgroundTasks) {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            tracing::error!(
                tasks = ?tasks.task_names(),
                "background tasks added to a request that has already been answered; they never run"
            );
            self.0.runner.abandon(tasks);
            return;
        }
        remember_span(&mut state);
        state.extracted.merge(tasks);
    }

    /// Called once the response is there: accepts its tasks in order, in
    /// the request's room. The extracted ones run only after a success
    /// (status below 400) unless the handler asked for `always`.
    pub(crate) fn finish(&self, status: StatusCode, response: BackgroundTasks) -> Option<Deferred> {
        let mut state = self.lock();
        state.closed = true;
        // A sequence of the three, each group in its own mode (a concurrent
        // route group does not make the response's tasks concurrent too).
        let mut tasks = state.route.take().then(response);
        let extracted = state.extracted.take();
        if state.always || status.as_u16() < 400 {
            tasks = tasks.then(extracted);
        } else {
            self.0.runner.abandon(extracted);
        }
        let permit = state.permit.take();
        let span = state.span.take().unwrap_or_else(Span::none);
        drop(state);
        if tasks.is_empty() {
            return None;
        }
        // `admit_late` gave every response with tasks its permit.
        let Some(permit) = permit else {
            debug_assert!(false, "a response with tasks was not admitted");
            self.0.runner.abandon(tasks);
            return None;
        };
        Some(permit.defer_in(tasks, &span))
    }

    /// Called when no response will come (the response future was dropped,
    /// or the service failed): the tasks added so far never run.
    pub(crate) fn abandon(&self) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        let extracted = state.extracted.take();
        let route = state.route.take();
        state.permit = None;
        drop(state);
        self.0.runner.abandon(extracted);
        self.0.runner.abandon(route);
    }
}

/// Keeps the span current where the request was first admitted or given a
/// task: the request's own span (tower-http's `TraceLayer`, say), inside
/// the executing layer. The group runs in it, so that its tasks' log lines
/// carry the request's method, path and id.
fn remember_span(state: &mut State) {
    if state.span.is_none() {
        state.span = Some(Span::current());
    }
}

/// The background tasks of the request being handled, FastAPI's
/// `background_tasks: BackgroundTasks` parameter: add tasks to it, and they
/// run once the handler's response has been sent.
///
/// It is a handle to the request's scope, which the executing
/// [`BackgroundLayer`](super::BackgroundLayer) keeps: tasks added to it are
/// not run by the handle, nor when it is dropped, but by that layer, once
/// the handler has answered.
///
/// - The tasks run only if the handler **answered with a success** (status
///   below 400), like route-level tasks; [`always`](RequestTasks::always)
///   makes them run whatever the status. A handler that returned an error
///   with `?`, panicked, or was cancelled (a timeout layer, a server that
///   drops a request whose client left) runs none of them; they are counted
///   in [`Stats::abandoned`](crate::Stats::abandoned).
/// - Taking it admits the request: when the runner is full, the request is
///   refused with `503` before the handler runs.
/// - Clones share the same tasks. A task added after the response was
///   produced (from a task the handler spawned, say) never runs: it is
///   logged as an error and counted as abandoned.
///
/// With axum, take it as a handler parameter (see [`crate::axum`]); with
/// another framework, get it with [`from_extensions`](RequestTasks::from_extensions).
#[derive(Clone)]
pub struct RequestTasks {
    scope: Scope,
}

impl RequestTasks {
    /// The request's tasks, admitting the request: from the request's
    /// extensions, where [`BackgroundLayer`](super::BackgroundLayer) put
    /// its scope.
    ///
    /// # Errors
    ///
    /// [`ScopeError::MissingLayer`] without the executing layer around the
    /// service; [`ScopeError::Refused`] when the runner is full or shutting
    /// down.
    pub fn from_extensions(extensions: &Extensions) -> Result<Self, ScopeError> {
        let scope = Scope::admit_in(extensions)?.clone();
        Ok(Self { scope })
    }

    /// The tasks of an admitted scope.
    #[cfg(feature = "actix")]
    pub(crate) fn of_admitted(scope: Scope) -> Self {
        Self { scope }
    }

    /// Adds `function(args...)` after the tasks added so far, like
    /// [`BackgroundTasks::add_task`].
    pub fn add_task<F, Args, Kind>(&self, function: F, args: Args) -> &Self
    where
        F: TaskFn<Args, Kind>,
        Args: Clone + Send + Sync + 'static,
        Kind: 'static,
    {
        self.push(BackgroundTask::new(function, args))
    }

    /// Adds an already built task, or a whole group, after the tasks added
    /// so far.
    pub fn push(&self, tasks: impl Into<BackgroundTasks>) -> &Self {
        self.scope.add_extracted(tasks.into());
        self
    }

    /// Runs this request's extracted tasks whatever the response's status,
    /// as long as the handler answered.
    pub fn always(&self) -> &Self {
        self.scope.lock().always = true;
        self
    }

    /// The names of the tasks added so far, in the order they run.
    pub fn task_names(&self) -> Vec<String> {
        self.scope.lock().extracted.task_names()
    }

    /// How many tasks were added so far.
    pub fn len(&self) -> usize {
        self.scope.lock().extracted.len()
    }

    /// Whether no task was added so far.
    pub fn is_empty(&self) -> bool {
        self.scope.lock().extracted.is_empty()
    }
}

impl fmt::Debug for RequestTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.scope.lock();
        f.debug_struct("RequestTasks")
            .field("tasks", &state.extracted.task_names())
            .field("always", &state.always)
            .finish()
    }
}

/// Tasks on their way out with a response, in its extensions.
///
/// Cloning the response's extensions does not copy them: they run once, with
/// the response they were attached to. If that response reaches no
/// executing layer, they are logged as an error when it is dropped, and
/// counted in [`tasks_without_layer`](super::tasks_without_layer).
pub(crate) struct Attached(pub(crate) BackgroundTasks);

impl Clone for Attached {
    fn clone(&self) -> Self {
        Self(BackgroundTasks::new())
    }
}

/// Tasks dropped with a response that reached no executing layer, in this
/// process.
pub(crate) static WITHOUT_LAYER: AtomicU64 = AtomicU64::new(0);

impl Drop for Attached {
    // Only a report: the tasks are lost already, and saying so is all that
    // is left to do.
    fn drop(&mut self) {
        let tasks = self.0.take();
        if tasks.is_empty() || std::thread::panicking() {
            return;
        }
        WITHOUT_LAYER.fetch_add(tasks.len() as u64, Ordering::Relaxed);
        static LOGGED: AtomicBool = AtomicBool::new(false);
        if !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::error!(
                tasks = ?tasks.task_names(),
                "a response carried background tasks but reached no BackgroundLayer, so they \
                 never run: serve the app with epilogue::axum::serve or wrap it in \
                 epilogue::http::BackgroundLayer (logged once; see \
                 epilogue::http::tasks_without_layer())"
            );
        }
        tasks.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &'static str) -> BackgroundTasks {
        BackgroundTask::new(|| {}, ()).name(name).into()
    }

    #[tokio::test]
    async fn tasks_come_out_route_first_then_response_then_extracted() {
        let runner = Runner::new();
        let scope = Scope::new(runner.clone());
        let mut extensions = Extensions::new();
        extensions.insert(scope.clone());
        let tasks = RequestTasks::from_extensions(&extensions).unwrap();
        tasks.push(named("extracted"));
        scope.add_route(named("inner route"));
        scope.add_route(named("outer route"));
        let deferred = scope.finish(StatusCode::OK, named("response")).unwrap();
        assert_eq!(
            format!("{deferred:?}"),
            r#"Deferred { tasks: Some(["outer route", "inner route", "response", "extracted"]) }"#
        );
        deferred.start();
        assert!(
            runner
                .shutdown(std::time::Duration::from_secs(5))
                .await
                .drained
        );
        assert_eq!(runner.stats().succeeded, 4);
    }

    #[tokio::test]
    async fn extracted_tasks_follow_the_status_unless_always() {
        let runner = Runner::new();
        let failed = Scope::new(runner.clone());
        failed.add_extracted(named("not sent"));
        assert!(failed
            .finish(StatusCode::CONFLICT, BackgroundTasks::new())
            .is_none());
        assert_eq!(runner.stats().abandoned, 1);

        let always = Scope::new(runner.clone());
        // As `RequestTasks` does.
        always.admit().unwrap();
        always.add_extracted(named("sent"));
        always.lock().always = true;
        assert!(always
            .finish(StatusCode::CONFLICT, BackgroundTasks::new())
            .is_some());
    }

    #[tokio::test]
    async fn an_abandoned_scope_runs_nothing_and_counts_it() {
        let runner = Runner::new();
        let scope = Scope::new(runner.clone());
        scope.admit().unwrap();
        scope.add_extracted(named("a"));
        scope.add_extracted(named("b"));
        scope.abandon();
        // Too late: the request is over.
        scope.add_extracted(named("late"));
        let stats = runner.stats();
        assert_eq!((stats.accepted, stats.abandoned), (3, 3));
        assert!(runner.admit().is_ok(), "the request's room was given back");
    }
}
