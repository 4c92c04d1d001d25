//! `bench-plain-actix`: the background-task routes of `epilogue-demo`'s
//! contract, written the way an actix-web user writes them today, without
//! epilogue: `HttpServer`, `web::Json<serde_json::Value>` with the contract's
//! checks, `middleware::Compress`, tracing-actix-web's `TracingLogger`, and
//! the tasks fired with `actix_web::rt::spawn` (the blocking one through
//! `web::block`).
//!
//! It shares no code with the demo: what bench/actix.sh measures against it
//! is the whole cost of choosing `epilogue-demo-actix`, against what actix
//! users write instead.
//!
//! Same command line as the demo (`--addr`, `--data-dir`,
//! `--email-delay-ms`, `--log-delay-ms`, `--shutdown-grace-s`; the runner's
//! `--max-running` and `--max-pending` are accepted and ignored); prints
//! `listening on http://HOST:PORT` on stdout; on SIGTERM or Ctrl-C actix
//! stops accepting, finishes the responses in flight and returns from `main`
//! (exit 0), dropping whatever spawned task is still running, as
//! `actix_web::rt::spawn` does.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::error::InternalError;
use actix_web::middleware::Compress;
use actix_web::{rt, web, App, HttpResponse, HttpServer, ResponseError};
use chrono::{Local, SecondsFormat, Utc};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing_actix_web::TracingLogger;
use tracing_subscriber::EnvFilter;

/// The demo's background-task routes, in plain actix-web with
/// `actix_web::rt::spawn`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    /// Listen address, HOST:PORT; port 0 picks a free port.
    #[arg(long, env = "EPILOGUE_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,

    /// Where outbox.jsonl and log.txt are written (created if missing).
    #[arg(long, env = "EPILOGUE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Simulated time to send one email (an async sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_EMAIL_DELAY_MS", default_value_t = 0)]
    email_delay_ms: u64,

    /// Simulated blocking time of write_in_file (a thread sleep), in milliseconds.
    #[arg(long, env = "EPILOGUE_LOG_DELAY_MS", default_value_t = 0)]
    log_delay_ms: u64,

    /// How long SIGTERM waits for the responses in flight, in seconds
    /// (actix's shutdown timeout; spawned tasks are not waited for).
    #[arg(long, env = "EPILOGUE_SHUTDOWN_GRACE_S", default_value_t = 30)]
    shutdown_grace_s: u64,

    /// Accepted for the demo's command line: spawned tasks have no limit.
    #[arg(long = "max-running", env = "EPILOGUE_MAX_RUNNING")]
    _max_running: Option<usize>,

    /// Accepted for the demo's command line: spawned tasks have no queue.
    #[arg(long = "max-pending", env = "EPILOGUE_MAX_PENDING")]
    _max_pending: Option<usize>,
}

#[derive(Clone, Serialize)]
struct Email {
    to: Option<String>,
    message: &'static str,
    sent_at: String,
}

const RECENT_EMAILS: usize = 10_000;

/// What the handlers and their tasks share: the two files, the most recent
/// emails for `GET /outbox`, and the counters of `GET /stats`.
struct Service {
    email_delay: Duration,
    log_delay: Duration,
    // One lock for the file and the list, so both hold the same order.
    outbox: Mutex<(File, VecDeque<Email>)>,
    log: Mutex<File>,
    stats: Stats,
}

impl Service {
    async fn send_email_notification(
        &self,
        to: Option<String>,
        message: &'static str,
    ) -> io::Result<()> {
        if !self.email_delay.is_zero() {
            rt::time::sleep(self.email_delay).await;
        }
        let email = Email {
            to,
            message,
            sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        };
        let mut line = serde_json::to_vec(&email)?;
        line.push(b'\n');
        let mut sent = self.outbox.lock().unwrap();
        sent.0.write_all(&line)?;
        if sent.1.len() == RECENT_EMAILS {
            sent.1.pop_front();
        }
        sent.1.push_back(email);
        Ok(())
    }

    /// Blocks the thread it runs on: called through `web::block`.
    fn write_in_file(&self, email: Option<&str>) -> io::Result<()> {
        if !self.log_delay.is_zero() {
            std::thread::sleep(self.log_delay);
        }
        let mut line = format!(
            "Notification sent @ {}",
            Local::now().format("%Y-%m-%d %H:%M:%S")
        );
        if let Some(email) = email {
            line.push_str(" to: ");
            line.push_str(email);
        }
        line.push('\n');
        self.log.lock().unwrap().write_all(line.as_bytes())
    }
}

