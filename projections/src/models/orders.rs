//! `rm_orders`: every order with its lines, total and status; a forgotten
//! customer's orders keep their lines and amounts, not the address.

use async_trait::async_trait;
use domain::customer::CustomerEvent;
use domain::events::DomainEvent;
use domain::order::{OrderEvent, OrderPlaced, OrderStatus};
use eventlog::RecordedEvent;
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ReadModel, column, net, of, split, unseen};
use crate::{ApplyError, entity_id, names};

pub struct OrdersProjection;

/// An order's lines as the read model shows them.
fn lines(placed: &OrderPlaced) -> serde_json::Value {
    placed
        .lines
        .iter()
        .map(|l| json!({"product_id": l.product_id, "quantity": l.quantity, "unit_price": l.unit_price, "line_total": l.line_total}))
        .collect()
}

/// Scrubs the shipping address of forgotten customers' orders; their
/// lines and amounts stay.
async fn forget_orders_of(tx: &mut PgConnection, customers: &[Uuid]) -> Result<(), ApplyError> {
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
impl ReadModel for OrdersProjection {
    const NAME: &'static str = names::ORDERS;
    const VERSION: i32 = 1;
    const TABLES: &'static [&'static str] = &["rm_orders"];

    fn handles(event_type: &str) -> bool {
        of::<OrderEvent>(event_type) || event_type == domain::personal::FORGOTTEN
    }

    /// One insert for the batch's new orders and one update carrying each
    /// other order's last status.
    async fn apply_batch(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        let mine = unseen(tx, "rm_orders", events, |d| if let DomainEvent::Order(e) = d { Some(e) } else { None }).await?;
        let (placed, changed) = split(mine, |e| if let OrderEvent::Placed(p) = e { Some(p) } else { None });
        if !placed.is_empty() {
            sqlx::query(
                "INSERT INTO rm_orders (id, customer_id, status, lines, total_minor, currency, shipping_address, placed_at, version, updated_at)
                 SELECT id, customer_id, $9::text, lines::jsonb, total_minor, currency, address::jsonb, at, version, at
                   FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::timestamptz[], $8::bigint[])
                        AS t(id, customer_id, lines, total_minor, currency, address, at, version)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(column(&placed, |p| p.id))
            .bind(column(&placed, |p| p.event.customer_id))
            .bind(column(&placed, |p| lines(p.event).to_string()))
            .bind(column(&placed, |p| p.event.total.amount_minor))
            .bind(column(&placed, |p| p.event.total.currency.as_str()))
            .bind(column(&placed, |p| json!(p.event.shipping_address).to_string()))
            .bind(column(&placed, |p| p.at))
            .bind(column(&placed, |p| p.version))
            .bind(OrderStatus::Placed.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let net = net(changed, |status: &mut Option<OrderStatus>, e: &OrderEvent| *status = e.status_after().or(*status));
        if !net.is_empty() {
            sqlx::query(
                "UPDATE rm_orders o SET status = coalesce(u.status, o.status), version = u.version, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[]) AS u(id, status, version, at)
                  WHERE o.id = u.id AND o.version < u.version",
            )
            .bind(column(&net, |n| n.id))
            .bind(column(&net, |n| n.change.map(OrderStatus::as_str)))
            .bind(column(&net, |n| n.version))
            .bind(column(&net, |n| n.at))
            .execute(&mut *tx)
            .await?;
        }
        let forgotten: Vec<Uuid> = events
            .iter()
            .filter(|(_, d)| matches!(d, DomainEvent::Customer(CustomerEvent::Forgotten(_))))
            .map(|(e, _)| entity_id(&e.stream_id))
            .collect::<Result<_, _>>()?;
        forget_orders_of(tx, &forgotten).await
    }
}
