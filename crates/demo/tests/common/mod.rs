//! What the end-to-end tests of `epilogue-demo` share: the real binary
//! started on port 0 with a fresh data directory (and killed when the test
//! ends, whatever happens), an HTTP client, a raw HTTP/1.1 connection for
//! what a client library hides, readers of the files the tasks write, and
//! polling with a deadline.
//!
//! Nothing here sleeps to synchronise: tests wait for an observable event
//! with [`eventually`], which gives up after [`PATIENCE`].
//!
//! The same tests also drive `epilogue-demo-actix`, which keeps the
//! contract (`crates/demo/README.md`) up to and including Promises: each file of
//! `crates/demo-actix/tests` includes one file of this directory, and the
//! harness starts [`BINARY`], the binary of the package compiling it. A file
//! included there must test nothing beyond those sections (durable tasks,
//! uploads, `/metrics`, `/dashboard`, self-protection, `by_task`); such
//! tests go in a file that only `epilogue-demo` runs.

#![allow(dead_code)] // each test file uses its own part

pub mod apt;
pub mod postgres;
pub mod tmpfs;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for an event before it fails. Generous: the CI
/// machine has two cores and runs the tests in parallel.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often [`eventually`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// The password every sign-up sends: distinctive, so that finding it
/// anywhere it should not be is a real leak.
pub const PASSWORD: &str = "hunter2-SECRET-pw";

/// The demo binary under test. `CARGO_BIN_EXE_<name>` is set only for the
/// binaries of the package whose tests are compiled, so this is
/// `epilogue-demo` in `crates/demo` and `epilogue-demo-actix` in
/// `crates/demo-actix`.
pub const BINARY: &str = match option_env!("CARGO_BIN_EXE_epilogue-demo") {
    Some(axum) => axum,
    None => match option_env!("CARGO_BIN_EXE_epilogue-demo-actix") {
        Some(actix) => actix,
        None => panic!("these tests drive epilogue-demo or epilogue-demo-actix, of their package"),
    },
};

/// Whether [`BINARY`] is `epilogue-demo`, which has routes beyond the
/// contract.
pub const IS_EPILOGUE_DEMO: bool = option_env!("CARGO_BIN_EXE_epilogue-demo").is_some();

/// Every POST route of the contract that carries tasks (`/fail` with a
/// valid mode).
const CONTRACT_TASK_ROUTES: [&str; 7] = [
    "/handler/single",
    "/handler/list",
    "/response/single",
    "/response/list",
    "/response/add-task",
    "/extractor",
    "/fail?mode=error",
];

/// Every POST route of [`BINARY`] that carries tasks: the contract's, and
/// `epilogue-demo`'s `/chaos` (of `faults.rs`), which the contract does not
/// have but which must keep its promises too.
pub fn task_routes() -> Vec<&'static str> {
    let beyond_the_contract: &[&str] = if IS_EPILOGUE_DEMO { &["/chaos"] } else { &[] };
    CONTRACT_TASK_ROUTES
        .iter()
        .chain(beyond_the_contract)
        .copied()
        .collect()
}

/// What every POST route takes.
pub fn signup(email: &str) -> Value {
    json!({ "email": email, "password": PASSWORD })
}

/// Waits for `probe` to return `Some`, looking every few milliseconds, and
/// fails the test after [`PATIENCE`].
pub async fn eventually<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(PATIENCE, what, probe).await
}

/// [`eventually`] with a deadline of its own.
pub async fn eventually_within<T>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "still waiting after {limit:?} for {what}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "epilogue-demo-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier run that had the same process id.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("cannot create a scratch directory");
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The text a child writes to one of its pipes, as it comes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    /// Drains `pipe` on a thread of its own, so the child never blocks on a
    /// full pipe.
    fn drain(pipe: impl Read + Send + 'static) -> (Self, thread::JoinHandle<()>) {
        let captured = Self::default();
        let sink = captured.clone();
        let reader = thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut line = Vec::new();
            while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                sink.lock().push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        });
        (captured, reader)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn text(&self) -> String {
        self.lock().clone()
    }
}

