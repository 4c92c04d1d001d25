//! What a hostile client, a full disk, logrotate or an overload cannot do to
//! the demo: bound input, data files that keep one whole record a line and
//! follow their path, a log that grows with what happened rather than with
//! the load, start-up errors that name the file, once.
//!
//! (A record cut short by a full disk is tested in `src/tasks.rs`, with a
//! fake disk.)

mod common;

use std::fs;

use common::{signup, Demo, Scratch, FULL_AFTER_TWO, PASSWORD};
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::json;

/// A string that no response may quote back.
const MARK: &str = "MARK-of-the-client";

/// `{"email": email, "password": ...}` on `path`.
async fn post_email(demo: &Demo, path: &str, email: &str) -> common::Reply {
    demo.post(path, &signup(email)).await
}

#[tokio::test]
async fn an_email_too_long_or_with_control_characters_is_refused_without_echo() {
    let demo = Demo::start(&[]).await;
    let domain = "@example.com";
    // 255 bytes: one too many.
    let too_long = format!(
        "{MARK}{}{domain}",
        "x".repeat(255 - MARK.len() - domain.len())
    );
    assert_eq!(too_long.len(), 255);
    let mut bad = vec![too_long];
    for control in ['\n', '\r', '\0', '\u{7f}', '\u{1b}', '\u{85}', '\t'] {
        bad.push(format!(
            "{MARK}{control}Notification sent @ 2020-01-01 00:00:00 to: forged{domain}"
        ));
    }

    for path in common::task_routes() {
        for email in &bad {
            let reply = post_email(&demo, path, email).await;
            assert_eq!(
                reply.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} {email:?}: {reply:?}"
            );
            reply.assert_client_error();
            assert!(
                !reply.body.contains(MARK) && !reply.body.contains("forged"),
                "the error quotes the email back: {reply:?}"
            );
        }
    }

    // 254 bytes is an email.
    let longest = format!("{}{domain}", "y".repeat(254 - domain.len()));
    assert_eq!(longest.len(), 254);
    post_email(&demo, "/response/list", &longest)
        .await
        .assert_created(json!({ "message": "Email sent" }));
    demo.wait_for_emails("Thank you for registering.", 1).await;
    common::eventually("the log line", async || {
        (!demo.log().is_empty()).then_some(())
    })
    .await;
    demo.idle().await;
    let recipients: Vec<_> = demo.outbox().into_iter().map(|e| e.to).collect();
    assert_eq!(recipients, [Some(longest.clone())], "only the good email");
    let logged: Vec<_> = demo.log().into_iter().map(|l| l.to).collect();
    assert_eq!(logged, [Some(longest)]);
    let listed = demo.get("/outbox").await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_with_413() {
    let demo = Demo::start(&[]).await;
    let client = reqwest::Client::new();
    // An email of 100 KiB: axum's default limit (2 MiB) would read it whole.
    let huge =
        json!({ "email": format!("{MARK}{}", "z".repeat(100 * 1024)), "password": PASSWORD });
    for path in ["/response/single", "/handler/list", "/extractor"] {
        let reply = common::Reply::of(
            client
                .post(demo.url(path))
                .header(CONTENT_TYPE, "application/json")
                .body(huge.to_string()),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{path}: {reply:?}"
        );
        reply.assert_client_error();
        assert!(!reply.body.contains(MARK), "{reply:?}");
    }
    // A sign-up well under the limit still goes through.
    post_email(&demo, "/response/single", "ada@example.com")
        .await
        .assert_created(json!({ "message": "Email sent" }));
    demo.wait_for_emails("Thank you for registering.", 1).await;
    demo.idle().await;
    assert_eq!(demo.outbox().len(), 1);
}

