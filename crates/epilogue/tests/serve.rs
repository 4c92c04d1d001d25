//! `epilogue::axum::serve` over real sockets: what it takes (any listener,
//! any make-service, `ConnectInfo`), HTTP/2, requests whose client
//! half-closes or leaves, HTTP/1 upgrades, and the protections (header read timeout,
//! connection cap, stalled connections at the deadline).

mod common;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::{report, report_after, Connection, Event, Probe, PATIENCE};
use epilogue::axum::serve;
use epilogue::http::RouteTasksLayer;
use epilogue::{BackgroundTask, Runner, ShutdownReport};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Tx = UnboundedSender<Event>;

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A shutdown signal the test fires.
fn signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    (stop, async move {
        let _ = stopped.await;
    })
}

/// Serves `app` on a free port until the test fires the returned signal.
async fn start(app: Router) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<ShutdownReport>) {
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app, Runner::new())
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    (addr, fire, server)
}

/// Fires the signal and waits for the report.
async fn stop(stop: oneshot::Sender<()>, handle: JoinHandle<ShutdownReport>) -> ShutdownReport {
    let _ = stop.send(());
    tokio::time::timeout(PATIENCE, handle)
        .await
        .expect("the server did not stop in time")
        .unwrap()
}

/// `/task` answers `sent` and runs a task named `task`; `/healthz` answers `ok`.
fn app(tx: &Tx) -> Router {
    Router::new()
        .route(
            "/task",
            post(|State(tx): State<Tx>| async move {
                (
                    BackgroundTask::new(report, (tx, "task")).name("task"),
                    "sent",
                )
            })
            .layer(RouteTasksLayer::admission()),
        )
        // The client has long sent its request, and maybe gone, when the
        // answer is ready.
        .route(
            "/slow-task",
            post(|State(tx): State<Tx>| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                (
                    BackgroundTask::new(report, (tx, "task")).name("task"),
                    "sent",
                )
            })
            .layer(RouteTasksLayer::admission()),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(tx.clone())
}

