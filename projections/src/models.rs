//! The read models behind the query API. Each update is guarded by the
//! stream version, so applying an event twice would change nothing even
//! without the runner's checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use domain::customer::CustomerEvent;
use domain::events::{DomainEvent, EventCodec};
use domain::order::OrderEvent;
use domain::product::{ProductAdded, ProductEvent};
use eventlog::RecordedEvent;
use serde_json::json;
use sqlx::PgConnection;

use crate::{ApplyError, Projection, entity_id, names};

/// Every projection the query API reads.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(ProductsProjection),
        Arc::new(CustomersProjection),
        Arc::new(OrdersProjection),
        Arc::new(SalesProjection),
        Arc::new(AuditProjection),
    ]
}

/// Whether `event_type` is one of `E`'s.
fn of<E: EventCodec>(event_type: &str) -> bool {
    E::TYPES.iter().any(|(ty, _)| *ty == event_type)
}

/// The batch's events of one kind, with their entity id, stream version and
/// time, leaving out those the read model has already (by version).
async fn unseen<'a, E: 'a>(
    tx: &mut PgConnection,
    table: &str,
    events: &'a [(&RecordedEvent, DomainEvent)],
    pick: impl Fn(&'a DomainEvent) -> Option<&'a E>,
) -> Result<Vec<(uuid::Uuid, i64, chrono::DateTime<chrono::Utc>, &'a E)>, ApplyError> {
    let mut mine = Vec::new();
    for (event, decoded) in events {
        if let Some(e) = pick(decoded) {
            mine.push((entity_id(&event.stream_id)?, event.stream_version as i64, event.recorded_at, e));
        }
    }
    if mine.is_empty() {
        return Ok(mine);
    }
    let ids: Vec<uuid::Uuid> = mine.iter().map(|m| m.0).collect();
    let current: HashMap<uuid::Uuid, i64> = sqlx::query_as(&format!("SELECT id, version FROM {table} WHERE id = ANY($1)"))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    mine.retain(|(id, version, _, _)| current.get(id).is_none_or(|v| v < version));
    Ok(mine)
}

pub struct ProductsProjection;

#[async_trait]
impl Projection for ProductsProjection {
    fn name(&self) -> &'static str {
        names::PRODUCTS
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, event_type: &str) -> bool {
        of::<ProductEvent>(event_type)
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        let DomainEvent::Product(e) = decoded else { return Ok(()) };
        let id = entity_id(&event.stream_id)?;
        let version = event.stream_version as i64;
        let at = event.recorded_at;
        if let ProductEvent::Added(a) = e {
            sqlx::query(
                "INSERT INTO rm_products (id, sku, name, description, category, price_minor, currency, stock, status, version, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9, $10) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(a.sku.as_str())
            .bind(&a.name)
            .bind(&a.description)
            .bind(&a.category)
            .bind(a.price.amount_minor)
            .bind(a.price.currency.as_str())
            .bind(i64::from(a.initial_stock))
            .bind(version)
            .bind(at)
            .execute(tx)
            .await?;
            return Ok(());
        }
        let (name, description, category, price, stock, status): (
            Option<&str>,
            Option<&str>,
            Option<&str>,
            Option<&domain::Money>,
            Option<u32>,
            Option<&str>,
        ) = match e {
            ProductEvent::Added(_) => unreachable!("handled above"),
            ProductEvent::DetailsUpdated(d) => (d.name.as_deref(), d.description.as_deref(), d.category.as_deref(), None, None, None),
            ProductEvent::PriceChanged(p) => (None, None, None, Some(&p.price), None, None),
            ProductEvent::Restocked(r) => (None, None, None, None, Some(r.stock_after), None),
            ProductEvent::StockReserved(r) => (None, None, None, None, Some(r.stock_after), None),
            ProductEvent::StockReservationReleased(r) => (None, None, None, None, Some(r.stock_after), None),
            ProductEvent::StockReservationFailed(_) => (None, None, None, None, None, None),
            ProductEvent::Discontinued(_) => (None, None, None, None, None, Some("discontinued")),
        };
        sqlx::query(
            "UPDATE rm_products SET name = coalesce($3, name), description = coalesce($4, description), category = coalesce($5, category),
                    price_minor = coalesce($6, price_minor), currency = coalesce($7, currency), stock = coalesce($8, stock),
                    status = coalesce($9, status), version = $2, updated_at = $10
              WHERE id = $1 AND version < $2",
        )
        .bind(id)
        .bind(version)
        .bind(name)
        .bind(description)
        .bind(category)
        .bind(price.map(|p| p.amount_minor))
        .bind(price.map(|p| p.currency.as_str()))
        .bind(stock.map(i64::from))
        .bind(status)
        .bind(at)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// One insert for the batch's new products and one update carrying each
    /// other product's net change. Events the row already has (by version)
    /// are left out, so a redelivered batch changes nothing.
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, DomainEvent)]) -> Result<(), ApplyError> {
        #[derive(Default)]
        struct Net {
            name: Option<String>,
            description: Option<String>,
            category: Option<String>,
            price: Option<(i64, String)>,
            stock: Option<i64>,
            status: Option<&'static str>,
            version: i64,
            at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let mine = unseen(tx, "rm_products", events, |d| match d {
            DomainEvent::Product(e) => Some(e),
            _ => None,
        })
        .await?;
        let mut added: Vec<(uuid::Uuid, &ProductAdded, i64, chrono::DateTime<chrono::Utc>)> = Vec::new();
        let mut net: BTreeMap<uuid::Uuid, Net> = BTreeMap::new();
        for (id, version, at, e) in mine {
            if let ProductEvent::Added(a) = e {
                added.push((id, a, version, at));
                continue;
            }
            let n = net.entry(id).or_default();
            match e {
                ProductEvent::Added(_) => unreachable!("handled above"),
                ProductEvent::DetailsUpdated(d) => {
                    n.name = d.name.clone().or(n.name.take());
                    n.description = d.description.clone().or(n.description.take());
                    n.category = d.category.clone().or(n.category.take());
                }
                ProductEvent::PriceChanged(p) => n.price = Some((p.price.amount_minor, p.price.currency.as_str().to_owned())),
                ProductEvent::Restocked(r) => n.stock = Some(i64::from(r.stock_after)),
                ProductEvent::StockReserved(r) => n.stock = Some(i64::from(r.stock_after)),
                ProductEvent::StockReservationReleased(r) => n.stock = Some(i64::from(r.stock_after)),
                ProductEvent::StockReservationFailed(_) => {}
                ProductEvent::Discontinued(_) => n.status = Some("discontinued"),
            }
            n.version = version;
            n.at = Some(at);
        }
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO rm_products (id, sku, name, description, category, price_minor, currency, stock, status, version, updated_at)
                 SELECT id, sku, name, description, category, price_minor, currency, stock, 'active', version, at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::timestamptz[])
                        AS t(id, sku, name, description, category, price_minor, currency, stock, version, at)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(added.iter().map(|a| a.0).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.sku.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.name.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.description.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.category.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.price.amount_minor).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.price.currency.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| i64::from(a.1.initial_stock)).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.2).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !net.is_empty() {
            sqlx::query(
                "UPDATE rm_products p
                    SET name = coalesce(u.name, p.name), description = coalesce(u.description, p.description),
                        category = coalesce(u.category, p.category), price_minor = coalesce(u.price_minor, p.price_minor),
                        currency = coalesce(u.currency, p.currency), stock = coalesce(u.stock, p.stock),
                        status = coalesce(u.status, p.status), version = u.version, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::timestamptz[])
                        AS u(id, name, description, category, price_minor, currency, stock, status, version, at)
                  WHERE p.id = u.id AND p.version < u.version",
            )
            .bind(net.keys().copied().collect::<Vec<_>>())
            .bind(net.values().map(|n| n.name.clone()).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.description.clone()).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.category.clone()).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.price.as_ref().map(|p| p.0)).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.price.as_ref().map(|p| p.1.clone())).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.stock).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.status).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.version).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_products"]
    }
}

