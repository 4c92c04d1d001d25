//! axum integration: tasks as response parts, the `BackgroundTasks`
//! extractor, route-level tasks, and a `serve` that drains on shutdown.
//!
//! | you write | what it does |
//! |---|---|
//! | `(BackgroundTask::new(..), Json(..))` returned from a handler | the response's own tasks |
//! | `tasks: BackgroundTasks` as a handler parameter, then `tasks.add_task(..)` | tasks run after this handler's response (FastAPI style) |
//! | `post(handler.layer(background(..)))` | route-level tasks, a fresh copy per request |
//! | `post(handler.layer(admission()))` | `503` before the handler when the runner is full |
//! | `epilogue::axum::serve(listener, app, runner)` | serves `app` with the executing layer outside it, and drains on Ctrl-C / SIGTERM |
//!
//! The executing [`BackgroundLayer`] must wrap the whole `Router`: inside it,
//! axum's HEAD handling and route-level layers would see bodies dropped
//! before they are sent. [`serve`] puts it there, so it cannot be misplaced;
//! a service served another way wraps the router itself:
//! `BackgroundLayer::new(runner).layer(router)`.
//!
//! Route-level layers go on the handler (`handler.layer(..)`, axum's
//! `Handler::layer`) or on the method router (`post(handler).layer(..)`); both
//! work. On the handler is cheaper: axum boxes and clones a method router's
//! layered service for every request, a handler's layer is built in place.

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use axum::Router;
use http::request::Parts;
use tokio::net::TcpListener;
use tower_layer::Layer;

use crate::http::{
    add_or_attach, with_current, BackgroundLayer, ExtractedSink, Origin, RouteTasksLayer,
};
use crate::runner::{Refused, Runner};
use crate::shutdown::ShutdownReport;
use crate::task::BackgroundTask;
use crate::tasks::BackgroundTasks;

/// Route-level tasks: `post(create_user.layer(background(task)))`.
///
/// Every request gets a fresh copy of `tasks`, run after a successful
/// response (status below 400; see [`RouteTasksLayer::always`]) and before
/// the tasks the handler adds itself. The request is refused with `503`
/// before its handler runs while the runner is full.
///
/// ```
/// use axum::{handler::Handler, routing::post, Router};
/// use epilogue::{axum::background, BackgroundTask, BackgroundTasks};
///
/// async fn send_email(to: Option<String>, message: &'static str) { /* ... */ }
/// fn write_in_file(email: Option<String>) { /* ... */ }
/// async fn create_user() -> &'static str { "Created" }
///
/// let app: Router = Router::new()
///     .route(
///         "/register",
///         post(create_user.layer(background(BackgroundTask::new(send_email, (None, "Account created"))))),
///     )
///     .route(
///         "/register-and-log",
///         post(create_user).layer(background(BackgroundTasks::from([
///             BackgroundTask::new(send_email, (None, "Account created")),
///             BackgroundTask::new(write_in_file, (None,)),
///         ]))),
///     );
/// ```
pub fn background(tasks: impl Into<BackgroundTasks>) -> RouteTasksLayer {
    RouteTasksLayer::new(tasks)
}

/// Admission only: `post(handler.layer(admission()))` refuses requests with
/// `503` and `Retry-After` before the handler runs while the runner is full.
///
/// Add it to routes whose handlers return tasks in their response: without
/// it, such tasks are still run (they are promised once the handler has
/// answered), but past the runner's limits. Routes with
/// [`background`] or the [`BackgroundTasks`] extractor are admitted already.
pub fn admission() -> RouteTasksLayer {
    RouteTasksLayer::admission()
}

impl IntoResponseParts for BackgroundTask {
    type Error = Infallible;

    fn into_response_parts(self, res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        BackgroundTasks::from(self).into_response_parts(res)
    }
}

impl IntoResponseParts for BackgroundTasks {
    type Error = Infallible;

    fn into_response_parts(mut self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        add_or_attach(Origin::Response, self.take(), res.extensions_mut());
        Ok(res)
    }
}

