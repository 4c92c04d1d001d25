//! The routes of the demo (its README is the contract), one per pattern of the reference
//! documentation.

use std::io;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRef, Query, State as Extract};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use epilogue::axum::{background, Admitted};
use epilogue::http::RequestTasks;
use epilogue::{BackgroundTask, BackgroundTasks, Runner};
use epilogue_durable::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::compression::CompressionLayer;
use tower_http::trace::{DefaultOnFailure, OnFailure, TraceLayer};
use tracing::Span;

use crate::config::TaskFlags;
use crate::durable::{self, Uploads};
use crate::input::{ApiError, Credentials, MAX_BODY_BYTES};
use crate::tasks::{
    chaos, fail, send_email_notification, write_in_file, AuditLog, Email, FailMode, Outbox,
    CHAOS_BACKOFF, CHAOS_RETRIES, CHAOS_TIMEOUT,
};

/// What the handlers share. One `Arc`: axum clones the state for every
/// request, and a clone field by field (five `Arc`s and a `PathBuf`) cost
/// 0.54 µs of CPU per request under load (`bench/perf-compare.sh`).
#[derive(Clone)]
pub struct State(Arc<Shared>);

/// What a [`State`] holds.
pub struct Shared {
    files: Files,
    runner: Runner,
    metrics: PrometheusHandle,
    store: Store,
}

impl std::ops::Deref for State {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The files the tasks write, under the data directory.
#[derive(Clone)]
pub struct Files {
    pub outbox: Outbox,
    pub log: AuditLog,
    pub uploads: Uploads,
}

impl Files {
    /// Opens (creates) the data directory and the files in it.
    ///
    /// # Errors
    ///
    /// When one cannot be created or opened; the message names it.
    pub fn open(flags: &TaskFlags) -> io::Result<Self> {
        let dir = &flags.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(Self {
            outbox: Outbox::open(dir, flags.email_delay())?,
            log: AuditLog::open(dir, flags.log_delay())?,
            uploads: Uploads::open(dir)?,
        })
    }
}

impl State {
    /// `metrics` renders what the process's recorder holds; the runner was
    /// built after it was installed.
    pub fn new(files: Files, runner: Runner, metrics: PrometheusHandle, store: Store) -> Self {
        Self(Arc::new(Shared {
            files,
            runner,
            metrics,
            store,
        }))
    }
}

// A handler that needs one part of the state takes only that part.
impl FromRef<State> for Outbox {
    fn from_ref(state: &State) -> Self {
        state.files.outbox.clone()
    }
}

impl FromRef<State> for Uploads {
    fn from_ref(state: &State) -> Self {
        state.files.uploads.clone()
    }
}

impl FromRef<State> for Store {
    fn from_ref(state: &State) -> Self {
        state.store.clone()
    }
}

/// The body of every 201 of the demo.
#[derive(Serialize)]
pub struct Message {
    message: &'static str,
}

/// A 201 with `{"message": ...}`.
pub type Created = (StatusCode, Json<Message>);

/// A 201 with `{"message": message}`.
pub fn created(message: &'static str) -> Created {
    (StatusCode::CREATED, Json(Message { message }))
}

pub fn router(state: State) -> Router {
    let outbox = state.files.outbox.clone();
    let log = state.files.log.clone();
    // Route-level tasks, copied for every request: Esmerald's
    // `@post(..., background=...)`.
    let account_created = BackgroundTask::new(
        send_email_notification,
        (outbox.clone(), None, "Account created"),
    );
    let account_created_and_logged = BackgroundTasks::from([
        account_created.clone(),
        BackgroundTask::new(write_in_file, (log, None)),
    ]);

    let routes = Router::new()
        .route(
            "/handler/single",
            post(create_user.layer(background(account_created))),
        )
        .route(
            "/handler/list",
            post(create_user.layer(background(account_created_and_logged))),
        )
        // Handlers that return their tasks take `Admitted`, which refuses
        // them with 503 before they run when the runner is full.
        .route("/response/single", post(response_single))
        .route("/response/list", post(response_list))
        .route("/response/add-task", post(response_add_task))
        .route("/fail", post(failing))
        .route("/chaos", post(chaos_route))
        // The extractor admits the request itself.
        .route("/extractor", post(extractor))
        // Durable tasks: stored before the response is sent.
        .route("/durable/register", post(durable::register))
        .route("/durable/fail", post(durable::fail))
        // Streamed to disk, with its own limit (10 MiB).
        .route("/files", post(durable::upload))
        .route("/files/{id}", get(durable::file_status))
        // The store's operations, as the library serves them.
        .nest(
            "/durable",
            epilogue_durable::admin::router(state.store.clone(), state.runner.clone()),
        )
        .route("/outbox", get(outbox_list))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        // The library's page, reading the demo's own routes.
        .route(
            "/dashboard",
            epilogue_durable::admin::dashboard("/stats", "/durable/stats"),
        )
        .route("/healthz", get(healthz))
        .with_state(state);
    with_middleware(routes)
}

/// The middleware every route is served behind, as a production service
/// would be: tracing outside, compression inside, and request bodies of at
/// most [`MAX_BODY_BYTES`] (axum's default is 2 MiB).
///
/// One `layer` call for the three: each `Router::layer` boxes every route
/// once more, and axum clones each box for every request. Three calls cost
/// 3,490 instructions a request more than one, 7 % of a request (49,394
/// against 45,906, `bench/profile.sh 1000`).
pub fn with_middleware(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http().on_failure(QuietOverload::default()))
            .layer(CompressionLayer::new())
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
    )
}

