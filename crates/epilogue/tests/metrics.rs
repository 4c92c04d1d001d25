//! The `metrics` feature: what a runner reports through the facade.
#![cfg(feature = "metrics")]

use std::time::Duration;

use epilogue::{BackgroundTask, BackgroundTasks, Runner};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;

/// Runs `test` on a current-thread runtime (every task runs on the thread
/// that holds the local recorder), and returns what was recorded.
fn recorded<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    // Once: a snapshot takes the counters' values.
    Recorded(snapshotter.snapshot().into_vec())
}

type Metric = (
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

struct Recorded(Vec<Metric>);

impl Recorded {
    /// The value of the metric `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> &DebugValue {
        let metrics = &self.0;
        metrics
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && labels.iter().all(|(k, v)| {
                        key.labels()
                            .any(|label| label.key() == *k && label.value() == *v)
                    })
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {metrics:?}"))
    }
}

#[test]
fn outcomes_gauges_and_durations_reach_the_recorder() {
    let recorded = recorded(|| async {
        // Built under the recorder: the histograms' handles are taken now.
        let runner = Runner::builder().max_running(1).max_pending(0).build();
        let mut tasks = BackgroundTasks::new();
        tasks.push(BackgroundTask::new(|| async {}, ()).name("fine"));
        tasks.push(BackgroundTask::new(|| async { Err::<(), _>("refused") }, ()).name("broken"));
        runner.spawn(tasks).unwrap();
        assert!(runner.spawn(BackgroundTask::new(|| async {}, ())).is_err());
        assert!(runner.shutdown(Duration::from_secs(5)).await.drained);
        runner.record_metrics();
    });
    let value = |name: &str, labels: &[(&str, &str)]| recorded.value(name, labels);
    assert_eq!(
        value("epilogue_tasks_accepted_total", &[]),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        value(
            "epilogue_tasks_finished_total",
            &[("task", "fine"), ("outcome", "succeeded")]
        ),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value(
            "epilogue_tasks_finished_total",
            &[("task", "broken"), ("outcome", "failed")]
        ),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value("epilogue_requests_refused_total", &[]),
        &DebugValue::Counter(1)
    );
    match value("epilogue_task_run_seconds", &[]) {
        DebugValue::Histogram(samples) => assert_eq!(samples.len(), 2),
        other => panic!("{other:?}"),
    }
    for (gauge, expected) in [
        ("epilogue_tasks_running", 0.0),
        ("epilogue_max_running", 1.0),
    ] {
        match value(gauge, &[]) {
            DebugValue::Gauge(value) => assert_eq!(value.into_inner(), expected, "{gauge}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn long_polls_are_counted_per_task_name() {
    let recorded = recorded(|| async {
        let runner = Runner::new();
        // A synchronous call in an `async fn`: one poll of 30 ms.
        let blocks = || async { std::thread::sleep(Duration::from_millis(30)) };
        runner
            .spawn(BackgroundTask::new(blocks, ()).name("blocks"))
            .unwrap();
        runner
            .spawn(BackgroundTask::new(|| async {}, ()).name("fine"))
            .unwrap();
        assert!(runner.shutdown(Duration::from_secs(5)).await.drained);
        runner.record_metrics();
    });
    for (task, polls) in [("blocks", 1), ("fine", 0)] {
        assert_eq!(
            recorded.value("epilogue_task_long_polls_total", &[("task", task)]),
            &DebugValue::Counter(polls),
            "{task}"
        );
    }
}
