//! A store on a SQLite file and a real runner: tasks run, fail, retry, die,
//! wait for their time or their kind, time out, and are stored together.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{
    recv, runner_finished, shut_down, start, stored_total, succeeded_at_least, task_in, task_info,
    total, Db, Parked, SendOnDrop, DEADLINE,
};
use epilogue::Runner;
use epilogue_durable::{BoxError, DurableError, DurableTask, Enqueue, Job, TaskId, TaskState};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Doubles its number, and says which attempt of which task ran.
#[derive(Serialize, Deserialize)]
struct Double {
    n: u32,
}

impl DurableTask for Double {
    const NAME: &'static str = "double";
    type State = UnboundedSender<(TaskId, u32, u32)>;
    type Output = u32;

    async fn run(self, job: Job, ran: Self::State) -> Result<u32, BoxError> {
        let _ = ran.send((job.id(), job.attempt(), self.n));
        Ok(self.n * 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enqueued_task_runs_on_the_runner_and_its_output_is_stored() {
    let db = Db::new();
    let runner = Runner::new();
    let (ran, mut runs) = unbounded_channel();
    let store = start(&db, &runner, |store| store.register::<Double>(ran)).await;

    let id = store.enqueue(&Double { n: 21 }).await.unwrap();
    assert_eq!(recv(&mut runs, "the task to run").await, (id, 1, 21));

    let info = task_in::<Double>(&store, id, TaskState::Succeeded).await;
    assert_eq!(info.id, id);
    assert_eq!(info.task, Double::NAME);
    assert_eq!(info.output, Some(42));
    assert_eq!(info.attempts, 1);
    assert_eq!(info.last_error, None);
    assert!(info.finalized_at.is_some());
    let json = store.task_json(id).await.unwrap().unwrap();
    assert_eq!(json.output, Some(serde_json::json!(42)));
    assert!(store
        .task::<Double>(TaskId::from(id.get() + 1000))
        .await
        .unwrap()
        .is_none());

    runner_finished(&runner, Double::NAME, 1).await;
    let stats = runner.stats();
    assert_eq!(stats.by_task[Double::NAME].succeeded, 1);
    assert_eq!(stats.by_task[Double::NAME].finished(), 1);

    let stored = store.stats().await.unwrap();
    assert_eq!((stored.succeeded, total(&stored)), (1, 1));

    shut_down(&runner).await;
}

/// Fails its first `MAX_ATTEMPTS` attempts, then succeeds.
#[derive(Serialize, Deserialize)]
struct Flaky {}

impl DurableTask for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_ATTEMPTS: u32 = 2;
    type State = UnboundedSender<(u32, Instant)>;
    type Output = String;

    async fn run(self, job: Job, ran: Self::State) -> Result<String, BoxError> {
        let _ = ran.send((job.attempt(), Instant::now()));
        if job.attempt() <= Self::MAX_ATTEMPTS {
            assert_eq!(job.is_last_attempt(), job.attempt() == Self::MAX_ATTEMPTS);
            return Err(format!("mail server down (attempt {})", job.attempt()).into());
        }
        Ok(format!("sent on attempt {}", job.attempt()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_task_is_retried_then_dead_then_retried_by_hand() {
    let db = Db::new();
    let runner = Runner::new();
    let (ran, mut runs) = unbounded_channel();
    let store = start(&db, &runner, |store| store.register::<Flaky>(ran)).await;
    let id = store.enqueue(&Flaky {}).await.unwrap();

    let (first, first_at) = recv(&mut runs, "the first attempt").await;
    let (second, second_at) = recv(&mut runs, "the second attempt").await;
    assert_eq!((first, second), (1, 2));
    // The first retry waits a second.
    let waited = second_at - first_at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );

    let dead = task_in::<Flaky>(&store, id, TaskState::Dead).await;
    assert_eq!((dead.attempts, dead.max_attempts), (2, 2));
    assert_eq!(
        dead.last_error.as_deref(),
        Some("mail server down (attempt 2)")
    );
    assert!(dead.finalized_at.is_some());
    let listed = store.dead(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].task, Flaky::NAME);
    assert_eq!(store.stats().await.unwrap().dead, 1);

    assert!(store.retry(id).await.unwrap(), "a dead task is retried");
    let (third, _) = recv(&mut runs, "the attempt after the retry").await;
    assert_eq!(third, 3);
    let done = task_in::<Flaky>(&store, id, TaskState::Succeeded).await;
    assert_eq!(done.output.as_deref(), Some("sent on attempt 3"));
    assert!(store.dead(10).await.unwrap().is_empty());

    // Neither a task that succeeded nor one that does not exist is retried.
    assert!(!store.retry(id).await.unwrap());
    assert!(!store.retry(TaskId::from(id.get() + 1000)).await.unwrap());

    runner_finished(&runner, Flaky::NAME, 3).await;
    let by_task = &runner.stats().by_task[Flaky::NAME];
    assert_eq!((by_task.failed, by_task.succeeded), (2, 1));
    shut_down(&runner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_stores_one_task() {
    let db = Db::new();
    let runner = Runner::new();
    let store = start(&db, &runner, |store| store).await;

    let first = store
        .enqueue_with(&Parked { n: 1 }, Enqueue::new().idempotency_key("k"))
        .await
        .unwrap();
    // Other arguments, same key: the same task.
    let second = store
        .enqueue_with(&Parked { n: 2 }, Enqueue::new().idempotency_key("k"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.id, first.id);
    let stats = store.stats().await.unwrap();
    assert_eq!((total(&stats), stats.queued), (1, 1));

    let other = store
        .enqueue_with(&Parked { n: 1 }, Enqueue::new().idempotency_key("other"))
        .await
        .unwrap();
    assert!(!other.duplicate);
    assert_ne!(other.id, first.id);
    // Without a key, nothing is deduplicated.
    let a = store.enqueue(&Parked { n: 1 }).await.unwrap();
    let b = store.enqueue(&Parked { n: 1 }).await.unwrap();
    assert_ne!(a, b);
    assert_eq!(stored_total(&store).await, 4);
    shut_down(&runner).await;
}

/// The enqueues that share a transaction each get their own row back, keys
/// repeated within one batch included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_with_a_repeated_key_each_get_their_own_answer() {
    let db = Db::new();
    let runner = Runner::new();
    let store = start(&db, &runner, |store| store).await;

    let mut calls = tokio::task::JoinSet::new();
    for n in 0..32u32 {
        let store = store.clone();
        calls.spawn(async move {
            let options = if n % 2 == 0 {
                Enqueue::new().idempotency_key("same")
            } else {
                Enqueue::new()
            };
            let enqueued = store.enqueue_with(&Parked { n }, options).await.unwrap();
            (n, enqueued)
        });
    }
    let answers = calls.join_all().await;
    let keyed: HashSet<TaskId> = answers
        .iter()
        .filter(|(n, _)| n % 2 == 0)
        .map(|(_, e)| e.id)
        .collect();
    assert_eq!(keyed.len(), 1, "one task for the repeated key: {answers:?}");
    let duplicates = answers
        .iter()
        .filter(|(n, e)| n % 2 == 0 && e.duplicate)
        .count();
    assert_eq!(duplicates, 15, "{answers:?}");
    for (n, enqueued) in answers.iter().filter(|(n, _)| n % 2 == 1) {
        assert!(!enqueued.duplicate);
        let row = store.client().jobs().get(enqueued.id.get()).await.unwrap();
        let args: serde_json::Value = row.decode_args().unwrap();
        assert_eq!(args["n"], *n, "task {n} got the id of another");
    }
    assert_eq!(stored_total(&store).await, 17);
    shut_down(&runner).await;
}

/// Says when it started.
#[derive(Serialize, Deserialize)]
struct Stamp {}

impl DurableTask for Stamp {
    const NAME: &'static str = "stamp";
    type State = UnboundedSender<SystemTime>;
    type Output = ();

    async fn run(self, _: Job, started: Self::State) -> Result<(), BoxError> {
        let _ = started.send(SystemTime::now());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delayed_task_starts_no_earlier_than_its_delay() {
    let db = Db::new();
    let runner = Runner::new();
    let (started, mut starts) = unbounded_channel();
    let store = start(&db, &runner, |store| store.register::<Stamp>(started)).await;
    store.ready().await;

    let delay = Duration::from_secs(2);
    let before = SystemTime::now();
    let id = store
        .enqueue_with(&Stamp {}, Enqueue::new().delay(delay))
        .await
        .unwrap()
        .id;
    let info = task_info::<Stamp>(&store, id).await;
    assert!(
        matches!(
            info.state,
            TaskState::Scheduled | TaskState::Running | TaskState::Succeeded
        ),
        "{info:?}"
    );
    assert!(info.scheduled_at >= before + delay, "{info:?}");

    let at = recv(&mut starts, "the delayed task to start").await;
    let after = at.duration_since(before).unwrap();
    assert!(after >= delay, "started {after:?} after the enqueue");
    assert!(
        after < delay + Duration::from_secs(10),
        "started {after:?} after the enqueue"
    );
    task_in::<Stamp>(&store, id, TaskState::Succeeded).await;
    shut_down(&runner).await;
}

common::reporting_task! {
    /// The kind an older process knows.
    Known = "known"
}

common::reporting_task! {
    /// The kind only a newer process knows.
    Newer = "newer"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kind_the_process_does_not_register_waits_for_one_that_does() {
    let db = Db::new();
    let old_runner = Runner::new();
    let (old_ran, mut old_runs) = unbounded_channel();
    let old = start(&db, &old_runner, |store| store.register::<Known>(old_ran)).await;
    old.ready().await;

    // Stored first, so that a process fetching every kind would claim it
    // no later than the task after it.
    let newer = old.enqueue(&Newer {}).await.unwrap();
    let known = old.enqueue(&Known {}).await.unwrap();
    assert_eq!(recv(&mut old_runs, "the known task").await.0, known);
    task_in::<Known>(&old, known, TaskState::Succeeded).await;
    // A claim marks a task running in the fetch itself: it was never taken.
    let waiting = task_info::<Newer>(&old, newer).await;
    assert_eq!(waiting.state, TaskState::Queued, "{waiting:?}");
    assert_eq!(waiting.attempts, 0);
    assert!(matches!(
        old.task::<Known>(newer).await,
        Err(DurableError::WrongKind {
            expected: "known",
            ..
        })
    ));

    let new_runner = Runner::new();
    let (new_ran, mut new_runs) = unbounded_channel();
    let new = start(&db, &new_runner, |store| {
        store
            .register::<Known>(unbounded_channel().0)
            .register::<Newer>(new_ran)
    })
    .await;
    assert_eq!(recv(&mut new_runs, "the newer task").await.0, newer);
    let info = task_in::<Newer>(&new, newer, TaskState::Succeeded).await;
    assert_eq!(info.attempts, 1);
    runner_finished(&new_runner, Newer::NAME, 1).await;
    assert!(!old_runner.stats().by_task.contains_key(Newer::NAME));

    shut_down(&old_runner).await;
    shut_down(&new_runner).await;
}

/// What happened to a [`Stuck`] attempt.
#[derive(Debug)]
enum Stuck {
    Started,
    Dropped(Instant),
    SleptToTheEnd,
}

/// Sleeps far past its timeout.
#[derive(Serialize, Deserialize)]
struct Sleepy {}

impl DurableTask for Sleepy {
    const NAME: &'static str = "sleepy";
    const MAX_ATTEMPTS: u32 = 1;
    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(300));
    type State = UnboundedSender<Stuck>;
    type Output = ();

    async fn run(self, _: Job, events: Self::State) -> Result<(), BoxError> {
        let _guard = SendOnDrop(events.clone(), || Stuck::Dropped(Instant::now()));
        let _ = events.send(Stuck::Started);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = events.send(Stuck::SleptToTheEnd);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_past_its_timeout_is_dropped_and_its_attempt_fails() {
    let db = Db::new();
    let runner = Runner::new();
    let (events, mut seen) = unbounded_channel();
    let store = start(&db, &runner, |store| store.register::<Sleepy>(events)).await;
    let id = store.enqueue(&Sleepy {}).await.unwrap();

    assert!(matches!(recv(&mut seen, "the start").await, Stuck::Started));
    let started = Instant::now();
    match recv(&mut seen, "the attempt to end").await {
        Stuck::Dropped(at) => {
            let ran = at - started;
            assert!(ran < Duration::from_secs(5), "dropped only after {ran:?}");
        }
        other => panic!("the attempt was not dropped: {other:?}"),
    }

    let dead = task_in::<Sleepy>(&store, id, TaskState::Dead).await;
    assert_eq!(dead.attempts, 1);
    assert!(dead.last_error.is_some(), "{dead:?}");
    runner_finished(&runner, Sleepy::NAME, 1).await;
    assert_eq!(runner.stats().by_task[Sleepy::NAME].succeeded, 0);
    shut_down(&runner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_all_commit_with_distinct_ids() {
    let db = Db::new();
    let runner = Runner::new();
    let (ran, mut runs) = unbounded_channel();
    let store = start(&db, &runner, |store| {
        store.register::<Double>(ran).concurrency(8)
    })
    .await;

    let mut calls = tokio::task::JoinSet::new();
    for n in 0..32u32 {
        let store = store.clone();
        calls.spawn(async move { (n, store.enqueue(&Double { n }).await.unwrap()) });
    }
    let ids = calls.join_all().await;
    let distinct: HashSet<TaskId> = ids.iter().map(|&(_, id)| id).collect();
    assert_eq!(distinct.len(), 32);

    // Each id is the task its caller stored, and each runs once.
    let mut ran = Vec::new();
    for _ in 0..32 {
        let (id, attempt, n) = recv(&mut runs, "every task to run").await;
        assert_eq!(attempt, 1);
        ran.push((n, id));
    }
    ran.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(ran, expected);
    succeeded_at_least(&store, 32).await;
    shut_down(&runner).await;
}

/// Counts its runs.
#[derive(Serialize, Deserialize)]
struct Tick {
    label: String,
}

impl DurableTask for Tick {
    const NAME: &'static str = "tick";
    type State = (Arc<AtomicU32>, UnboundedSender<String>);
    type Output = u32;

    async fn run(self, _: Job, (count, ran): Self::State) -> Result<u32, BoxError> {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = ran.send(self.label);
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_periodic_task_runs_again_and_again() {
    let db = Db::new();
    let runner = Runner::new();
    let (ran, mut runs) = unbounded_channel();
    let count = Arc::new(AtomicU32::new(0));
    let every = Duration::from_millis(500);
    let tick = || Tick {
        label: "every 500 ms".to_owned(),
    };
    let store = start(&db, &runner, |store| {
        store
            .register::<Tick>((count.clone(), ran))
            .every::<Tick>(every, tick)
    })
    .await;

    let within = Duration::from_secs(10).min(DEADLINE);
    let started = Instant::now();
    for run in 1..=2 {
        let left = within.saturating_sub(started.elapsed());
        let label = tokio::time::timeout(left, runs.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("run {run} of the periodic task did not come within {within:?}")
            })
            .unwrap();
        assert_eq!(label, "every 500 ms");
    }
    assert!(count.load(Ordering::SeqCst) >= 2);
    succeeded_at_least(&store, 2).await;
    shut_down(&runner).await;
}
