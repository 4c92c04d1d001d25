//! Faults under load: the demo held at small limits (`--max-running 8
//! --max-pending 32`) by a few thousand requests from many concurrent
//! clients, half of them to `POST /chaos` (a task that fails, panics or
//! hangs past its timeout at random, with retries, then an email that is
//! sent whatever it did), the rest to `POST /response/single`. Each client
//! randomly waits for its answer, closes the socket right after sending the
//! request, or half-closes and reads the answer. Meanwhile a poller on a
//! thread of its own asks `GET /healthz` every few milliseconds.
//!
//! What each chaos attempt does is a pure function of the request's email
//! (`epilogue_demo::tasks::chaos_outcome`), and every email carries the
//! request's id, so the test knows what every accepted request must have
//! left in `outbox.jsonl` and what the runner must have counted:
//!
//! - the outcomes add up to `accepted`; nothing skipped, cut off or abandoned;
//! - every 201 got all of its effects, in order: a chaos request its
//!   "Chaos survived." email exactly when one of its attempts succeeds, then
//!   its "Chaos over." email; a `/response/single` request its email;
//! - no request's tasks ran twice (each email at most once per id), and the
//!   chaos attempts were exactly those of the retry policy (`retried`, and
//!   the outcomes of `by_task["chaos"]`);
//! - a request answered 503 ran nothing;
//! - a request whose client closed right after sending it was handled all
//!   the same: it ran its tasks, or it was refused (the refusals the clients
//!   did not see are `refused` minus the 503s they saw);
//! - `/healthz` answered 200, each time within 2 s, throughout;
//! - SIGTERM then stops the demo with exit code 0.
//!
//! 2 000 requests by default, about 5 s; `EPILOGUE_SOAK=1` sends 20 000
//! (about a minute). The clients' choices come from a seed, printed at the
//! start; `FAULTS_SEED=N` replays them.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{raw_post, signup, Demo, PATIENCE};
use epilogue_demo::tasks::{chaos_outcome, ChaosOutcome, CHAOS_RETRIES, CHAOS_SURVIVED};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

const LIMITS: &[&str] = &["--max-running", "8", "--max-pending", "32"];

/// Requests sent by default, and with `EPILOGUE_SOAK=1`.
const REQUESTS: usize = 2_000;
const SOAK_REQUESTS: usize = 20_000;

/// Clients sending at once, each one request after the other.
const CLIENTS: usize = 48;

/// The longest pause of a client between two requests (each pause is drawn
/// between none and this): enough traffic to keep the demo at its limits
/// for a few seconds, not so much that nearly every request is refused.
const MAX_PAUSE_MS: u64 = 200;

/// How long all the traffic may take, by default and in a soak.
const TRAFFIC_LIMIT: Duration = Duration::from_secs(60);
const SOAK_TRAFFIC_LIMIT: Duration = Duration::from_secs(600);

/// Each `/healthz` must be answered 200 within this.
const HEALTH_BOUND: Duration = Duration::from_secs(2);
const HEALTH_EVERY: Duration = Duration::from_millis(20);

const CHAOS_OVER: &str = "Chaos over.";
const REGISTERED: &str = "Thank you for registering.";
const SEND_EMAIL: &str = "epilogue_demo::tasks::send_email_notification";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Chaos,
    Single,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Sends the request and reads the answer to the end.
    Wait,
    /// Closes the socket right after sending the request.
    Close,
    /// Shuts its side down after sending, then reads the answer.
    HalfClose,
}

/// What a client saw of its request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Status(u16),
    /// It closed without reading.
    Unread,
    Error(String),
}

#[derive(Debug)]
struct Sent {
    route: Route,
    mode: Mode,
    answer: Answer,
}

/// The email of request `id`: it carries the id and the route.
fn email(route: Route, id: usize) -> String {
    match route {
        Route::Chaos => format!("chaos-{id}@faults.example.com"),
        Route::Single => format!("single-{id}@faults.example.com"),
    }
}

/// The request id and route of an email of [`email`].
fn parse_email(to: &str) -> (Route, usize) {
    let (route, rest) = if let Some(rest) = to.strip_prefix("chaos-") {
        (Route::Chaos, rest)
    } else if let Some(rest) = to.strip_prefix("single-") {
        (Route::Single, rest)
    } else {
        panic!("an email to nobody the test wrote to: {to:?}")
    };
    let id = rest
        .strip_suffix("@faults.example.com")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("an email to nobody the test wrote to: {to:?}"));
    (route, id)
}

