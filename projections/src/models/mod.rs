//! The read models behind the query API, one file each. Each update is
//! guarded by the stream version, so applying an event twice would change
//! nothing even without the runner's checkpoint.
//!
//! A read model has one way of applying events, a batch at a time: one
//! event is a batch of one (`ReadModel`), so event by event and in batches
//! cannot disagree.

mod audit;
mod customers;
mod orders;
mod products;
mod sales;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::events::{DomainEvent, EventCodec};
use eventlog::RecordedEvent;
use sqlx::PgConnection;
use uuid::Uuid;

pub use audit::AuditProjection;
pub use customers::CustomersProjection;
pub use orders::OrdersProjection;
pub use products::ProductsProjection;
pub use sales::SalesProjection;

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

/// Whether `event_type` is one of `E`'s.
fn of<E: EventCodec>(event_type: &str) -> bool {
    E::TYPES.iter().any(|(ty, _)| *ty == event_type)
}

/// A read model of this crate: what makes it a `Projection`, declared once
/// each, and the one way it applies events, a batch at a time.
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    const NAME: &'static str;
    /// Bumped when the read model's shape or logic changes.
    const VERSION: i32;
    const TABLES: &'static [&'static str];
    fn handles(event_type: &str) -> bool;
    async fn apply_batch(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError>;
}

#[async_trait]
impl<M: ReadModel> Projection for M {
    fn name(&self) -> &'static str {
        M::NAME
    }
    fn version(&self) -> i32 {
        M::VERSION
    }
    fn handles(&self, event_type: &str) -> bool {
        M::handles(event_type)
    }
    /// One event is a batch of one.
    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        self.apply_batch(tx, &[(event, decoded)]).await
    }
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        self.apply_batch(tx, events).await
    }
    fn tables(&self) -> &'static [&'static str] {
        M::TABLES
    }
}

/// One event of a batch for a read model keyed by entity: the entity, the
/// event's stream version and when it was recorded.
struct Seen<'a, E> {
    id: Uuid,
    version: i64,
    at: DateTime<Utc>,
    event: &'a E,
}

/// The batch's events of one kind, leaving out those the read model has
/// already (by version).
async fn unseen<'a, E: 'a>(
    tx: &mut PgConnection,
    table: &str,
    events: &'a [(&RecordedEvent, &'a DomainEvent)],
    pick: impl Fn(&'a DomainEvent) -> Option<&'a E>,
) -> Result<Vec<Seen<'a, E>>, ApplyError> {
    let mut mine = Vec::new();
    for (event, decoded) in events {
        if let Some(e) = pick(decoded) {
            mine.push(Seen { id: entity_id(&event.stream_id)?, version: event.stream_version as i64, at: event.recorded_at, event: e });
        }
    }
    if mine.is_empty() {
        return Ok(mine);
    }
    let ids: Vec<Uuid> = mine.iter().map(|m| m.id).collect();
    let current: HashMap<Uuid, i64> = sqlx::query_as(&format!("SELECT id, version FROM {table} WHERE id = ANY($1)"))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    mine.retain(|m| current.get(&m.id).is_none_or(|v| *v < m.version));
    Ok(mine)
}

impl<'a, E> Seen<'a, E> {
    fn with<F>(&self, event: &'a F) -> Seen<'a, F> {
        Seen { id: self.id, version: self.version, at: self.at, event }
    }
}

/// Splits a batch's events into those `pick` takes (as what it picks out
/// of them: the events that create a row, say) and the others, each in
/// the batch's order.
#[allow(clippy::type_complexity)]
fn split<'a, E, F>(events: Vec<Seen<'a, E>>, pick: impl Fn(&'a E) -> Option<&'a F>) -> (Vec<Seen<'a, F>>, Vec<Seen<'a, E>>) {
    let (mut picked, mut others) = (Vec::new(), Vec::new());
    for seen in events {
        match pick(seen.event) {
            Some(event) => picked.push(seen.with(event)),
            None => others.push(seen),
        }
    }
    (picked, others)
}

/// What a batch changes of one row: the fields it sets (`T`), the version
/// of the last event and when that was recorded.
struct Net<T> {
    id: Uuid,
    change: T,
    version: i64,
    at: DateTime<Utc>,
}

/// The batch's changes to existing rows, one per row in id order: each
/// row's events folded into its change by `fold`, in the batch's order.
fn net<'a, E: 'a, T: Default>(events: Vec<Seen<'a, E>>, fold: impl Fn(&mut T, &'a E)) -> Vec<Net<T>> {
    let mut net: BTreeMap<Uuid, Net<T>> = BTreeMap::new();
    for seen in events {
        let n = net.entry(seen.id).or_insert_with(|| Net { id: seen.id, change: T::default(), version: seen.version, at: seen.at });
        fold(&mut n.change, seen.event);
        n.version = seen.version;
        n.at = seen.at;
    }
    net.into_values().collect()
}

/// One column of a batch statement's `unnest`: `f` of every row.
fn column<'a, R, T>(rows: &'a [R], f: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}
