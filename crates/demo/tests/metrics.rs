//! `GET /metrics`: Prometheus' text format, read with a real parser.

mod common;

use common::{signup, Demo};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

async fn scrape(demo: &Demo) -> Scrape {
    let reply = demo.get("/metrics").await;
    assert_eq!(reply.status, reqwest::StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{reply:?}"
    );
    let lines = reply.body.lines().map(|line| Ok(line.to_owned()));
    Scrape::parse(lines).expect("Prometheus text format")
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape.samples.iter().find(|sample| {
        sample.metric == name && labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
    })
}

#[tokio::test]
async fn metrics_count_tasks_by_name_and_outcome() {
    let demo = Demo::start(&[]).await;
    for n in 0..3 {
        demo.post("/response/single", &signup(&format!("m{n}@example.com")))
            .await
            .assert_created(json!({ "message": "Email sent" }));
    }
    demo.post("/fail?mode=error", &signup("f@example.com"))
        .await
        .assert_created(json!({ "message": "Created" }));

    let email = "epilogue_demo::tasks::send_email_notification";
    let scrape = common::eventually("four emails counted", async || {
        let scrape = scrape(&demo).await;
        let sent = find(
            &scrape,
            "epilogue_tasks_finished_total",
            &[("task", email), ("outcome", "succeeded")],
        )
        .map(|sample| sample.value.clone());
        matches!(sent, Some(Value::Counter(n)) if n == 4.0).then_some(scrape)
    })
    .await;

    let failed = find(
        &scrape,
        "epilogue_tasks_finished_total",
        &[
            ("task", "epilogue_demo::tasks::fail"),
            ("outcome", "failed"),
        ],
    )
    .expect("the failing task is counted");
    assert!(
        matches!(failed.value, Value::Counter(n) if n == 1.0),
        "{failed:?}"
    );
    let accepted = find(&scrape, "epilogue_tasks_accepted_total", &[]).unwrap();
    assert!(
        matches!(accepted.value, Value::Counter(n) if n == 5.0),
        "{accepted:?}"
    );
    for gauge in [
        "epilogue_tasks_running",
        "epilogue_groups_admitted",
        "epilogue_max_running",
    ] {
        let sample = find(&scrape, gauge, &[]).unwrap_or_else(|| panic!("no {gauge}"));
        assert!(matches!(sample.value, Value::Gauge(_)), "{sample:?}");
    }
    let max_running = find(&scrape, "epilogue_max_running", &[]).unwrap();
    assert!(
        matches!(max_running.value, Value::Gauge(n) if n == 4096.0),
        "{max_running:?}"
    );
    let run = find(&scrape, "epilogue_task_run_seconds", &[]).expect("the run histogram");
    match &run.value {
        Value::Histogram(buckets) => {
            let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
            assert_eq!(all, 5.0, "{buckets:?}");
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_show_the_durable_queue_by_state() {
    let demo = Demo::start(&["--workers", "0"]).await;
    for n in 0..3 {
        let created = demo
            .post("/durable/register", &signup(&format!("q{n}@example.com")))
            .await;
        assert_eq!(created.status, reqwest::StatusCode::CREATED, "{created:?}");
    }
    // No worker here: the three wait in the store.
    let scrape = scrape(&demo).await;
    let gauge = |state: &str| {
        let sample = find(&scrape, "epilogue_durable_tasks", &[("state", state)])
            .unwrap_or_else(|| panic!("no epilogue_durable_tasks{{state={state}}}"));
        match sample.value {
            Value::Gauge(n) => n,
            ref other => panic!("not a gauge: {other:?}"),
        }
    };
    assert_eq!(gauge("queued"), 3.0);
    for state in ["running", "retrying", "dead", "succeeded"] {
        assert_eq!(gauge(state), 0.0, "{state}");
    }
    let up = find(&scrape, "epilogue_durable_store_up", &[]).expect("the store's health");
    assert!(matches!(up.value, Value::Gauge(n) if n == 1.0), "{up:?}");
}
