//! actix-web: the `RequestDurable` extractor and the answers to a
//! `DurableError`, for a service whose `epilogue::actix::Background`
//! commits to the store (`Background::new(runner).commit(store)`).

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};

use crate::error::DurableError;
use crate::request::RequestDurable;

/// The request's durable handle on actix-web: `add` (stored after a
/// success, before the response), `enqueue` (stored now, its id returned).
/// Needs the store on the executing middleware
/// (`Background::new(runner).commit(store)`); without it the request is
/// answered `500` with a message that says so.
///
/// ```
/// # use epilogue_durable::{BoxError, DurableTask, Job};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct SendWelcome { email: String }
/// # impl DurableTask for SendWelcome {
/// #     const NAME: &'static str = "send_welcome";
/// #     type State = ();
/// #     type Output = ();
/// #     async fn run(self, _: Job, _: ()) -> Result<(), BoxError> { Ok(()) }
/// # }
/// use actix_web::{web, App, HttpResponse};
/// use epilogue::{actix::Background, Runner};
/// use epilogue_durable::{DurableError, RequestDurable, Store};
///
/// async fn register(durable: RequestDurable, email: web::Json<String>) -> Result<HttpResponse, DurableError> {
///     // Stored before the 201 leaves, in one transaction with the tasks of
///     // concurrent requests; a 503 in its place if it cannot be.
///     durable.add(&SendWelcome { email: email.into_inner() })?;
///     Ok(HttpResponse::Created().finish())
/// }
///
/// fn app(runner: Runner, store: Store) -> App<impl actix_web::dev::ServiceFactory<
///     actix_web::dev::ServiceRequest,
///     Config = (),
///     Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
///     Error = actix_web::Error,
///     InitError = (),
/// >> {
///     App::new()
///         .route("/register", web::post().to(register))
///         .wrap(Background::new(runner).commit(store))
/// }
/// ```
impl FromRequest for RequestDurable {
    type Error = DurableError;
    type Future = Ready<Result<Self, DurableError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let durable = epilogue::actix::commit_extensions(request)
            .and_then(|extensions| Self::from_extensions(&extensions));
        ready(durable.ok_or(DurableError::NoStore))
    }
}

/// As on axum: `503` with `Retry-After` when the store is unavailable,
/// `400` for a task that does not encode, `500` for a mistake in the
/// service's code; a JSON body that never shows the store's own error.
impl ResponseError for DurableError {
    // actix-web (and tracing-actix-web) ask for the status apart from the
    // answer: this one logs nothing, `error_response` logs the error once.
    fn status_code(&self) -> StatusCode {
        actix_status(self.status_and_reason().0)
    }

    fn error_response(&self) -> HttpResponse {
        let answer = self.answer();
        let mut response = HttpResponse::build(actix_status(answer.status));
        response.insert_header(header::ContentType::json());
        if let Some(seconds) = answer.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds));
        }
        response.body(answer.body)
    }
}

/// An `http` 1 status as actix-web's (`http` 0.2).
fn actix_status(status: http::StatusCode) -> StatusCode {
    StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