/// The child process, killed on drop.
struct Process {
    child: Child,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Process {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        let (stdout, stdout_reader) = Captured::drain(child.stdout.take().expect("piped stdout"));
        let (stderr, stderr_reader) = Captured::drain(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// Waits for the `listening on http://HOST:PORT` line.
    async fn listening(&mut self) -> SocketAddr {
        eventually("the `listening on` line on stdout", async || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{BINARY} exited ({status}) before listening; stderr:\n{}",
                    self.stderr.text()
                );
            }
            let stdout = self.stdout.text();
            let line = stdout.strip_suffix('\n')?;
            let addr = line
                .strip_prefix("listening on http://")
                .unwrap_or_else(|| panic!("unexpected stdout: {stdout:?}"));
            Some(addr.parse().expect("an address on the `listening on` line"))
        })
        .await
    }
}

impl Process {
    /// `kill -9`, then waits until it is gone and its pipes are read.
    fn kill9(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"));
        // An error means it has exited already.
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            reader.join().expect("a pipe reader");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Errors mean it has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `epilogue-demo`, killed when dropped (even when the test
/// panics), its data directory removed after it.
pub struct Demo {
    // Declared first, so it is dropped (killed) before its directory goes.
    process: Process,
    addr: SocketAddr,
    data_dir: PathBuf,
    client: reqwest::Client,
    _scratch: Scratch,
}

impl Demo {
    /// Starts the demo on `127.0.0.1:0` with a data directory that does not
    /// exist yet, and the extra `flags`.
    pub async fn start(flags: &[&str]) -> Self {
        Self::start_logging("info", flags).await
    }

    /// [`Demo::start`], logging with the filter `rust_log` (`RUST_LOG`).
    pub async fn start_logging(rust_log: &str, flags: &[&str]) -> Self {
        let scratch = Scratch::new();
        let data_dir = scratch.path().join("data");
        let mut command = Self::command();
        command
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(flags)
            .env("RUST_LOG", rust_log);
        Self::spawn(command, scratch, data_dir).await
    }

    /// Starts the demo again on the data directory of `scratch`
    /// (`scratch/data`, as [`Demo::start`] makes it), from [`Demo::kill`]
    /// or [`Demo::into_scratch`]: what a restart after a crash or a deploy
    /// finds.
    pub async fn start_in(scratch: Scratch, flags: &[&str]) -> Self {
        let data_dir = scratch.path().join("data");
        let mut command = Self::command();
        command
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .args(flags);
        Self::spawn(command, scratch, data_dir).await
    }

    /// `kill -9`, then waits for the process to be gone; its data directory
    /// is kept, in the returned scratch, for [`Demo::start_in`].
    pub fn kill(self) -> Scratch {
        let Demo {
            mut process,
            _scratch: scratch,
            ..
        } = self;
        process.kill9();
        scratch
    }

    /// The data directory's scratch, once the process has exited (it is
    /// killed if it has not): for [`Demo::start_in`].
    pub fn into_scratch(self) -> Scratch {
        let Demo {
            process,
            _scratch: scratch,
            ..
        } = self;
        drop(process);
        scratch
    }

    /// `GET /durable/stats`, which must answer 200.
    pub async fn durable_stats(&self) -> DurableStats {
        let reply = self.get("/durable/stats").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        serde_json::from_value(reply.json()).expect("the fields of /durable/stats, as integers")
    }

    /// Waits until no durable task is queued, running or waiting for a
    /// retry, for up to `limit`.
    pub async fn durable_settled(&self, limit: Duration) -> DurableStats {
        eventually_within(limit, "no durable task left to run", async || {
            let stats = self.durable_stats().await;
            stats.settled().then_some(stats)
        })
        .await
    }

    /// `POST path` with these raw bytes as the body.
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Reply {
        Reply::of(
            self.client
                .post(self.url(path))
                .header("content-type", "application/octet-stream")
                .body(body),
        )
        .await
    }

    /// The HTTP client of the test, for requests the helpers do not make.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The binary, to be configured by the test: no `EPILOGUE_*` variable
    /// of the test's environment, `RUST_LOG=info`, stdout and stderr
    /// captured.
    pub fn command() -> Command {
        let mut command = Command::new(BINARY);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("EPILOGUE_") {
                command.env_remove(key);
            }
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// [`Demo::command`], run by `sh` with the size of every file it writes
    /// limited to `blocks` of 512 bytes (`ulimit -f`) and `SIGXFSZ` ignored:
    /// a write past the limit is cut short, then fails with `EFBIG`, as
    /// it would on a full disk, without needing one.
    pub fn command_with_file_size_limit(blocks: u32) -> Command {
        let template = Self::command();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -f {blocks} && trap '' XFSZ && exec \"$0\" \"$@\""
            ))
            .arg(template.get_program());
        for (key, value) in template.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts `command` (from [`Demo::command`]), which writes to
    /// `data_dir`, inside `scratch`. It runs in `scratch`, where a stray
    /// `./data` would do no harm.
    pub async fn spawn(mut command: Command, scratch: Scratch, data_dir: PathBuf) -> Self {
        command.current_dir(scratch.path());
        let mut process = Process::spawn(command);
        let addr = process.listening().await;
        let client = reqwest::Client::builder()
            .timeout(PATIENCE)
            .build()
            .expect("an HTTP client");
        Self {
            process,
            addr,
            data_dir,
            client,
            _scratch: scratch,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Everything the demo wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.process.stdout.text()
    }

    /// Everything the demo wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr.text()
    }

    /// Waits for a line of stderr (the demo's log) with all of `words`, and
    /// returns it.
    pub async fn wait_for_log_line(&self, words: &[&str]) -> String {
        eventually(&format!("a log line with {words:?}"), async || {
            let stderr = self.stderr();
            let line = stderr
                .lines()
                .find(|line| words.iter().all(|word| line.contains(word)));
            line.map(str::to_owned)
        })
        .await
    }

    /// `POST path` with `body` as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        Reply::of(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::of(self.client.get(self.url(path))).await
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Stats {
        let reply = self.get("/stats").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        serde_json::from_value(reply.json()).expect("the fields of /stats, as integers")
    }

    /// Waits until no task runs or waits.
    pub async fn idle(&self) -> Stats {
        eventually("the runner to be idle", async || {
            let stats = self.stats().await;
            (stats.running == 0 && stats.pending == 0).then_some(stats)
        })
        .await
    }

    /// The emails in `outbox.jsonl`, oldest first.
    pub fn outbox(&self) -> Vec<Email> {
        outbox_in(&self.data_dir)
    }

    /// Every email sent, as `(message, to)`, sorted: for comparing what was
    /// sent with what was promised, whatever order the tasks ran in.
    pub fn sent_sorted(&self) -> Vec<(String, Option<String>)> {
        let mut sent: Vec<_> = self
            .outbox()
            .into_iter()
            .map(|email| (email.message, email.to))
            .collect();
        sent.sort();
        sent
    }

    /// The emails in `outbox.jsonl` with this message.
    pub fn emails_saying(&self, message: &str) -> Vec<Email> {
        let mut emails = self.outbox();
        emails.retain(|email| email.message == message);
        emails
    }

    /// The lines of `log.txt`, oldest first.
    pub fn log(&self) -> Vec<LogLine> {
        complete_lines(&self.data_dir.join("log.txt"))
            .iter()
            .map(|line| LogLine::parse(line))
            .collect()
    }

    /// Waits until the outbox holds `n` emails with this message, and
    /// returns them.
    pub async fn wait_for_emails(&self, message: &str, n: usize) -> Vec<Email> {
        eventually(&format!("{n} email(s) saying {message:?}"), async || {
            let emails = self.emails_saying(message);
            (emails.len() >= n).then_some(emails)
        })
        .await
    }

    /// The process id, for signals.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.process.child.id()).expect("a pid fits in i32"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("cannot send SIGTERM");
    }

    /// Sends SIGHUP, as logrotate's `postrotate` does.
    pub fn hang_up(&self) {
        kill(self.pid(), Signal::SIGHUP).expect("cannot send SIGHUP");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits up to `limit` for the process to exit, then until its stdout
    /// and stderr are read to the end.
    pub async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let status = eventually_within(limit, "epilogue-demo to exit", async || {
            self.process.child.try_wait().expect("try_wait")
        })
        .await;
        // The pipes are closed now that the process is gone.
        for reader in self.process.readers.drain(..) {
            reader.join().expect("a pipe reader");
        }
        status
    }
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    /// From sending the request to the end of the body.
    pub elapsed: Duration,
}

impl Reply {
    pub async fn of(request: RequestBuilder) -> Self {
        let started = Instant::now();
        let response = request.send().await.expect("an HTTP response");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("a response body");
        Self {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("an ASCII header"))
    }

    /// Asserts the response is a 201 with exactly this JSON body.
    pub fn assert_created(&self, body: Value) {
        assert_eq!(self.status, StatusCode::CREATED, "{self:?}");
        assert_json_content_type(self.header("content-type"));
        assert_eq!(self.json(), body, "{self:?}");
    }

    /// Asserts the response is a 4xx with a JSON body `{"error": "..."}`.
    pub fn assert_client_error(&self) {
        assert!(self.status.is_client_error(), "{self:?}");
        assert_json_content_type(self.header("content-type"));
        assert!(self.json()["error"].is_string(), "{self:?}");
    }
}

pub fn assert_json_content_type(content_type: Option<&str>) {
    assert!(
        content_type.is_some_and(|ct| ct.starts_with("application/json")),
        "content-type {content_type:?}"
    );
}

/// The counters of `GET /stats` that the demo's README promises, each an
/// integer.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Stats {
    pub accepted: u64,
    pub running: u64,
    pub pending: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub panicked: u64,
    pub timed_out: u64,
    pub refused: u64,
}

/// One line of `outbox.jsonl` or one item of `GET /outbox`.
#[derive(Clone, Debug, PartialEq)]
pub struct Email {
    pub to: Option<String>,
    pub message: String,
    pub sent_at: DateTime<FixedOffset>,
    /// The durable task that sent it (`task_id`), absent for in-memory tasks.
    pub task_id: Option<String>,
    /// Which attempt of that durable task sent it, 1 for the first.
    pub attempt: Option<u32>,
}

impl Email {
    /// Parses one email, strictly: exactly the fields `to` (a string or
    /// null), `message` and `sent_at` (RFC 3339), and for an email of a
    /// durable task both `task_id` (a string) and `attempt` (at least 1).
    pub fn parse(line: &str) -> Self {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("an email that is not JSON ({e}): {line:?}"));
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Self {
        let fields = value
            .as_object()
            .unwrap_or_else(|| panic!("an email that is not an object: {value}"));
        let mut keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let durable = keys == ["attempt", "message", "sent_at", "task_id", "to"];
        assert!(
            durable || keys == ["message", "sent_at", "to"],
            "unexpected fields {keys:?}: {value}"
        );
        let (task_id, attempt) = if durable {
            let task_id = fields["task_id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| panic!("`task_id` is not a non-empty string: {value}"));
            let attempt = fields["attempt"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| n >= 1)
                .unwrap_or_else(|| panic!("`attempt` is not an integer from 1: {value}"));
            (Some(task_id.to_owned()), Some(attempt))
        } else {
            (None, None)
        };
        let to = match &fields["to"] {
            Value::Null => None,
            Value::String(to) => Some(to.clone()),
            other => panic!("`to` is neither a string nor null: {other}"),
        };
        let message = fields["message"]
            .as_str()
            .unwrap_or_else(|| panic!("`message` is not a string: {value}"))
            .to_owned();
        let sent_at = fields["sent_at"]
            .as_str()
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
            .unwrap_or_else(|| panic!("`sent_at` is not RFC 3339: {value}"));
        Self {
            to,
            message,
            sent_at,
            task_id,
            attempt,
        }
    }
}

/// The emails in `dir/outbox.jsonl`, oldest first; none when there is no
/// such file.
pub fn outbox_in(dir: &Path) -> Vec<Email> {
    complete_lines(&dir.join("outbox.jsonl"))
        .iter()
        .map(|line| Email::parse(line))
        .collect()
}

/// `GET /durable/stats`: how many durable tasks are in each state.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct DurableStats {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub retrying: u64,
    pub dead: u64,
}

impl DurableStats {
    /// Nothing left to run: none queued, running or waiting for a retry.
    pub fn settled(&self) -> bool {
        self.queued == 0 && self.running == 0 && self.retrying == 0
    }

