//! The executing layer: hands each response's tasks to the runner.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::BackgroundBody;
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

impl<S> Background<S> {
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

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let scope = Scope::new(self.runner.clone());
        request.extensions_mut().insert(scope.clone());
        ResponseFuture {
            inner: self.inner.call(request),
            scope: Pending(Some(scope)),
        }
    }
}

pin_project! {
    /// The response future of [`Background`].
    ///
    /// Dropped before the response is there (a timeout layer around it fired,
    /// the client went away before the answer), it abandons the request's
    /// tasks: a handler that never answered runs none of them.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        scope: Pending,
    }
}

/// The request's scope until its response is there; abandoned if dropped
/// before.
struct Pending(Option<Scope>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(scope) = self.0.take() {
            scope.abandon();
        }
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<BackgroundBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // On an error there is no response to follow: `Pending` abandons the
        // scope, as for a handler that never answered.
        let mut response = ready!(this.inner.poll(cx))?;
        let scope = this
            .scope
            .0
            .take()
            .expect("ResponseFuture polled after completion");
        let returned = response
            .extensions_mut()
            .remove::<Attached>()
            .map(|mut attached| attached.0.take())
            .unwrap_or_default();
        let deferred = scope.finish(response.status(), returned);
        Poll::Ready(Ok(response.map(|body| BackgroundBody::new(body, deferred))))
    }
}