/// Reads until the server closes the connection (or resets it), or panics
/// after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response with a `Content-Length` body, or panics after
/// [`PATIENCE`].
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a content-length");
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("no response in time")
            .expect("read error");
        assert!(n > 0, "closed mid-response: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

const POST_SLOW_TASK: &str = "POST /slow-task HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n";

#[allow(dead_code, unused_must_use, clippy::let_underscore_future)]
async fn what_axum_serve_takes_this_serve_takes() {
    use axum::handler::{Handler, HandlerWithoutStateExt};
    use axum::serve::ListenerExt;

    async fn handler() {}
    let router = Router::new();
    let runner = Runner::new;
    let tcp = || async { TcpListener::bind("0.0.0.0:0").await.unwrap() };
    let tap = || async { tcp().await.tap_io(|tcp| drop(tcp.set_nodelay(true))) };

    serve(tcp().await, router.clone(), runner()).into_future();
    serve(tap().await, router.clone(), runner()).into_future();
    serve(tcp().await, router.clone().into_make_service(), runner()).into_future();
    serve(
        tcp().await,
        router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
        runner(),
    )
    .into_future();
    serve(
        tap().await,
        router
            .clone()
            .into_make_service_with_connect_info::<SocketAddr>(),
        runner(),
    )
    .into_future();
    serve(tcp().await, get(handler), runner()).into_future();
    serve(tcp().await, handler.into_service(), runner()).into_future();
    serve(tcp().await, handler.with_state(()), runner()).into_future();
    serve(tcp().await, handler.into_make_service(), runner()).into_future();
    // A response body other than axum's.
    serve(
        tcp().await,
        router
            .clone()
            .layer(tower_http::catch_panic::CatchPanicLayer::new()),
        runner(),
    )
    .into_future();
    #[cfg(unix)]
    {
        let unix = || tokio::net::UnixListener::bind("/nonexistent/socket").unwrap();
        serve(unix(), router.clone(), runner()).into_future();
        serve(
            unix(),
            router.into_make_service_with_connect_info::<tokio::net::unix::SocketAddr>(),
            runner(),
        )
        .into_future();
    }
}

#[tokio::test]
async fn handlers_get_the_peer_address() {
    let (listener, addr) = bind().await;
    let app = Router::new().route(
        "/whoami",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
            Runner::new(),
        )
        .with_graceful_shutdown(signal)
        .into_future(),
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    stream
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&me.to_string()), "{response} from {me}");
    drop(stream);
    stop(fire, server).await;
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_answered_and_its_task_runs() {
    let mut probe = Probe::new();
    let (addr, fire, server) = start(app(&probe.tx)).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    for _ in 0..2 {
        let request = http::Request::post(format!("http://{addr}/task"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("no HTTP/2 response in time")
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "sent");
    }
    assert_eq!(probe.names(2).await, ["task", "task"]);
    // The shutdown closes the open HTTP/2 connection (GOAWAY) and drains.
    let report = stop(fire, server).await;
    assert!(report.drained);
    assert_eq!(report.stats.succeeded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upgrades_hand_the_connection_over() {
    // Echoes, over the upgraded connection, what the client sends.
    async fn upgrade(mut request: axum::extract::Request) -> axum::response::Response {
        let upgraded = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgraded.await.unwrap());
            let mut buf = [0; 64];
            let n = io.read(&mut buf).await.unwrap();
            io.write_all(&buf[..n]).await.unwrap();
        });
        axum::response::Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(axum::body::Body::empty())
            .unwrap()
    }
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(
            listener,
            Router::new().route("/upgrade", get(upgrade)),
            Runner::new(),
        )
        .with_graceful_shutdown(signal)
        .into_future(),
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("no response head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
        .await
        .expect("no echo in time")
        .unwrap();
    assert_eq!(&echoed, b"ping");
    let report = stop(fire, server).await;
    assert!(report.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_half_closes_is_answered_and_its_task_runs() {
    const REQUESTS: usize = 20;
    let mut probe = Probe::new();
    let (addr, fire, server) = start(app(&probe.tx)).await;
    let clients: Vec<_> = (0..REQUESTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(POST_SLOW_TASK.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
                read_until_closed(&mut stream, PATIENCE).await
            })
        })
        .collect();
    for client in clients {
        let response = client.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        assert!(response.ends_with("sent"), "{response:?}");
    }
    assert_eq!(probe.names(REQUESTS).await.len(), REQUESTS);
    let report = stop(fire, server).await;
    assert_eq!(report.stats.succeeded, REQUESTS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_closes_right_after_sending_still_runs_its_task() {
    const REQUESTS: usize = 20;
    let mut probe = Probe::new();
    let (addr, fire, server) = start(app(&probe.tx)).await;
    for _ in 0..REQUESTS {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(POST_SLOW_TASK.as_bytes()).await.unwrap();
        drop(stream);
    }
    assert_eq!(probe.names(REQUESTS).await.len(), REQUESTS);
    let report = stop(fire, server).await;
    assert_eq!(report.stats.succeeded, REQUESTS as u64);
}

#[tokio::test]
async fn the_header_read_timeout_closes_slow_and_idle_connections() {
    let probe = Probe::new();
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app(&probe.tx), Runner::new())
            .header_read_timeout(Duration::from_millis(300))
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    // Slowloris: a head that never ends.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    // Silent: not a byte, so not even the protocol is known.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Half an HTTP/2 preface.
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // Idle: one request answered, then nothing.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_response(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    for (what, stream) in [
        ("slow", &mut slow),
        ("silent", &mut silent),
        ("preface", &mut preface),
        ("idle", &mut idle),
    ] {
        let rest = read_until_closed(stream, Duration::from_secs(5)).await;
        // hyper may answer a timed-out head with a 408 before it closes.
        assert!(
            rest.is_empty() || rest.starts_with("HTTP/1.1 408"),
            "{what}: {rest:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    stop(fire, server).await;
}

#[tokio::test]
async fn the_header_read_timeout_spares_busy_connections_and_restarts_after_each_response() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(3 * TIMEOUT).await;
            "slow"
        }),
    );
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app, Runner::new())
            .header_read_timeout(TIMEOUT)
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A handler slower than the timeout: no head is awaited meanwhile.
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.ends_with("slow"), "{answer}");
    // Requests, each within the timeout of the last response, for longer
    // than the timeout in all: the deadline follows them.
    for _ in 0..6 {
        tokio::time::sleep(TIMEOUT / 2).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut stream).await;
        assert!(answer.ends_with("ok"), "{answer}");
    }
    // Then idle: closed, not before the timeout.
    let idle = Instant::now();
    let rest = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(idle.elapsed() >= TIMEOUT - Duration::from_millis(50));
    stop(fire, server).await;
}

/// A server with `body_read_timeout`, whose `/echo` answers with the
/// request's body and sends it on the returned receiver once it is whole.
async fn echo_server(
    body_read_timeout: Duration,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    oneshot::Sender<()>,
    JoinHandle<ShutdownReport>,
) {
    let (received, bodies) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/echo",
            post(
                |State(received): State<UnboundedSender<String>>, body: String| async move {
                    let _ = received.send(body.clone());
                    body
                },
            ),
        )
        .with_state(received);
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app, Runner::new())
            .body_read_timeout(body_read_timeout)
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    (addr, bodies, fire, server)
}

