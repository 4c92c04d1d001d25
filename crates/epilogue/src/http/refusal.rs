//! The responses epilogue itself produces: `503` when the runner is full or
//! shutting down, `500` when the executing layer is missing. JSON for an
//! HTTP API, gRPC status headers for a gRPC service.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::BackgroundBody;
use super::error::{ScopeError, MISSING_LAYER};
use crate::runner::Refused;

/// How a route-level layer answers a request it refuses before the handler.
///
/// Implemented by [`JsonRefusal`] (the default) and [`GrpcRefusal`]; implement
/// it for your own shape of error response.
pub trait Refusal<B>: Clone {
    /// The response for `error`.
    fn respond(&self, error: &ScopeError) -> Response<B>;
}

/// Refusals as JSON: `503 Service Unavailable` with `Retry-After`, or `500`,
/// and a body `{"error": "<what happened>", "reason": "full" |
/// "shutting_down" | "missing_layer"}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonRefusal;

impl<B: From<String>> Refusal<B> for JsonRefusal {
    fn respond(&self, error: &ScopeError) -> Response<B> {
        let reason = reason(error);
        // Our messages hold no quote, backslash or control character (a test
        // below checks each): they need no escaping.
        let body = format!(r#"{{"error":"{error}","reason":"{reason}"}}"#);
        json_refusal(B::from(body), error)
    }
}

/// `body`, as the JSON answer to `error`: its status, and `Retry-After`.
fn json_refusal<B>(body: B, error: &ScopeError) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = status(error);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(retry_after) = retry_after(error) {
        headers.insert(header::RETRY_AFTER, retry_after);
    }
    response
}

/// `503` when a request's durable tasks could not be stored: the store's
/// own error is logged, not shown to the client.
pub(crate) fn store_unavailable<B>() -> Response<BackgroundBody<B>> {
    store_unavailable_with(BackgroundBody::own(STORE_UNAVAILABLE))
}

/// The body of [`store_unavailable`].
pub(crate) const STORE_UNAVAILABLE: &str = r#"{"error":"the durable task store is unavailable; nothing was stored, try again","reason":"store_unavailable"}"#;

/// [`store_unavailable`], with `body` of any type.
pub(crate) fn store_unavailable_with<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// `503` in place of a response whose request was admitted only once it
/// was there (see `Scope::admit_late`), and refused: `JsonRefusal`'s shape.
pub(crate) fn refused_late<B>(error: &ScopeError) -> Response<BackgroundBody<B>> {
    let body = match reason(error) {
        "shutting_down" => {
            r#"{"error":"the service is shutting down and takes no new background work","reason":"shutting_down"}"#
        }
        _ => r#"{"error":"background work is at capacity; retry later","reason":"full"}"#,
    };
    json_refusal(BackgroundBody::own(body), error)
}

/// Refusals as a gRPC client expects them: a trailers-only response, HTTP
/// status 200, `content-type: application/grpc`, `grpc-status: 14`
/// (`UNAVAILABLE`, which gRPC clients retry) or `13` (`INTERNAL`, for a
/// missing executing layer), and the message in `grpc-message`. For tonic
/// services: `RouteTasksLayer::admission().refusal(GrpcRefusal)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcRefusal;

impl<B: Default> Refusal<B> for GrpcRefusal {
    fn respond(&self, error: &ScopeError) -> Response<B> {
        let code = match error {
            ScopeError::Refused { .. } => "14",
            ScopeError::MissingLayer => "13",
        };
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static(code));
        // gRPC percent-encodes the message; ours are printable ASCII, where
        // only '%' would need it, and they hold none.
        if let Ok(message) = HeaderValue::from_str(&error.to_string()) {
            headers.insert("grpc-message", message);
        }
        if let Some(retry_after) = retry_after(error) {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

fn status(error: &ScopeError) -> StatusCode {
    match error {
        ScopeError::Refused { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ScopeError::MissingLayer => {
            tracing::error!("{MISSING_LAYER}");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

fn reason(error: &ScopeError) -> &'static str {
    match error {
        ScopeError::Refused {
            refused: Refused::Full { .. },
            ..
        } => "full",
        ScopeError::Refused {
            refused: Refused::ShuttingDown,
            ..
        } => "shutting_down",
        ScopeError::MissingLayer => "missing_layer",
    }
}

/// Whole seconds, rounded up: `Retry-After: 0` would invite a retry storm.
fn retry_after(error: &ScopeError) -> Option<HeaderValue> {
    let ScopeError::Refused { retry_after, .. } = error else {
        return None;
    };
    let secs: Duration = *retry_after;
    let secs = secs
        .as_secs()
        .saturating_add(u64::from(secs.subsec_nanos() > 0));
    Some(HeaderValue::from(secs.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(retry_after: Duration) -> ScopeError {
        ScopeError::Refused {
            refused: Refused::Full { limit: 3 },
            retry_after,
        }
    }

    #[test]
    fn json_refusal_says_why_and_when_to_retry() {
        let response: Response<String> = JsonRefusal.respond(&full(Duration::from_millis(1500)));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            response.body(),
            r#"{"error":"background work is at capacity (3 groups running or waiting); retry later","reason":"full"}"#
        );
    }

    #[test]
    fn retry_after_of_any_length_never_panics() {
        let response: Response<String> = JsonRefusal.respond(&full(Duration::MAX));
        assert_eq!(
            response.headers()[header::RETRY_AFTER],
            u64::MAX.to_string().as_str()
        );
    }

    #[test]
    fn retry_after_is_never_zero() {
        let error = ScopeError::Refused {
            refused: Refused::ShuttingDown,
            retry_after: Duration::ZERO,
        };
        let response: Response<String> = JsonRefusal.respond(&error);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn grpc_refusal_is_a_trailers_only_unavailable() {
        let response: Response<String> = GrpcRefusal.respond(&full(Duration::from_secs(1)));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "background work is at capacity (3 groups running or waiting); retry later"
        );
        assert!(response.body().is_empty());
        let missing: Response<String> = GrpcRefusal.respond(&ScopeError::MissingLayer);
        assert_eq!(missing.headers()["grpc-status"], "13");
    }

    #[test]
    fn messages_need_no_escaping() {
        let errors = [
            full(Duration::ZERO),
            ScopeError::Refused {
                refused: Refused::ShuttingDown,
                retry_after: Duration::ZERO,
            },
            ScopeError::MissingLayer,
        ];
        for error in errors {
            let text = error.to_string();
            assert!(
                !text.contains(['"', '\\', '%']) && !text.chars().any(char::is_control),
                "{text}"
            );
        }
    }
}
