//! Customers: their record, their orders, and time travel. A customer
//! reads only its own; admins read all.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use domain::customer::CustomerAggregate;
use domain::stream_id;
use edge::{Authenticated, Query};
use projections::names::CUSTOMERS;
use serde_json::{Value, json};
use sqlx::FromRow;
use uuid::Uuid;

use crate::orders::{OrderFilter, orders_page};
use crate::params::parse_id;
use crate::responses::{Customer, Order, Page};
use crate::time_travel::{AtQuery, fold_until};
use crate::{ApiError, AppState, wait_for_tokens};

#[derive(FromRow)]
struct CustomerRow {
    id: Uuid,
    email: String,
    name: String,
    shipping_address: Option<Value>,
    status: String,
    version: i64,
}

pub async fn get_customer(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Customer>, ApiError> {
    let id = parse_id(&id)?;
    caller.require_customer(id)?;
    wait_for_tokens(&state, &headers, &[CUSTOMERS]).await?;
    let row: Option<CustomerRow> =
        sqlx::query_as("SELECT id, email, name, shipping_address, status, version FROM rm_customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    let c = row.ok_or(ApiError::NotFound("customer"))?;
    Ok(Json(Customer {
        id: c.id,
        email: c.email,
        name: c.name,
        shipping_address: c.shipping_address,
        status: c.status,
        version: c.version,
    }))
}

pub async fn customer_orders(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(mut filter): Query<OrderFilter>,
) -> Result<Json<Page<Order>>, ApiError> {
    let id = parse_id(&id)?;
    caller.require_customer(id)?;
    filter.customer_id = Some(id);
    orders_page(&state, &headers, filter).await
}

pub async fn customer_at(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    Query(at): Query<AtQuery>,
) -> Result<Json<Customer>, ApiError> {
    let id = parse_id(&id)?;
    caller.require_customer(id)?;
    let (customer, version) = fold_until::<CustomerAggregate>(&state, &stream_id::<CustomerAggregate>(id), &at).await?;
    let c = customer.ok_or(ApiError::NotFound("customer"))?;
    Ok(Json(Customer {
        id: c.id,
        email: c.email.as_str().to_owned(),
        name: c.name,
        shipping_address: c.shipping_address.map(|a| json!(a)),
        status: if c.forgotten {
            "forgotten"
        } else if c.active {
            "active"
        } else {
            "deactivated"
        }
        .to_owned(),
        version: version as i64,
    }))
}
