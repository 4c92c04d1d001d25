//! `POST /fail`: a task that fails or panics is counted and logged, the next
//! task of its request still runs, and the service keeps serving.

mod common;

use common::{signup, Demo};
use reqwest::StatusCode;
use serde_json::json;

/// Sends `/fail?mode=<mode>` and returns the demo once the "After failure"
/// email is out and nothing runs any more.
async fn fail(mode: &str) -> (Demo, common::Stats) {
    let demo = Demo::start(&[]).await;
    demo.post(&format!("/fail?mode={mode}"), &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Created" }));

    let emails = demo.wait_for_emails("After failure", 1).await;
    assert_eq!(emails[0].to, None);
    let stats = demo.idle().await;
    assert_eq!(stats.accepted, 2, "{stats:?}");
    assert_eq!(stats.succeeded, 1, "the email: {stats:?}");
    (demo, stats)
}

/// Waits for a log line that names the failing task and says what happened.
async fn assert_logged(demo: &Demo, what: &str) {
    common::eventually(
        &format!("a log line about `fail` saying {what:?}"),
        async || {
            demo.stderr()
                .lines()
                .any(|line| line.contains("tasks::fail") && line.contains(what))
                .then_some(())
        },
    )
    .await;
}

/// The service still answers, and still runs tasks.
async fn keeps_serving(demo: &Demo) {
    assert_eq!(demo.get("/healthz").await.status, StatusCode::OK);
    demo.post("/response/single", &signup("next@example.com"))
        .await
        .assert_created(json!({ "message": "Email sent" }));
    let emails = demo.wait_for_emails("Thank you for registering.", 1).await;
    assert_eq!(emails[0].to.as_deref(), Some("next@example.com"));
}

#[tokio::test]
async fn an_error_is_counted_and_the_next_task_runs() {
    let (demo, stats) = fail("error").await;
    assert_eq!((stats.failed, stats.panicked), (1, 0), "{stats:?}");
    assert_logged(&demo, "the mail server refused the message (simulated)").await;
    keeps_serving(&demo).await;
}

#[tokio::test]
async fn a_panic_is_counted_and_the_next_task_runs() {
    let (demo, stats) = fail("panic").await;
    assert_eq!((stats.failed, stats.panicked), (0, 1), "{stats:?}");
    assert_logged(&demo, "a background task panicked (simulated)").await;
    keeps_serving(&demo).await;
}

#[tokio::test]
async fn many_failures_do_not_stop_the_service() {
    let demo = Demo::start(&[]).await;
    for mode in ["error", "panic"].repeat(5) {
        demo.post(&format!("/fail?mode={mode}"), &signup("ada@example.com"))
            .await
            .assert_created(json!({ "message": "Created" }));
    }
    demo.wait_for_emails("After failure", 10).await;
    let stats = demo.idle().await;
    assert_eq!((stats.failed, stats.panicked, stats.succeeded), (5, 5, 10));
    keeps_serving(&demo).await;
}

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
