//! One W3C trace across every role, exported over OTLP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::deployment::Deployment;

/// What an OTLP/HTTP receiver was sent: one line per span.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// Receives OTLP over HTTP (protobuf) on loopback, as the OpenTelemetry
/// collector's receiver does, and keeps every span it is sent.
async fn otlp_receiver() -> (String, Arc<std::sync::Mutex<Vec<ExportedSpan>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        Any::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    kept.lock().unwrap().push(ExportedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(span.trace_id),
                        span_id: hex::encode(span.span_id),
                        parent_span_id: hex::encode(span.parent_span_id),
                    });
                }
            }
            axum::http::StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

/// A W3C trace from the request goes on through the event's metadata, the
/// append, the relay's Kafka headers and each consumer: one trace id in
/// every role's log, and in the spans every role exports over OTLP, each
/// under the span that caused it.
#[tokio::test(flavor = "multi_thread")]
async fn one_trace_id_is_seen_at_the_command_the_append_the_relay_and_the_projection() {
    let url = eventlog::testing::fresh_database_url().await;
    let mut d = Deployment::new(url.clone(), Some(format!("storekeeper-trace-{}", Uuid::now_v7().simple())));
    let (otlp, exported) = otlp_receiver().await;
    d.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp);
    d.set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let filter = "warn,storekeeper::span=info,commands=debug,kafka=debug,projections=debug";
    let command_log = d.start_logging("command-api", &["command-api"], filter);
    let relay_log = d.start_logging("relay", &["relay"], filter);
    let projections_log = d.start_logging("projections", &["projections"], filter);
    d.start("query-api", &["query-api"]);
    d.wait_ready().await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let product = Uuid::now_v7();
    let added = d
        .traced(
            "/v1/products",
            json!({"id": product, "sku": "TRACE-1", "name": "Tracer", "description": "", "category": "c",
                   "price": {"amount_minor": 100, "currency": "USD"}, "initial_stock": 1}),
            &format!("00-{trace}-00f067aa0ba902b7-01"),
        )
        .await;
    assert_eq!(added, 201);
    let pool = PgPool::connect(&url).await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT metadata->>'traceparent' FROM events WHERE stream_id = $1")
        .bind(format!("product-{product}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with(&format!("00-{trace}-")) && !stored.ends_with("00f067aa0ba902b7-01"),
        "a span of its own under the trace: {stored}"
    );
    pool.close().await;

    let seen = |path: &PathBuf, message: &str| {
        std::fs::read_to_string(path).unwrap_or_default().lines().any(|l| l.contains(trace) && l.contains(message))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(seen(&relay_log, "relayed") && seen(&projections_log, "applied")) {
        assert!(tokio::time::Instant::now() < deadline, "the trace did not reach the relay and the projections");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen(&command_log, "appended"), "{}", std::fs::read_to_string(&command_log).unwrap());
    // The command's request span carries it too.
    assert!(std::fs::read_to_string(&command_log).unwrap().lines().any(|l| l.contains(&format!("\"trace_id\":\"{trace}\""))));

    // Exported: the request under the caller's span, and the append, the
    // relay and every projection under the request's span, which the
    // event's metadata names.
    let request_span = stored.split('-').nth(2).unwrap().to_owned();
    let spans = eventually_exported(&exported, |spans| {
        let of = |service: &str, name: &str| {
            spans.iter().filter(|s| s.service == service && s.name == name && s.trace_id == trace).collect::<Vec<_>>()
        };
        let request = of("storekeeper-command-api", "request");
        request.iter().any(|s| s.span_id == request_span && s.parent_span_id == "00f067aa0ba902b7")
            && of("storekeeper-command-api", "append").iter().any(|s| s.parent_span_id == request_span)
            && of("storekeeper-relay", "relay").iter().any(|s| s.parent_span_id == request_span)
            && of("storekeeper-projections", "apply").iter().filter(|s| s.parent_span_id == request_span).count() >= 2
    })
    .await;
    assert!(spans.iter().all(|s| s.trace_id != trace || s.span_id != "00f067aa0ba902b7"), "the caller's span is the caller's to export");

    // An order's trace goes on into what the order process does about it.
    let order_trace = "0af7651916cd43dd8448eb211c80319c";
    let customer = Uuid::now_v7();
    d.write("/v1/customers", json!({"id": customer, "email": "tracer@example.com", "name": "Tracer"})).await;
    let order = Uuid::now_v7();
    let placed = d
        .traced(
            "/v1/orders",
            json!({"id": order, "customer_id": customer, "lines": [{"product_id": product, "quantity": 1}],
                   "shipping_address": {"line1": "1 Trace Way", "city": "Berlin", "postal_code": "10115", "country": "DE"}}),
            &format!("00-{order_trace}-b7ad6b7169203331-01"),
        )
        .await;
    assert_eq!(placed, 202);
    let pool = PgPool::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let confirmed = loop {
        let found: Option<String> =
            sqlx::query_scalar("SELECT metadata->>'traceparent' FROM events WHERE stream_id = $1 AND event_type = 'OrderConfirmed'")
                .bind(format!("order-{order}"))
                .fetch_optional(&pool)
                .await
                .unwrap();
        if let Some(found) = found {
            break found;
        }
        assert!(tokio::time::Instant::now() < deadline, "the order was never confirmed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(confirmed.starts_with(&format!("00-{order_trace}-")), "the process manager's command left the trace: {confirmed}");
    pool.close().await;
    // The order process's step is a span under the order's request, and
    // the confirmation it wrote names that step as its parent.
    let step = confirmed.split('-').nth(2).unwrap().to_owned();
    eventually_exported(&exported, |spans| {
        spans
            .iter()
            .any(|s| s.service == "storekeeper-projections" && s.name == "order_process" && s.trace_id == order_trace && s.span_id == step)
    })
    .await;

    // A caller's not-sampled flag does not keep its write out of the
    // traces; probes make none.
    let quiet = "5bf92f3577b34da6a3ce929d0e0e4737";
    let probe = "6bf92f3577b34da6a3ce929d0e0e4738";
    let restock = format!("/v1/products/{product}/restock");
    assert_eq!(d.traced(&restock, json!({"quantity": 1}), &format!("00-{quiet}-00f067aa0ba902b7-00")).await, 200);
    let probed = d.http.get(format!("{}/healthz", d.command)).header("traceparent", format!("00-{probe}-00f067aa0ba902b7-01"));
    assert_eq!(probed.send().await.unwrap().status(), 200);
    let spans = eventually_exported(&exported, |spans| {
        let of = |name: &str| spans.iter().any(|s| s.trace_id == quiet && s.name == name);
        of("append") && of("apply")
    })
    .await;
    assert!(spans.iter().all(|s| s.trace_id != probe), "a probe was traced");
}

/// Waits until the spans exported so far satisfy `done`; answers them.
async fn eventually_exported(
    exported: &Arc<std::sync::Mutex<Vec<ExportedSpan>>>,
    done: impl Fn(&[ExportedSpan]) -> bool,
) -> Vec<ExportedSpan> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let spans = exported.lock().unwrap().clone();
        if done(&spans) {
            return spans;
        }
        assert!(tokio::time::Instant::now() < deadline, "the spans exported never got there: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
