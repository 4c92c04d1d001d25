//! With the `opentelemetry` feature, a task's run is linked to the span
//! that stored it: a trace shows the request, then the task.
//!
//! One test in this file: it installs the process's global subscriber.

mod common;

use common::{recv, reporting_task, shut_down, start, Db};
use epilogue::Runner;
use epilogue_durable::{Enqueue, TaskId};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::sync::mpsc::unbounded_channel;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

reporting_task!(Ping = "ping");

/// The span of the run of task `id`.
fn run_of(spans: &[SpanData], id: TaskId) -> &SpanData {
    let id = id.to_string();
    spans
        .iter()
        .find(|span| {
            span.name == "durable_task"
                && span
                    .attributes
                    .iter()
                    .any(|kv| kv.key.as_str() == "id" && kv.value.as_str() == id.as_str())
        })
        .unwrap_or_else(|| panic!("no durable_task span for task {id} in {spans:#?}"))
}

/// The contexts `span` is linked to.
fn links(span: &SpanData) -> Vec<&SpanContext> {
    span.links.iter().map(|link| &link.span_context).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_linked_to_the_span_that_stored_its_task() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let db = Db::new();
    let runner = Runner::new();
    let (ran, mut runs) = unbounded_channel();
    let store = start(&db, &runner, |b| b.register::<Ping>(ran)).await;

    // Stored inside a traced span: the run links to that span.
    let request = tracing::info_span!("request");
    let request_context = request.context().span().span_context().clone();
    assert!(request_context.is_valid());
    let traced = store
        .enqueue(&Ping {})
        .instrument(request.clone())
        .await
        .unwrap();
    drop(request);
    // Stored with a `traceparent` from elsewhere (another service's
    // header): the run links to that remote span.
    let remote = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let from_header = store
        .enqueue_with(&Ping {}, Enqueue::new().traceparent(remote))
        .await
        .unwrap()
        .id;

    let mut ids = [
        recv(&mut runs, "a run").await.0,
        recv(&mut runs, "a run").await.0,
    ];
    ids.sort();
    let mut expected = [traced, from_header];
    expected.sort();
    assert_eq!(ids, expected);
    shut_down(&runner).await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let linked = links(run_of(&spans, traced));
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0].trace_id(), request_context.trace_id());
    assert_eq!(linked[0].span_id(), request_context.span_id());
    // A link, not a parent: the run starts a trace of its own.
    assert_ne!(
        run_of(&spans, traced).span_context.trace_id(),
        request_context.trace_id()
    );

    let linked = links(run_of(&spans, from_header));
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(
        linked[0].trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(linked[0].span_id().to_string(), "00f067aa0ba902b7");
    assert!(linked[0].is_sampled());
}
