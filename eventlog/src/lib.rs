//! The event log port and its adapters.
//!
//! `EventLog` is the one trait every backend implements; the shared contract
//! suite (`tests/contract.rs`) holds each adapter to the same guarantees:
//! optimistic concurrency per stream, atomic multi-stream appends, gapless
//! per-stream versions, and a global order in which a tailing reader never
//! skips an event.

pub mod backup;
#[cfg(test)]
mod counted;
pub mod database;
mod envelope;
mod fold;
mod group_commit;
mod mac;
mod memory;
pub mod migrations;
mod postgres;
pub mod progress;
pub mod seal;
mod shared_tail;
pub mod source;
mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
pub mod vault;

pub use envelope::{
    AppendResult, ExpectedVersion, Metadata, NewEvent, Receipt, RecordedEvent, StreamAppended, StreamWrite, validate as validate_append,
};
pub use fold::{FoldError, Folded, PAST_FOLD_BUDGET, SNAPSHOT_BLOCK, SNAPSHOT_EVERY, Until, fold_stream, fold_until, load};
pub use group_commit::{DEFAULT_COMMITTERS as DEFAULT_APPEND_COMMITTERS, MAX_COMMITTERS as MAX_APPEND_COMMITTERS, QUEUED as APPEND_QUEUE};
pub use mac::{hmac_sha256, hmac_sha256_matches};
pub use memory::InMemoryEventLog;
pub use postgres::{PgEventLog, migrate, purge_receipts};
pub use shared_tail::SharedTail;
pub use source::{
    Batch, Consumer, EventSource, InProcessSource, Progress, Resume, SourceFactory, Unreadable, follow, in_process, partition_for,
};
pub use subscription::Subscription;
pub use vault::{Vault, VaultedLog};

use async_trait::async_trait;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("stream {stream_id} expected {expected}, but its current version is {}", actual.map_or("none (no stream)".to_string(), |v| v.to_string()))]
    VersionConflict { stream_id: String, expected: ExpectedVersion, actual: Option<u64> },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The append holds personal data of a customer whose key is deleted.
    #[error("customer {0} is forgotten: no personal data is written for it")]
    Forgotten(uuid::Uuid),
    #[error("event log backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// More appends waiting than the log queues: nothing was written; try
    /// again after a moment.
    #[error("the event log is at capacity: too many appends waiting")]
    Overloaded,
}

impl EventLogError {
    /// Whether an append that failed so may still have been committed: the
    /// connection was lost or timed out mid-way, so its outcome is unknown.
    /// Every other failure was answered by the log or the database, and
    /// nothing of that append was written.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            EventLogError::Backend(source) => {
                !matches!(source.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut))
            }
            _ => false,
        }
    }
}

impl From<sqlx::Error> for EventLogError {
    fn from(e: sqlx::Error) -> Self {
        EventLogError::Backend(Box::new(e))
    }
}

/// The append-only log of events.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends to one or more streams, atomically: every write's expected
    /// version holds and all events are stored, or nothing is. Acknowledged
    /// only once durable.
    async fn append(&self, writes: Vec<StreamWrite>) -> Result<AppendResult, EventLogError> {
        self.append_once(writes, None).await
    }

    /// `append`, recorded under `receipt` in the same transaction when one
    /// is given: a repeat within 24 hours appends nothing and answers the
    /// first append's result (`replayed`), whatever it is asked to write.
    async fn append_once(&self, writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError>;

    /// Events of one stream with `stream_version >= from_version`, in order.
    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError>;

    /// Events with a global position above `after` (0 reads from the
    /// start), in global order. Never returns an event while one with a
    /// lower position may still appear: what it skips past is final.
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError>;

    /// The result of the append recorded under `receipt` within the last
    /// 24 hours (see `append_once`).
    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError>;

    /// The newest stored snapshot of `stream_id`, if any.
    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError>;

    /// The newest stored snapshot of `stream_id` at or before stream
    /// version `version`. Adapters that keep only the newest answer it
    /// when it is early enough.
    async fn snapshot_at_most(&self, stream_id: &str, version: u64) -> Result<Option<Snapshot>, EventLogError> {
        Ok(self.snapshot(stream_id).await?.filter(|s| s.version <= version))
    }

    /// Stores `snapshot`. A snapshot of another shape (snapshot version)
    /// replaces the stream's older ones whatever its version; of the same
    /// shape, adapters that keep a history add it (one taken in the past
    /// by time travel), the others keep the newest. Snapshots are a
    /// cache: nothing depends on one being kept.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError>;

    /// A counter that moves after every append this process makes, so that
    /// local subscribers wake at once instead of at their next poll.
    fn appends(&self) -> watch::Receiver<u64>;

    /// The highest position an append has taken so far, where the adapter
    /// knows it (`None`: it does not say). No write has produced a
    /// consistency token beyond it.
    async fn head(&self) -> Result<Option<u64>, EventLogError> {
        Ok(None)
    }

    /// The highest position up to which every event is final: `read_all`
    /// hands all of them out, and no append still under way can add one
    /// at or below it. By default the head, for adapters whose appends are
    /// final once their positions are taken.
    async fn frontier(&self) -> Result<Option<u64>, EventLogError> {
        self.head().await
    }
}

/// A stream's folded state after its event at `version`, in the shape of
/// the aggregate's `SNAPSHOT_VERSION`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream_id: String,
    pub snapshot_version: u32,
    pub version: u64,
    pub position: u64,
    pub state: serde_json::Value,
}

/// The largest number of events one append takes.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_or_broken_connection_leaves_an_appends_outcome_unknown() {
        let lost = EventLogError::from(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")));
        assert!(lost.outcome_unknown());
        assert!(EventLogError::from(sqlx::Error::Protocol("garbled".into())).outcome_unknown());
        assert!(!EventLogError::from(sqlx::Error::PoolTimedOut).outcome_unknown(), "no connection, nothing sent");
        assert!(!EventLogError::InvalidAppend("bad".into()).outcome_unknown());
        assert!(!EventLogError::Forgotten(uuid::Uuid::nil()).outcome_unknown());
    }
}
