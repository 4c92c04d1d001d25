//! `GET /dashboard` in a real headless Chromium: the page loads without a
//! console error, shows what `GET /stats` reports, and follows it when
//! requests come in. Chromium is driven by its command line alone
//! (`--dump-dom`, `--screenshot`), each run bounded in time and killed
//! with its whole process group after.
//!
//! Chromium is installed with apt-get when `/usr/bin/chromium` is missing
//! and the test runs as root (as CI does); otherwise the test fails saying
//! how to install it. `EPILOGUE_DASHBOARD_SCREENSHOT=PATH` keeps the
//! screenshot the test takes (that is how `docs/dashboard.png` is made).

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, eventually_within, signup, Demo, Scratch};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one run of Chromium may take before it is killed.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);

const EMAIL: &str = "epilogue_demo::tasks::send_email_notification";
const LOG: &str = "epilogue_demo::tasks::write_in_file";
const FAIL: &str = "epilogue_demo::tasks::fail";
const FAIL_ERROR: &str = "the mail server refused the message (simulated)";

/// `/usr/bin/chromium`, installed first if it is missing.
fn chromium() -> &'static Path {
    let path = Path::new(CHROMIUM);
    common::apt::ensure("chromium", "the dashboard test", || path.exists());
    path
}

/// A Chromium process in a process group of its own: killed, with every
/// process it started, on drop.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let group = Pid::from_raw(i32::try_from(self.0.id()).expect("a pid fits in i32"));
        // An error means the group is gone already.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// What one run of Chromium printed.
struct Run {
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium on `url` with `extra` flags (in a fresh profile
/// under `scratch`), for at most [`CHROMIUM_LIMIT`].
async fn headless(scratch: &Scratch, name: &str, url: &str, extra: &[&str]) -> Run {
    let profile = scratch.path().join(format!("profile-{name}"));
    let stdout_path = scratch.path().join(format!("{name}.stdout"));
    let stderr_path = scratch.path().join(format!("{name}.stderr"));
    let mut command = Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        // Files, not pipes: nothing to drain while it runs.
        .stdout(fs::File::create(&stdout_path).expect("a file for Chromium's stdout"))
        .stderr(fs::File::create(&stderr_path).expect("a file for Chromium's stderr"))
        .process_group(0);
    let mut browser = Browser(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}")),
    );
    let status = eventually_within(
        CHROMIUM_LIMIT,
        &format!("Chromium ({name}) to exit"),
        async || browser.0.try_wait().expect("try_wait"),
    )
    .await;
    drop(browser);
    let run = Run {
        stdout: fs::read_to_string(&stdout_path).expect("Chromium's stdout"),
        stderr: fs::read_to_string(&stderr_path).expect("Chromium's stderr"),
    };
    assert!(
        status.success(),
        "Chromium ({name}) exited with {status}; stderr:\n{}",
        run.stderr
    );
    run
}

/// The page after `budget_ms` of (virtual) time: enough for a few polls.
async fn dump_dom(demo: &Demo, scratch: &Scratch, name: &str, budget_ms: u32) -> String {
    let budget = format!("--virtual-time-budget={budget_ms}");
    let run = headless(
        scratch,
        name,
        &demo.url("/dashboard"),
        &[&budget, "--dump-dom"],
    )
    .await;
    assert_no_console_output(&run.stderr);
    assert!(
        run.stdout.contains("id=\"tasks\""),
        "not the dashboard: {}",
        run.stdout
    );
    run.stdout
}

/// The page logs nothing: any console line (Chromium logs them all as
/// `INFO:CONSOLE`, whatever their level) is an error, an uncaught
/// exception, or a resource that failed to load.
fn assert_no_console_output(stderr: &str) {
    let console: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains(":CONSOLE") || line.contains("Uncaught"))
        .collect();
    assert!(
        console.is_empty(),
        "console output:\n{}",
        console.join("\n")
    );
}

/// The text of the element whose opening tag holds `attribute` (e.g.
/// `id="accepted"`), in `html` as Chromium serialises it.
fn text_of<'a>(html: &'a str, attribute: &str) -> &'a str {
    let at = html
        .find(attribute)
        .unwrap_or_else(|| panic!("no element with {attribute} in:\n{html}"));
    let start = at + html[at..].find('>').expect("the end of the tag") + 1;
    let end = start + html[start..].find('<').expect("the next tag");
    &html[start..end]
}

