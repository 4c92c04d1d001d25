//! Durable tasks under faults, against the real binary: a full disk under
//! the SQLite store, its file deleted under the service, PostgreSQL gone for
//! 30 s while long tasks run, and a worker process killed mid-task. Each
//! test counts what was acknowledged and what ran, and prints the counts.

mod common;

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{
    assert_json_content_type, eventually_within, signup, Demo, Email, Reply, Scratch,
    WorkerProcess, PATIENCE,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const WELCOME: &str = "Welcome (durable).";

/// How long a test waits for stored tasks to have run after a fault, where
/// a dead process's tasks must first be taken back.
const RECOVERY: Duration = Duration::from_secs(120);

/// Asserts a 503 of a durable route: a JSON error and `Retry-After`.
fn assert_unavailable(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_json_content_type(reply.header("content-type"));
    assert!(reply.json()["error"].is_string(), "{reply:?}");
    let retry_after = reply.header("retry-after").unwrap_or_else(|| {
        panic!("a 503 without Retry-After: {reply:?}");
    });
    assert!(retry_after.parse::<u64>().is_ok(), "{reply:?}");
}

/// What one round of registrations got.
#[derive(Debug, Default)]
struct Round {
    /// `(task id, email)` of every 201.
    created: Vec<(String, String)>,
    /// How many got a 503 (each checked: JSON, `Retry-After`).
    unavailable: usize,
}

impl Round {
    fn add(&mut self, reply: &Reply, email: String) {
        match reply.status {
            StatusCode::CREATED => self
                .created
                .push((common::created_task(reply, "Email sent"), email)),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_unavailable(reply);
                self.unavailable += 1;
            }
            _ => panic!("neither 201 nor 503: {reply:?}"),
        }
    }

    fn merge(&mut self, other: Round) {
        self.created.extend(other.created);
        self.unavailable += other.unavailable;
    }
}

/// `count` registrations one after the other, each with its own email.
async fn register_sequentially(demo: &Demo, prefix: &str, count: usize) -> Round {
    let mut round = Round::default();
    for n in 0..count {
        let email = format!("{prefix}-{n}@example.com");
        let reply = demo.post("/durable/register", &signup(&email)).await;
        round.add(&reply, email);
    }
    round
}

/// `count` registrations, `at_once` at a time.
async fn register_concurrently(demo: &Demo, prefix: &str, count: usize, at_once: usize) -> Round {
    let slots = Arc::new(Semaphore::new(at_once));
    let mut requests = JoinSet::new();
    for n in 0..count {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let email = format!("{prefix}-{n}@example.com");
        let request = demo
            .client()
            .post(demo.url("/durable/register"))
            .json(&signup(&email));
        requests.spawn(async move {
            let _slot = slot;
            (Reply::of(request).await, email)
        });
    }
    let mut round = Round::default();
    while let Some(done) = requests.join_next().await {
        let (reply, email) = done.expect("a request task");
        round.add(&reply, email);
    }
    round
}

/// Writes `dir/filler` until the file system is full; returns its size.
fn fill(dir: &Path) -> u64 {
    let mut filler = fs::File::create(dir.join("filler")).expect("cannot create the filler");
    let mut written = 0u64;
    for chunk in [64 * 1024, 4096, 512, 1] {
        let bytes = vec![0xa5; chunk];
        loop {
            match filler.write(&bytes) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("cannot write the filler: {e}"),
            }
        }
    }
    written
}

/// Whether a new page can still be written in `dir`.
fn has_room(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let room = fs::File::create(&probe)
        .and_then(|mut file| file.write_all(&[0; 4096]).and_then(|()| file.sync_all()))
        .is_ok();
    let _ = fs::remove_file(&probe);
    room
}

