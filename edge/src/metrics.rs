//! The process-wide Prometheus recorder and per-route request metrics.

use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (several apps in one
        // test process): this handle then renders an empty page.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The request counter of `api`, at 0 from start-up: a rate of requests
/// reads 0 before the first, not "no data".
pub fn export_from_start(api: &'static str) {
    metrics::counter!("storekeeper_http_requests_total", "api" => api, "route" => "/healthz", "method" => "GET", "status" => "200")
        .increment(0);
}

/// `GET /metrics`.
pub async fn page() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus().render())
}

/// Counts and times requests per route.
pub async fn track_requests(api: &'static str, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    // Only standard methods become label values: a client must not be able
    // to mint new time series.
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("storekeeper_http_request_duration_seconds", "api" => api, "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("storekeeper_http_requests_total", "api" => api, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}
