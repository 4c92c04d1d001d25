//! Route-level tasks and admission: the middleware on a resource or scope.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{Error, ResponseError};
use pin_project_lite::pin_project;

use super::convert::status;
use super::extract::admit;
use crate::http::{RouteCopy, RouteTasksLayer};
use crate::tasks::BackgroundTasks;

/// Route-level tasks (Esmerald's `background=` on a route): a fresh copy of
/// `tasks` runs after each request of the resource or scope this wraps,
/// once its handler answered with a success. It admits the request first:
/// `503` before the handler while the runner is full.
///
/// ```
/// # async fn send_email_notification(to: Option<String>, message: &'static str) {}
/// use actix_web::{web, App, HttpResponse};
/// use epilogue::{actix::{background, Background}, BackgroundTask, Runner};
///
/// async fn create_user() -> HttpResponse {
///     HttpResponse::Created().json("Created")
/// }
///
/// let app = App::new()
///     .service(
///         web::resource("/register")
///             .wrap(background(BackgroundTask::new(
///                 send_email_notification,
///                 (None, "Account created"),
///             )))
///             .route(web::post().to(create_user)),
///     )
///     .wrap(Background::new(Runner::new()));
/// ```
pub fn background(tasks: impl Into<BackgroundTasks>) -> RouteTasks {
    RouteTasks {
        layer: RouteTasksLayer::new(tasks),
    }
}

/// The route-level middleware [`background`] makes.
#[derive(Clone, Debug)]
pub struct RouteTasks {
    layer: RouteTasksLayer,
}

impl RouteTasks {
    /// Admission only: `503` before the handler while the runner is full,
    /// for a resource whose handlers return tasks.
    pub fn admission() -> Self {
        Self {
            layer: RouteTasksLayer::admission(),
        }
    }

    /// Runs the tasks whatever the status, as long as the handler answered.
    pub fn always(self) -> Self {
        Self {
            layer: self.layer.always(),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RouteTasks
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = RouteTasksMiddleware<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RouteTasksMiddleware {
            service,
            layer: self.layer.clone(),
        }))
    }
}

/// The service [`RouteTasks`] wraps a resource in.
#[derive(Debug)]
pub struct RouteTasksMiddleware<S> {
    service: S,
    layer: RouteTasksLayer,
}

impl<S, B> Service<ServiceRequest> for RouteTasksMiddleware<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = RouteFuture<S::Future>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        match admit(&request) {
            Err(error) => RouteFuture {
                kind: Kind::Answered {
                    response: Some(request.into_response(error.error_response())),
                },
            },
            Ok(scope) => RouteFuture {
                kind: Kind::Inner {
                    tasks: self.layer.copy_for(&scope),
                    inner: self.service.call(request),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`RouteTasksMiddleware`].
    pub struct RouteFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // The handler runs.
        Inner {
            #[pin]
            inner: F,
            tasks: Option<RouteCopy>,
        },
        // Refused before the handler.
        Answered {
            response: Option<ServiceResponse>,
        },
    }
}

impl<F, B> Future for RouteFuture<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = Result<ServiceResponse<EitherBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("RouteFuture polled after completion")
                .map_into_right_body())),
            KindProj::Inner { inner, tasks } => {
                let response = ready!(inner.poll(cx))?;
                if let Some(copy) = tasks.take() {
                    copy.answer(status(response.status()));
                }
                Poll::Ready(Ok(response.map_into_left_body()))
            }
        }
    }
}
