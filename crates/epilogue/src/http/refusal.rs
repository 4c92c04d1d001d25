//! The responses epilogue itself produces: 503 when the runner is full, 500
//! when the executing layer is missing. One JSON shape for both.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::runner::Refused;

/// `503 Service Unavailable` with `Retry-After` and a JSON body saying why.
pub(crate) fn refused<B: From<String>>(refused: Refused, retry_after: Duration) -> Response<B> {
    let reason = match refused {
        Refused::Full { .. } => "full",
        Refused::ShuttingDown => "shutting_down",
    };
    // Whole seconds, rounded up: `Retry-After: 0` would invite a retry storm.
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        &refused.to_string(),
        reason,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    response
}

/// `500 Internal Server Error`: a route-level layer or the extractor was used
/// without [`BackgroundLayer`](super::BackgroundLayer) around it.
pub(crate) fn missing_layer<B: From<String>>() -> Response<B> {
    tracing::error!("{MISSING_LAYER}");
    json(
        StatusCode::INTERNAL_SERVER_ERROR,
        MISSING_LAYER,
        "missing_layer",
    )
}

pub(crate) const MISSING_LAYER: &str = "epilogue's BackgroundLayer is missing: wrap the whole \
    application in it (epilogue::axum::serve does), outside any route-level background layer, \
    with no layer between them that runs the service on another task (such as tower::buffer)";

fn json<B: From<String>>(status: StatusCode, message: &str, reason: &str) -> Response<B> {
    // The messages are ours and hold no quote or backslash; escape anyway so
    // that a future message cannot break the JSON.
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let body = format!(
        r#"{{"error":"{}","reason":"{}"}}"#,
        escape(message),
        escape(reason)
    );
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_says_when_to_retry() {
        let response: Response<String> =
            refused(Refused::Full { limit: 3 }, Duration::from_millis(1500));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body: &str = response.body();
        assert!(
            body.starts_with(r#"{"error":"background work is at capacity"#),
            "{body}"
        );
        assert!(body.ends_with(r#""reason":"full"}"#), "{body}");
    }

    #[test]
    fn retry_after_is_never_zero() {
        let response: Response<String> = refused(Refused::ShuttingDown, Duration::ZERO);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
