//! The executing layer over a plain hyper server: when tasks start relative
//! to the body, and that wrapping a body changes nothing on the wire.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{report, report_when_opened, serve_tower, Connection, Probe};
use epilogue::http::{attach, BackgroundLayer};
use epilogue::{BackgroundTask, Runner};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Channel, Empty, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer};

#[tokio::test]
async fn content_length_is_kept_and_the_task_runs_after_the_body() {
    let mut probe = Probe::new();
    let tx = probe.tx.clone();
    let service = service_fn(move |_: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::from_static(b"hello world")));
            attach(
                response.extensions_mut(),
                BackgroundTask::new(report, (tx, "after")),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let addr = serve_tower(BackgroundLayer::new(Runner::new()).layer(service)).await;
    let mut connection = Connection::open(addr).await;
    let answer = connection.get("/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[http::header::CONTENT_LENGTH], "11");
    assert!(!answer.headers.contains_key(http::header::TRANSFER_ENCODING));
    assert_eq!(answer.text(), "hello world");
    assert_eq!(probe.next().await.name, "after");
}

#[tokio::test]
async fn an_empty_body_that_is_never_polled_still_runs_its_tasks() {
    let mut probe = Probe::new();
    let tx = probe.tx.clone();
    let service = service_fn(move |_: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = StatusCode::NO_CONTENT;
            attach(
                response.extensions_mut(),
                BackgroundTask::new(report, (tx, "empty")),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let addr = serve_tower(BackgroundLayer::new(Runner::new()).layer(service)).await;
    let answer = Connection::open(addr).await.get("/").await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(probe.next().await.name, "empty");
}

/// A service whose body is a channel the test writes to.
type Bodies = std::sync::Arc<Mutex<mpsc::Receiver<Channel<Bytes>>>>;

type Streaming = BoxCloneService<Request<Incoming>, Response<Channel<Bytes>>, Infallible>;

/// A service answering each request with the next body the test sends it.
fn streaming_service(probe: &Probe) -> (Streaming, mpsc::Sender<Channel<Bytes>>) {
    let (bodies_tx, bodies_rx) = mpsc::channel(1);
    let bodies: Bodies = std::sync::Arc::new(Mutex::new(bodies_rx));
    let tx = probe.tx.clone();
    let service = service_fn(move |_: Request<Incoming>| {
        let (tx, bodies) = (tx.clone(), bodies.clone());
        async move {
            let body = bodies.lock().await.recv().await.unwrap();
            let mut response = Response::new(body);
            attach(
                response.extensions_mut(),
                BackgroundTask::new(report, (tx, "streamed")),
            );
            Ok::<_, Infallible>(response)
        }
    });
    (BoxCloneService::new(service), bodies_tx)
}

#[tokio::test]
async fn a_streaming_body_runs_its_tasks_only_after_its_last_chunk() {
    // Set by the test just before it ends the body: a task that starts any
    // earlier sees it false.
    let body_ended = Arc::new(AtomicBool::new(false));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (bodies, bodies_rx) = mpsc::channel::<Channel<Bytes>>(1);
    let bodies_rx = Arc::new(Mutex::new(bodies_rx));
    let ended = body_ended.clone();
    let service = service_fn(move |_: Request<Incoming>| {
        let (bodies_rx, ended, started_tx) = (bodies_rx.clone(), ended.clone(), started_tx.clone());
        async move {
            let body = bodies_rx.lock().await.recv().await.unwrap();
            let mut response = Response::new(body);
            let task = move || async move {
                let _ = started_tx.send(ended.load(Ordering::SeqCst));
            };
            attach(response.extensions_mut(), BackgroundTask::new(task, ()));
            Ok::<_, Infallible>(response)
        }
    });
    let addr = serve_tower(BackgroundLayer::new(Runner::new()).layer(service)).await;
    let (mut chunks, body) = Channel::<Bytes>::new(1);
    bodies.send(body).await.unwrap();

    let mut connection = Connection::open(addr).await;
    let request = common::request("GET", addr, "/", "");
    // The response arrives at once; its body only as the test sends chunks.
    let client = tokio::spawn(async move { connection.send(request).await });
    for chunk in ["one ", "two ", "three"] {
        // Each send waits for the server to take the chunk before: a task
        // started with the head would have run by the last one.
        chunks
            .send_data(Bytes::from_static(chunk.as_bytes()))
            .await
            .unwrap();
    }
    body_ended.store(true, Ordering::SeqCst);
    drop(chunks);
    let saw_the_end = tokio::time::timeout(common::PATIENCE, started.recv())
        .await
        .expect("the task runs")
        .unwrap();
    assert!(saw_the_end, "the task started before the body ended");
    assert_eq!(client.await.unwrap().text(), "one two three");
}

#[tokio::test]
async fn a_client_gone_mid_body_does_not_cancel_the_tasks() {
    let mut probe = Probe::new();
    let (service, bodies) = streaming_service(&probe);
    let addr = serve_tower(BackgroundLayer::new(Runner::new()).layer(service)).await;
    let (mut chunks, body) = Channel::<Bytes>::new(1);
    bodies.send(body).await.unwrap();

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET / HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    chunks
        .send_data(Bytes::from_static(b"first chunk"))
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    drop(stream);

    // hyper notices the client is gone when it next writes; keep the body
    // coming, as a real stream would, until the task reports.
    let reported = tokio::spawn(async move { probe.next().await });
    for _ in 0..200 {
        if reported.is_finished() || chunks.send_data(Bytes::from_static(b"more")).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reported.await.unwrap().name, "streamed");
}

#[tokio::test]
async fn a_slow_task_delays_neither_the_response_nor_the_next_request_on_the_connection() {
    let mut probe = Probe::new();
    let tx = probe.tx.clone();
    let gate = common::gate();
    let closed = gate.clone();
    let service = service_fn(move |_: Request<Incoming>| {
        let (tx, closed) = (tx.clone(), closed.clone());
        async move {
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            attach(
                response.extensions_mut(),
                BackgroundTask::new(report_when_opened, (tx, "slow", closed)),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let addr = serve_tower(BackgroundLayer::new(Runner::new()).layer(service)).await;
    let mut connection = Connection::open(addr).await;
    // The tasks cannot end until the gate opens: both answers (each within
    // the client's patience) come while they wait.
    assert_eq!(connection.get("/").await.text(), "ok");
    assert_eq!(connection.get("/").await.text(), "ok");
    assert!(probe.is_empty());
    gate.add_permits(2);
    assert_eq!(probe.names(2).await, ["slow", "slow"]);
}

#[tokio::test]
async fn without_tasks_the_body_passes_through_untouched() {
    let service = service_fn(|_: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"plain"))))
    });
    let runner = Runner::new();
    let addr = serve_tower(BackgroundLayer::new(runner.clone()).layer(service)).await;
    let answer = Connection::open(addr).await.get("/").await;
    assert_eq!(answer.text(), "plain");
    assert_eq!(runner.stats().accepted, 0);

    // And in process: the wrapped body holds no tasks and keeps its size.
    use http_body::Body as _;
    use tower::ServiceExt as _;
    let body = BackgroundLayer::new(runner)
        .layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
        }))
        .oneshot(Request::new(()))
        .await
        .unwrap()
        .into_body();
    assert!(!body.has_pending_tasks());
    assert_eq!(body.size_hint().exact(), Some(1));
    assert_eq!(body.collect().await.unwrap().to_bytes(), "x");
}