#[tokio::test]
async fn log_txt_escapes_what_is_not_printable() {
    let demo = Demo::start(&[]).await;
    // Valid emails (no control character) with characters that would change
    // how the line reads: a line separator, a right-to-left override, a
    // zero-width space, and a backslash that could fake an escape.
    let email = "ada\u{2028}Notification sent\u{202e}x\u{200b}\\u{a}@example.com";
    post_email(&demo, "/response/list", email)
        .await
        .assert_created(json!({ "message": "Email sent" }));
    common::eventually("the log line", async || {
        (!demo.log().is_empty()).then_some(())
    })
    .await;
    demo.idle().await;

    let text = fs::read_to_string(demo.data_dir().join("log.txt")).expect("log.txt as text");
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(
        text.chars().all(|c| c == '\n' || (' '..='~').contains(&c)),
        "log.txt holds a character it should have escaped: {text:?}"
    );
    let logged = demo.log().remove(0).to.expect("the email");
    assert_eq!(
        logged,
        "ada\\u{2028}Notification sent\\u{202e}x\\u{200b}\\\\u{a}@example.com"
    );
    // outbox.jsonl has it as it came (JSON escapes what must be).
    assert_eq!(demo.outbox()[0].to.as_deref(), Some(email));
}

#[tokio::test]
async fn rotated_or_deleted_files_are_opened_again() {
    let demo = Demo::start(&[]).await;
    let outbox = demo.data_dir().join("outbox.jsonl");
    let log = demo.data_dir().join("log.txt");

    post_email(&demo, "/response/list", "first@example.com")
        .await
        .assert_created(json!({ "message": "Email sent" }));
    demo.wait_for_emails("Thank you for registering.", 1).await;
    common::eventually("the first log line", async || {
        (!demo.log().is_empty()).then_some(())
    })
    .await;
    demo.idle().await;

    // logrotate: the outbox renamed away, the log deleted, then SIGHUP.
    let rotated = demo.data_dir().join("outbox.jsonl.1");
    fs::rename(&outbox, &rotated).expect("rename outbox.jsonl");
    fs::remove_file(&log).expect("delete log.txt");
    demo.hang_up();
    common::eventually("the SIGHUP to be taken", async || {
        demo.stderr().contains("SIGHUP").then_some(())
    })
    .await;

    post_email(&demo, "/response/list", "second@example.com")
        .await
        .assert_created(json!({ "message": "Email sent" }));
    let emails = demo.wait_for_emails("Thank you for registering.", 1).await;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0].to.as_deref(), Some("second@example.com"));
    let logged = common::eventually("a log line in the new log.txt", async || {
        let log = demo.log();
        (!log.is_empty()).then_some(log)
    })
    .await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].to.as_deref(), Some("second@example.com"));
    // The rotated file kept its record, and got no other.
    let old = fs::read_to_string(&rotated).expect("the rotated outbox");
    assert_eq!(old.lines().count(), 1, "{old:?}");
    assert!(old.contains("first@example.com"), "{old:?}");
    // GET /outbox still lists both.
    let listed = demo.get("/outbox").await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
}

#[tokio::test]
async fn refusals_under_overload_are_not_error_lines() {
    // tower-http's per-response line, to know when the log has caught up.
    let demo = Demo::start_logging("info,tower_http=debug", FULL_AFTER_TWO).await;
    for user in ["running@example.com", "waiting@example.com"] {
        post_email(&demo, "/response/single", user)
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }
    const REFUSALS: usize = 20;
    let task_routes = common::task_routes();
    for i in 0..REFUSALS {
        let path = task_routes[i % task_routes.len()];
        let reply = post_email(&demo, path, "refused@example.com").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    }
    assert_eq!(demo.stats().await.refused, REFUSALS as u64);

    // Lines are written before the response is sent: once the line of a
    // later request is in, those of the refusals are too.
    assert_eq!(demo.get("/healthz").await.status, StatusCode::OK);
    common::eventually("the log line of GET /healthz", async || {
        demo.stderr()
            .lines()
            .any(|line| line.contains("uri=/healthz") && line.contains("finished processing"))
            .then_some(())
    })
    .await;
    let stderr = demo.stderr();
    let refused_lines = stderr
        .lines()
        .filter(|line| line.contains("status=503"))
        .count();
    assert_eq!(refused_lines, REFUSALS, "the debug lines of the refusals");
    let errors: Vec<_> = stderr
        .lines()
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "ERROR lines:\n{}", errors.join("\n"));
}

