//! The routes of the demo (crates/demo/README.md is the contract), one per
//! pattern of the reference documentation, on actix-web.

use std::future::Future;
use std::pin::Pin;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Compress;
use actix_web::{web, App, FromRequest, HttpRequest, HttpResponse, Responder, ResponseError};
use epilogue::actix::{background, with_tasks, Admitted, Background};
use epilogue::http::RequestTasks;
use epilogue::{BackgroundTask, BackgroundTasks, Runner};
use epilogue_demo::input::{ApiError, Credentials, MAX_BODY_BYTES};
use epilogue_demo::tasks::{
    fail, send_email_notification, write_in_file, AuditLog, FailMode, Outbox,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder, TracingLogger};

/// The files the tasks write, under the data directory.
#[derive(Clone)]
pub struct Files {
    pub outbox: Outbox,
    pub log: AuditLog,
}

/// The app of one actix-web worker: the routes behind tracing and
/// compression, the executing middleware around them.
pub fn app(
    files: Files,
    runner: Runner,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    // Route-level tasks, copied for every request: Esmerald's
    // `@post(..., background=...)`.
    let account_created = BackgroundTask::new(
        send_email_notification,
        (files.outbox.clone(), None, "Account created"),
    );
    let account_created_and_logged = BackgroundTasks::from([
        account_created.clone(),
        BackgroundTask::new(write_in_file, (files.log.clone(), None)),
    ]);
    App::new()
        .app_data(web::Data::new(files))
        .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .service(
            web::resource("/handler/single")
                .wrap(background(account_created))
                .route(web::post().to(create_user)),
        )
        .service(
            web::resource("/handler/list")
                .wrap(background(account_created_and_logged))
                .route(web::post().to(create_user)),
        )
        // Handlers that return their tasks take `Admitted`, which refuses
        // them with 503 before they run when the runner is full.
        .route("/response/single", web::post().to(response_single))
        .route("/response/list", web::post().to(response_list))
        .route("/response/add-task", web::post().to(response_add_task))
        .route("/fail", web::post().to(failing))
        // The extractor admits the request itself.
        .route("/extractor", web::post().to(extractor))
        .route("/outbox", web::get().to(outbox_list))
        .route("/stats", web::get().to(stats))
        .route("/healthz", web::get().to(healthz))
        // The last `wrap` is the outermost: tracing, then compression, then
        // the executing middleware, as a production service would be served.
        .wrap(Background::new(runner.clone()))
        .app_data(web::Data::new(runner))
        .wrap(Compress::default())
        .wrap(TracingLogger::<RequestLog>::new())
}

/// tracing-actix-web's request span, and one `debug` event when the
/// response is ready, as tower-http's `TraceLayer` logs in the axum demo:
/// `RUST_LOG=debug` shows every request, the default level none.
struct RequestLog;

impl RootSpanBuilder for RequestLog {
    fn on_request_start(request: &ServiceRequest) -> tracing::Span {
        DefaultRootSpanBuilder::on_request_start(request)
    }

