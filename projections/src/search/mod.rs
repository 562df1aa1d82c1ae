//! The product search index (tantivy), fed from the log.
//!
//! For every batch it re-reads the products the batch touched from the log
//! and replaces their documents (delete, then add, by product id);
//! discontinued products leave the index. How far the index has applied the
//! log (its `Progress`, per partition when fed from Kafka) rides in the
//! commit payload, so the index and its checkpoint can never disagree after
//! a crash. So does the index's generation, minted when the directory is
//! created: fed from Kafka, each node's index is its own consumer group,
//! and a new directory starts from the beginning. One reader serves
//! searches and is reloaded after each commit.

mod consumer;
mod directory;
mod index;
mod query;

pub use consumer::retry_parked;
pub use index::{INDEX_VERSION, SearchError, SearchIndex};
pub use query::{Hit, SearchRequest, SearchResults, Sort};

/// The index's name among consumers (and in `/v1/projections`).
pub const NAME: &str = crate::names::SEARCH;

impl SearchIndex {
    /// The index's state, shown beside the projections'. It lives with this
    /// node's query API rather than in PostgreSQL and is built again in
    /// place; what it could not apply is parked in PostgreSQL with the
    /// projections' (`consumer`), shared by every node's index.
    pub async fn status(&self, pool: &sqlx::PgPool) -> Result<crate::ProjectionStatus, sqlx::Error> {
        let position = self.position();
        let (lag_events, lag_seconds) = crate::lag(pool, position).await?;
        let (parked, last_error) = crate::status::parked(pool, NAME).await?;
        Ok(crate::ProjectionStatus {
            name: NAME.to_owned(),
            kind: crate::ConsumerKind::Index,
            version: crate::ProjectionVersion::Name(INDEX_VERSION.to_owned()),
            position,
            lag_events,
            lag_seconds,
            state: crate::status::state_with(parked),
            parked,
            last_error,
            events_per_second: self.events_per_second(),
            eta_seconds: crate::eta(lag_events, self.events_per_second()),
        })
    }
}