/// tower-http's [`DefaultOnFailure`] (an ERROR line per failed response),
/// but for 503 Service Unavailable: the demo answers 503 when its runner is
/// full, as designed, at the rate the load comes in; one ERROR line per
/// refusal would make the log grow with the load rather than with what went
/// wrong (`GET /stats` counts them: `refused`). Every other 5xx and every
/// error is still logged at ERROR.
#[derive(Clone, Default)]
pub struct QuietOverload(DefaultOnFailure);

impl OnFailure<ServerErrorsFailureClass> for QuietOverload {
    fn on_failure(&mut self, failure: ServerErrorsFailureClass, latency: Duration, span: &Span) {
        if !matches!(
            failure,
            ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE)
        ) {
            self.0.on_failure(failure, latency, span);
        }
    }
}

/// `GET /healthz`.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `POST /handler/*`: the tasks are on the route.
async fn create_user(_: Credentials) -> Created {
    created("Created")
}

/// `POST /response/single`: one task returned with the response.
async fn response_single(
    _: Admitted,
    Extract(outbox): Extract<Outbox>,
    user: Credentials,
) -> (StatusCode, BackgroundTask, Json<Message>) {
    let task = BackgroundTask::new(
        send_email_notification,
        (outbox, Some(user.email), "Thank you for registering."),
    );
    let (status, body) = created("Email sent");
    (status, task, body)
}

/// `POST /response/list`: a list returned with the response.
async fn response_list(
    _: Admitted,
    Extract(state): Extract<State>,
    user: Credentials,
) -> (StatusCode, BackgroundTasks, Json<Message>) {
    let tasks = BackgroundTasks::from([
        BackgroundTask::new(
            send_email_notification,
            (
                state.files.outbox.clone(),
                Some(user.email.clone()),
                "Thank you for registering.",
            ),
        ),
        BackgroundTask::new(write_in_file, (state.files.log.clone(), Some(user.email))),
    ]);
    let (status, body) = created("Email sent");
    (status, tasks, body)
}

/// `POST /response/add-task`: the same list, grown with `add_task`.
async fn response_add_task(
    _: Admitted,
    Extract(state): Extract<State>,
    user: Credentials,
) -> (StatusCode, BackgroundTasks, Json<Message>) {
    let mut tasks = BackgroundTasks::new();
    tasks.add_task(
        send_email_notification,
        (
            state.files.outbox.clone(),
            Some(user.email.clone()),
            "Thank you for registering.",
        ),
    );
    tasks.add_task(write_in_file, (state.files.log.clone(), Some(user.email)));
    let (status, body) = created("Email sent");
    (status, tasks, body)
}

/// `POST /extractor`: FastAPI's `background_tasks: BackgroundTasks` parameter.
async fn extractor(
    Extract(state): Extract<State>,
    tasks: RequestTasks,
    user: Credentials,
) -> Created {
    tasks.add_task(
        send_email_notification,
        (state.files.outbox.clone(), Some(user.email), "Welcome."),
    );
    created("Email sent")
}