    fn on_request_end<B: MessageBody>(
        span: tracing::Span,
        outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        if let Ok(response) = outcome {
            let status = response.status().as_u16();
            span.in_scope(|| tracing::debug!(status, "finished processing request"));
        }
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

/// A 201 with `{"message": message}`.
fn created(message: &'static str) -> HttpResponse {
    HttpResponse::Created().json(json!({ "message": message }))
}

/// `POST /handler/*`: the tasks are on the route.
async fn create_user(_: Signup) -> HttpResponse {
    created("Created")
}

/// `POST /response/single`: one task returned with the response.
async fn response_single(_: Admitted, files: web::Data<Files>, user: Signup) -> impl Responder {
    let task = BackgroundTask::new(
        send_email_notification,
        (
            files.outbox.clone(),
            Some(user.0.email),
            "Thank you for registering.",
        ),
    );
    with_tasks(created("Email sent"), task)
}

/// `POST /response/list`: a list returned with the response.
async fn response_list(_: Admitted, files: web::Data<Files>, user: Signup) -> impl Responder {
    let email = user.0.email;
    let tasks = BackgroundTasks::from([
        BackgroundTask::new(
            send_email_notification,
            (
                files.outbox.clone(),
                Some(email.clone()),
                "Thank you for registering.",
            ),
        ),
        BackgroundTask::new(write_in_file, (files.log.clone(), Some(email))),
    ]);
    with_tasks(created("Email sent"), tasks)
}

/// `POST /response/add-task`: the same list, grown with `add_task`.
async fn response_add_task(_: Admitted, files: web::Data<Files>, user: Signup) -> impl Responder {
    let email = user.0.email;
    let mut tasks = BackgroundTasks::new();
    tasks.add_task(
        send_email_notification,
        (
            files.outbox.clone(),
            Some(email.clone()),
            "Thank you for registering.",
        ),
    );
    tasks.add_task(write_in_file, (files.log.clone(), Some(email)));
    with_tasks(created("Email sent"), tasks)
}

/// `POST /extractor`: FastAPI's `background_tasks: BackgroundTasks` parameter.
async fn extractor(tasks: RequestTasks, files: web::Data<Files>, user: Signup) -> HttpResponse {
    tasks.add_task(
        send_email_notification,
        (files.outbox.clone(), Some(user.0.email), "Welcome."),
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
    files: web::Data<Files>,
    query: Result<web::Query<FailQuery>, actix_web::Error>,
    _: Signup,
) -> Result<impl Responder, Rejected> {
    let mode = query
        .map_err(|error| {
            Rejected(ApiError::new(
                axum_status(StatusCode::BAD_REQUEST),
                format!("{error}; expected `?mode=error` or `?mode=panic`"),
            ))
        })?
        .mode;
    let tasks = BackgroundTasks::from([
        BackgroundTask::new(fail, (mode,)),
        BackgroundTask::new(
            send_email_notification,
            (files.outbox.clone(), None, "After failure"),
        ),
    ]);
    Ok(with_tasks(created("Created"), tasks))
}

/// `GET /outbox`: the most recent emails, oldest first.
async fn outbox_list(files: web::Data<Files>) -> HttpResponse {
    HttpResponse::Ok().json(files.outbox.recent())
}

/// `GET /stats`: the runner's counters, and its limits under `limits`.
async fn stats(runner: web::Data<Runner>) -> HttpResponse {
    HttpResponse::Ok().json(epilogue_demo::app::stats_json(&runner))
}

/// `GET /healthz`.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The sign-up of every POST route, read and checked as the axum demo
/// does: `Content-Type: application/json` (415 otherwise), at most
/// [`MAX_BODY_BYTES`] (413), valid JSON (400), then the fields (422).
struct Signup(Credentials);

impl FromRequest for Signup {
    type Error = Rejected;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Rejected>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(is_json);
        let body = web::Bytes::from_request(request, payload);
        Box::pin(async move {
            if !is_json {
                return Err(Rejected::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "expected a request with `Content-Type: application/json`".to_owned(),
                ));
            }
            let body =
                body.await
                    .map_err(|error| match error.as_response_error().status_code() {
                        StatusCode::PAYLOAD_TOO_LARGE => Rejected::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024),
                        ),
                        status => Rejected::new(status, format!("cannot read the body: {error}")),
                    })?;
            // serde_json's syntax errors name a position, never a value.
            let value: Value = serde_json::from_slice(&body).map_err(|error| {
                Rejected::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {error}"),
                )
            })?;
            Credentials::from_json(&value).map(Signup).map_err(Rejected)
        })
    }
}

/// `application/json`, or a `+json` type, whatever its parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence
        .strip_prefix("application/")
        .is_some_and(|subtype| subtype.eq_ignore_ascii_case("json") || subtype.ends_with("+json"))
}

/// Bad input: a 4xx with a JSON body `{"error": "..."}` that says what to
/// fix, as the axum demo's [`ApiError`].
#[derive(Debug)]
pub struct Rejected(ApiError);

impl Rejected {
    fn new(status: StatusCode, message: String) -> Self {
        Self(ApiError::new(axum_status(status), message))
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl ResponseError for Rejected {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status().as_u16()).unwrap_or(StatusCode::BAD_REQUEST)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({ "error": self.0.message() }))
    }
}

/// actix-web's status (`http` 0.2) as the axum demo's (`http` 1).
fn axum_status(status: StatusCode) -> http::StatusCode {
    http::StatusCode::from_u16(status.as_u16()).unwrap_or(http::StatusCode::BAD_REQUEST)
}
