//! Logs, and spans sent out of the process over OTLP.
//!
//! Every role logs through `tracing`. When `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, spans also go to that collector (OTLP over HTTP, protobuf), in
//! batches from a thread of their own: a slow or absent collector drops
//! spans, never requests. A W3C `traceparent` ties the spans of one write
//! together across processes: the request's, the append's, the relay's and
//! each consumer's.
//!
//! Spans are on targets of their own, so that `RUST_LOG` quieting a
//! crate's log lines keeps them exported: [`SPANS`] (a request, an append,
//! a step of the order process) at info, and [`EVENT_SPANS`] (`relay`,
//! `apply`, one per event) at debug, which the log filter leaves out by
//! default, so they cost nothing unless spans are exported.

pub mod w3c;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::prelude::*;

/// The target of the spans of a request, an append, a process step.
pub const SPANS: &str = "storekeeper::span";
/// The target of the spans opened once per event.
pub const EVENT_SPANS: &str = "storekeeper::event";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0} is not supported: storekeeper exports OTLP over HTTP (http/protobuf)")]
    Protocol(String),
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
}

/// Set once spans are exported: without it, `follow` and `traceparent`
/// (called per request and per event) return at once.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Flushes the spans still queued when dropped (at the end of `main`),
/// waiting at most [`FLUSH_WITHIN`] for the collector.
#[must_use = "spans queued when this is dropped are flushed; drop it last"]
pub struct Guard(Option<SdkTracerProvider>);

/// How long exiting waits for the collector to take the last spans.
pub const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown_with_timeout(FLUSH_WITHIN);
        }
    }
}

/// Whether spans are exported: `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
/// traces-only variant) is set.
pub fn exporting() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

/// Installs the global subscriber: log lines (text or JSON) filtered by
/// `RUST_LOG` (else `default_filter`), and spans to the OTLP collector when
/// one is configured, named `OTEL_SERVICE_NAME` or else `service`.
pub fn init(json: bool, default_filter: &str, service: &str) -> Result<Guard, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    if !exporting() {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        return Ok(Guard(None));
    }
    for variable in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        if let Ok(protocol) = std::env::var(variable)
            && !protocol.is_empty()
            && protocol != "http/protobuf"
        {
            return Err(TelemetryError::Protocol(protocol));
        }
    }
    // The blocking HTTP client must not be built on an async runtime's
    // thread: it runs one of its own.
    let exporter = std::thread::spawn(|| opentelemetry_otlp::SpanExporter::builder().with_http().build())
        .join()
        .map_err(|_| TelemetryError::Exporter("the exporter's set-up panicked".into()))?
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build());
    // Every request is recorded, whatever a caller's `traceparent` says
    // (a caller must not keep its writes out of the traces); set
    // OTEL_TRACES_SAMPLER to choose otherwise.
    if std::env::var("OTEL_TRACES_SAMPLER").is_err() {
        provider = provider.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn);
    }
    let provider = provider.build();
    let tracer = provider.tracer("storekeeper");
    // One filter for both: the log's, and our spans whatever it says of
    // the crates they are in. (The log prints spans only around its lines,
    // so it shows no more.) Filters per layer lost the spans of requests.
    let filter = filter
        .add_directive(format!("{SPANS}=info").parse().expect("a valid directive"))
        .add_directive(format!("{EVENT_SPANS}=debug").parse().expect("a valid directive"));
    tracing_subscriber::registry().with(filter).with(fmt).with(tracing_opentelemetry::layer().with_tracer(tracer)).init();
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Guard(Some(provider)))
}

/// Puts `span` under the trace of `traceparent` (W3C), as a child of the
/// span it names. Call it before the span is first entered; without an
/// exporter, or with a malformed `traceparent`, it does nothing.
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    // Per event on hot paths: nothing is parsed unless it can be exported.
    let Some(traceparent) = traceparent.filter(|_| EXPORTING.load(Ordering::Relaxed) && !span.is_disabled()) else { return };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// `span` as a W3C `traceparent`, when spans are exported (so what it
/// causes hangs under it in the collector); `None` otherwise.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| w3c::format(span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8()))
}
