//! Spans join the trace they are given, across processes.

#[test]
fn a_span_follows_the_traceparent_it_is_given_and_names_itself_to_what_it_causes() {
    // SAFETY: set before any other thread starts.
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9") };
    let _guard = telemetry::init(false, "info", "test").unwrap();
    let span = tracing::info_span!("request");
    telemetry::follow(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    let own = span.in_scope(|| telemetry::traceparent(&tracing::Span::current())).expect("exporting");
    let parts: Vec<&str> = own.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"), "{own}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a span of its own");
}
