//! An in-memory log for fast unit tests of the logic above the port. It
//! keeps nothing across restarts and is never used by `storekeeper` itself.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::envelope::validate;
use crate::{AppendResult, EventLog, EventLogError, Receipt, RecordedEvent, Snapshot, StreamAppended, StreamWrite};

pub struct InMemoryEventLog {
    inner: Mutex<Inner>,
    appended: watch::Sender<u64>,
}

impl Default for InMemoryEventLog {
    fn default() -> Self {
        InMemoryEventLog { inner: Mutex::default(), appended: watch::Sender::new(0) }
    }
}

#[derive(Default)]
struct Inner {
    /// Position `p` is at index `p - 1`.
    events: Vec<RecordedEvent>,
    streams: HashMap<String, Vec<usize>>,
    event_ids: HashSet<Uuid>,
    /// Appends by (actor, idempotency key). Kept forever: nothing here
    /// lives 24 hours.
    receipts: HashMap<(String, String), AppendResult>,
    /// Each stream's snapshots by version.
    snapshots: HashMap<String, std::collections::BTreeMap<u64, Snapshot>>,
}

impl InMemoryEventLog {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl EventLog for InMemoryEventLog {
    async fn append_once(&self, writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        validate(&writes)?;
        let mut inner = self.inner.lock().expect("in-memory log poisoned");
        let receipt = receipt.map(|r| (r.actor.to_owned(), r.key.to_owned()));
        if let Some(first) = receipt.as_ref().and_then(|r| inner.receipts.get(r)) {
            return Ok(first.clone());
        }
        for w in &writes {
            let actual = inner.streams.get(&w.stream_id).map(|s| s.len() as u64 - 1);
            if !w.expected.admits(actual) {
                return Err(EventLogError::VersionConflict { stream_id: w.stream_id.clone(), expected: w.expected, actual });
            }
        }
        let mut fresh = HashSet::new();
        if writes.iter().flat_map(|w| &w.events).any(|e| inner.event_ids.contains(&e.event_id) || !fresh.insert(e.event_id)) {
            return Err(EventLogError::InvalidAppend("an event with this event_id is already stored".into()));
        }
        let recorded_at = Utc::now();
        let mut result = AppendResult { streams: Vec::with_capacity(writes.len()), position: 0, replayed: false };
        for w in writes {
            let mut version = inner.streams.get(&w.stream_id).map(|s| s.len() as u64);
            let mut position = None;
            for e in w.events {
                let next = version.unwrap_or(0);
                let global_position = inner.events.len() as u64 + 1;
                let index = inner.events.len();
                inner.event_ids.insert(e.event_id);
                inner.events.push(RecordedEvent {
                    event_id: e.event_id,
                    stream_id: w.stream_id.clone(),
                    stream_version: next,
                    global_position,
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    occurred_at: e.occurred_at,
                    recorded_at,
                    metadata: e.metadata,
                    data: e.data,
                });
                inner.streams.entry(w.stream_id.clone()).or_default().push(index);
                version = Some(next + 1);
                position = Some(global_position);
                result.position = global_position;
            }
            let version = inner.streams.get(&w.stream_id).map(|s| s.len() as u64 - 1);
            result.streams.push(StreamAppended { stream_id: w.stream_id, version, position });
        }
        if let Some(receipt) = receipt
            && result.position > 0
        {
            inner.receipts.insert(receipt, AppendResult { replayed: true, ..result.clone() });
        }
        drop(inner);
        self.appended.send_modify(|n| *n += 1);
        Ok(result)
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let inner = self.inner.lock().expect("in-memory log poisoned");
        Ok(inner
            .streams
            .get(stream_id)
            .map(|indexes| indexes.iter().skip(from_version as usize).take(limit).map(|&i| inner.events[i].clone()).collect())
            .unwrap_or_default())
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let inner = self.inner.lock().expect("in-memory log poisoned");
        Ok(inner.events.iter().skip(after as usize).take(limit).cloned().collect())
    }

    async fn head(&self) -> Result<Option<u64>, EventLogError> {
        Ok(Some(self.inner.lock().expect("in-memory log poisoned").events.len() as u64))
    }

    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        let inner = self.inner.lock().expect("in-memory log poisoned");
        Ok(inner.receipts.get(&(receipt.actor.to_owned(), receipt.key.to_owned())).cloned())
    }

    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        self.snapshot_at_most(stream_id, u64::MAX).await
    }

    async fn snapshot_at_most(&self, stream_id: &str, version: u64) -> Result<Option<Snapshot>, EventLogError> {
        let inner = self.inner.lock().expect("in-memory log poisoned");
        Ok(inner.snapshots.get(stream_id).and_then(|kept| kept.range(..=version).next_back()).map(|(_, s)| s.clone()))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        let mut inner = self.inner.lock().expect("in-memory log poisoned");
        let kept = inner.snapshots.entry(snapshot.stream_id.clone()).or_default();
        // As PostgreSQL keeps them: one shape, the newest of each block.
        let block = |version: u64| version / crate::SNAPSHOT_BLOCK;
        kept.retain(|_, old| old.snapshot_version == snapshot.snapshot_version);
        if kept.keys().any(|&v| block(v) == block(snapshot.version) && v > snapshot.version) {
            return Ok(());
        }
        kept.retain(|&v, _| block(v) != block(snapshot.version) || v >= snapshot.version);
        kept.entry(snapshot.version).or_insert_with(|| snapshot.clone());
        Ok(())
    }

    fn appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }
}