/// splitmix64: the clients' choices, from the run's seed and the request id.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The route and mode of request `id`, and the client's pause after it:
/// half the requests to each route; half wait, a quarter close at once, a
/// quarter half-close.
fn choose(seed: u64, id: usize) -> (Route, Mode, Duration) {
    let x = mix(seed ^ mix(id as u64));
    let route = if x & 1 == 0 {
        Route::Chaos
    } else {
        Route::Single
    };
    let mode = match (x >> 1) & 3 {
        0 | 1 => Mode::Wait,
        2 => Mode::Close,
        _ => Mode::HalfClose,
    };
    let pause = Duration::from_millis((x >> 8) % (MAX_PAUSE_MS + 1));
    (route, mode, pause)
}

/// What the chaos task of `email` must end with, after the retry policy:
/// the first attempt that succeeds, or the last attempt's outcome; and how
/// many attempts that takes.
fn chaos_plan(email: &str) -> (ChaosOutcome, u32) {
    for attempt in 0..=CHAOS_RETRIES {
        let outcome = chaos_outcome(email, attempt);
        if outcome == ChaosOutcome::Succeed || attempt == CHAOS_RETRIES {
            return (outcome, attempt + 1);
        }
    }
    unreachable!()
}

/// Sends one request on a connection of its own, as `mode` says.
async fn send(addr: SocketAddr, route: Route, mode: Mode, id: usize) -> Answer {
    let path = match route {
        Route::Chaos => "/chaos",
        Route::Single => "/response/single",
    };
    let extra: &[&str] = match mode {
        Mode::Wait => &["Connection: close"],
        _ => &[],
    };
    let request = raw_post(addr, path, extra, &signup(&email(route, id)).to_string());
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        match mode {
            Mode::Close => return Ok(Answer::Unread),
            Mode::HalfClose => stream.shutdown().await?,
            Mode::Wait => {}
        }
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
        Ok::<_, std::io::Error>(match status {
            Some(201) => {
                let body = match route {
                    Route::Chaos => r#"{"message":"Created"}"#,
                    Route::Single => r#"{"message":"Email sent"}"#,
                };
                if answer.ends_with(body) {
                    Answer::Status(201)
                } else {
                    Answer::Error(format!("a 201 with another body: {answer:?}"))
                }
            }
            Some(status) => Answer::Status(status),
            None => Answer::Error(format!("not an HTTP/1.1 answer: {answer:?}")),
        })
    };
    match tokio::time::timeout(PATIENCE, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => Answer::Error(error.to_string()),
        Err(_) => Answer::Error(format!("no answer within {PATIENCE:?}")),
    }
}

/// One `GET /healthz`: how long it took, and its status or error.
type Probe = (Duration, Result<u16, String>);

/// Asks `/healthz` every [`HEALTH_EVERY`] until `stop`, on a thread and a
/// runtime of its own, so that the clients' load on the test's runtime
/// does not delay it.
fn poll_health(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Probe>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the health poller");
        runtime.block_on(async {
            // Longer than the bound, so that a slow answer is measured
            // rather than cut.
            let client = reqwest::Client::builder()
                .timeout(HEALTH_BOUND * 3)
                .build()
                .expect("an HTTP client");
            let url = format!("http://{addr}/healthz");
            let mut probes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = match client.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        response
                            .bytes()
                            .await
                            .map(|_| status)
                            .map_err(|e| e.to_string())
                    }
                    Err(error) => Err(error.to_string()),
                };
                probes.push((started.elapsed(), result));
                tokio::time::sleep(HEALTH_EVERY).await;
            }
            probes
        })
    })
}

/// The fields of `GET /stats` this test reads.
#[derive(Debug, Deserialize)]
struct Stats {
    accepted: u64,
    running: u64,
    pending: u64,
    succeeded: u64,
    failed: u64,
    panicked: u64,
    timed_out: u64,
    skipped: u64,
    cut_off: u64,
    abandoned: u64,
    retried: u64,
    refused: u64,
    by_task: BTreeMap<String, TaskStats>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
struct TaskStats {
    succeeded: u64,
    failed: u64,
    panicked: u64,
    timed_out: u64,
    cut_off: u64,
}

async fn stats(demo: &Demo) -> Stats {
    let reply = demo.get("/stats").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("/stats ({e}): {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_chaos_at_its_limits_every_accepted_request_gets_its_tasks_once() {
    let soak = std::env::var_os("EPILOGUE_SOAK").is_some_and(|v| v != "0" && !v.is_empty());
    let (requests, traffic_limit) = if soak {
        (SOAK_REQUESTS, SOAK_TRAFFIC_LIMIT)
    } else {
        (REQUESTS, TRAFFIC_LIMIT)
    };
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("a clock after 1970")
                .as_nanos() as u64
        });
    eprintln!("faults: {requests} requests, FAULTS_SEED={seed}");
    let started = Instant::now();

