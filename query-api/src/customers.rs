//! Customers: their record, their orders, and time travel. A customer
//! reads only its own; admins read all.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use domain::customer::CustomerAggregate;
use edge::{Authenticated, Query};
use projections::names::CUSTOMERS;

use crate::orders::{OrderFilter, orders_page};
use crate::params::parse_id;
use crate::responses::{Customer, Order, Page};
use crate::time_travel::{AtQuery, entity_at};
use crate::{ApiError, AppState, wait_for_tokens};

pub async fn get_customer(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Customer>, ApiError> {
    let id = parse_id(&id)?;
    caller.require_customer(id)?;
    wait_for_tokens(&state, &headers, &[CUSTOMERS]).await?;
    let customer: Option<Customer> =
        sqlx::query_as("SELECT id, email, name, shipping_address, status, version FROM rm_customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    customer.map(Json).ok_or(ApiError::NotFound("customer"))
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
    let (customer, version) = entity_at::<CustomerAggregate, _>(&state, id, &at, "customer").await?;
    Ok(Json(Customer::folded(customer, version)))
}
