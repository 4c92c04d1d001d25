//! Every route of the demo's README with good input: its status and body,
//! the tasks it runs, what they write, and in which order.

mod common;

use chrono::Timelike;
use common::{signup, Demo, Email, LogLine};
use reqwest::StatusCode;
use serde_json::json;

/// Long enough that a log line written without waiting for the email
/// before it would come first.
const EMAIL_DELAY: &[&str] = &["--email-delay-ms", "400"];

/// Waits for the one log line of a request whose email comes first, and
/// checks that by then the email had been sent: the tasks ran in order, one
/// after another. Returns both.
async fn email_then_log(demo: &Demo, message: &str) -> (Email, LogLine) {
    let line = common::eventually("the log line", async || demo.log().pop()).await;
    let emails = demo.emails_saying(message);
    assert_eq!(
        emails.len(),
        1,
        "the log line came before the email: {emails:?}"
    );
    let email = emails[0].clone();
    assert!(
        email.sent_at.naive_utc().with_nanosecond(0) <= Some(line.at),
        "the email was sent at {} after the log line at {}",
        email.sent_at,
        line.at
    );
    (email, line)
}

#[tokio::test]
async fn handler_single_sends_account_created() {
    let demo = Demo::start(EMAIL_DELAY).await;
    demo.post("/handler/single", &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Created" }));

    let emails = demo.wait_for_emails("Account created", 1).await;
    assert_eq!(emails[0].to, None);
    let stats = demo.idle().await;
    assert_eq!(demo.outbox().len(), 1);
    assert!(demo.log().is_empty());
    assert_eq!((stats.accepted, stats.succeeded), (1, 1));
}

#[tokio::test]
async fn handler_list_sends_then_logs_without_email() {
    let demo = Demo::start(EMAIL_DELAY).await;
    demo.post("/handler/list", &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Created" }));

    let (email, line) = email_then_log(&demo, "Account created").await;
    assert_eq!(email.to, None);
    assert_eq!(line.to, None);
    let stats = demo.idle().await;
    assert_eq!((demo.outbox().len(), demo.log().len()), (1, 1));
    assert_eq!((stats.accepted, stats.succeeded), (2, 2));
}

#[tokio::test]
async fn response_single_thanks_the_user() {
    let demo = Demo::start(EMAIL_DELAY).await;
    demo.post("/response/single", &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Email sent" }));

    let emails = demo.wait_for_emails("Thank you for registering.", 1).await;
    assert_eq!(emails[0].to.as_deref(), Some("ada@example.com"));
    demo.idle().await;
    assert_eq!(demo.outbox().len(), 1);
    assert!(demo.log().is_empty());
}

/// `/response/list` and `/response/add-task` promise the same two tasks.
async fn thanks_then_logs_the_user(path: &str) {
    let demo = Demo::start(EMAIL_DELAY).await;
    demo.post(path, &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Email sent" }));

    let (email, line) = email_then_log(&demo, "Thank you for registering.").await;
    assert_eq!(email.to.as_deref(), Some("ada@example.com"));
    assert_eq!(line.to.as_deref(), Some("ada@example.com"));
    demo.idle().await;
    assert_eq!((demo.outbox().len(), demo.log().len()), (1, 1));
}

#[tokio::test]
async fn response_list_thanks_then_logs_the_user() {
    thanks_then_logs_the_user("/response/list").await;
}

#[tokio::test]
async fn response_add_task_does_what_response_list_does() {
    thanks_then_logs_the_user("/response/add-task").await;
}

#[tokio::test]
async fn extractor_welcomes_the_user() {
    let demo = Demo::start(EMAIL_DELAY).await;
    demo.post("/extractor", &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Email sent" }));

    let emails = demo.wait_for_emails("Welcome.", 1).await;
    assert_eq!(emails[0].to.as_deref(), Some("ada@example.com"));
    demo.idle().await;
    assert_eq!(demo.outbox().len(), 1);
    assert!(demo.log().is_empty());
}

#[tokio::test]
async fn outbox_lists_the_emails_in_the_order_sent() {
    let demo = Demo::start(&[]).await;
    let empty = demo.get("/outbox").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json(), json!([]));

    // One at a time, so the order sent is the order of the requests.
    let users = ["a@example.com", "b@example.com", "c@example.com"];
    for (n, user) in users.iter().enumerate() {
        demo.post("/response/single", &signup(user))
            .await
            .assert_created(json!({ "message": "Email sent" }));
        demo.wait_for_emails("Thank you for registering.", n + 1)
            .await;
    }

    let reply = demo.get("/outbox").await;
    assert_eq!(reply.status, StatusCode::OK);
    common::assert_json_content_type(reply.header("content-type"));
    let listed: Vec<Email> = reply
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(Email::from_value)
        .collect();
    let recipients: Vec<Option<&str>> = listed.iter().map(|e| e.to.as_deref()).collect();
    assert_eq!(recipients, users.map(Some));
    assert!(listed.windows(2).all(|w| w[0].sent_at <= w[1].sent_at));
    assert_eq!(listed, demo.outbox(), "GET /outbox and outbox.jsonl differ");
}

#[tokio::test]
async fn stats_and_healthz_answer() {
    let demo = Demo::start(&[]).await;
    let health = demo.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK, "{health:?}");

    let before = demo.stats().await;
    assert_eq!(
        (
            before.accepted,
            before.running,
            before.pending,
            before.refused
        ),
        (0, 0, 0, 0)
    );
    demo.post("/response/list", &signup("ada@example.com"))
        .await
        .assert_created(json!({ "message": "Email sent" }));
    common::eventually("both tasks counted", async || {
        let stats = demo.stats().await;
        (stats.succeeded == 2).then_some(())
    })
    .await;
    let after = demo.idle().await;
    assert_eq!(after.accepted, 2);
    assert_eq!(
        (after.failed, after.panicked, after.timed_out, after.refused),
        (0, 0, 0, 0)
    );
    // GET routes carry no task.
    assert_eq!(demo.stats().await.accepted, 2);
}
