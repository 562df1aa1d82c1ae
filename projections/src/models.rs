//! The read models behind the query API. Each update is guarded by the
//! stream version, so applying an event twice would change nothing even
//! without the runner's checkpoint.

use std::sync::Arc;

use async_trait::async_trait;
use domain::customer::CustomerEvent;
use domain::events::DomainEvent;
use domain::order::OrderEvent;
use domain::product::ProductEvent;
use eventlog::RecordedEvent;
use serde_json::json;
use sqlx::PgConnection;

use crate::{ApplyError, Projection, entity_id};

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
        "products"
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

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE rm_products").execute(tx).await.map(|_| ())
    }
}

pub struct CustomersProjection;

#[async_trait]
impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        "customers"
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

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE rm_customers").execute(tx).await.map(|_| ())
    }
}

pub struct OrdersProjection;

#[async_trait]
impl Projection for OrdersProjection {
    fn name(&self) -> &'static str {
        "orders"
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

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE rm_orders").execute(tx).await.map(|_| ())
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
        let revenue: i64 = lines.iter().map(|l| l.2).sum();
        sqlx::query(
            "INSERT INTO rm_sales_daily (day, currency, orders, units, revenue_minor) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (day, currency) DO UPDATE SET orders = rm_sales_daily.orders + EXCLUDED.orders,
                 units = rm_sales_daily.units + EXCLUDED.units, revenue_minor = rm_sales_daily.revenue_minor + EXCLUDED.revenue_minor",
        )
        .bind(day)
        .bind(&currency)
        .bind(sign)
        .bind(sign * units)
        .bind(sign * revenue)
        .execute(&mut *tx)
        .await?;
        for (product, quantity, total) in &lines {
            sqlx::query(
                "INSERT INTO rm_sales_by_product (day, product_id, currency, units, revenue_minor) VALUES ($5, $1, $2, $3, $4)
                 ON CONFLICT (day, product_id, currency) DO UPDATE SET units = rm_sales_by_product.units + EXCLUDED.units,
                     revenue_minor = rm_sales_by_product.revenue_minor + EXCLUDED.revenue_minor",
            )
            .bind(product)
            .bind(&currency)
            .bind(sign * quantity)
            .bind(sign * total)
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
        "sales"
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

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE rm_sales_daily, rm_sales_by_product, rm_sales_orders").execute(tx).await.map(|_| ())
    }
}

/// Every event's who, when and why, across all streams.
pub struct AuditProjection;

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
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

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE rm_audit").execute(tx).await.map(|_| ())
    }
}