/// SIGTERM, then an exit 0 within [`PATIENCE`].
async fn stop_cleanly(demo: &mut Demo) {
    demo.terminate();
    let status = demo.exit_status(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
}

/// Waits up to `limit` until no durable task is queued, running or
/// waiting for a retry; fails with the last stats and the demo's stderr.
async fn settled(demo: &Demo, limit: Duration) -> common::DurableStats {
    let deadline = Instant::now() + limit;
    loop {
        let stats = stats_if_up(demo).await;
        if let Some(stats) = stats.filter(common::DurableStats::settled) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "still not settled after {limit:?}: {stats:?}; stderr:\n{}",
            tail(&demo.stderr(), 60)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET /durable/stats` that may answer 503 (the store is down): `None`
/// then.
async fn stats_if_up(demo: &Demo) -> Option<common::DurableStats> {
    let reply = demo.get("/durable/stats").await;
    match reply.status {
        StatusCode::OK => Some(serde_json::from_value(reply.json()).expect("the fields")),
        StatusCode::SERVICE_UNAVAILABLE => None,
        _ => panic!("{reply:?}"),
    }
}

/// Promise: a 201 is never given for a task that is not committed, also
/// when the disk is full; once there is room again, a clean stop and a
/// restart run every task that got its 201.
#[tokio::test]
async fn on_a_full_disk_the_sqlite_store_answers_503_and_every_201_runs_after_a_restart() {
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipped: mounting a tmpfs to fill needs root");
        return;
    }
    // Declared first: unmounted after the demo is gone.
    let tmpfs = match common::tmpfs::Tmpfs::mount("16m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("skipped: no tmpfs to fill: {why}");
            return;
        }
    };
    let data_dir = tmpfs.path().to_owned();
    let mut demo = common::demo_on(&data_dir, &[]).await;
    assert!(data_dir.join("tasks.db").is_file());

    // Before: stored and run.
    let before = register_sequentially(&demo, "before", 10).await;
    assert_eq!((before.created.len(), before.unavailable), (10, 0));
    demo.wait_for_emails(WELCOME, 10).await;

    let filled = fill(&data_dir);
    assert!(!has_room(&data_dir), "the tmpfs is not full");
    let full_since = Instant::now();
    let mut full = register_sequentially(&demo, "full-a", 100).await;
    full.merge(register_concurrently(&demo, "full-b", 200, 16).await);
    full.merge(register_sequentially(&demo, "full-c", 100).await);
    // What comes last, once the store's spare pages (if any) are used up.
    let last = register_sequentially(&demo, "full-d", 20).await;
    let full_for = full_since.elapsed();
    assert!(!has_room(&data_dir), "the disk got room while full");
    let last_created = last.created.len();
    full.merge(last);

    fs::remove_file(data_dir.join("filler")).expect("cannot remove the filler");
    assert!(has_room(&data_dir));
    // The store works again, and each 201 from now on is committed too.
    // (With sqlx-sqlite 0.9.0, no 201 comes here: every connection that saw
    // a failed COMMIT believes it is still in a transaction, and River's
    // `BEGIN IMMEDIATE` on it fails. epilogue-durable requires 0.9.1.)
    let first_after = eventually_within(
        Duration::from_secs(30),
        "a 201 once the disk has room",
        async || {
            let email = "first-after@example.com".to_owned();
            let reply = demo.post("/durable/register", &signup(&email)).await;
            let mut round = Round::default();
            round.add(&reply, email);
            (!round.created.is_empty()).then_some(round)
        },
    )
    .await;
    let mut after = first_after;
    after.merge(register_sequentially(&demo, "after-a", 50).await);
    after.merge(register_concurrently(&demo, "after-b", 100, 16).await);

    println!(
        "full disk: while full {} 201s, {} 503s; after {} 201s, {} 503s; stats before the stop: {:?}",
        full.created.len(),
        full.unavailable,
        after.created.len(),
        after.unavailable,
        stats_if_up(&demo).await
    );
    stop_cleanly(&mut demo).await;
    // The SQLite pool's hook closes a connection left inside a failed
    // transaction, and says so.
    let closed_in_transaction = demo
        .stderr()
        .lines()
        .filter(|line| line.contains("came back inside a transaction"))
        .count();
    let full_errors = demo
        .stderr()
        .lines()
        .filter(|line| line.contains("disk is full"))
        .count();
    drop(demo);
    let mut demo = common::demo_on(&data_dir, &[]).await;
    let stats = settled(&demo, RECOVERY).await;
    let emails = demo.outbox();
    let sent = common::by_task(&emails, WELCOME);

    let mut created = before.created.clone();
    created.extend(full.created.iter().cloned());
    created.extend(after.created.iter().cloned());
    println!(
        "full disk (SQLite on a 16 MiB tmpfs, filler {filled} bytes): before {} 201s; \
         while full ({full_for:?}): {} 201s, {} 503s ({last_created} 201s in the last 20); \
         after: {} 201s, {} 503s; {full_errors} log lines of a full disk, \
         {closed_in_transaction} connections closed inside a failed transaction; restart: {stats:?}, {} rows, {} welcome emails for {} task ids",
        before.created.len(),
        full.created.len(),
        full.unavailable,
        after.created.len(),
        after.unavailable,
        stats.total(),
        sent.values().map(Vec::len).sum::<usize>(),
        sent.len()
    );
    let missing: Vec<_> = created
        .iter()
        .filter(|(id, _)| !sent.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} tasks got a 201 but never ran: {:?}",
        missing.len(),
        created.len(),
        &missing[..missing.len().min(5)]
    );
    for (id, email) in &created {
        for run in &sent[id] {
            assert_eq!(run.to.as_deref(), Some(email.as_str()), "{run:?}");
        }
    }
    // 201s given == tasks stored == tasks run: a 503 stored nothing.
    assert_eq!(stats.total(), created.len() as u64, "{stats:?}");
    assert_eq!((stats.succeeded, stats.dead), (created.len() as u64, 0));
    assert_eq!(sent.len(), created.len(), "a task ran that got no 201");
    // While the disk was full, requests were refused, not acknowledged
    // (each 503 checked: JSON, `Retry-After`).
    assert_eq!(
        last_created, 0,
        "the last 20 requests on a full disk got 201s"
    );
    assert_eq!(
        (full.created.len(), full.unavailable),
        (0, 420),
        "201s while the disk was full (each one ran after the restart, though)"
    );
    assert_eq!(after.unavailable, 0, "503s once the disk had room again");

    stop_cleanly(&mut demo).await;
}

/// Promise: the SQLite store's file deleted under a running service is
/// noticed within 10 s (at the next commit, here): durable routes answer
/// 503, never a 201 for a task in the deleted file; the metric says the
/// store is down, and an ERROR names the file; the other routes go on.
#[tokio::test]
async fn a_deleted_store_file_is_noticed_within_10_s_and_the_other_routes_keep_working() {
    let demo = Demo::start(&[]).await;
    let reply = demo
        .post("/durable/register", &signup("before@example.com"))
        .await;
    common::created_task(&reply, "Email sent");
    demo.wait_for_emails(WELCOME, 1).await;

    let db = demo.data_dir().join("tasks.db");
    assert!(db.is_file());
    let deleted = Instant::now();
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", db.display()));
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", file.display()),
        }
    }
    let mut created_meanwhile = 0;
    let refused = eventually_within(
        Duration::from_secs(10),
        "/durable/register to answer 503",
        async || {
            let reply = demo
                .post("/durable/register", &signup("after@example.com"))
                .await;
            if reply.status == StatusCode::CREATED {
                created_meanwhile += 1;
                return None;
            }
            Some(reply)
        },
    )
    .await;
    let noticed = deleted.elapsed();
    assert_unavailable(&refused);
    assert!(noticed <= Duration::from_secs(10), "{noticed:?}");
    // Each batch is checked to have landed in the store's own file: not
    // one 201 for a task committed into the deleted one.
    assert_eq!(created_meanwhile, 0, "201s for tasks in a deleted file");

    // The metric, the log, the other durable routes; and it stays so.
    let metrics = demo.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{metrics:?}");
    let up: Vec<&str> = metrics
        .body
        .lines()
        .filter(|line| line.starts_with("epilogue_durable_store_up"))
        .collect();
    assert_eq!(up, ["epilogue_durable_store_up 0"], "{}", metrics.body);
    let stderr = demo.stderr();
    let path = db.display().to_string();
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("ERROR") && line.contains(&path)),
        "no ERROR naming {path} on stderr:\n{stderr}"
    );
    for reply in [
        demo.post("/durable/register", &signup("later@example.com"))
            .await,
        demo.post("/durable/fail?times=0", &signup("later@example.com"))
            .await,
        demo.get("/durable/stats").await,
    ] {
        assert_unavailable(&reply);
    }
    let reply = demo.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let reply = demo
        .post("/response/single", &signup("memory@example.com"))
        .await;
    reply.assert_created(json!({ "message": "Email sent" }));
    demo.wait_for_emails("Thank you for registering.", 1).await;
    println!(
        "deleted store: noticed after {noticed:?}, {created_meanwhile} 201s before the first 503"
    );
}

/// Promise: a store outage (PostgreSQL unreachable for up to 30 s) never
/// makes a task run twice: a worker that is alive keeps its tasks.
#[tokio::test]
async fn a_30_s_postgres_outage_under_20_s_tasks_never_runs_a_task_twice() {
    const TASK: Duration = Duration::from_secs(20);
    const TASKS: usize = 8;
    let pg = common::start_postgres().await;
    let store = pg.url();
    let task_flags = ["--email-delay-ms", "20000", "--durable-timeout-s", "60"];
    let mut flags = vec!["--store", store.as_str()];
    flags.extend(task_flags);
    let mut demo = Demo::start(&flags).await;
    let dirs = Scratch::new();
    let mut worker = WorkerProcess::start(Some(&store), &dirs.path().join("w"), &task_flags).await;

    let mut ids = Vec::new();
    for n in 0..TASKS {
        let reply = demo
            .post(
                "/durable/register",
                &signup(&format!("long-{n}@example.com")),
            )
            .await;
        ids.push(common::created_task(&reply, "Email sent"));
    }
    // Four run in the service, four in the worker.
    let running = eventually_within(
        Duration::from_secs(30),
        "the 8 tasks to be running",
        async || {
            let stats = demo.durable_stats().await;
            (stats.running == TASKS as u64).then_some(stats)
        },
    )
    .await;
    let pg = Arc::new(pg);
    let stopped = Instant::now();
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.stop()
    })
    .await
    .expect("pg_ctl stop");
    let reply = demo
        .post("/durable/register", &signup("down@example.com"))
        .await;
    assert_unavailable(&reply);
    // The outage itself: 30 s, whatever happens meanwhile.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    let outage = stopped.elapsed();
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.restart()
    })
    .await
    .expect("pg_ctl start");

    let settled = eventually_within(RECOVERY, "every task to have run", async || {
        let stats = stats_if_up(&demo).await?;
        let emails: Vec<Email> = demo.outbox().into_iter().chain(worker.outbox()).collect();
        let sent = common::by_task(&emails, WELCOME);
        (stats.settled() && ids.iter().all(|id| sent.contains_key(id))).then_some(stats)
    })
    .await;
    let (in_service, in_worker) = (demo.outbox(), worker.outbox());
    let sent = common::by_task(in_service.iter().chain(&in_worker), WELCOME);
    let mut twice = 0;
    let mut overlapping = Vec::new();
    for (id, runs) in &sent {
        if runs.len() > 1 {
            twice += 1;
        }
        let intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = runs
            .iter()
            .map(|run| {
                let end = run.sent_at.with_timezone(&Utc);
                (end - chrono::Duration::from_std(TASK).expect("20 s"), end)
            })
            .collect();
        for (i, a) in intervals.iter().enumerate() {
            for b in &intervals[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    overlapping.push((id.clone(), runs.clone()));
                }
            }
        }
    }
    let emails = sent.values().map(Vec::len).sum::<usize>();
    println!(
        "PostgreSQL down for {outage:?} under {TASKS} tasks of {TASK:?} (stats then: {running:?}): \
         {} emails by the service, {} by the worker, {emails} welcome emails for {} tasks, \
         {twice} tasks ran twice, {} overlapping runs; stats after: {settled:?}",
        in_service.len(),
        in_worker.len(),
        sent.len(),
        overlapping.len()
    );
    for (id, runs) in sent.iter().filter(|(_, runs)| runs.len() > 1) {
        println!("  task {id} ran {} times: {runs:?}", runs.len());
    }
    for id in &ids {
        assert!(sent.contains_key(id), "task {id} never ran");
    }
    assert!(
        overlapping.is_empty(),
        "runs of one task overlapped: {overlapping:?}"
    );
    assert_eq!(twice, 0, "tasks ran twice after an outage of {outage:?}");
    assert_eq!(emails, TASKS);
    assert_eq!((settled.succeeded, settled.dead), (TASKS as u64, 0));

    worker.terminate();
    let status = worker.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
    stop_cleanly(&mut demo).await;
}

/// Promise: the tasks of a process that died are taken over within
/// `--durable-timeout-s` + 15 s.
#[tokio::test]
async fn the_tasks_of_a_killed_worker_process_run_again_within_the_timeout_and_15_s() {
    const TIMEOUT_S: u64 = 5;
    const TASK: Duration = Duration::from_secs(4);
    /// What a loaded two-core CI machine may add.
    const CI_MARGIN: Duration = Duration::from_secs(10);
    const TASKS: usize = 8;
    let pg = common::start_postgres().await;
    let store = pg.url();
    let task_flags = ["--email-delay-ms", "4000", "--durable-timeout-s", "5"];
    let mut flags = vec!["--store", store.as_str()];
    flags.extend(task_flags);
    let mut demo = Demo::start(&flags).await;
    let dirs = Scratch::new();
    let mut worker = WorkerProcess::start(Some(&store), &dirs.path().join("w"), &task_flags).await;

    let mut ids = Vec::new();
    for n in 0..TASKS {
        let reply = demo
            .post(
                "/durable/register",
                &signup(&format!("orphan-{n}@example.com")),
            )
            .await;
        ids.push(common::created_task(&reply, "Email sent"));
    }
    // Four slots in each process: four of them run in the worker.
    eventually_within(
        Duration::from_secs(30),
        "the 8 tasks to be running",
        async || (demo.durable_stats().await.running == TASKS as u64).then_some(()),
    )
    .await;
    worker.kill();
    let killed = Utc::now();
    let sent_by_worker = worker.outbox();

    let stats = settled(&demo, RECOVERY).await;
    let emails = demo.outbox();
    let sent = common::by_task(emails.iter().chain(&sent_by_worker), WELCOME);
    let taken_over: Vec<&Email> = sent
        .values()
        .flatten()
        .filter(|email| email.attempt == Some(2))
        .collect();
    let seconds = |delta: chrono::TimeDelta| delta.as_seconds_f64();
    let latest = taken_over
        .iter()
        .map(|email| seconds(email.sent_at.with_timezone(&Utc) - killed))
        .fold(0.0, f64::max);
    println!(
        "kill -9 of a worker running {} tasks: {} taken over (attempt 2); the last one started \
         again {:.1} s and was done {latest:.1} s after the kill (timeout {TIMEOUT_S} s, so \
         promised within {} s; tasks of {TASK:?}); stats: {stats:?}",
        TASKS - emails.iter().filter(|e| e.attempt == Some(1)).count(),
        taken_over.len(),
        latest - TASK.as_secs_f64(),
        TIMEOUT_S + 15,
    );
    assert!(sent_by_worker.is_empty(), "{sent_by_worker:?}");
    assert_eq!(
        taken_over.len(),
        TASKS / 2,
        "the worker's four tasks ran again: {sent:?}"
    );
    for id in &ids {
        let runs = sent
            .get(id)
            .unwrap_or_else(|| panic!("task {id} never ran"));
        assert_eq!(runs.len(), 1, "{runs:?}");
    }
    assert_eq!((stats.succeeded, stats.dead), (TASKS as u64, 0));
    let limit = Duration::from_secs(TIMEOUT_S + 15) + TASK + CI_MARGIN;
    for email in taken_over {
        let after = (email.sent_at.with_timezone(&Utc) - killed)
            .to_std()
            .expect("after the kill");
        assert!(
            after <= limit,
            "a task of the killed worker was done {after:?} after the kill: {email:?}"
        );
    }
    stop_cleanly(&mut demo).await;
}
