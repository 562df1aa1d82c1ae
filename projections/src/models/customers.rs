//! `rm_customers`: every customer's record, scrubbed of personal data once
//! the customer is forgotten.

use async_trait::async_trait;
use domain::customer::CustomerEvent;
use domain::events::DomainEvent;
use eventlog::RecordedEvent;
use serde_json::json;
use sqlx::PgConnection;

use super::{ReadModel, Seen, column, net, of, split, unseen};
use crate::{ApplyError, names};

pub struct CustomersProjection;

/// What a batch sets of one customer; `None` keeps what the row has.
#[derive(Default)]
struct Change {
    email: Option<String>,
    address: Option<String>,
    status: Option<&'static str>,
}

fn fold(n: &mut Change, event: &CustomerEvent) {
    match event {
        CustomerEvent::Registered(_) | CustomerEvent::Forgotten(_) => unreachable!("set apart before the changes"),
        CustomerEvent::EmailChanged(c) => n.email = Some(c.email.as_str().to_owned()),
        CustomerEvent::ShippingAddressUpdated(u) => n.address = Some(json!(u.shipping_address).to_string()),
        CustomerEvent::Deactivated(_) => n.status = Some("deactivated"),
    }
}

/// Scrubs forgotten customers' rows to what a fold of their opened history
/// gives once their key is gone: every personal field redacted.
async fn forget<E>(tx: &mut PgConnection, forgotten: &[Seen<'_, E>]) -> Result<(), ApplyError> {
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
    .bind(column(forgotten, |f| f.id))
    .bind(column(forgotten, |f| f.version))
    .bind(column(forgotten, |f| f.at))
    .bind(domain::personal::REDACTED)
    .bind(json!(domain::Address::redacted()))
    .execute(tx)
    .await?;
    Ok(())
}

#[async_trait]
impl ReadModel for CustomersProjection {
    const NAME: &'static str = names::CUSTOMERS;
    const VERSION: i32 = 1;
    const TABLES: &'static [&'static str] = &["rm_customers"];

    fn handles(event_type: &str) -> bool {
        of::<CustomerEvent>(event_type)
    }

    /// One insert for the batch's new customers and one update carrying
    /// each other customer's net change, as for products; forgotten
    /// customers (a forget is the last event of its stream) are scrubbed
    /// after that.
    async fn apply_batch(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        let mine = unseen(tx, "rm_customers", events, |d| if let DomainEvent::Customer(e) = d { Some(e) } else { None }).await?;
        let (added, others) = split(mine, |e| if let CustomerEvent::Registered(r) = e { Some(r) } else { None });
        let (forgotten, changed) = split(others, |e| if let CustomerEvent::Forgotten(f) = e { Some(f) } else { None });
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO rm_customers (id, email, name, shipping_address, status, version, updated_at)
                 SELECT id, email, name, address::jsonb, 'active', version, at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[])
                        AS t(id, email, name, address, version, at)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(column(&added, |a| a.id))
            .bind(column(&added, |a| a.event.email.as_str()))
            .bind(column(&added, |a| a.event.name.as_str()))
            .bind(column(&added, |a| a.event.shipping_address.as_ref().map(|s| json!(s).to_string())))
            .bind(column(&added, |a| a.version))
            .bind(column(&added, |a| a.at))
            .execute(&mut *tx)
            .await?;
        }
        let net = net(changed, fold);
        if !net.is_empty() {
            sqlx::query(
                "UPDATE rm_customers c
                    SET email = coalesce(u.email, c.email), shipping_address = coalesce(u.address::jsonb, c.shipping_address),
                        status = coalesce(u.status, c.status), version = u.version, updated_at = u.at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[])
                        AS u(id, email, address, status, version, at)
                  WHERE c.id = u.id AND c.version < u.version",
            )
            .bind(column(&net, |n| n.id))
            .bind(column(&net, |n| n.change.email.clone()))
            .bind(column(&net, |n| n.change.address.clone()))
            .bind(column(&net, |n| n.change.status))
            .bind(column(&net, |n| n.version))
            .bind(column(&net, |n| n.at))
            .execute(&mut *tx)
            .await?;
        }
        forget(tx, &forgotten).await
    }
}
