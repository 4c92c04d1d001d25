//! `serve`: `axum::serve` with the executing layer outside the app, a drain
//! of the background work on shutdown, and the protections of a production
//! server.
//!
//! It is written on hyper-util's `auto` connection, as `axum::serve` is,
//! rather than on `axum::serve` itself, which configures none of the
//! protections (timeouts, half-close, a connection cap, a deadline for the
//! drain), and wants axum's own body type: wrapping ours into it would box
//! every response body a second time (about 2 % of a request's
//! instructions, `bench/profile.sh`).

mod body;
mod connection;
mod head;
mod incoming;

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::serve::Listener;
use futures_util::FutureExt;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_service::Service;

use crate::http::BackgroundLayer;
use crate::runner::Runner;
use crate::ShutdownReport;

use connection::Connections;
pub use incoming::IncomingStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `make_service` (a `Router`, or what `axum::serve` takes) on
/// `listener`, with `runner` running the background tasks of its responses,
/// and shuts down gracefully: see [`Serve`].
///
/// It takes what `axum::serve` takes: any [`Listener`] (`TcpListener`,
/// `UnixListener`, `listener.tap_io(..)`), and a `Router`, a `MethodRouter`,
/// a handler service, or their `into_make_service()` and
/// `into_make_service_with_connect_info::<C>()`, with
/// `ConnectInfo<SocketAddr>` for TCP (see [`IncomingStream`]).
///
/// # Example
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use epilogue::Runner;
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// let report = epilogue::axum::serve(listener, app, Runner::new()).await;
/// assert!(report.drained);
/// # Ok(()) }
/// ```
///
/// With the peer's address in handlers:
///
/// ```no_run
/// use std::net::SocketAddr;
/// use axum::{extract::ConnectInfo, routing::get, Router};
/// use epilogue::Runner;
///
/// async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
///     peer.to_string()
/// }
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let app = Router::new().route("/whoami", get(whoami));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// epilogue::axum::serve(
///     listener,
///     app.into_make_service_with_connect_info::<SocketAddr>(),
///     Runner::new(),
/// )
/// .await;
/// # Ok(()) }
/// ```
pub fn serve<L, M, S, B>(listener: L, make_service: M, runner: Runner) -> Serve<L, M, S>
where
    L: Listener,
    M: for<'a> Service<IncomingStream<'a, L>, Error = Infallible, Response = S>,
    S: Service<Request, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
{
    Serve {
        listener,
        make_service,
        layer: BackgroundLayer::new(runner.clone()),
        runner,
        signal: None,
        grace: Serve::<L, M, S>::DEFAULT_GRACE,
        header_read_timeout: Some(Serve::<L, M, S>::DEFAULT_HEADER_READ_TIMEOUT),
        body_read_timeout: Some(Serve::<L, M, S>::DEFAULT_BODY_READ_TIMEOUT),
        max_connections: None,
        _service: PhantomData,
    }
}

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server from [`serve`]; `.await` it to run it. It resolves to the
/// runner's [`ShutdownReport`] once it has shut down.
///
/// It wraps each connection's service in
/// [`BackgroundLayer`](crate::http::BackgroundLayer) (outside the router,
/// where it must be) and serves it over HTTP/1.1, with upgrades
/// (WebSockets), and HTTP/2 on the same port, as `axum::serve` does.
///
/// # Shutdown
///
/// When the shutdown signal comes (Ctrl-C or SIGTERM unless
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) says otherwise)
/// it:
///
/// 1. stops accepting connections;
/// 2. finishes the requests in flight (they are admitted as usual, and
///    their tasks accepted) and closes every connection, HTTP/2 ones with a
///    `GOAWAY`;
/// 3. stops admitting background work, and waits for every accepted task;
/// 4. returns the [`ShutdownReport`].
///
/// Steps 2 and 3 share the grace period (30 s by default,
/// [`grace`](Serve::grace)): connections still open when it ends are
/// dropped, whatever they are doing (a client that never reads its
/// response, a request that never ends), and tasks still running are cut
/// off. With the default signal, a second Ctrl-C or SIGTERM cuts
/// everything off at once.
///
/// A plain-`fn` task cut off at the deadline cannot be stopped: its thread
/// runs on, and dropping the tokio runtime (the end of `#[tokio::main]`)
/// waits for it, so that it may finish work the report calls cut off. To
/// keep the report true, build the runtime yourself and end it with
/// [`Runtime::shutdown_background`](tokio::runtime::Runtime::shutdown_background)
/// once `serve` has returned.
///
/// # Protection
///
/// - A request received in full is handled, and its tasks run, even if the
///   client shuts its side of the connection down right after sending it
///   (HTTP/1 half-close) or closes the connection: the response may have
///   nowhere to go, but the work it promised is done.
/// - A client must send a request's head within the
///   [header read timeout](Serve::header_read_timeout) (30 s by default),
///   or its connection is closed; over HTTP/1 this is also how long a
///   keep-alive connection may stay idle between requests.
/// - A request body that sends nothing for the
///   [body read timeout](Serve::body_read_timeout) (30 s by default) is
///   answered `408`, and its HTTP/1 connection closed.
/// - At most [`max_connections`](Serve::max_connections) connections are
///   open at once; past it, new ones wait in the listener's backlog, and
///   those open are served as usual.
/// - Errors accepting a connection are handled by the [`Listener`] (for
///   TCP: logged, and accepting waits a second), as in `axum::serve`.
///
/// # Cancel safety
///
/// Dropping this future (or the task awaiting it) before it completes drops
/// the listener, and every open connection at its next poll, and does
/// **not** drain the runner: accepted tasks keep running on the runtime,
/// unwaited, and tasks of responses cut short still start. Call
/// [`Runner::shutdown`] yourself if you stop serving that way.
///
/// # Differences from `axum::serve`
///
/// - It takes the [`Runner`], and resolves to a [`ShutdownReport`] instead
///   of `io::Result<()>` (which `axum::serve` never fails with either).
/// - It shuts down on Ctrl-C or SIGTERM by default, and only waits a grace
///   period for connections, where `axum::serve` waits for ever.
/// - It has header and body read timeouts, a connection cap and HTTP/1 half-close,
///   which `axum::serve` does not configure.
/// - The response body is the app's own, not converted to axum's `Body`.
/// - Make services are called with [`IncomingStream`], not axum's own
///   `IncomingStream`: a `Connected` implementation of your own is written
///   for this one.
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve<L, M, S> {
    listener: L,
    make_service: M,
    runner: Runner,
    layer: BackgroundLayer,
    signal: Option<Signal>,
    grace: Duration,
    header_read_timeout: Option<Duration>,
    body_read_timeout: Option<Duration>,
    max_connections: Option<usize>,
    _service: PhantomData<fn() -> S>,
}

