//! tower-http middleware around or inside the executing layer: in either
//! order the response is never held back for tasks, and tasks never start
//! before the body they belong to has been handed on.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use common::{report_when_opened, serve_tower, AxumServer, Connection, Event, Probe};
use epilogue::http::BackgroundLayer;
use epilogue::{BackgroundTask, Runner};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use hyper::body::Incoming;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;
use tower::util::MapRequestLayer;
use tower::{Layer, ServiceBuilder};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

type Tx = UnboundedSender<Event>;

fn page() -> String {
    "background tasks run after the response. ".repeat(200)
}

/// `/page`, whose task waits for the test to open `gate`.
fn router(probe: &Probe, gate: &Arc<Semaphore>) -> Router {
    Router::new()
        .route(
            "/page",
            get(
                |State((tx, gate)): State<(Tx, Arc<Semaphore>)>| async move {
                    let task = BackgroundTask::new(report_when_opened, (tx, "after page", gate));
                    (task, page())
                },
            ),
        )
        .with_state((probe.tx.clone(), gate.clone()))
}

async fn fetch_gzipped(addr: std::net::SocketAddr) -> String {
    let mut request = common::request("GET", addr, "/page", "");
    request
        .headers_mut()
        .insert(ACCEPT_ENCODING, http::HeaderValue::from_static("gzip"));
    let answer = Connection::open(addr).await.send(request).await;
    assert_eq!(answer.status, http::StatusCode::OK);
    assert_eq!(answer.headers[CONTENT_ENCODING], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&answer.body[..])
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// The whole page arrives while its task waits for `gate` (a response that
/// waited for it would never come), then the task runs once opened.
async fn check(addr: std::net::SocketAddr, probe: &mut Probe, gate: &Semaphore) {
    let text = fetch_gzipped(addr).await;
    assert_eq!(text, page());
    assert!(probe.is_empty());
    gate.add_permits(1);
    assert_eq!(probe.names(1).await, ["after page"]);
}

#[tokio::test]
async fn middleware_inside_the_executing_layer() {
    let mut probe = Probe::new();
    let gate = common::gate();
    let app = router(&probe, &gate)
        .layer(CompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(5),
        ))
        .layer(TraceLayer::new_for_http());
    let server = AxumServer::start(app, Runner::new()).await;
    check(server.addr, &mut probe, &gate).await;
    server.shutdown().await;
}

#[tokio::test]
async fn middleware_around_the_executing_layer() {
    let mut probe = Probe::new();
    let gate = common::gate();
    let service = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(5),
        ))
        .layer(CompressionLayer::new())
        .service(BackgroundLayer::new(Runner::new()).layer(router(&probe, &gate)));
    let service = MapRequestLayer::new(|r: http::Request<Incoming>| r.map(axum::body::Body::new))
        .layer(service);
    let addr = serve_tower(service).await;
    check(addr, &mut probe, &gate).await;
}

#[tokio::test]
async fn tasks_cross_a_layer_that_polls_on_another_task() {
    // tower::buffer runs the router on a worker task of its own, away from
    // the executing layer: the response's tasks travel in its extensions.
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/page",
            get(|State(tx): State<Tx>| async move {
                (BackgroundTask::new(common::report, (tx, "buffered")), "ok")
            }),
        )
        .with_state(probe.tx.clone());
    let buffered = ServiceBuilder::new()
        .layer(BackgroundLayer::new(Runner::new()))
        .layer(tower::buffer::BufferLayer::new(8))
        .service(app);
    let service = ServiceBuilder::new()
        .map_request(|r: http::Request<Incoming>| r.map(axum::body::Body::new))
        .map_err(|e: tower::BoxError| -> std::convert::Infallible { panic!("{e}") })
        .service(buffered);
    let addr = serve_tower(service).await;
    let answer = Connection::open(addr).await.get("/page").await;
    assert_eq!(answer.text(), "ok");
    assert_eq!(probe.names(1).await, ["buffered"]);
}
