//! `serve`: axum's `serve`, with the executing layer outside the router and a
//! drain of the background work on shutdown.
//!
//! It is written on hyper rather than on `axum::serve`, which wants axum's
//! own body type: wrapping ours into it would box every response body a
//! second time, and every frame would pay for it (about 2 % of the
//! instructions of a whole request, measured with `bench/profile.sh`).

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::{Background, BackgroundLayer};
use crate::latch::Latch;
use crate::runner::Runner;
use crate::ShutdownReport;

/// Serves `app` with `runner` running its background tasks, and shuts down
/// gracefully: see [`Serve`].
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
/// let report = epilogue::axum::serve(listener, app, Runner::new()).await?;
/// assert!(report.drained);
/// # Ok(()) }
/// ```
pub fn serve(listener: TcpListener, app: Router, runner: Runner) -> Serve {
    Serve {
        listener,
        app,
        runner,
        signal: None,
        grace: Serve::DEFAULT_GRACE,
    }
}

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server from [`serve`]; `.await` it to run it.
///
/// It wraps the app in [`BackgroundLayer`] (outside the router, where it must
/// be) and serves it over HTTP/1.1, with upgrades (WebSockets), as
/// `axum::serve` does. For HTTP/2, serve `BackgroundLayer::new(runner).layer(app)`
/// with a server of your own, and call [`Runner::shutdown`] after it.
///
/// When the shutdown signal comes (Ctrl-C or SIGTERM unless
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) says otherwise)
/// it:
///
/// 1. stops accepting connections and stops admitting background work
///    (requests to task-bearing routes get `503`);
/// 2. finishes the responses in flight: their tasks are accepted;
/// 3. waits for every accepted task, all of this within the grace period
///    (30 s by default), then cuts off what is left;
/// 4. returns the [`ShutdownReport`].
///
/// With the default signal, a second Ctrl-C or SIGTERM during the drain cuts
/// the remaining tasks off at once.
///
/// # Errors
///
/// None at present: its output is an `io::Result`, as `axum::serve`'s is,
/// but errors accepting a connection are logged and retried, as
/// `axum::serve` does, not returned.
#[must_use = "a Serve does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    app: Router,
    runner: Runner,
    signal: Option<Signal>,
    grace: Duration,
}

impl Serve {
    /// The default grace period.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

    /// Shuts down when `signal` completes, instead of on Ctrl-C or SIGTERM.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Some(Box::pin(signal));
        self
    }

    /// How long the shutdown may take in all, from the signal to the last
    /// task: in-flight responses first, then background tasks.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    async fn run(self) -> io::Result<ShutdownReport> {
        let Serve {
            listener,
            app,
            runner,
            signal,
            grace,
        } = self;
        let second_signal = signal.is_none();
        let mut signal = signal.unwrap_or_else(|| Box::pin(crate::shutdown_signal()));
        let service = BackgroundLayer::new(runner.clone()).layer(app);
        let connections = Connections::default();
        loop {
            tokio::select! {
                () = &mut signal => break,
                stream = accept(&listener) => {
                    if let Some(stream) = stream {
                        connections.serve(stream, service.clone());
                    }
                }
            }
        }
        let fired = Instant::now();
        runner.close();
        drop(listener);
        let deadline = fired + grace;
        if !connections.close(deadline).await {
            tracing::warn!("connections still open after the grace period; not waiting for them");
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !second_signal {
            return Ok(runner.shutdown(remaining).await);
        }
        let mut drain = pin!(runner.shutdown(remaining));
        tokio::select! {
            report = &mut drain => Ok(report),
            () = crate::shutdown_signal() => {
                tracing::warn!("second signal: cutting background tasks off now");
                runner.cut_off_now();
                Ok(drain.await)
            }
        }
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<ShutdownReport>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// The open connections: each one a tracked task, told to finish its
/// in-flight request and close when the server shuts down.
#[derive(Default)]
struct Connections {
    tracker: TaskTracker,
    closing: Arc<Latch>,
}

impl Connections {
    fn serve(&self, stream: TcpStream, service: Background<Router>) {
        let closing = self.closing.clone();
        self.tracker.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), Hyper(service))
                .with_upgrades();
            let mut connection = pin!(connection);
            let served = tokio::select! {
                biased;
                served = connection.as_mut() => served,
                () = closing.wait() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::trace!("connection closed with an error: {error}");
            }
        });
    }

    /// Asks every connection to close once its in-flight request is
    /// answered; waits until `deadline` for them. Returns whether they all
    /// closed.
    async fn close(self, deadline: Instant) -> bool {
        self.closing.set();
        self.tracker.close();
        tokio::time::timeout_at(deadline.into(), self.tracker.wait())
            .await
            .is_ok()
    }
}

/// The app as a hyper service. axum's `Router` is always ready, so it is
/// called without `poll_ready`, as `axum::serve` calls it; it takes hyper's
/// request body as it is.
#[derive(Clone)]
struct Hyper(Background<Router>);

impl hyper::service::Service<http::Request<Incoming>> for Hyper {
    type Response = <Background<Router> as Service<http::Request<Incoming>>>::Response;
    type Error = <Background<Router> as Service<http::Request<Incoming>>>::Error;
    type Future = <Background<Router> as Service<http::Request<Incoming>>>::Future;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        self.0.clone().call(request)
    }
}

/// The next connection, or `None` after an error, as `axum::serve` treats
/// them: connection errors concern one client and are skipped; others (out
/// of file descriptors, say) are logged, and accepting waits a second, so
/// as not to spin. The wait is part of this future, so a shutdown signal
/// interrupts it.
async fn accept(listener: &TcpListener) -> Option<TcpStream> {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    match listener.accept().await {
        Ok((stream, _)) => Some(stream),
        Err(error) => {
            if !matches!(
                error.kind(),
                ConnectionRefused | ConnectionAborted | ConnectionReset
            ) {
                tracing::error!("accept error: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None
        }
    }
}
