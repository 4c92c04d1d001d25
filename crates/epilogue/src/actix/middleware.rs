//! The executing middleware: hands each response's tasks to the runner.

use std::cell::Ref;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{ready, Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{Error, HttpMessage, HttpRequest, ResponseError};
use pin_project_lite::pin_project;

use super::body::TasksBody;
use super::convert::{status, to_actix};
use super::respond::detach;
use crate::http::{
    store_unavailable_with, Commit, CommitFuture, CommitHook, PendingCommit, Scope,
    STORE_UNAVAILABLE,
};
use crate::runner::Runner;

/// The executing middleware, for `App::wrap`: puts each request's scope in
/// its extensions, and hands the tasks gathered for it to the
/// [`Runner`] once its response body has been handed to the server (or
/// dropped). The actix-web twin of
/// [`http::BackgroundLayer`](crate::http::BackgroundLayer), with the same
/// rules: route-level and extracted tasks run after a success, returned
/// ones whatever the status; a handler that never answered runs none.
///
/// Wrap it last, or at least outside every [`background`](super::background)
/// route middleware and every handler that takes [`Admitted`](super::Admitted)
/// or [`RequestTasks`](crate::http::RequestTasks).
///
/// ```
/// use actix_web::{web, App};
/// use epilogue::{actix::Background, Runner};
///
/// // The background work's own runtime, apart from actix's workers
/// // (with `#[tokio::main]`: `Handle::current()`).
/// let background = tokio::runtime::Runtime::new().unwrap();
/// let runner = Runner::builder().runtime(background.handle().clone()).build();
/// let app = App::new()
///     .route("/healthz", web::get().to(|| async { "ok" }))
///     .wrap(Background::new(runner.clone()));
/// ```
#[derive(Clone, Debug)]
pub struct Background {
    runner: Runner,
    commit: Option<CommitHook>,
}

impl Background {
    /// The middleware, handing tasks to `runner`.
    pub fn new(runner: Runner) -> Self {
        Self {
            runner,
            commit: None,
        }
    }

    /// Commits what each request adds to `commit` (durable tasks, with the
    /// `epilogue-durable` crate's `Store`) before its response leaves, as
    /// [`BackgroundLayer::commit`](crate::http::BackgroundLayer::commit)
    /// does; if that fails, the client gets `503` with `Retry-After` in
    /// place of the handler's response, and none of the request's tasks
    /// run. The handle a handler adds to is found with
    /// [`commit_extensions`].
    pub fn commit(mut self, commit: impl Commit) -> Self {
        self.commit = Some(CommitHook(Arc::new(commit)));
        self
    }
}

/// The extensions [`Background::commit`]'s hook put its request's handle
/// in (an `http` 1 `Extensions`: the hook is framework-neutral), for an
/// extractor to find it: how `epilogue-durable`'s `RequestDurable` is
/// extracted on actix-web. `None` without a commit hook.
pub fn commit_extensions(request: &HttpRequest) -> Option<Ref<'_, http::Extensions>> {
    Ref::filter_map(request.extensions(), |extensions| {
        extensions
            .get::<Committing>()
            .map(|committing| &committing.0)
    })
    .ok()
}

/// What the commit hook put in a request, in its actix-web extensions.
struct Committing(http::Extensions);

impl<S, B> Transform<S, ServiceRequest> for Background
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<TasksBody<B>>>;
    type Error = Error;
    type Transform = BackgroundMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        if !self.runner.has_runtime() {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "the runner has no runtime of its own (`Runner::builder().runtime(..)`): background tasks run on actix-web's worker threads, stall their requests when they block, and are cut off when the workers stop"
                );
            });
        }
        ready(Ok(BackgroundMiddleware {
            service,
            runner: self.runner.clone(),
            commit: self.commit.clone(),
        }))
    }
}

/// The service [`Background`] wraps an app in.
#[derive(Debug)]
pub struct BackgroundMiddleware<S> {
    service: S,
    runner: Runner,
    commit: Option<CommitHook>,
}

