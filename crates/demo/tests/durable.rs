//! Durable tasks on the default store (SQLite in the data directory): a
//! 201 or 202 means stored, every stored task runs at least once (twice
//! only if it was running at a `kill -9`), failures are retried with
//! growing delays then dead and re-queueable, uploads are processed from
//! disk, `--workers 0` only enqueues, `epilogue-demo worker` runs what the
//! service stored, and SIGTERM drains what runs and keeps the rest queued.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{
    assert_json_content_type, eventually, eventually_within, files_in, outbox_in, run_to_exit,
    signup, Demo, DurableStats, Email, Scratch, WorkerProcess, PATIENCE,
};
use nix::sys::signal::{kill, Signal};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const WELCOME: &str = "Welcome (durable).";
const RECOVERED: &str = "Recovered (durable).";

/// How long a test waits for every stored task to have run, where a dead
/// process's tasks must first be taken back (three missed 2 s heartbeats).
const RECOVERY: Duration = Duration::from_secs(60);

async fn register(demo: &Demo, email: &str) -> String {
    common::created_task(
        &demo.post("/durable/register", &signup(email)).await,
        "Email sent",
    )
}

/// How far [`register_many`] is, and whether it should stop.
#[derive(Default)]
struct Progress {
    stop: AtomicBool,
    created: AtomicUsize,
}

/// Posts `count` registrations, `at_once` at a time, each with its own
/// email, and returns the task id of every 201 (with its email). Once
/// `progress.stop` is set no more are sent; a request that gets no response
/// (the service was killed under it) is counted in the second value.
async fn register_many(
    demo: &Demo,
    prefix: &str,
    count: usize,
    at_once: usize,
    progress: Arc<Progress>,
) -> (Vec<(String, String)>, usize) {
    let slots = Arc::new(Semaphore::new(at_once));
    let mut requests = JoinSet::new();
    for n in 0..count {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        if progress.stop.load(Ordering::SeqCst) {
            break;
        }
        let email = format!("{prefix}-{n}@example.com");
        let request = demo
            .client()
            .post(demo.url("/durable/register"))
            .json(&signup(&email));
        let progress = progress.clone();
        requests.spawn(async move {
            let _slot = slot;
            let response = request.send().await.ok()?;
            let status = response.status();
            let body: Value = response.json().await.ok()?;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let id = body["task_id"].as_str().expect("a task_id").to_owned();
            progress.created.fetch_add(1, Ordering::SeqCst);
            Some((id, email))
        });
    }
    let mut created = Vec::new();
    let mut cut = 0;
    while let Some(outcome) = requests.join_next().await {
        match outcome.expect("a request task") {
            Some(task) => created.push(task),
            None => cut += 1,
        }
    }
    (created, cut)
}

/// What a run of many registrations left in the outboxes: the welcome
/// emails by task id, checked against the 201s.
struct Tally {
    /// Task ids with more than one email.
    duplicates: usize,
    /// Task ids with an email but no 201 (the response was cut by a kill).
    unacknowledged: usize,
}

fn tally(created: &[(String, String)], emails: &[Email]) -> Tally {
    let sent = common::by_task(emails, WELCOME);
    for (id, email) in created {
        let runs = sent
            .get(id)
            .unwrap_or_else(|| panic!("task {id} ({email}) got its 201 but never ran"));
        for run in runs {
            assert_eq!(run.to.as_deref(), Some(email.as_str()), "{run:?}");
        }
        // A second run is a new attempt, never the same one again.
        let attempts: HashSet<u32> = runs.iter().filter_map(|run| run.attempt).collect();
        assert_eq!(attempts.len(), runs.len(), "{runs:?}");
    }
    let acknowledged: HashSet<&str> = created.iter().map(|(id, _)| id.as_str()).collect();
    Tally {
        duplicates: sent.values().filter(|runs| runs.len() > 1).count(),
        unacknowledged: sent
            .keys()
            .filter(|id| !acknowledged.contains(id.as_str()))
            .count(),
    }
}

