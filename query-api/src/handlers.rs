//! One handler per endpoint. Reads that a consistency token can wait for
//! name the projections that serve them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use command_api::Role;
use command_api::auth::Principal;
use domain::customer::{Customer, CustomerAggregate};
use domain::order::{Order, OrderAggregate};
use domain::product::{Product, ProductAggregate};
use domain::{Aggregate, stream_id};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::FromRow;
use uuid::Uuid;

use crate::{ApiError, AppState, principal, wait_for_index, wait_for_tokens};

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::malformed("id", "must be a UUID"))
}

fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::malformed("limit", format!("must be between 1 and {MAX_LIMIT}"))),
    }
}

fn admin(p: &Option<Principal>) -> Result<(), ApiError> {
    match p {
        None => Err(ApiError::Unauthorized("an Authorization: Bearer <JWT> header is required")),
        Some(p) if p.role == Role::Admin => Ok(()),
        Some(_) => Err(ApiError::Forbidden("this read needs the admin role")),
    }
}

fn owner_or_admin(p: &Option<Principal>, customer_id: Uuid) -> Result<(), ApiError> {
    match p {
        None => Err(ApiError::Unauthorized("an Authorization: Bearer <JWT> header is required")),
        Some(p) => p.require_customer(customer_id).map_err(|_| ApiError::Forbidden("customers may read only their own records")),
    }
}

fn money(amount_minor: i64, currency: &str) -> Value {
    json!({"amount_minor": amount_minor, "currency": currency})
}

// --- products ---

#[derive(FromRow)]
struct ProductRow {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    category: String,
    price_minor: i64,
    currency: String,
    stock: i64,
    status: String,
    version: i64,
}

impl ProductRow {
    fn json(&self) -> Value {
        json!({"id": self.id, "sku": self.sku, "name": self.name, "description": self.description, "category": self.category,
               "price": money(self.price_minor, &self.currency), "stock": self.stock, "status": self.status, "version": self.version})
    }
}

fn product_json(p: &Product, version: u64) -> Value {
    json!({"id": p.id, "sku": p.sku.as_str(), "name": p.name, "description": p.description, "category": p.category,
           "price": p.price, "stock": p.stock, "status": if p.discontinued { "discontinued" } else { "active" }, "version": version})
}

const PRODUCT_COLUMNS: &str = "id, sku, name, description, category, price_minor, currency, stock, status, version";

