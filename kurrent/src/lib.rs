//! The event log on KurrentDB (EventStoreDB's successor), chosen by
//! `KURRENTDB_URL`.
//!
//! The port appends to several streams at once, all or nothing; KurrentDB
//! appends atomically to one stream only. So the whole storekeeper log is
//! one KurrentDB stream (`storekeeper-log`): an append is a single
//! `append_to_stream` of all its events, expected at the revision this
//! process last read, and an event's global position is its revision + 1.
//! Which storekeeper stream an event belongs to, and its version there, are
//! in its data. An index in memory (each stream's revisions, every event id,
//! receipts) is caught up from the log before each check; when another
//! process appended first, KurrentDB refuses the expected revision, and the
//! append catches up and checks again. Reading that stream is reading
//! `$all` of storekeeper, so in-process subscriptions over this log are the
//! event source.
//!
//! Costs, stated plainly: appends from one process go one at a time, the
//! index holds every event id (about 40 bytes an event) and is built by
//! reading the whole log when the process starts, and reading one stream
//! reads its events by revision. The server cannot run where this was
//! written: the contract suite (`eventlog/tests/contract.rs`) runs against
//! it only where `KURRENTDB_URL` is set.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventlog::{AppendResult, EventLog, EventLogError, Metadata, Receipt, RecordedEvent, Snapshot, StreamAppended, StreamWrite};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadStreamOptions, StreamPosition, StreamState, SubscribeToStreamOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

/// The KurrentDB stream that holds the log.
pub const LOG_STREAM: &str = "storekeeper-log";

/// How long one request to KurrentDB may take: a server that stops
/// answering fails the append (which holds the index) instead of stalling
/// every writer of the process.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// An event as stored in the log stream; the KurrentDB event's id and type
/// are the event's own.
#[derive(Serialize, Deserialize)]
struct Stored {
    stream_id: String,
    stream_version: u64,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
    metadata: Metadata,
    data: serde_json::Value,
    /// On an append's first event: what the append answered, and under
    /// which receipt, so a repeat answers the same from any process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    append: Option<Answer>,
}

/// What the index needs of a stored event: catching up decodes no more.
#[derive(Deserialize)]
struct Indexed {
    stream_id: String,
    #[serde(default)]
    append: Option<Answer>,
}

/// An event read from the log stream, its body decoded as `T`.
struct Read<T> {
    revision: u64,
    event_id: Uuid,
    event_type: String,
    created: DateTime<Utc>,
    body: T,
}

#[derive(Clone, Serialize, Deserialize)]
struct Answer {
    receipt: Option<(String, String)>,
    /// (stream, version, position) per write, in the order given.
    streams: Vec<(String, Option<u64>, Option<u64>)>,
    position: u64,
}