/// A number of the page: digits with thousands separators.
fn number(text: &str) -> u64 {
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("not a number ({e}): {text:?}"))
}

/// The top-level number with this `id`.
fn shown(dom: &str, id: &str) -> u64 {
    number(text_of(dom, &format!("id=\"{id}\"")))
}

/// The row of the "by task name" table for `task`.
fn task_row<'a>(dom: &'a str, task: &str) -> &'a str {
    let table = &dom[dom.find("id=\"tasks\"").expect("the tasks table")..];
    let table = &table[..table.find("</tbody>").expect("the end of the tasks table")];
    let row = &table[table
        .find(&format!("data-task=\"{task}\""))
        .unwrap_or_else(|| panic!("no row for {task} in:\n{table}"))..];
    &row[..row.find("</tr>").expect("the end of the row")]
}

/// A count of `task` in the table.
fn shown_for(dom: &str, task: &str, field: &str) -> u64 {
    number(text_of(
        task_row(dom, task),
        &format!("data-field=\"{field}\""),
    ))
}

/// The opening tag of the element with this `id`.
fn tag<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = dom[..at].rfind('<').expect("the start of the tag");
    &dom[start..at + dom[at..].find('>').expect("the end of the tag")]
}

/// `/stats`, whole.
async fn stats_json(demo: &Demo) -> Value {
    let reply = demo.get("/stats").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.json()
}

/// Checks every number the page shows against `/stats`.
fn assert_shows(dom: &str, stats: &Value) {
    for field in [
        "accepted",
        "refused",
        "abandoned",
        "unadmitted",
        "succeeded",
        "failed",
        "panicked",
        "timed_out",
        "skipped",
        "cut_off",
        "retried",
        "running",
        "pending",
        "groups_running",
        "groups_admitted",
        "blocking_in_use",
    ] {
        assert_eq!(
            Some(shown(dom, field)),
            stats[field].as_u64(),
            "{field}: the page and /stats differ"
        );
    }
    let limits = &stats["limits"];
    for field in ["max_running", "max_blocking"] {
        assert_eq!(Some(shown(dom, field)), limits[field].as_u64(), "{field}");
    }
    assert_eq!(
        Some(shown(dom, "admit_limit")),
        Some(limits["max_running"].as_u64().unwrap() + limits["max_pending"].as_u64().unwrap()),
        "max_running + max_pending"
    );
    let by_task = stats["by_task"].as_object().expect("by_task");
    for (task, counts) in by_task {
        for field in ["succeeded", "failed", "panicked", "timed_out", "cut_off"] {
            assert_eq!(
                Some(shown_for(dom, task, field)),
                counts[field].as_u64(),
                "{task} {field}"
            );
        }
    }
    assert!(
        tag(dom, "status").contains("live"),
        "{}",
        tag(dom, "status")
    );
    assert!(
        !tag(dom, "banner").contains("shown"),
        "{}",
        tag(dom, "banner")
    );
}

/// Waits until the runner is idle with `accepted` tasks, and returns `/stats`.
async fn settled(demo: &Demo, accepted: u64) -> Value {
    eventually(&format!("{accepted} tasks accepted and done"), async || {
        let stats = stats_json(demo).await;
        (stats["accepted"] == json!(accepted)
            && stats["running"] == json!(0)
            && stats["pending"] == json!(0))
        .then_some(stats)
    })
    .await
}

#[tokio::test]
async fn stats_carry_the_runners_limits_next_to_the_counters() {
    let demo = Demo::start(&["--max-running", "3", "--max-pending", "5"]).await;
    let stats = stats_json(&demo).await;
    assert_eq!(
        stats["limits"],
        json!({ "max_running": 3, "max_pending": 5, "max_blocking": 64 })
    );
    // Every counter is still at the top level.
    demo.stats().await;
    assert!(stats["by_task"].is_object(), "{stats}");
    assert!(stats["groups_admitted"].is_u64(), "{stats}");
}

