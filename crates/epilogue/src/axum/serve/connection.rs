//! One task per connection, served by hyper-util's `auto` connection
//! (HTTP/1 or HTTP/2, as the client speaks), closed gracefully on shutdown
//! and cut at the deadline.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;
use tower::util::Oneshot;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{Background, BackgroundBody, BackgroundLayer};
use crate::latch::Latch;

use super::body::{request_timeout, Watched};
use super::head::{HeadClock, HeadTimeout, MarkIdle};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often an HTTP/2 connection is pinged, and how long the answer may
/// take before the peer is taken for gone.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long connections cut at the deadline get to drop their state (their
/// response bodies, which start their accepted tasks).
const CUT_MARGIN: Duration = Duration::from_millis(500);

/// The open connections: each one a tracked task, told to finish its
/// in-flight requests and close when the server shuts down, and dropped
/// when the grace period is over.
///
/// hyper-util's `GracefulShutdown` does the first half, but cannot drop a
/// connection at a deadline: one `select!` per connection does both.
pub(super) struct Connections {
    tracker: TaskTracker,
    closing: Arc<Latch>,
    cut: Arc<Latch>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    layer: BackgroundLayer,
    header_read_timeout: Option<Duration>,
    body_read_timeout: Option<Duration>,
}

impl Connections {
    pub(super) fn new(
        layer: BackgroundLayer,
        header_read_timeout: Option<Duration>,
        body_read_timeout: Option<Duration>,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // A client that sends its request and then shuts its side down
            // (or closes at once) still has it handled and answered.
            .half_close(true)
            .keep_alive(true)
            // Ours instead, cheaper: see `head.rs`. (Said explicitly: with
            // a timer, hyper's default is 30 s.)
            .header_read_timeout(None::<Duration>);
        builder
            .http2()
            .timer(TokioTimer::new())
            // WebSockets over HTTP/2 (RFC 8441), as axum::serve allows.
            .enable_connect_protocol()
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        Self {
            tracker: TaskTracker::new(),
            closing: Arc::default(),
            cut: Arc::default(),
            builder: Arc::new(builder),
            layer,
            header_read_timeout,
            body_read_timeout,
        }
    }

    /// Serves `service` on `io` on a task of its own, which holds `permit`
    /// (its place under the connection cap) until the connection is over.
    pub(super) fn serve<I, S, B>(&self, io: I, service: S, permit: OwnedSemaphorePermit)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request, Response = http::Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
        B: http_body::Body + Send + 'static,
        B::Data: Send + From<&'static str>,
        B::Error: Into<BoxError>,
    {
        // From the moment the connection is accepted: the wait for the
        // bytes that tell HTTP/1 from HTTP/2 is covered too.
        let (clock, head) = match self.header_read_timeout {
            Some(timeout) => {
                let clock = Arc::new(HeadClock::default());
                let head = HeadTimeout::new(clock.clone(), tokio::time::Instant::now(), timeout);
                (Some(clock), Some(head))
            }
            None => (None, None),
        };
        let service = Hyper {
            service: self.layer.layer(service),
            clock,
            body_read_timeout: self.body_read_timeout,
        };
        let closing = self.closing.clone();
        let cut = self.cut.clone();
        let builder = self.builder.clone();
        self.tracker.spawn(async move {
            let _permit = permit;
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let mut connection = pin!(connection);
            let mut head = pin!(async move {
                match head {
                    Some(head) => head.await,
                    None => std::future::pending().await,
                }
            });
            let served = tokio::select! {
                biased;
                served = connection.as_mut() => served,
                () = closing.wait() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        biased;
                        served = connection.as_mut() => served,
                        () = cut.wait() => Ok(()),
                        () = head => return head_timed_out(),
                    }
                }
                // After the connection, each time: see `HeadTimeout`.
                () = head.as_mut() => return head_timed_out(),
            };
            if let Err(error) = served {
                tracing::trace!("connection closed with an error: {error}");
            }
        });
    }

    /// Asks every connection to close once its in-flight requests are
    /// answered, and waits for them until `deadline` (`None`: no deadline).
    /// Returns whether they all closed in time; the caller cuts those left,
    /// once the runner's deadline is set, so that the tasks their dropped
    /// bodies start are cut off too.
    pub(super) async fn close(&self, deadline: Option<Instant>) -> bool {
        self.closing.set();
        self.tracker.close();
        let closed = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), self.tracker.wait())
                .await
                .is_ok(),
            None => {
                self.tracker.wait().await;
                true
            }
        };
        if !closed {
            tracing::warn!(
                open = self.tracker.len(),
                "connections still open at the end of the grace period"
            );
        }
        closed
    }

    /// Drops every connection now, and waits a moment for their tasks to
    /// end.
    pub(super) async fn cut(&self) {
        self.closing.set();
        self.cut.set();
        self.tracker.close();
        let _ = tokio::time::timeout(CUT_MARGIN, self.tracker.wait()).await;
    }
}