pub async fn get_product(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    wait_for_tokens(&state, &headers, &["products"]).await?;
    let row: Option<ProductRow> =
        sqlx::query_as(&format!("SELECT {PRODUCT_COLUMNS} FROM rm_products WHERE id = $1")).bind(id).fetch_optional(&state.pool).await?;
    row.map(|r| Json(r.json())).ok_or(ApiError::NotFound("product"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductFilter {
    category: Option<String>,
    status: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
}

fn cursor_id(cursor: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    cursor.map(|c| Uuid::parse_str(c).map_err(|_| ApiError::malformed("cursor", "is not a cursor from an earlier page"))).transpose()
}

fn page(items: Vec<Value>, limit: i64, last: Option<String>) -> Json<Value> {
    let next = if items.len() as i64 == limit { last } else { None };
    Json(json!({"items": items, "next_cursor": next}))
}

pub async fn list_products(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(filter): Query<ProductFilter>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(filter.limit)?;
    if let Some(status) = &filter.status
        && status != "active"
        && status != "discontinued"
    {
        return Err(ApiError::malformed("status", "must be active or discontinued"));
    }
    let after = cursor_id(filter.cursor.as_deref())?;
    wait_for_tokens(&state, &headers, &["products"]).await?;
    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM rm_products
          WHERE ($1::text IS NULL OR category = $1) AND ($2::text IS NULL OR status = $2)
            AND ($3::bigint IS NULL OR price_minor >= $3) AND ($4::bigint IS NULL OR price_minor <= $4)
            AND ($5::uuid IS NULL OR id > $5)
          ORDER BY id LIMIT $6"
    ))
    .bind(&filter.category)
    .bind(&filter.status)
    .bind(filter.min_price)
    .bind(filter.max_price)
    .bind(after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let last = rows.last().map(|r| r.id.to_string());
    Ok(page(rows.iter().map(ProductRow::json).collect(), limit, last))
}

// --- search ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: Option<String>,
    category: Option<String>,
    in_stock: Option<bool>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    sort: Option<String>,
    limit: Option<i64>,
    offset: Option<usize>,
}

pub async fn search_products(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    use projections::search::{SearchRequest, Sort};
    let sort = match q.sort.as_deref().unwrap_or("relevance") {
        "relevance" => Sort::Relevance,
        "price_asc" => Sort::PriceAsc,
        "price_desc" => Sort::PriceDesc,
        _ => return Err(ApiError::malformed("sort", "must be relevance, price_asc or price_desc")),
    };
    let offset = q.offset.unwrap_or(0);
    if offset > 10_000 {
        return Err(ApiError::malformed("offset", "must be at most 10000"));
    }
    let request = SearchRequest {
        q: q.q.unwrap_or_default(),
        category: q.category,
        in_stock: q.in_stock,
        min_price: q.min_price,
        max_price: q.max_price,
        sort,
        limit: limit(q.limit)? as usize,
        offset,
    };
    wait_for_index(&state, &headers).await?;
    let index = state.search.clone();
    let results =
        tokio::task::spawn_blocking(move || index.search(&request)).await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
    Ok(Json(serde_json::to_value(results).map_err(ApiError::internal)?))
}

// --- customers ---

#[derive(FromRow)]
struct CustomerRow {
    id: Uuid,
    email: String,
    name: String,
    shipping_address: Option<Value>,
    status: String,
    version: i64,
}

pub async fn get_customer(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    owner_or_admin(&principal(&state, &headers)?, id)?;
    wait_for_tokens(&state, &headers, &["customers"]).await?;
    let row: Option<CustomerRow> =
        sqlx::query_as("SELECT id, email, name, shipping_address, status, version FROM rm_customers WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    let c = row.ok_or(ApiError::NotFound("customer"))?;
    Ok(Json(
        json!({"id": c.id, "email": c.email, "name": c.name, "shipping_address": c.shipping_address, "status": c.status, "version": c.version}),
    ))
}

fn customer_json(c: &Customer, version: u64) -> Value {
    json!({"id": c.id, "email": c.email.as_str(), "name": c.name, "shipping_address": c.shipping_address,
           "status": if c.active { "active" } else { "deactivated" }, "version": version})
}

// --- orders ---

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

impl OrderRow {
    fn json(&self) -> Value {
        json!({"id": self.id, "customer_id": self.customer_id, "status": self.status, "lines": self.lines,
               "total": money(self.total_minor, &self.currency), "shipping_address": self.shipping_address,
               "placed_at": self.placed_at, "version": self.version})
    }
}

fn order_json(o: &Order, version: u64) -> Value {
    let lines: Vec<Value> = o
        .lines
        .iter()
        .map(|l| json!({"product_id": l.product_id, "quantity": l.quantity, "unit_price": l.unit_price, "line_total": l.line_total}))
        .collect();
    json!({"id": o.id, "customer_id": o.customer_id, "status": o.status.as_str(), "lines": lines, "total": o.total,
           "shipping_address": o.shipping_address, "version": version})
}

const ORDER_COLUMNS: &str = "id, customer_id, status, lines, total_minor, currency, shipping_address, placed_at, version";

pub async fn get_order(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let caller = principal(&state, &headers)?;
    if caller.is_none() {
        return Err(ApiError::Unauthorized("an Authorization: Bearer <JWT> header is required"));
    }
    wait_for_tokens(&state, &headers, &["orders"]).await?;
    let row: Option<OrderRow> =
        sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM rm_orders WHERE id = $1")).bind(id).fetch_optional(&state.pool).await?;
    let order = row.ok_or(ApiError::NotFound("order"))?;
    owner_or_admin(&caller, order.customer_id)?;
    Ok(Json(order.json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderFilter {
    status: Option<String>,
    customer_id: Option<Uuid>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn orders_page(state: &AppState, headers: &HeaderMap, filter: OrderFilter) -> Result<Json<Value>, ApiError> {
    let limit = limit(filter.limit)?;
    let after = cursor_id(filter.cursor.as_deref())?;
    wait_for_tokens(state, headers, &["orders"]).await?;
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
    let last = rows.last().map(|r| r.id.to_string());
    Ok(page(rows.iter().map(OrderRow::json).collect(), limit, last))
}

pub async fn list_orders(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(mut filter): Query<OrderFilter>,
) -> Result<Json<Value>, ApiError> {
    match principal(&state, &headers)? {
        None => return Err(ApiError::Unauthorized("an Authorization: Bearer <JWT> header is required")),
        Some(p) if p.role == Role::Customer => {
            // A customer lists its own orders only.
            let own = Uuid::parse_str(&p.sub).map_err(|_| ApiError::Forbidden("a customer token's subject must be its customer id"))?;
            if filter.customer_id.is_some_and(|c| c != own) {
                return Err(ApiError::Forbidden("customers may read only their own records"));
            }
            filter.customer_id = Some(own);
        }
        Some(_) => {}
    }
    orders_page(&state, &headers, filter).await
}

pub async fn customer_orders(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(mut filter): Query<OrderFilter>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    owner_or_admin(&principal(&state, &headers)?, id)?;
    filter.customer_id = Some(id);
    orders_page(&state, &headers, filter).await
}

// --- time travel ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtQuery {
    version: Option<u64>,
    time: Option<DateTime<Utc>>,
}

/// Folds a stream up to a version or a time.
async fn fold_until<A: Aggregate>(state: &AppState, stream: &str, at: &AtQuery) -> Result<(A::State, u64), ApiError> {
    if at.version.is_some() == at.time.is_some() {
        return Err(ApiError::malformed("version", "give exactly one of version or time"));
    }
    let mut folded = A::State::default();
    let mut version = None;
    let mut from = 0;
    'pages: loop {
        let page = state.log.read_stream(stream, from, 1000).await?;
        for recorded in &page {
            let past = at.version.is_some_and(|v| recorded.stream_version > v) || at.time.is_some_and(|t| recorded.recorded_at > t);
            if past {
                break 'pages;
            }
            let event = <A::Event as domain::events::EventCodec>::decode(&recorded.event_type, recorded.schema_version, &recorded.data)
                .map_err(ApiError::internal)?;
            folded = A::evolve(folded, &event);
            version = Some(recorded.stream_version);
        }
        if page.len() < 1000 {
            break;
        }
        from += 1000;
    }
    version.map(|v| (folded, v)).ok_or(ApiError::NotFound("entity at that point"))
}

pub async fn product_at(State(state): State<AppState>, Path(id): Path<String>, Query(at): Query<AtQuery>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let (product, version) = fold_until::<ProductAggregate>(&state, &stream_id::<ProductAggregate>(id), &at).await?;
    let product = product.ok_or(ApiError::NotFound("product"))?;
    Ok(Json(product_json(&product, version)))
}

pub async fn customer_at(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(at): Query<AtQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    owner_or_admin(&principal(&state, &headers)?, id)?;
    let (customer, version) = fold_until::<CustomerAggregate>(&state, &stream_id::<CustomerAggregate>(id), &at).await?;
    let customer = customer.ok_or(ApiError::NotFound("customer"))?;
    Ok(Json(customer_json(&customer, version)))
}

pub async fn order_at(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(at): Query<AtQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let caller = principal(&state, &headers)?;
    if caller.is_none() {
        return Err(ApiError::Unauthorized("an Authorization: Bearer <JWT> header is required"));
    }
    let (order, version) = fold_until::<OrderAggregate>(&state, &stream_id::<OrderAggregate>(id), &at).await?;
    let order = order.ok_or(ApiError::NotFound("order"))?;
    owner_or_admin(&caller, order.customer_id)?;
    Ok(Json(order_json(&order, version)))
}

// --- reports, history, audit, projections ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesQuery {
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    group_by: Option<String>,
}

pub async fn sales_report(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<SalesQuery>) -> Result<Json<Value>, ApiError> {
    admin(&principal(&state, &headers)?)?;
    wait_for_tokens(&state, &headers, &["sales"]).await?;
    let (from, to) = (q.from, q.to);
    let items: Vec<Value> = match q.group_by.as_deref().unwrap_or("day") {
        "day" => {
            let rows: Vec<(NaiveDate, String, i64, i64, i64)> = sqlx::query_as(
                "SELECT day, currency, orders, units, revenue_minor FROM rm_sales_daily WHERE ($1::date IS NULL OR day >= $1) AND ($2::date IS NULL OR day <= $2) ORDER BY day, currency",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&state.pool)
            .await?;
            rows.into_iter()
                .map(|(day, currency, orders, units, revenue)| json!({"day": day, "orders": orders, "units": units, "revenue": money(revenue, &currency)}))
                .collect()
        }
        "product" => {
            let rows: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
                "SELECT product_id, currency, sum(units)::bigint, sum(revenue_minor)::bigint FROM rm_sales_by_product
                  WHERE ($1::date IS NULL OR day >= $1) AND ($2::date IS NULL OR day <= $2) GROUP BY product_id, currency ORDER BY 4 DESC, 1",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&state.pool)
            .await?;
            rows.into_iter()
                .map(|(product, currency, units, revenue)| json!({"product_id": product, "units": units, "revenue": money(revenue, &currency)}))
                .collect()
        }
        _ => return Err(ApiError::malformed("group_by", "must be day or product")),
    };
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from_version: Option<u64>,
    limit: Option<i64>,
}

pub async fn stream_events(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&principal(&state, &headers)?)?;
    let limit = limit(q.limit)?;
    let events = state.log.read_stream(&stream, q.from_version.unwrap_or(0), limit as usize).await?;
    let next = if events.len() as i64 == limit { events.last().map(|e| e.stream_version + 1) } else { None };
    Ok(Json(json!({"events": events, "next_from_version": next})))
}

#[derive(Deserialize)]
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

#[derive(FromRow)]
struct AuditRow {
    global_position: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    actor: String,
    role: Option<String>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
}

pub async fn audit(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Result<Json<Value>, ApiError> {
    admin(&principal(&state, &headers)?)?;
    let limit = limit(q.limit)?;
    let after: Option<i64> = q
        .cursor
        .as_deref()
        .map(|c| c.parse().map_err(|_| ApiError::malformed("cursor", "is not a cursor from an earlier page")))
        .transpose()?;
    wait_for_tokens(&state, &headers, &["audit"]).await?;
    let rows: Vec<AuditRow> = sqlx::query_as(
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
    let last = rows.last().map(|r| r.global_position.to_string());
    let items = rows
        .iter()
        .map(|r| {
            json!({"global_position": r.global_position, "event_id": r.event_id, "stream_id": r.stream_id, "stream_version": r.stream_version,
                   "event_type": r.event_type, "actor": r.actor, "role": r.role, "correlation_id": r.correlation_id,
                   "causation_id": r.causation_id, "occurred_at": r.occurred_at, "recorded_at": r.recorded_at})
        })
        .collect();
    Ok(page(items, limit, last))
}

pub async fn list_projections(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut items: Vec<Value> = projections::status(&state.pool).await?.into_iter().map(|s| json!(s)).collect();
    // This node's search index lives beside the query API, not in PostgreSQL.
    let position = state.search.position();
    let (lag_events, lag_seconds) = projections::lag(&state.pool, position).await?;
    items.push(json!({"name": "search", "version": projections::search::INDEX_VERSION, "position": position,
                      "lag_events": lag_events, "lag_seconds": lag_seconds,
                      "state": "running", "parked": 0, "last_error": null}));
    Ok(Json(json!({"items": items, "next_cursor": null})))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.pool)).await {
        Ok(Ok(_)) => "ready".into_response(),
        _ => ApiError::Unavailable.into_response(),
    }
}