pub struct CustomersProjection;

/// Scrubs forgotten customers' rows (id, version of `CustomerForgotten`,
/// recorded at) to what a fold of their opened history gives once their
/// key is gone: every personal field redacted.
async fn forget_customers(tx: &mut PgConnection, forgotten: &[(uuid::Uuid, i64, chrono::DateTime<chrono::Utc>)]) -> Result<(), ApplyError> {
    if forgotten.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE rm_customers c
            SET email = $4, name = $4, status = 'forgotten', version = f.version, updated_at = f.at,
                shipping_address = CASE WHEN c.shipping_address IS NULL THEN NULL ELSE $5 END
           FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[]) AS f(id, version, at)
          WHERE c.id = f.id AND c.version < f.version",
    )
    .bind(forgotten.iter().map(|f| f.0).collect::<Vec<_>>())
    .bind(forgotten.iter().map(|f| f.1).collect::<Vec<_>>())
    .bind(forgotten.iter().map(|f| f.2).collect::<Vec<_>>())
    .bind(domain::personal::REDACTED)
    .bind(json!(domain::Address::redacted()))
    .execute(tx)
    .await?;
    Ok(())
}

/// Scrubs the shipping address of forgotten customers' orders; their
/// lines and amounts stay.
async fn forget_orders_of(tx: &mut PgConnection, customers: &[uuid::Uuid]) -> Result<(), ApplyError> {
    if customers.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE rm_orders SET shipping_address = $2 WHERE customer_id = ANY($1)")
        .bind(customers)
        .bind(json!(domain::Address::redacted()))
        .execute(tx)
        .await?;
    Ok(())
}