#[derive(Deserialize)]
struct FailQuery {
    mode: FailMode,
}

/// `POST /fail?mode=error|panic`: a failing task, then one that still runs.
async fn failing(
    _: Admitted,
    Extract(state): Extract<State>,
    query: Result<Query<FailQuery>, axum::extract::rejection::QueryRejection>,
    _: Credentials,
) -> Result<(StatusCode, BackgroundTasks, Json<Message>), ApiError> {
    let Query(FailQuery { mode }) = query?;
    let tasks = BackgroundTasks::from([
        BackgroundTask::new(fail, (mode,)),
        BackgroundTask::new(
            send_email_notification,
            (state.files.outbox.clone(), None, "After failure"),
        ),
    ]);
    let (status, body) = created("Created");
    Ok((status, tasks, body))
}

/// `POST /chaos`: a task whose every attempt succeeds, fails, panics or
/// hangs past its timeout, as [`crate::tasks::chaos_outcome`] draws it, with
/// retries; then an email that is sent whatever the first task did.
async fn chaos_route(
    _: Admitted,
    Extract(state): Extract<State>,
    user: Credentials,
) -> (StatusCode, BackgroundTasks, Json<Message>) {
    let attempts = Arc::new(AtomicU32::new(0));
    let timeout = CHAOS_TIMEOUT.saturating_add(state.files.outbox.delay());
    let tasks = BackgroundTasks::from([
        BackgroundTask::new(
            chaos,
            (state.files.outbox.clone(), user.email.clone(), attempts),
        )
        .name("chaos")
        .retry(CHAOS_RETRIES, CHAOS_BACKOFF)
        .timeout(timeout),
        BackgroundTask::new(
            send_email_notification,
            (state.files.outbox.clone(), Some(user.email), "Chaos over."),
        ),
    ]);
    let (status, body) = created("Created");
    (status, tasks, body)
}

/// `GET /outbox`: the most recent emails, in the order sent.
async fn outbox_list(Extract(state): Extract<State>) -> Json<Vec<Email>> {
    Json(state.files.outbox.recent())
}

/// `GET /metrics`: the runner's counters, gauges and histograms in
/// Prometheus' text format.
async fn metrics(
    Extract(state): Extract<State>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    state.runner.record_metrics();
    // A store that is down shows as `epilogue_durable_store_up 0`; the
    // runner's metrics are still served.
    if let Err(error) = state.store.record_metrics().await {
        tracing::warn!(%error, "cannot read the durable store for /metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// `GET /stats`: the runner's counters, and its limits under `limits`
/// (every counter stays at the top level).
async fn stats(Extract(state): Extract<State>) -> Json<serde_json::Value> {
    Json(stats_json(&state.runner))
}

/// The body of `GET /stats`: the runner's counters, and its limits.
pub fn stats_json(runner: &Runner) -> serde_json::Value {
    let mut stats =
        serde_json::to_value(runner.stats()).expect("Stats serialises to a JSON object");
    let limits = serde_json::to_value(runner.limits()).expect("Limits serialises to a JSON object");
    if let Some(fields) = stats.as_object_mut() {
        fields.insert("limits".to_owned(), limits);
    }
    stats
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(failure: ServerErrorsFailureClass) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            QuietOverload::default().on_failure(failure, Duration::from_millis(1), &Span::none());
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_503_is_not_an_error_line_but_other_failures_are() {
        assert_eq!(
            logged(ServerErrorsFailureClass::StatusCode(
                StatusCode::SERVICE_UNAVAILABLE
            )),
            ""
        );
        for failure in [
            ServerErrorsFailureClass::StatusCode(StatusCode::INTERNAL_SERVER_ERROR),
            ServerErrorsFailureClass::StatusCode(StatusCode::BAD_GATEWAY),
            ServerErrorsFailureClass::Error("connection reset".to_owned()),
        ] {
            let what = failure.to_string();
            let line = logged(failure);
            assert!(
                line.contains("ERROR") && line.contains("response failed"),
                "{what}: {line:?}"
            );
        }
    }
}
