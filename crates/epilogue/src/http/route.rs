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

use super::refusal;
use super::scope::{self, Origin};
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
/// requests are answered `500` with a message that says so.
#[derive(Clone, Debug)]
pub struct RouteTasksLayer {
    // Shared: axum clones a route's service for every request, and the
    // template is copied only when its tasks run.
    tasks: Arc<BackgroundTasks>,
    always: bool,
}

impl RouteTasksLayer {
    /// Runs a copy of `tasks` after every successful response of the route.
    pub fn new(tasks: impl Into<BackgroundTasks>) -> Self {
        Self {
            tasks: Arc::new(tasks.into()),
            always: false,
        }
    }

    /// Only admission: refuses requests with `503` before their handler runs
    /// while the runner is full, and adds no task. For routes whose handlers
    /// return tasks in their response.
    pub fn admission() -> Self {
        Self::new(BackgroundTasks::new())
    }

    /// Runs the tasks whatever the response's status.
    pub fn always(mut self) -> Self {
        self.always = true;
        self
    }
}

impl<S> Layer<S> for RouteTasksLayer {
    type Service = RouteTasks<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteTasks {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`RouteTasksLayer`].
#[derive(Clone, Debug)]
pub struct RouteTasks<S> {
    inner: S,
    layer: RouteTasksLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RouteTasks<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = RouteFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let admitted = scope::with_current(|scope| {
            scope
                .admit()
                .map_err(|refused| refusal::refused(refused, scope.runner().retry_after()))
        });
        match admitted {
            None => RouteFuture::answered(refusal::missing_layer()),
            Some(Err(refusal)) => RouteFuture::answered(refusal),
            Some(Ok(())) => RouteFuture::inner(self.inner.call(request), self.layer.clone()),
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
            tasks: Option<RouteTasksLayer>,
        },
        // Answered before the handler.
        Answered {
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> RouteFuture<F, B> {
    fn inner(inner: F, tasks: RouteTasksLayer) -> Self {
        let tasks = Some(tasks);
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
                let mut response = ready!(inner.poll(cx))?;
                let layer = tasks.take().expect("RouteFuture polled after completion");
                let runs = layer.always || response.status().as_u16() < 400;
                if runs && !layer.tasks.is_empty() {
                    let group = BackgroundTasks::clone(&layer.tasks);
                    scope::add_or_attach(Origin::Route, group, response.extensions_mut());
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