#[async_trait]
impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        names::CUSTOMERS
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, event_type: &str) -> bool {
        of::<CustomerEvent>(event_type)
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        let DomainEvent::Customer(e) = decoded else { return Ok(()) };
        let id = entity_id(&event.stream_id)?;
        let version = event.stream_version as i64;
        let at = event.recorded_at;
        let (email, address, status) = match e {
            CustomerEvent::Registered(r) => {
                sqlx::query(
                    "INSERT INTO rm_customers (id, email, name, shipping_address, status, version, updated_at)
                     VALUES ($1, $2, $3, $4, 'active', $5, $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(r.email.as_str())
                .bind(&r.name)
                .bind(r.shipping_address.as_ref().map(|a| json!(a)))
                .bind(version)
                .bind(at)
                .execute(tx)
                .await?;
                return Ok(());
            }
            CustomerEvent::EmailChanged(c) => (Some(c.email.as_str()), None, None),
            CustomerEvent::ShippingAddressUpdated(u) => (None, Some(json!(u.shipping_address)), None),
            CustomerEvent::Deactivated(_) => (None, None, Some("deactivated")),
            CustomerEvent::Forgotten(_) => return forget_customers(tx, &[(id, version, at)]).await,
        };
        sqlx::query(
            "UPDATE rm_customers SET email = coalesce($3, email), shipping_address = coalesce($4, shipping_address),
                    status = coalesce($5, status), version = $2, updated_at = $6
              WHERE id = $1 AND version < $2",
        )
        .bind(id)
        .bind(version)
        .bind(email)
        .bind(address)
        .bind(status)
        .bind(at)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// One insert for the batch's new customers and one update carrying
    /// each other customer's net change, as for products.
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, DomainEvent)]) -> Result<(), ApplyError> {
        #[derive(Default)]
        struct Net {
            email: Option<String>,
            address: Option<String>,
            status: Option<&'static str>,
            version: i64,
            at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let mine = unseen(tx, "rm_customers", events, |d| match d {
            DomainEvent::Customer(e) => Some(e),
            _ => None,
        })
        .await?;
        let mut added = Vec::new();
        let mut forgotten = Vec::new();
        let mut net: BTreeMap<uuid::Uuid, Net> = BTreeMap::new();
        for (id, version, at, e) in mine {
            let n = match e {
                CustomerEvent::Registered(r) => {
                    added.push((id, r, version, at));
                    continue;
                }
                // Last of its stream: scrubbed after the net changes.
                CustomerEvent::Forgotten(_) => {
                    forgotten.push((id, version, at));
                    continue;
                }
                CustomerEvent::EmailChanged(c) => {
                    let n = net.entry(id).or_default();
                    n.email = Some(c.email.as_str().to_owned());
                    n
                }
                CustomerEvent::ShippingAddressUpdated(u) => {
                    let n = net.entry(id).or_default();
                    n.address = Some(json!(u.shipping_address).to_string());
                    n
                }
                CustomerEvent::Deactivated(_) => {
                    let n = net.entry(id).or_default();
                    n.status = Some("deactivated");
                    n
                }
            };
            n.version = version;
            n.at = Some(at);
        }
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO rm_customers (id, email, name, shipping_address, status, version, updated_at)
                 SELECT id, email, name, address::jsonb, 'active', version, at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[])
                        AS t(id, email, name, address, version, at)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(added.iter().map(|a| a.0).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.email.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.name.as_str()).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.1.shipping_address.as_ref().map(|s| json!(s).to_string())).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.2).collect::<Vec<_>>())
            .bind(added.iter().map(|a| a.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !net.is_empty() {
            sqlx::query(
                "UPDATE rm_customers c
                    SET email = coalesce(u.email, c.email), shipping_address = coalesce(u.address::jsonb, c.shipping_address),
                        status = coalesce(u.status, c.status), version = u.version, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[])
                        AS u(id, email, address, status, version, at)
                  WHERE c.id = u.id AND c.version < u.version",
            )
            .bind(net.keys().copied().collect::<Vec<_>>())
            .bind(net.values().map(|n| n.email.clone()).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.address.clone()).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.status).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.version).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        forget_customers(tx, &forgotten).await
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_customers"]
    }
}

