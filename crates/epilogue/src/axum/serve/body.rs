//! The request body's idle timeout: a body that sends nothing for the
//! timeout ends in an error for the handler (tower-http's `TimeoutBody`),
//! and the response to it becomes `408 Request Timeout`, after which an
//! HTTP/1 connection closes.
//!
//! Without it, a client that sends a head and then a few body bytes holds
//! its connection, and a place under the connection cap, for ever.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_http::timeout::{TimeoutBody, TimeoutError};

use crate::http::BackgroundBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// A request body under the idle timeout, which says when it fired.
    pub(super) struct Watched<B> {
        #[pin]
        inner: TimeoutBody<B>,
        timed_out: Arc<AtomicBool>,
    }
}

impl<B> Watched<B> {
    /// `body` under `timeout`, and the flag it raises when the timeout fires.
    pub(super) fn new(body: B, timeout: Duration) -> (Self, Arc<AtomicBool>) {
        let timed_out = Arc::new(AtomicBool::new(false));
        let body = Self {
            inner: TimeoutBody::new(timeout, body),
            timed_out: timed_out.clone(),
        };
        (body, timed_out)
    }
}

impl<B> Body for Watched<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Err(error))) = &polled {
            if error.is::<TimeoutError>() {
                this.timed_out.store(true, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body timed out, whatever the handler made
/// of the error: `408`, JSON, and over HTTP/1 `Connection: close` (the rest
/// of the body will not be read).
pub(super) fn request_timeout<B>(
    http1: bool,
    timeout: Duration,
) -> http::Response<BackgroundBody<B>> {
    tracing::debug!(?timeout, "request body timed out");
    #[cfg(feature = "metrics")]
    metrics::counter!("epilogue_http_timeouts_total", "part" => "body").increment(1);
    let mut response = http::Response::new(BackgroundBody::own(
        r#"{"error":"the request body stalled: nothing was received within the body read timeout","reason":"body_timeout"}"#,
    ));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if http1 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