#[tokio::test]
async fn a_stalled_request_body_is_answered_408_and_its_connection_closed() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let (addr, mut bodies, fire, server) = echo_server(TIMEOUT).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A head, five bytes of a chunked body, then nothing.
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    let sent = Instant::now();
    let answer = read_until_closed(&mut stream, PATIENCE).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""reason":"body_timeout""#), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(sent.elapsed() >= TIMEOUT - Duration::from_millis(50));
    assert!(bodies.try_recv().is_err(), "the handler got a body");
    stop(fire, server).await;
}

#[tokio::test]
async fn a_slow_body_that_keeps_sending_is_not_cut() {
    // Each chunk comes within the timeout of the last, the whole body after
    // more than twice the timeout.
    const TIMEOUT: Duration = Duration::from_secs(1);
    let (addr, mut bodies, fire, server) = echo_server(TIMEOUT).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for chunk in ["ab", "cd", "ef", "gh", "ij"] {
        tokio::time::sleep(TIMEOUT / 2).await;
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("abcdefghij"), "{answer}");
    assert!(started.elapsed() > 2 * TIMEOUT);
    assert_eq!(bodies.recv().await.unwrap(), "abcdefghij");
    stop(fire, server).await;
}

#[tokio::test]
async fn past_the_connection_cap_connections_wait_and_open_ones_are_served() {
    let probe = Probe::new();
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app(&probe.tx), Runner::new())
            .max_connections(2)
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    let mut first = Connection::open(addr).await;
    let mut second = Connection::open(addr).await;
    assert_eq!(first.get("/healthz").await.text(), "ok");
    assert_eq!(second.get("/healthz").await.text(), "ok");

    // The third is in the backlog: connected, not served.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served past a cap of two"
    );
    // The open ones still answer.
    assert_eq!(first.get("/healthz").await.text(), "ok");
    assert_eq!(second.get("/healthz").await.text(), "ok");

    // One closes: the third takes its place.
    drop(first);
    let answer = read_response(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    assert_eq!(second.get("/healthz").await.text(), "ok");
    drop(third);
    stop(fire, server).await;
}

#[tokio::test]
async fn stalled_connections_are_closed_at_the_end_of_the_grace_period() {
    let probe = Probe::new();
    let (listener, addr) = bind().await;
    let app = app(&probe.tx)
        .route(
            "/upload",
            post(|body: String| async move { body.len().to_string() }),
        )
        .route("/download", get(|| async { vec![b'x'; 64 << 20] }));
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app, Runner::new())
            .grace(Duration::from_secs(1))
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    // A request whose body never comes in full.
    let mut uploading = TcpStream::connect(addr).await.unwrap();
    uploading
        .write_all(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    // A response the client never reads: far more than the socket buffers.
    let mut downloading = TcpStream::connect(addr).await.unwrap();
    downloading
        .write_all(b"GET /download HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0; 1];
    tokio::time::timeout(PATIENCE, downloading.read_exact(&mut buf))
        .await
        .expect("the download did not start")
        .unwrap();
    // Both connections are open, mid-request, when the signal comes.
    let started = Instant::now();
    let report = stop(fire, server).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(report.drained, "no task was pending: {report:?}");
    // And the stalled connection was closed.
    read_until_closed(&mut uploading, PATIENCE).await;
}

#[tokio::test]
async fn a_custom_signal_drains_accepted_tasks_and_stops_accepting() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/slow",
            post(|State(tx): State<Tx>| async move {
                (
                    BackgroundTask::new(report_after, (tx, "slow", Duration::from_millis(300))),
                    "accepted",
                )
            })
            .layer(RouteTasksLayer::admission()),
        )
        .with_state(probe.tx.clone());
    let (addr, fire, server) = start(app).await;
    let mut connection = Connection::open(addr).await;
    assert_eq!(connection.post_json("/slow", "").await.text(), "accepted");
    let report = stop(fire, server).await;
    assert!(report.drained);
    assert_eq!(report.stats.succeeded, 1);
    assert_eq!(probe.names(1).await, ["slow"]);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after the shutdown"
    );
}

#[tokio::test]
async fn durations_too_long_for_instant_mean_no_limit_and_never_panic() {
    let mut probe = Probe::new();
    let (listener, addr) = bind().await;
    let (fire, signal) = signal();
    let server = tokio::spawn(
        serve(listener, app(&probe.tx), Runner::new())
            .grace(Duration::MAX)
            .header_read_timeout(Duration::MAX)
            .max_connections(usize::MAX)
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    let mut connection = Connection::open(addr).await;
    assert_eq!(connection.post_json("/task", "").await.text(), "sent");
    assert_eq!(probe.names(1).await, ["task"]);
    drop(connection);
    let report = stop(fire, server).await;
    assert!(report.drained);
}