#[tokio::test]
async fn a_registration_is_stored_then_sends_one_welcome_email_with_its_task_id() {
    let demo = Demo::start(&[]).await;
    assert_eq!(demo.durable_stats().await, DurableStats::default());

    let id = register(&demo, "ada@example.com").await;
    assert!(
        id.parse::<u64>().is_ok_and(|id| id > 0),
        "River's job id: {id}"
    );
    let stats = demo.durable_settled(PATIENCE).await;
    assert_eq!(
        stats,
        DurableStats {
            succeeded: 1,
            ..DurableStats::default()
        }
    );
    let emails = demo.emails_saying(WELCOME);
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].to.as_deref(), Some("ada@example.com"));
    assert_eq!(emails[0].task_id.as_deref(), Some(id.as_str()));
    assert_eq!(emails[0].attempt, Some(1));
    assert_eq!(demo.outbox().len(), 1, "nothing else was sent");

    // Another one counts too, under its own id.
    let second = register(&demo, "bob@example.com").await;
    assert_ne!(second, id);
    demo.wait_for_emails(WELCOME, 2).await;
    let stats = demo.durable_settled(PATIENCE).await;
    assert_eq!((stats.succeeded, stats.dead), (2, 0));
}

#[tokio::test]
async fn a_failing_task_is_retried_with_growing_delays_until_it_succeeds() {
    let demo = Demo::start(&[]).await;
    let before = Utc::now();
    let reply = demo
        .post("/durable/fail?times=2", &signup("flaky@example.com"))
        .await;
    let id = common::created_task(&reply, "Created");

    // Between its attempts it waits for its retry, and says so.
    eventually("the task to wait for a retry", async || {
        (demo.durable_stats().await.retrying == 1).then_some(())
    })
    .await;
    let emails = demo.wait_for_emails(RECOVERED, 1).await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    let email = &emails[0];
    assert_eq!(email.to, None);
    assert_eq!(email.task_id.as_deref(), Some(id.as_str()));
    assert_eq!(email.attempt, Some(3), "two failed attempts, then this one");
    // 1 s after the first failure, 2 s after the second: never sooner.
    let took = email.sent_at.with_timezone(&Utc) - before;
    assert!(
        took >= chrono::Duration::seconds(3),
        "the third attempt came {took} after the request"
    );
    let stats = demo.durable_settled(PATIENCE).await;
    assert_eq!(
        stats,
        DurableStats {
            succeeded: 1,
            ..DurableStats::default()
        }
    );
    assert_eq!(demo.outbox().len(), 1);
}

