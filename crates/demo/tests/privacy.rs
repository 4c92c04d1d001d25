//! No response and nothing the demo writes (stdout, stderr at the most
//! verbose log level, its data files) ever contains a password: not for good
//! input, not for bad input, not for failing tasks.

mod common;

use common::{signup, Demo, Reply, PASSWORD, TASK_ROUTES};
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

    for path in TASK_ROUTES.into_iter().chain(["/fail?mode=panic"]) {
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

/// The store URL's password, given in `EPILOGUE_STORE`, is not shown by
/// `--help` (clap shows environment values unless told not to).
#[tokio::test]
async fn help_does_not_show_the_store_urls_password() {
    const SECRET: &str = "s3cret-store-pw";
    let scratch = common::Scratch::new();
    for args in [&["--help"][..], &["worker", "--help"][..]] {
        let mut command = Demo::command();
        command.args(args).env(
            "EPILOGUE_STORE",
            format!("postgres://app:{SECRET}@127.0.0.1:1/app"),
        );
        let exited = common::run_to_exit(command, &scratch).await;
        assert!(exited.status.success(), "{args:?}: {}", exited.stderr);
        assert!(exited.stdout.contains("--store"), "{}", exited.stdout);
        assert!(
            !exited.stdout.contains(SECRET) && !exited.stderr.contains(SECRET),
            "{args:?} shows the password:\n{}",
            exited.stdout
        );
    }
}

/// A store that cannot be reached is reported, at the most verbose log
/// level, without the password of its URL.
#[tokio::test]
async fn an_unreachable_stores_error_does_not_show_its_password() {
    const SECRET: &str = "s3cret-store-pw";
    let scratch = common::Scratch::new();
    let mut command = Demo::command();
    command
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .env("RUST_LOG", "trace")
        // Port 1: nothing listens there.
        .env(
            "EPILOGUE_STORE",
            format!("postgres://app:{SECRET}@127.0.0.1:1/app"),
        );
    let exited = common::run_to_exit(command, &scratch).await;
    assert_eq!(exited.status.code(), Some(1), "{}", exited.stderr);
    assert!(
        exited.stderr.contains("cannot open the durable task store"),
        "{}",
        exited.stderr
    );
    assert_no_password("stderr", &exited.stderr);
    assert!(!exited.stderr.contains(SECRET), "{}", exited.stderr);
    assert!(!exited.stdout.contains(SECRET), "{}", exited.stdout);
}
