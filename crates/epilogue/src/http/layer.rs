//! The executing layer: hands each response's tasks to the runner.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::BackgroundBody;
use super::commit::{Commit, CommitFuture, CommitHook, PendingCommit};
use super::error::ScopeError;
use super::scope::{Attached, Scope};
use crate::runner::Runner;

/// Wraps a service so that the background tasks of its responses run once
/// each response body has been handed to the server.
///
/// It puts the request's scope in the request's extensions, where
/// route-level layers ([`RouteTasksLayer`](super::RouteTasksLayer)) and the
/// [`RequestTasks`](super::RequestTasks) extractor find it. Once the
/// response is there, it collects, in this order, the route-level tasks,
/// the tasks the response carries in its extensions (a handler returning
/// `(BackgroundTask, Json(..))`, or [`attach`](super::attach)), and the
/// extracted tasks; it gives them to its [`Runner`] as one group, started by
/// the [`BackgroundBody`] when the body is complete or dropped. If the
/// response never comes (its future is dropped, or the service fails), the
/// request's tasks never run and are counted as
/// [`abandoned`](crate::Stats::abandoned).
///
/// # Where it goes
///
/// Around the application: outside every route-level layer and extractor
/// that needs its scope, and outside any layer that may drop a response
/// whose tasks should still run. Layers between it and the routes may run
/// the service on another task (`tower::buffer`): the scope travels with the
/// request. [`epilogue::axum::serve`](crate::axum::serve) places it around
/// the whole app for you; with `axum::serve` or another server,
/// `Router::layer(BackgroundLayer::new(runner))` is right too.
///
/// A timeout layer *outside* it that fires drops this layer's future: the
/// handler never answered, so its tasks are abandoned. A timeout layer
/// *inside* it answers `408` itself: route-level and extracted tasks then do
/// not run (the status is not a success), and a handler's own response, with
/// its tasks, was never returned.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use epilogue::http::BackgroundLayer;
/// use epilogue::{BackgroundTask, Runner};
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceBuilder};
///
/// async fn handle(_: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
///     let mut response = Response::new(Full::from("created"));
///     // Any tower service can attach tasks through the response's extensions.
///     epilogue::http::attach(
///         response.extensions_mut(),
///         BackgroundTask::new(|who: String| async move { println!("welcome, {who}") }, ("ada".to_owned(),)),
///     );
///     Ok(response)
/// }
///
/// let runner = Runner::new();
/// let service = ServiceBuilder::new()
///     .layer(BackgroundLayer::new(runner.clone()))
///     .service(service_fn(handle));
/// # let _ = service;
/// ```
#[derive(Clone, Debug)]
pub struct BackgroundLayer {
    runner: Runner,
    commit: Option<CommitHook>,
}

impl BackgroundLayer {
    /// A layer whose tasks run on `runner`.
    pub fn new(runner: Runner) -> Self {
        Self {
            runner,
            commit: None,
        }
    }

    /// Commits what each request adds to `commit` (durable tasks, with the
    /// `epilogue-durable` crate's store) once its handler has answered and
    /// before its response leaves; see [`Commit`](super::Commit).
    pub fn commit(mut self, commit: impl Commit) -> Self {
        self.commit = Some(CommitHook(Arc::new(commit)));
        self
    }
}

impl<S> Layer<S> for BackgroundLayer {
    type Service = Background<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Background {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`BackgroundLayer`].
#[derive(Clone, Debug)]
pub struct Background<S> {
    inner: S,
    layer: BackgroundLayer,
}

inner_accessors!(Background<S>);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Background<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<BackgroundBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let scope = Scope::new(self.layer.runner.clone());
        request.extensions_mut().insert(scope.clone());
        let commit = match &self.layer.commit {
            Some(hook) => {
                // Apart, to lend the headers and the extensions at once.
                let (mut parts, body) = request.into_parts();
                let begun = hook.0.begin(&parts.headers, &mut parts.extensions);
                request = Request::from_parts(parts, body);
                begun
            }
            None => None,
        };
        ResponseFuture {
            inner: self.inner.call(request),
            scope: Pending {
                scope: Some(scope),
                commit,
            },
            committing: None,
        }
    }
}

