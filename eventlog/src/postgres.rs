//! The PostgreSQL event log.
//!
//! Appends are written in groups, each one call of the `append_batch`
//! function (see `group_commit` and migration 10007), a read of the whole
//! log is one call of `read_events` (see migration 10005 for why they are
//! correct). Positions come from a sequence taken while the stream
//! locks are held, so they are data that a dump and restore keep; a reader
//! reads up to the frontier below the lowest append still in flight, which
//! only appends can hold back: not an unrelated transaction, not a
//! projection's batch.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use crate::envelope::validate;
use crate::group_commit::{DEFAULT_COMMITTERS, GroupCommit};
use crate::{
    AppendResult, EventLog, EventLogError, ExpectedVersion, Metadata, Receipt, RecordedEvent, Snapshot, StreamAppended, StreamWrite,
};

/// Applies the event log's migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    crate::migrations::apply(sqlx::migrate!("./migrations"), pool).await
}

/// Forgets receipts older than 24 hours (they no longer replay).
pub async fn purge_receipts(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM append_receipts WHERE recorded_at < now() - interval '24 hours'").execute(pool).await?.rows_affected())
}

pub struct PgEventLog {
    pool: PgPool,
    group: GroupCommit,
    appended: watch::Sender<u64>,
    /// The highest position a read has answered: every position up to it
    /// is final, so a read from there finds the frontier by probing the
    /// appends after it (`read_events_after_final`, migration 10010).
    final_up_to: AtomicU64,
}

impl PgEventLog {
    /// The log with `DEFAULT_APPEND_COMMITTERS` committers.
    pub fn new(pool: PgPool) -> Self {
        Self::with_committers(pool, DEFAULT_COMMITTERS)
    }