    let mut demo = Demo::start(LIMITS).await;
    let addr = demo.addr();
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = poll_health(addr, stop_polling.clone());

    // The traffic.
    let next = Arc::new(AtomicUsize::new(0));
    let sent: Arc<Mutex<HashMap<usize, Sent>>> = Arc::default();
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (next, sent) = (next.clone(), sent.clone());
        clients.spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= requests {
                    return;
                }
                let (route, mode, pause) = choose(seed, id);
                let answer = send(addr, route, mode, id).await;
                let record = Sent {
                    route,
                    mode,
                    answer,
                };
                sent.lock().unwrap().insert(id, record);
                tokio::time::sleep(pause).await;
            }
        });
    }
    tokio::time::timeout(traffic_limit, async {
        while let Some(client) = clients.join_next().await {
            client.expect("a client");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the traffic took longer than {traffic_limit:?}"));
    let traffic_took = started.elapsed();
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert_eq!(sent.len(), requests);

    let errors: Vec<_> = sent
        .iter()
        .filter(|(_, s)| matches!(s.answer, Answer::Error(_)))
        .take(10)
        .collect();
    assert!(errors.is_empty(), "requests that failed: {errors:?}");
    let odd: Vec<_> = sent
        .iter()
        .filter(|(_, s)| !matches!(s.answer, Answer::Status(201 | 503) | Answer::Unread))
        .take(10)
        .collect();
    assert!(odd.is_empty(), "answers neither 201 nor 503: {odd:?}");
    let seen_refused = sent
        .values()
        .filter(|s| s.answer == Answer::Status(503))
        .count();

    // The requests closed early may still be on their way in: wait until
    // every request is accounted for, as refused or as an accepted group
    // that has sent its last email, and nothing runs or waits any more.
    let (stats, outbox) = common::eventually(
        "every request to be refused or to have run its tasks, and the runner idle",
        async || {
            let stats = stats(&demo).await;
            if stats.running != 0 || stats.pending != 0 {
                return None;
            }
            let outbox = demo.outbox();
            let groups_done = outbox
                .iter()
                .filter(|email| email.message == CHAOS_OVER || email.message == REGISTERED)
                .count() as u64;
            (groups_done + stats.refused >= requests as u64).then_some((stats, outbox))
        },
    )
    .await;
    stop_polling.store(true, Ordering::Relaxed);
    let probes = poller.join().expect("the health poller");

    // What each request left in the outbox, in the order sent.
    let mut effects: HashMap<usize, Vec<String>> = HashMap::new();
    for email in &outbox {
        let to = email
            .to
            .as_deref()
            .unwrap_or_else(|| panic!("an email to nobody: {email:?}"));
        let (route, id) = parse_email(to);
        let record = sent
            .get(&id)
            .unwrap_or_else(|| panic!("an email for a request never sent: {email:?}"));
        assert_eq!(record.route, route, "{email:?}");
        effects.entry(id).or_default().push(email.message.clone());
    }

    // Per request: all of its effects or none, each once, in order.
    let (mut chaos_accepted, mut single_accepted) = (0u64, 0u64);
    let mut expected_chaos = TaskStats::default();
    let mut expected_retried = 0u64;
    let mut closed_early = 0;
    let mut closed_early_ran = 0;
    for (id, record) in &sent {
        let effects = effects.get(id).map_or(&[][..], Vec::as_slice);
        let to = email(record.route, *id);
        let promised: Vec<&str> = match record.route {
            Route::Chaos => {
                let (outcome, attempts) = chaos_plan(&to);
                if !effects.is_empty() {
                    chaos_accepted += 1;
                    expected_retried += u64::from(attempts - 1);
                    *match outcome {
                        ChaosOutcome::Succeed => &mut expected_chaos.succeeded,
                        ChaosOutcome::Fail => &mut expected_chaos.failed,
                        ChaosOutcome::Panic => &mut expected_chaos.panicked,
                        ChaosOutcome::Hang => &mut expected_chaos.timed_out,
                    } += 1;
                }
                match outcome {
                    ChaosOutcome::Succeed => vec![CHAOS_SURVIVED, CHAOS_OVER],
                    _ => vec![CHAOS_OVER],
                }
            }
            Route::Single => {
                if !effects.is_empty() {
                    single_accepted += 1;
                }
                vec![REGISTERED]
            }
        };
        match record.answer {
            Answer::Status(201) => assert_eq!(
                effects, promised,
                "request {id} ({to}, {:?}) got its 201: all of its tasks, once, in order",
                record.mode
            ),
            Answer::Status(503) => assert!(
                effects.is_empty(),
                "request {id} ({to}) was refused, yet ran tasks: {effects:?}"
            ),
            Answer::Unread => {
                closed_early += 1;
                if !effects.is_empty() {
                    closed_early_ran += 1;
                    assert_eq!(
                        effects, promised,
                        "request {id} ({to}), closed right after sending: all of its tasks, once, in order"
                    );
                }
            }
            ref other => unreachable!("{other:?}"),
        }
    }
    let answered_201 = sent
        .values()
        .filter(|s| s.answer == Answer::Status(201))
        .count();

    // What the runner counted.
    let sum = stats.succeeded
        + stats.failed
        + stats.panicked
        + stats.timed_out
        + stats.skipped
        + stats.cut_off
        + stats.abandoned;
    assert_eq!(sum, stats.accepted, "the outcomes add up: {stats:?}");
    assert_eq!(
        (stats.skipped, stats.cut_off, stats.abandoned),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.accepted,
        2 * chaos_accepted + single_accepted,
        "accepted tasks: two per chaos request that ran, one per single: {stats:?}"
    );
    assert_eq!(
        stats.refused + chaos_accepted + single_accepted,
        requests as u64,
        "every request was refused or ran its tasks: {stats:?}"
    );
    assert_eq!(
        stats.refused.checked_sub(seen_refused as u64),
        Some((closed_early - closed_early_ran) as u64),
        "the requests closed early that sent nothing are those refused unseen"
    );
    let chaos = stats.by_task.get("chaos").cloned().unwrap_or_default();
    assert_eq!(
        chaos, expected_chaos,
        "the chaos tasks' outcomes: {stats:?}"
    );
    assert_eq!(
        stats.retried, expected_retried,
        "the attempts are those of the retry policy, no more: {stats:?}"
    );
    let emails = stats.by_task.get(SEND_EMAIL).cloned().unwrap_or_default();
    assert_eq!(
        emails,
        TaskStats {
            succeeded: chaos_accepted + single_accepted,
            ..TaskStats::default()
        },
        "{stats:?}"
    );
    assert_eq!(
        (stats.failed, stats.panicked, stats.timed_out),
        (
            expected_chaos.failed,
            expected_chaos.panicked,
            expected_chaos.timed_out
        ),
        "{stats:?}"
    );
    // The load reached the limits, and the run mixed what it should.
    assert!(seen_refused > 0, "nothing was refused: not at the limits");
    assert!(chaos_accepted > 0 && single_accepted > 0, "{stats:?}");
    assert!(expected_retried > 0, "no retry: {stats:?}");
    assert!(
        closed_early_ran > 0,
        "no request closed early ran its tasks"
    );

    // `/healthz` throughout.
    assert!(
        probes.len() >= 10,
        "too few health probes: {}",
        probes.len()
    );
    let slow: Vec<_> = probes
        .iter()
        .filter(|(took, result)| *took > HEALTH_BOUND || *result != Ok(200))
        .collect();
    assert!(
        slow.is_empty(),
        "/healthz not answered 200 within {HEALTH_BOUND:?}: {slow:?}"
    );
    let slowest = probes
        .iter()
        .map(|(took, _)| *took)
        .max()
        .unwrap_or_default();

    demo.terminate();
    let status = demo.exit_status(PATIENCE).await;
    if !status.success() {
        let stderr = demo.stderr();
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        panic!("{status}; the end of stderr, last line first: {tail:#?}");
    }

    eprintln!(
        "faults: {requests} requests in {traffic_took:?} ({:?} in all): {answered_201} answered 201, \
         {seen_refused} answered 503, {closed_early} closed early ({closed_early_ran} of them ran); \
         refused {}, accepted {} tasks ({chaos_accepted} chaos groups, {single_accepted} single): \
         succeeded {}, failed {}, panicked {}, timed out {}, skipped {}, cut off {}, abandoned {}, \
         retried {}; chaos {:?}; {} health probes, slowest {slowest:?}",
        started.elapsed(),
        stats.refused,
        stats.accepted,
        stats.succeeded,
        stats.failed,
        stats.panicked,
        stats.timed_out,
        stats.skipped,
        stats.cut_off,
        stats.abandoned,
        stats.retried,
        expected_chaos,
        probes.len(),
    );
}
