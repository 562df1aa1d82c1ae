//! The command API (port 8080): the write side's HTTP edge.
//!
//! `router(state)` builds the whole API so tests can call it on port 0.
//! Requests become domain commands (`dto`), run through load-decide-append
//! (`service`), and every failure is a problem+json answer (`error`). The
//! order process manager (`process_manager`) lives here too: it is a
//! consumer of the log that issues commands through the same service.

pub mod auth;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod idempotency;
pub mod openapi;
pub mod process_manager;
pub mod service;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{JwtKeys, Role};
pub use service::CommandService;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub service: CommandService,
    pub pool: PgPool,
    pub jwt: JwtKeys,
    pub webhook_secret: Arc<str>,
}

/// Applies the command API's own migrations (idempotency keys, checkpoints).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}

/// The token a write returns and a read may wait for: the write's global
/// position in the log.
pub fn consistency_token(position: u64) -> String {
    position.to_string()
}

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

/// Counts and times requests per route, for `/metrics`.
pub async fn track_requests(api: &'static str, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().to_string();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!("storekeeper_http_request_duration_seconds", "api" => api, "route" => route.clone(), "method" => method.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("storekeeper_http_requests_total", "api" => api, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.pool)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        _ => error::ApiError::Unavailable.into_response(),
    }
}

async fn metrics_page() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus().render())
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn not_found() -> error::ApiError {
    error::ApiError::Domain(domain::DomainError::NotFound("route"))
}

pub fn router(state: AppState) -> Router {
    use handlers::*;
    prometheus();
    let authenticated = Router::new()
        .route("/v1/customers", post(register_customer))
        .route("/v1/customers/{id}/email", post(change_email))
        .route("/v1/customers/{id}/address", post(update_address))
        .route("/v1/customers/{id}/deactivate", post(deactivate_customer))
        .route("/v1/products", post(add_product))
        .route("/v1/products/{id}/details", post(update_product_details))
        .route("/v1/products/{id}/price", post(change_price))
        .route("/v1/products/{id}/restock", post(restock))
        .route("/v1/products/{id}/discontinue", post(discontinue))
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{id}/cancel", post(cancel_order))
        .route("/v1/orders/{id}/ship", post(ship_order))
        .route("/v1/orders/{id}/deliver", post(deliver_order))
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency::middleware))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .merge(authenticated)
        .route("/v1/payments/webhook", post(payment_webhook))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/openapi.json", get(openapi_json))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(|request, next| track_requests("command", request, next)))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id, correlation_id = tracing::field::Empty)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
