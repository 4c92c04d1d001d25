//! The executing middleware: hands each response's tasks to the runner.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{Error, HttpMessage, ResponseError};
use pin_project_lite::pin_project;

use super::body::TasksBody;
use super::respond::detach;
use super::status;
use crate::http::Scope;
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
/// let runner = Runner::new();
/// let app = App::new()
///     .route("/healthz", web::get().to(|| async { "ok" }))
///     .wrap(Background::new(runner.clone()));
/// ```
#[derive(Clone, Debug)]
pub struct Background {
    runner: Runner,
}

impl Background {
    /// The middleware, handing tasks to `runner`.
    pub fn new(runner: Runner) -> Self {
        Self { runner }
    }
}

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
        ready(Ok(BackgroundMiddleware {
            service,
            runner: self.runner.clone(),
        }))
    }
}

/// The service [`Background`] wraps an app in.
#[derive(Debug)]
pub struct BackgroundMiddleware<S> {
    service: S,
    runner: Runner,
}

impl<S, B> Service<ServiceRequest> for BackgroundMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<TasksBody<B>>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let scope = Scope::new(self.runner.clone());
        request.extensions_mut().insert(scope.clone());
        ResponseFuture {
            inner: self.service.call(request),
            scope: Open(Some(scope)),
        }
    }
}

pin_project! {
    /// The response future of [`BackgroundMiddleware`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        scope: Open,
    }
}

/// The request's scope until its response comes; dropped before that (the
/// handler failed, or was cancelled), its tasks never run and are counted.
struct Open(Option<Scope>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(scope) = self.0.take() {
            scope.abandon();
        }
    }
}

impl<F, B> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
    B: MessageBody,
{
    type Output = Result<ServiceResponse<EitherBody<TasksBody<B>>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        let scope = this
            .scope
            .0
            .take()
            .expect("ResponseFuture polled after completion");
        let returned = detach(response.response_mut());
        // Admitted now if nothing admitted it before its handler ran: the
        // runner's bounds hold on every route.
        if let Err(error) = scope.admit_late(!returned.is_empty()) {
            // Never accepted: the refusal is counted, not the tasks.
            returned.discard();
            scope.abandon();
            let (request, _) = response.into_parts();
            let refusal = ServiceResponse::new(request, error.error_response());
            return Poll::Ready(Ok(refusal.map_into_right_body()));
        }
        let deferred = scope.finish(status(response.status()), returned);
        Poll::Ready(Ok(response
            .map_body(|_, body| TasksBody::new(body, deferred))
            .map_into_left_body()))
    }
}
