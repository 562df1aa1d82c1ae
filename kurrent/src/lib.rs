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

mod plan;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use eventlog::{AppendResult, EventLog, EventLogError, Receipt, RecordedEvent, Snapshot, StreamWrite};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, ReadStreamOptions, StreamPosition, StreamState, SubscribeToStreamOptions,
};
use serde::{Deserialize, Serialize};

use crate::plan::{Index, Indexed, Plan, Stored, plan};
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

/// The KurrentDB stream that holds the log.
pub const LOG_STREAM: &str = "storekeeper-log";

/// How long one request to KurrentDB may take: a server that stops
/// answering fails the append (which holds the index) instead of stalling
/// every writer of the process.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// An event read from the log stream, its body decoded as `T`.
struct Read<T> {
    revision: u64,
    event_id: Uuid,
    event_type: String,
    created: DateTime<Utc>,
    body: T,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    snapshot_version: u32,
    version: u64,
    position: u64,
    state: serde_json::Value,
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

    /// The log stream's last position: every event in it is final once
    /// written, so this is the frontier too.
    async fn head(&self) -> Result<Option<u64>, EventLogError> {
        let mut index = self.index.lock().await;
        self.catch_up(&mut index).await?;
        Ok(Some(index.next))
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
