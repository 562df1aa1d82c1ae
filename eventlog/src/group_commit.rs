//! Group commit for the PostgreSQL log.
//!
//! An append's cost was per transaction (a round trip, the position gate,
//! a WAL flush), not per event, so appends that arrive while earlier ones
//! are being written wait and go together: one call of `append_batch`
//! (migration 10007), one transaction, one flush. Each keeps its own
//! answer: written, refused on a conflict, or replayed from its receipt.
//! Nothing waits on a timer: a lone append is written at once, and groups
//! only form when appends outpace the committers.
//!
//! When the group's statement fails for an append's content (a duplicate
//! event id, a value the database refuses, two appends under one receipt),
//! each append is written again on its own, so the error reaches only the
//! append that caused it. Any other failure (the connection, the pool, a
//! timeout) is every append's answer: none is written twice.
//!
//! An append whose caller gave up before its group formed is not written;
//! once its group is on its way it is, as a single statement would be.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::{AppendResult, EventLogError, ExpectedVersion, StreamAppended, StreamWrite};

/// Committers writing groups side by side. One makes the largest groups
/// (while it writes, the next group gathers), and the database's work per
/// append falls with the group's size: measured with `cargo xtask bench
/// write --quick` on 2 cores, 1 / 2 / 3 committers gave 7.7-8.4k / 6.6k /
/// 6.5k commands/s (groups of 11 / 5.6 / 3.8 appends). More overlap their
/// flushes, which pays for large raw appends (16 writers of 100 events:
/// 83k events/s with one, 101k with two). The binary's
/// `--append-committers` (`STOREKEEPER_APPEND_COMMITTERS`) overrides it,
/// through `PgEventLog::with_committers`.
pub const DEFAULT_COMMITTERS: usize = 1;

/// The most committers a log runs (more only contend for the gate).
pub const MAX_COMMITTERS: usize = 64;

/// Appends waiting for a group or being written at most; one more is
/// refused at once (`EventLogError::Overloaded`) rather than queued: a
/// queue that grows under load only makes every append wait longer, and
/// memory follow. Counted by a permit each append holds until it is
/// answered, wherever it waits (the channel, or held for a later group).
/// Under a second of appends at this machine's group-commit rate, and far more
/// than a server's requests in flight (`edge::serve::Limits`).
pub const QUEUED: usize = 2048;

/// A group takes at most this many appends, and this many events unless
/// its first append alone has more.
const MAX_APPENDS: usize = 512;
const MAX_EVENTS: usize = crate::MAX_EVENTS_PER_APPEND;

type Reply = oneshot::Sender<Result<AppendResult, EventLogError>>;

/// One append waiting for its group.
pub(crate) struct Request {
    pub writes: Vec<StreamWrite>,
    /// (actor, idempotency key)
    pub receipt: Option<(String, String)>,
    pub reply: Reply,
    /// Its place among the `QUEUED`, given back when it is answered.
    pub _room: tokio::sync::OwnedSemaphorePermit,
}

impl Request {
    fn events(&self) -> usize {
        self.writes.iter().map(|w| w.events.len()).sum()
    }
}

struct Queue {
    incoming: mpsc::UnboundedReceiver<Request>,
    /// Taken off the channel but held for a later group (same receipt as
    /// an append already in the group, or no room left).
    held: VecDeque<Request>,
}

impl Queue {
    /// The next append whose caller still waits for it (one that gave up
    /// before its group formed is not written).
    async fn next(&mut self) -> Option<Request> {
        loop {
            let request = match self.held.pop_front() {
                Some(request) => request,
                None => self.incoming.recv().await?,
            };
            if !request.reply.is_closed() {
                return Some(request);
            }
        }
    }

    /// The next group: the first append waiting (waiting for one if none
    /// is), then whatever else is already waiting, within the limits.
    async fn group(&mut self) -> Option<Vec<Request>> {
        let first = self.next().await?;
        let mut events = first.events();
        let mut group = vec![first];
        let mut keep = VecDeque::new();
        let mut from_held = std::mem::take(&mut self.held);
        while group.len() < MAX_APPENDS {
            let Some(request) = from_held.pop_front().or_else(|| self.incoming.try_recv().ok()) else { break };
            if request.reply.is_closed() {
                continue;
            }
            let duplicate = request.receipt.is_some() && group.iter().any(|g| g.receipt == request.receipt);
            if duplicate || events + request.events() > MAX_EVENTS {
                keep.push_back(request);
                continue;
            }
            events += request.events();
            group.push(request);
        }
        keep.extend(from_held);
        self.held = keep;
        Some(group)
    }
}

