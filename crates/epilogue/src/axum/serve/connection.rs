//! One task per connection: HTTP/1 or HTTP/2 as the client speaks, closed
//! gracefully on shutdown and cut at the deadline.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
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
use std::sync::atomic::{AtomicBool, Ordering};

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
pub(super) struct Connections {
    tracker: TaskTracker,
    closing: Arc<Latch>,
    cut: Arc<Latch>,
    http1: http1::Builder,
    http2: Arc<http2::Builder<TokioExecutor>>,
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
        // Our sniff already knows the protocol, so each connection is
        // served by hyper's HTTP/1 or HTTP/2 connection directly rather
        // than by hyper-util's auto one, which sniffs again behind a
        // second prefix wrapper and runs a state machine of its own around
        // every poll.
        let mut http1 = http1::Builder::new();
        http1
            // A client that sends its request and then shuts its side down
            // (or closes at once) still has it handled and answered.
            .half_close(true)
            .keep_alive(true)
            // Ours instead, cheaper: see `head.rs`. (Said explicitly: with
            // no timer, hyper's default would warn on every connection.)
            .header_read_timeout(None::<Duration>);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // WebSockets over HTTP/2 (RFC 8441), as axum::serve allows.
            .enable_connect_protocol()
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        Self {
            tracker: TaskTracker::new(),
            closing: Arc::default(),
            cut: Arc::default(),
            http1,
            http2: Arc::new(http2),
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
        let service = self.layer.layer(service);
        let closing = self.closing.clone();
        let cut = self.cut.clone();
        let http1 = self.http1.clone();
        let http2 = self.http2.clone();
        let header_read_timeout = self.header_read_timeout;
        let body = self.body_read_timeout;
        self.tracker.spawn(async move {
            let _permit = permit;
            let accepted = tokio::time::Instant::now();
            // The header-read timeout covers the wait for the first bytes,
            // which say which protocol the client speaks, and over HTTP/1
            // runs on from `accepted` to the first head.
            let sniffed = tokio::select! {
                biased;
                () = closing.wait() => return,
                sniffed = within(header_read_timeout, sniff(io)) => sniffed,
            };
            let io = match sniffed {
                Some(Ok(Some(io))) => io,
                Some(Ok(None)) => return,
                Some(Err(error)) => {
                    tracing::trace!("connection closed with an error: {error}");
                    return;
                }
                None => {
                    head_timed_out();
                    return;
                }
            };
            let h2 = io.is_h2();
            let io = TokioIo::new(io);
            let served = if h2 {
                // An open HTTP/2 connection is pinged instead.
                let service = Hyper::new(service, None, body);
                let connection = http2.serve_connection(io, service);
                drive(connection, std::future::pending(), &closing, &cut).await
            } else if let Some(timeout) = header_read_timeout {
                let clock = Arc::new(HeadClock::default());
                let head = HeadTimeout::new(clock.clone(), accepted, timeout);
                let service = Hyper::new(service, Some(clock), body);
                let connection = http1.serve_connection(io, service).with_upgrades();
                drive(connection, head, &closing, &cut).await
            } else {
                let service = Hyper::new(service, None, body);
                let connection = http1.serve_connection(io, service).with_upgrades();
                drive(connection, std::future::pending(), &closing, &cut).await
            };
            match served {
                Served::Ended(Ok(())) | Served::Cut => {}
                Served::Ended(Err(error)) => {
                    tracing::trace!("connection closed with an error: {error}");
                }
                Served::HeadTimedOut => head_timed_out(),
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

/// How [`drive`] ended.
enum Served {
    /// The connection ended, closed by either side or failed.
    Ended(hyper::Result<()>),
    /// Dropped at the end of the grace period.
    Cut,
    /// Dropped: no request head within the header read timeout.
    HeadTimedOut,
}

/// Serves `connection` until it ends, or `head` (the header read timeout)
/// completes; once `closing` is set, asks it to close after its in-flight
/// requests, and drops it (closing the socket) if `cut` is set before it
/// has.
async fn drive<C: Connection>(
    connection: C,
    head: impl Future<Output = ()>,
    closing: &Latch,
    cut: &Latch,
) -> Served {
    let mut connection = pin!(connection);
    let mut head = pin!(head);
    // `head` after the connection, each time: see `HeadTimeout`.
    tokio::select! {
        biased;
        served = connection.as_mut() => Served::Ended(served),
        () = closing.wait() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                served = connection.as_mut() => Served::Ended(served),
                () = cut.wait() => Served::Cut,
                () = head => Served::HeadTimedOut,
            }
        }
        () = head.as_mut() => Served::HeadTimedOut,
    }
}

/// A hyper server connection, HTTP/1 or HTTP/2: each has its own
/// `graceful_shutdown`.
trait Connection: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Connection for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Connection for http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// `future`'s output, or `None` if `limit` passes first.
async fn within<F: std::future::Future>(limit: Option<Duration>, future: F) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
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
/// clock (HTTP/1 with a header read timeout), it tells the clock when a
/// request head is in and when its response is done. With a body read
/// timeout, a request body that stalls gets `408`.
struct Hyper<S> {
    service: Background<S>,
    clock: Option<Arc<HeadClock>>,
    body_read_timeout: Option<Duration>,
}

impl<S> Hyper<S> {
    fn new(
        service: Background<S>,
        clock: Option<Arc<HeadClock>>,
        body_read_timeout: Option<Duration>,
    ) -> Self {
        Self {
            service,
            clock,
            body_read_timeout,
        }
    }
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for Hyper<S>
where
    S: Service<Request, Response = http::Response<B>, Error = Infallible> + Clone,
{
    type Response = http::Response<MarkIdle<BackgroundBody<B>>>;
    type Error = Infallible;
    type Future = MarkingIdle<Oneshot<Background<S>, Request>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        if let Some(clock) = &self.clock {
            clock.busy();
        }
        let http1 = request.version() < http::Version::HTTP_2;
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
        MarkingIdle {
            inner: self.service.clone().oneshot(request),
            clock: self.clock.clone(),
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
    /// A response future whose response body marks the connection idle, and
    /// whose response becomes `408` if the request body timed out.
    struct MarkingIdle<F> {
        #[pin]
        inner: F,
        clock: Option<Arc<HeadClock>>,
        body_timeout: Option<BodyTimeout>,
        http1: bool,
    }
}

impl<F, B> Future for MarkingIdle<F>
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

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the protocol is known: the HTTP/2 preface in full, or a
/// byte that differs from it (HTTP/1), or the end of the stream. Returns
/// the stream with what was read put back, or `None` if the client sent
/// nothing at all.
async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<Option<Prefixed<I>>> {
    let mut prefix = [0; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < prefix.len() {
        let read = io.read(&mut prefix[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
        if prefix[..filled] != H2_PREFACE[..filled] {
            break;
        }
    }
    Ok((filled > 0).then_some(Prefixed {
        prefix,
        start: 0,
        end: filled,
        inner: io,
    }))
}

/// A stream whose first bytes, read already, are read again.
struct Prefixed<I> {
    prefix: [u8; H2_PREFACE.len()],
    start: usize,
    end: usize,
    inner: I,
}

impl<I> Prefixed<I> {
    /// Whether the client began with the HTTP/2 preface (prior knowledge).
    fn is_h2(&self) -> bool {
        self.prefix[..self.end] == H2_PREFACE[..]
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            this.read_prefix(buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I> Prefixed<I> {
    /// Out of line: only a connection's first read or two take it, and
    /// every later read passes straight through (inline, it cost each read
    /// about 14 instructions in `bench/profile.sh`).
    #[cold]
    #[inline(never)]
    fn read_prefix(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.end - self.start).min(buf.remaining());
        buf.put_slice(&self.prefix[self.start..self.start + n]);
        self.start += n;
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn sniffing_gives_back_every_byte_read() {
        for sent in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &H2_PREFACE[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12",
            b"PRI",
            b"G",
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut io = sniff(server).await.unwrap().expect("bytes were sent");
            assert_eq!(io.is_h2(), sent.starts_with(H2_PREFACE), "{sent:?}");
            let mut received = Vec::new();
            io.read_to_end(&mut received).await.unwrap();
            assert_eq!(received, sent);
        }
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert!(sniff(server).await.unwrap().is_none());
    }
}
