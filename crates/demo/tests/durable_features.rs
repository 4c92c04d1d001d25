//! Durable task features, against the real binary: a task of a kind that
//! no running process knows waits for one that does (a rolling deploy),
//! `Idempotency-Key`, `?delay_s=`, and the periodic `tick` once per period
//! across every process on the store.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use common::{
    eventually_within, run_to_exit, signup, Demo, Email, Reply, Scratch, WorkerProcess, PATIENCE,
};
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

const WELCOME: &str = "Welcome (durable).";
const RECOVERED: &str = "Recovered (durable).";
const TICK: &str = "tick";

/// How long a test waits for a durable task to run.
const RUN: Duration = Duration::from_secs(30);

/// Asserts a 400 with a JSON error.
fn assert_bad_request(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{what}: {reply:?}");
    reply.assert_client_error();
}

/// `POST /durable/register` with an `Idempotency-Key` of these bytes.
async fn register_with_key(demo: &Demo, email: &str, key: &[u8]) -> Reply {
    let key = HeaderValue::from_bytes(key).expect("a header value reqwest can send");
    Reply::of(
        demo.client()
            .post(demo.url("/durable/register"))
            .header("idempotency-key", key)
            .json(&signup(email)),
    )
    .await
}

/// The raw `GET /durable/stats`.
async fn stats_json(demo: &Demo) -> Value {
    let reply = demo.get("/durable/stats").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.json()
}

/// The count of stored tasks in every state, `scheduled` included.
fn stored(stats: &Value) -> u64 {
    stats
        .as_object()
        .expect("an object")
        .values()
        .map(|count| count.as_u64().expect("an integer count"))
        .sum()
}

/// Waits for an email of task `id` in `emails()`, and returns it.
async fn email_of(id: &str, emails: impl Fn() -> Vec<Email>) -> Email {
    eventually_within(RUN, &format!("an email of task {id}"), async || {
        emails()
            .into_iter()
            .find(|email| email.task_id.as_deref() == Some(id))
    })
    .await
}

/// Promise: `worker --only` registers only those kinds, as an older release
/// would during a rolling deploy; tasks of other kinds stay queued for a
/// process that knows them, never dead because of their kind.
#[tokio::test]
async fn a_task_of_a_kind_no_running_process_knows_stays_queued_until_one_does() {
    let demo = Demo::start(&["--workers", "0"]).await;
    // An older release, on the same SQLite file: it knows one kind.
    let mut old =
        WorkerProcess::start(None, demo.data_dir(), &["--only", "recovering_durable"]).await;
    let welcome = common::created_task(
        &demo
            .post("/durable/register", &signup("new@example.com"))
            .await,
        "Email sent",
    );
    let first = common::created_task(
        &demo
            .post("/durable/fail?times=0", &signup("old@example.com"))
            .await,
        "Created",
    );
    let email = email_of(&first, || demo.outbox()).await;
    assert_eq!(
        (email.message.as_str(), email.attempt),
        (RECOVERED, Some(1))
    );

    // The old worker keeps fetching and running what it knows, for 5 s
    // and at least 5 more tasks; meanwhile the welcome task waits, queued.
    let watching = Instant::now();
    let mut ran = vec![first];
    while ran.len() < 6 || (watching.elapsed() < Duration::from_secs(5) && ran.len() < 100) {
        let id = common::created_task(
            &demo
                .post("/durable/fail?times=0", &signup("old@example.com"))
                .await,
            "Created",
        );
        email_of(&id, || demo.outbox()).await;
        ran.push(id);
        // Its email is sent a moment before River records it done.
        let stats = eventually_within(RUN, "the old worker's task to be done", async || {
            let stats = demo.durable_stats().await;
            (stats.running == 0).then_some(stats)
        })
        .await;
        assert_eq!(
            (stats.queued, stats.retrying, stats.dead),
            (1, 0, 0),
            "the welcome task is not waiting, queued: {stats:?}"
        );
        assert_eq!(demo.get("/durable/dead").await.json(), json!([]));
    }
    let watched = watching.elapsed();
    assert!(
        demo.emails_saying(WELCOME).is_empty(),
        "a process that does not know the kind ran it"
    );

    // A process that knows every kind runs it.
    let mut new = WorkerProcess::start(None, demo.data_dir(), &[]).await;
    let email = email_of(&welcome, || demo.outbox()).await;
    assert_eq!(
        (email.message.as_str(), email.to.as_deref(), email.attempt),
        (WELCOME, Some("new@example.com"), Some(1))
    );
    let stats = demo.durable_settled(PATIENCE).await;
    assert_eq!((stats.succeeded, stats.dead), (ran.len() as u64 + 1, 0));
    assert_eq!(demo.outbox().len(), ran.len() + 1, "{:?}", demo.outbox());
    println!(
        "rolling deploy: the welcome task stayed queued for {watched:?} while the old worker \
         ran {} tasks of its kind; then the new worker ran it",
        ran.len()
    );

    for worker in [&mut old, &mut new] {
        worker.terminate();
        let status = worker.exit_status(PATIENCE).await;
        assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
    }
}