    pub fn total(&self) -> u64 {
        self.queued + self.running + self.succeeded + self.retrying + self.dead
    }
}

/// A running `epilogue-demo worker` (no listener), killed when dropped.
pub struct WorkerProcess {
    process: Process,
    data_dir: PathBuf,
}

impl WorkerProcess {
    /// Starts `epilogue-demo worker --data-dir DATA_DIR [--store STORE]
    /// FLAGS` (the directory is created first: the worker runs in it), and
    /// waits for its `worker ready` line.
    pub async fn start(store: Option<&str>, data_dir: &Path, flags: &[&str]) -> Self {
        fs::create_dir_all(data_dir).expect("cannot create the worker's data directory");
        let mut command = Demo::command();
        command.arg("worker").arg("--data-dir").arg(data_dir);
        if let Some(store) = store {
            command.arg("--store").arg(store);
        }
        command.args(flags).current_dir(data_dir);
        let mut process = Process::spawn(command);
        eventually("the `worker ready` line on stdout", async || {
            if let Some(status) = process.child.try_wait().expect("try_wait") {
                panic!(
                    "epilogue-demo worker exited ({status}) before it was ready; stderr:\n{}",
                    process.stderr.text()
                );
            }
            let stdout = process.stdout.text();
            let line = stdout.strip_suffix('\n')?;
            assert_eq!(line, "worker ready", "unexpected stdout of the worker");
            Some(())
        })
        .await;
        Self {
            process,
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.process.child.id()).expect("a pid fits in i32"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("cannot send SIGTERM");
    }

    /// `kill -9`, then waits until it is gone.
    pub fn kill(&mut self) {
        self.process.kill9();
    }

    /// Waits up to `limit` for the process to exit, then until its pipes
    /// are read to the end.
    pub async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let process = &mut self.process;
        let status = eventually_within(limit, "epilogue-demo worker to exit", async || {
            process.child.try_wait().expect("try_wait")
        })
        .await;
        for reader in process.readers.drain(..) {
            reader.join().expect("a pipe reader");
        }
        status
    }

