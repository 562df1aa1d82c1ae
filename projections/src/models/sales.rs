//! Sales by day and by product (`rm_sales_daily`, `rm_sales_by_product`),
//! and what they need to remember of each order (`rm_sales_orders`).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::NaiveDate;
use domain::events::DomainEvent;
use domain::order::OrderEvent;
use eventlog::RecordedEvent;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ReadModel, column, of};
use crate::{ApplyError, entity_id, names};

/// Revenue counts when an order is paid and is taken back when a paid
/// order is cancelled.
pub struct SalesProjection;

/// An order as the sales remember it: its lines (product, quantity, line
/// total), the day it was booked on while paid, its currency, and the
/// stream version of the last of its events applied (none in rows from
/// before it was kept).
struct Remembered {
    lines: Vec<(Uuid, i64, i64)>,
    paid_day: Option<NaiveDate>,
    currency: String,
    version: Option<i64>,
    changed: bool,
}

#[async_trait]
impl ReadModel for SalesProjection {
    const NAME: &'static str = names::SALES;
    // 2: each order remembers the version of its last event applied.
    const VERSION: i32 = 2;
    const TABLES: &'static [&'static str] = &["rm_sales_daily", "rm_sales_by_product", "rm_sales_orders"];

    fn handles(event_type: &str) -> bool {
        of::<OrderEvent>(event_type)
    }

    /// One read of the batch's orders, the bookings summed in memory, then
    /// one upsert per table. Keys whose sums come to zero are still written,
    /// as booking and taking back event by event would leave them.
    async fn apply_batch(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        let mut mine = Vec::new();
        for (event, decoded) in events {
            if let DomainEvent::Order(e @ (OrderEvent::Placed(_) | OrderEvent::Paid(_) | OrderEvent::Cancelled(_))) = decoded {
                mine.push((entity_id(&event.stream_id)?, event.occurred_at.date_naive(), event.stream_version as i64, e));
            }
        }
        if mine.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = mine.iter().map(|m| m.0).collect();
        let rows: Vec<(Uuid, serde_json::Value, Option<NaiveDate>, String, Option<i64>)> =
            sqlx::query_as("SELECT order_id, lines, paid_day, currency, version FROM rm_sales_orders WHERE order_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        let mut orders = HashMap::new();
        for (id, lines, paid_day, currency, version) in rows {
            let lines = serde_json::from_value(lines).map_err(|e| ApplyError::Invalid(e.to_string()))?;
            orders.insert(id, Remembered { lines, paid_day, currency, version, changed: false });
        }
        // Wider than any one order: a sum of i64 line totals fits in i128,
        // and the columns are numeric.
        let mut daily: BTreeMap<(NaiveDate, String), (i64, i128, i128)> = BTreeMap::new();
        let mut by_product: BTreeMap<(NaiveDate, Uuid, String), (i128, i128)> = BTreeMap::new();
        for (id, day, version, e) in mine {
            let (sign, day) = match e {
                OrderEvent::Placed(p) => {
                    orders.entry(id).or_insert_with(|| Remembered {
                        lines: p.lines.iter().map(|l| (l.product_id, i64::from(l.quantity), l.line_total.amount_minor)).collect(),
                        paid_day: None,
                        currency: p.total.currency.as_str().to_owned(),
                        version: Some(version),
                        changed: true,
                    });
                    continue;
                }
                OrderEvent::Paid(_) => (1, day),
                _ => (-1, day),
            };
            let Some(order) = orders.get_mut(&id) else { continue };
            // Applied already (an event handed over again): booked once.
            if order.version.is_some_and(|applied| version <= applied) {
                continue;
            }
            order.version = Some(version);
            order.changed = true;
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
        }
        let changed: Vec<(&Uuid, &Remembered)> = orders.iter().filter(|(_, o)| o.changed).collect();
        if changed.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO rm_sales_orders (order_id, lines, paid_day, currency, version)
             SELECT id, lines::jsonb, paid_day, currency, version
               FROM unnest($1::uuid[], $2::text[], $3::date[], $4::text[], $5::bigint[]) AS t(id, lines, paid_day, currency, version)
             ON CONFLICT (order_id) DO UPDATE SET paid_day = EXCLUDED.paid_day, version = EXCLUDED.version",
        )
        .bind(column(&changed, |(id, _)| **id))
        .bind(column(&changed, |(_, o)| json!(o.lines).to_string()))
        .bind(column(&changed, |(_, o)| o.paid_day))
        .bind(column(&changed, |(_, o)| o.currency.as_str()))
        .bind(column(&changed, |(_, o)| o.version))
        .execute(&mut *tx)
        .await?;
        if !daily.is_empty() {
            let (keys, sums): (Vec<_>, Vec<_>) = daily.into_iter().unzip();
            sqlx::query(
                "INSERT INTO rm_sales_daily (day, currency, orders, units, revenue_minor)
                 SELECT day, currency, orders, units::bigint, revenue::numeric
                   FROM unnest($1::date[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS t(day, currency, orders, units, revenue)
                 ON CONFLICT (day, currency) DO UPDATE SET orders = rm_sales_daily.orders + EXCLUDED.orders,
                     units = rm_sales_daily.units + EXCLUDED.units, revenue_minor = rm_sales_daily.revenue_minor + EXCLUDED.revenue_minor",
            )
            .bind(column(&keys, |k: &(NaiveDate, String)| k.0))
            .bind(column(&keys, |k| k.1.as_str()))
            .bind(column(&sums, |v: &(i64, i128, i128)| v.0))
            .bind(column(&sums, |v| v.1.to_string()))
            .bind(column(&sums, |v| v.2.to_string()))
            .execute(&mut *tx)
            .await?;
            let (keys, sums): (Vec<_>, Vec<_>) = by_product.into_iter().unzip();
            sqlx::query(
                "INSERT INTO rm_sales_by_product (day, product_id, currency, units, revenue_minor)
                 SELECT day, product_id, currency, units::bigint, revenue::numeric
                   FROM unnest($1::date[], $2::uuid[], $3::text[], $4::text[], $5::text[]) AS t(day, product_id, currency, units, revenue)
                 ON CONFLICT (day, product_id, currency) DO UPDATE SET units = rm_sales_by_product.units + EXCLUDED.units,
                     revenue_minor = rm_sales_by_product.revenue_minor + EXCLUDED.revenue_minor",
            )
            .bind(column(&keys, |k: &(NaiveDate, Uuid, String)| k.0))
            .bind(column(&keys, |k| k.1))
            .bind(column(&keys, |k| k.2.as_str()))
            .bind(column(&sums, |v: &(i128, i128)| v.0.to_string()))
            .bind(column(&sums, |v| v.1.to_string()))
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
