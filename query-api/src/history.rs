//! `/v1/streams/{stream_id}/events`: a stream's history, straight from the
//! log, with each event's metadata. For admins only.

use axum::Json;
use axum::extract::{Path, State};
use edge::{Admin, Query};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::params::limit;
use crate::responses::History;
use crate::{ApiError, AppState};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The first stream version to read (default 0).
    #[schemars(range(max = u64::MAX))]
    from_version: Option<u64>,
    /// Items per page (default 50).
    #[schemars(range(min = 1, max = crate::params::MAX_LIMIT))]
    limit: Option<i64>,
}

pub async fn stream_events(
    State(state): State<AppState>,
    _: Admin,
    Path(stream): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let limit = limit(q.limit)?;
    let events = state.log.read_stream(&stream, q.from_version.unwrap_or(0), limit as usize).await?;
    let next_from_version = if events.len() as i64 == limit { events.last().map(|e| e.stream_version + 1) } else { None };
    let events = events.iter().map(|e| serde_json::to_value(e).map_err(ApiError::internal)).collect::<Result<_, _>>()?;
    Ok(Json(History { events, next_from_version }))
}