/// Longer than this is taken as "no limit": a deadline that far would
/// overflow `Instant` arithmetic somewhere.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

impl<L, M, S> Serve<L, M, S> {
    /// The default grace period.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

    /// The default header read timeout.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

    /// The default body read timeout.
    pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

    /// The most connections open at once when
    /// [`max_connections`](Serve::max_connections) is not called: 16,384,
    /// or three quarters of the soft limit on open files (`RLIMIT_NOFILE`)
    /// if that is lower, so that the process keeps descriptors for its files
    /// and outgoing connections. Raise the soft limit (to the hard one) at
    /// start-up to have room for that many: Linux's default soft limit is
    /// 1,024.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

    /// Shuts down when `signal` completes, instead of on Ctrl-C or SIGTERM.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// How long the shutdown may take in all, from the signal to the last
    /// task: in-flight requests and connections first, then background
    /// tasks. `Duration::MAX` waits for ever.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a client has to send a request's head, from the moment the
    /// server waits for it (connection accepted, or previous response
    /// sent) to its last header; past it, the connection is closed. Over
    /// HTTP/1 this is also the keep-alive idle timeout. `None` (or
    /// `Duration::MAX`) turns it off. 30 s by default.
    ///
    /// Over HTTP/2 it bounds the wait for the first request; from then on
    /// an HTTP/2 connection is pinged instead, and closed if its peer stops
    /// answering.
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.header_read_timeout = timeout.into().filter(|timeout| *timeout < FOREVER);
        self
    }

    /// How long a request body may send nothing: past it, the handler's
    /// next read of the body fails, and the response is `408 Request
    /// Timeout` (JSON, `"reason":"body_timeout"`) whatever the handler
    /// answered, after which an HTTP/1 connection closes. The wait restarts
    /// with every chunk received, so a slow upload that keeps sending is
    /// not cut. A handler that does not read the body is not affected.
    /// `None` (or `Duration::MAX`) turns it off. 30 s by default.
    pub fn body_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.body_read_timeout = timeout.into().filter(|timeout| *timeout < FOREVER);
        self
    }

    /// At most this many connections open at once (at least one); past it,
    /// new connections wait in the listener's backlog until one closes.
    /// See [`DEFAULT_MAX_CONNECTIONS`](Serve::DEFAULT_MAX_CONNECTIONS).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max.clamp(1, Semaphore::MAX_PERMITS));
        self
    }

    /// Commits what each request adds to `commit` (durable tasks, with the
    /// `epilogue-durable` crate's store) before its response leaves; see
    /// [`BackgroundLayer::commit`].
    pub fn commit(mut self, commit: impl crate::http::Commit) -> Self {
        self.layer = self.layer.commit(commit);
        self
    }

    /// The local address the listener is bound to.
    ///
    /// # Errors
    ///
    /// The listener's, if it cannot tell.
    pub fn local_addr(&self) -> io::Result<L::Addr>
    where
        L: Listener,
    {
        self.listener.local_addr()
    }
}

