//! `bench-plain`: `POST /response/single` of `epilogue-demo`'s contract,
//! written the way a Rust user writes it today, without epilogue: axum,
//! `axum::serve`, serde's `Json` extractor, tower-http's `TraceLayer` and
//! `CompressionLayer`, and the welcome email sent with `tokio::spawn`.
//!
//! It shares no code with the demo (`bench-baseline` is the comparator
//! that does): what it measures is the whole cost of choosing epilogue,
//! its server included, against what users write instead.
//!
//! Same command line as the demo (`--addr`, `--data-dir`,
//! `--email-delay-ms`); prints `listening on http://HOST:PORT` on stdout;
//! on SIGTERM or Ctrl-C it stops serving and returns from `main` (exit 0),
//! dropping whatever spawned task is still running, as `tokio::spawn` does.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use serde::Serialize;
use serde_json::{json, Value};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;
use tracing_subscriber::EnvFilter;

/// The demo's `POST /response/single`, in plain axum with `tokio::spawn`.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Config {
    /// Listen address, HOST:PORT; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,

    /// Where outbox.jsonl is written (created if missing).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,

    /// Simulated time to send one email (an async sleep), in milliseconds.
    #[arg(long, default_value_t = 0)]
    email_delay_ms: u64,
}

/// `{"email": string, "password": string}`. The contract wants errors that
/// never quote the input (a password could come back in serde's messages),
/// and an email short enough and free of control characters to go on a
/// line of its own: checked by hand.
struct SignUp {
    email: String,
}

impl SignUp {
    fn parse(input: Result<Json<Value>, JsonRejection>) -> Result<Self, (StatusCode, String)> {
        let unprocessable = |why: &str| (StatusCode::UNPROCESSABLE_ENTITY, why.to_owned());
        let Json(body) = input.map_err(|rejection| (rejection.status(), rejection.body_text()))?;
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
        Ok(Self {
            email: email.clone(),
        })
    }
}

#[derive(Serialize)]
struct Message {
    message: &'static str,
}

#[derive(Serialize)]
struct Email {
    to: Option<String>,
    message: &'static str,
    sent_at: String,
}

/// `outbox.jsonl`, and the most recent emails for `GET /outbox`.
struct Outbox {
    delay: Duration,
    sent: Mutex<(File, VecDeque<Email>)>,
}

const RECENT_EMAILS: usize = 10_000;

impl Outbox {
    async fn send(&self, to: Option<String>, message: &'static str) -> io::Result<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let email = Email {
            to,
            message,
            sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        };
        let mut line = serde_json::to_vec(&email)?;
        line.push(b'\n');
        let mut sent = self.sent.lock().unwrap();
        sent.0.write_all(&line)?;
        if sent.1.len() == RECENT_EMAILS {
            sent.1.pop_front();
        }
        sent.1.push_back(email);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(io::stderr)
        .init();
    let config = Config::parse();

    std::fs::create_dir_all(&config.data_dir)?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.data_dir.join("outbox.jsonl"))?;
    let outbox = Arc::new(Outbox {
        delay: Duration::from_millis(config.email_delay_ms),
        sent: Mutex::new((file, VecDeque::new())),
    });

    let app = Router::new()
        .route("/response/single", post(response_single))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .with_state(outbox)
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());

    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    Ok(())
}

async fn response_single(
    State(outbox): State<Arc<Outbox>>,
    input: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Message>), (StatusCode, Json<Value>)> {
    let user = SignUp::parse(input)
        .map_err(|(status, error)| (status, Json(json!({ "error": error }))))?;
    tokio::spawn(async move {
        let sent = outbox
            .send(Some(user.email), "Thank you for registering.")
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, "sending the welcome email failed");
        }
    });
    Ok((
        StatusCode::CREATED,
        Json(Message {
            message: "Email sent",
        }),
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let term = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler")
            .recv()
            .await;
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
