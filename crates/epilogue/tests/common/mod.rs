//! What the end-to-end tests share: servers on port 0, a one-connection
//! HTTP/1.1 client, and probes that tasks report to.

#![allow(dead_code)] // each test file uses its own part

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use epilogue::{Runner, ShutdownReport};

/// What `tracing` wrote, in memory, for a test to read.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Writes the events of `level` and above here, from this thread, until
    /// the guard is dropped.
    pub fn set_default(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything written so far.
    pub fn logs(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Generous: CI machines have two cores and run tests in parallel.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// What a task reports when it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub at: Instant,
}

/// Where tasks report: clone the sender into a task's arguments.
pub struct Probe {
    pub tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Probe {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx }
    }

    /// The next event, or a panic after [`PATIENCE`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("no task reported in time")
            .expect("every sender dropped")
    }

    /// The names of the next `n` events, in the order they came.
    pub async fn names(&mut self, n: usize) -> Vec<String> {
        let mut names = Vec::with_capacity(n);
        for _ in 0..n {
            names.push(self.next().await.name);
        }
        names
    }

    /// Whether any event is waiting right now.
    pub fn is_empty(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }
}

/// An async task function that reports `name` to the probe.
pub async fn report(tx: mpsc::UnboundedSender<Event>, name: &'static str) {
    let _ = tx.send(Event {
        name: name.to_owned(),
        at: Instant::now(),
    });
}

/// Sleeps, then reports.
pub async fn report_after(tx: mpsc::UnboundedSender<Event>, name: &'static str, delay: Duration) {
    tokio::time::sleep(delay).await;
    report(tx, name).await;
}

/// Waits until the test opens `gate` (one permit per task), then reports: a
/// task that cannot finish before the test says so.
pub async fn report_when_opened(
    tx: mpsc::UnboundedSender<Event>,
    name: &'static str,
    gate: Arc<Semaphore>,
) {
    gate.acquire().await.unwrap().forget();
    report(tx, name).await;
}

/// A closed gate for [`report_when_opened`].
pub fn gate() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(0))
}

/// Blocks the thread, then reports: a plain `fn` task.
pub fn report_blocking(tx: mpsc::UnboundedSender<Event>, name: &'static str, block: Duration) {
    std::thread::sleep(block);
    let _ = tx.send(Event {
        name: name.to_owned(),
        at: Instant::now(),
    });
}

/// An axum app served by `epilogue::axum::serve` on a free port.
pub struct AxumServer {
    pub addr: SocketAddr,
    pub runner: Runner,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<ShutdownReport>,
}

impl AxumServer {
    pub async fn start(app: axum::Router, runner: Runner) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = epilogue::axum::serve(listener, app, runner.clone())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .grace(Duration::from_secs(10));
        let handle = tokio::spawn(serve.into_future());
        Self {
            addr,
            runner,
            stop: Some(stop),
            handle,
        }
    }

    /// Sends the shutdown signal and waits for the report.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, &mut self.handle)
            .await
            .expect("the server did not stop in time")
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

use std::future::IntoFuture;

/// Serves any tower service over HTTP/1.1 with hyper, one task per connection.
pub async fn serve_tower<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One keep-alive HTTP/1.1 connection: every request goes over it.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// A response read in full, and how long it took.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub took: Duration,
}

impl Answer {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { sender, addr }
    }

    pub async fn send(&mut self, request: http::Request<Full<Bytes>>) -> Answer {
        let started = Instant::now();
        self.sender.ready().await.unwrap();
        let response = tokio::time::timeout(PATIENCE, self.sender.send_request(request))
            .await
            .expect("no response in time")
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
            took: started.elapsed(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(request("GET", self.addr, path, "")).await
    }

    pub async fn post_json(&mut self, path: &str, json: &str) -> Answer {
        let mut request = request("POST", self.addr, path, json);
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        self.send(request).await
    }
}

pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

/// Polls `check` until it holds, or panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
