//! The executing layer: hands each response's tasks to the runner.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::BackgroundBody;
use super::scope::{self, Origin, Scope};
use crate::runner::Runner;
use crate::tasks::BackgroundTasks;

/// Wraps a service so that the background tasks of its responses run once
/// each response body has been handed to the server.
///
/// It collects, in this order, the tasks of route-level layers
/// ([`RouteTasksLayer`](super::RouteTasksLayer)), the tasks the response
/// carries in its extensions (a handler returning
/// `(BackgroundTask, Json(..))`), and the tasks added through the extractor;
/// it gives them to its [`Runner`] as one group, started by the
/// [`BackgroundBody`] when the body is complete or dropped.
///
/// Put it **outside** everything else: around the whole application, outside
/// `axum::Router` (whose HEAD handling drops bodies inside it) and outside
/// route-level layers, which need it to admit requests.
/// [`epilogue::axum::serve`](crate::axum::serve) places it for you.
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
}

impl BackgroundLayer {
    /// A layer whose tasks run on `runner`.
    pub fn new(runner: Runner) -> Self {
        Self { runner }
    }
}

impl<S> Layer<S> for BackgroundLayer {
    type Service = Background<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Background {
            inner,
            runner: self.runner.clone(),
        }
    }
}

/// The service of [`BackgroundLayer`].
#[derive(Clone, Debug)]
pub struct Background<S> {
    inner: S,
    runner: Runner,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Background<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<BackgroundBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let scope = RefCell::new(Scope::new(self.runner.clone()));
        // Lent for the call too: a service may run its route layers here.
        let inner = scope::lend(&scope, || self.inner.call(request));
        ResponseFuture { inner, scope }
    }
}

pin_project! {
    /// The response future of [`Background`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        scope: RefCell<Scope>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<BackgroundBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        // On an error there is no response to follow: the scope's place and
        // tasks are dropped with it, as for a handler that panicked.
        let mut response = ready!(scope::lend(this.scope, || inner.poll(cx)))?;
        let scope = this.scope.get_mut();
        // Tasks attached where the scope was not lent (a service that polls
        // its inner service on another task) travel in the extensions.
        if let Some(tasks) = response.extensions_mut().remove::<BackgroundTasks>() {
            scope.add(Origin::Response, tasks);
        }
        let deferred = scope.take_deferred();
        Poll::Ready(Ok(response.map(|body| BackgroundBody::new(body, deferred))))
    }
}
