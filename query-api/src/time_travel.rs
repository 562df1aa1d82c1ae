//! `/{products|customers|orders}/{id}/at`: an entity folded from its
//! events up to a version or a time, straight from the log, and answered
//! in the form the read models' answers take. The fold starts from the
//! nearest snapshot at or before that point and is bounded
//! (`eventlog::fold_until`): a public read whose cost anyone could choose
//! by a product's history must not grow with it.

use chrono::{DateTime, Utc};
use domain::{Aggregate, StreamId};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::responses::{Customer, Order, Product};
use crate::{ApiError, AppState};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AtQuery {
    /// Fold up to and including this stream version (with `time` too,
    /// whichever comes first; with neither, all of it).
    #[schemars(range(max = u64::MAX))]
    pub version: Option<u64>,
    /// Fold the events recorded up to this time (RFC 3339, years 0 to 9999).
    pub time: Option<DateTime<Utc>>,
}

/// The entity `id` of `A` (a `what`) folded up to a version or a time, and
/// the stream version it was at.
pub async fn entity_at<A, T>(state: &AppState, id: Uuid, at: &AtQuery, what: &'static str) -> Result<(T, u64), ApiError>
where
    A: Aggregate<State = Option<T>>,
{
    crate::params::check_year("time", at.time.map(|t| chrono::Datelike::year(&t)))?;
    let until = match (at.version, at.time) {
        (Some(version), Some(time)) => eventlog::Until::Both(version, time),
        (Some(version), None) => eventlog::Until::Version(version),
        (None, Some(time)) => eventlog::Until::Time(time),
        (None, None) => eventlog::Until::Version(u64::MAX),
    };
    let folded = eventlog::fold_until::<A>(&*state.log, &StreamId::of::<A>(id).to_string(), until, eventlog::PAST_FOLD_BUDGET)
        .await
        .map_err(|e| match e {
            eventlog::FoldError::TooLong { budget, .. } => ApiError::HistoryTooLong(budget),
            eventlog::FoldError::Log(e) => e.into(),
            e @ eventlog::FoldError::Decode { .. } => ApiError::internal(e),
        })?;
    let version = folded.version.ok_or(ApiError::NotFound("entity at that point"))?;
    Ok((folded.state.ok_or(ApiError::NotFound(what))?, version))
}

impl Product {
    /// A product as folded from its events, at `version`.
    pub(crate) fn folded(p: domain::product::Product, version: u64) -> Product {
        Product {
            id: p.id,
            sku: p.sku.as_str().to_owned(),
            name: p.name,
            description: p.description,
            category: p.category,
            price: (&p.price).into(),
            stock: p.stock as i64,
            status: if p.discontinued { "discontinued" } else { "active" }.to_owned(),
            version: version as i64,
        }
    }
}

impl Customer {
    /// A customer as folded from its events, at `version`.
    pub(crate) fn folded(c: domain::customer::Customer, version: u64) -> Customer {
        let status = match (c.forgotten, c.active) {
            (true, _) => "forgotten",
            (false, true) => "active",
            (false, false) => "deactivated",
        };
        Customer {
            id: c.id,
            email: c.email.as_str().to_owned(),
            name: c.name,
            shipping_address: c.shipping_address.map(|a| json!(a)),
            status: status.to_owned(),
            version: version as i64,
        }
    }
}

impl Order {
    /// An order as folded from its events, at `version`. The fold does not
    /// keep when it was placed.
    pub(crate) fn folded(o: domain::order::Order, version: u64) -> Order {
        Order {
            id: o.id,
            customer_id: o.customer_id,
            status: o.status.as_str().to_owned(),
            lines: o.lines.iter().map(Into::into).collect(),
            total: (&o.total).into(),
            shipping_address: json!(o.shipping_address),
            placed_at: None,
            version: version as i64,
        }
    }
}
