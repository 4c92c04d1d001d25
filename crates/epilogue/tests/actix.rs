//! The actix-web integration over real sockets: the five patterns and the
//! extractor, when tasks start, the status rules, admission when the runner
//! is full, the runtime the tasks run on, and a missing middleware.

#![cfg(feature = "actix")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use common::{eventually, gate, report, report_when_opened, Connection, Event, Probe};
use epilogue::actix::{background, with_tasks, Admitted, Background};
use epilogue::http::RequestTasks;
use epilogue::{BackgroundTask, BackgroundTasks, Runner};
use http::StatusCode;
use tokio::sync::mpsc::UnboundedSender;

type Tx = UnboundedSender<Event>;

fn task(tx: &Tx, name: &'static str) -> BackgroundTask {
    BackgroundTask::new(report, (tx.clone(), name)).name(name)
}

/// A runner whose tasks run on the test's runtime, apart from the workers.
fn runner() -> Runner {
    Runner::builder()
        .runtime(tokio::runtime::Handle::current())
        .build()
}

/// An actix-web server on a free port, stopped on drop.
struct Server {
    addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

/// Serves the app `factory` builds (a closure, called on each worker),
/// with one worker unless told.
macro_rules! serve {
    ($factory:expr) => {
        serve!($factory, workers = 1)
    };
    ($factory:expr, workers = $workers:expr) => {{
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = HttpServer::new($factory)
            .workers($workers)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
        let handle = server.handle();
        tokio::spawn(server);
        Server { addr, handle }
    }};
}

async fn created() -> HttpResponse {
    HttpResponse::Created().body("created")
}

/// A `POST` route whose handler adds the task `name` to its request's
/// tasks, and answers 201.
fn extracting(name: &'static str) -> actix_web::Route {
    web::post().to(move |tasks: RequestTasks, tx: web::Data<Tx>| async move {
        tasks.push(task(&tx, name));
        created().await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_patterns_and_the_extractor_run_their_tasks() {
    let mut probe = Probe::new();
    let runner = runner();
    let (tx, app_runner) = (probe.tx.clone(), runner.clone());
    let server = serve!(move || {
        let tx = tx.clone();
        App::new()
            .app_data(web::Data::new(tx.clone()))
            .service(
                web::resource("/handler/single")
                    .wrap(background(task(&tx, "route")))
                    .route(web::post().to(created)),
            )
            .service(
                web::resource("/handler/list")
                    .wrap(background([task(&tx, "route 1"), task(&tx, "route 2")]))
                    .route(web::post().to(created)),
            )
            .route(
                "/response/single",
                web::post().to(|_: Admitted, tx: web::Data<Tx>| async move {
                    with_tasks(created().await, task(&tx, "response"))
                }),
            )
            .route(
                "/response/list",
                web::post().to(|_: Admitted, tx: web::Data<Tx>| async move {
                    let tasks = [task(&tx, "response 1"), task(&tx, "response 2")];
                    with_tasks(created().await, BackgroundTasks::from(tasks))
                }),
            )
            .route(
                "/response/add-task",
                web::post().to(|_: Admitted, tx: web::Data<Tx>| async move {
                    let mut tasks = BackgroundTasks::new();
                    tasks.add_task(report, (tx.get_ref().clone(), "added 1"));
                    tasks.add_task(report, (tx.get_ref().clone(), "added 2"));
                    with_tasks(created().await, tasks)
                }),
            )
            .route("/extractor", extracting("extracted"))
            .wrap(Background::new(app_runner.clone()))
    });

    let mut connection = Connection::open(server.addr).await;
    for (path, expected) in [
        ("/handler/single", &["route"][..]),
        ("/handler/list", &["route 1", "route 2"]),
        ("/response/single", &["response"]),
        ("/response/list", &["response 1", "response 2"]),
        ("/response/add-task", &["added 1", "added 2"]),
        ("/extractor", &["extracted"]),
    ] {
        let answer = connection.post_json(path, "").await;
        assert_eq!(answer.status, StatusCode::CREATED, "{path}");
        assert_eq!(answer.text(), "created", "{path}");
        // A group runs its tasks one after the other, in order.
        assert_eq!(probe.names(expected.len()).await, expected, "{path}");
    }
    assert_eq!(runner.stats().accepted, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_start_once_the_last_chunk_is_sent_and_never_hold_the_response() {
    let mut probe = Probe::new();
    let runner = runner();
    let opened = gate();
    let (body_tx, body_rx) = tokio::sync::mpsc::unbounded_channel::<web::Bytes>();
    let body_rx = Arc::new(std::sync::Mutex::new(Some(body_rx)));
    // Set by the test as it sends the last chunk: a task that starts
    // before (at the response's head, say) sees it unset.
    let ended = Arc::new(AtomicBool::new(false));
    let (tx, app_runner, app_gate, app_ended) = (
        probe.tx.clone(),
        runner.clone(),
        opened.clone(),
        ended.clone(),
    );
    let server = serve!(move || {
        let (tx, gate, body_rx) = (tx.clone(), app_gate.clone(), body_rx.clone());
        let (stream_tx, ended) = (tx.clone(), app_ended.clone());
        App::new()
            .route(
                "/stream",
                web::get().to(move || {
                    let (tx, ended) = (stream_tx.clone(), ended.clone());
                    let body_rx = body_rx.lock().unwrap().take().expect("one request");
                    async move {
                        let chunks = futures_util::stream::unfold(body_rx, |mut rx| async {
                            let chunk = rx.recv().await?;
                            Some((Ok::<_, std::io::Error>(chunk), rx))
                        });
                        let task = BackgroundTask::new(report_once_ended, (tx, ended.clone()));
                        with_tasks(HttpResponse::Ok().streaming(chunks), task)
                    }
                }),
            )
            .route(
                "/gated",
                web::post().to(move || {
                    let (tx, gate) = (tx.clone(), gate.clone());
                    async move {
                        let task = BackgroundTask::new(report_when_opened, (tx, "gated", gate));
                        with_tasks(HttpResponse::Accepted().finish(), task)
                    }
                }),
            )
            .wrap(Background::new(app_runner.clone()))
    });

    // A response whose body is still being written has not started its
    // tasks: the runner has not even been handed them.
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = common::request("GET", server.addr, "/stream", "");
    let mut response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_tx.send(web::Bytes::from_static(b"first")).unwrap();
    let first = http_body_util::BodyExt::frame(response.body_mut())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    ended.store(true, Ordering::SeqCst);
    body_tx.send(web::Bytes::from_static(b"last")).unwrap();
    drop(body_tx);
    let rest = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "last");
    assert_eq!(probe.names(1).await, ["streamed"]);

    // The response does not wait for its task, nor does the next request.
    let mut connection = Connection::open(server.addr).await;
    assert_eq!(
        connection.post_json("/gated", "").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        connection.post_json("/gated", "").await.status,
        StatusCode::ACCEPTED
    );
    opened.add_permits(2);
    assert_eq!(probe.names(2).await, ["gated", "gated"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_extracted_tasks_need_a_success_returned_ones_do_not() {
    let mut probe = Probe::new();
    let runner = runner();
    let (tx, app_runner) = (probe.tx.clone(), runner.clone());
    let server = serve!(move || {
        let tx = tx.clone();
        let unprocessable = || async { HttpResponse::UnprocessableEntity().finish() };
        App::new()
            .app_data(web::Data::new(tx.clone()))
            .service(
                web::resource("/route")
                    .wrap(background(task(&tx, "route")))
                    .route(web::post().to(unprocessable)),
            )
            .service(
                web::resource("/route/always")
                    .wrap(background(task(&tx, "always")).always())
                    .route(web::post().to(unprocessable)),
            )
            .route(
                "/extractor",
                web::post().to(|tasks: RequestTasks, tx: web::Data<Tx>| async move {
                    tasks.push(task(&tx, "extracted"));
                    Err::<HttpResponse, _>(actix_web::error::ErrorBadRequest("no"))
                }),
            )
            .route(
                "/returned",
                web::post().to(|_: Admitted, tx: web::Data<Tx>| async move {
                    with_tasks(
                        HttpResponse::UnprocessableEntity().finish(),
                        task(&tx, "returned"),
                    )
                }),
            )
            .route("/marker", extracting("marker"))
            .wrap(Background::new(app_runner.clone()))
    });

    let mut connection = Connection::open(server.addr).await;
    for (path, status) in [
        ("/route", StatusCode::UNPROCESSABLE_ENTITY),
        ("/route/always", StatusCode::UNPROCESSABLE_ENTITY),
        ("/extractor", StatusCode::BAD_REQUEST),
        ("/returned", StatusCode::UNPROCESSABLE_ENTITY),
        ("/marker", StatusCode::CREATED),
    ] {
        assert_eq!(
            connection.post_json(path, "").await.status,
            status,
            "{path}"
        );
    }
    let mut names = probe.names(3).await;
    names.sort();
    assert_eq!(names, ["always", "marker", "returned"]);
    // The extracted task of the handler that answered 400 was promised,
    // so it is counted; the route's own, never promised, are not.
    eventually("the counters", || async { runner.stats().succeeded == 3 }).await;
    let stats = runner.stats();
    assert_eq!((stats.accepted, stats.abandoned), (4, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_runner_refuses_before_the_handler_and_loses_no_accepted_task() {
    let mut probe = Probe::new();
    let runner = Runner::builder()
        .runtime(tokio::runtime::Handle::current())
        .max_running(1)
        .max_pending(0)
        .retry_after(Duration::from_secs(3))
        .build();
    let opened = gate();
    let handled = Arc::new(AtomicUsize::new(0));
    let (tx, app_runner, app_gate, counter) = (
        probe.tx.clone(),
        runner.clone(),
        opened.clone(),
        handled.clone(),
    );
    let server = serve!(move || {
        let (tx, gate, counter) = (tx.clone(), app_gate.clone(), counter.clone());
        let counted = move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                created().await
            }
        };
        App::new()
            .route(
                "/gated",
                web::post().to(move |_: Admitted| {
                    let (tx, gate) = (tx.clone(), gate.clone());
                    async move {
                        let task = BackgroundTask::new(report_when_opened, (tx, "gated", gate));
                        with_tasks(HttpResponse::Accepted().finish(), task)
                    }
                }),
            )
            .service(
                web::resource("/route")
                    .wrap(background(BackgroundTask::new(|| async {}, ())))
                    .route(web::post().to(counted.clone())),
            )
            .route(
                "/extractor",
                web::post().to({
                    let counted = counted.clone();
                    move |_: RequestTasks| counted()
                }),
            )
            .route("/admitted", web::post().to(move |_: Admitted| counted()))
            .route("/healthz", web::get().to(|| async { "ok" }))
            .wrap(Background::new(app_runner.clone()))
    });

    let mut connection = Connection::open(server.addr).await;
    let first = connection.post_json("/gated", "").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    for path in ["/route", "/extractor", "/admitted", "/gated"] {
        let answer = connection.post_json(path, "").await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(answer.headers[http::header::RETRY_AFTER], "3", "{path}");
        assert_eq!(
            answer.headers[http::header::CONTENT_TYPE],
            "application/json"
        );
        assert!(
            answer
                .text()
                .contains(r#""error":"background work is at capacity"#),
            "{path}: {}",
            answer.text()
        );
    }
    assert_eq!(handled.load(Ordering::SeqCst), 0, "a handler ran");
    // Routes without tasks still answer.
    assert_eq!(connection.get("/healthz").await.status, StatusCode::OK);

    opened.add_permits(1);
    assert_eq!(probe.names(1).await, ["gated"]);
    eventually("the running place to be given back", || async {
        runner.stats().running == 0
    })
    .await;
    assert_eq!(
        connection.post_json("/admitted", "").await.status,
        StatusCode::CREATED
    );
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    let stats = runner.stats();
    assert_eq!((stats.accepted, stats.refused), (1, 4), "{stats:?}");
}

/// The reason for `Builder::runtime`: a task must not run on the worker
/// that serves requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_on_the_runners_runtime_not_on_the_worker() {
    let runner = runner();
    let (threads_tx, mut threads) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app_runner = runner.clone();
    let server = serve!(move || {
        let threads_tx = threads_tx.clone();
        App::new()
            .route(
                "/where",
                web::post().to(move || {
                    let threads_tx = threads_tx.clone();
                    async move {
                        let worker = thread_name();
                        let task = BackgroundTask::new(
                            |tx: UnboundedSender<String>| async move {
                                let _ = tx.send(thread_name());
                            },
                            (threads_tx.clone(),),
                        );
                        let _ = threads_tx.send(worker);
                        with_tasks(created().await, task)
                    }
                }),
            )
            .wrap(Background::new(app_runner.clone()))
    });

    let answer = Connection::open(server.addr)
        .await
        .post_json("/where", "")
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let worker = threads.recv().await.unwrap();
    let task = tokio::time::timeout(common::PATIENCE, threads.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(worker.starts_with("actix-server worker"), "{worker}");
    assert_ne!(task, worker);
    assert!(task.starts_with("tokio"), "{task}");
}

/// Without a runtime of its own, each worker runs its own requests' tasks
/// (lanes per runtime): no hand-off between threads, and no worker's
/// lanes replaced by another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_runtime_each_worker_runs_its_own_tasks() {
    let runner = Runner::new();
    let (threads_tx, mut threads) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let app_runner = runner.clone();
    let server = serve!(
        move || {
            let threads_tx = threads_tx.clone();
            App::new()
                .route(
                    "/where",
                    web::post().to(move || {
                        let threads_tx = threads_tx.clone();
                        async move {
                            let task = BackgroundTask::new(
                                |tx: UnboundedSender<(String, String)>, worker: String| async move {
                                    let _ = tx.send((worker, thread_name()));
                                },
                                (threads_tx, thread_name()),
                            );
                            with_tasks(created().await, task)
                        }
                    }),
                )
                .wrap(Background::new(app_runner.clone()))
        },
        workers = 2
    );

    // actix-web hands connections to its workers in turn.
    let mut connections = [
        Connection::open(server.addr).await,
        Connection::open(server.addr).await,
    ];
    let mut workers = std::collections::BTreeSet::new();
    for _ in 0..3 {
        for connection in &mut connections {
            assert_eq!(
                connection.post_json("/where", "").await.status,
                StatusCode::CREATED
            );
            let (worker, task) = tokio::time::timeout(common::PATIENCE, threads.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                task, worker,
                "a task ran on another thread than its request"
            );
            workers.insert(worker);
        }
    }
    assert_eq!(workers.len(), 2, "{workers:?}");
    eventually("six groups done", || async {
        runner.stats().succeeded == 6
    })
    .await;
}

/// Reports "streamed", or "early" if the body had not ended yet.
async fn report_once_ended(tx: Tx, ended: Arc<AtomicBool>) {
    let name = if ended.load(Ordering::SeqCst) {
        "streamed"
    } else {
        "early"
    };
    report(tx, name).await;
}

fn thread_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_middleware_is_a_clear_500_not_lost_work() {
    let server = serve!(|| {
        App::new().route(
            "/extractor",
            web::post().to(|tasks: RequestTasks| async move {
                tasks.add_task(|| async {}, ());
                created().await
            }),
        )
    });
    let answer = Connection::open(server.addr)
        .await
        .post_json("/extractor", "")
        .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        answer.text().contains("epilogue::actix::Background"),
        "{}",
        answer.text()
    );
}
