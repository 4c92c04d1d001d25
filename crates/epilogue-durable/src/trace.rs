//! The W3C trace context (`traceparent`) carried from the request that
//! stores a task to each run of that task, on whichever process runs it.
//!
//! Without the `opentelemetry` feature the context is the request's
//! `traceparent` header, stored with the task and recorded on each run's
//! span as a field. With it, the context is the current span's own (the
//! request's span, when an OpenTelemetry layer traces the service), and
//! each run's span is **linked** to it: OpenTelemetry's form of
//! follows-from, which a trace viewer shows as "request → task, 2 s later,
//! on worker 3". A link, not a parent: the request ended long before.

use http::{HeaderMap, HeaderName};

/// The key of a task's trace context in its River metadata.
pub(crate) const METADATA_KEY: &str = "epilogue:traceparent";

/// The trace context stored with a task, if any. River's lookup parses
/// every field of the metadata into a map (about 1,300 instructions a task,
/// bench/README.md): a task stored without one is told by a scan.
pub(crate) fn stored(metadata: &riverqueue::JobMetadata) -> Option<String> {
    if !metadata.as_raw().get().contains(METADATA_KEY) {
        return None;
    }
    metadata.get::<String>(METADATA_KEY).ok().flatten()
}

/// A name given as a `&str` is parsed at every lookup.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The request's `traceparent`, if it has a well-formed one.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?;
    parse(value).is_some().then(|| value.to_owned())
}

/// The four fields of a well-formed `traceparent`
/// (`<2 hex>-<32 hex>-<16 hex>-<2 hex>`).
fn parse(value: &str) -> Option<[&str; 4]> {
    let mut fields = value.split('-');
    let parsed = [(); 4].map(|()| fields.next().unwrap_or_default());
    let well_formed = fields.next().is_none()
        && [2, 32, 16, 2].iter().zip(&parsed).all(|(len, field)| {
            field.len() == *len && field.bytes().all(|b| b.is_ascii_hexdigit())
        });
    well_formed.then_some(parsed)
}

/// The current span's trace context, when it is part of an OpenTelemetry
/// trace.
#[cfg(feature = "opentelemetry")]
pub(crate) fn current() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    span.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    })
}

/// Without OpenTelemetry, spans carry no trace context.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn current() -> Option<String> {
    None
}

/// Links `span` (a run of a task) to the span that stored the task.
#[cfg(feature = "opentelemetry")]
pub(crate) fn link(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some([_, trace_id, span_id, flags]) = parse(traceparent) else {
        return;
    };
    let (Ok(trace_id), Ok(span_id), Ok(flags)) = (
        TraceId::from_hex(trace_id),
        SpanId::from_hex(span_id),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let stored = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    if stored.is_valid() {
        span.add_link(stored);
    }
}

/// Without OpenTelemetry, the `traceparent` field is the link.
#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn link(_: &tracing::Span, _: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_traceparent_is_taken() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", good.parse().unwrap());
        assert_eq!(from_headers(&headers).as_deref(), Some(good));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        ] {
            headers.insert("traceparent", bad.parse().unwrap());
            assert_eq!(from_headers(&headers), None, "{bad}");
        }
    }
}