    /// The log with `committers` writing groups side by side (held within
    /// 1 and `MAX_APPEND_COMMITTERS`; see `group_commit` for the trade-off).
    pub fn with_committers(pool: PgPool, committers: usize) -> Self {
        PgEventLog {
            group: GroupCommit::new(pool.clone(), committers),
            pool,
            appended: watch::Sender::new(0),
            final_up_to: AtomicU64::new(0),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

const COLUMNS: &str =
    "event_id, stream_id, stream_version, global_position, event_type, schema_version, occurred_at, recorded_at, metadata, data";

fn decode_row(row: PgRow) -> Result<RecordedEvent, EventLogError> {
    let metadata: serde_json::Value = row.try_get("metadata")?;
    let metadata: Metadata = serde_json::from_value(metadata).map_err(|e| EventLogError::Backend(Box::new(e)))?;
    Ok(RecordedEvent {
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get::<i64, _>("stream_version")? as u64,
        global_position: row.try_get::<i64, _>("global_position")? as u64,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get::<i32, _>("schema_version")? as u32,
        occurred_at: row.try_get("occurred_at")?,
        recorded_at: row.try_get("recorded_at")?,
        metadata,
        data: row.try_get("data")?,
    })
}

pub(crate) fn map_insert_error(e: sqlx::Error, writes: &[StreamWrite]) -> EventLogError {
    if let sqlx::Error::Database(db) = &e {
        match db.constraint() {
            // Unreachable while every writer takes the stream locks; kept so
            // that a writer that does not can still never fork a stream.
            Some("events_stream_version_unique") => {
                return EventLogError::VersionConflict {
                    stream_id: writes.first().map(|w| w.stream_id.clone()).unwrap_or_default(),
                    expected: writes.first().map_or(ExpectedVersion::Any, |w| w.expected),
                    actual: None,
                };
            }
            Some("events_event_id_key") => {
                return EventLogError::InvalidAppend("an event with this event_id is already stored".into());
            }
            _ => {}
        }
    }
    e.into()
}

#[async_trait]
impl EventLog for PgEventLog {
    #[tracing::instrument(level = "debug", skip_all, fields(streams = writes.len(), events = writes.iter().map(|w| w.events.len()).sum::<usize>()))]
    async fn append_once(&self, writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        validate(&writes)?;
        let appends = writes.iter().any(|w| !w.events.is_empty());
        let result = self.group.append(writes, receipt.map(|r| (r.actor.to_owned(), r.key.to_owned()))).await?;
        if appends && !result.replayed {
            self.appended.send_modify(|n| *n += 1);
        }
        Ok(result)
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version LIMIT $3"
        ))
        .bind(stream_id)
        .bind(from_version.min(i64::MAX as u64) as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(decode_row).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        // Up to the frontier every position is final.
        let function = if after <= self.final_up_to.load(Ordering::Relaxed) { "read_events_after_final" } else { "read_events" };
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM {function}($1, $2)"))
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(limit.min(i32::MAX as usize) as i32)
            .fetch_all(&self.pool)
            .await?;
        let events: Vec<RecordedEvent> = rows.into_iter().map(decode_row).collect::<Result<_, _>>()?;
        if let Some(last) = events.last() {
            self.final_up_to.fetch_max(last.global_position, Ordering::Relaxed);
        }
        Ok(events)
    }

    async fn head(&self) -> Result<Option<u64>, EventLogError> {
        // Positions are taken from the sequence, committed or not yet.
        let head: i64 = sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM events_position_seq")
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(head as u64))
    }

    async fn frontier(&self) -> Result<Option<u64>, EventLogError> {
        // Below the lowest position an append still holds (migration 10010).
        let frontier: i64 = sqlx::query_scalar("SELECT events_frontier()").fetch_one(&self.pool).await?;
        Ok(Some(frontier.max(0) as u64))
    }

    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        let result: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT result FROM append_receipts WHERE actor = $1 AND key = $2 AND recorded_at > now() - interval '24 hours'",
        )
        .bind(receipt.actor)
        .bind(receipt.key)
        .fetch_optional(&self.pool)
        .await?;
        let Some(result) = result else { return Ok(None) };
        let rows: Vec<ReceiptRow> = serde_json::from_value(result).map_err(|e| EventLogError::Backend(Box::new(e)))?;
        let mut appended = AppendResult { streams: Vec::with_capacity(rows.len()), position: 0, replayed: true };
        for row in rows {
            appended.position = appended.position.max(row.position.unwrap_or(0));
            appended.streams.push(StreamAppended { stream_id: row.stream, version: row.version, position: row.position });
        }
        Ok(Some(appended))
    }

    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        self.snapshot_at_most(stream_id, u64::MAX).await
    }

    async fn snapshot_at_most(&self, stream_id: &str, version: u64) -> Result<Option<Snapshot>, EventLogError> {
        let row: Option<(i32, i64, i64, serde_json::Value)> = sqlx::query_as(
            "SELECT snapshot_version, version, position, state FROM snapshots
              WHERE stream_id = $1 AND version <= $2 ORDER BY version DESC LIMIT 1",
        )
        .bind(stream_id)
        .bind(version.min(i64::MAX as u64) as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(snapshot_version, version, position, state)| Snapshot {
            stream_id: stream_id.to_owned(),
            snapshot_version: snapshot_version as u32,
            version: version as u64,
            position: position as u64,
            state,
        }))
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        // Another shape drops the stream's older ones (the row at this
        // version is replaced by the insert, not deleted under it). Of the
        // same shape, the newest of each block of versions is kept: an
        // older one in its block goes, and one older than the block's is
        // not added.
        sqlx::query(
            "WITH other_shapes AS (DELETE FROM snapshots WHERE stream_id = $1 AND snapshot_version <> $2 AND version <> $3),
                  superseded AS (DELETE FROM snapshots WHERE stream_id = $1 AND snapshot_version = $2
                                    AND version / $6 = $3 / $6 AND version < $3)
             INSERT INTO snapshots (stream_id, snapshot_version, version, position, state)
             SELECT $1, $2, $3, $4, $5
              WHERE NOT EXISTS (SELECT FROM snapshots WHERE stream_id = $1 AND snapshot_version = $2
                                   AND version / $6 = $3 / $6 AND version > $3)
             ON CONFLICT (stream_id, version) DO UPDATE SET snapshot_version = EXCLUDED.snapshot_version,
                 position = EXCLUDED.position, state = EXCLUDED.state, taken_at = now()
             WHERE snapshots.snapshot_version <> EXCLUDED.snapshot_version",
        )
        .bind(&snapshot.stream_id)
        .bind(snapshot.snapshot_version as i32)
        .bind(snapshot.version.min(i64::MAX as u64) as i64)
        .bind(snapshot.position.min(i64::MAX as u64) as i64)
        .bind(&snapshot.state)
        .bind(crate::SNAPSHOT_BLOCK as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn appends(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

/// One stream of a stored receipt, as `append_events` writes it.
#[derive(serde::Deserialize)]
struct ReceiptRow {
    stream: String,
    version: Option<u64>,
    position: Option<u64>,
}
