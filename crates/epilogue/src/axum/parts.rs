//! Tasks returned by a handler: response parts, or the whole response.

use std::convert::Infallible;

use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};

use crate::http::attach;
use crate::task::BackgroundTask;
use crate::tasks::BackgroundTasks;

/// A task as a response part: `(StatusCode::CREATED, task, Json(..))`. It
/// runs once the response has been sent, whatever its status.
impl IntoResponseParts for BackgroundTask {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        attach(res.extensions_mut(), self);
        Ok(res)
    }
}

/// A group as a response part: `(tasks, Json(..))`.
impl IntoResponseParts for BackgroundTasks {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        attach(res.extensions_mut(), self);
        Ok(res)
    }
}

/// A task as the whole response: an empty `200`, or with a status,
/// `(StatusCode::ACCEPTED, task)`.
impl IntoResponse for BackgroundTask {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}

/// A group as the whole response: an empty `200`, or with a status,
/// `(StatusCode::ACCEPTED, tasks)`.
impl IntoResponse for BackgroundTasks {
    fn into_response(self) -> Response {
        (self, ()).into_response()
    }
}