#[tokio::test]
async fn a_data_file_that_cannot_be_opened_is_named_once() {
    for name in ["outbox.jsonl", "log.txt"] {
        let scratch = Scratch::new();
        let data_dir = scratch.path().join("data");
        fs::create_dir_all(data_dir.join(name)).expect("a directory where the file goes");
        let mut command = Demo::command();
        command
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir);
        let exited = common::run_to_exit(command, &scratch).await;

        assert!(!exited.status.success(), "{exited:?}");
        assert_eq!(exited.stdout, "", "no `listening on` line: {exited:?}");
        let path = data_dir.join(name).display().to_string();
        let naming: Vec<_> = exited
            .stderr
            .lines()
            .filter(|line| line.contains(&path))
            .collect();
        assert_eq!(naming.len(), 1, "said once, naming {path}: {exited:?}");
        assert!(
            naming[0].contains(&format!("cannot open {path}: ")),
            "{exited:?}"
        );
        assert_eq!(exited.stderr.matches(name).count(), 1, "{exited:?}");
    }
}

/// The raw lines of a data file: each must be whole (the file ends with a
/// line feed), and `parse` must accept each.
fn assert_whole_lines(path: &std::path::Path, parse: impl Fn(&str)) -> usize {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends with a fragment: {text:?}",
        path.display()
    );
    for line in text.lines() {
        parse(line);
    }
    text.lines().count()
}

#[tokio::test]
async fn a_record_that_does_not_fit_leaves_no_fragment() {
    // Files of at most 512 bytes: the first record of each file fits, the
    // second (about 300 bytes for an email) is cut short by the kernel.
    let scratch = Scratch::new();
    let data_dir = scratch.path().join("data");
    let mut command = Demo::command_with_file_size_limit(1);
    command
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        // No file can hold a SQLite database here: the durable store is
        // kept in memory, unused.
        .args([
            "--workers",
            "0",
            "--store",
            "sqlite://hardening?mode=memory&cache=shared",
        ]);
    let demo = Demo::spawn(command, scratch, data_dir).await;
    let outbox = demo.data_dir().join("outbox.jsonl");
    let log = demo.data_dir().join("log.txt");

    let user = |i: usize| format!("user{i}-{}@example.com", "w".repeat(180));
    const REQUESTS: usize = 4;
    for i in 0..REQUESTS {
        post_email(&demo, "/response/list", &user(i))
            .await
            .assert_created(json!({ "message": "Email sent" }));
        // One at a time, so that which records fit does not depend on the
        // order the tasks ran in.
        common::eventually("the request's tasks to end", async || {
            let stats = demo.stats().await;
            (stats.succeeded + stats.failed == 2 * (i as u64 + 1)).then_some(())
        })
        .await;
    }

    let emails = assert_whole_lines(&outbox, |line| {
        common::Email::parse(line);
    });
    let lines = assert_whole_lines(&log, |line| {
        common::LogLine::parse(line);
    });
    assert_eq!(emails, 1, "only the first email fits in 512 bytes");
    assert!((1..REQUESTS).contains(&lines), "{lines} log lines");
    assert_eq!(demo.outbox()[0].to, Some(user(0)));

    let stats = demo.stats().await;
    assert_eq!(
        stats.failed as usize,
        (REQUESTS - emails) + (REQUESTS - lines)
    );
    // GET /outbox lists only what the file holds.
    let listed = demo.get("/outbox").await.json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    // The failures name the file.
    let stderr = demo.stderr();
    assert!(
        stderr.contains(&format!("cannot write to {}", outbox.display())),
        "{stderr}"
    );
}
