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
    demo.wait_for_log_line(&["tasks::fail", what]).await;
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