    pub fn stdout(&self) -> String {
        self.process.stdout.text()
    }

    pub fn stderr(&self) -> String {
        self.process.stderr.text()
    }

    /// The emails in its data directory's `outbox.jsonl`.
    pub fn outbox(&self) -> Vec<Email> {
        outbox_in(&self.data_dir)
    }
}

/// One line of `log.txt`: `Notification sent @ YYYY-mm-dd HH:MM:SS[ to: EMAIL]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub at: NaiveDateTime,
    pub to: Option<String>,
}

impl LogLine {
    pub fn parse(line: &str) -> Self {
        let rest = line
            .strip_prefix("Notification sent @ ")
            .unwrap_or_else(|| panic!("unexpected log line {line:?}"));
        let (at, to) = match rest.split_at_checked(19) {
            Some((at, "")) => (at, None),
            Some((at, to)) => (
                at,
                Some(
                    to.strip_prefix(" to: ")
                        .unwrap_or_else(|| panic!("unexpected log line {line:?}"))
                        .to_owned(),
                ),
            ),
            None => panic!("unexpected log line {line:?}"),
        };
        let at = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S")
            .unwrap_or_else(|e| panic!("bad time in log line {line:?}: {e}"));
        Self { at, to }
    }
}

/// The lines of `path` that are complete (a task may be writing the next
/// one); none when the file does not exist yet.
fn complete_lines(path: &Path) -> Vec<String> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .split('\n')
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An HTTP/1.1 request as bytes: a POST of `body` with
/// `Content-Type: application/json` and `extra` header lines.
pub fn raw_post(addr: SocketAddr, path: &str, extra: &[&str], body: &str) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in extra {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

/// One TCP connection spoken to in HTTP/1.1 by hand: for what a client
/// library hides (which connection a request goes on, closing it early,
/// `100 Continue`).
pub struct RawHttp {
    stream: TcpStream,
    read: Vec<u8>,
}

/// A response read from a [`RawHttp`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl RawHttp {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("cannot connect");
        Self {
            stream,
            read: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &str) {
        self.stream
            .write_all(bytes.as_bytes())
            .await
            .expect("cannot write the request");
    }

    /// Reads the next response (a `100 Continue` is one, without a body).
    pub async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(PATIENCE, self.read_response())
            .await
            .expect("no response in time")
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }

    async fn read_response(&mut self) -> RawResponse {
        let head = self.read_until(b"\r\n\r\n").await;
        let head = String::from_utf8(head).expect("an ASCII response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: HashMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let body = if status == 100 {
            Vec::new()
        } else if let Some(length) = headers.get("content-length") {
            self.read_exactly(length.parse().expect("a content length"))
                .await
        } else if headers
            .get("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            self.read_chunks().await
        } else {
            panic!("a response without a length: {head:?}")
        };
        RawResponse {
            status,
            headers,
            body,
        }
    }

    async fn read_chunks(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_until(b"\r\n").await;
            let size = String::from_utf8_lossy(&size_line);
            let size = size.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                // No trailers from this server: the empty line ends the body.
                self.read_until(b"\r\n").await;
                return body;
            }
            body.extend(self.read_exactly(size).await);
            self.read_exactly(2).await;
        }
    }

    /// The bytes before `delimiter`, which is consumed.
    async fn read_until(&mut self, delimiter: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self
                .read
                .windows(delimiter.len())
                .position(|window| window == delimiter)
            {
                let mut taken: Vec<u8> = self.read.drain(..at + delimiter.len()).collect();
                taken.truncate(at);
                return taken;
            }
            self.fill().await;
        }
    }

    async fn read_exactly(&mut self, n: usize) -> Vec<u8> {
        while self.read.len() < n {
            self.fill().await;
        }
        self.read.drain(..n).collect()
    }

    async fn fill(&mut self) {
        let mut buffer = [0; 4096];
        let n = self
            .stream
            .read(&mut buffer)
            .await
            .expect("cannot read the response");
        assert!(n > 0, "the server closed the connection mid-response");
        self.read.extend_from_slice(&buffer[..n]);
    }
}

