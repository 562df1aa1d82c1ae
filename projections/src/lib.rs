//! Projections: read models built from the log.
//!
//! A projection applies events to its PostgreSQL tables. The runner feeds
//! it batches from an event source and writes the projection's checkpoint
//! in the same transaction as its rows, so a crash or a redelivery never
//! applies an event twice or skips one. An event that cannot be applied is
//! retried a bounded number of times, then parked in `dead_letters` with
//! its error, holding back the rest of its stream, while the projection
//! goes on with the others; transient failures are never parked (see
//! `dead_letters`).

mod dead_letters;
mod models;
pub mod names;
mod rebuild;
mod runner;
pub mod search;
mod status;
mod table_copy;
mod target;
mod together;
mod verify;

pub use dead_letters::{ParkedEntry, Retried, RetryError, forget_parked, parked_in_order, retry_parked};
pub use models::{AuditProjection, CustomersProjection, OrdersProjection, ProductsProjection, SalesProjection, all};
pub use rebuild::{RebuildProgress, rebuild_progress, request_rebuild};
pub use runner::Runner;
pub use status::{ConsumerKind, LAG_COUNTED_UP_TO, ProjectionStatus, ProjectionVersion, eta, lag, progress, status};
pub use verify::{Difference, Unapplied, Verification, VerifyError, verify};

use async_trait::async_trait;
use domain::events::DomainEvent;
use eventlog::RecordedEvent;
use sqlx::PgConnection;

/// Applies the read side's migrations.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    eventlog::migrations::apply(sqlx::migrate!("./migrations"), pool).await
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

/// One read model.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Bumped when the projection's shape or logic changes.
    fn version(&self) -> i32;
    /// Whether events of this type concern it. The runner neither decodes
    /// nor applies the others (nor parks them, nor holds them back): most
    /// read models care for a fifth of the log, and decoding the rest for
    /// each of them was a fair share of a catch-up's work.
    fn handles(&self, _event_type: &str) -> bool {
        true
    }
    /// Applies one event inside the runner's transaction.
    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError>;
    /// Applies a whole batch inside the runner's transaction. Projections
    /// that can write a batch in one statement override it; when it fails
    /// the runner falls back to `apply`, event by event.
    async fn apply_all(&self, tx: &mut PgConnection, events: &[(&RecordedEvent, &DomainEvent)]) -> Result<(), ApplyError> {
        for (event, decoded) in events {
            self.apply(tx, event, decoded).await?;
        }
        Ok(())
    }
    /// The tables it owns. A rebuild builds copies of them in a schema of
    /// its own and swaps them in when it has caught up.
    fn tables(&self) -> &'static [&'static str];
    /// Empties the projection's tables.
    async fn reset(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(&format!("TRUNCATE {}", self.tables().join(", "))).execute(tx).await.map(|_| ())
    }
}

/// The entity id of a `<category>-<uuid>` stream.
pub fn entity_id(stream_id: &str) -> Result<uuid::Uuid, ApplyError> {
    domain::StreamId::parse(stream_id)
        .map(|s| s.id)
        .map_err(|e| ApplyError::Invalid(format!("stream id {stream_id} is not <category>-<uuid>: {e}")))
}
