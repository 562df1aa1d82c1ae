//! The query API (port 8081): reads from the read models, the history of
//! any stream and time travel from the log, and read-your-writes through
//! consistency tokens.
//!
//! A request carrying `X-Consistency-Token` waits until every projection
//! that serves it has applied the write the token names (up to
//! `X-Consistency-Timeout` ms, default 2000), then reads; past the timeout
//! it answers 503 `not_yet_consistent` with `Retry-After`. A token is the
//! position of the write's last event. Fed in process, a projection has
//! applied it once its position reaches it; fed from Kafka, once the
//! partitions of the streams that write touched have (`Progress::covers`).
//! Waiting requests wake on the runners' `NOTIFY`, not on a timer.

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
use eventlog::{EventLog, Progress};
use sqlx::PgPool;
use tokio::sync::watch;
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
    /// Moves whenever some consumer's progress moved.
    pub progress: watch::Receiver<u64>,
}

impl AppState {
    /// Also starts listening for the consumers' progress notifications.
    pub fn new(pool: PgPool, log: Arc<dyn EventLog>, jwt: JwtKeys, search: Arc<projections::search::SearchIndex>) -> Self {
        let progress = listen_for_progress(pool.clone());
        AppState { pool, log, jwt, search, progress }
    }
}

/// A counter that moves on every progress notification. Should the
/// listening connection fail, it reconnects; waiters poll meanwhile.
fn listen_for_progress(pool: PgPool) -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let listened = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(eventlog::progress::PROGRESS_CHANNEL).await?;
                loop {
                    listener.recv().await?;
                    tx.send_modify(|n| *n += 1);
                }
            };
            let result: Result<(), sqlx::Error> = tokio::select! {
                result = listened => result,
                _ = tx.closed() => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "listening for projection progress failed; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    rx
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

/// The consistency tokens a request carries, and how long it may wait.
fn requested_tokens(headers: &HeaderMap) -> Result<Option<(Vec<u64>, u64)>, ApiError> {
    let mut tokens = Vec::new();
    for value in headers.get_all("x-consistency-token") {
        let text = value.to_str().map_err(|_| ApiError::malformed("X-Consistency-Token", "must be a token from a write"))?;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let position: u64 = part.parse().map_err(|_| ApiError::malformed("X-Consistency-Token", "must be a token from a write"))?;
            tokens.push(position);
        }
    }
    if tokens.is_empty() {
        return Ok(None);
    }
    tokens.sort_unstable();
    tokens.dedup();
    let timeout = match headers.get("x-consistency-timeout") {
        None => DEFAULT_WAIT_MS,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::malformed("X-Consistency-Timeout", "must be a number of milliseconds"))?
            .min(MAX_WAIT_MS),
    };
    Ok(Some((tokens, timeout)))
}

/// Tokens, and the streams each one wrote (looked up once, when a
/// partitioned consumer needs them).
struct Tokens {
    positions: Vec<u64>,
    streams: Option<Vec<Vec<String>>>,
}

impl Tokens {
    async fn covered_by(&mut self, pool: &PgPool, progress: &Progress) -> Result<bool, ApiError> {
        if !progress.is_partitioned() {
            return Ok(self.positions.iter().all(|t| progress.position >= *t));
        }
        if self.streams.is_none() {
            let mut streams = Vec::with_capacity(self.positions.len());
            for position in &self.positions {
                streams.push(eventlog::progress::streams_of_append(pool, *position).await?);
            }
            self.streams = Some(streams);
        }
        let streams = self.streams.as_ref().expect("just filled");
        Ok(self.positions.iter().zip(streams).all(|(token, streams)| progress.covers(*token, streams)))
    }
}

/// Waits until `covered` holds for the request's tokens, waking whenever
/// `wake` moves (and every 25 ms regardless).
async fn wait_until<W, F>(
    pool: &PgPool,
    headers: &HeaderMap,
    mut wake: watch::Receiver<W>,
    mut progress: impl FnMut() -> F,
) -> Result<(), ApiError>
where
    F: std::future::Future<Output = Result<Vec<Option<Progress>>, ApiError>>,
{
    let Some((positions, timeout)) = requested_tokens(headers)? else { return Ok(()) };
    let mut tokens = Tokens { positions, streams: None };
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(timeout);
    loop {
        wake.borrow_and_update();
        let mut all = true;
        for progress in progress().await? {
            match progress {
                Some(progress) if tokens.covered_by(pool, &progress).await? => {}
                _ => all = false,
            }
        }
        if all {
            metrics::histogram!("storekeeper_consistency_wait_seconds").record(started.elapsed().as_secs_f64());
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            metrics::counter!("storekeeper_not_yet_consistent_total").increment(1);
            return Err(ApiError::NotYetConsistent(timeout));
        }
        tokio::select! {
            _ = wake.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Waits until `projections` have applied every write the request's
/// consistency tokens name.
pub async fn wait_for_tokens(state: &AppState, headers: &HeaderMap, projections: &[&str]) -> Result<(), ApiError> {
    wait_until(&state.pool, headers, state.progress.clone(), || async { Ok(projections::progress(&state.pool, projections).await?) }).await
}

/// Waits until this node's search index has applied the request's tokens.
pub async fn wait_for_index(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let index = state.search.clone();
    wait_until(&state.pool, headers, state.search.progress(), || {
        let progress = index.progress().borrow().clone();
        async move { Ok(vec![Some(progress)]) }
    })
    .await
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
