//! The demo's background tasks: the two functions of the reference
//! documentation, one `async`, one plain (blocking).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

/// How many sent emails `GET /outbox` keeps: a long load test must not grow
/// the process.
const RECENT_EMAILS: usize = 10_000;

/// Where emails go: `outbox.jsonl`, and the most recent ones in memory.
#[derive(Clone)]
pub struct Outbox(Arc<OutboxInner>);

struct OutboxInner {
    delay: Duration,
    // One lock for the file and the list, so both hold the same order.
    sent: Mutex<(File, VecDeque<Email>)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Email {
    to: Option<String>,
    message: &'static str,
    sent_at: String,
}

impl Outbox {
    pub fn open(dir: &Path, delay: Duration) -> io::Result<Self> {
        let file = append(&dir.join("outbox.jsonl"))?;
        Ok(Self(Arc::new(OutboxInner {
            delay,
            sent: Mutex::new((file, VecDeque::new())),
        })))
    }

    /// The most recent emails, oldest first.
    pub fn recent(&self) -> Vec<Email> {
        let sent = self.0.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.1.iter().cloned().collect()
    }
}

/// Sends one email (simulated): waits the email delay, then appends one JSON
/// line to `outbox.jsonl`, written and flushed so it survives the process.
pub async fn send_email_notification(
    outbox: Outbox,
    to: Option<String>,
    message: &'static str,
) -> io::Result<()> {
    if !outbox.0.delay.is_zero() {
        tokio::time::sleep(outbox.0.delay).await;
    }
    let email = Email {
        to,
        message,
        sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
    };
    let mut line = serde_json::to_vec(&email)?;
    line.push(b'\n');
    let mut sent = outbox.0.sent.lock().unwrap_or_else(|e| e.into_inner());
    let (file, recent) = &mut *sent;
    // One write of a whole line to a file opened for appending: lines of
    // concurrent tasks never interleave. A `File` has no buffer to flush.
    file.write_all(&line)?;
    if recent.len() == RECENT_EMAILS {
        recent.pop_front();
    }
    recent.push_back(email);
    Ok(())
}

/// `log.txt`, written by the blocking task.
#[derive(Clone)]
pub struct AuditLog(Arc<AuditLogInner>);

struct AuditLogInner {
    delay: Duration,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(dir: &Path, delay: Duration) -> io::Result<Self> {
        Ok(Self(Arc::new(AuditLogInner {
            delay,
            file: Mutex::new(append(&dir.join("log.txt"))?),
        })))
    }
}

/// A plain `fn`, as slow disk I/O would be: blocks for the log delay, then
/// appends `Notification sent @ <time>[ to: <email>]` to `log.txt`.
/// epilogue runs it on the blocking pool, so it never stalls the service.
pub fn write_in_file(log: AuditLog, email: Option<String>) -> io::Result<()> {
    if !log.0.delay.is_zero() {
        std::thread::sleep(log.0.delay);
    }
    let now = Utc::now().format("%Y-%m-%d %H:%M:%S");
    let line = match email {
        Some(email) => format!("Notification sent @ {now} to: {email}\n"),
        None => format!("Notification sent @ {now}\n"),
    };
    let mut file = log.0.file.lock().unwrap_or_else(|e| e.into_inner());
    file.write_all(line.as_bytes())
}

/// What `POST /fail` asks its first task to do.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Error,
    Panic,
}

/// A task that fails the way it is told to, to show that the next task of
/// its group still runs.
pub async fn fail(mode: FailMode) -> Result<(), String> {
    match mode {
        FailMode::Error => Err("the mail server refused the message (simulated)".to_owned()),
        FailMode::Panic => panic!("a background task panicked (simulated)"),
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
