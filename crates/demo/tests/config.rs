//! The command line: the `listening on` line, the data directory created if
//! missing, and every flag's environment variable doing what the flag does.

mod common;

use std::time::{Duration, Instant};

use common::{signup, Demo, Scratch};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn stdout_is_exactly_the_listening_line() {
    let demo = Demo::start(&[]).await;
    let port = demo.addr().port();
    assert_ne!(port, 0, "the real port, not the 0 asked for");
    assert_eq!(
        demo.stdout(),
        format!("listening on http://127.0.0.1:{port}\n")
    );
    assert_eq!(demo.get("/healthz").await.status, StatusCode::OK);
    assert!(
        demo.data_dir().is_dir(),
        "the data directory was not created"
    );
}

/// Starts the demo configured through the environment only, with its data
/// directory three levels below a directory that exists.
async fn start_from_env(vars: &[(&str, &str)]) -> Demo {
    let scratch = Scratch::new();
    let data_dir = scratch.path().join("not/there/yet");
    let mut command = Demo::command();
    command
        .env("EPILOGUE_ADDR", "127.0.0.1:0")
        .env("EPILOGUE_DATA_DIR", &data_dir)
        .envs(vars.iter().copied());
    Demo::spawn(command, scratch, data_dir).await
}

#[tokio::test]
async fn address_data_dir_and_delays_come_from_the_environment() {
    let demo = start_from_env(&[
        ("EPILOGUE_EMAIL_DELAY_MS", "1000"),
        ("EPILOGUE_LOG_DELAY_MS", "1000"),
    ])
    .await;
    let port = demo.addr().port();
    assert_ne!(port, 0);
    assert_eq!(
        demo.stdout(),
        format!("listening on http://127.0.0.1:{port}\n")
    );
    assert!(
        demo.data_dir().is_dir(),
        "the data directory was not created"
    );

    let started = Instant::now();
    demo.post("/response/list", &signup("env@example.com"))
        .await
        .assert_created(json!({ "message": "Email sent" }));
    let emails = demo.wait_for_emails("Thank you for registering.", 1).await;
    assert_eq!(emails[0].to.as_deref(), Some("env@example.com"));
    let emailed_after = started.elapsed();
    let line = common::eventually("the log line", async || demo.log().pop()).await;
    let logged_after = started.elapsed();
    assert_eq!(line.to.as_deref(), Some("env@example.com"));
    // Lower bounds only: a loaded machine makes everything later, not sooner.
    assert!(
        emailed_after >= Duration::from_millis(1000),
        "EPILOGUE_EMAIL_DELAY_MS ignored: the email took {emailed_after:?}"
    );
    assert!(
        logged_after >= Duration::from_millis(2000),
        "EPILOGUE_LOG_DELAY_MS ignored: the log line took {logged_after:?}"
    );
}

#[tokio::test]
async fn limits_and_grace_come_from_the_environment() {
    let mut demo = start_from_env(&[
        ("EPILOGUE_MAX_RUNNING", "1"),
        ("EPILOGUE_MAX_PENDING", "1"),
        ("EPILOGUE_EMAIL_DELAY_MS", "10000"),
        ("EPILOGUE_SHUTDOWN_GRACE_S", "1"),
    ])
    .await;
    let statuses = [
        demo.post("/response/single", &signup("a@example.com"))
            .await,
        demo.post("/response/single", &signup("b@example.com"))
            .await,
        demo.post("/response/single", &signup("c@example.com"))
            .await,
    ]
    .map(|reply| reply.status);
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::SERVICE_UNAVAILABLE
        ],
        "one running and one waiting, as EPILOGUE_MAX_RUNNING/PENDING say"
    );

    let signalled = Instant::now();
    demo.terminate();
    let status = demo.exit_status(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before EPILOGUE_SHUTDOWN_GRACE_S was over"
    );
}
