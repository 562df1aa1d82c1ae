//! The read models behind the query API. Each update is guarded by the
//! stream version, so applying an event twice would change nothing even
//! without the runner's checkpoint.

use std::sync::Arc;

use async_trait::async_trait;
use domain::customer::CustomerEvent;
use domain::events::DomainEvent;
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

pub struct ProductsProjection;

#[async_trait]
impl Projection for ProductsProjection {
    fn name(&self) -> &'static str {
        names::PRODUCTS
    }
    fn version(&self) -> i32 {
        1
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
        let mut ids = Vec::new();
        for (event, decoded) in events {
            if let DomainEvent::Product(_) = decoded {
                ids.push(entity_id(&event.stream_id)?);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let current: std::collections::HashMap<uuid::Uuid, i64> = sqlx::query_as("SELECT id, version FROM rm_products WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let mut added: Vec<(uuid::Uuid, &ProductAdded, i64, chrono::DateTime<chrono::Utc>)> = Vec::new();
        let mut net: std::collections::BTreeMap<uuid::Uuid, Net> = std::collections::BTreeMap::new();
        for (event, decoded) in events {
            let DomainEvent::Product(e) = decoded else { continue };
            let id = entity_id(&event.stream_id)?;
            let version = event.stream_version as i64;
            if current.get(&id).is_some_and(|v| *v >= version) {
                continue;
            }
            if let ProductEvent::Added(a) = e {
                added.push((id, a, version, event.recorded_at));
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
            n.at = Some(event.recorded_at);
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

#[async_trait]
impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        names::CUSTOMERS
    }
    fn version(&self) -> i32 {
        1
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

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        let DomainEvent::Order(e) = decoded else { return Ok(()) };
        let id = entity_id(&event.stream_id)?;
        let version = event.stream_version as i64;
        let at = event.recorded_at;
        let status = match e {
            OrderEvent::Placed(p) => {
                let lines: Vec<_> = p
                    .lines
                    .iter()
                    .map(|l| json!({"product_id": l.product_id, "quantity": l.quantity, "unit_price": l.unit_price, "line_total": l.line_total}))
                    .collect();
                sqlx::query(
                    "INSERT INTO rm_orders (id, customer_id, status, lines, total_minor, currency, shipping_address, placed_at, version, updated_at)
                     VALUES ($1, $2, 'placed', $3, $4, $5, $6, $7, $8, $7) ON CONFLICT (id) DO NOTHING",
                )
                .bind(id)
                .bind(p.customer_id)
                .bind(json!(lines))
                .bind(p.total.amount_minor)
                .bind(p.total.currency.as_str())
                .bind(json!(p.shipping_address))
                .bind(at)
                .bind(version)
                .execute(tx)
                .await?;
                return Ok(());
            }
            OrderEvent::LineReserved(_) | OrderEvent::ReservationDiscarded(_) => None,
            OrderEvent::Confirmed(_) => Some("confirmed"),
            OrderEvent::Rejected(_) => Some("rejected"),
            OrderEvent::Paid(_) => Some("paid"),
            OrderEvent::Shipped(_) => Some("shipped"),
            OrderEvent::Delivered(_) => Some("delivered"),
            OrderEvent::Cancelled(_) => Some("cancelled"),
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

    fn tables(&self) -> &'static [&'static str] {
        &["rm_orders"]
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