impl Drop for Connections {
    // Dropping `serve`'s future drops the connections too, at their next
    // poll: they run on tasks of their own, which would outlive it.
    fn drop(&mut self) {
        self.closing.set();
        self.cut.set();
    }
}

/// Counts and logs a connection closed by the header read timeout.
fn head_timed_out() {
    tracing::debug!("no request head within the header read timeout");
    #[cfg(feature = "metrics")]
    metrics::counter!("epilogue_http_timeouts_total", "part" => "head").increment(1);
}

/// The app as a hyper service, behind the executing layer: it takes
/// hyper's request body as axum's `Body`, as `axum::serve` does (axum would
/// box it anyway), and leaves the response body as the app made it. With a
/// clock (a header read timeout), it tells the clock when a request head is
/// in and, over HTTP/1, when its response is done. With a body read
/// timeout, a request body that stalls gets `408`.
struct Hyper<S> {
    service: Background<S>,
    clock: Option<Arc<HeadClock>>,
    body_read_timeout: Option<Duration>,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Hyper<S>
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible> + Clone,
{
    type Response = http::Response<MarkIdle<BackgroundBody<B>>>;
    type Error = Infallible;
    type Future = TimingOut<Oneshot<Background<S>, Request>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let http1 = request.version() < http::Version::HTTP_2;
        if let Some(clock) = &self.clock {
            // Over HTTP/2, busy for good: the connection is pinged instead.
            clock.busy();
        }
        let (request, body_timeout) = match self.body_read_timeout {
            // A request without a body (most GETs) pays for nothing.
            Some(timeout) if !http_body::Body::is_end_stream(request.body()) => {
                let (parts, body) = request.into_parts();
                let (body, timed_out) = Watched::new(body, timeout);
                let request = Request::from_parts(parts, axum::body::Body::new(body));
                (request, Some(BodyTimeout { timed_out, timeout }))
            }
            _ => (request.map(axum::body::Body::new), None),
        };
        TimingOut {
            inner: self.service.clone().oneshot(request),
            clock: if http1 { self.clock.clone() } else { None },
            body_timeout,
            http1,
        }
    }
}

/// A request body under the body read timeout.
struct BodyTimeout {
    timed_out: Arc<AtomicBool>,
    timeout: Duration,
}

pin_project! {
    /// A response future whose response body marks an HTTP/1 connection
    /// idle, and whose response becomes `408` if the request body timed
    /// out.
    struct TimingOut<F> {
        #[pin]
        inner: F,
        clock: Option<Arc<HeadClock>>,
        body_timeout: Option<BodyTimeout>,
        http1: bool,
    }
}

impl<F, B> Future for TimingOut<F>
where
    F: Future<Output = Result<http::Response<BackgroundBody<B>>, Infallible>>,
{
    type Output = Result<http::Response<MarkIdle<BackgroundBody<B>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready!(this.inner.poll(cx));
        if let Some(body) = this.body_timeout.take() {
            if body.timed_out.load(Ordering::Relaxed) {
                // Whatever the handler made of the error; its own response
                // (and the tasks it carries) is dropped as if sent.
                response = request_timeout(*this.http1, body.timeout);
            }
        }
        let clock = this.clock.take();
        Poll::Ready(Ok(response.map(|body| MarkIdle::new(body, clock))))
    }
}