/// The tasks of this handler's response, FastAPI style: take
/// `mut tasks: BackgroundTasks` as a parameter and `add_task` to it; the tasks
/// run after the handler's response has been sent, whatever its status.
///
/// Extracting it takes the request's place in the runner, so when the runner
/// is full the request is refused with `503` before the handler runs. A
/// handler that panics schedules nothing.
///
/// ```
/// use axum::{routing::post, Json};
/// use epilogue::BackgroundTasks;
///
/// async fn send_email(to: String, message: &'static str) { /* ... */ }
///
/// async fn register(mut tasks: BackgroundTasks, Json(email): Json<String>) -> &'static str {
///     tasks.add_task(send_email, (email, "Welcome."));
///     "Email sent"
/// }
/// # let _: axum::Router = axum::Router::new().route("/register", post(register));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for BackgroundTasks {
    type Rejection = BackgroundRejection;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let runner = with_current(|scope| {
            scope
                .admit()
                .map(|()| scope.runner().clone())
                .map_err(|refused| BackgroundRejection::Refused {
                    refused,
                    retry_after: scope.runner().retry_after(),
                })
        })
        .ok_or(BackgroundRejection::MissingLayer)??;
        let mut tasks = BackgroundTasks::new();
        tasks.sink = Some(Arc::new(ExtractedSink(runner)));
        Ok(tasks)
    }
}

/// Why the [`BackgroundTasks`] extractor refused a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackgroundRejection {
    /// The runner is full or shutting down: `503` with `Retry-After`.
    #[error("{refused}")]
    Refused {
        /// Why.
        refused: Refused,
        /// When to try again.
        retry_after: Duration,
    },
    /// No [`BackgroundLayer`] around the router: `500`. Serve the app with
    /// [`serve`], or wrap it in `BackgroundLayer::new(runner)`.
    #[error("{}", crate::http::MISSING_LAYER)]
    MissingLayer,
}

impl IntoResponse for BackgroundRejection {
    fn into_response(self) -> Response {
        match self {
            BackgroundRejection::Refused {
                refused,
                retry_after,
            } => crate::http::refused(refused, retry_after),
            BackgroundRejection::MissingLayer => crate::http::missing_layer(),
        }
    }
}

/// Serves `app` with `runner` running its background tasks, and shuts down
/// gracefully: see [`Serve`].
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
/// be) and serves it with `axum::serve`. When the shutdown signal comes
/// (Ctrl-C or SIGTERM unless [`with_graceful_shutdown`](Serve::with_graceful_shutdown)
/// says otherwise) it:
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
        let signal = signal.unwrap_or_else(|| Box::pin(crate::shutdown_signal()));
        let (fired_tx, fired_rx) = tokio::sync::watch::channel(None::<Instant>);
        let closing = runner.clone();
        let signal = async move {
            signal.await;
            closing.close();
            fired_tx.send_replace(Some(Instant::now()));
        };

        // axum::serve wants axum's own body type: box ours into it.
        let service = tower::ServiceExt::<Request>::map_response(
            BackgroundLayer::new(runner.clone()).layer(app),
            |response: http::Response<_>| response.map(Body::new),
        );
        let make_service = axum::ServiceExt::<Request>::into_make_service(service);
        let server = axum::serve(listener, make_service).with_graceful_shutdown(signal);

        // Connections that outlive the grace period are not waited for.
        let mut overdue_rx = fired_rx.clone();
        let overdue = async move {
            let fired = overdue_rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|fired| *fired);
            match fired {
                Some(fired) => tokio::time::sleep_until((fired + grace).into()).await,
                // The sender lives as long as the server: never reached.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = server => result?,
            () = overdue => {
                tracing::warn!("connections still open after the grace period; closing them");
            }
        }
        let fired = fired_rx.borrow().unwrap_or_else(Instant::now);
        let deadline = fired + grace;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !second_signal {
            return Ok(runner.shutdown(remaining).await);
        }
        let drain = runner.shutdown(remaining);
        tokio::pin!(drain);
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