impl<L, M, S> fmt::Debug for Serve<L, M, S>
where
    L: fmt::Debug,
    M: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("make_service", &self.make_service)
            .field("runner", &self.runner)
            .field("grace", &self.grace)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl<L, M, S, B> Serve<L, M, S>
where
    L: Listener,
    M: for<'a> Service<IncomingStream<'a, L>, Error = Infallible, Response = S> + Send + 'static,
    for<'a> <M as Service<IncomingStream<'a, L>>>::Future: Send,
    S: Service<Request, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send + From<&'static str>,
    B::Error: Into<BoxError>,
{
    async fn run(self) -> ShutdownReport {
        let Serve {
            mut listener,
            mut make_service,
            runner,
            layer,
            signal,
            grace,
            header_read_timeout,
            body_read_timeout,
            max_connections,
            _service,
        } = self;
        let default_signal = signal.is_none();
        let mut signal = signal.unwrap_or_else(|| Box::pin(crate::shutdown_signal()));
        let cap = Arc::new(Semaphore::new(
            max_connections.unwrap_or_else(default_max_connections),
        ));
        let connections = Connections::new(layer, header_read_timeout, body_read_timeout);
        loop {
            let (permit, io, remote_addr) = tokio::select! {
                () = &mut signal => break,
                accepted = async {
                    // A place first: past the cap, connections wait in the
                    // backlog, not in this process.
                    let permit = cap.clone().acquire_owned().await;
                    let (io, remote_addr) = listener.accept().await;
                    (permit, io, remote_addr)
                } => accepted,
            };
            let Ok(permit) = permit else {
                // The semaphore is never closed.
                continue;
            };
            let Ok(make_service) = make_service.ready().await;
            let Ok(service) = make_service
                .call(IncomingStream {
                    io: &io,
                    remote_addr,
                })
                .await;
            connections.serve(io, service, permit);
        }
        let fired = Instant::now();
        // Requests in flight are admitted as usual: the runner closes once
        // their connections have.
        drop(listener);
        // `None`: a grace too long for `Instant`, that is, no deadline.
        let deadline = fired.checked_add(grace).filter(|_| grace < FOREVER);
        // A second signal, during any part of the shutdown, cuts it short.
        let mut second = pin!(async move {
            if default_signal {
                crate::shutdown_signal().await;
            } else {
                std::future::pending::<()>().await;
            }
        }
        .fuse());
        let mut cut_short = false;
        tokio::select! {
            closed = connections.close(deadline) => {
                if !closed {
                    // The deadline first: the bodies dropped with their
                    // connections start tasks, which must be cut off.
                    runner.cut_off_now();
                    connections.cut().await;
                }
            }
            () = &mut second => {
                tracing::warn!("second signal: closing connections and cutting background tasks off now");
                cut_short = true;
                runner.cut_off_now();
                connections.cut().await;
            }
        }
        runner.close();
        let remaining = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => grace,
        };
        let mut drain = pin!(runner.shutdown(remaining));
        if cut_short {
            return drain.await;
        }
        tokio::select! {
            report = &mut drain => report,
            () = &mut second => {
                tracing::warn!("second signal: cutting background tasks off now");
                runner.cut_off_now();
                drain.await
            }
        }
    }
}

impl<L, M, S, B> IntoFuture for Serve<L, M, S>
where
    L: Listener,
    M: for<'a> Service<IncomingStream<'a, L>, Error = Infallible, Response = S> + Send + 'static,
    for<'a> <M as Service<IncomingStream<'a, L>>>::Future: Send,
    S: Service<Request, Response = http::Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send + From<&'static str>,
    B::Error: Into<BoxError>,
{
    type Output = ShutdownReport;
    type IntoFuture = Pin<Box<dyn Future<Output = ShutdownReport> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// [`Serve::DEFAULT_MAX_CONNECTIONS`], or less if the process may not open
/// that many files.
fn default_max_connections() -> usize {
    let default = Serve::<(), (), ()>::DEFAULT_MAX_CONNECTIONS;
    #[cfg(unix)]
    if let Ok((soft, _hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        if let Ok(soft) = usize::try_from(soft) {
            return (soft - soft / 4).clamp(1, default);
        }
    }
    default
}