/// What a run of the binary that ends by itself left: for start-up errors.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` (from [`Demo::command`]) until it exits, which it must do
/// within [`PATIENCE`] (it is killed when the test fails), in `scratch`.
pub async fn run_to_exit(mut command: Command, scratch: &Scratch) -> Exited {
    command.current_dir(scratch.path());
    let mut process = Process::spawn(command);
    let status = eventually("epilogue-demo to exit by itself", async || {
        process.child.try_wait().expect("try_wait")
    })
    .await;
    for reader in process.readers.drain(..) {
        reader.join().expect("a pipe reader");
    }
    Exited {
        status,
        stdout: process.stdout.text(),
        stderr: process.stderr.text(),
    }
}

/// One group runs, one waits: the third request is refused. Each group
/// takes 2.5 s, far longer than the dozen requests a test sends meanwhile.
pub const FULL_AFTER_TWO: &[&str] = &[
    "--max-running",
    "1",
    "--max-pending",
    "1",
    "--email-delay-ms",
    "2500",
];

/// The entries of `DATA_DIR/files` (none if it does not exist), sorted.
pub fn files_in(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("files"))
        .into_iter()
        .flatten()
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A throwaway PostgreSQL cluster, started off the async runtime (initdb
/// takes seconds).
pub async fn start_postgres() -> postgres::Postgres {
    tokio::task::spawn_blocking(postgres::Postgres::start)
        .await
        .expect("the cluster's start")
}

/// Asserts a durable route's 201: exactly `{"message": message, "task_id":
/// "<id>"}`; returns the id.
pub fn created_task(reply: &Reply, message: &str) -> String {
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_json_content_type(reply.header("content-type"));
    let body = reply.json();
    let id = body["task_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("no task_id in {body}"))
        .to_owned();
    assert_eq!(body, json!({ "message": message, "task_id": id }));
    id
}

/// The durable emails with `message`, by task id.
pub fn by_task<'a>(
    emails: impl IntoIterator<Item = &'a Email>,
    message: &str,
) -> HashMap<String, Vec<Email>> {
    let mut by_task: HashMap<String, Vec<Email>> = HashMap::new();
    for email in emails.into_iter().filter(|email| email.message == message) {
        let id = email
            .task_id
            .clone()
            .unwrap_or_else(|| panic!("a durable email without a task_id: {email:?}"));
        by_task.entry(id).or_default().push(email.clone());
    }
    by_task
}

/// The demo on `data_dir` (a directory of the test's), with `flags`.
pub async fn demo_on(data_dir: &Path, flags: &[&str]) -> Demo {
    let mut command = Demo::command();
    command
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(flags);
    Demo::spawn(command, Scratch::new(), data_dir.to_owned()).await
}
