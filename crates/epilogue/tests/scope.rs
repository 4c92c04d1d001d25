//! The request's scope: tasks run only for a handler that answered with a
//! success, wherever the layers sit, and no task is ever lost silently.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use common::{
    report, report_when_opened, serve_tower, AxumServer, Captured, Connection, Event, Probe,
    PATIENCE,
};
use epilogue::axum::{background, Admitted};
use epilogue::http::{BackgroundLayer, RequestTasks};
use epilogue::{BackgroundTask, Runner};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_http::timeout::TimeoutLayer;

type Tx = UnboundedSender<Event>;
type Gate = std::sync::Arc<tokio::sync::Semaphore>;
type Handled = std::sync::Arc<std::sync::atomic::AtomicU32>;

fn task(tx: &Tx, name: &'static str) -> BackgroundTask {
    BackgroundTask::new(report, (tx.clone(), name)).name(name)
}

/// A handler that adds a task through the extractor, then either answers,
/// fails with `?`, or takes `slow_ms` first.
async fn order(
    State(tx): State<Tx>,
    tasks: RequestTasks,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<(StatusCode, &'static str), (StatusCode, &'static str)> {
    tasks.add_task(report, (tx, "order email"));
    if query.contains_key("always") {
        tasks.always();
    }
    if let Some(ms) = query.get("slow_ms") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if query.contains_key("conflict") {
        return Err((StatusCode::CONFLICT, "taken"));
    }
    Ok((StatusCode::CREATED, "saved"))
}

fn orders(tx: &Tx) -> Router {
    Router::new()
        .route("/orders", post(order))
        .route(
            "/orders/timed",
            post(order.layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(200),
            ))),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(tx.clone())
}

#[tokio::test]
async fn extracted_tasks_run_only_after_a_success_unless_always() {
    let mut probe = Probe::new();
    let server = AxumServer::start(orders(&probe.tx), Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;

    let answer = connection.post_json("/orders?conflict", "").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    let answer = connection.post_json("/orders", "").await;
    assert_eq!(answer.status, StatusCode::CREATED);
    // Tasks run in request order: the only one is the success's.
    assert_eq!(probe.names(1).await, ["order email"]);

    let answer = connection.post_json("/orders?conflict&always", "").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(probe.names(1).await, ["order email"]);

    let stats = server.shutdown().await.stats;
    assert_eq!(
        (stats.accepted, stats.succeeded, stats.abandoned),
        (3, 2, 1),
        "{stats:?}"
    );
    assert!(probe.is_empty());
}

#[tokio::test]
async fn a_timeout_around_the_router_or_one_route_runs_none_of_the_handlers_tasks() {
    let mut probe = Probe::new();
    let app = orders(&probe.tx).layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_millis(300),
    ));
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;

    // Cancelled by the router-wide timeout, then by the route's own.
    let answer = connection.post_json("/orders?slow_ms=3000", "").await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    let answer = connection.post_json("/orders/timed?slow_ms=3000", "").await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    // A request that answers in time still runs its task, and only it.
    assert_eq!(
        connection.post_json("/orders", "").await.status,
        StatusCode::CREATED
    );
    assert_eq!(probe.names(1).await, ["order email"]);

    let stats = server.shutdown().await.stats;
    assert_eq!((stats.succeeded, stats.abandoned), (1, 2), "{stats:?}");
    assert!(probe.is_empty(), "a cancelled handler's task ran");
}

#[tokio::test]
async fn a_timeout_outside_the_executing_layer_abandons_the_tasks_too() {
    let mut probe = Probe::new();
    let runner = Runner::new();
    // The timeout drops the executing layer's own future.
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(300),
        ))
        .layer(BackgroundLayer::new(runner.clone()))
        .service(orders(&probe.tx));
    let addr = serve_tower(service).await;
    let mut connection = Connection::open(addr).await;
    let answer = connection.post_json("/orders?slow_ms=3000", "").await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        connection.post_json("/orders", "").await.status,
        StatusCode::CREATED
    );
    assert_eq!(probe.names(1).await, ["order email"]);
    let stats = runner.shutdown(PATIENCE).await.stats;
    assert_eq!((stats.succeeded, stats.abandoned), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn a_handler_cancelled_by_its_server_when_the_client_leaves_runs_no_task() {
    let mut probe = Probe::new();
    let runner = Runner::new();
    // hyper's own HTTP/1 server, which drops a request's future when its
    // client goes away (epilogue's `serve` handles it to the end instead).
    let addr = serve_tower(BackgroundLayer::new(runner.clone()).layer(orders(&probe.tx))).await;

    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"POST /orders?slow_ms=2000 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    // Wait until the handler holds its task, then go away.
    common::eventually("the request to be admitted", || {
        let runner = runner.clone();
        async move { runner.stats().accepted == 0 && admitted(&runner) }
    })
    .await;
    // Deprecated because dropping such a socket may block; with a zero
    // linger it does not, and it is how a test sends a reset.
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);

    common::eventually("the task to be abandoned", || {
        let runner = runner.clone();
        async move { runner.stats().abandoned == 1 }
    })
    .await;
    let stats = runner.shutdown(PATIENCE).await.stats;
    assert_eq!((stats.succeeded, stats.abandoned), (0, 1), "{stats:?}");
    assert!(probe.is_empty(), "the cancelled handler's task ran");
}

