//! Admin reads: sales reports, a stream's history from the log, the audit
//! trail and the projections' states.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use edge::{Admin, Query};
use projections::names::{AUDIT, SALES};
use schemars::JsonSchema;
use serde::Deserialize;
use uuid::Uuid;

use crate::params::{check_year, limit};
use crate::responses::{AuditEntry, History, Page, Projection, ProjectionVersion, SalesItem, Total, Verified};
use crate::{ApiError, AppState, wait_for_tokens};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SalesQuery {
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    /// `day` (default) or `product`.
    group_by: Option<String>,
}

pub async fn sales_report(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    Query(q): Query<SalesQuery>,
) -> Result<Json<Page<SalesItem>>, ApiError> {
    check_year("from", q.from.map(|d| d.year()))?;
    check_year("to", q.to.map(|d| d.year()))?;
    let group_by = q.group_by.as_deref().unwrap_or("day");
    if group_by != "day" && group_by != "product" {
        return Err(ApiError::malformed("group_by", "must be day or product"));
    }
    wait_for_tokens(&state, &headers, &[SALES]).await?;
    let items: Vec<SalesItem> = if group_by == "day" {
        let rows: Vec<(NaiveDate, String, i64, i64, String)> = sqlx::query_as(
            "SELECT day, currency, orders, units, revenue_minor::text FROM rm_sales_daily WHERE ($1::date IS NULL OR day >= $1) AND ($2::date IS NULL OR day <= $2) ORDER BY day, currency",
        )
        .bind(q.from)
        .bind(q.to)
        .fetch_all(&state.pool)
        .await?;
        rows.into_iter()
            .map(|(day, currency, orders, units, revenue)| {
                Ok(SalesItem::Day { day, orders, units, revenue: Total { amount_minor: total(&revenue)?, currency } })
            })
            .collect::<Result<_, ApiError>>()?
    } else {
        let rows: Vec<(Uuid, String, i64, String)> = sqlx::query_as(
            "SELECT product_id, currency, sum(units)::bigint, sum(revenue_minor)::text FROM rm_sales_by_product
              WHERE ($1::date IS NULL OR day >= $1) AND ($2::date IS NULL OR day <= $2) GROUP BY product_id, currency ORDER BY sum(revenue_minor) DESC, 1",
        )
        .bind(q.from)
        .bind(q.to)
        .fetch_all(&state.pool)
        .await?;
        rows.into_iter()
            .map(|(product_id, currency, units, revenue)| {
                Ok(SalesItem::Product { product_id, units, revenue: Total { amount_minor: total(&revenue)?, currency } })
            })
            .collect::<Result<_, ApiError>>()?
    };
    Ok(Json(Page { items, next_cursor: None }))
}

/// A numeric sum as PostgreSQL prints it: an integer (the columns only
/// ever add integers).
fn total(text: &str) -> Result<i128, ApiError> {
    text.parse().map_err(ApiError::internal)
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from_version: Option<u64>,
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

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    actor: Option<String>,
    correlation_id: Option<Uuid>,
    stream_id: Option<String>,
    event_type: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
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
        .map(|c| c.parse().map_err(|_| ApiError::malformed("cursor", "is not a cursor from an earlier page")))
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

/// Positions, lag and last errors: for admins only.
pub async fn list_projections(State(state): State<AppState>, _: Admin) -> Result<Json<Page<Projection>>, ApiError> {
    let mut items: Vec<Projection> = projections::status(&state.pool).await?.into_iter().map(Projection::from).collect();
    // This node's search index lives beside the query API, not in PostgreSQL.
    let position = state.search.position();
    let (lag_events, lag_seconds) = projections::lag(&state.pool, position).await?;
    items.push(Projection {
        name: projections::names::SEARCH.to_owned(),
        version: ProjectionVersion::Name(projections::search::INDEX_VERSION.to_owned()),
        position,
        lag_events,
        lag_seconds,
        state: "running".to_owned(),
        parked: 0,
        last_error: None,
        events_per_second: state.search.events_per_second(),
        eta_seconds: projections::eta(lag_events, state.search.events_per_second()),
    });
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