/// `GET /stats`, counted by hand: a spawned task is seen by nothing else.
#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    running: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
}

/// How one task ended; `Err(())` when it panicked.
type Outcome<E> = Result<Result<(), E>, ()>;

impl Stats {
    fn record<E: std::fmt::Display>(&self, task: &'static str, outcome: Outcome<E>) {
        match outcome {
            Ok(Ok(())) => &self.succeeded,
            Ok(Err(error)) => {
                tracing::warn!(task, %error, "a background task failed");
                &self.failed
            }
            Err(()) => {
                tracing::warn!(task, "a background task panicked");
                &self.panicked
            }
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn to_json(&self) -> Value {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        json!({
            "accepted": get(&self.accepted),
            "running": get(&self.running),
            "pending": 0,
            "succeeded": get(&self.succeeded),
            "failed": get(&self.failed),
            "panicked": get(&self.panicked),
            "timed_out": 0,
            "refused": 0,
        })
    }
}

/// Runs a request's tasks on the worker's runtime once the handler has
/// answered, counted for `GET /stats`.
fn in_background<F>(service: web::Data<Service>, tasks: impl FnOnce(web::Data<Service>) -> F)
where
    F: std::future::Future<Output = ()> + 'static,
{
    service.stats.accepted.fetch_add(1, Ordering::Relaxed);
    service.stats.running.fetch_add(1, Ordering::Relaxed);
    let work = tasks(service.clone());
    rt::spawn(async move {
        work.await;
        service.stats.running.fetch_sub(1, Ordering::Relaxed);
    });
}

async fn email(service: &Service, to: Option<String>, message: &'static str) {
    let sent = service.send_email_notification(to, message).await;
    service.stats.record("send_email_notification", Ok(sent));
}

async fn log_line(service: web::Data<Service>, email: Option<String>) {
    let writer = service.clone();
    let written = web::block(move || writer.write_in_file(email.as_deref())).await;
    service.stats.record("write_in_file", written.map_err(drop));
}

/// `{"email": string, "password": string}`. The contract wants errors that
/// never quote the input (a password could come back in serde's messages),
/// and an email short enough and free of control characters to go on a
/// line of its own: checked by hand. Returns the email.
fn sign_up(body: web::Json<Value>) -> actix_web::Result<String> {
    let unprocessable = |why: &'static str| {
        let response = HttpResponse::UnprocessableEntity().json(json!({ "error": why }));
        actix_web::Error::from(InternalError::from_response(why, response))
    };
    let field = |name| match body.get(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(unprocessable("`email` and `password` must be strings")),
        None => Err(unprocessable("missing field: `email` or `password`")),
    };
    let email = field("email")?;
    field("password")?;
    if email.len() > 254 || email.chars().any(char::is_control) {
        return Err(unprocessable("`email` is not an email address"));
    }
    Ok(email.clone())
}

/// actix's extractor errors (not JSON, wrong content type, bad query) as
/// JSON bodies with actix's own status codes.
fn json_error<E: ResponseError + 'static>(error: E) -> actix_web::Error {
    let response =
        HttpResponse::build(error.status_code()).json(json!({ "error": error.to_string() }));
    InternalError::from_response(error, response).into()
}

#[derive(Serialize)]
struct Message {
    message: &'static str,
}

fn created(message: &'static str) -> HttpResponse {
    HttpResponse::Created().json(Message { message })
}

async fn handler_single(
    service: web::Data<Service>,
    body: web::Json<Value>,
) -> actix_web::Result<HttpResponse> {
    sign_up(body)?;
    in_background(service, |service| async move {
        email(&service, None, "Account created").await;
    });
    Ok(created("Created"))
}

async fn handler_list(
    service: web::Data<Service>,
    body: web::Json<Value>,
) -> actix_web::Result<HttpResponse> {
    sign_up(body)?;
    in_background(service, |service| async move {
        email(&service, None, "Account created").await;
        log_line(service, None).await;
    });
    Ok(created("Created"))
}