#[tokio::test]
async fn worker_only_refuses_a_kind_it_does_not_know() {
    for only in ["nope", "welcome_durable,nope", ""] {
        let scratch = Scratch::new();
        let mut command = Demo::command();
        command
            .arg("worker")
            .arg("--data-dir")
            .arg(scratch.path().join("data"))
            .args(["--only", only]);
        let exited = run_to_exit(command, &scratch).await;
        assert!(!exited.status.success(), "--only {only:?}: {exited:?}");
        assert_eq!(
            exited.status.code(),
            Some(2),
            "clap's usage error: {exited:?}"
        );
        assert!(
            exited.stderr.contains("--only")
                && exited
                    .stderr
                    .contains("welcome_durable, recovering_durable, process_file, tick"),
            "--only {only:?}: {exited:?}"
        );
        assert!(!exited.stdout.contains("worker ready"), "{exited:?}");
        assert!(
            !scratch.path().join("data").join("tasks.db").exists(),
            "a refused command line opened the store"
        );
    }
}

/// Promise: a second request with the same `Idempotency-Key` answers 201
/// with the same `task_id` and stores nothing new; a key must be 1 to 255
/// visible ASCII characters.
#[tokio::test]
async fn an_idempotency_key_stores_one_task_and_a_bad_key_is_400() {
    let demo = Demo::start(&[]).await;

    let first = common::created_task(
        &register_with_key(&demo, "ada@example.com", b"signup-ada-0001").await,
        "Email sent",
    );
    // Eight at once, with another key: one task, one id for all of them.
    let mut requests = JoinSet::new();
    for n in 0..8 {
        let request = demo
            .client()
            .post(demo.url("/durable/register"))
            .header("idempotency-key", "signup-bob-0002")
            .json(&signup(&format!("bob-{n}@example.com")));
        requests.spawn(Reply::of(request));
    }
    let mut concurrent = HashSet::new();
    while let Some(reply) = requests.join_next().await {
        concurrent.insert(common::created_task(
            &reply.expect("a request"),
            "Email sent",
        ));
    }
    assert_eq!(concurrent.len(), 1, "{concurrent:?}");
    let bob = concurrent.into_iter().next().expect("one id");
    assert_ne!(bob, first);

    // Once it has run, the key still answers with the same task, whatever
    // the body.
    let email = email_of(&first, || demo.outbox()).await;
    assert_eq!(email.to.as_deref(), Some("ada@example.com"));
    for body in ["ada@example.com", "eve@example.com"] {
        let again = common::created_task(
            &register_with_key(&demo, body, b"signup-ada-0001").await,
            "Email sent",
        );
        assert_eq!(again, first, "the same key, another task");
    }
    let other = common::created_task(
        &register_with_key(&demo, "ada@example.com", b"signup-ada-0003").await,
        "Email sent",
    );
    assert_ne!(other, first);
    let longest = common::created_task(
        &register_with_key(&demo, "max@example.com", &[b'k'; 255]).await,
        "Email sent",
    );
    // No key, no deduplication: the same body twice is two tasks.
    let plain: HashSet<String> = [
        demo.post("/durable/register", &signup("ada@example.com"))
            .await,
        demo.post("/durable/register", &signup("ada@example.com"))
            .await,
    ]
    .iter()
    .map(|reply| common::created_task(reply, "Email sent"))
    .collect();
    assert_eq!(plain.len(), 2);

    let stats = demo.durable_settled(RUN).await;
    let stored_before = stored(&stats_json(&demo).await);
    // (A DEL is not a header value reqwest sends.)
    let bad: [(&str, Vec<u8>); 6] = [
        ("256 characters", vec![b'k'; 256]),
        ("empty", Vec::new()),
        ("a space", b"signup ada".to_vec()),
        ("a tab", b"signup\tada".to_vec()),
        ("non-ASCII", "signup-\u{e9}l\u{e8}ve".as_bytes().to_vec()),
        ("a byte above 0x7f", b"signup-\xff".to_vec()),
    ];
    for (what, key) in bad {
        let reply = register_with_key(&demo, "bad@example.com", &key).await;
        assert_bad_request(&reply, what);
    }
    assert_eq!(
        stored(&stats_json(&demo).await),
        stored_before,
        "a refused key stored a task"
    );

    let ids: HashSet<&String> = [&first, &bob, &other, &longest]
        .into_iter()
        .chain(&plain)
        .collect();
    let emails = demo.outbox();
    let sent = common::by_task(&emails, WELCOME);
    println!(
        "idempotency keys: {} distinct tasks from 15 accepted requests, {} emails; {stats:?}",
        ids.len(),
        emails.len()
    );
    assert_eq!(
        sent.keys().collect::<HashSet<_>>(),
        ids,
        "the emails sent are not one per task"
    );
    assert!(sent.values().all(|runs| runs.len() == 1), "{sent:?}");
    assert_eq!(emails.len(), 6);
    assert_eq!(
        sent[&bob][0].to.as_deref().map(|to| to.starts_with("bob-")),
        Some(true)
    );
    assert_eq!((stats.succeeded, stats.dead, stats.total()), (6, 0, 6));
}

