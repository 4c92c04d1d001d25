//! The runner's shutdown drains durable tasks as it drains in-memory ones:
//! a task that finishes within the grace is recorded before the shutdown
//! returns; one cut off at the deadline goes back to the queue with its
//! attempt, for the next process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{join, recv, shut_down, start, task_in, task_info, wait_until, Db, SendOnDrop};
use epilogue::Runner;
use epilogue_durable::{BoxError, DurableTask, Job, TaskState};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;

/// What a [`Long`] attempt did.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Started { attempt: u32 },
    Dropped,
    Finished,
}

/// Never ends in a process whose state says `stuck`; ends at once in one
/// whose state does not.
#[derive(Serialize, Deserialize)]
struct Long {}

#[derive(Clone)]
struct LongState {
    stuck: bool,
    seen: UnboundedSender<Seen>,
}

impl DurableTask for Long {
    const NAME: &'static str = "long";
    // Far longer than the test: only the shutdown stops it.
    const TIMEOUT: Option<Duration> = Some(Duration::from_secs(600));
    type State = LongState;
    type Output = u32;

    async fn run(self, job: Job, state: LongState) -> Result<u32, BoxError> {
        let _ = state.seen.send(Seen::Started {
            attempt: job.attempt(),
        });
        if state.stuck {
            let _guard = SendOnDrop(state.seen.clone(), || Seen::Dropped);
            std::future::pending::<()>().await;
        }
        let _ = state.seen.send(Seen::Finished);
        Ok(job.attempt())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_cut_off_by_the_shutdown_goes_back_to_the_queue_with_its_attempt() {
    let db = Db::new();
    let runner = Runner::new();
    let (seen, mut events) = unbounded_channel();
    let store = start(&db, &runner, |store| {
        store.register::<Long>(LongState { stuck: true, seen })
    })
    .await;
    let id = store.enqueue(&Long {}).await.unwrap();
    assert_eq!(
        recv(&mut events, "the task to start").await,
        Seen::Started { attempt: 1 }
    );
    let running = task_info::<Long>(&store, id).await;
    assert_eq!((running.state, running.attempts), (TaskState::Running, 1));

    let report = runner.shutdown(Duration::from_millis(300)).await;
    assert!(!report.drained, "{report:?}");
    assert_eq!(report.cut_off, [Long::NAME], "{report:?}");
    assert_eq!(
        recv(&mut events, "the attempt to be dropped").await,
        Seen::Dropped
    );

    // Recorded before the shutdown returned: queued again, and the attempt
    // it was cut off in does not count.
    let back = task_info::<Long>(&store, id).await;
    assert_eq!(back.state, TaskState::Queued, "{back:?}");
    assert_eq!(back.attempts, 0, "{back:?}");
    assert_eq!(back.last_error, None, "{back:?}");

    // The next process runs it, as its first attempt.
    let next_runner = Runner::new();
    let (seen, mut next_events) = unbounded_channel();
    let next = start(&db, &next_runner, |store| {
        store.register::<Long>(LongState { stuck: false, seen })
    })
    .await;
    assert_eq!(
        recv(&mut next_events, "the task to start again").await,
        Seen::Started { attempt: 1 }
    );
    let done = task_in::<Long>(&next, id, TaskState::Succeeded).await;
    assert_eq!((done.attempts, done.output), (1, Some(1)));
    shut_down(&next_runner).await;
    // Nothing else of the first process is left running.
    assert!(events.try_recv().is_err());
}

/// Waits for the test's go before it ends.
#[derive(Serialize, Deserialize)]
struct Brief {}

impl DurableTask for Brief {
    const NAME: &'static str = "brief";
    type State = (Arc<Notify>, UnboundedSender<Seen>);
    type Output = String;

    async fn run(self, job: Job, (go, seen): Self::State) -> Result<String, BoxError> {
        let _ = seen.send(Seen::Started {
            attempt: job.attempt(),
        });
        go.notified().await;
        let _ = seen.send(Seen::Finished);
        Ok("done".to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_in_flight_finishes_within_the_grace_and_is_recorded_before_shutdown_returns() {
    let db = Db::new();
    let runner = Runner::new();
    let go = Arc::new(Notify::new());
    let (seen, mut events) = unbounded_channel();
    let store = start(&db, &runner, |store| {
        store.register::<Brief>((go.clone(), seen))
    })
    .await;
    let id = store.enqueue(&Brief {}).await.unwrap();
    assert_eq!(
        recv(&mut events, "the task to start").await,
        Seen::Started { attempt: 1 }
    );

    let shutdown = tokio::spawn({
        let runner = runner.clone();
        async move { runner.shutdown(Duration::from_secs(30)).await }
    });
    wait_until("the shutdown to start", || async { runner.is_closed() }).await;
    // The task is still running: the shutdown waits for it.
    assert!(!shutdown.is_finished());
    go.notify_one();
    let report = join(shutdown, "the shutdown to end").await;
    assert!(report.drained, "{report:?}");
    assert_eq!(
        recv(&mut events, "the task to finish").await,
        Seen::Finished
    );

    let done = task_info::<Brief>(&store, id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.output.as_deref(), Some("done"));
    assert_eq!(runner.stats().by_task[Brief::NAME].succeeded, 1);
}
