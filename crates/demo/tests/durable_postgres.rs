//! Durable tasks on PostgreSQL (a throwaway cluster per test, stopped even
//! when the test fails): several processes share one store and never run a
//! task twice, and a store that goes away makes the durable routes answer
//! 503 while the others go on, until it is back.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_json_content_type, eventually_within, files_in, signup, Demo, Email, Scratch,
    WorkerProcess, PATIENCE,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const WELCOME: &str = "Welcome (durable).";

/// How long a test waits for a thousand tasks, or for the store to be back.
const LONG: Duration = Duration::from_secs(90);

/// Posts `count` registrations, `at_once` at a time; every one must get
/// its 201. Returns the task ids with their emails.
async fn register_many(demo: &Demo, count: usize, at_once: usize) -> HashMap<String, String> {
    let slots = Arc::new(Semaphore::new(at_once));
    let mut requests = JoinSet::new();
    for n in 0..count {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let email = format!("shared-{n}@example.com");
        let request = demo
            .client()
            .post(demo.url("/durable/register"))
            .json(&signup(&email));
        requests.spawn(async move {
            let _slot = slot;
            let response = request.send().await.expect("a response");
            let status = response.status();
            let body: Value = response.json().await.expect("a JSON body");
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let id = body["task_id"].as_str().expect("a task_id").to_owned();
            (id, email)
        });
    }
    let mut created = HashMap::new();
    while let Some(task) = requests.join_next().await {
        let (id, email) = task.expect("a request task");
        assert!(created.insert(id, email).is_none(), "a task id given twice");
    }
    created
}

#[tokio::test]
async fn two_worker_processes_share_the_work_and_never_run_a_task_twice() {
    let pg = common::start_postgres().await;
    let store = pg.url();
    let demo = Demo::start(&["--store", &store, "--workers", "0"]).await;
    let dirs = Scratch::new();
    let flags = ["--workers", "4", "--email-delay-ms", "10"];
    let first = WorkerProcess::start(Some(&store), &dirs.path().join("a"), &flags).await;
    let second = WorkerProcess::start(Some(&store), &dirs.path().join("b"), &flags).await;

    let created = register_many(&demo, 1000, 16).await;
    assert_eq!(created.len(), 1000);
    let stats = demo.durable_settled(LONG).await;
    assert_eq!((stats.succeeded, stats.dead), (1000, 0), "{stats:?}");

    let (a, b) = (first.outbox(), second.outbox());
    println!(
        "two workers on PostgreSQL: {} tasks, {} run by the first, {} by the second",
        created.len(),
        a.len(),
        b.len()
    );
    assert!(
        demo.outbox().is_empty(),
        "the service with --workers 0 ran a task"
    );
    let mut runs: HashMap<String, Vec<Email>> = HashMap::new();
    for email in a.iter().chain(&b) {
        assert_eq!(email.message, WELCOME, "{email:?}");
        let id = email.task_id.clone().expect("a durable email");
        runs.entry(id).or_default().push(email.clone());
    }
    let twice: Vec<_> = runs.values().filter(|runs| runs.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} tasks ran twice, with no crash: {:?}",
        twice.len(),
        &twice[..twice.len().min(3)]
    );
    for (id, email) in &created {
        let run = &runs
            .get(id)
            .unwrap_or_else(|| panic!("task {id} ({email}) never ran"))[0];
        assert_eq!(
            (run.to.as_deref(), run.attempt),
            (Some(email.as_str()), Some(1))
        );
    }
    assert_eq!(runs.len(), 1000);
    assert!(
        !a.is_empty() && !b.is_empty(),
        "one worker did all the work: {} and {}",
        a.len(),
        b.len()
    );

    for mut worker in [first, second] {
        worker.terminate();
        let status = worker.exit_status(PATIENCE).await;
        assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
    }
}

#[tokio::test]
async fn while_the_store_is_down_durable_routes_answer_503_and_the_others_work() {
    let pg = common::start_postgres().await;
    let demo = Demo::start(&["--store", &pg.url()]).await;
    let reply = demo
        .post("/durable/register", &signup("before@example.com"))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let before = reply.json()["task_id"].as_str().expect("an id").to_owned();
    demo.wait_for_emails(WELCOME, 1).await;

    // Blocking, but nothing else runs on this test's runtime meanwhile.
    pg.stop();

    let reply = demo
        .post("/durable/register", &signup("down@example.com"))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{reply:?}\nstderr:\n{}",
        demo.stderr()
    );
    assert!(
        reply.elapsed <= Duration::from_secs(10),
        "the 503 took {:?}",
        reply.elapsed
    );
    assert_json_content_type(reply.header("content-type"));
    assert!(reply.json()["error"].is_string(), "{reply:?}");
    assert!(
        !reply.body.contains("down@example.com") && !reply.body.contains(common::PASSWORD),
        "the request is echoed: {}",
        reply.body
    );
    // The other durable routes at once (each waits for the pool's
    // timeout), and the in-memory routes meanwhile: they do not need the
    // store, nor wait for it.
    let uploads = files_in(demo.data_dir());
    let file = format!("/files/{before}");
    let down = signup("down@example.com");
    let in_memory = async {
        let reply = demo.get("/healthz").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let reply = demo
            .post("/response/single", &signup("memory@example.com"))
            .await;
        reply.assert_created(json!({ "message": "Email sent" }));
        assert!(
            reply.elapsed < Duration::from_secs(2),
            "an in-memory route waited for the store: {reply:?}"
        );
    };
    let (fail, upload, stats, dead, file, ()) = tokio::join!(
        demo.post("/durable/fail?times=0", &down),
        demo.post_bytes("/files", b"abc\n".to_vec()),
        demo.get("/durable/stats"),
        demo.get("/durable/dead"),
        demo.get(&file),
        in_memory,
    );
    // Checked last, so that the rest is checked whatever this finds.
    let uploads_after_503 = files_in(demo.data_dir());
    for reply in [fail, upload, stats, dead, file] {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        assert_json_content_type(reply.header("content-type"));
        assert!(reply.json()["error"].is_string(), "{reply:?}");
    }
    demo.wait_for_emails("Thank you for registering.", 1).await;

    // Blocking, but nothing else runs on this test's runtime meanwhile.
    pg.restart();
    let after = eventually_within(LONG, "a 201 from /durable/register again", async || {
        let reply = demo
            .post("/durable/register", &signup("after@example.com"))
            .await;
        match reply.status {
            StatusCode::CREATED => Some(reply.json()["task_id"].as_str()?.to_owned()),
            StatusCode::SERVICE_UNAVAILABLE => None,
            _ => panic!("{reply:?}"),
        }
    })
    .await;
    // The worker is back too: the task runs.
    let emails = eventually_within(
        LONG,
        "the task stored after the outage to run",
        async || {
            let emails = demo.emails_saying(WELCOME);
            emails
                .iter()
                .any(|email| email.task_id.as_deref() == Some(after.as_str()))
                .then_some(emails)
        },
    )
    .await;
    assert!(
        emails
            .iter()
            .all(|email| email.to.as_deref() != Some("down@example.com")),
        "a request answered 503 was stored: {emails:?}"
    );
    let stats = demo.durable_settled(PATIENCE).await;
    assert_eq!((stats.succeeded, stats.dead), (2, 0), "{stats:?}");

    // "503 ... and store nothing": not the upload either.
    assert_eq!(
        uploads_after_503, uploads,
        "an upload answered 503 was left in DATA_DIR/files"
    );
}