impl<S, B> Service<ServiceRequest> for BackgroundMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<TasksBody<B>>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, B>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let scope = Scope::new(self.runner.clone());
        let commit = self.commit.as_ref().and_then(|hook| begin(hook, &request));
        request.extensions_mut().insert(scope.clone());
        ResponseFuture {
            inner: self.service.call(request),
            scope: Open {
                scope: Some(scope),
                commit,
            },
            committing: None,
        }
    }
}

/// Begins the request's commit, with the `http` 1 headers the hook reads.
fn begin(hook: &CommitHook, request: &ServiceRequest) -> Option<Arc<dyn PendingCommit>> {
    let headers = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let name = http::HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(value.as_bytes()).ok()?;
            Some((name, value))
        })
        .collect();
    let mut extensions = http::Extensions::new();
    let pending = hook.0.begin(&headers, &mut extensions);
    request.extensions_mut().insert(Committing(extensions));
    pending
}

pin_project! {
    /// The response future of [`BackgroundMiddleware`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: F,
        scope: Open,
        // The handler's response, held while its work is committed.
        committing: Option<(CommitFuture, ServiceResponse<B>)>,
    }
}

/// The request's scope (and its commit) until its response comes; dropped
/// before that (the handler failed, or was cancelled), its tasks never run
/// and are counted, and nothing of it is committed.
struct Open {
    scope: Option<Scope>,
    commit: Option<Arc<dyn PendingCommit>>,
}

impl Open {
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

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(scope) = self.scope.take() {
            scope.abandon();
            if let Some(commit) = self.commit.take() {
                commit.abandon();
            }
        }
    }
}

type Output<B> = Result<ServiceResponse<EitherBody<TasksBody<B>>>, Error>;

impl<F, B> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Output<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some((commit, _)) = this.committing {
                let committed = ready!(commit.as_mut().poll(cx));
                let (_, response) = this.committing.take().expect("checked above");
                return Poll::Ready(match committed {
                    Ok(()) => finish(this.scope, response),
                    Err(error) => unavailable(this.scope, response, &*error),
                });
            }
            let mut response = ready!(this.inner.as_mut().poll(cx))?;
            let returns_tasks = super::respond::has_tasks(response.response());
            // Admitted now if nothing admitted it before its handler ran: the
            // runner's bounds hold on every route.
            if let Err(error) = this.scope.scope().admit_late(returns_tasks) {
                // Never accepted: the refusal is counted, not the tasks.
                detach(response.response_mut()).discard();
                this.scope.take().abandon();
                let (request, _) = response.into_parts();
                let refusal = ServiceResponse::new(request, error.error_response());
                return Poll::Ready(Ok(refusal.map_into_right_body()));
            }
            let status = status(response.status());
            // Durable work added by the handler, committed before the
            // response leaves; a response the handler returned carries none
            // on actix-web.
            let commit = this
                .scope
                .commit
                .as_ref()
                .and_then(|pending| pending.commit(status, &mut http::Extensions::new()));
            match commit {
                Some(commit) => *this.committing = Some((commit, response)),
                None => return Poll::Ready(finish(this.scope, response)),
            }
        }
    }
}

/// Hands the response's tasks to the runner, to start with its body.
fn finish<B: MessageBody>(open: &mut Open, mut response: ServiceResponse<B>) -> Output<B> {
    let scope = open.take();
    let returned = detach(response.response_mut());
    let deferred = scope.finish(status(response.status()), returned);
    Ok(response
        .map_body(|_, body| TasksBody::new(body, deferred))
        .map_into_left_body())
}

/// The request's work could not be committed: the client is told so, and
/// none of the request's tasks run.
fn unavailable<B: MessageBody>(
    open: &mut Open,
    mut response: ServiceResponse<B>,
    error: &(dyn std::error::Error + Send + Sync),
) -> Output<B> {
    let scope = open.take();
    tracing::error!(%error, "the request's work could not be committed; answering 503 in place of the handler's response");
    scope.runner().abandon(detach(response.response_mut()));
    scope.abandon();
    let (request, _) = response.into_parts();
    let answer = to_actix(store_unavailable_with(STORE_UNAVAILABLE.to_owned()));
    Ok(ServiceResponse::new(request, answer).map_into_right_body())
}
