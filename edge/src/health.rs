//! `/healthz` (the process answers) and `/readyz` (its database does).

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::EdgeError;

/// `/healthz`, `/readyz` and `/metrics`, for an API on `pool`.
pub fn routes<S: Clone + Send + Sync + 'static>(pool: PgPool) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || readyz(pool.clone())))
        .route("/metrics", get(crate::metrics::page))
}

/// Whether a database error means "not reachable now" (503) rather than a
/// fault (500): the pool timed out or closed, or the connection broke.
pub fn database_unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
}

async fn readyz(pool: PgPool) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&pool)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready").into_response(),
        _ => EdgeError::Unavailable.into_response(),
    }
}
