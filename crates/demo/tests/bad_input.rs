//! Bad input on every POST route: a 4xx with a JSON error body, and no task
//! of that request runs.
//!
//! Each test ends with a good request: once its tasks have run and nothing
//! else runs or waits (`GET /stats`), any task of the bad requests before it
//! would have run too.

mod common;

use common::{signup, Demo, PASSWORD};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::json;

/// A POST route and the tasks a good request to it runs.
struct Route {
    path: &'static str,
    /// The `message` of its 201.
    created: &'static str,
    /// The email it sends.
    message: &'static str,
    /// Whether the email goes to the user (else to nobody).
    to_user: bool,
    /// Whether it then writes a log line.
    logs: bool,
}

const BAD: &str = "bad@example.com";
const GOOD: &str = "good@example.com";

/// Sends every kind of bad input to `route`, then a good request, and checks
/// that only the good one's tasks ran.
async fn rejects_bad_input(route: Route) {
    let demo = Demo::start(&[]).await;
    let url = demo.url(route.path);
    let client = reqwest::Client::new();
    let json_body = |body: &str| {
        client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_owned())
    };
    let good_body = signup(BAD).to_string();
    let bad_requests = [
        ("not JSON", json_body("email=bad@example.com")),
        (
            "truncated JSON",
            json_body(&good_body[..good_body.len() - 1]),
        ),
        ("not an object", json_body(r#"["bad@example.com"]"#)),
        (
            "missing email",
            json_body(&json!({ "password": PASSWORD }).to_string()),
        ),
        (
            "missing password",
            json_body(&json!({ "email": BAD }).to_string()),
        ),
        (
            "email of the wrong type",
            json_body(&json!({ "email": 42, "password": PASSWORD }).to_string()),
        ),
        (
            "password of the wrong type",
            json_body(&json!({ "email": BAD, "password": 42 }).to_string()),
        ),
        ("no Content-Type", client.post(&url).body(good_body.clone())),
        (
            "Content-Type text/plain",
            client
                .post(&url)
                .header(CONTENT_TYPE, "text/plain")
                .body(good_body.clone()),
        ),
    ];
    for (what, request) in bad_requests {
        let reply = common::Reply::of(request).await;
        assert!(
            reply.status.is_client_error(),
            "{what} on {}: {reply:?}",
            route.path
        );
        reply.assert_client_error();
    }

    demo.post(route.path, &signup(GOOD))
        .await
        .assert_created(json!({ "message": route.created }));
    demo.wait_for_emails(route.message, 1).await;
    if route.logs {
        common::eventually("the good request's log line", async || {
            (!demo.log().is_empty()).then_some(())
        })
        .await;
    }
    demo.idle().await;

    let expected_to = route.to_user.then(|| GOOD.to_owned());
    let expected_log = if route.logs {
        vec![expected_to.clone()]
    } else {
        Vec::new()
    };
    let recipients: Vec<_> = demo.outbox().into_iter().map(|e| e.to).collect();
    assert_eq!(recipients, [expected_to], "{}", route.path);
    let logged: Vec<_> = demo.log().into_iter().map(|line| line.to).collect();
    assert_eq!(logged, expected_log, "{}", route.path);
}

#[tokio::test]
async fn handler_single_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/handler/single",
        created: "Created",
        message: "Account created",
        to_user: false,
        logs: false,
    })
    .await;
}

#[tokio::test]
async fn handler_list_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/handler/list",
        created: "Created",
        message: "Account created",
        to_user: false,
        logs: true,
    })
    .await;
}

#[tokio::test]
async fn response_single_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/response/single",
        created: "Email sent",
        message: "Thank you for registering.",
        to_user: true,
        logs: false,
    })
    .await;
}

#[tokio::test]
async fn response_list_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/response/list",
        created: "Email sent",
        message: "Thank you for registering.",
        to_user: true,
        logs: true,
    })
    .await;
}

#[tokio::test]
async fn response_add_task_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/response/add-task",
        created: "Email sent",
        message: "Thank you for registering.",
        to_user: true,
        logs: true,
    })
    .await;
}

#[tokio::test]
async fn extractor_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/extractor",
        created: "Email sent",
        message: "Welcome.",
        to_user: true,
        logs: false,
    })
    .await;
}

#[tokio::test]
async fn fail_rejects_bad_input() {
    rejects_bad_input(Route {
        path: "/fail?mode=error",
        created: "Created",
        message: "After failure",
        to_user: false,
        logs: false,
    })
    .await;
}

#[tokio::test]
async fn fail_rejects_an_unknown_or_missing_mode() {
    let demo = Demo::start(&[]).await;
    for path in ["/fail?mode=explode", "/fail", "/fail?mode="] {
        let reply = demo.post(path, &signup(BAD)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {reply:?}");
        reply.assert_client_error();
    }

    demo.post("/fail?mode=error", &signup(GOOD))
        .await
        .assert_created(json!({ "message": "Created" }));
    demo.wait_for_emails("After failure", 1).await;
    let stats = demo.idle().await;
    assert_eq!(demo.outbox().len(), 1, "{:?}", demo.outbox());
    assert_eq!(stats.failed, 1, "only the good request's task failed");
}
