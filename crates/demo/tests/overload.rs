//! Overload: past `--max-running` + `--max-pending` groups, task-bearing
//! routes answer 503 with `Retry-After` before their handler runs; the rest
//! of the service keeps answering; every request that got its 201 gets all
//! of its tasks, and no refused one gets any.

mod common;

use std::collections::BTreeSet;

use common::{signup, Demo, Reply, FULL_AFTER_TWO};
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

/// Asserts a refusal: 503, a `Retry-After` of whole seconds, a JSON error.
fn assert_refused(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    let retry_after: u64 = reply
        .header("retry-after")
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in seconds: {reply:?}"));
    assert!(retry_after >= 1, "{reply:?}");
    common::assert_json_content_type(reply.header("content-type"));
    assert!(reply.json()["error"].is_string(), "{reply:?}");
}

#[tokio::test]
async fn a_full_demo_refuses_task_routes_and_still_answers_the_rest() {
    let demo = Demo::start(FULL_AFTER_TWO).await;
    for user in ["running@example.com", "waiting@example.com"] {
        demo.post("/response/single", &signup(user))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }

    // Full now, for 2.5 s at least: every kind of task-bearing route is refused.
    let task_routes = common::task_routes();
    for &path in &task_routes {
        assert_refused(&demo.post(path, &signup("refused@example.com")).await);
    }
    // What carries no task is still served.
    for path in ["/healthz", "/stats", "/outbox"] {
        let reply = demo.get(path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
    }
    assert_eq!(demo.stats().await.refused, task_routes.len() as u64);

    demo.wait_for_emails("Thank you for registering.", 2).await;
    let stats = demo.idle().await;
    let recipients: BTreeSet<_> = demo.outbox().into_iter().map(|e| e.to).collect();
    assert_eq!(
        recipients,
        BTreeSet::from([
            Some("running@example.com".to_owned()),
            Some("waiting@example.com".to_owned())
        ]),
        "only the accepted requests' emails"
    );
    assert_eq!(demo.outbox().len(), 2);
    assert!(demo.log().is_empty());
    assert_eq!((stats.accepted, stats.succeeded), (2, 2));
}

/// The routes of the burst, and the email each accepted request sends
/// (to the user, or to nobody).
const BURST_ROUTES: [(&str, &str, bool); 3] = [
    ("/response/single", "Thank you for registering.", true),
    ("/handler/single", "Account created", false),
    ("/extractor", "Welcome.", true),
];

/// Fires `n` concurrent requests across [`BURST_ROUTES`]; returns the
/// emails the accepted ones must send, and how many were refused.
async fn burst(demo: &Demo, wave: usize, n: usize) -> (Vec<(String, Option<String>)>, usize) {
    let client = reqwest::Client::new();
    let mut requests = JoinSet::new();
    for i in 0..n {
        let (path, message, to_user) = BURST_ROUTES[i % BURST_ROUTES.len()];
        let user = format!("wave{wave}-user{i}@example.com");
        let request = client.post(demo.url(path)).json(&signup(&user));
        let email = (message.to_owned(), to_user.then_some(user));
        requests.spawn(async move { (email, Reply::of(request).await) });
    }
    let (mut promised, mut refused) = (Vec::new(), 0);
    while let Some(done) = requests.join_next().await {
        let (email, reply) = done.expect("a request task");
        if reply.status == StatusCode::CREATED {
            promised.push(email);
        } else {
            assert_refused(&reply);
            refused += 1;
        }
    }
    (promised, refused)
}

#[tokio::test]
async fn under_bursts_every_accepted_request_gets_its_tasks() {
    let demo = Demo::start(&[
        "--max-running",
        "1",
        "--max-pending",
        "1",
        "--email-delay-ms",
        "400",
    ])
    .await;
    let (mut promised, mut refused) = (Vec::new(), 0);
    for wave in 0..4 {
        let sent_before = demo.outbox().len();
        let (accepted, wave_refused) = burst(&demo, wave, 12).await;
        assert!(wave_refused > 0, "wave {wave}: nothing was refused");
        promised.extend(accepted);
        refused += wave_refused;
        // The next wave once a group is done and has freed its place.
        common::eventually("a group to finish", async || {
            (demo.outbox().len() > sent_before).then_some(())
        })
        .await;
    }
    assert!(
        promised.len() >= 3,
        "the waves should have found free places: {promised:?}"
    );

    common::eventually("every promised email", async || {
        (demo.outbox().len() >= promised.len()).then_some(())
    })
    .await;
    // Nothing runs or waits any more: no refused request's email can come.
    let stats = demo.idle().await;
    let sent = demo.sent_sorted();
    promised.sort();
    assert_eq!(
        sent, promised,
        "the emails are those of the 201s, once each"
    );
    let accepted = promised.len() as u64;
    assert_eq!((stats.accepted, stats.succeeded), (accepted, accepted));
    assert_eq!(stats.refused, refused as u64);
}
