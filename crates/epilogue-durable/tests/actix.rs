//! Durable tasks from actix-web handlers, through
//! `epilogue::actix::Background::new(runner).commit(store)`: added ones are
//! stored after a success, before the response leaves; none after an
//! error; a store that cannot be written answers 503.

#![cfg(feature = "actix")]

mod common;

use actix_web::{web, App, HttpResponse, HttpServer};
use common::{mail, task_in, task_info, Mail, MailService};
use epilogue::actix::Background;
use epilogue::Runner;
use epilogue_durable::{DurableError, RequestDurable, TaskId, TaskState};
use reqwest::StatusCode;

async fn added(durable: RequestDurable) -> Result<HttpResponse, DurableError> {
    durable.add(&mail("added"))?;
    Ok(HttpResponse::Created().finish())
}

async fn added_then_refused(durable: RequestDurable) -> Result<HttpResponse, DurableError> {
    durable.add(&mail("refused"))?;
    Ok(HttpResponse::BadRequest().finish())
}

async fn enqueued(durable: RequestDurable) -> Result<HttpResponse, DurableError> {
    let id = durable.enqueue(&mail("enqueued")).await?;
    Ok(HttpResponse::Created().body(id.to_string()))
}

/// An actix-web server (one worker) in front of a [`MailService`].
struct Server {
    mail: MailService,
    runner: Runner,
    handle: actix_web::dev::ServerHandle,
}

impl Server {
    async fn start(commit: bool) -> Self {
        let runner = Runner::builder()
            .runtime(tokio::runtime::Handle::current())
            .build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mail = MailService::open(&runner, listener.local_addr().unwrap()).await;
        let background = Background::new(runner.clone());
        let background = if commit {
            background.commit(mail.store.clone())
        } else {
            background
        };
        let server = HttpServer::new(move || {
            App::new()
                .route("/added", web::post().to(added))
                .route("/refused", web::post().to(added_then_refused))
                .route("/enqueued", web::post().to(enqueued))
                .wrap(background.clone())
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            mail,
            runner,
            handle,
        }
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        common::shut_down(&self.runner).await;
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
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_added_by_a_handler_that_answers_an_error_is_not_stored() {
    let mut server = Server::start(true).await;
    server
        .post_expecting("/refused", StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(server.stored().await, 0);
    server.post_expecting("/added", StatusCode::CREATED).await;
    server.sent_to("added").await;
    assert_eq!(server.stored().await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_enqueued_by_a_handler_has_its_id_and_the_requests_trace_context() {
    let mut server = Server::start(true).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = server
        .client
        .post(server.url("/enqueued"))
        .header("traceparent", traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id: TaskId = response.text().await.unwrap().parse().unwrap();
    assert_eq!(server.sent_to("enqueued").await, id);
    let task = task_info::<Mail>(&server.store, id).await;
    assert_eq!(task.traceparent.as_deref(), Some(traceparent));
    task_in::<Mail>(&server.store, id, TaskState::Succeeded).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_store_on_the_middleware_a_handler_that_needs_it_answers_500() {
    let server = Server::start(false).await;
    let response = server
        .post_expecting("/added", StatusCode::INTERNAL_SERVER_ERROR)
        .await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "durable_misconfigured");
    assert_eq!(server.stored().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_cannot_be_written_answers_503_in_place_of_the_handlers_response() {
    let server = Server::start(true).await;
    server.db.delete_under(&server.store).await;
    for path in ["/added", "/enqueued"] {
        let response = server
            .post_expecting(path, StatusCode::SERVICE_UNAVAILABLE)
            .await;
        assert_eq!(response.headers()["retry-after"], "1", "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["reason"], "store_unavailable", "{path}");
    }
    server.handle.stop(true).await;
}
