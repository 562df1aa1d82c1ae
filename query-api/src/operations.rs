//! What an operator does to the read side, over HTTP as the CLI does it
//! (`storekeeper projections retry|rebuild`): a projection's parked
//! events, applying them again, and rebuilding a read model beside its
//! live tables with its progress. For admins only.
//!
//! The order process's parked steps are retried by the command side
//! (`storekeeper projections retry order-process`): it sends commands,
//! which this API never does.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use edge::{Admin, Query};
use projections::names::{ORDER_PROCESS, SEARCH};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::params::limit;
use crate::responses::Page;
use crate::{ApiError, AppState};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedQuery {
    /// Items per page (default 50).
    #[schemars(range(min = 1, max = crate::params::MAX_LIMIT))]
    limit: Option<i64>,
    /// `next_cursor` of the page before.
    #[schemars(regex(pattern = "^[0-9]{1,19}$"))]
    cursor: Option<String>,
}

/// No parameters: an unknown one is refused, as everywhere.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// An event a consumer could not apply, set aside with its error.
#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct ParkedEvent {
    pub global_position: i64,
    pub stream_id: String,
    pub event_type: String,
    /// Why it was parked (or, behind an earlier event of its stream, that
    /// it waits for that one).
    pub error: String,
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
}

/// What a retry did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RetryOutcome {
    /// Parked events applied now.
    pub applied: u64,
    /// Still parked: failing again, or behind one that is.
    pub still_parked: u64,
    /// Parked messages that were no event of the log, dropped.
    pub discarded: u64,
}

/// Where a rebuild stands.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Rebuild {
    /// Asked for and not yet swapped in.
    pub requested: bool,
    /// How far the rebuild has got; none until a worker has started it.
    pub position: Option<u64>,
    /// The log's last position.
    pub head: u64,
}

/// Names that have a state of their own: the read models, the index, the
/// order process.
fn known(name: &str) -> Result<(), ApiError> {
    let model = projections::all().iter().any(|p| p.name() == name);
    if model || name == SEARCH || name == ORDER_PROCESS { Ok(()) } else { Err(ApiError::NotFound("projection")) }
}

pub async fn parked(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    Query(q): Query<ParkedQuery>,
) -> Result<Json<Page<ParkedEvent>>, ApiError> {
    known(&name)?;
    let limit = limit(q.limit)?;
    let after = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<i64>().map_err(|_| ApiError::malformed("cursor", "is not a cursor from an earlier page"))?,
    };
    let items: Vec<ParkedEvent> = sqlx::query_as(
        "SELECT global_position, stream_id, event_type, error, attempts, parked_at FROM dead_letters
          WHERE projection = $1 AND global_position > $2 ORDER BY global_position LIMIT $3",
    )
    .bind(&name)
    .bind(after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page::new(items, limit, |e| e.global_position.to_string())))
}

pub async fn retry(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    _: Query<NoQuery>,
) -> Result<Json<RetryOutcome>, ApiError> {
    known(&name)?;
    if name == ORDER_PROCESS {
        return Err(ApiError::RetriedByTheCommandSide);
    }
    // The retry's future is not `Send` (a higher-ranked lifetime inside
    // sqlx the compiler cannot prove), so it runs on a blocking thread of
    // its own; it is one transaction either way.
    let (pool, log, runtime) = (state.pool.clone(), state.log.clone(), tokio::runtime::Handle::current());
    let retrying = tokio::task::spawn_blocking(move || {
        runtime.block_on(async {
            match projections::all().into_iter().find(|p| p.name() == name) {
                Some(projection) => projections::retry_parked(&pool, &*log, &*projection).await,
                None => projections::search::retry_parked(&pool, &*log).await,
            }
        })
    });
    let retried = retrying.await.map_err(ApiError::internal)?.map_err(|e| match e {
        projections::RetryError::Database(e) => e.into(),
        projections::RetryError::Log(e) => e.into(),
        other => ApiError::internal(other),
    })?;
    Ok(Json(RetryOutcome { applied: retried.applied, still_parked: retried.still_parked, discarded: retried.discarded }))
}

/// Asks the running workers to rebuild a read model beside its live
/// tables; answers at once (202) with where it stands.
pub async fn request_rebuild(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    _: Query<NoQuery>,
) -> Result<(StatusCode, Json<Rebuild>), ApiError> {
    rebuildable(&name)?;
    if !projections::request_rebuild(&state.pool, &name).await? {
        return Err(ApiError::NotFound("projection"));
    }
    Ok((StatusCode::ACCEPTED, Json(progress(&state, &name).await?)))
}

pub async fn rebuild_progress(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
    _: Query<NoQuery>,
) -> Result<Json<Rebuild>, ApiError> {
    rebuildable(&name)?;
    let started: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projection_checkpoints WHERE projection = $1)")
        .bind(&name)
        .fetch_one(&state.pool)
        .await?;
    if !started {
        return Err(ApiError::NotFound("projection"));
    }
    Ok(Json(progress(&state, &name).await?))
}

async fn progress(state: &AppState, name: &str) -> Result<Rebuild, ApiError> {
    let progress = projections::rebuild_progress(&state.pool, name).await?;
    Ok(Rebuild { requested: progress.requested, position: progress.position, head: progress.head })
}

/// Only the PostgreSQL read models are rebuilt beside their live tables.
fn rebuildable(name: &str) -> Result<(), ApiError> {
    if projections::all().iter().any(|p| p.name() == name) { Ok(()) } else { Err(ApiError::NotFound("read model")) }
}
