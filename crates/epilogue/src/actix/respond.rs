//! Tasks returned with a response: Esmerald's `Response(..., background=...)`.

use actix_web::{HttpRequest, HttpResponse, Responder};

use crate::http::Attached;
use crate::tasks::BackgroundTasks;

/// A responder with background tasks: they run once its response has been
/// sent, whatever its status, like tasks returned with a response on axum.
/// Made by [`with_tasks`].
#[must_use = "a responder does nothing unless returned from a handler"]
pub struct WithTasks<R> {
    responder: R,
    tasks: BackgroundTasks,
}

/// `responder`, with `tasks` to run once its response has been sent
/// (Esmerald's `background=` on a response).
///
/// ```
/// # async fn send_email_notification(to: Option<String>, message: &'static str) {}
/// use actix_web::{web, HttpResponse, Responder};
/// use epilogue::{actix::{with_tasks, Admitted}, BackgroundTask};
///
/// async fn register(_: Admitted, email: web::Json<String>) -> impl Responder {
///     let task = BackgroundTask::new(
///         send_email_notification,
///         (Some(email.into_inner()), "Thank you for registering."),
///     );
///     with_tasks(HttpResponse::Created().json("Email sent"), task)
/// }
/// ```
pub fn with_tasks<R: Responder>(responder: R, tasks: impl Into<BackgroundTasks>) -> WithTasks<R> {
    WithTasks {
        responder,
        tasks: tasks.into(),
    }
}

impl<R: Responder> Responder for WithTasks<R> {
    type Body = R::Body;

    fn respond_to(self, request: &HttpRequest) -> HttpResponse<Self::Body> {
        let mut response = self.responder.respond_to(request);
        attach(&mut response, self.tasks);
        response
    }
}

/// Adds `tasks` after those already attached to `response`, as
/// [`crate::http::attach`] does to an `http` response.
fn attach<B>(response: &mut HttpResponse<B>, tasks: BackgroundTasks) {
    let mut extensions = response.extensions_mut();
    match extensions.get_mut::<Attached>() {
        Some(attached) => attached.0 = attached.0.take().then(tasks),
        None => {
            extensions.insert(Attached(tasks));
        }
    }
}

/// Whether `response` carries tasks.
pub(super) fn has_tasks<B>(response: &HttpResponse<B>) -> bool {
    response
        .extensions()
        .get::<Attached>()
        .is_some_and(|attached| !attached.0.is_empty())
}

/// The tasks attached to `response`, taken out of it.
pub(super) fn detach<B>(response: &mut HttpResponse<B>) -> BackgroundTasks {
    response
        .extensions_mut()
        .remove::<Attached>()
        .map(|mut attached| attached.0.take())
        .unwrap_or_default()
}
