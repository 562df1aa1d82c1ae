//! `/v1/audit`: who did what, when and why, across every stream, from the
//! audit read model. For admins only.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Datelike, Utc};
use edge::{Admin, Query};
use projections::names::AUDIT;
use schemars::JsonSchema;
use serde::Deserialize;
use uuid::Uuid;

use crate::params::{check_year, limit};
use crate::responses::{AuditEntry, Page};
use crate::{ApiError, AppState, wait_for_tokens};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[schemars(pattern(edge::openapi::NO_CONTROL_PATTERN))]
    actor: Option<String>,
    correlation_id: Option<Uuid>,
    #[schemars(pattern(edge::openapi::NO_CONTROL_PATTERN))]
    stream_id: Option<String>,
    #[schemars(pattern(edge::openapi::NO_CONTROL_PATTERN))]
    event_type: Option<String>,
    /// Recorded at or after (RFC 3339, years 0 to 9999).
    from: Option<DateTime<Utc>>,
    /// Recorded before.
    to: Option<DateTime<Utc>>,
    /// Items per page (default 50).
    #[schemars(range(min = 1, max = crate::params::MAX_LIMIT))]
    limit: Option<i64>,
    /// `next_cursor` of the page before.
    #[schemars(regex(pattern = "^[0-9]{1,18}$"))]
    cursor: Option<String>,
}

pub async fn audit(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    check_year("from", q.from.map(|d| d.year()))?;
    check_year("to", q.to.map(|d| d.year()))?;
    let limit = limit(q.limit)?;
    let after: Option<i64> = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse()
                .ok()
                .filter(|_| (1..=18).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ApiError::malformed("cursor", "is not a cursor from an earlier page"))
        })
        .transpose()?;
    wait_for_tokens(&state, &headers, &[AUDIT]).await?;
    let items: Vec<AuditEntry> = sqlx::query_as(
        "SELECT global_position, event_id, stream_id, stream_version, event_type, actor, role, correlation_id, causation_id, occurred_at, recorded_at
           FROM rm_audit
          WHERE ($1::text IS NULL OR actor = $1) AND ($2::uuid IS NULL OR correlation_id = $2)
            AND ($3::text IS NULL OR stream_id = $3) AND ($4::text IS NULL OR event_type = $4)
            AND ($5::timestamptz IS NULL OR recorded_at >= $5) AND ($6::timestamptz IS NULL OR recorded_at < $6)
            AND ($7::bigint IS NULL OR global_position > $7)
          ORDER BY global_position LIMIT $8",
    )
    .bind(&q.actor)
    .bind(q.correlation_id)
    .bind(&q.stream_id)
    .bind(&q.event_type)
    .bind(q.from)
    .bind(q.to)
    .bind(after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page::new(items, limit, |e| e.global_position.to_string())))
}
