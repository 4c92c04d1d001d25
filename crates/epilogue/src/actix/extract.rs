//! Admission and the request's own tasks, as extractors; refusals as
//! actix-web errors.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};

use crate::http::{JsonRefusal, Refusal, RequestTasks, Scope, ScopeError};

/// Admits the request before its handler runs: when the runner is full or
/// shutting down, the handler does not run and the client gets `503` with
/// `Retry-After` and a JSON body. The actix-web twin of
/// [`axum::Admitted`](crate::axum::Admitted): take it first in a handler
/// that returns tasks with [`with_tasks`](super::with_tasks).
///
/// # Errors
///
/// [`ScopeError`], answered as `503` (or `500` without
/// [`Background`](super::Background) around the app).
#[derive(Clone, Copy, Debug)]
pub struct Admitted;

impl FromRequest for Admitted {
    type Error = ScopeError;
    type Future = Ready<Result<Self, ScopeError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(admit(request).map(|_| Admitted))
    }
}

/// The request's own tasks, FastAPI's `background_tasks` parameter: tasks
/// added to it run once the handler has answered with a success. Taking it
/// admits the request, as [`Admitted`] does.
impl FromRequest for RequestTasks {
    type Error = ScopeError;
    type Future = Ready<Result<Self, ScopeError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(admit(request).map(RequestTasks::of_admitted))
    }
}

/// The request's scope, admitted.
pub(super) fn admit(request: &impl HttpMessage) -> Result<Scope, ScopeError> {
    let scope = request
        .extensions()
        .get::<Scope>()
        .cloned()
        .ok_or(ScopeError::MissingLayer)?;
    scope.admit_or_refuse()?;
    Ok(scope)
}

/// `503` with `Retry-After` and a JSON body when the runner is full or
/// shutting down; `500` without [`Background`](super::Background).
impl ResponseError for ScopeError {
    fn status_code(&self) -> StatusCode {
        match self {
            ScopeError::Refused { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ScopeError::MissingLayer => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // The same answer as on axum, from the same code.
        super::convert::to_actix(JsonRefusal.respond(self))
    }
}
