//! What `epilogue-demo` reports per task name, beyond the contract's
//! Promises (so `epilogue-demo-actix` does not run these): `by_task` in
//! `GET /stats` and the summary per task name on exit (Operations), and
//! that this shutdown report is exact (Self-protection).

mod common;

use std::time::{Duration, Instant};

use common::{signup, Demo, PATIENCE};
use serde_json::json;

#[tokio::test]
async fn stats_count_each_task_name_and_keep_its_last_failure() {
    let mut demo = Demo::start(&[]).await;
    for mode in ["error", "panic", "error"] {
        demo.post(&format!("/fail?mode={mode}"), &signup("ada@example.com"))
            .await
            .assert_created(json!({ "message": "Created" }));
    }
    let by_task = common::eventually("six tasks counted by name", async || {
        let stats: serde_json::Value = demo.get("/stats").await.json();
        let by_task = stats["by_task"].clone();
        let after = &by_task["epilogue_demo::tasks::send_email_notification"];
        (after["succeeded"] == 3).then_some(by_task)
    })
    .await;
    let failing = &by_task["epilogue_demo::tasks::fail"];
    assert_eq!(
        (failing["failed"].as_u64(), failing["panicked"].as_u64()),
        (Some(2), Some(1))
    );
    let last = &failing["last_error"];
    assert!(
        last["at"].as_u64().is_some_and(|ms| ms > 1_700_000_000_000),
        "{last}"
    );
    assert!(
        last["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{last}"
    );
    assert!(by_task["epilogue_demo::tasks::send_email_notification"]["last_error"].is_null());

    // On exit, one summary line per task name.
    demo.terminate();
    assert_eq!(demo.exit_status(common::PATIENCE).await.code(), Some(0));
    let stderr = demo.stderr();
    let summary = stderr
        .lines()
        .find(|line| line.contains("background tasks of this name") && line.contains("tasks::fail"))
        .unwrap_or_else(|| panic!("no summary for the failing task:\n{stderr}"));
    assert!(
        summary.contains("finished=3") && summary.contains("failed=3"),
        "{summary}"
    );
}

/// Promise: shutdown reports are exact. A plain `fn` task still running at
/// the deadline cannot be stopped; it is reported cut off, and the process
/// exits without waiting for it, so the work the report calls cut off is
/// never done.
#[tokio::test]
async fn blocking_tasks_reported_cut_off_do_not_finish_after_the_report() {
    const N: usize = 8;
    let mut demo = Demo::start(&["--shutdown-grace-s", "1", "--log-delay-ms", "5000"]).await;
    for i in 0..N {
        demo.post("/response/list", &signup(&format!("user{i}@example.com")))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }
    // Each group's email is sent before its `write_in_file` starts.
    common::eventually("every email out", async || {
        (demo.outbox().len() == N).then_some(())
    })
    .await;

    let signalled = Instant::now();
    demo.terminate();
    let status = demo.exit_status(PATIENCE).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
    let reported = demo
        .wait_for_log_line(&["write_in_file", "background tasks of this name"])
        .await;
    assert!(reported.contains(&format!("cut_off={N}")), "{reported}");
    assert!(
        took < Duration::from_secs(4),
        "exit took {took:?}: it waited for the cut-off tasks"
    );
    // The process is gone: nothing can write any more.
    assert_eq!(demo.log(), [], "cut-off tasks wrote their lines");
}
