//! The `metrics` feature: what a runner reports through the facade.
#![cfg(feature = "metrics")]

use std::time::Duration;

use epilogue::{BackgroundTask, BackgroundTasks, Runner};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn outcomes_gauges_and_durations_reach_the_recorder() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime: every task runs on the thread that holds the
    // local recorder.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let runner = Runner::builder().max_running(1).max_pending(0).build();
            let mut tasks = BackgroundTasks::new();
            tasks.add_task(|| async {}, ());
            tasks.push(BackgroundTask::new(
                || async { Err::<(), _>("refused") },
                (),
            ));
            runner.spawn(tasks).unwrap();
            assert!(runner.spawn(BackgroundTask::new(|| async {}, ())).is_err());
            assert!(runner.shutdown(Duration::from_secs(5)).await.drained);
        })
    });

    let metrics: Vec<_> = snapshotter.snapshot().into_vec();
    let value = |name: &str, outcome: Option<&str>| {
        metrics
            .iter()
            .find(|(key, _, _, _)| {
                let key = key.key();
                let label = key
                    .labels()
                    .find(|l| l.key() == "outcome")
                    .map(|l| l.value());
                key.name() == name && label == outcome
            })
            .map(|(_, _, _, value)| value)
            .unwrap_or_else(|| panic!("no {name} {outcome:?} in {metrics:?}"))
    };
    assert_eq!(
        value("epilogue_tasks_accepted_total", None),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        value("epilogue_tasks_total", Some("succeeded")),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value("epilogue_tasks_total", Some("failed")),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value("epilogue_refused_total", None),
        &DebugValue::Counter(1)
    );
    match value("epilogue_task_run_seconds", None) {
        DebugValue::Histogram(samples) => assert_eq!(samples.len(), 2),
        other => panic!("{other:?}"),
    }
    match value("epilogue_tasks_running", None) {
        DebugValue::Gauge(running) => assert_eq!(running.into_inner(), 0.0),
        other => panic!("{other:?}"),
    }
}
