//! `/v1/projections`: the read models' (and this node's index's) states,
//! and a read model's live view verified against the log. For admins only.

use axum::Json;
use axum::extract::{Path, State};
use edge::Admin;

use crate::responses::{Page, Projection, Verified};
use crate::{ApiError, AppState};

/// Positions, lag and last errors: for admins only.
pub async fn list_projections(State(state): State<AppState>, _: Admin) -> Result<Json<Page<Projection>>, ApiError> {
    let mut items = projections::status(&state.pool).await?;
    // This node's search index lives beside the query API, not in PostgreSQL.
    items.push(state.search.status(&state.pool).await?);
    Ok(Json(Page { items, next_cursor: None }))
}

/// Folds the log beside a projection's live tables and compares them row
/// by row: for admins only. Answers 200 either way; `matches` says which.
pub async fn verify_projection(State(state): State<AppState>, _: Admin, Path(name): Path<String>) -> Result<Json<Verified>, ApiError> {
    let projection = projections::all().into_iter().find(|p| p.name() == name).ok_or(ApiError::NotFound("projection"))?;
    // On a task of its own, so that a client that goes away does not cut it
    // off before it drops its scratch tables.
    let (pool, log) = (state.pool.clone(), state.log.clone());
    let verifying = tokio::spawn(async move { projections::verify(&pool, &*log, &*projection).await });
    let verification = verifying.await.map_err(ApiError::internal)?.map_err(|e| match e {
        projections::VerifyError::NotStarted(_) => ApiError::NotFound("projection"),
        projections::VerifyError::Busy(name) => ApiError::VerifyInProgress(name),
        projections::VerifyError::Database(e) => e.into(),
        projections::VerifyError::Log(e) => e.into(),
    })?;
    Ok(Json(Verified { matches: verification.matches(), verification }))
}