#[tokio::test]
async fn a_task_that_always_fails_is_dead_after_5_attempts_and_can_be_queued_again() {
    let demo = Demo::start(&[]).await;
    let id = common::created_task(
        &demo
            .post("/durable/fail?times=100", &signup("doomed@example.com"))
            .await,
        "Created",
    );

    // 1 + 2 + 4 + 8 s of backoff.
    let dead = eventually_within(RECOVERY, "the task to be dead", async || {
        let reply = demo.get("/durable/dead").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_json_content_type(reply.header("content-type"));
        let dead = reply.json();
        let dead = dead.as_array().expect("an array").clone();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    let last_error = entry["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("attempt 5"),
        "last_error names the attempt: {entry}"
    );
    assert_eq!(
        *entry,
        json!({
            "task_id": id,
            "task": "recovering_durable",
            "attempts": 5,
            "last_error": last_error,
        })
    );
    assert_eq!(
        demo.durable_stats().await,
        DurableStats {
            dead: 1,
            ..DurableStats::default()
        }
    );
    assert!(demo.outbox().is_empty(), "it never succeeded");

    // Queued again, for one more attempt (River's retry): out of the dead
    // list, waiting or running.
    let retried = demo
        .post(&format!("/durable/dead/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{retried:?}");
    let dead = demo.get("/durable/dead").await.json();
    assert_eq!(dead, json!([]));
    let stats = demo.durable_stats().await;
    assert_eq!(stats.dead, 0, "{stats:?}");
    assert_eq!(
        stats.queued + stats.running + stats.retrying,
        1,
        "{stats:?}"
    );
    // Its one more attempt fails too, and it is dead again, with 6.
    eventually("the re-queued task to fail again and be dead", async || {
        let dead = demo.get("/durable/dead").await.json();
        (dead[0]["attempts"] == 6).then_some(())
    })
    .await;

    // An unknown id, or one that is not dead, is refused.
    let queued = register(&demo, "queued@example.com").await;
    for path in [
        "/durable/dead/999999/retry".to_owned(),
        "/durable/dead/not-an-id/retry".to_owned(),
        format!("/durable/dead/{queued}/retry"),
    ] {
        let reply = demo.post(&path, &json!({})).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {reply:?}");
        reply.assert_client_error();
    }
}

#[tokio::test]
async fn rejected_durable_requests_store_nothing() {
    let demo = Demo::start(&[]).await;
    let bad = [
        ("/durable/fail?times=101", signup("a@example.com"), 422),
        ("/durable/fail?times=x", signup("a@example.com"), 400),
        ("/durable/fail?times=-1", signup("a@example.com"), 400),
        ("/durable/register", json!({ "email": "a@example.com" }), 0),
        ("/durable/register", json!({ "password": "pw" }), 0),
        ("/durable/register", json!([1, 2]), 0),
    ];
    for (path, body, status) in bad {
        let reply = demo.post(path, &body).await;
        if status != 0 {
            assert_eq!(reply.status.as_u16(), status, "{path} {body}: {reply:?}");
        }
        reply.assert_client_error();
    }
    // Not JSON at all.
    let reply = common::Reply::of(
        demo.client()
            .post(demo.url("/durable/register"))
            .header("content-type", "application/json")
            .body("{\"email\": \"a@example.com\", "),
    )
    .await;
    reply.assert_client_error();
    let reply = demo.post_bytes("/durable/fail", b"{}".to_vec()).await;
    assert!(reply.status.is_client_error(), "{reply:?}");

    assert_eq!(demo.durable_stats().await, DurableStats::default());
    // The default, 1 failure, is stored: the stats do count what is.
    let id = common::created_task(
        &demo.post("/durable/fail", &signup("one@example.com")).await,
        "Created",
    );
    let emails = demo.wait_for_emails(RECOVERED, 1).await;
    assert_eq!(emails[0].task_id.as_deref(), Some(id.as_str()));
    assert_eq!(emails[0].attempt, Some(2));
    assert_eq!(demo.durable_settled(PATIENCE).await.succeeded, 1);
}

#[tokio::test]
async fn an_upload_is_stored_then_summarised_from_disk() {
    let demo = Demo::start(&[]).await;
    let mut body = Vec::new();
    for n in 0..500 {
        body.extend_from_slice(format!("line {n}: some text, ünïcödé \u{1F600}\n").as_bytes());
    }
    body.extend_from_slice(b"\0\r\n\xff\xfe binary bytes, and no newline at the end");
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    let sha256 = hex(&Sha256::digest(&body));

    let reply = demo.post_bytes("/files", body.clone()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_json_content_type(reply.header("content-type"));
    let id = reply.json()["id"].as_str().expect("an id").to_owned();
    assert_eq!(reply.json(), json!({ "id": id, "status": "queued" }));
    let location = reply.header("location").expect("a Location header");
    assert_eq!(location, format!("/files/{id}"));

    let done = eventually("the upload to be processed", async || {
        let reply = demo.get(location).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let status = reply.json();
        let state = status["status"].as_str().expect("a status").to_owned();
        assert!(
            ["queued", "running", "done"].contains(&state.as_str()),
            "{status}"
        );
        (state == "done").then_some(status)
    })
    .await;
    assert_eq!(
        done,
        json!({
            "id": id,
            "status": "done",
            "attempts": 1,
            "result": { "bytes": body.len(), "lines": lines, "sha256": sha256 },
        })
    );

    // An empty upload is one too.
    let reply = demo.post_bytes("/files", Vec::new()).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    let empty = reply.header("location").expect("a Location").to_owned();
    let done = eventually("the empty upload to be processed", async || {
        let status = demo.get(&empty).await.json();
        (status["status"] == "done").then_some(status)
    })
    .await;
    assert_eq!(
        done["result"],
        json!({ "bytes": 0, "lines": 0, "sha256": hex(&Sha256::digest(b"")) })
    );
    assert_eq!(demo.durable_settled(PATIENCE).await.succeeded, 2);
}

#[tokio::test]
async fn an_upload_over_10_mib_is_refused_and_nothing_is_stored() {
    let demo = Demo::start(&[]).await;
    let stats = demo.durable_stats().await;
    let files = files_in(demo.data_dir());

    let reply = demo
        .post_bytes("/files", vec![b'x'; 10 * 1024 * 1024 + 1])
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    reply.assert_client_error();
    assert_eq!(demo.durable_stats().await, stats);
    assert_eq!(files_in(demo.data_dir()), files);

    // Exactly 10 MiB is taken.
    let reply = demo
        .post_bytes("/files", vec![b'\n'; 10 * 1024 * 1024])
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{reply:?}");
    assert_eq!(demo.durable_stats().await.total(), 1);

    // Unknown ids, and the id of a task that is not an upload, are 404.
    let task = register(&demo, "ada@example.com").await;
    for id in ["01JUNKJUNKJUNKJUNKJUNKJUNK", "nope", task.as_str()] {
        let reply = demo.get(&format!("/files/{id}")).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{id}: {reply:?}");
        reply.assert_client_error();
    }
}

#[tokio::test]
async fn workers_0_only_enqueues_and_a_worker_process_runs_what_it_stored() {
    let demo = Demo::start(&["--workers", "0"]).await;
    let mut ids = HashSet::new();
    for user in ["a@example.com", "b@example.com", "c@example.com"] {
        ids.insert(register(&demo, user).await);
    }
    let upload = demo.post_bytes("/files", b"one\ntwo\n".to_vec()).await;
    assert_eq!(upload.status, StatusCode::ACCEPTED, "{upload:?}");
    let location = upload.header("location").expect("a Location").to_owned();
    assert_eq!(
        demo.durable_stats().await,
        DurableStats {
            queued: 4,
            ..DurableStats::default()
        }
    );
    // With `--workers 0` no process fetches: they wait for the worker.
    assert!(demo.outbox().is_empty(), "{:?}", demo.outbox());
    assert_eq!(demo.get(&location).await.json()["status"], "queued");

    let mut worker = WorkerProcess::start(None, demo.data_dir(), &[]).await;
    let sent = demo.wait_for_emails(WELCOME, 3).await;
    let sent_ids: HashSet<String> = sent.iter().filter_map(|e| e.task_id.clone()).collect();
    assert_eq!(sent_ids, ids);
    let stats = demo.durable_settled(PATIENCE).await;
    assert_eq!(stats.succeeded, 4, "{stats:?}");
    assert_eq!(demo.get(&location).await.json()["result"]["lines"], 2);

    worker.terminate();
    let status = worker.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
    assert_eq!(worker.stdout(), "worker ready\n");
    assert!(
        worker
            .stderr()
            .lines()
            .any(|line| line.contains("stopped") && line.contains("drained=true")),
        "stderr:\n{}",
        worker.stderr()
    );
}

#[tokio::test]
async fn a_store_url_that_cannot_be_opened_stops_the_start() {
    for store in [
        "nope://x",
        "sqlite:///nonexistent-dir/x/y.db",
        "postgres://app:s3cret-pw@127.0.0.1:1/app",
        "mysql://app:s3cret-pw@127.0.0.1/app",
    ] {
        for worker in [false, true] {
            let scratch = Scratch::new();
            let mut command = Demo::command();
            if worker {
                command.arg("worker");
            } else {
                command.args(["--addr", "127.0.0.1:0"]);
            }
            command
                .arg("--data-dir")
                .arg(scratch.path().join("data"))
                .args(["--store", store]);
            let exited = run_to_exit(command, &scratch).await;
            assert!(
                !exited.status.success(),
                "{store} (worker: {worker}): {exited:?}"
            );
            assert!(
                !exited.stdout.contains("listening on") && !exited.stdout.contains("worker ready"),
                "{store}: {exited:?}"
            );
            assert!(
                exited.stderr.contains("cannot open the durable task store"),
                "{store}: {exited:?}"
            );
        }
    }
}

/// The store URL may hold a password: the message says what is wrong with
/// it without repeating it.
#[tokio::test]
async fn the_password_of_a_store_url_is_not_repeated_on_stderr() {
    for store in [
        "postgres://app:s3cret-pw@127.0.0.1:1/app",
        "mysql://app:s3cret-pw@127.0.0.1/app",
        "nope://app:s3cret-pw@x",
    ] {
        let scratch = Scratch::new();
        let mut command = Demo::command();
        command
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(scratch.path().join("data"))
            .args(["--store", store]);
        let exited = run_to_exit(command, &scratch).await;
        assert!(!exited.status.success(), "{store}: {exited:?}");
        assert!(
            exited.stderr.contains("cannot open the durable task store"),
            "{store}: {exited:?}"
        );
        assert!(
            !exited.stderr.contains("s3cret-pw"),
            "the password of the store URL is on stderr: {}",
            exited.stderr
        );
    }
}

#[tokio::test]
async fn after_a_kill_9_every_acknowledged_task_runs_and_only_running_ones_twice() {
    const WORKERS: usize = 4;
    let flags = ["--email-delay-ms", "100"];
    let demo = Demo::start(&flags).await;

    // The kill comes while registrations are still coming in (if they are
    // not all in already), tasks are queued, and others run.
    let progress = Arc::new(Progress::default());
    let (killed, posting) = {
        let demo = &demo;
        let posting = register_many(demo, "crash", 300, 16, progress.clone());
        let killer = async {
            eventually_within(RECOVERY, "150 201s and 8 emails sent", async || {
                (progress.created.load(Ordering::SeqCst) >= 150
                    && demo.emails_saying(WELCOME).len() >= 8)
                    .then_some(())
            })
            .await;
            let stats = demo.durable_stats().await;
            progress.stop.store(true, Ordering::SeqCst);
            kill(demo.pid(), Signal::SIGKILL).expect("cannot send SIGKILL");
            stats
        };
        tokio::join!(killer, posting)
    };
    let (created, cut) = posting;
    // The process is gone: what it sent is all in the file.
    let scratch = demo.kill();
    let data_dir = scratch.path().join("data");
    let before = outbox_in(&data_dir).len();
    assert!(
        killed.queued + killed.running > 0,
        "nothing was left to run at the kill: the test proves nothing ({killed:?})"
    );

    let demo = Demo::start_in(scratch, &flags).await;
    let stats = demo.durable_settled(RECOVERY).await;
    assert_eq!(stats.dead, 0, "{stats:?}");
    assert!(
        stats.succeeded >= created.len() as u64,
        "{stats:?} for {} 201s",
        created.len()
    );
    let emails = demo.outbox();
    let tally = tally(&created, &emails);
    println!(
        "kill -9 of the service: {} 201s ({cut} requests cut by the kill), \
         {before} emails before the kill (stats then: {killed:?}), {} emails in all, \
         {} tasks sent twice, {} tasks ran without a 201",
        created.len(),
        emails.len(),
        tally.duplicates,
        tally.unacknowledged
    );
    // "Running" as the store sees it: River records completions in batches
    // (within about 10 ms of a task's end, longer while SQLite's one writer
    // is busy with the registrations), so a task that had finished but whose
    // completion was not yet written was still running. The stats were read
    // just before the kill; up to WORKERS more may have started since.
    assert!(
        tally.duplicates <= killed.running as usize + WORKERS,
        "{} tasks ran twice; {} were running shortly before the kill ({killed:?})",
        tally.duplicates,
        killed.running
    );
    assert!(
        tally.duplicates <= before,
        "{} tasks ran twice, but only {before} had run before the kill",
        tally.duplicates
    );
    assert!(
        tally.unacknowledged <= cut,
        "{} tasks ran without a 201, but only {cut} requests were cut",
        tally.unacknowledged
    );
}

#[tokio::test]
async fn the_tasks_of_a_killed_worker_process_are_run_by_another() {
    let demo = Demo::start(&["--workers", "0"]).await;
    let store = format!("sqlite://{}", demo.data_dir().join("tasks.db").display());
    let workers = Scratch::new();
    let (first_dir, second_dir) = (workers.path().join("a"), workers.path().join("b"));
    let worker_flags = ["--workers", "4", "--email-delay-ms", "200"];

    let mut first = WorkerProcess::start(Some(&store), &first_dir, &worker_flags).await;
    let (created, cut) = register_many(&demo, "orphan", 200, 16, Arc::default()).await;
    assert_eq!((created.len(), cut), (200, 0));
    eventually("the first worker to send 20 emails", async || {
        (first.outbox().len() >= 20).then_some(())
    })
    .await;
    first.kill();
    let before = first.outbox().len();
    let at_kill = demo.durable_stats().await;
    assert!(
        at_kill.queued > 0 && at_kill.running > 0,
        "the kill left nothing to take back: {at_kill:?}"
    );

    let mut second = WorkerProcess::start(Some(&store), &second_dir, &worker_flags).await;
    let stats = demo.durable_settled(RECOVERY).await;
    assert_eq!((stats.succeeded, stats.dead), (200, 0), "{stats:?}");
    let mut emails = first.outbox();
    let after = second.outbox();
    assert!(!after.is_empty());
    emails.extend(after);
    let tally = tally(&created, &emails);
    println!(
        "kill -9 of a worker process: 200 201s, {before} emails by the first worker, \
         {} by the second, {} tasks sent twice (running at the kill: {})",
        second.outbox().len(),
        tally.duplicates,
        at_kill.running
    );
    // Read after the kill: exactly what the store held as running, a task
    // whose end River had not yet written included.
    assert!(
        tally.duplicates <= at_kill.running as usize,
        "{} tasks ran twice; {} were running at the kill",
        tally.duplicates,
        at_kill.running
    );
    assert_eq!(tally.unacknowledged, 0);

    second.terminate();
    assert_eq!(second.exit_status(PATIENCE).await.code(), Some(0));
}

#[tokio::test]
async fn sigterm_finishes_the_running_tasks_and_leaves_the_rest_queued() {
    let flags = ["--email-delay-ms", "300", "--shutdown-grace-s", "30"];
    let mut demo = Demo::start(&flags).await;
    let (created, cut) = register_many(&demo, "drain", 20, 20, Arc::default()).await;
    assert_eq!((created.len(), cut), (20, 0));
    eventually("a durable task to be running", async || {
        (demo.durable_stats().await.running > 0).then_some(())
    })
    .await;
    let sent_at_sigterm = demo.outbox().len();
    demo.terminate();
    let status = demo.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
    let stderr = demo.stderr();
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("stopped") && line.contains("drained=true")),
        "stderr:\n{stderr}"
    );

    let sent = demo.outbox();
    // It stopped fetching: what ran at the signal finished, nothing more.
    assert!(
        sent.len() <= sent_at_sigterm + 4,
        "{} emails at SIGTERM, {} at the exit, with 4 workers",
        sent_at_sigterm,
        sent.len()
    );
    assert!(
        sent.len() < created.len(),
        "every task ran before the exit: the test proves nothing"
    );
    println!(
        "SIGTERM: {sent_at_sigterm} emails sent before it, {} at the exit, of {}",
        sent.len(),
        created.len()
    );

    let demo = Demo::start_in(demo.into_scratch(), &flags).await;
    let stats = demo.durable_settled(RECOVERY).await;
    assert_eq!((stats.succeeded, stats.dead), (20, 0), "{stats:?}");
    let emails = demo.outbox();
    let tally = tally(&created, &emails);
    assert_eq!(emails.len(), 20, "{emails:?}");
    assert_eq!((tally.duplicates, tally.unacknowledged), (0, 0));
    assert!(
        emails.iter().all(|email| email.attempt == Some(1)),
        "no attempt was cut short: {emails:?}"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
