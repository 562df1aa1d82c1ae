//! `rm_products`: every product with its current details, price, stock
//! and status.

use async_trait::async_trait;
use domain::events::DomainEvent;
use domain::product::ProductEvent;
use eventlog::RecordedEvent;
use sqlx::PgConnection;

use super::{ReadModel, column, net, of, split, unseen};
use crate::{ApplyError, names};

pub struct ProductsProjection;

/// What a batch sets of one product; `None` keeps what the row has.
#[derive(Default)]
struct Change {
    name: Option<String>,
    description: Option<String>,
    category: Option<String>,
    price: Option<(i64, String)>,
    stock: Option<i64>,
    status: Option<&'static str>,
}

fn fold(n: &mut Change, event: &ProductEvent) {
    match event {
        ProductEvent::Added(_) => unreachable!("an added product is inserted, not changed"),
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
}

#[async_trait]
impl ReadModel for ProductsProjection {
    const NAME: &'static str = names::PRODUCTS;
    const VERSION: i32 = 1;
    const TABLES: &'static [&'static str] = &["rm_products"];

    fn handles(event_type: &str) -> bool {
        of::<ProductEvent>(event_type)
    }

    /// One insert for the batch's new products and one update carrying each
    /// other product's net change. Events the row already has (by version)
    /// are left out, so a redelivered batch changes nothing.
    async fn apply_batch(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        let mine = unseen(tx, "rm_products", events, |d| if let DomainEvent::Product(e) = d { Some(e) } else { None }).await?;
        let (added, changed) = split(mine, |e| if let ProductEvent::Added(a) = e { Some(a) } else { None });
        if !added.is_empty() {
            sqlx::query(
                "INSERT INTO rm_products (id, sku, name, description, category, price_minor, currency, stock, status, version, updated_at)
                 SELECT id, sku, name, description, category, price_minor, currency, stock, 'active', version, at
                   FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::timestamptz[])
                        AS t(id, sku, name, description, category, price_minor, currency, stock, version, at)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(column(&added, |a| a.id))
            .bind(column(&added, |a| a.event.sku.as_str()))
            .bind(column(&added, |a| a.event.name.as_str()))
            .bind(column(&added, |a| a.event.description.as_str()))
            .bind(column(&added, |a| a.event.category.as_str()))
            .bind(column(&added, |a| a.event.price.amount_minor))
            .bind(column(&added, |a| a.event.price.currency.as_str()))
            .bind(column(&added, |a| i64::from(a.event.initial_stock)))
            .bind(column(&added, |a| a.version))
            .bind(column(&added, |a| a.at))
            .execute(&mut *tx)
            .await?;
        }
        let net = net(changed, fold);
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
            .bind(column(&net, |n| n.id))
            .bind(column(&net, |n| n.change.name.clone()))
            .bind(column(&net, |n| n.change.description.clone()))
            .bind(column(&net, |n| n.change.category.clone()))
            .bind(column(&net, |n| n.change.price.as_ref().map(|p| p.0)))
            .bind(column(&net, |n| n.change.price.as_ref().map(|p| p.1.clone())))
            .bind(column(&net, |n| n.change.stock))
            .bind(column(&net, |n| n.change.status))
            .bind(column(&net, |n| n.version))
            .bind(column(&net, |n| n.at))
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}
