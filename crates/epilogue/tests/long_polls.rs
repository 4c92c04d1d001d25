//! A task that blocks in a poll stalls every group of its lane: each such
//! poll is counted, and the first one of each task name is logged.

mod common;

use std::time::Duration;

use common::Captured;
use epilogue::{BackgroundTask, Runner};

/// Blocks its thread for 30 ms in each of its `polls` polls, as a
/// synchronous call in an `async fn` does.
async fn blocks(polls: u32) {
    for poll in 0..polls {
        if poll > 0 {
            tokio::task::yield_now().await;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_long_poll_is_counted_and_each_task_name_logged_once() {
    let captured = Captured::default();
    // This test's runtime has one thread: the runner's lanes log here.
    let _guard = captured.set_default(tracing::Level::WARN);
    let runner = Runner::new();
    for polls in [2, 1] {
        let task = BackgroundTask::new(blocks, (polls,)).name("resize_image");
        runner.spawn(task).unwrap();
    }
    let fast = BackgroundTask::new(tokio::task::yield_now, ()).name("fast");
    runner.spawn(fast).unwrap();
    let report = runner.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");

    let stats = report.stats;
    let resize = &stats.by_task["resize_image"];
    assert_eq!(
        (resize.succeeded, resize.long_polls, stats.long_polls),
        (2, 3, 3),
        "one per poll of 30 ms: {stats:?}"
    );
    assert!(resize.longest_poll_us >= 30_000, "{resize:?}");
    let fast = &stats.by_task["fast"];
    assert_eq!(
        (fast.succeeded, fast.long_polls, fast.longest_poll_us),
        (1, 0, 0)
    );

    let logs = captured.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("took over 10 ms"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per task name:\n{logs}");
    let warning = warnings[0];
    for part in ["task=resize_image", "poll=", "stalling", "spawn_blocking"] {
        assert!(warning.contains(part), "no {part:?} in: {warning}");
    }
}