/// The queue in front of the committers, started on first use (on the
/// runtime of the first append).
pub(crate) struct GroupCommit {
    pool: PgPool,
    committers: usize,
    sender: OnceLock<mpsc::UnboundedSender<Request>>,
    room: Arc<tokio::sync::Semaphore>,
}

impl GroupCommit {
    /// `committers` is held within 1 and `MAX_COMMITTERS`.
    pub fn new(pool: PgPool, committers: usize) -> Self {
        // Exported from the first scrape (empty until the first group).
        let _ = metrics::histogram!("storekeeper_append_group_appends");
        metrics::counter!("storekeeper_append_refused_total").increment(0);
        GroupCommit {
            pool,
            committers: committers.clamp(1, MAX_COMMITTERS),
            sender: OnceLock::new(),
            room: Arc::new(tokio::sync::Semaphore::new(QUEUED)),
        }
    }

    pub async fn append(&self, writes: Vec<StreamWrite>, receipt: Option<(String, String)>) -> Result<AppendResult, EventLogError> {
        let sender = self.sender.get_or_init(|| {
            let (sender, incoming) = mpsc::unbounded_channel();
            let queue = Arc::new(Mutex::new(Queue { incoming, held: VecDeque::new() }));
            for _ in 0..self.committers {
                tokio::spawn(supervise(self.pool.clone(), queue.clone()));
            }
            sender
        });
        let (reply, answer) = oneshot::channel();
        let Ok(room) = self.room.clone().try_acquire_owned() else {
            metrics::counter!("storekeeper_append_refused_total").increment(1);
            return Err(EventLogError::Overloaded);
        };
        sender.send(Request { writes, receipt, reply, _room: room }).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn gone() -> EventLogError {
    EventLogError::Backend("the event log's committers have stopped".into())
}

/// Keeps a committer running: one that panicked is started again (its
/// group's callers get an error, the appends queued behind it are written),
/// instead of leaving the process unable to write.
async fn supervise(pool: PgPool, queue: Arc<Mutex<Queue>>) {
    while let Err(error) = tokio::spawn(commit_groups(pool.clone(), queue.clone())).await {
        if !error.is_panic() {
            return;
        }
        tracing::error!(%error, "an event log committer panicked; starting it again");
    }
}

async fn commit_groups(pool: PgPool, queue: Arc<Mutex<Queue>>) {
    loop {
        let Some(group) = queue.lock().await.group().await else { return };
        metrics::histogram!("storekeeper_append_group_appends").record(group.len() as f64);
        match write_group(&pool, &group).await {
            Ok(answers) => {
                for (request, answer) in group.into_iter().zip(answers) {
                    let _ = request.reply.send(answer);
                }
            }
            Err(error) if group.len() == 1 => {
                let request = group.into_iter().next().expect("one request");
                let _ = request.reply.send(Err(crate::postgres::map_insert_error(error, &request.writes)));
            }
            // Not caused by any one append (the database is gone, a
            // timeout): every append of the group gets it. Writing them
            // again one by one could apply an append whose group did commit
            // a second time, and would make the last of them wait for
            // every other's failure.
            Err(error) if !caused_by_an_append(&error) => {
                let copies: Vec<sqlx::Error> = (1..group.len()).map(|_| replicate(&error)).collect();
                for (request, error) in group.into_iter().zip(std::iter::once(error).chain(copies)) {
                    let _ = request.reply.send(Err(error.into()));
                }
            }
            Err(error) => {
                tracing::debug!(%error, appends = group.len(), "a group failed; writing its appends one by one");
                for request in group {
                    let answer = match write_group(&pool, std::slice::from_ref(&request)).await {
                        Ok(mut answers) => answers.pop().expect("one answer"),
                        Err(error) => Err(crate::postgres::map_insert_error(error, &request.writes)),
                    };
                    let _ = request.reply.send(answer);
                }
            }
        }
    }
}

/// Whether a group's failure may come from one of its appends' content
/// (a duplicate event id, a value the database refuses, two appends under
/// one receipt), so that writing each alone finds which: integrity and
/// data errors, cardinality and program limits. Anything else (the
/// connection, the pool, a timeout, a cancel) is the group's as a whole.
fn caused_by_an_append(error: &sqlx::Error) -> bool {
    let Some(code) = error.as_database_error().and_then(|e| e.code()) else { return false };
    code.starts_with("22") || code.starts_with("23") || code.starts_with("54") || code == "21000"
}

/// The same failure for another append of the group (`sqlx::Error` is not
/// `Clone`), of the same kind where callers tell kinds apart (the database
/// being unavailable answers 503); its text is never shown to a client.
fn replicate(error: &sqlx::Error) -> sqlx::Error {
    match error {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Io(e) => sqlx::Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        other => sqlx::Error::Protocol(format!("the append's group failed: {other}")),
    }
}

type Row = (i32, String, Option<i64>, Option<i64>, bool, bool);

/// Writes a group in one statement; one answer per append, in order.
#[tracing::instrument(level = "debug", skip_all, fields(appends = group.len()))]
async fn write_group(pool: &PgPool, group: &[Request]) -> Result<Vec<Result<AppendResult, EventLogError>>, sqlx::Error> {
    let events: usize = group.iter().map(Request::events).sum();
    let mut actors = Vec::with_capacity(group.len());
    let mut keys = Vec::with_capacity(group.len());
    let (mut w_append, mut w_stream, mut w_expected) = (Vec::new(), Vec::new(), Vec::new());
    let mut e_write = Vec::with_capacity(events);
    let mut ids: Vec<Uuid> = Vec::with_capacity(events);
    let mut types = Vec::with_capacity(events);
    let mut schema_versions = Vec::with_capacity(events);
    let mut occurred: Vec<DateTime<Utc>> = Vec::with_capacity(events);
    let mut metadata = Vec::with_capacity(events);
    let mut data = Vec::with_capacity(events);
    for (a, request) in group.iter().enumerate() {
        actors.push(request.receipt.as_ref().map(|r| r.0.as_str()));
        keys.push(request.receipt.as_ref().map(|r| r.1.as_str()));
        for write in &request.writes {
            w_append.push(a as i32 + 1);
            w_stream.push(write.stream_id.as_str());
            w_expected.push(match write.expected {
                ExpectedVersion::Any => -1,
                ExpectedVersion::NoStream => -2,
                ExpectedVersion::Exact(v) => v.min(i64::MAX as u64) as i64,
            });
            for event in &write.events {
                e_write.push(w_stream.len() as i32);
                ids.push(event.event_id);
                types.push(event.event_type.as_str());
                schema_versions.push(event.schema_version as i32);
                occurred.push(event.occurred_at);
                metadata.push(serde_json::to_value(&event.metadata).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
                data.push(&event.data);
            }
        }
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT out_append, out_stream, out_version, out_position, out_conflict, out_replayed
           FROM append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&actors)
    .bind(&keys)
    .bind(&w_append)
    .bind(&w_stream)
    .bind(&w_expected)
    .bind(&e_write)
    .bind(&ids)
    .bind(&types)
    .bind(&schema_versions)
    .bind(&occurred)
    .bind(&metadata)
    .bind(&data)
    .fetch_all(pool)
    .await?;
    let mut answers: Vec<Vec<Row>> = group.iter().map(|_| Vec::new()).collect();
    for row in rows {
        if let Some(rows) = usize::try_from(row.0 - 1).ok().and_then(|a| answers.get_mut(a)) {
            rows.push(row);
        }
    }
    Ok(group.iter().zip(answers).map(|(request, rows)| answer(&request.writes, rows)).collect())
}

/// One append's answer from its rows.
fn answer(writes: &[StreamWrite], rows: Vec<Row>) -> Result<AppendResult, EventLogError> {
    if let Some((_, stream_id, actual, _, _, _)) = rows.iter().find(|r| r.4) {
        let expected = writes.iter().find(|w| w.stream_id == *stream_id).map_or(ExpectedVersion::Any, |w| w.expected);
        return Err(EventLogError::VersionConflict { stream_id: stream_id.clone(), expected, actual: actual.map(|v| v as u64) });
    }
    let replayed = rows.iter().any(|r| r.5);
    let mut result = AppendResult { streams: Vec::with_capacity(rows.len()), position: 0, replayed };
    for (_, stream_id, version, position, _, _) in rows {
        let position = position.map(|p| p as u64);
        result.position = result.position.max(position.unwrap_or(0));
        result.streams.push(StreamAppended { stream_id, version: version.map(|v| v as u64), position });
    }
    Ok(result)
}
