//! The store's operations over HTTP, mounted in one line:
//! `app.nest("/durable", epilogue_durable::admin::router(store, runner))`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /dashboard` | 200 one self-contained HTML page (no CDN, works offline) that shows the runner and the durable queue live |
//! | `GET /runner` | 200 the runner's [`Stats`](epilogue::Stats), with its limits under `limits` |
//! | `GET /stats` | 200 `{"queued","scheduled","running","retrying","succeeded","dead","cancelled"}` |
//! | `GET /dead` | 200 `[{"task_id","task","attempts","last_error"}]`, the 1,000 most recently dead |
//! | `POST /dead/{id}/retry` | 202 `{"task_id","status":"queued"}`: one more attempt; 404 if it is not dead |
//! | `GET /tasks/{id}` | 200 the task: `id`, `task`, `state`, `attempts`, `max_attempts`, times, `output`, `last_error`; 404 if unknown |
//! | `POST /tasks/{id}/cancel` | 202 `{"task_id","status":"cancelled"}`; 404 if it is not unfinished |
//!
//! A store that cannot be read answers 503 with `Retry-After` and a JSON
//! error. Put your own authentication in front of it: it can retry and
//! cancel tasks.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use epilogue::Runner;
use serde_json::json;

use crate::error::DurableError;
use crate::store::Store;
use crate::task::TaskId;

/// The dashboard's page, before its two URLs are set.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The most dead tasks `GET /dead` lists.
const DEAD_LISTED: u32 = 1000;

/// The routes above, on `store` and `runner`.
pub fn router<S>(store: Store, runner: Runner) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        // Relative: the page reads the routes beside it, wherever the
        // router is nested.
        .route("/dashboard", dashboard("runner", "stats"))
        .route("/runner", get(move || runner_stats(runner.clone())))
        .route("/stats", get(stats))
        .route("/dead", get(dead))
        .route("/dead/{id}/retry", post(retry))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/cancel", post(cancel))
        .with_state(store)
}

/// `GET` of the dashboard page, reading the runner's stats (as `GET
/// /runner` answers them) from `runner_stats` and the durable queue's (as
/// `GET /stats`) from `durable_stats`: URLs, absolute or relative to the
/// page's. For a page at a path of your own:
/// `.route("/dashboard", admin::dashboard("/stats", "/durable/stats"))`.
pub fn dashboard<S>(runner_stats: &str, durable_stats: &str) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let page = Bytes::from(
        DASHBOARD
            .replace("__RUNNER_URL__", &js_string(runner_stats))
            .replace("__DURABLE_URL__", &js_string(durable_stats)),
    );
    get(move || {
        let page = page.clone();
        async move {
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                page,
            )
        }
    })
}

/// `text` as a JavaScript string literal that cannot end the page's
/// `<script>`.
fn js_string(text: &str) -> String {
    serde_json::Value::from(text)
        .to_string()
        .replace('<', "\\u003c")
}

async fn runner_stats(runner: Runner) -> Json<serde_json::Value> {
    let mut stats = json!(runner.stats());
    if let Some(fields) = stats.as_object_mut() {
        fields.insert("limits".to_owned(), json!(runner.limits()));
    }
    Json(stats)
}

async fn stats(State(store): State<Store>) -> Result<Response, DurableError> {
    Ok(Json(store.stats().await?).into_response())
}

async fn dead(State(store): State<Store>) -> Result<Response, DurableError> {
    let dead: Vec<_> = store
        .dead(DEAD_LISTED)
        .await?
        .iter()
        .map(|task| {
            json!({
                "task_id": task.id,
                "task": task.task,
                "attempts": task.attempts,
                "last_error": task.last_error,
            })
        })
        .collect();
    Ok(Json(dead).into_response())
}

async fn retry(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Response, DurableError> {
    match id.parse::<TaskId>() {
        Ok(id) if store.retry(id).await? => Ok(accepted(id, "queued")),
        _ => Ok(not_found("no dead task has this id")),
    }
}

async fn task(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Response, DurableError> {
    let Ok(id) = id.parse::<TaskId>() else {
        return Ok(not_found("no task has this id"));
    };
    Ok(match store.task_json(id).await? {
        Some(task) => Json(task).into_response(),
        None => not_found("no task has this id"),
    })
}

async fn cancel(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Response, DurableError> {
    match id.parse::<TaskId>() {
        Ok(id) if store.cancel(id).await? => Ok(accepted(id, "cancelled")),
        _ => Ok(not_found("no unfinished task has this id")),
    }
}

fn accepted(id: TaskId, status: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "task_id": id, "status": status })),
    )
        .into_response()
}

fn not_found(message: &str) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({ "error": message }))).into_response()
}
