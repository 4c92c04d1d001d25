//! axum: the request's durable handle as an extractor, durable tasks as a
//! response part, store errors as responses.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};

use crate::error::DurableError;
use crate::request::{DurableTasks, RequestDurable};

/// The request's durable handle: `add` (stored after a success, before the
/// response), `enqueue` (stored now, its id returned). Needs the store on
/// the executing layer (`epilogue::axum::serve(..).commit(store)`);
/// without it the request is answered `500` with a message that says so.
impl<S: Send + Sync> FromRequestParts<S> for RequestDurable {
    type Rejection = DurableError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Self::from_extensions(&parts.extensions).ok_or(DurableError::NoStore)
    }
}

impl IntoResponseParts for DurableTasks {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        self.attach(res.extensions_mut());
        Ok(res)
    }
}

/// An empty `200` that carries the tasks, so that they can end a response
/// too: `(StatusCode::CREATED, tasks)`.
impl IntoResponse for DurableTasks {
    fn into_response(self) -> Response {
        let mut response = ().into_response();
        self.attach(response.extensions_mut());
        response
    }
}

/// `503` with `Retry-After` when the store is unavailable (nothing was
/// stored: try again), `400` for a task that does not encode, `500` for a
/// mistake in the service's code. The body is JSON; it never shows the
/// store's own error, which is logged.
impl IntoResponse for DurableError {
    fn into_response(self) -> Response {
        let answer = self.answer();
        let mut response = (answer.status, answer.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(seconds) = answer.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