pin_project! {
    /// The response future of [`Background`].
    ///
    /// Dropped before the response is there (a timeout layer around it fired,
    /// the client went away before the answer), it abandons the request's
    /// tasks: a handler that never answered runs none of them.
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: F,
        scope: Pending,
        // The handler's response, held while its work is committed.
        committing: Option<(CommitFuture, Response<B>)>,
    }
}

/// The request's scope (and its commit) until its response is there;
/// abandoned if dropped before.
struct Pending {
    scope: Option<Scope>,
    commit: Option<Arc<dyn PendingCommit>>,
}

impl Pending {
    fn scope(&self) -> &Scope {
        self.scope
            .as_ref()
            .expect("ResponseFuture polled after completion")
    }

    fn take(&mut self) -> Scope {
        self.commit = None;
        self.scope
            .take()
            .expect("ResponseFuture polled after completion")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            scope.abandon();
            if let Some(commit) = self.commit.take() {
                commit.abandon();
            }
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<BackgroundBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some((commit, _)) = this.committing {
                let committed = ready!(commit.as_mut().poll(cx));
                let (_, response) = this.committing.take().expect("checked above");
                return Poll::Ready(Ok(match committed {
                    Ok(()) => finish(this.scope, response),
                    Err(error) => unavailable(this.scope, response, &*error),
                }));
            }
            // On an error there is no response to follow: `Pending` abandons
            // the scope, as for a handler that never answered.
            let mut response = ready!(this.inner.as_mut().poll(cx))?;
            let returns_tasks = response
                .extensions()
                .get::<Attached>()
                .is_some_and(|attached| !attached.0.is_empty());
            if let Err(error) = this.scope.scope().admit_late(returns_tasks) {
                return Poll::Ready(Ok(refused(this.scope, response, &error)));
            }
            let status = response.status();
            let commit = this
                .scope
                .commit
                .as_ref()
                .and_then(|pending| pending.commit(status, response.extensions_mut()));
            match commit {
                // Its work is committed before the response leaves.
                Some(commit) => *this.committing = Some((commit, response)),
                None => return Poll::Ready(Ok(finish(this.scope, response))),
            }
        }
    }
}

/// Hands the response's tasks to the runner, to start with its body.
fn finish<B>(pending: &mut Pending, mut response: Response<B>) -> Response<BackgroundBody<B>> {
    let scope = pending.take();
    let returned = response
        .extensions_mut()
        .remove::<Attached>()
        .map(|mut attached| attached.0.take())
        .unwrap_or_default();
    let deferred = scope.finish(response.status(), returned);
    response.map(|body| BackgroundBody::new(body, deferred))
}

/// The request was not admitted before its handler, and the runner is full
/// now that its response carries tasks: the client is told so, and none of
/// the request's tasks run.
fn refused<B>(
    pending: &mut Pending,
    mut response: Response<B>,
    error: &ScopeError,
) -> Response<BackgroundBody<B>> {
    let scope = pending.take();
    // Never accepted: the refusal is counted (`Stats::refused`), not the
    // tasks.
    if let Some(mut attached) = response.extensions_mut().remove::<Attached>() {
        attached.0.take().discard();
    }
    scope.abandon();
    super::refusal::refused_late(error)
}

/// The request's work could not be committed: the client is told so, and
/// none of the request's tasks run.
fn unavailable<B>(
    pending: &mut Pending,
    mut response: Response<B>,
    error: &(dyn std::error::Error + Send + Sync),
) -> Response<BackgroundBody<B>> {
    let scope = pending.take();
    tracing::error!(%error, "the request's work could not be committed; answering 503 in place of the handler's response");
    if let Some(mut attached) = response.extensions_mut().remove::<Attached>() {
        scope.runner().abandon(attached.0.take());
    }
    scope.abandon();
    super::refusal::store_unavailable()
}
