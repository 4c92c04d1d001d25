//! Durable tasks from axum handlers, through `epilogue::axum::serve(..)
//! .commit(store)`: added ones are stored after a success, before the
//! response leaves; returned ones whatever the status; none after an error.

mod common;

use std::future::IntoFuture;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::{join, mail, recv, task_in, task_info, total, Mail, MailService};
use epilogue::{Runner, ShutdownReport};
use epilogue_durable::{DurableError, DurableTasks, RequestDurable, TaskId, TaskState};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

async fn added(durable: RequestDurable) -> Result<StatusCode, DurableError> {
    durable.add(&mail("added"))?;
    Ok(StatusCode::CREATED)
}

async fn added_then_refused(durable: RequestDurable) -> Result<StatusCode, DurableError> {
    durable.add(&mail("refused"))?;
    Ok(StatusCode::BAD_REQUEST)
}

async fn returned() -> Result<(StatusCode, DurableTasks), DurableError> {
    let mut tasks = DurableTasks::new();
    tasks.add(&mail("returned"))?;
    Ok((StatusCode::CREATED, tasks))
}

async fn returned_with_an_error() -> Result<(StatusCode, DurableTasks, &'static str), DurableError>
{
    let mut tasks = DurableTasks::new();
    tasks.add(&mail("returned with a 400"))?;
    Ok((StatusCode::BAD_REQUEST, tasks, "no such user"))
}

async fn enqueued(durable: RequestDurable) -> Result<(StatusCode, String), DurableError> {
    let id = durable.enqueue(&mail("enqueued")).await?;
    Ok((StatusCode::CREATED, id.to_string()))
}

fn app() -> Router {
    Router::new()
        .route("/added", post(added))
        .route("/refused", post(added_then_refused))
        .route("/returned", post(returned))
        .route("/returned-400", post(returned_with_an_error))
        .route("/enqueued", post(enqueued))
}

/// An axum server on 127.0.0.1 in front of a [`MailService`].
struct Server {
    mail: MailService,
    stop: oneshot::Sender<()>,
    served: JoinHandle<ShutdownReport>,
}

impl Server {
    async fn start(commit: bool) -> Self {
        let runner = Runner::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mail = MailService::open(&runner, listener.local_addr().unwrap()).await;
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = epilogue::axum::serve(listener, app(), runner).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        let serve = if commit {
            serve.commit(mail.store.clone())
        } else {
            serve
        };
        let served = tokio::spawn(serve.into_future());
        Self { mail, stop, served }
    }

    async fn stop(self) -> ShutdownReport {
        let _ = self.stop.send(());
        join(self.served, "the server to stop").await
    }
}

impl std::ops::Deref for Server {
    type Target = MailService;

    fn deref(&self) -> &MailService {
        &self.mail
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut MailService {
        &mut self.mail
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_added_by_a_successful_handler_is_stored_before_the_response_and_runs() {
    let mut server = Server::start(true).await;
    server.post_expecting("/added", StatusCode::CREATED).await;
    // On disk before the response left: no wait.
    assert_eq!(server.stored().await, 1);
    let id = server.sent_to("added").await;
    task_in::<Mail>(&server.store, id, TaskState::Succeeded).await;
    assert!(server.stop().await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_added_by_a_handler_that_answers_an_error_is_not_stored() {
    let mut server = Server::start(true).await;
    server
        .post_expecting("/refused", StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(server.stored().await, 0);

    // A success after it stores its own task only, and that one runs: the
    // refused one was never stored, not merely late.
    server.post_expecting("/added", StatusCode::CREATED).await;
    server.sent_to("added").await;
    let stats = server.store.stats().await.unwrap();
    assert_eq!(total(&stats), 1, "{stats:?}");
    assert!(server.stop().await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_returned_with_the_response_are_stored_whatever_its_status() {
    let mut server = Server::start(true).await;
    server
        .post_expecting("/returned", StatusCode::CREATED)
        .await;
    assert_eq!(server.stored().await, 1);
    let id = server.sent_to("returned").await;
    task_in::<Mail>(&server.store, id, TaskState::Succeeded).await;

    server
        .post_expecting("/returned-400", StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(server.stored().await, 2);
    server.sent_to("returned with a 400").await;
    assert!(server.stop().await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_enqueued_by_a_handler_has_its_id_in_the_response() {
    let mut server = Server::start(true).await;
    let response = server
        .post_expecting("/enqueued", StatusCode::CREATED)
        .await;
    let id: TaskId = response.text().await.unwrap().parse().unwrap();
    assert_eq!(server.sent_to("enqueued").await, id);
    task_in::<Mail>(&server.store, id, TaskState::Succeeded).await;
    assert!(server.stop().await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_requests_trace_context_is_stored_with_its_tasks() {
    let mut server = Server::start(true).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut ids = Vec::new();
    for (path, header) in [
        ("/enqueued", Some(traceparent)),
        ("/added", Some(traceparent)),
        ("/enqueued", None),
        ("/enqueued", Some("not-a-trace-context")),
    ] {
        let mut request = server.client.post(server.url(path));
        if let Some(header) = header {
            request = request.header("traceparent", header);
        }
        assert!(request.send().await.unwrap().status().is_success());
        ids.push(recv(&mut server.sent, "the task to run").await.0);
    }
    let mut stored = Vec::new();
    for id in ids {
        let task = task_info::<Mail>(&server.store, id).await;
        stored.push(task.traceparent);
    }
    let expected = Some(traceparent.to_owned());
    assert_eq!(stored, [expected.clone(), expected, None, None]);
    assert!(server.stop().await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_store_on_the_layer_a_handler_that_needs_it_answers_500() {
    let server = Server::start(false).await;
    let response = server
        .post_expecting("/added", StatusCode::INTERNAL_SERVER_ERROR)
        .await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "durable_misconfigured");
    assert_eq!(server.stored().await, 0);
    assert!(server.stop().await.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_cannot_be_written_answers_503_in_place_of_the_handlers_response() {
    let server = Server::start(true).await;
    server.db.delete_under(&server.store).await;
    for path in ["/added", "/returned", "/enqueued"] {
        let response = server
            .post_expecting(path, StatusCode::SERVICE_UNAVAILABLE)
            .await;
        assert!(response.headers().contains_key("retry-after"), "{path}");
    }
    server.stop().await;
}
