//! Poison events, and failures that are not.
//!
//! A transient failure (a deadlock, a lock or statement timeout, a lost
//! connection, a server shutting down) says nothing about the event: the
//! whole batch fails and the follow loop tries again from the checkpoint,
//! with backoff, for as long as it takes. Anything else is the event's own
//! problem: after a few tries inside a savepoint it is parked in
//! `dead_letters` and the projection goes on with the other streams.
//!
//! A parked event holds back every later event of its stream in that
//! projection (they are parked behind it, in order), so a stream's rows
//! never move past an event they have not seen. `retry_parked` applies a
//! projection's parked events again in log order, and a stream stays held
//! back from its first event that still fails.
//!
//! Batches take the projection's dead-letter lock shared, a retry takes it
//! exclusively: a batch never decides on a parked set a retry is changing.

use std::collections::HashMap;
use std::time::Duration;

use domain::events::DomainEvent;
use eventlog::{EventLog, RecordedEvent};
use sqlx::{PgConnection, PgPool};

use crate::{ApplyError, Projection};

/// Attempts at one event before it is parked.
const ATTEMPTS: u32 = 3;

/// Whether a failure is the database's passing state rather than the
/// event's: worth trying again as it is, never a reason to park.
pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // serialization failure, deadlock, lock not available, query
            // cancelled (statement or lock timeout), server shutting down,
            // connection exceptions, insufficient resources.
            matches!(&*code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03")
                || code.starts_with("08")
                || code.starts_with("53")
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// The statement that takes the dead-letter lock of the projection at
/// `checkpoint` for the transaction: shared by its batches (as
/// `Target::begin` begins them), exclusive for a retry. Plain text, so that
/// it can go in one round trip with the `BEGIN`.
pub(crate) fn lock_dead_letters(checkpoint: &str, exclusive: bool) -> String {
    let lock = if exclusive { "pg_advisory_xact_lock" } else { "pg_advisory_xact_lock_shared" };
    format!("SELECT {lock}(hashtextextended('dead_letters:' || '{}', 0));", checkpoint.replace('\'', "''"))
}

/// The streams the projection holds back, each with its first parked
/// position; the caller holds the dead-letter lock.
pub(crate) async fn held_back(conn: &mut PgConnection, checkpoint: &str) -> Result<HashMap<String, i64>, sqlx::Error> {
    sqlx::query_as("SELECT stream_id, min(global_position) FROM dead_letters WHERE projection = $1 GROUP BY stream_id")
        .bind(checkpoint)
        .fetch_all(&mut *conn)
        .await
        .map(|rows: Vec<(String, i64)>| rows.into_iter().collect())
}

/// Parks the messages of `batch` that are not events of the log, each
/// holding back the stream it names; answers the last error, if any.
pub(crate) async fn park_unreadable(
    conn: &mut PgConnection,
    checkpoint: &str,
    held: &mut HashMap<String, i64>,
    batch: &eventlog::Batch,
) -> Result<Option<String>, sqlx::Error> {
    let mut parked = None;
    for message in &batch.unreadable {
        let error = format!("{} ({})", message.error, message.origin);
        tracing::error!(projection = checkpoint, origin = %message.origin, stream_id = %message.stream_id, %error, "parking an unreadable message");
        eventlog::progress::park(conn, checkpoint, message.into(), &error, 1).await?;
        let first = held.entry(message.stream_id.clone()).or_insert(message.position);
        *first = (*first).min(message.position);
        parked = Some(error);
    }
    Ok(parked)
}

/// Applies one event with bounded retries inside a savepoint; answers the
/// error it gave up on, if any. A transient failure is returned as an
/// error: the caller's transaction is lost, and nothing is parked.
pub(crate) async fn apply_one(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    event: &RecordedEvent,
) -> Result<Option<(String, u32)>, sqlx::Error> {
    let failed = apply_with_retries(conn, projection, event).await?;
    Ok(failed.map(|(error, attempts)| (withheld(event, error), attempts)))
}

/// What is recorded of an error about `event`: an event with personal
/// fields may have them quoted in it (a decode or constraint error names
/// the value), and a parked row outlives a forget, so only its kind is
/// kept; the log line has the rest.
fn withheld(event: &RecordedEvent, error: String) -> String {
    if domain::personal::personal_fields(&event.event_type).is_none() {
        return error;
    }
    tracing::warn!(position = event.global_position, %error, "parking an event with personal data; its error is kept in this log only");
    let kind = error.split(':').next().unwrap_or("failed");
    format!("{kind}: details withheld, the event holds personal data (see the worker's log at position {})", event.global_position)
}

async fn apply_with_retries(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    event: &RecordedEvent,
) -> Result<Option<(String, u32)>, sqlx::Error> {
    let decoded = match DomainEvent::decode(&event.event_type, event.schema_version, &event.data) {
        Ok(decoded) => decoded,
        Err(e) => return Ok(Some((format!("cannot decode: {e}"), 1))),
    };
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        sqlx::query("SAVEPOINT apply_event").execute(&mut *conn).await?;
        match projection.apply(conn, event, &decoded).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT apply_event").execute(&mut *conn).await?;
                return Ok(None);
            }
            Err(ApplyError::Database(e)) if is_transient(&e) => return Err(e),
            Err(e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT apply_event").execute(&mut *conn).await?;
                last_error = e.to_string();
                tracing::warn!(projection = projection.name(), position = event.global_position, attempt, error = %e, "applying an event failed");
                if attempt < ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
            }
        }
    }
    Ok(Some((last_error, ATTEMPTS)))
}

