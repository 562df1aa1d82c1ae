//! `/v1/reports/sales`: sales per day or per product, from the sales read
//! model. For admins only.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{Datelike, NaiveDate};
use edge::{Admin, Query};
use projections::names::SALES;
use schemars::JsonSchema;
use serde::Deserialize;
use uuid::Uuid;

use crate::params::check_year;
use crate::responses::{Page, SalesItem, Total};
use crate::{ApiError, AppState, wait_for_tokens};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SalesQuery {
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    /// Per day unless told.
    #[schemars(with = "Option<GroupBy>")]
    group_by: Option<String>,
}

/// What a sales report sums over.
#[derive(JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum GroupBy {
    Day,
    Product,
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