pub struct OrdersProjection;

#[async_trait]
impl Projection for OrdersProjection {
    fn name(&self) -> &'static str {
        names::ORDERS
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, event_type: &str) -> bool {
        of::<OrderEvent>(event_type) || event_type == "CustomerForgotten"
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        if let DomainEvent::Customer(CustomerEvent::Forgotten(_)) = decoded {
            return forget_orders_of(tx, &[entity_id(&event.stream_id)?]).await;
        }
        let DomainEvent::Order(e) = decoded else { return Ok(()) };
        let id = entity_id(&event.stream_id)?;
        let version = event.stream_version as i64;
        let at = event.recorded_at;
        let status = match e {
            OrderEvent::Placed(p) => {
                sqlx::query(
                    "INSERT INTO rm_orders (id, customer_id, status, lines, total_minor, currency, shipping_address, placed_at, version, updated_at)
                     VALUES ($1, $2, 'placed', $3, $4, $5, $6, $7, $8, $7) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(p.customer_id)
                .bind(order_lines(p))
                .bind(p.total.amount_minor)
                .bind(p.total.currency.as_str())
                .bind(json!(p.shipping_address))
                .bind(at)
                .bind(version)
                .execute(tx)
                .await?;
                return Ok(());
            }
            other => order_status(other),
        };
        sqlx::query("UPDATE rm_orders SET status = coalesce($3, status), version = $2, updated_at = $4 WHERE id = $1 AND version < $2")
            .bind(id)
            .bind(version)
            .bind(status)
            .bind(at)
            .execute(tx)
            .await?;
        Ok(())
    }

    /// One insert for the batch's new orders and one update carrying each
    /// other order's last status.
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, DomainEvent)]) -> Result<(), ApplyError> {
        let mine = unseen(tx, "rm_orders", events, |d| match d {
            DomainEvent::Order(e) => Some(e),
            _ => None,
        })
        .await?;
        let mut placed = Vec::new();
        let mut net: BTreeMap<uuid::Uuid, (Option<&'static str>, i64, chrono::DateTime<chrono::Utc>)> = BTreeMap::new();
        for (id, version, at, e) in mine {
            if let OrderEvent::Placed(p) = e {
                placed.push((id, p, version, at));
                continue;
            }
            let n = net.entry(id).or_insert((None, version, at));
            n.0 = order_status(e).or(n.0);
            n.1 = version;
            n.2 = at;
        }
        if !placed.is_empty() {
            sqlx::query(
                "INSERT INTO rm_orders (id, customer_id, status, lines, total_minor, currency, shipping_address, placed_at, version, updated_at)
                 SELECT id, customer_id, 'placed', lines::jsonb, total_minor, currency, address::jsonb, at, version, at
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::timestamptz[], $8::bigint[])
                        AS t(id, customer_id, lines, total_minor, currency, address, at, version)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(placed.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| p.1.customer_id).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| order_lines(p.1).to_string()).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| p.1.total.amount_minor).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| p.1.total.currency.as_str()).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| json!(p.1.shipping_address).to_string()).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| p.3).collect::<Vec<_>>())
            .bind(placed.iter().map(|p| p.2).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        if !net.is_empty() {
            sqlx::query(
                "UPDATE rm_orders o SET status = coalesce(u.status, o.status), version = u.version, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[]) AS u(id, status, version, at)
                  WHERE o.id = u.id AND o.version < u.version",
            )
            .bind(net.keys().copied().collect::<Vec<_>>())
            .bind(net.values().map(|n| n.0).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.1).collect::<Vec<_>>())
            .bind(net.values().map(|n| n.2).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        let forgotten: Vec<uuid::Uuid> = events
            .iter()
            .filter(|(_, d)| matches!(d, DomainEvent::Customer(CustomerEvent::Forgotten(_))))
            .map(|(e, _)| entity_id(&e.stream_id))
            .collect::<Result<_, _>>()?;
        forget_orders_of(tx, &forgotten).await
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_orders"]
    }
}

