//! W3C Trace Context: a call that arrives with a `traceparent` (gRPC metadata or an HTTP
//! header; `tracestate` travels with it) continues the caller's trace, so that the spans
//! Keystone exports over OTLP sit under the caller's. Without the header, or with one that
//! does not parse, the call starts a trace of its own.
//!
//! Layer: adapter. Uses nothing of Keystone's; the gRPC and HTTP adapters call it on the span
//! of each request.

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Makes `span` a child of the span that `headers` name in `traceparent`, if they name one.
/// Without trace export (`log.otlp_endpoint` unset) there is nothing to continue: the span
/// is left as it is.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    // An error means that no OpenTelemetry layer records this span: nothing to join.
    let _ = span.set_parent(parent);
}
