//! Orders: one by id, lists, and time travel. A customer reads only its
//! own orders; admins read all.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use domain::order::OrderAggregate;
use edge::{Authenticated, EdgeError, Query, Role};
use projections::names::ORDERS;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sqlx::FromRow;
use uuid::Uuid;

use crate::params::{cursor_id, limit, parse_id};
use crate::responses::{Money, Order, Page};
use crate::time_travel::{AtQuery, entity_at};
use crate::{ApiError, AppState, wait_for_tokens};

#[derive(FromRow)]
struct OrderRow {
    id: Uuid,
    customer_id: Uuid,
    status: String,
    lines: Value,
    total_minor: i64,
    currency: String,
    shipping_address: Value,
    placed_at: DateTime<Utc>,
    version: i64,
}

impl TryFrom<OrderRow> for Order {
    type Error = ApiError;
    fn try_from(r: OrderRow) -> Result<Self, ApiError> {
        Ok(Order {
            id: r.id,
            customer_id: r.customer_id,
            status: r.status,
            lines: serde_json::from_value(r.lines).map_err(ApiError::internal)?,
            total: Money { amount_minor: r.total_minor, currency: r.currency },
            shipping_address: r.shipping_address,
            placed_at: Some(r.placed_at),
            version: r.version,
        })
    }
}

const ORDER_COLUMNS: &str = "id, customer_id, status, lines, total_minor, currency, shipping_address, placed_at, version";

pub async fn get_order(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Order>, ApiError> {
    let id = parse_id(&id)?;
    wait_for_tokens(&state, &headers, &[ORDERS]).await?;
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM rm_orders WHERE id = $1")).bind(id).fetch_optional(&state.pool).await?;
    let order = row.ok_or(ApiError::NotFound("order"))?;
    caller.require_customer(order.customer_id)?;
    Ok(Json(order.try_into()?))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderFilter {
    #[schemars(with = "Option<domain::order::OrderStatus>")]
    status: Option<String>,
    pub(crate) customer_id: Option<Uuid>,
    /// Items per page (default 50).
    #[schemars(range(min = 1, max = crate::params::MAX_LIMIT))]
    limit: Option<i64>,
    /// `next_cursor` of the page before.
    #[schemars(with = "Option<uuid::Uuid>")]
    cursor: Option<String>,
}

pub(crate) async fn orders_page(state: &AppState, headers: &HeaderMap, filter: OrderFilter) -> Result<Json<Page<Order>>, ApiError> {
    let limit = limit(filter.limit)?;
    if let Some(status) = &filter.status
        && serde_json::from_value::<domain::order::OrderStatus>(serde_json::Value::String(status.clone())).is_err()
    {
        return Err(ApiError::malformed(
            "status",
            "must be an order's status: placed, confirmed, rejected, paid, shipped, delivered or cancelled",
        ));
    }
    let after = cursor_id(filter.cursor.as_deref())?;
    wait_for_tokens(state, headers, &[ORDERS]).await?;
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM rm_orders
          WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR customer_id = $2) AND ($3::uuid IS NULL OR id > $3)
          ORDER BY id LIMIT $4"
    ))
    .bind(&filter.status)
    .bind(filter.customer_id)
    .bind(after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let orders = rows.into_iter().map(Order::try_from).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::new(orders, limit, |o| o.id.to_string())))
}

pub async fn list_orders(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    Query(mut filter): Query<OrderFilter>,
) -> Result<Json<Page<Order>>, ApiError> {
    if caller.role == Role::Customer {
        // A customer lists its own orders only.
        let own = Uuid::parse_str(&caller.sub).map_err(|_| EdgeError::Forbidden("a customer token's subject must be its customer id"))?;
        if filter.customer_id.is_some_and(|c| c != own) {
            return Err(EdgeError::Forbidden("customers may read only their own records").into());
        }
        filter.customer_id = Some(own);
    }
    orders_page(&state, &headers, filter).await
}

pub async fn order_at(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(at): Query<AtQuery>,
) -> Result<Json<Order>, ApiError> {
    let (order, version) = entity_at::<OrderAggregate, _>(&state, parse_id(&id)?, &at, "order").await?;
    caller.require_customer(order.customer_id)?;
    Ok(Json(Order::folded(order, version)))
}