#[tokio::test]
async fn with_serve_a_client_that_leaves_does_not_cancel_its_request() {
    let mut probe = Probe::new();
    let runner = Runner::new();
    let server = AxumServer::start(orders(&probe.tx), runner.clone()).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"POST /orders?slow_ms=300 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    common::eventually("the request to be admitted", || {
        let runner = runner.clone();
        async move { admitted(&runner) }
    })
    .await;
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO)).unwrap();
    drop(socket);
    // The request was received in full: it is handled, and its task runs.
    assert_eq!(probe.names(1).await, ["order email"]);
    let stats = server.shutdown().await.stats;
    assert_eq!((stats.succeeded, stats.abandoned), (1, 0), "{stats:?}");
}

/// Whether a request holds room in the runner: its `Debug` shows it.
fn admitted(runner: &Runner) -> bool {
    format!("{runner:?}").contains("admitted: 1")
}

/// Route-level, response and extracted tasks on one request.
fn all_three(tx: &Tx) -> Router {
    all_three_routes(tx).with_state(tx.clone())
}

fn all_three_routes(tx: &Tx) -> Router<Tx> {
    Router::new().route(
        "/all",
        post(
            (|State(tx): State<Tx>, tasks: RequestTasks| async move {
                tasks.add_task(report, (tx.clone(), "extracted"));
                (task(&tx, "response"), "sent")
            })
            .layer(background(task(tx, "route"))),
        ),
    )
}

#[tokio::test]
async fn the_scope_travels_behind_a_buffer_and_a_layer_that_spawns() {
    let mut probe = Probe::new();
    let runner = Runner::new();

    let buffered = ServiceBuilder::new()
        .layer(BackgroundLayer::new(runner.clone()))
        .map_err(|error| -> Infallible { panic!("buffer failed: {error}") })
        .buffer(16)
        .service(all_three(&probe.tx));
    let addr = serve_tower(buffered).await;
    let answer = Connection::open(addr).await.post_json("/all", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(probe.names(3).await, ["route", "response", "extracted"]);

    // Every call of the router on a task of its own.
    let router = all_three(&probe.tx);
    let spawning = tower::service_fn(move |request| {
        let router = router.clone();
        async move { tokio::spawn(router.oneshot(request)).await.unwrap() }
    });
    let addr = serve_tower(BackgroundLayer::new(runner.clone()).layer(spawning)).await;
    let answer = Connection::open(addr).await.post_json("/all", "").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(probe.names(3).await, ["route", "response", "extracted"]);

    assert_eq!(runner.shutdown(PATIENCE).await.stats.succeeded, 6);
}

#[tokio::test]
async fn the_executing_layer_works_as_a_router_layer_under_plain_axum_serve() {
    let mut probe = Probe::new();
    let runner = Runner::new();
    let app = all_three_routes(&probe.tx)
        .route(
            "/page",
            get(|State(tx): State<Tx>| async move { (task(&tx, "viewed"), "page") }),
        )
        .with_state(probe.tx.clone())
        .layer(BackgroundLayer::new(runner.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut connection = Connection::open(addr).await;
    assert_eq!(
        connection.post_json("/all", "").await.status,
        StatusCode::OK
    );
    assert_eq!(probe.names(3).await, ["route", "response", "extracted"]);
    for method in ["GET", "HEAD"] {
        let answer = connection
            .send(common::request(method, addr, "/page", ""))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{method}");
        assert_eq!(probe.names(1).await, ["viewed"], "{method}");
    }
    runner.shutdown(PATIENCE).await;
}

#[tokio::test]
async fn tasks_that_reach_no_executing_layer_are_counted() {
    let probe = Probe::new();
    let app: Router = Router::new()
        .route(
            "/register",
            post(|State(tx): State<Tx>| async move { (task(&tx, "lost"), "created") }),
        )
        .with_state(probe.tx.clone());
    let before = epilogue::http::tasks_without_layer();
    let request = http::Request::post("/register")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(epilogue::http::tasks_without_layer(), before);
    drop(response);
    assert_eq!(epilogue::http::tasks_without_layer(), before + 1);
}

#[tokio::test]
async fn tasks_returned_on_a_route_that_was_not_admitted_run_and_are_counted() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/forgot",
            post(|State(tx): State<Tx>| async move { (task(&tx, "forgot"), "sent") }),
        )
        .route(
            "/admitted",
            post(
                |_: Admitted, State(tx): State<Tx>| async move { (task(&tx, "admitted"), "sent") },
            ),
        )
        .with_state(probe.tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    connection.post_json("/forgot", "").await;
    connection.post_json("/admitted", "").await;
    assert_eq!(probe.names(2).await, ["forgot", "admitted"]);
    let stats = server.shutdown().await.stats;
    assert_eq!((stats.succeeded, stats.unadmitted), (2, 1), "{stats:?}");
}

/// The runner's bounds hold on a route that forgot admission: once its
/// handler has answered with tasks and the runner is full, the answer is a
/// `503`, and the tasks never run.
#[tokio::test]
async fn a_route_that_forgot_admission_cannot_run_past_the_limits() {
    let mut probe = Probe::new();
    let gate = common::gate();
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/forgot",
            post(
                |State((tx, _, handled)): State<(Tx, Gate, Handled)>| async move {
                    handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    (task(&tx, "forgot"), "sent")
                },
            ),
        )
        .route(
            "/slow",
            post(
                |State((tx, gate, _)): State<(Tx, Gate, Handled)>| async move {
                    (
                        BackgroundTask::new(report_when_opened, (tx, "slow", gate)),
                        "sent",
                    )
                },
            ),
        )
        .with_state((probe.tx.clone(), gate.clone(), handled.clone()));
    let runner = Runner::builder().max_running(1).max_pending(0).build();
    let server = AxumServer::start(app, runner.clone()).await;
    let mut connection = Connection::open(server.addr).await;
    // The one place, held until the gate opens.
    assert_eq!(
        connection.post_json("/slow", "").await.status,
        StatusCode::OK
    );
    let refused = connection.post_json("/forgot", "").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        refused.text().contains(r#""reason":"full""#),
        "{}",
        refused.text()
    );
    // The handler ran (nothing refused it before), its tasks did not.
    assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(runner.stats().groups_admitted <= 1);

    gate.add_permits(1);
    assert_eq!(probe.names(1).await, ["slow"]);
    let stats = server.shutdown().await.stats;
    assert_eq!(
        (stats.succeeded, stats.refused, stats.unadmitted),
        (1, 1, 2),
        "{stats:?}"
    );
    assert!(probe.is_empty(), "the refused response's task ran");
}

#[tokio::test]
async fn a_tasks_log_lines_name_the_request_it_came_from() {
    let captured = Captured::default();
    // This test's runtime has one thread: the server and its tasks log here.
    let _guard = captured.set_default(tracing::Level::INFO);

    async fn no_mail_server() -> Result<(), &'static str> {
        Err("no mail server")
    }
    let app = Router::new()
        .route(
            "/register",
            post(|tasks: RequestTasks| async move {
                tasks.add_task(no_mail_server, ());
                "created"
            }),
        )
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO),
            ),
        );
    let server = AxumServer::start(app, Runner::new()).await;
    Connection::open(server.addr)
        .await
        .post_json("/register", "")
        .await;
    let stats = server.shutdown().await.stats;
    assert_eq!(stats.failed, 1);
    let logs = captured.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("background task failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
    assert!(
        line.contains("request{method=POST uri=") && line.contains("/register version="),
        "the failure does not name its request: {line}"
    );
}