async fn response_single(
    service: web::Data<Service>,
    body: web::Json<Value>,
) -> actix_web::Result<HttpResponse> {
    let to = sign_up(body)?;
    in_background(service, |service| async move {
        email(&service, Some(to), "Thank you for registering.").await;
    });
    Ok(created("Email sent"))
}

/// `POST /response/list` and `POST /response/add-task`: without a task
/// list to grow, the two are one handler.
async fn response_list(
    service: web::Data<Service>,
    body: web::Json<Value>,
) -> actix_web::Result<HttpResponse> {
    let to = sign_up(body)?;
    in_background(service, |service| async move {
        email(&service, Some(to.clone()), "Thank you for registering.").await;
        log_line(service, Some(to)).await;
    });
    Ok(created("Email sent"))
}

async fn extractor(
    service: web::Data<Service>,
    body: web::Json<Value>,
) -> actix_web::Result<HttpResponse> {
    let to = sign_up(body)?;
    in_background(service, |service| async move {
        email(&service, Some(to), "Welcome.").await;
    });
    Ok(created("Email sent"))
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum FailMode {
    Error,
    Panic,
}

#[derive(Deserialize)]
struct FailQuery {
    mode: FailMode,
}

async fn fail(mode: FailMode) -> Result<(), &'static str> {
    match mode {
        FailMode::Error => Err("failed on purpose (mode=error)"),
        FailMode::Panic => panic!("panicked on purpose (mode=panic)"),
    }
}

async fn failing(
    service: web::Data<Service>,
    query: web::Query<FailQuery>,
    body: web::Json<Value>,
) -> actix_web::Result<HttpResponse> {
    sign_up(body)?;
    let mode = query.mode;
    in_background(service, move |service| async move {
        // A task of its own, so that its panic ends it and not the email
        // after it.
        let failed = rt::spawn(fail(mode)).await;
        service.stats.record("fail", failed.map_err(drop));
        email(&service, None, "After failure").await;
    });
    Ok(created("Created"))
}

async fn outbox(service: web::Data<Service>) -> HttpResponse {
    let recent: Vec<Email> = service.outbox.lock().unwrap().1.iter().cloned().collect();
    HttpResponse::Ok().json(recent)
}

async fn stats(service: web::Data<Service>) -> HttpResponse {
    HttpResponse::Ok().json(service.stats.to_json())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

fn open_append(path: PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[actix_web::main]
async fn main() -> io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(io::stderr)
        // As the demo's logging: escape codes only for a terminal. Left on,
        // they would be written into every INFO request span's fields.
        .with_ansi(io::stderr().is_terminal())
        .init();
    let config = Config::parse();

    std::fs::create_dir_all(&config.data_dir)?;
    let service = web::Data::new(Service {
        email_delay: Duration::from_millis(config.email_delay_ms),
        log_delay: Duration::from_millis(config.log_delay_ms),
        outbox: Mutex::new((
            open_append(config.data_dir.join("outbox.jsonl"))?,
            VecDeque::new(),
        )),
        log: Mutex::new(open_append(config.data_dir.join("log.txt"))?),
        stats: Stats::default(),
    });

    let server = HttpServer::new(move || {
        App::new()
            .app_data(service.clone())
            .app_data(web::JsonConfig::default().error_handler(|error, _| json_error(error)))
            .app_data(web::QueryConfig::default().error_handler(|error, _| json_error(error)))
            .route("/handler/single", web::post().to(handler_single))
            .route("/handler/list", web::post().to(handler_list))
            .route("/response/single", web::post().to(response_single))
            .route("/response/list", web::post().to(response_list))
            .route("/response/add-task", web::post().to(response_list))
            .route("/extractor", web::post().to(extractor))
            .route("/fail", web::post().to(failing))
            .route("/outbox", web::get().to(outbox))
            .route("/stats", web::get().to(stats))
            .route("/healthz", web::get().to(healthz))
            // Tracing outside, compression inside, as in the demo; the
            // last `wrap` is the outermost. TracingLogger as it comes (an
            // INFO span per request), as epilogue-demo-actix has it.
            .wrap(Compress::default())
            .wrap(TracingLogger::default())
    })
    .shutdown_timeout(config.shutdown_grace_s)
    .bind(config.addr)?;
    println!("listening on http://{}", server.addrs()[0]);
    server.run().await
}