/// An order's lines as the read model shows them.
fn order_lines(placed: &domain::order::OrderPlaced) -> serde_json::Value {
    placed
        .lines
        .iter()
        .map(|l| json!({"product_id": l.product_id, "quantity": l.quantity, "unit_price": l.unit_price, "line_total": l.line_total}))
        .collect()
}

/// The status an order event leaves the order in, for those that change it.
fn order_status(event: &OrderEvent) -> Option<&'static str> {
    match event {
        OrderEvent::Placed(_) => Some("placed"),
        OrderEvent::LineReserved(_) | OrderEvent::ReservationDiscarded(_) => None,
        OrderEvent::Confirmed(_) => Some("confirmed"),
        OrderEvent::Rejected(_) => Some("rejected"),
        OrderEvent::Paid(_) => Some("paid"),
        OrderEvent::Shipped(_) => Some("shipped"),
        OrderEvent::Delivered(_) => Some("delivered"),
        OrderEvent::Cancelled(_) => Some("cancelled"),
    }
}

/// Sales by day and by product. Revenue counts when an order is paid and is
/// taken back when a paid order is cancelled.
pub struct SalesProjection;

impl SalesProjection {
    async fn book(tx: &mut PgConnection, order: uuid::Uuid, sign: i64, day: Option<chrono::NaiveDate>) -> Result<(), ApplyError> {
        let row: Option<(serde_json::Value, Option<chrono::NaiveDate>, String)> =
            sqlx::query_as("SELECT lines, paid_day, currency FROM rm_sales_orders WHERE order_id = $1")
                .bind(order)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((lines, paid_day, currency)) = row else { return Ok(()) };
        let day = match (sign, day, paid_day) {
            (1, Some(day), None) => day,
            (-1, _, Some(paid_day)) => paid_day,
            _ => return Ok(()),
        };
        let lines: Vec<(uuid::Uuid, i64, i64)> = serde_json::from_value(lines).map_err(|e| ApplyError::Invalid(e.to_string()))?;
        let units: i64 = lines.iter().map(|l| l.1).sum();
        // Wider than any one order: a sum of i64 line totals fits in i128,
        // and the columns are numeric.
        let revenue: i128 = lines.iter().map(|l| i128::from(l.2)).sum();
        sqlx::query(
            "INSERT INTO rm_sales_daily (day, currency, orders, units, revenue_minor) VALUES ($1, $2, $3, $4, $5::numeric)
             ON CONFLICT (day, currency) DO UPDATE SET orders = rm_sales_daily.orders + EXCLUDED.orders,
                 units = rm_sales_daily.units + EXCLUDED.units, revenue_minor = rm_sales_daily.revenue_minor + EXCLUDED.revenue_minor",
        )
        .bind(day)
        .bind(&currency)
        .bind(sign)
        .bind(sign * units)
        .bind((i128::from(sign) * revenue).to_string())
        .execute(&mut *tx)
        .await?;
        for (product, quantity, total) in &lines {
            sqlx::query(
                "INSERT INTO rm_sales_by_product (day, product_id, currency, units, revenue_minor) VALUES ($5, $1, $2, $3, $4::numeric)
                 ON CONFLICT (day, product_id, currency) DO UPDATE SET units = rm_sales_by_product.units + EXCLUDED.units,
                     revenue_minor = rm_sales_by_product.revenue_minor + EXCLUDED.revenue_minor",
            )
            .bind(product)
            .bind(&currency)
            .bind(sign * quantity)
            .bind((i128::from(sign) * i128::from(*total)).to_string())
            .bind(day)
            .execute(&mut *tx)
            .await?;
        }
        let paid_day = if sign > 0 { Some(day) } else { None };
        sqlx::query("UPDATE rm_sales_orders SET paid_day = $2 WHERE order_id = $1").bind(order).bind(paid_day).execute(tx).await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for SalesProjection {
    fn name(&self) -> &'static str {
        names::SALES
    }
    fn version(&self) -> i32 {
        1
    }
    fn handles(&self, event_type: &str) -> bool {
        of::<OrderEvent>(event_type)
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        let DomainEvent::Order(e) = decoded else { return Ok(()) };
        let order = entity_id(&event.stream_id)?;
        match e {
            OrderEvent::Placed(p) => {
                let lines: Vec<(uuid::Uuid, i64, i64)> =
                    p.lines.iter().map(|l| (l.product_id, i64::from(l.quantity), l.line_total.amount_minor)).collect();
                sqlx::query(
                    "INSERT INTO rm_sales_orders (order_id, lines, currency) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
                )
                .bind(order)
                .bind(json!(lines))
                .bind(p.total.currency.as_str())
                .execute(tx)
                .await?;
                Ok(())
            }
            OrderEvent::Paid(_) => Self::book(tx, order, 1, Some(event.occurred_at.date_naive())).await,
            OrderEvent::Cancelled(_) => Self::book(tx, order, -1, None).await,
            _ => Ok(()),
        }
    }

    /// One read of the batch's orders, the bookings summed in memory, then
    /// one upsert per table. Keys whose sums come to zero are still written,
    /// as booking and taking back event by event would leave them.
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, DomainEvent)]) -> Result<(), ApplyError> {
        struct Remembered {
            lines: Vec<(uuid::Uuid, i64, i64)>,
            paid_day: Option<chrono::NaiveDate>,
            currency: String,
            changed: bool,
        }
        let mut mine = Vec::new();
        for (event, decoded) in events {
            if let DomainEvent::Order(e @ (OrderEvent::Placed(_) | OrderEvent::Paid(_) | OrderEvent::Cancelled(_))) = decoded {
                mine.push((entity_id(&event.stream_id)?, event.occurred_at.date_naive(), e));
            }
        }
        if mine.is_empty() {
            return Ok(());
        }
        let ids: Vec<uuid::Uuid> = mine.iter().map(|m| m.0).collect();
        let rows: Vec<(uuid::Uuid, serde_json::Value, Option<chrono::NaiveDate>, String)> =
            sqlx::query_as("SELECT order_id, lines, paid_day, currency FROM rm_sales_orders WHERE order_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        let mut orders = HashMap::new();
        for (id, lines, paid_day, currency) in rows {
            let lines = serde_json::from_value(lines).map_err(|e| ApplyError::Invalid(e.to_string()))?;
            orders.insert(id, Remembered { lines, paid_day, currency, changed: false });
        }
        let mut daily: BTreeMap<(chrono::NaiveDate, String), (i64, i128, i128)> = BTreeMap::new();
        let mut by_product: BTreeMap<(chrono::NaiveDate, uuid::Uuid, String), (i128, i128)> = BTreeMap::new();
        for (id, day, e) in mine {
            let (sign, day) = match e {
                OrderEvent::Placed(p) => {
                    orders.entry(id).or_insert_with(|| Remembered {
                        lines: p.lines.iter().map(|l| (l.product_id, i64::from(l.quantity), l.line_total.amount_minor)).collect(),
                        paid_day: None,
                        currency: p.total.currency.as_str().to_owned(),
                        changed: true,
                    });
                    continue;
                }
                OrderEvent::Paid(_) => (1, day),
                _ => (-1, day),
            };
            let Some(order) = orders.get_mut(&id) else { continue };
            let day = match (sign, order.paid_day) {
                (1, None) => day,
                (-1, Some(paid_day)) => paid_day,
                _ => continue,
            };
            let d = daily.entry((day, order.currency.clone())).or_default();
            d.0 += sign;
            for (product, quantity, total) in &order.lines {
                let (quantity, total) = (i128::from(sign) * i128::from(*quantity), i128::from(sign) * i128::from(*total));
                d.1 += quantity;
                d.2 += total;
                let p = by_product.entry((day, *product, order.currency.clone())).or_default();
                p.0 += quantity;
                p.1 += total;
            }
            order.paid_day = (sign > 0).then_some(day);
            order.changed = true;
        }
        let changed: Vec<(&uuid::Uuid, &Remembered)> = orders.iter().filter(|(_, o)| o.changed).collect();
        if changed.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_sales_orders (order_id, lines, paid_day, currency)
             SELECT id, lines::jsonb, paid_day, currency FROM unnest($1::uuid[], $2::text[], $3::date[], $4::text[]) AS t(id, lines, paid_day, currency)
             ON CONFLICT (order_id) DO UPDATE SET paid_day = EXCLUDED.paid_day",
        )
        .bind(changed.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(changed.iter().map(|(_, o)| json!(o.lines).to_string()).collect::<Vec<_>>())
        .bind(changed.iter().map(|(_, o)| o.paid_day).collect::<Vec<_>>())
        .bind(changed.iter().map(|(_, o)| o.currency.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        if !daily.is_empty() {
            sqlx::query(
                "INSERT INTO rm_sales_daily (day, currency, orders, units, revenue_minor)
                 SELECT day, currency, orders, units::bigint, revenue::numeric
                   FROM unnest($1::date[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS t(day, currency, orders, units, revenue)
                 ON CONFLICT (day, currency) DO UPDATE SET orders = rm_sales_daily.orders + EXCLUDED.orders,
                     units = rm_sales_daily.units + EXCLUDED.units, revenue_minor = rm_sales_daily.revenue_minor + EXCLUDED.revenue_minor",
            )
            .bind(daily.keys().map(|k| k.0).collect::<Vec<_>>())
            .bind(daily.keys().map(|k| k.1.as_str()).collect::<Vec<_>>())
            .bind(daily.values().map(|v| v.0).collect::<Vec<_>>())
            .bind(daily.values().map(|v| v.1.to_string()).collect::<Vec<_>>())
            .bind(daily.values().map(|v| v.2.to_string()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO rm_sales_by_product (day, product_id, currency, units, revenue_minor)
                 SELECT day, product_id, currency, units::bigint, revenue::numeric
                   FROM unnest($1::date[], $2::uuid[], $3::text[], $4::text[], $5::text[]) AS t(day, product_id, currency, units, revenue)
                 ON CONFLICT (day, product_id, currency) DO UPDATE SET units = rm_sales_by_product.units + EXCLUDED.units,
                     revenue_minor = rm_sales_by_product.revenue_minor + EXCLUDED.revenue_minor",
            )
            .bind(by_product.keys().map(|k| k.0).collect::<Vec<_>>())
            .bind(by_product.keys().map(|k| k.1).collect::<Vec<_>>())
            .bind(by_product.keys().map(|k| k.2.as_str()).collect::<Vec<_>>())
            .bind(by_product.values().map(|v| v.0.to_string()).collect::<Vec<_>>())
            .bind(by_product.values().map(|v| v.1.to_string()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_sales_daily", "rm_sales_by_product", "rm_sales_orders"]
    }
}

/// Every event's who, when and why, across all streams.
pub struct AuditProjection;

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        names::AUDIT
    }
    fn version(&self) -> i32 {
        1
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, _: &DomainEvent) -> Result<(), ApplyError> {
        let m = &event.metadata;
        sqlx::query(
            "INSERT INTO rm_audit (global_position, event_id, stream_id, stream_version, event_type, actor, role, correlation_id, causation_id, occurred_at, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(event.global_position as i64)
        .bind(event.event_id)
        .bind(&event.stream_id)
        .bind(event.stream_version as i64)
        .bind(&event.event_type)
        .bind(&m.actor)
        .bind(&m.role)
        .bind(m.correlation_id)
        .bind(m.causation_id)
        .bind(event.occurred_at)
        .bind(event.recorded_at)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// One statement for the whole batch.
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, DomainEvent)]) -> Result<(), ApplyError> {
        let positions: Vec<i64> = events.iter().map(|(e, _)| e.global_position as i64).collect();
        let event_ids: Vec<uuid::Uuid> = events.iter().map(|(e, _)| e.event_id).collect();
        let streams: Vec<&str> = events.iter().map(|(e, _)| e.stream_id.as_str()).collect();
        let versions: Vec<i64> = events.iter().map(|(e, _)| e.stream_version as i64).collect();
        let types: Vec<&str> = events.iter().map(|(e, _)| e.event_type.as_str()).collect();
        let actors: Vec<&str> = events.iter().map(|(e, _)| e.metadata.actor.as_str()).collect();
        let roles: Vec<Option<&str>> = events.iter().map(|(e, _)| e.metadata.role.as_deref()).collect();
        let correlations: Vec<uuid::Uuid> = events.iter().map(|(e, _)| e.metadata.correlation_id).collect();
        let causations: Vec<Option<uuid::Uuid>> = events.iter().map(|(e, _)| e.metadata.causation_id).collect();
        let occurred: Vec<chrono::DateTime<chrono::Utc>> = events.iter().map(|(e, _)| e.occurred_at).collect();
        let recorded: Vec<chrono::DateTime<chrono::Utc>> = events.iter().map(|(e, _)| e.recorded_at).collect();
        sqlx::query(
            "INSERT INTO rm_audit (global_position, event_id, stream_id, stream_version, event_type, actor, role, correlation_id, causation_id, occurred_at, recorded_at)
             SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::uuid[], $9::uuid[], $10::timestamptz[], $11::timestamptz[])
             ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(&positions)
        .bind(&event_ids)
        .bind(&streams)
        .bind(&versions)
        .bind(&types)
        .bind(&actors)
        .bind(&roles)
        .bind(&correlations)
        .bind(&causations)
        .bind(&occurred)
        .bind(&recorded)
        .execute(tx)
        .await?;
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_audit"]
    }
}