#[tokio::test]
async fn a_route_groups_mode_stays_its_own() {
    let mut probe = Probe::new();
    let tx = probe.tx.clone();
    let slow = |name| {
        BackgroundTask::new(
            common::report_after,
            (tx.clone(), name, Duration::from_millis(200)),
        )
        .name(name)
    };
    let mut side_by_side = epilogue::BackgroundTasks::concurrent();
    side_by_side.push(slow("route a")).push(slow("route b"));
    let mut strict = epilogue::BackgroundTasks::stop_on_error();
    strict
        .push(BackgroundTask::new(|| async { Err::<(), _>("down") }, ()).name("failing route"))
        .push(task(&tx, "skipped route"));
    let app = Router::new()
        .route(
            "/concurrent",
            post(
                (|State(tx): State<Tx>| async move { (task(&tx, "response"), "sent") })
                    .layer(background(side_by_side)),
            ),
        )
        .route(
            "/strict",
            post(
                (|State(tx): State<Tx>| async move { (task(&tx, "response"), "sent") })
                    .layer(background(strict)),
            ),
        )
        .with_state(tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    connection.post_json("/concurrent", "").await;
    // The route's concurrent set runs first, as one step; the response's task after it.
    let mut names = probe.names(3).await;
    names[..2].sort();
    assert_eq!(names, ["route a", "route b", "response"]);
    connection.post_json("/strict", "").await;
    // The route's failure stops its own group only.
    assert_eq!(probe.names(1).await, ["response"]);
    let stats = server.shutdown().await.stats;
    assert_eq!((stats.skipped, stats.failed), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn route_tasks_of_a_cancelled_handler_are_counted_as_abandoned() {
    let probe = Probe::new();
    let runner = Runner::new();
    let app = Router::new()
        .route(
            "/slow",
            post(
                (|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "too late"
                })
                .layer(background([task(&probe.tx, "one"), task(&probe.tx, "two")])),
            ),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ));
    let server = AxumServer::start(app, runner.clone()).await;
    let answer = Connection::open(server.addr)
        .await
        .post_json("/slow", "")
        .await;
    assert_eq!(answer.status, StatusCode::REQUEST_TIMEOUT);
    let stats = server.shutdown().await.stats;
    assert_eq!(
        (stats.accepted, stats.abandoned, stats.succeeded),
        (2, 2, 0),
        "{stats:?}"
    );
}
