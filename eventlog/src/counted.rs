//! The in-memory log, counting the reads that reach it: for unit tests of
//! what sits above the log (sharing reads, reading ahead).

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    AppendResult, EventLog, EventLogError, ExpectedVersion, InMemoryEventLog, Metadata, NewEvent, Receipt, RecordedEvent, Snapshot,
    StreamWrite,
};

#[derive(Default)]
pub(crate) struct Counted(pub(crate) InMemoryEventLog, pub(crate) AtomicUsize);

impl Counted {
    pub(crate) fn reads(&self) -> usize {
        self.1.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventLog for Counted {
    async fn append_once(&self, writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        self.0.append_once(writes, receipt).await
    }
    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        self.0.read_stream(stream_id, from_version, limit).await
    }
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.read_all(after, limit).await
    }
    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        self.0.receipt(receipt).await
    }
    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        self.0.snapshot(stream_id).await
    }
    async fn snapshot_at_most(&self, stream_id: &str, version: u64) -> Result<Option<Snapshot>, EventLogError> {
        self.0.snapshot_at_most(stream_id, version).await
    }
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        self.0.save_snapshot(snapshot).await
    }
    fn appends(&self) -> watch::Receiver<u64> {
        self.0.appends()
    }
}

/// One event on a new stream.
pub(crate) fn write() -> StreamWrite {
    let event = NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "ThingHappened".into(),
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: Metadata::system("test"),
        data: serde_json::json!({}),
    };
    StreamWrite { stream_id: format!("thing-{}", uuid::Uuid::now_v7()), expected: ExpectedVersion::Any, events: vec![event] }
}
