//! Route-level tasks and admission: the layers that sit on a route, inside
//! [`BackgroundLayer`](super::BackgroundLayer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::refusal::{JsonRefusal, Refusal};
use super::scope::Scope;
use crate::tasks::BackgroundTasks;

/// Route-level background tasks: every request through this layer gets a
/// fresh copy of its tasks, run after the response, before the tasks the
/// handler adds itself. Esmerald's `@post(..., background=...)`.
///
/// Before the handler runs, the layer takes the request's place in the
/// runner: when the runner is full, the request is answered
/// `503 Service Unavailable` with `Retry-After`, and its handler never runs.
///
/// By default the tasks run only when the response is a success (status
/// below 400), as in Esmerald, where a failing handler or rejected input
/// raises and its route's tasks never run; [`always`](RouteTasksLayer::always)
/// changes that.
///
/// Needs [`BackgroundLayer`](super::BackgroundLayer) around it; without it,
/// requests are answered `500` with a message that says so. Refusals are
/// JSON by default ([`JsonRefusal`]); [`refusal`](RouteTasksLayer::refusal)
/// changes that, to [`GrpcRefusal`](super::GrpcRefusal) for a gRPC service.
#[derive(Clone, Debug)]
pub struct RouteTasksLayer<R = JsonRefusal> {
    // Shared: axum clones a route's service for every request, and the
    // template is copied only when its tasks run.
    tasks: Arc<Template>,
    always: bool,
    refusal: R,
}

/// The tasks every request of a route gets a copy of.
#[derive(Debug)]
struct Template(BackgroundTasks);

impl Drop for Template {
    // A template is never run itself, only its copies: dropping it with its
    // tasks is no mistake to warn about.
    fn drop(&mut self) {
        self.0.clear();
    }
}

impl RouteTasksLayer {
    /// Runs a copy of `tasks` after every successful response of the route.
    pub fn new(tasks: impl Into<BackgroundTasks>) -> Self {
        Self {
            tasks: Arc::new(Template(tasks.into())),
            always: false,
            refusal: JsonRefusal,
        }
    }

    /// Only admission: refuses requests with `503` before their handler runs
    /// while the runner is full, and adds no task. For tower services (tonic,
    /// say) whose responses carry tasks; an axum handler takes
    /// [`Admitted`](crate::axum::Admitted) instead.
    pub fn admission() -> Self {
        Self::new(BackgroundTasks::new())
    }
}

impl<R> RouteTasksLayer<R> {
    /// Runs the tasks whatever the response's status.
    pub fn always(mut self) -> Self {
        self.always = true;
        self
    }

    /// Answers refusals (`503`, and `500` for a missing executing layer) with
    /// `refusal` instead of JSON.
    pub fn refusal<R2>(self, refusal: R2) -> RouteTasksLayer<R2> {
        RouteTasksLayer {
            tasks: self.tasks,
            always: self.always,
            refusal,
        }
    }
}

impl<R> RouteTasksLayer<R> {
    /// This request's copy of the route's tasks, `None` if it has none.
    pub(crate) fn copy_for(&self, scope: &Scope) -> Option<RouteCopy> {
        (!self.tasks.0.is_empty()).then(|| RouteCopy {
            scope: scope.clone(),
            tasks: self.tasks.clone(),
            always: self.always,
            answered: false,
        })
    }
}

impl<S, R: Clone> Layer<S> for RouteTasksLayer<R> {
    type Service = RouteTasks<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteTasks {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RouteTasksLayer`].
#[derive(Clone, Debug)]
pub struct RouteTasks<S, R = JsonRefusal> {
    inner: S,
    layer: RouteTasksLayer<R>,
}

inner_accessors!(RouteTasks<S, R>);

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for RouteTasks<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: Refusal<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match Scope::admit_in(request.extensions()) {
            Err(error) => RouteFuture::answered(self.layer.refusal.respond(&error)),
            Ok(scope) => {
                let tasks = self.layer.copy_for(scope);
                RouteFuture::inner(self.inner.call(request), tasks)
            }
        }
    }
}

pin_project! {
    /// The response future of [`RouteTasks`].
    pub struct RouteFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        // The handler runs.
        Inner {
            #[pin]
            inner: F,
            tasks: Option<RouteCopy>,
        },
        // Answered before the handler.
        Answered {
            response: Option<Response<B>>,
        },
    }
}

/// What a request of the route adds to its scope once answered. Dropped
/// before that (the handler never answered), its tasks count as abandoned.
/// One request's copy of a route's tasks, added to its scope once the
/// handler has answered.
pub(crate) struct RouteCopy {
    scope: Scope,
    tasks: Arc<Template>,
    always: bool,
    answered: bool,
}

impl RouteCopy {
    pub(crate) fn answer(mut self, status: http::StatusCode) {
        self.answered = true;
        // Route-level tasks of a rejected request are not run, by design:
        // nothing was promised, so nothing is counted.
        if self.always || status.as_u16() < 400 {
            self.scope.add_route(BackgroundTasks::clone(&self.tasks.0));
        }
    }
}

impl Drop for RouteCopy {
    fn drop(&mut self) {
        if !self.answered {
            self.scope.runner().abandon_count(self.tasks.0.len() as u64);
        }
    }
}

impl<F, B> RouteFuture<F, B> {
    fn inner(inner: F, tasks: Option<RouteCopy>) -> Self {
        Self {
            kind: Kind::Inner { inner, tasks },
        }
    }

    fn answered(response: Response<B>) -> Self {
        let response = Some(response);
        Self {
            kind: Kind::Answered { response },
        }
    }
}

impl<F, B, E> Future for RouteFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("RouteFuture polled after completion"))),
            KindProj::Inner { inner, tasks } => {
                let response = ready!(inner.poll(cx))?;
                if let Some(copy) = tasks.take() {
                    copy.answer(response.status());
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
