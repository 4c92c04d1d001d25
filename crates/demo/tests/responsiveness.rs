//! Background work never holds up a response: not the response it belongs
//! to, not the next request on the same connection, not the rest of the
//! service while blocking tasks sleep, not behind compression; and a client
//! that goes away does not cancel it.
//!
//! Timing bounds are wide (a task takes at least 1.5 s, a response must come
//! in under 1 s) because the CI machine may be loaded.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{raw_post, signup, Demo, RawHttp};
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

/// What "answered at once" means here: far below any task's delay.
const QUICK: Duration = Duration::from_millis(1000);

#[tokio::test]
async fn responses_do_not_wait_for_their_tasks_nor_hold_the_connection() {
    let demo = Demo::start(&["--email-delay-ms", "1500"]).await;
    // One connection, by hand, so both requests surely share it.
    let mut connection = RawHttp::connect(demo.addr()).await;

    let started = Instant::now();
    let first = signup("first@example.com").to_string();
    connection
        .send(&raw_post(demo.addr(), "/response/single", &[], &first))
        .await;
    let response = connection.response().await;
    let first_took = started.elapsed();
    assert_eq!(response.status, 201, "{response:?}");
    assert!(first_took < QUICK, "the first response took {first_took:?}");

    let second_started = Instant::now();
    let second = signup("second@example.com").to_string();
    connection
        .send(&raw_post(
            demo.addr(),
            "/response/list",
            &["Accept-Encoding: gzip"],
            &second,
        ))
        .await;
    let response = connection.response().await;
    let second_took = second_started.elapsed();
    assert_eq!(response.status, 201, "{response:?}");
    assert!(
        second_took < QUICK,
        "the next request on the connection took {second_took:?}"
    );
    assert!(
        demo.outbox().is_empty(),
        "an email was sent before the responses: the test proves nothing"
    );

    let emails = demo.wait_for_emails("Thank you for registering.", 2).await;
    let recipients: BTreeSet<_> = emails.iter().filter_map(|e| e.to.as_deref()).collect();
    assert_eq!(
        recipients,
        BTreeSet::from(["first@example.com", "second@example.com"])
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the emails did not take their delay"
    );
    connection.close().await;
}

#[tokio::test]
async fn blocking_tasks_do_not_stall_the_service() {
    let demo = Demo::start(&["--log-delay-ms", "3000"]).await;
    let users: Vec<String> = (0..20).map(|n| format!("user{n}@example.com")).collect();

    let mut requests = JoinSet::new();
    for user in &users {
        let (client, url, body) = (
            reqwest::Client::new(),
            demo.url("/response/list"),
            signup(user),
        );
        requests.spawn(async move { common::Reply::of(client.post(url).json(&body)).await });
    }
    while let Some(reply) = requests.join_next().await {
        reply
            .expect("a request task")
            .assert_created(json!({ "message": "Email sent" }));
    }
    // Every email is out, so every request's `write_in_file` is now asleep
    // on a thread, or about to be.
    demo.wait_for_emails("Thank you for registering.", 20).await;

    let health = demo.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(
        health.elapsed < QUICK,
        "GET /healthz took {:?} while blocking tasks slept",
        health.elapsed
    );
    assert!(
        demo.log().len() < 20,
        "the blocking tasks were over before /healthz was asked: the test proves nothing"
    );

    let lines = common::eventually("20 log lines", async || {
        let lines = demo.log();
        (lines.len() == 20).then_some(lines)
    })
    .await;
    let logged: BTreeSet<String> = lines.into_iter().filter_map(|line| line.to).collect();
    assert_eq!(logged, users.into_iter().collect());
}

#[tokio::test]
async fn compression_changes_nothing_for_background_work() {
    let demo = Demo::start(&["--email-delay-ms", "1500"]).await;
    // reqwest with its `gzip` feature asks for gzip and decodes it.
    let gzip = reqwest::Client::builder()
        .gzip(true)
        .pool_max_idle_per_host(1)
        .build()
        .expect("a client");

    for user in ["a@example.com", "b@example.com"] {
        let reply =
            common::Reply::of(gzip.post(demo.url("/response/list")).json(&signup(user))).await;
        reply.assert_created(json!({ "message": "Email sent" }));
        assert!(reply.elapsed < QUICK, "a response took {:?}", reply.elapsed);
    }
    assert!(
        demo.outbox().is_empty(),
        "an email came before the responses"
    );
    demo.wait_for_emails("Thank you for registering.", 2).await;
    common::eventually("both log lines", async || {
        (demo.log().len() == 2).then_some(())
    })
    .await;

    // The outbox is big enough to be compressed: it is, and it decodes.
    let raw = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("a client");
    let compressed = raw
        .get(demo.url("/outbox"))
        .header(ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("GET /outbox");
    assert_eq!(compressed.status(), StatusCode::OK);
    assert_eq!(
        compressed
            .headers()
            .get(CONTENT_ENCODING)
            .map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    let bytes = compressed.bytes().await.expect("a body");
    assert_eq!(bytes.get(..2), Some(&[0x1f, 0x8b][..]), "not gzip");

    let decoded = common::Reply::of(gzip.get(demo.url("/outbox"))).await;
    assert_eq!(decoded.status, StatusCode::OK);
    let listed: Vec<_> = decoded
        .json()
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(common::Email::from_value)
        .collect();
    assert_eq!(listed, demo.outbox());
}

/// The contract's promise holds from the moment the request is accepted
/// (its handler returned): a client that closes its connection right after
/// writing may be gone before the server read it, and hyper then drops the
/// request before any handler runs (and /stats counts nothing). So the test
/// waits for the request's tasks to be accepted, then goes away without
/// reading a byte of the response, while the tasks still wait for their
/// email delay.
#[tokio::test]
async fn a_client_that_goes_away_does_not_cancel_the_tasks() {
    let demo = Demo::start(&["--email-delay-ms", "1000"]).await;
    let mut connection = RawHttp::connect(demo.addr()).await;
    let body = signup("gone@example.com").to_string();
    connection
        .send(&raw_post(demo.addr(), "/response/list", &[], &body))
        .await;
    common::eventually("the request's two tasks accepted", async || {
        (demo.stats().await.accepted == 2).then_some(())
    })
    .await;
    connection.close().await;
    assert!(
        demo.outbox().is_empty(),
        "the email was out before the client left: the test proves nothing"
    );

    let emails = demo.wait_for_emails("Thank you for registering.", 1).await;
    assert_eq!(emails[0].to.as_deref(), Some("gone@example.com"));
    let line = common::eventually("the log line", async || demo.log().pop()).await;
    assert_eq!(line.to.as_deref(), Some("gone@example.com"));
}