/// Applies `event` unless its stream is held back; parks it when it fails
/// or is held back, and then holds its stream back. Answers the error when
/// it was parked.
pub(crate) async fn apply_or_park(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    checkpoint: &str,
    held: &mut HashMap<String, i64>,
    event: &RecordedEvent,
) -> Result<Option<String>, sqlx::Error> {
    if !projection.handles(&event.event_type) {
        // Nothing of this read model's: done by doing nothing (and a dead
        // letter of such an event, parked before `handles`, is cleared by
        // a retry).
        return Ok(None);
    }
    let (error, attempts) = match held.get(&event.stream_id) {
        Some(first) => (format!("held back behind the parked event at position {first} of this stream"), 0),
        None => match apply_one(conn, projection, event).await? {
            None => return Ok(None),
            Some(failed) => failed,
        },
    };
    tracing::error!(projection = checkpoint, position = event.global_position, stream_id = %event.stream_id, %error, "parking an event");
    eventlog::progress::park(conn, checkpoint, event.into(), &error, attempts).await?;
    held.entry(event.stream_id.clone()).or_insert(event.global_position as i64);
    Ok(Some(error))
}

/// What a retry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retried {
    /// Parked events applied now.
    pub applied: u64,
    /// Events still parked: failing again, or held back behind one that is.
    pub still_parked: u64,
    /// Parked messages that were not events of the log (nothing at the
    /// position they claimed, or an event of another stream): dropped.
    pub discarded: u64,
}

/// Applies a projection's parked events again, in log order and in one
/// transaction; a stream is held back again from its first event that
/// still fails. A parked message that was unreadable is replaced by the
/// log's own event at the position it claimed, if the log has one of its
/// stream, and dropped if not.
pub async fn retry_parked(pool: &PgPool, log: &dyn EventLog, projection: &dyn Projection) -> Result<Retried, RetryError> {
    let name = projection.name();
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(&lock_dead_letters(name, true)).execute(&mut *tx).await?;
    let mut held = HashMap::new();
    let mut retried = Retried { applied: 0, still_parked: 0, discarded: 0 };
    for parked in parked_in_order(&mut tx, log, name).await? {
        let event = match parked {
            ParkedEntry::Event(event) => event,
            ParkedEntry::NotInTheLog(position) => {
                forget_parked(&mut tx, name, position).await?;
                retried.discarded += 1;
                continue;
            }
        };
        if apply_or_park(&mut tx, projection, name, &mut held, &event).await?.is_some() {
            retried.still_parked += 1;
            continue;
        }
        forget_parked(&mut tx, name, event.global_position as i64).await?;
        retried.applied += 1;
    }
    sqlx::query(
        "UPDATE projection_checkpoints SET state = CASE WHEN $2 THEN 'running' ELSE 'degraded' END,
                last_error = CASE WHEN $2 THEN NULL ELSE last_error END
          WHERE projection = $1",
    )
    .bind(name)
    .bind(retried.still_parked == 0)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(retried)
}

/// A parked entry, as a retry finds it in the log.
pub enum ParkedEntry {
    Event(Box<RecordedEvent>),
    /// A parked message with no event of its stream at the position it
    /// claimed (the key it is parked under).
    NotInTheLog(i64),
}

/// `consumer`'s parked entries in log order (messages that claimed no
/// position first), each with the log's event.
pub async fn parked_in_order(conn: &mut PgConnection, log: &dyn EventLog, consumer: &str) -> Result<Vec<ParkedEntry>, RetryError> {
    let parked: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT global_position, stream_id, origin FROM dead_letters WHERE projection = $1 ORDER BY global_position")
            .bind(consumer)
            .fetch_all(&mut *conn)
            .await?;
    let mut entries = Vec::with_capacity(parked.len());
    for (position, stream, origin) in parked {
        let event = match u64::try_from(position) {
            Ok(at) if at > 0 => log.read_all(at - 1, 1).await?.into_iter().find(|e| e.global_position == at),
            _ => None,
        };
        entries.push(match (event, origin) {
            (Some(event), None) => ParkedEntry::Event(Box::new(event)),
            (Some(event), Some(_)) if event.stream_id == stream => ParkedEntry::Event(Box::new(event)),
            (_, Some(_)) => ParkedEntry::NotInTheLog(position),
            (None, None) => return Err(RetryError::Missing(position)),
        });
    }
    Ok(entries)
}

/// Removes a parked entry once it is applied, or dropped.
pub async fn forget_parked(conn: &mut PgConnection, consumer: &str, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM dead_letters WHERE projection = $1 AND global_position = $2")
        .bind(consumer)
        .bind(position)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Log(#[from] eventlog::EventLogError),
    #[error("parked event at position {0} is not in the log")]
    Missing(i64),
    #[error("a parked step failed again: {0}")]
    Step(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_databases_passing_states_are_transient() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
