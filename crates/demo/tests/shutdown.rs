//! SIGTERM: the demo stops accepting connections, finishes the responses in
//! flight, runs every accepted task within the grace period, logs what ran
//! and what was cut off, and exits 0.

mod common;

use std::time::{Duration, Instant};

use common::{raw_post, signup, Demo, RawHttp, PATIENCE};
use serde_json::json;

#[tokio::test]
async fn sigterm_runs_every_accepted_task_then_exits_0() {
    let mut demo = Demo::start(&["--email-delay-ms", "2000"]).await;
    let requests = [
        ("/response/list", "list@example.com", "Email sent"),
        ("/response/single", "single@example.com", "Email sent"),
        ("/extractor", "extractor@example.com", "Email sent"),
        ("/handler/list", "handler@example.com", "Created"),
        ("/fail?mode=panic", "fail@example.com", "Created"),
    ];
    for (path, user, message) in requests {
        demo.post(path, &signup(user))
            .await
            .assert_created(json!({ "message": message }));
    }
    assert!(
        demo.outbox().is_empty(),
        "an email was out before SIGTERM: the test proves nothing"
    );

    demo.terminate();
    let status = demo.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());

    let sent = demo.sent_sorted();
    let to = |user: &str| Some(user.to_owned());
    assert_eq!(
        sent,
        [
            ("Account created".to_owned(), None),
            ("After failure".to_owned(), None),
            (
                "Thank you for registering.".to_owned(),
                to("list@example.com")
            ),
            (
                "Thank you for registering.".to_owned(),
                to("single@example.com")
            ),
            ("Welcome.".to_owned(), to("extractor@example.com")),
        ]
    );
    let mut logged_to: Vec<_> = demo.log().into_iter().map(|line| line.to).collect();
    logged_to.sort();
    assert_eq!(logged_to, [None, to("list@example.com")]);

    // What ran: 5 emails and 2 log lines succeeded, the `fail` task panicked.
    demo.wait_for_log_line(&["drained=true", "succeeded=7", "panicked=1"])
        .await;
    assert_eq!(
        demo.stdout().lines().count(),
        1,
        "stdout holds the `listening on` line only:\n{}",
        demo.stdout()
    );
}

#[tokio::test]
async fn sigterm_cuts_off_what_the_grace_period_cannot_wait_for() {
    let mut demo = Demo::start(&["--shutdown-grace-s", "1", "--email-delay-ms", "10000"]).await;
    for user in ["a@example.com", "b@example.com"] {
        demo.post("/response/single", &signup(user))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }

    let signalled = Instant::now();
    demo.terminate();
    let status = demo.exit_status(Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the grace period was over"
    );

    demo.wait_for_log_line(&["cut off", "send_email_notification"])
        .await;
    assert!(demo.outbox().is_empty(), "{:?}", demo.outbox());
}

/// A request whose body has not arrived when SIGTERM comes is finished, and
/// its tasks run; meanwhile new connections are refused.
///
/// `Expect: 100-continue` tells when the request is in: the server answers
/// `100 Continue` once the handler reads the body.
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_and_refuses_new_connections() {
    let mut demo = Demo::start(&[]).await;
    let mut connection = RawHttp::connect(demo.addr()).await;
    let body = signup("late@example.com").to_string();
    let request = raw_post(
        demo.addr(),
        "/response/list",
        &["Expect: 100-continue"],
        &body,
    );
    let head = &request[..request.len() - body.len()];
    connection.send(head).await;
    assert_eq!(connection.response().await.status, 100);

    demo.terminate();
    common::eventually("new connections to be refused", async || {
        tokio::net::TcpStream::connect(demo.addr()).await.err()
    })
    .await;
    assert!(
        demo.is_running(),
        "the demo exited with a request in flight"
    );

    connection.send(&body).await;
    let response = connection.response().await;
    assert_eq!(response.status, 201, "{response:?}");
    let json: serde_json::Value = serde_json::from_slice(&response.body).expect("a JSON body");
    assert_eq!(json, json!({ "message": "Email sent" }));

    let status = demo.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
    let emails = demo.emails_saying("Thank you for registering.");
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].to.as_deref(), Some("late@example.com"));
    let lines = demo.log();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].to.as_deref(), Some("late@example.com"));
}

#[tokio::test]
async fn limits_and_a_grace_period_of_any_size_neither_panic_nor_lose_work() {
    let mut demo = Demo::start(&[
        "--max-running",
        "2305843009213693952",
        "--max-pending",
        "18446744073709551615",
        "--shutdown-grace-s",
        "9223372036854775807",
        "--email-delay-ms",
        "500",
    ])
    .await;
    for n in 0..5 {
        demo.post("/response/single", &signup(&format!("big{n}@example.com")))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }
    demo.terminate();
    let status = demo.exit_status(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
    assert_eq!(demo.emails_saying("Thank you for registering.").len(), 5);
}

/// A full stderr (`2>/dev/full`) is no reason to die: log lines that cannot
/// be written are dropped, and SIGTERM still drains and exits 0.
#[tokio::test]
async fn sigterm_exits_0_when_stderr_cannot_be_written() {
    use std::io::{BufRead, BufReader};

    let scratch = common::Scratch::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let mut child = Demo::command()
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .current_dir(scratch.path())
        .stderr(full)
        .spawn()
        .expect("the demo starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .expect("the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("not the listening line: {line:?}"))
        .to_owned();

    // A failing task logs a warning, which cannot be written.
    let reply = reqwest::Client::new()
        .post(format!("http://{addr}/fail?mode=error"))
        .json(&signup("full@example.com"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(reply.status(), reqwest::StatusCode::CREATED);

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = common::eventually("the demo to exit", async || {
        child.try_wait().expect("try_wait")
    })
    .await;
    assert_eq!(status.code(), Some(0), "{status}");
}