/// Promise: with `?delay_s=N` (0 to 86400, 400 otherwise) the task runs no
/// earlier than N seconds after the 201, which does not wait for it.
#[tokio::test]
async fn a_delayed_task_is_acknowledged_at_once_and_runs_no_earlier_than_its_delay() {
    let demo = Demo::start(&[]).await;
    let tomorrow = common::created_task(
        &demo
            .post(
                "/durable/register?delay_s=86400",
                &signup("tomorrow@example.com"),
            )
            .await,
        "Email sent",
    );
    let requested = Utc::now();
    let reply = demo
        .post("/durable/register?delay_s=2", &signup("later@example.com"))
        .await;
    let acknowledged = Utc::now();
    let later = common::created_task(&reply, "Email sent");
    assert!(
        reply.elapsed < Duration::from_secs(2),
        "the 201 waited for the delay: {reply:?}"
    );
    let now = common::created_task(
        &demo
            .post("/durable/register?delay_s=0", &signup("now@example.com"))
            .await,
        "Email sent",
    );
    // Both delayed ones wait for their time (`delay_s=0` too, for the
    // scheduler's next look, a fraction of a second).
    let stats = stats_json(&demo).await;
    assert!(stats["scheduled"].as_u64() >= Some(2), "{stats}");

    let at_once = email_of(&now, || demo.outbox()).await;
    let email = email_of(&later, || demo.outbox()).await;
    let after_request = email.sent_at.with_timezone(&Utc) - requested;
    let after_201 = email.sent_at.with_timezone(&Utc) - acknowledged;
    println!(
        "?delay_s=2: 201 in {:?}, the email {after_request} after the request \
         ({after_201} after the 201); ?delay_s=0: {} after the 201",
        reply.elapsed,
        at_once.sent_at.with_timezone(&Utc) - acknowledged
    );
    assert!(
        after_201 >= chrono::Duration::seconds(2),
        "it ran {after_201} after its 201"
    );
    assert_eq!(
        (email.to.as_deref(), email.attempt),
        (Some("later@example.com"), Some(1))
    );
    // The one of tomorrow waits: it is later than the one due in 2 s.
    // (An email is sent a moment before River records its task done.)
    let stats = eventually_within(RUN, "the two tasks to be done", async || {
        let stats = stats_json(&demo).await;
        (stats["running"] == 0).then_some(stats)
    })
    .await;
    assert_eq!(
        (&stats["scheduled"], &stats["succeeded"]),
        (&json!(1), &json!(2)),
        "{stats}"
    );
    assert!(
        !demo
            .outbox()
            .iter()
            .any(|email| email.task_id.as_deref() == Some(tomorrow.as_str())),
        "the task of tomorrow ran"
    );

    for delay in ["86401", "-1", "x", "1.5", "", "99999999999999999999999"] {
        let path = format!("/durable/register?delay_s={delay}");
        let reply = demo.post(&path, &signup("bad@example.com")).await;
        assert_bad_request(&reply, &path);
    }
    assert_eq!(
        stored(&stats_json(&demo).await),
        3,
        "a refused delay stored a task"
    );
}