#[tokio::test]
async fn the_dashboard_shows_what_the_runner_reports_and_follows_it() {
    let started = Instant::now();
    let scratch = Scratch::new();
    let demo = Demo::start(&["--max-running", "7", "--max-pending", "11"]).await;

    let page = demo.get("/dashboard").await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{page:?}"
    );
    // Self-contained: nothing to fetch but /stats.
    for outside in ["<script src", "<link", "@import", "url(", "https://"] {
        assert!(!page.body.contains(outside), "the page loads {outside}");
    }

    for n in 0..3 {
        demo.post("/response/single", &signup(&format!("d{n}@example.com")))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }
    let before_stats = settled(&demo, 3).await;
    let before = dump_dom(&demo, &scratch, "before", 3000).await;
    assert_shows(&before, &before_stats);
    assert_eq!(shown(&before, "accepted"), 3);
    assert_eq!(shown_for(&before, EMAIL, "succeeded"), 3);
    assert_eq!(shown(&before, "max_running"), 7);
    assert_eq!(shown(&before, "admit_limit"), 18);
    // At least one poll a second: the first at once, then every second.
    assert!(shown(&before, "polls") >= 3, "{}", shown(&before, "polls"));
    assert!(before.contains("No failure so far."));

    for n in 0..2 {
        demo.post("/response/list", &signup(&format!("l{n}@example.com")))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }
    demo.post("/fail?mode=error", &signup("f@example.com"))
        .await
        .assert_created(json!({ "message": "Created" }));
    let after_stats = settled(&demo, 9).await;
    let after = dump_dom(&demo, &scratch, "after", 3000).await;
    assert_shows(&after, &after_stats);
    assert_eq!(shown(&after, "accepted"), 9);
    assert_eq!(shown(&after, "failed"), 1);
    assert_eq!(shown_for(&after, EMAIL, "succeeded"), 6);
    assert_eq!(shown_for(&after, LOG, "succeeded"), 2);
    assert_eq!(shown_for(&after, FAIL, "failed"), 1);
    let failures = &after[after.find("id=\"failures\"").expect("the failures table")..];
    assert_eq!(
        text_of(failures, "data-field=\"task\""),
        FAIL,
        "the last failure's task"
    );
    assert_eq!(
        text_of(failures, "data-field=\"error\""),
        FAIL_ERROR,
        "the last failure's error"
    );
    assert_ne!(before, after);

    // The durable queue, read from the store.
    for n in 0..2 {
        let created = demo
            .post("/durable/register", &signup(&format!("q{n}@example.com")))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    }
    demo.post("/durable/fail?times=100", &signup("dead@example.com"))
        .await;
    let durable = eventually("the durable tasks to settle", async || {
        let reply = demo.get("/durable/stats").await;
        let stats = reply.json();
        (stats["succeeded"] == json!(2)
            && stats["queued"] == json!(0)
            && stats["running"] == json!(0))
        .then_some(stats)
    })
    .await;
    let queue = dump_dom(&demo, &scratch, "durable", 3000).await;
    for field in ["queued", "running", "retrying", "dead", "succeeded"] {
        let shown = shown(&queue, &format!("durable_{field}"));
        // The failing task moves from retrying to queued (River makes a
        // due retry available) to running while the page polls; the others
        // are settled.
        if matches!(field, "retrying" | "queued" | "running") {
            assert!(shown <= 1, "durable.{field}: {shown}");
        } else {
            assert_eq!(Some(shown), durable[field].as_u64(), "durable.{field}");
        }
    }
    assert_eq!(shown(&queue, "durable_succeeded"), 2);

    // A screenshot, with requests coming in while the page polls.
    let traffic = tokio::spawn({
        let (list, fail) = (demo.url("/response/list"), demo.url("/fail?mode=error"));
        async move {
            let client = reqwest::Client::new();
            for n in 0..40 {
                let url = if n % 8 == 7 { &fail } else { &list };
                let _ = client
                    .post(url)
                    .json(&signup(&format!("s{n}@example.com")))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let png = scratch.path().join("dashboard.png");
    let shot = format!("--screenshot={}", png.display());
    let run = headless(
        &scratch,
        "screenshot",
        &demo.url("/dashboard"),
        &[
            "--window-size=1280,900",
            "--virtual-time-budget=20000",
            &shot,
        ],
    )
    .await;
    traffic.abort();
    assert_no_console_output(&run.stderr);
    let bytes = fs::read(&png).expect("the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if let Some(keep) = std::env::var_os("EPILOGUE_DASHBOARD_SCREENSHOT") {
        let keep = PathBuf::from(keep);
        fs::copy(&png, &keep)
            .unwrap_or_else(|e| panic!("cannot copy the screenshot to {}: {e}", keep.display()));
    }
    eprintln!("dashboard test: {:?}", started.elapsed());
}
