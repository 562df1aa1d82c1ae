//! The query API (port 8081): reads from the read models, the history of
//! any stream and time travel from the log, and read-your-writes through
//! consistency tokens.
//!
//! A request carrying `X-Consistency-Token` waits until every projection
//! that serves it has applied the log up to the token's position (up to
//! `X-Consistency-Timeout` ms, default 2000), then reads; past the timeout
//! it answers 503 `not_yet_consistent` with `Retry-After`.

pub mod error;
mod handlers;
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::get;
use command_api::JwtKeys;
use command_api::auth::Principal;
use eventlog::EventLog;
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub jwt: JwtKeys,
    /// This node's product index, fed by its own indexer.
    pub search: Arc<projections::search::SearchIndex>,
}

/// The caller, when the request carries a bearer token. A token that is
/// present but invalid is refused rather than ignored.
pub fn principal(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or(ApiError::Unauthorized("the Authorization header must be Bearer <JWT>"))?;
    state.jwt.verify(token.trim()).map(Some).map_err(|_| ApiError::Unauthorized("the bearer token is invalid or expired"))
}

const DEFAULT_WAIT_MS: u64 = 2000;
const MAX_WAIT_MS: u64 = 30_000;

/// The highest consistency token a request carries, and how long it may
/// wait for it.
fn requested_token(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ApiError> {
    let mut token: Option<u64> = None;
    for value in headers.get_all("x-consistency-token") {
        let text = value.to_str().map_err(|_| ApiError::malformed("X-Consistency-Token", "must be a token from a write"))?;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let position: u64 = part.parse().map_err(|_| ApiError::malformed("X-Consistency-Token", "must be a token from a write"))?;
            token = Some(token.map_or(position, |t| t.max(position)));
        }
    }
    let Some(token) = token else { return Ok(None) };
    let timeout = match headers.get("x-consistency-timeout") {
        None => DEFAULT_WAIT_MS,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::malformed("X-Consistency-Timeout", "must be a number of milliseconds"))?
            .min(MAX_WAIT_MS),
    };
    Ok(Some((token, timeout)))
}

/// Waits until `projections` have applied the log up to every consistency
/// token the request carries.
pub async fn wait_for_tokens(state: &AppState, headers: &HeaderMap, projections: &[&str]) -> Result<(), ApiError> {
    let Some((token, timeout)) = requested_token(headers)? else { return Ok(()) };
    let names: Vec<String> = projections.iter().map(|p| p.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    let started = std::time::Instant::now();
    loop {
        let (count, lowest): (i64, Option<i64>) =
            sqlx::query_as("SELECT count(*), min(position) FROM projection_checkpoints WHERE projection = ANY($1)")
                .bind(&names)
                .fetch_one(&state.pool)
                .await?;
        if count as usize == names.len() && lowest.is_some_and(|p| p as u64 >= token) {
            metrics::histogram!("storekeeper_consistency_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            metrics::counter!("storekeeper_not_yet_consistent_total").increment(1);
            return Err(ApiError::NotYetConsistent(timeout));
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Waits until this node's search index has applied the request's tokens.
pub async fn wait_for_index(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some((token, timeout)) = requested_token(headers)? else { return Ok(()) };
    let mut positions = state.search.positions();
    let reached = tokio::time::timeout(Duration::from_millis(timeout), positions.wait_for(|p| *p >= token)).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(ApiError::Unavailable),
        Err(_) => {
            metrics::counter!("storekeeper_not_yet_consistent_total").increment(1);
            Err(ApiError::NotYetConsistent(timeout))
        }
    }
}

pub fn router(state: AppState) -> Router {
    use handlers::*;
    command_api::prometheus();
    Router::new()
        .route("/v1/products", get(list_products))
        .route("/v1/products/{id}", get(get_product))
        .route("/v1/products/{id}/at", get(product_at))
        .route("/v1/customers/{id}", get(get_customer))
        .route("/v1/customers/{id}/at", get(customer_at))
        .route("/v1/customers/{id}/orders", get(customer_orders))
        .route("/v1/orders", get(list_orders))
        .route("/v1/orders/{id}", get(get_order))
        .route("/v1/orders/{id}/at", get(order_at))
        .route("/v1/search/products", get(search_products))
        .route("/v1/reports/sales", get(sales_report))
        .route("/v1/streams/{stream_id}/events", get(stream_events))
        .route("/v1/audit", get(audit))
        .route("/v1/projections", get(list_projections))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { command_api::prometheus().render() }))
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(command_api::BODY_LIMIT))
        .layer(middleware::from_fn(|request, next| command_api::track_requests("query", request, next)))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}
