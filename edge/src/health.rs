//! `/healthz` (the process answers) and `/readyz` (what it needs does).
//! What "ready" means is the API's to say: the edge only asks, within 2 s.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::EdgeError;

/// `/healthz`, `/readyz` and `/metrics`; `/readyz` answers 200 while
/// `ready` says true within 2 s, else 503.
pub fn routes<S, F, Fut>(ready: F) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || readyz(ready())))
        .route("/metrics", get(crate::metrics::page))
}

async fn readyz(ready: impl Future<Output = bool>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), ready).await {
        Ok(true) => (StatusCode::OK, "ready").into_response(),
        _ => EdgeError::Unavailable.into_response(),
    }
}