/// The tick emails of `emails` sent in `[from, from + window)`.
fn ticks_within(emails: &[Email], from: DateTime<Utc>, window: Duration) -> Vec<Email> {
    let to = from + chrono::Duration::from_std(window).expect("a window");
    emails
        .iter()
        .filter(|email| email.message == TICK)
        .filter(|email| {
            let at: DateTime<FixedOffset> = email.sent_at;
            at >= from && at < to
        })
        .cloned()
        .collect()
}

/// Watches `emails()` for `window` once two ticks came (the schedule runs),
/// and returns the ticks sent within it.
async fn measure_ticks(window: Duration, emails: impl Fn() -> Vec<Email>) -> Vec<Email> {
    eventually_within(RUN, "two ticks", async || {
        (emails()
            .iter()
            .filter(|email| email.message == TICK)
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let from = Utc::now();
    // The window itself, then a second for a tick of its last moment to be
    // written: the count comes from the emails' own times.
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    let ticks = ticks_within(&emails(), from, window);
    let ids: HashSet<&str> = ticks
        .iter()
        .filter_map(|tick| tick.task_id.as_deref())
        .collect();
    assert_eq!(ids.len(), ticks.len(), "a tick task ran twice: {ticks:?}");
    ticks
}

/// Promise: `--tick-every-s N` is a periodic task once every N seconds
/// across all processes on the store, however many run.
#[tokio::test]
async fn the_periodic_tick_comes_once_a_period_across_two_processes_on_postgres() {
    const WINDOW: Duration = Duration::from_secs(6);
    let pg = common::start_postgres().await;
    let store = pg.url();
    let mut demo = Demo::start(&["--store", &store, "--tick-every-s", "1"]).await;
    let dirs = Scratch::new();
    let mut worker = WorkerProcess::start(
        Some(&store),
        &dirs.path().join("w"),
        &["--tick-every-s", "1"],
    )
    .await;
    let ticks = measure_ticks(WINDOW, || {
        let mut emails = demo.outbox();
        emails.extend(worker.outbox());
        emails
    })
    .await;
    let by_worker = worker
        .outbox()
        .iter()
        .filter(|email| email.message == TICK)
        .count();
    println!(
        "ticks every 1 s, the service and a worker on PostgreSQL: {} in a window of {WINDOW:?} \
         ({by_worker} ticks in all run by the worker)",
        ticks.len()
    );
    let expected = WINDOW.as_secs() as usize;
    assert!(
        (expected - 2..=expected + 2).contains(&ticks.len()),
        "{} ticks in {WINDOW:?}: {ticks:?}",
        ticks.len()
    );

    worker.terminate();
    assert_eq!(
        worker.exit_status(PATIENCE).await.code(),
        Some(0),
        "{}",
        worker.stderr()
    );
    demo.terminate();
    assert_eq!(
        demo.exit_status(PATIENCE).await.code(),
        Some(0),
        "{}",
        demo.stderr()
    );
}

#[tokio::test]
async fn the_periodic_tick_comes_once_a_period_on_sqlite() {
    const WINDOW: Duration = Duration::from_secs(6);
    let demo = Demo::start(&["--tick-every-s", "1"]).await;
    let ticks = measure_ticks(WINDOW, || demo.outbox()).await;
    println!(
        "ticks every 1 s on SQLite, one process: {} in a window of {WINDOW:?}",
        ticks.len()
    );
    let expected = WINDOW.as_secs() as usize;
    assert!(
        (expected - 2..=expected + 2).contains(&ticks.len()),
        "{} ticks in {WINDOW:?}: {ticks:?}",
        ticks.len()
    );
    assert!(ticks
        .iter()
        .all(|tick| tick.to.is_none() && tick.attempt == Some(1)));
}

/// Every process of a deploy may be given the same `--tick-every-s` (one
/// `EPILOGUE_TICK_EVERY_S` for all): an older release (`worker --only`,
/// never the leader) starts with it too, and the ticks stay once a period.
#[tokio::test]
async fn a_worker_only_process_starts_with_tick_every_s_and_the_ticks_stay_once_a_period() {
    const WINDOW: Duration = Duration::from_secs(6);
    let mut demo = Demo::start(&["--tick-every-s", "1"]).await;
    let mut old = WorkerProcess::start(
        None,
        demo.data_dir(),
        &["--only", "tick,recovering_durable", "--tick-every-s", "1"],
    )
    .await;
    let ticks = measure_ticks(WINDOW, || demo.outbox()).await;
    println!(
        "ticks every 1 s, the service and a `worker --only tick,recovering_durable` on SQLite: \
         {} in a window of {WINDOW:?}",
        ticks.len()
    );
    let expected = WINDOW.as_secs() as usize;
    assert!(
        (expected - 2..=expected + 2).contains(&ticks.len()),
        "{} ticks in {WINDOW:?}: {ticks:?}",
        ticks.len()
    );

    old.terminate();
    assert_eq!(
        old.exit_status(PATIENCE).await.code(),
        Some(0),
        "{}",
        old.stderr()
    );
    demo.terminate();
    assert_eq!(
        demo.exit_status(PATIENCE).await.code(),
        Some(0),
        "{}",
        demo.stderr()
    );
}

/// The service and two workers started at the same moment on `store`
/// (`None`: the SQLite file of `data_dir`, which they share): each of them
/// must start, then they run a task.
async fn start_three_at_once(store: Option<&str>, data_dir: &std::path::Path) {
    std::fs::create_dir_all(data_dir).expect("cannot create the data directory");
    let workers = Scratch::new();
    let (a, b) = (workers.path().join("a"), workers.path().join("b"));
    let (dir_a, dir_b) = match store {
        Some(_) => (a.as_path(), b.as_path()),
        None => (data_dir, data_dir),
    };
    let mut command = Demo::command();
    command
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    if let Some(store) = store {
        command.args(["--store", store]);
    }
    // Each future spawns its process when first polled: the three start
    // within milliseconds, while the store is still empty.
    let (mut demo, mut first, mut second) = tokio::join!(
        Demo::spawn(command, Scratch::new(), data_dir.to_owned()),
        WorkerProcess::start(store, dir_a, &[]),
        WorkerProcess::start(store, dir_b, &[]),
    );
    let id = common::created_task(
        &demo
            .post("/durable/register", &signup("together@example.com"))
            .await,
        "Email sent",
    );
    email_of(&id, || {
        let mut emails = demo.outbox();
        if store.is_some() {
            emails.extend(first.outbox());
            emails.extend(second.outbox());
        }
        emails
    })
    .await;
    for worker in [&mut first, &mut second] {
        worker.terminate();
        let status = worker.exit_status(PATIENCE).await;
        assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
    }
    demo.terminate();
    let status = demo.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
}

/// Replicas of a deploy start together: on a store that has no tables yet,
/// every one of them creates or finds River's tables, none gives up.
#[tokio::test]
async fn three_processes_started_at_once_on_a_fresh_sqlite_store_all_start() {
    for _ in 0..3 {
        let scratch = Scratch::new();
        start_three_at_once(None, &scratch.path().join("data")).await;
    }
}

#[tokio::test]
async fn three_processes_started_at_once_on_a_fresh_postgres_store_all_start() {
    let pg = common::start_postgres().await;
    for round in 0..3 {
        let database = format!("fresh_{round}");
        pg.psql(&format!("create database {database}"));
        let store = pg.url().replace("/epilogue", &format!("/{database}"));
        let scratch = Scratch::new();
        start_three_at_once(Some(&store), &scratch.path().join("data")).await;
    }
}
