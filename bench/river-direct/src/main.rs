//! The comparators of `bench/durable.sh`'s throughput case, on the same
//! stores as the demo (SQLite: WAL, `synchronous = FULL`, 8 connections;
//! PostgreSQL: 16 connections):
//!
//! ```text
//! river-direct river --store URL --tasks N --concurrency C [--processes P]
//!                    [--fetch-cooldown-ms MS] [--timeout-s S]
//!     River used directly: inserts N jobs (insert_many, 500 a batch),
//!     then starts P worker processes (`work` below), each a River client
//!     with C workers and a fetch cooldown of MS (1 ms, River's least, by
//!     default), and polls the store every 20 ms until N jobs are completed.
//! river-direct ceiling --store URL --tasks N [--batch B]
//!     The store's own ceiling: inserts N jobs the same way, then, on one
//!     connection, claims B available rows in one statement (River's claim,
//!     reduced to its state change) and completes them in another, until
//!     none is left.
//! river-direct work --store URL --concurrency C [--fetch-cooldown-ms MS]
//!     One worker process of `river`: runs the jobs until its stdin
//!     closes, then stops River and prints what it ran.
//! ```
//!
//! A job does what the demo's durable welcome email does, so that the two
//! differ by the library, not by the work: it appends one JSON line
//! (`to`, `message`, an RFC 3339 `sent_at`, the job's id and attempt) to a
//! file of its process with one `write` under a mutex, and keeps the last
//! 10,000 in memory. The file is removed when the process ends.
//!
//! ```text
//! ```
//!
//! Each command prints one JSON object on stdout. `work` reports when each
//! job ran (wall-clock microseconds since the epoch, comparable across
//! processes) and its CPU time; `river` the rates from them.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{SecondsFormat, Utc};
use riverqueue::sqlx::postgres::PgPoolOptions;
use riverqueue::sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use riverqueue::sqlx::{self, PgPool, SqlitePool};
use riverqueue::{
    BoxError, Client, Job, JobArgs, QueueConfig, WorkContext, WorkOutcome, Workers, QUEUE_DEFAULT,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The job: the demo's welcome email.
#[derive(Serialize, Deserialize, JobArgs)]
#[river(kind = "bench_welcome")]
struct Welcome {
    email: String,
}

/// The line a job appends, as the demo's outbox writes it.
#[derive(Serialize)]
struct Email {
    to: Option<String>,
    message: &'static str,
    sent_at: String,
    task_id: String,
    attempt: u32,
}

/// The most recent emails kept in memory, as the demo keeps them.
const RECENT_EMAILS: usize = 10_000;

/// A worker process's outbox: its file, and the most recent emails.
struct Outbox {
    path: PathBuf,
    sent: Mutex<(File, VecDeque<Email>)>,
}

impl Outbox {
    fn open() -> Result<Self, Error> {
        let path =
            std::env::temp_dir().join(format!("river-direct-outbox-{}.jsonl", std::process::id()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            sent: Mutex::new((file, VecDeque::new())),
        })
    }

    fn send(&self, job: &Job<Welcome>) -> std::io::Result<()> {
        let email = Email {
            to: Some(job.args.email.clone()),
            message: "Welcome (durable).",
            sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            task_id: job.row.id.to_string(),
            attempt: u32::try_from(job.row.attempt).unwrap_or(1),
        };
        let mut line = serde_json::to_vec(&email)?;
        line.push(b'\n');
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.0.write_all(&line)?;
        if sent.1.len() == RECENT_EMAILS {
            sent.1.pop_front();
        }
        sent.1.push_back(email);
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Jobs inserted per `insert_many`.
const INSERT_BATCH: usize = 500;
/// River's fetch cooldown for `river` by default (its minimum).
const FETCH_COOLDOWN_MS: usize = 1;
/// How often `river` counts the completed jobs.
const DONE_POLL: Duration = Duration::from_millis(20);

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    /// The pool the demo's `Store::open` would open at `url`.
    async fn open(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            Ok(Self::Postgres(pool))
        } else {
            Err("--store must be sqlite://PATH or postgres://...".into())
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    async fn migrate(&self) -> Result<(), Error> {
        match self {
            Self::Sqlite(pool) => {
                riverqueue::migrate::SqliteMigrator::new(pool.clone())
                    .migrate_up()
                    .await?;
            }
            Self::Postgres(pool) => {
                riverqueue::migrate::PostgresMigrator::new(pool.clone())
                    .migrate_up()
                    .await?;
            }
        }
        Ok(())
    }

    fn client(&self) -> riverqueue::ClientBuilder {
        match self {
            Self::Sqlite(pool) => Client::builder(pool.clone()),
            Self::Postgres(pool) => Client::builder(pool.clone()),
        }
    }

    async fn count(&self, state: &str) -> Result<i64, Error> {
        const SQLITE: &str = "SELECT count(*) FROM river_job WHERE state = ?1";
        const POSTGRES: &str = "SELECT count(*) FROM river_job WHERE state::text = $1";
        Ok(match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar(SQLITE)
                    .bind(state)
                    .fetch_one(pool)
                    .await?
            }
            Self::Postgres(pool) => {
                sqlx::query_scalar(POSTGRES)
                    .bind(state)
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// Migrates, inserts `tasks` available jobs; returns the seconds it took.
async fn insert(pool: &Pool, tasks: usize) -> Result<f64, Error> {
    pool.migrate().await?;
    let queued = pool.count("available").await?;
    if queued != 0 {
        return Err(format!("the store already holds {queued} available jobs").into());
    }
    let client = pool.client().build()?;
    let started = Instant::now();
    let mut left = tasks;
    while left > 0 {
        let n = left.min(INSERT_BATCH);
        let jobs = (0..n).map(|_| Welcome {
            email: "bench@example.com".to_owned(),
        });
        client.insert_many(jobs).await?;
        left -= n;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn epoch_us() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros(),
    )
    .unwrap_or(u64::MAX)
}

/// When each job of this process ran, microseconds since the epoch.
type Ran = Arc<Mutex<Vec<u64>>>;

/// `work`: one River client running the jobs until stdin closes.
async fn work(
    pool: Pool,
    concurrency: usize,
    cooldown: Duration,
) -> Result<serde_json::Value, Error> {
    let ran: Ran = Arc::default();
    let outbox = Arc::new(Outbox::open()?);
    let mut workers = Workers::new();
    let seen = ran.clone();
    workers.add_fn(move |_: WorkContext, job: Job<Welcome>| {
        let now = epoch_us();
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(now);
        let outbox = outbox.clone();
        async move {
            outbox.send(&job)?;
            Ok::<_, BoxError>(WorkOutcome::Complete)
        }
    })?;
    let client = pool
        .client()
        .workers(workers)
        .queue(QUEUE_DEFAULT, QueueConfig::new(concurrency))
        .fetch_cooldown(cooldown)
        .build()?;
    let mut run = client.start()?;
    // Until the parent closes our stdin (or says anything).
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
    run.stop().await?;
    pool.close().await;
    let mut times = std::mem::take(&mut *ran.lock().unwrap_or_else(PoisonError::into_inner));
    times.sort_unstable();
    Ok(json!({ "ran_us": times, "cpu_ticks": cpu_ticks() }))
}

/// This process's user + system CPU time so far, in clock ticks (Linux's
/// /proc/self/stat; `None` elsewhere).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After "pid (comm) ": state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(tick(11)? + tick(12)?)
}

/// `river`: insert, then P `work` processes until every job is completed.
async fn river(
    url: &str,
    tasks: usize,
    concurrency: usize,
    processes: usize,
    cooldown: Duration,
    timeout: Duration,
) -> Result<serde_json::Value, Error> {
    let pool = Pool::open(url).await?;
    let insert_s = insert(&pool, tasks).await?;
    let exe = std::env::current_exe()?;
    let t0 = epoch_s();
    let started = Instant::now();
    let mut children = Vec::with_capacity(processes);
    for _ in 0..processes {
        let child = tokio::process::Command::new(&exe)
            .args(["work", "--store", url, "--concurrency"])
            .arg(concurrency.to_string())
            .arg("--fetch-cooldown-ms")
            .arg(cooldown.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let want = i64::try_from(tasks)?;
    let done = loop {
        let completed = pool.count("completed").await?;
        if completed >= want {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{completed} of {tasks} jobs completed after {} s",
                timeout.as_secs()
            )
            .into());
        }
        tokio::time::sleep(DONE_POLL).await;
    };
    let mut per_process = Vec::with_capacity(processes);
    for mut child in children {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"stop\n").await;
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).await?;
        }
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("a worker process exited with {status}").into());
        }
        per_process.push(serde_json::from_str::<serde_json::Value>(out.trim())?);
    }
    pool.close().await;
    let runs: Vec<Vec<f64>> = per_process
        .iter()
        .map(|p| {
            p["ran_us"]
                .as_array()
                .map(|times| {
                    times
                        .iter()
                        .filter_map(|t| t.as_u64())
                        .map(|t| t as f64 / 1e6)
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let mut all: Vec<f64> = runs.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let ran = all.len();
    if ran < tasks {
        return Err(format!("{ran} job runs seen for {tasks} jobs").into());
    }
    let (first, last) = (all[0], all[ran - 1]);
    let span = last - first;
    // The middle 80 % of the runs: the rate once every process is running.
    let (lo, hi) = ((ran - 1) / 10, (ran - 1) * 9 / 10);
    let steady = (all[hi] > all[lo]).then(|| (hi - lo) as f64 / (all[hi] - all[lo]));
    Ok(json!({
        "kind": "river",
        "store": pool.name(),
        "tasks": tasks,
        "concurrency": concurrency,
        "processes": processes,
        "fetch_cooldown_ms": cooldown.as_secs_f64() * 1e3,
        "insert_s": insert_s,
        "ran": ran,
        "wall_s": done,
        "tps_wall": tasks as f64 / done,
        "first_start_s": first - t0,
        "span_s": span,
        "tps_span": (span > 0.0).then(|| (tasks as f64 - 1.0) / span),
        "tps_steady": steady,
        "per_process": runs.iter().map(Vec::len).collect::<Vec<_>>(),
        "cpu_ticks": per_process.iter().map(|p| p["cpu_ticks"].as_u64()).sum::<Option<u64>>(),
    }))
}

/// `ceiling`: claim B rows, complete them, in two statements, until done.
async fn ceiling(url: &str, tasks: usize, batch: usize) -> Result<serde_json::Value, Error> {
    let pool = Pool::open(url).await?;
    let insert_s = insert(&pool, tasks).await?;
    let limit = i64::try_from(batch)?;
    let started = Instant::now();
    let mut done = 0usize;
    let mut statements = 0usize;
    match &pool {
        Pool::Sqlite(pool) => {
            const CLAIM: &str = "UPDATE river_job SET state = 'running', attempt = attempt + 1, \
                attempted_at = ?1 WHERE id IN (SELECT id FROM river_job WHERE queue = 'default' \
                AND state = 'available' AND scheduled_at <= ?1 \
                ORDER BY priority, scheduled_at, id LIMIT ?2) RETURNING id";
            const COMPLETE: &str = "UPDATE river_job SET state = 'completed', finalized_at = ?1 \
                WHERE id IN (SELECT value FROM json_each(?2))";
            let mut conn = pool.acquire().await?;
            loop {
                let now = sqlite_now();
                let ids: Vec<i64> = sqlx::query_scalar(CLAIM)
                    .bind(&now)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?;
                statements += 1;
                if ids.is_empty() {
                    break;
                }
                sqlx::query(COMPLETE)
                    .bind(sqlite_now())
                    .bind(serde_json::to_string(&ids)?)
                    .execute(&mut *conn)
                    .await?;
                statements += 1;
                done += ids.len();
            }
        }
        Pool::Postgres(pool) => {
            const CLAIM: &str = "UPDATE river_job SET state = 'running', attempt = attempt + 1, \
                attempted_at = now() WHERE id IN (SELECT id FROM river_job WHERE queue = 'default' \
                AND state = 'available' AND scheduled_at <= now() \
                ORDER BY priority, scheduled_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id";
            const COMPLETE: &str =
                "UPDATE river_job SET state = 'completed', finalized_at = now() \
                WHERE id = ANY($1)";
            let mut conn = pool.acquire().await?;
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(CLAIM)
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await?;
                statements += 1;
                if ids.is_empty() {
                    break;
                }
                sqlx::query(COMPLETE).bind(&ids).execute(&mut *conn).await?;
                statements += 1;
                done += ids.len();
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let completed = pool.count("completed").await?;
    pool.close().await;
    if done != tasks || usize::try_from(completed)? != tasks {
        return Err(format!("claimed {done} and completed {completed} of {tasks} rows").into());
    }
    Ok(json!({
        "kind": "ceiling",
        "store": pool.name(),
        "tasks": tasks,
        "batch": batch,
        "statements": statements,
        "insert_s": insert_s,
        "secs": secs,
        "tps": tasks as f64 / secs,
    }))
}

/// River's SQLite timestamp: UTC, milliseconds.
fn sqlite_now() -> String {
    riverqueue::jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S%.3f")
        .to_string()
}

struct Args {
    command: String,
    store: Option<String>,
    tasks: usize,
    concurrency: usize,
    processes: usize,
    batch: usize,
    cooldown: Duration,
    timeout: Duration,
}

const USAGE: &str = "usage: river-direct river --store URL --tasks N --concurrency C [--processes P] [--fetch-cooldown-ms MS] [--timeout-s S]
       river-direct ceiling --store URL --tasks N [--batch B]
       river-direct work --store URL --concurrency C [--fetch-cooldown-ms MS]";

fn parse() -> Result<Args, String> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().ok_or(USAGE)?;
    let mut args = Args {
        command,
        store: None,
        tasks: 0,
        concurrency: 16,
        processes: 1,
        batch: 100,
        cooldown: Duration::from_millis(FETCH_COOLDOWN_MS as u64),
        timeout: Duration::from_secs(300),
    };
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{flag}: expected a number above 0, got {value:?}"))
        };
        match flag.as_str() {
            "--store" => args.store = Some(value.clone()),
            "--tasks" => args.tasks = number()?,
            "--concurrency" => args.concurrency = number()?,
            "--processes" => args.processes = number()?,
            "--batch" => args.batch = number()?,
            "--fetch-cooldown-ms" => args.cooldown = Duration::from_millis(number()? as u64),
            "--timeout-s" => args.timeout = Duration::from_secs(number()? as u64),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if args.store.is_none() {
        return Err(format!("--store is required\n{USAGE}"));
    }
    if args.command != "work" && args.tasks == 0 {
        return Err(format!("--tasks is required\n{USAGE}"));
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("river-direct: {message}");
            return ExitCode::from(2);
        }
    };
    let store = args.store.as_deref().unwrap_or_default();
    let result = match args.command.as_str() {
        "river" => {
            river(
                store,
                args.tasks,
                args.concurrency,
                args.processes,
                args.cooldown,
                args.timeout,
            )
            .await
        }
        "ceiling" => ceiling(store, args.tasks, args.batch).await,
        "work" => match Pool::open(store).await {
            Ok(pool) => work(pool, args.concurrency, args.cooldown).await,
            Err(e) => Err(e),
        },
        other => Err(format!("unknown command {other}\n{USAGE}").into()),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("river-direct {}: {error}", args.command);
            ExitCode::FAILURE
        }
    }
}
