//! The axum integration over real sockets: the five patterns, the extractor,
//! status rules, blocking tasks, overload and shutdown.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{
    report, report_after, report_blocking, report_when_opened, AxumServer, Connection, Event, Probe,
};
use epilogue::axum::background;
use epilogue::http::RequestTasks;
use epilogue::http::RouteTasksLayer;
use epilogue::{BackgroundTask, BackgroundTasks, Runner};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;

type Tx = UnboundedSender<Event>;

fn task(tx: &Tx, name: &'static str) -> BackgroundTask {
    BackgroundTask::new(report, (tx.clone(), name)).name(name)
}

#[derive(serde::Deserialize)]
struct SignUp {
    #[allow(dead_code)]
    email: String,
}

/// Every pattern on one router, each route reporting its own task names.
fn patterns(tx: &Tx) -> Router {
    Router::new()
        .route(
            "/handler/single",
            post(|_: Json<SignUp>| async { StatusCode::CREATED })
                .layer(background(task(tx, "route"))),
        )
        .route(
            "/handler/list",
            post(|_: Json<SignUp>| async { StatusCode::CREATED })
                .layer(background([task(tx, "route 1"), task(tx, "route 2")])),
        )
        .route(
            "/response/single",
            post(|State(tx): State<Tx>| async move { (task(&tx, "response"), "sent") })
                .layer(RouteTasksLayer::admission()),
        )
        .route(
            "/response/list",
            post(|State(tx): State<Tx>| async move {
                (
                    BackgroundTasks::from([task(&tx, "response 1"), task(&tx, "response 2")]),
                    "sent",
                )
            })
            .layer(RouteTasksLayer::admission()),
        )
        .route(
            "/response/add-task",
            post(|State(tx): State<Tx>| async move {
                let mut tasks = BackgroundTasks::new();
                tasks.add_task(report, (tx.clone(), "added 1"));
                tasks.add_task(report_blocking, (tx, "added 2", Duration::ZERO));
                (tasks, "sent")
            })
            .layer(RouteTasksLayer::admission()),
        )
        .route(
            "/extractor",
            post(|State(tx): State<Tx>, tasks: RequestTasks| async move {
                tasks.add_task(report, (tx, "extracted"));
                "sent"
            }),
        )
        // All three sources on one request: route, response, extractor.
        .route(
            "/all",
            post(|State(tx): State<Tx>, tasks: RequestTasks| async move {
                tasks.add_task(report, (tx.clone(), "extracted"));
                (task(&tx, "response"), "sent")
            })
            .layer(background(task(tx, "route"))),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(tx.clone())
}

#[tokio::test]
async fn the_five_patterns_and_the_extractor_run_their_tasks() {
    let mut probe = Probe::new();
    let server = AxumServer::start(patterns(&probe.tx), Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    let body = r#"{"email":"ada@example.com"}"#;
    let cases: [(&str, &[&str]); 7] = [
        ("/handler/single", &["route"]),
        ("/handler/list", &["route 1", "route 2"]),
        ("/response/single", &["response"]),
        ("/response/list", &["response 1", "response 2"]),
        ("/response/add-task", &["added 1", "added 2"]),
        ("/extractor", &["extracted"]),
        ("/all", &["route", "response", "extracted"]),
    ];
    for (path, expected) in cases {
        let answer = connection.post_json(path, body).await;
        assert!(answer.status.is_success(), "{path}: {answer:?}");
        assert_eq!(probe.names(expected.len()).await, expected, "{path}");
    }
    let report = server.shutdown().await;
    assert!(report.drained);
    assert_eq!(report.stats.succeeded, 12);
    assert!(probe.is_empty());
}

#[tokio::test]
async fn route_tasks_skip_rejected_requests_and_handler_tasks_do_not() {
    let mut probe = Probe::new();
    let tx = probe.tx.clone();
    let app = patterns(&tx)
        .route(
            "/always",
            post(|_: Json<SignUp>| async { StatusCode::CREATED })
                .layer(background(task(&tx, "always")).always()),
        )
        .route(
            "/refuse",
            post(move || {
                let tx = tx.clone();
                async move {
                    (
                        StatusCode::CONFLICT,
                        task(&tx, "chosen by the handler"),
                        "taken",
                    )
                }
            }),
        );
    let runner = Runner::new();
    let server = AxumServer::start(app, runner.clone()).await;
    let mut connection = Connection::open(server.addr).await;

    for bad in ["not json", r#"{"name":"no email"}"#, r#"{"email":5}"#] {
        let answer = connection.post_json("/handler/single", bad).await;
        assert!(answer.status.is_client_error(), "{bad}: {answer:?}");
        let answer = connection.post_json("/extractor", bad).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "the extractor route takes any body"
        );
    }
    assert_eq!(probe.names(3).await, ["extracted"; 3]);
    // No "route" task ran for the three rejected requests.

    let answer = connection.post_json("/always", "not json").await;
    assert!(answer.status.is_client_error());
    assert_eq!(probe.names(1).await, ["always"]);

    let answer = connection.post_json("/refuse", "").await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(probe.names(1).await, ["chosen by the handler"]);

    server.shutdown().await;
    assert!(probe.is_empty(), "a rejected request ran a route task");
    assert_eq!(runner.stats().accepted, 5);
}

#[tokio::test]
async fn the_response_does_not_wait_for_a_slow_task_nor_does_the_next_request() {
    let mut probe = Probe::new();
    let gate = common::gate();
    let app = Router::new()
        .route(
            "/slow",
            post(
                |State((tx, gate)): State<(Tx, Arc<Semaphore>)>| async move {
                    (
                        BackgroundTask::new(report_when_opened, (tx, "slow", gate)),
                        "accepted",
                    )
                },
            )
            .layer(RouteTasksLayer::admission()),
        )
        .with_state((probe.tx.clone(), gate.clone()));
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    // The tasks cannot end until the gate opens: both answers (each within
    // the client's patience) come while they wait.
    assert_eq!(connection.post_json("/slow", "").await.text(), "accepted");
    assert_eq!(connection.post_json("/slow", "").await.text(), "accepted");
    assert!(probe.is_empty());
    gate.add_permits(2);
    assert_eq!(probe.names(2).await, ["slow", "slow"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_blocking_tasks_do_not_stall_the_service() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/block",
            post(|State(tx): State<Tx>| async move {
                (
                    BackgroundTask::new(report_blocking, (tx, "blocked", Duration::from_secs(1))),
                    "accepted",
                )
            })
            .layer(RouteTasksLayer::admission()),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(probe.tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    for _ in 0..20 {
        assert_eq!(
            connection.post_json("/block", "").await.status,
            StatusCode::OK
        );
    }
    // Twenty threads now sleep a second each; the async workers are free.
    let health = connection.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(
        health.took < Duration::from_millis(500),
        "{:?}",
        health.took
    );
    assert_eq!(
        server.runner.stats().succeeded,
        0,
        "the blocking tasks are still asleep"
    );
    assert_eq!(probe.names(20).await.len(), 20);
    server.shutdown().await;
}

#[tokio::test]
async fn a_concurrent_group_runs_its_tasks_side_by_side() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/fan-out",
            post(|State(tx): State<Tx>| async move {
                let mut tasks = BackgroundTasks::concurrent();
                for name in ["a", "b", "c"] {
                    tasks.add_task(report_after, (tx.clone(), name, Duration::from_millis(600)));
                }
                (tasks, "accepted")
            })
            .layer(RouteTasksLayer::admission()),
        )
        .with_state(probe.tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    Connection::open(server.addr)
        .await
        .post_json("/fan-out", "")
        .await;
    let events = [probe.next().await, probe.next().await, probe.next().await];
    // One after another they would take 1.8 s; side by side they end together.
    let spread = events[2].at - events[0].at;
    assert!(spread < Duration::from_millis(400), "{spread:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_runner_refuses_before_the_handler_and_loses_no_accepted_task() {
    let mut probe = Probe::new();
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = handled.clone();
    let app = Router::new()
        .route(
            "/work",
            post(move |State(tx): State<Tx>| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    (
                        BackgroundTask::new(report_after, (tx, "work", Duration::from_millis(300))),
                        "accepted",
                    )
                }
            })
            .layer(RouteTasksLayer::admission()),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(probe.tx.clone());
    let runner = Runner::builder().max_running(1).max_pending(1).build();
    let server = AxumServer::start(app, runner.clone()).await;

    let mut clients = Vec::new();
    for _ in 0..12 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            Connection::open(addr).await.post_json("/work", "").await
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for client in clients {
        let answer = client.await.unwrap();
        match answer.status {
            StatusCode::OK => accepted += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(answer.headers[http::header::RETRY_AFTER], "1");
                assert!(
                    answer
                        .text()
                        .contains(r#""error":"background work is at capacity"#),
                    "{}",
                    answer.text()
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "12 requests at once cannot fit in 2 places");
    assert!(accepted >= 2);
    assert_eq!(
        handled.load(std::sync::atomic::Ordering::SeqCst),
        accepted,
        "a refused request never reached its handler"
    );
    // Routes without tasks still answer while the runner is full.
    assert_eq!(
        Connection::open(server.addr)
            .await
            .get("/healthz")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(probe.names(accepted).await.len(), accepted);
    let report = server.shutdown().await;
    assert_eq!(report.stats.succeeded as usize, accepted);
    assert_eq!(report.stats.refused as usize, refused);
}

#[tokio::test]
async fn a_missing_executing_layer_is_a_clear_500_not_lost_work() {
    let probe = Probe::new();
    let app: Router = Router::new().route(
        "/register",
        post(|| async { "created" }).layer(background(task(&probe.tx, "route"))),
    );
    // Served without epilogue: nobody would run the tasks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let answer = Connection::open(addr)
        .await
        .post_json("/register", "")
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer.text().contains("BackgroundLayer is missing"),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn a_handler_that_panics_schedules_nothing() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/panic",
            post(|State(tx): State<Tx>, tasks: RequestTasks| async move {
                tasks.add_task(report, (tx, "never"));
                let bug = true;
                if bug {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        )
        .route(
            "/fine",
            post(|State(tx): State<Tx>, tasks: RequestTasks| async move {
                tasks.add_task(report, (tx, "fine"));
            }),
        )
        .with_state(probe.tx.clone())
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    let answer = connection.post_json("/panic", "").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    connection.post_json("/fine", "").await;
    // Tasks run in request order: "fine" first means "never" never ran.
    assert_eq!(probe.names(1).await, ["fine"]);
    let report = server.shutdown().await;
    assert_eq!(
        (report.stats.succeeded, report.stats.abandoned),
        (1, 1),
        "{report:?}"
    );
}

#[tokio::test]
async fn head_requests_run_the_get_route_tasks_after_the_headers() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/page",
            get(|State(tx): State<Tx>| async move { (task(&tx, "viewed"), "a page body") }),
        )
        .with_state(probe.tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    let mut connection = Connection::open(server.addr).await;
    let answer = connection
        .send(common::request("HEAD", server.addr, "/page", ""))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.is_empty());
    assert_eq!(answer.headers[http::header::CONTENT_LENGTH], "11");
    assert_eq!(probe.names(1).await, ["viewed"]);
    // The connection is still usable: the body was not mis-sent.
    assert_eq!(connection.get("/page").await.text(), "a page body");
    assert_eq!(probe.names(1).await, ["viewed"]);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_accepted_tasks_and_refuses_new_work() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/slow",
            post(|State(tx): State<Tx>| async move {
                (
                    BackgroundTask::new(report_after, (tx, "slow", Duration::from_millis(500))),
                    "accepted",
                )
            })
            .layer(RouteTasksLayer::admission()),
        )
        .with_state(probe.tx.clone());
    let runner = Runner::new();
    let server = AxumServer::start(app, runner.clone()).await;
    let mut connection = Connection::open(server.addr).await;
    for _ in 0..3 {
        assert_eq!(
            connection.post_json("/slow", "").await.status,
            StatusCode::OK
        );
    }
    let report = server.shutdown().await;
    assert!(report.drained, "{report:?}");
    assert!(report.cut_off.is_empty());
    assert_eq!(report.stats.succeeded, 3);
    assert_eq!(probe.names(3).await, ["slow"; 3]);
    assert_eq!(
        runner.spawn(task(&probe.tx, "late")),
        Err(epilogue::Refused::ShuttingDown)
    );
}

#[tokio::test]
async fn a_task_added_after_the_response_never_runs_and_is_counted() {
    let mut probe = Probe::new();
    let (added, mut was_added) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = Router::new()
        .route(
            "/keep",
            post(
                move |State(tx): State<Tx>, tasks: RequestTasks| async move {
                    // The handler hands its tasks to work that outlives it.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        tasks.add_task(report, (tx, "late"));
                        let _ = added.send(());
                    });
                    "accepted"
                },
            ),
        )
        .with_state(probe.tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    let answer = Connection::open(server.addr)
        .await
        .post_json("/keep", "")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    tokio::time::timeout(common::PATIENCE, was_added.recv())
        .await
        .expect("the late task was added");
    let stats = server.shutdown().await.stats;
    assert_eq!((stats.succeeded, stats.abandoned), (0, 1), "{stats:?}");
    assert!(probe.is_empty(), "a task added after the response ran");
}

#[tokio::test]
async fn a_task_with_only_a_status_is_a_whole_response() {
    let mut probe = Probe::new();
    let app = Router::new()
        .route(
            "/accepted",
            post(
                |_: epilogue::axum::Admitted, State(tx): State<Tx>| async move {
                    (StatusCode::ACCEPTED, task(&tx, "queued"))
                },
            ),
        )
        .with_state(probe.tx.clone());
    let server = AxumServer::start(app, Runner::new()).await;
    let answer = Connection::open(server.addr)
        .await
        .post_json("/accepted", "")
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert!(answer.body.is_empty());
    assert_eq!(probe.names(1).await, ["queued"]);
    server.shutdown().await;
}
