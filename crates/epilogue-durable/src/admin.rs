//! The store's operations over HTTP, mounted in one line:
//! `app.nest("/durable", epilogue_durable::admin::router(store))`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /stats` | 200 `{"queued","scheduled","running","retrying","succeeded","dead","cancelled"}` |
//! | `GET /dead` | 200 `[{"task_id","task","attempts","last_error"}]`, the 1,000 most recently dead |
//! | `POST /dead/{id}/retry` | 202 `{"task_id","status":"queued"}`: one more attempt; 404 if it is not dead |
//! | `GET /tasks/{id}` | 200 the task: `id`, `task`, `state`, `attempts`, `max_attempts`, times, `output`, `last_error`; 404 if unknown |
//! | `POST /tasks/{id}/cancel` | 202 `{"task_id","status":"cancelled"}`; 404 if it is not unfinished |
//!
//! A store that cannot be read answers 503 with `Retry-After` and a JSON
//! error. Put your own authentication in front of it: it can retry and
//! cancel tasks.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::{DurableError, Store, TaskId};

/// The most dead tasks `GET /dead` lists.
const DEAD_LISTED: u32 = 1000;

/// The routes above, on `store`.
pub fn router<S>(store: Store) -> Router<S> {
    Router::new()
        .route("/stats", get(stats))
        .route("/dead", get(dead))
        .route("/dead/{id}/retry", post(retry))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/cancel", post(cancel))
        .with_state(store)
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
