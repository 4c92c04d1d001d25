//! No response and nothing the demo writes (stdout, stderr at the most
//! verbose log level, its data files) ever contains a password: not for good
//! input, not for bad input, not for failing tasks.

mod common;

use common::{signup, Demo, Reply, PASSWORD};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::json;

/// Asserts that `what` does not contain the password.
fn assert_no_password(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} holds the password:\n{text}"
    );
}

fn assert_reply_keeps_it(reply: &Reply) {
    assert_no_password("a response body", &reply.body);
    for (name, value) in &reply.headers {
        assert_no_password(
            &format!("header {name}"),
            &String::from_utf8_lossy(value.as_bytes()),
        );
    }
}

#[tokio::test]
async fn the_password_never_comes_out() {
    let mut demo = Demo::start_logging("trace", &[]).await;
    let mut replies = Vec::new();

    for path in common::task_routes()
        .into_iter()
        .chain(["/fail?mode=panic"])
    {
        let reply = demo.post(path, &signup("ada@example.com")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{path}: {reply:?}");
        replies.push(reply);
    }

    let client = reqwest::Client::new();
    let good = signup("ada@example.com").to_string();
    let bad_bodies = [
        good[..good.len() - 1].to_owned(),
        format!(r#"{{"email": "ada@example.com", "password": {PASSWORD}}}"#),
        json!({ "password": PASSWORD }).to_string(),
        json!({ "email": 42, "password": PASSWORD }).to_string(),
        json!({ "email": "ada@example.com", "password": [PASSWORD] }).to_string(),
        json!({ "email": "ada@example.com", "password": { "value": PASSWORD } }).to_string(),
        json!([PASSWORD]).to_string(),
        json!(PASSWORD).to_string(),
    ];
    for path in ["/response/list", "/handler/list", "/extractor"] {
        for body in &bad_bodies {
            let request = client
                .post(demo.url(path))
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            let reply = Reply::of(request).await;
            reply.assert_client_error();
            replies.push(reply);
        }
        let untyped = Reply::of(client.post(demo.url(path)).body(good.clone())).await;
        untyped.assert_client_error();
        replies.push(untyped);
    }

    demo.wait_for_emails("After failure", 2).await;
    demo.idle().await;
    for path in ["/outbox", "/stats", "/healthz"] {
        replies.push(demo.get(path).await);
    }
    for reply in &replies {
        assert_reply_keeps_it(reply);
    }

    demo.terminate();
    let status = demo.exit_status(common::PATIENCE).await;
    assert!(status.success(), "{status}");
    let stderr = demo.stderr();
    assert!(
        stderr.contains("/response/list") && stderr.contains("tasks::fail"),
        "the trace log does not show the requests and tasks: the test proves nothing:\n{stderr}"
    );
    assert_no_password("stderr", &stderr);
    assert_no_password("stdout", &demo.stdout());
    for file in ["outbox.jsonl", "log.txt"] {
        let text = std::fs::read_to_string(demo.data_dir().join(file)).expect(file);
        assert!(!text.is_empty(), "{file} is empty: the test proves nothing");
        assert_no_password(file, &text);
    }
}