impl Answer {
    fn result(&self, replayed: bool) -> AppendResult {
        AppendResult {
            streams: self
                .streams
                .iter()
                .map(|(stream_id, version, position)| StreamAppended {
                    stream_id: stream_id.clone(),
                    version: *version,
                    position: *position,
                })
                .collect(),
            position: self.position,
            replayed,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    snapshot_version: u32,
    version: u64,
    position: u64,
    state: serde_json::Value,
}

/// What the log stream holds, up to `next`.
#[derive(Default)]
struct Index {
    /// Revisions below this are indexed.
    next: u64,
    /// Each stream's events' revisions, in version order.
    streams: HashMap<String, Vec<u64>>,
    event_ids: HashSet<Uuid>,
    receipts: HashMap<(String, String), Answer>,
}

impl Index {
    fn add(&mut self, revision: u64, event_id: Uuid, stream_id: &str, append: Option<&Answer>) {
        self.streams.entry(stream_id.to_owned()).or_default().push(revision);
        self.event_ids.insert(event_id);
        if let Some(answer) = append
            && let Some(receipt) = &answer.receipt
        {
            self.receipts.insert(receipt.clone(), answer.clone());
        }
        self.next = revision + 1;
    }

    fn version(&self, stream_id: &str) -> Option<u64> {
        self.streams.get(stream_id).map(|r| r.len() as u64 - 1)
    }
}

pub struct KurrentEventLog {
    client: Client,
    stream: String,
    index: Mutex<Index>,
    appended: watch::Sender<u64>,
    notifier: tokio::task::JoinHandle<()>,
}

impl Drop for KurrentEventLog {
    fn drop(&mut self) {
        self.notifier.abort();
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> EventLogError {
    EventLogError::Backend(Box::new(e))
}

fn message(text: String) -> EventLogError {
    EventLogError::Backend(text.into())
}

impl KurrentEventLog {
    /// Connects to `url` (`kurrentdb://host:2113?tls=false`, or `esdb://`)
    /// and reads the log stream `stream` into the index.
    pub async fn connect(url: &str, stream: &str) -> Result<Self, EventLogError> {
        // The parser's message quotes the whole URL, password included.
        let settings: ClientSettings = url.parse().map_err(|_: kurrentdb::ClientSettingsParseError| {
            message("KURRENTDB_URL is not a KurrentDB connection string (kurrentdb://host:2113?tls=false)".into())
        })?;
        let client = Client::new(settings).map_err(|e| message(format!("KurrentDB client: {e}")))?;
        let appended = watch::Sender::new(0);
        let notifier = tokio::spawn(notify(client.clone(), stream.to_owned(), appended.clone()));
        let log = KurrentEventLog { client, stream: stream.to_owned(), index: Mutex::default(), appended, notifier };
        log.catch_up(&mut *log.index.lock().await).await?;
        Ok(log)
    }

    /// Reads the log stream from `from`, at most `limit` events.
    async fn read<T: serde::de::DeserializeOwned>(&self, from: u64, limit: usize) -> Result<Vec<Read<T>>, EventLogError> {
        let options = ReadStreamOptions::default().forwards().position(StreamPosition::Position(from)).max_count(limit).deadline(DEADLINE);
        let mut read = match self.client.read_stream(self.stream.as_str(), &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(resolved)) => {
                    let Some(e) = resolved.event else { continue };
                    let body = serde_json::from_slice(&e.data).map_err(backend)?;
                    events.push(Read { revision: e.revision, event_id: e.id, event_type: e.event_type, created: e.created, body });
                }
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(events),
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// Indexes what the log stream holds past the index, a page (one
    /// request, within its deadline) at a time.
    async fn catch_up(&self, index: &mut Index) -> Result<(), EventLogError> {
        const PAGE: usize = 10_000;
        loop {
            let page = self.read::<Indexed>(index.next, PAGE).await?;
            let whole = page.len() == PAGE;
            for e in page {
                index.add(e.revision, e.event_id, &e.body.stream_id, e.body.append.as_ref());
            }
            if !whole {
                return Ok(());
            }
        }
    }

    fn snapshots(&self, stream_id: &str) -> String {
        format!("{}-snapshot-{stream_id}", self.stream)
    }
}

fn recorded(e: Read<Stored>) -> RecordedEvent {
    RecordedEvent {
        event_id: e.event_id,
        stream_id: e.body.stream_id,
        stream_version: e.body.stream_version,
        global_position: e.revision + 1,
        event_type: e.event_type,
        schema_version: e.body.schema_version,
        occurred_at: e.body.occurred_at,
        recorded_at: e.created,
        metadata: e.body.metadata,
        data: e.body.data,
    }
}

/// Wakes `appends()` for every event another process appends.
async fn notify(client: Client, stream: String, appended: watch::Sender<u64>) {
    loop {
        let mut subscription = client.subscribe_to_stream(stream.as_str(), &SubscribeToStreamOptions::default()).await;
        while subscription.next().await.is_ok() {
            appended.send_modify(|n| *n += 1);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// What an append does, decided against the index.
enum Plan {
    /// Nothing to write: a receipt's first answer, or checks alone (which
    /// held at the head just read).
    Answered(AppendResult),
    /// These events, at the revisions after the index's head, answering
    /// this; the first event carries the answer.
    Write(Vec<(Uuid, String, Stored)>, Answer),
}

fn plan(index: &Index, writes: &[StreamWrite], receipt: Option<&(String, String)>) -> Result<Plan, EventLogError> {
    if let Some(first) = receipt.and_then(|r| index.receipts.get(r)) {
        return Ok(Plan::Answered(first.result(true)));
    }
    for w in writes {
        let actual = index.version(&w.stream_id);
        if !w.expected.admits(actual) {
            return Err(EventLogError::VersionConflict { stream_id: w.stream_id.clone(), expected: w.expected, actual });
        }
    }
    let mut fresh = HashSet::new();
    if writes.iter().flat_map(|w| &w.events).any(|e| index.event_ids.contains(&e.event_id) || !fresh.insert(e.event_id)) {
        return Err(EventLogError::InvalidAppend("an event with this event_id is already stored".into()));
    }
    // Positions follow from the revision expected: the append lands there
    // or not at all.
    let mut revision = index.next;
    let mut stored = Vec::new();
    let mut answer = Answer { receipt: receipt.cloned(), streams: Vec::with_capacity(writes.len()), position: 0 };
    for w in writes {
        let mut version = index.version(&w.stream_id);
        let mut position = None;
        for e in &w.events {
            let next = version.map_or(0, |v| v + 1);
            stored.push((
                e.event_id,
                e.event_type.clone(),
                Stored {
                    stream_id: w.stream_id.clone(),
                    stream_version: next,
                    schema_version: e.schema_version,
                    occurred_at: e.occurred_at,
                    metadata: e.metadata.clone(),
                    data: e.data.clone(),
                    append: None,
                },
            ));
            version = Some(next);
            revision += 1;
            position = Some(revision);
            answer.position = revision;
        }
        answer.streams.push((w.stream_id.clone(), version, position));
    }
    match stored.first_mut() {
        None => Ok(Plan::Answered(answer.result(false))),
        Some(first) => {
            first.2.append = Some(answer.clone());
            Ok(Plan::Write(stored, answer))
        }
    }
}

#[async_trait]
impl EventLog for KurrentEventLog {
    async fn append_once(&self, writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        eventlog::validate_append(&writes)?;
        let receipt = receipt.map(|r| (r.actor.to_owned(), r.key.to_owned()));
        let mut index = self.index.lock().await;
        let mut refused_at = None;
        loop {
            self.catch_up(&mut index).await?;
            if refused_at == Some(index.next) {
                // Refused, yet nothing new to read: not a race.
                return Err(message(format!("KurrentDB refused the log's expected revision {} with nothing after it", index.next)));
            }
            let (stored, answer) = match plan(&index, &writes, receipt.as_ref())? {
                Plan::Answered(result) => return Ok(result),
                Plan::Write(stored, answer) => (stored, answer),
            };
            let events = stored
                .iter()
                .map(|(id, event_type, s)| EventData::json(event_type, s).map(|e| e.id(*id)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            let expected = index.next.checked_sub(1).map_or(StreamState::NoStream, StreamState::StreamRevision);
            let options = AppendToStreamOptions::default().stream_state(expected).deadline(DEADLINE);
            match self.client.append_to_stream(self.stream.as_str(), &options, events).await {
                Ok(_) => {
                    let start = index.next;
                    for (i, (id, _, s)) in stored.iter().enumerate() {
                        index.add(start + i as u64, *id, &s.stream_id, s.append.as_ref());
                    }
                    drop(index);
                    self.appended.send_modify(|n| *n += 1);
                    return Ok(answer.result(false));
                }
                // Another process appended first: catch up, check again.
                Err(kurrentdb::Error::WrongExpectedVersion { .. }) => refused_at = Some(index.next),
                Err(e) => return Err(backend(e)),
            }
        }
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let revisions: Vec<u64> = {
            let mut index = self.index.lock().await;
            self.catch_up(&mut index).await?;
            index.streams.get(stream_id).map(|r| r.iter().skip(from_version as usize).take(limit).copied().collect()).unwrap_or_default()
        };
        // One read per run of consecutive revisions.
        let mut events = Vec::with_capacity(revisions.len());
        let mut at = 0;
        while at < revisions.len() {
            let run = revisions[at..].iter().enumerate().take_while(|(i, r)| **r == revisions[at] + *i as u64).count();
            for event in self.read::<Stored>(revisions[at], run).await? {
                if event.body.stream_id == stream_id {
                    events.push(recorded(event));
                }
            }
            at += run;
        }
        Ok(events)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        Ok(self.read::<Stored>(after, limit).await?.into_iter().map(recorded).collect())
    }

    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        let mut index = self.index.lock().await;
        self.catch_up(&mut index).await?;
        Ok(index.receipts.get(&(receipt.actor.to_owned(), receipt.key.to_owned())).map(|a| a.result(true)))
    }

    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        let options = ReadStreamOptions::default().backwards().position(StreamPosition::End).max_count(1).deadline(DEADLINE);
        let mut read = match self.client.read_stream(self.snapshots(stream_id), &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        match read.next().await {
            Ok(Some(resolved)) => {
                let Some(e) = resolved.event else { return Ok(None) };
                let s: StoredSnapshot = serde_json::from_slice(&e.data).map_err(backend)?;
                Ok(Some(Snapshot {
                    stream_id: stream_id.to_owned(),
                    snapshot_version: s.snapshot_version,
                    version: s.version,
                    position: s.position,
                    state: s.state,
                }))
            }
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        let newer = |old: &Snapshot| old.snapshot_version != snapshot.snapshot_version || old.version < snapshot.version;
        if self.snapshot(&snapshot.stream_id).await?.is_some_and(|old| !newer(&old)) {
            return Ok(());
        }
        let stored = StoredSnapshot {
            snapshot_version: snapshot.snapshot_version,
            version: snapshot.version,
            position: snapshot.position,
            state: snapshot.state.clone(),
        };
        let event = EventData::json("Snapshot", &stored).map_err(backend)?;
        self.client
            .append_to_stream(self.snapshots(&snapshot.stream_id), &AppendToStreamOptions::default().deadline(DEADLINE), event)
            .await
            .map_err(backend)?;
        Ok(())
    }

    fn appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

#[cfg(test)]
mod tests {
    //! The decisions an append makes against the index, without a server:
    //! what the log stream would get, and what the caller is answered.

    use eventlog::{ExpectedVersion, NewEvent};

    use super::*;

    fn stream() -> String {
        format!("thing-{}", Uuid::now_v7())
    }

    fn write(stream_id: &str, expected: ExpectedVersion, count: usize) -> StreamWrite {
        let event = |_| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "ThingHappened".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: Metadata::system("test"),
            data: serde_json::json!({}),
        };
        StreamWrite { stream_id: stream_id.to_owned(), expected, events: (0..count).map(event).collect() }
    }

    /// Plans `writes` and, when they write, indexes them as catching up
    /// from the log stream would: through their stored JSON.
    fn append(index: &mut Index, writes: &[StreamWrite], receipt: Option<&(String, String)>) -> Result<AppendResult, EventLogError> {
        match plan(index, writes, receipt)? {
            Plan::Answered(result) => Ok(result),
            Plan::Write(stored, answer) => {
                let start = index.next;
                for (i, (id, _, s)) in stored.iter().enumerate() {
                    let read: Indexed = serde_json::from_slice(&serde_json::to_vec(s).unwrap()).unwrap();
                    index.add(start + i as u64, *id, &read.stream_id, read.append.as_ref());
                }
                Ok(answer.result(false))
            }
        }
    }

    #[test]
    fn positions_are_revisions_plus_one_and_versions_are_gapless_per_stream() {
        let mut index = Index::default();
        let (a, b) = (stream(), stream());
        let first = append(&mut index, &[write(&a, ExpectedVersion::NoStream, 3)], None).unwrap();
        assert_eq!((first.streams[0].version, first.streams[0].position, first.position), (Some(2), Some(3), 3));
        let both = append(&mut index, &[write(&b, ExpectedVersion::NoStream, 1), write(&a, ExpectedVersion::Exact(2), 2)], None).unwrap();
        let got: Vec<_> = both.streams.iter().map(|s| (s.version, s.position)).collect();
        assert_eq!((got, both.position), (vec![(Some(0), Some(4)), (Some(4), Some(6))], 6));
        assert_eq!(index.streams[&a], vec![0, 1, 2, 4, 5], "revisions of the stream's events, in version order");
        assert_eq!(index.next, 6);
    }

    #[test]
    fn stale_versions_conflict_and_checks_alone_write_nothing() {
        let mut index = Index::default();
        let a = stream();
        append(&mut index, &[write(&a, ExpectedVersion::NoStream, 2)], None).unwrap();
        for (expected, stream_id, actual) in [
            (ExpectedVersion::Exact(0), a.clone(), Some(1)),
            (ExpectedVersion::NoStream, a.clone(), Some(1)),
            (ExpectedVersion::Exact(0), stream(), None),
        ] {
            match plan(&index, &[write(&stream_id, expected, 1)], None) {
                Err(EventLogError::VersionConflict { actual: found, .. }) => assert_eq!(found, actual),
                other => panic!("expected a conflict, got {:?}", other.map(|_| ())),
            }
        }
        // A write with no event checks its stream and appends nothing.
        let checked = append(&mut index, &[write(&a, ExpectedVersion::Exact(1), 0)], None).unwrap();
        assert_eq!((checked.streams[0].version, checked.streams[0].position, checked.position), (Some(1), None, 0));
        assert_eq!(index.next, 2);
    }

    #[test]
    fn a_receipt_answers_its_first_append_from_the_log_and_event_ids_are_unique() {
        let mut index = Index::default();
        let (a, b) = (stream(), stream());
        let receipt = ("alice".to_owned(), "key-1".to_owned());
        let first = append(&mut index, &[write(&a, ExpectedVersion::NoStream, 2)], Some(&receipt)).unwrap();
        let again = append(&mut index, &[write(&b, ExpectedVersion::Any, 5)], Some(&receipt)).unwrap();
        assert_eq!(again, AppendResult { replayed: true, ..first });
        assert_eq!(index.next, 2, "nothing written the second time");
        let taken = write(&a, ExpectedVersion::Any, 1);
        append(&mut index, std::slice::from_ref(&taken), None).unwrap();
        assert!(matches!(plan(&index, &[StreamWrite { stream_id: b, ..taken }], None), Err(EventLogError::InvalidAppend(_))));
    }
}
