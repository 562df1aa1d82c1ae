//! Consumers' progress in PostgreSQL: one position per named consumer
//! (`checkpoints`: the order process manager, the relay), the highest
//! position applied per partition (`consumer_partitions`), and what a
//! consistency token names: the streams of one append. It lives beside the
//! log because every consumer of the log, in any crate, records it.

use sqlx::{PgConnection, PgPool};

use crate::source::{Batch, Progress};

/// The channel a notification goes out on after a consumer's progress
/// moved, so readers waiting for a token wake at once.
pub const PROGRESS_CHANNEL: &str = "storekeeper_progress";

/// An entry a consumer parks: an event of the log, or a message of a
/// source that claims to be one (`origin`: where it sat).
#[derive(Debug, Clone, Copy)]
pub struct Parked<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub event_type: &'a str,
    pub origin: Option<&'a str>,
}

impl<'a> From<&'a crate::RecordedEvent> for Parked<'a> {
    fn from(event: &'a crate::RecordedEvent) -> Self {
        Parked { position: event.global_position as i64, stream_id: &event.stream_id, event_type: &event.event_type, origin: None }
    }
}

impl<'a> From<&'a crate::Unreadable> for Parked<'a> {
    fn from(message: &'a crate::Unreadable) -> Self {
        Parked { position: message.position, stream_id: &message.stream_id, event_type: &message.event_type, origin: Some(&message.origin) }
    }
}

/// Parks what `consumer` could not apply in `dead_letters`, the one table
/// every consumer of the log parks in (a read model, the order process,
/// the search index; created with the read models, which every database
/// has). Parking it again counts the attempts.
pub async fn park(conn: &mut PgConnection, consumer: &str, parked: Parked<'_>, error: &str, attempts: u32) -> Result<(), sqlx::Error> {
    // Text from outside (a message's key or headers, an error quoting its
    // bytes) may hold NUL, which PostgreSQL's text refuses: a park that
    // failed would fail its batch for good.
    let text = |s: &str| s.replace('\0', "\u{fffd}");
    sqlx::query(
        "INSERT INTO dead_letters (projection, global_position, stream_id, event_type, error, attempts, origin)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (projection, global_position) DO UPDATE SET error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts,
             parked_at = now(),
             -- The log's own event parked where a message claimed to be
             -- it: what the row names is the event's, not the claim's.
             stream_id = CASE WHEN EXCLUDED.origin IS NULL THEN EXCLUDED.stream_id ELSE dead_letters.stream_id END,
             event_type = CASE WHEN EXCLUDED.origin IS NULL THEN EXCLUDED.event_type ELSE dead_letters.event_type END,
             origin = CASE WHEN EXCLUDED.origin IS NULL THEN NULL ELSE dead_letters.origin END",
    )
    .bind(consumer)
    .bind(parked.position)
    .bind(text(parked.stream_id))
    .bind(text(parked.event_type))
    .bind(text(error))
    .bind(attempts as i32)
    .bind(parked.origin.map(text))
    .execute(conn)
    .await?;
    metrics::counter!("storekeeper_projection_parked_total", "projection" => consumer.to_owned()).increment(1);
    Ok(())
}

/// The position a named consumer has recorded (0: none yet).
pub async fn load_checkpoint(pool: &PgPool, name: &str) -> Result<u64, sqlx::Error> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1").bind(name).fetch_optional(pool).await?;
    Ok(position.unwrap_or(0) as u64)
}

/// Records a named consumer's position; it never moves back.
pub async fn save_checkpoint<'c>(conn: impl sqlx::PgExecutor<'c>, name: &str, position: u64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO checkpoints (name, position) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET position = GREATEST(checkpoints.position, EXCLUDED.position), updated_at = now()",
    )
    .bind(name)
    .bind(position as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fills `progress` with the consumer's stored partitions.
pub async fn load_partitions(pool: &PgPool, consumer: &str, progress: &mut Progress) -> Result<(), sqlx::Error> {
    let rows: Vec<(i32, i32, i64)> = sqlx::query_as("SELECT partition, partitions, position FROM consumer_partitions WHERE consumer = $1")
        .bind(consumer)
        .fetch_all(pool)
        .await?;
    for (partition, partitions, position) in rows {
        progress.partitions.insert(partition, position as u64);
        progress.partition_count = partitions;
    }
    Ok(())
}

/// Records the batch's partitions, never moving one back.
pub async fn save_partitions(conn: &mut PgConnection, consumer: &str, batch: &Batch) -> Result<(), sqlx::Error> {
    if !batch.partitions.is_empty() {
        let partitions: Vec<i32> = batch.partitions.keys().copied().collect();
        let positions: Vec<i64> = batch.partitions.values().map(|p| *p as i64).collect();
        sqlx::query(
            "INSERT INTO consumer_partitions (consumer, partition, partitions, position)
             SELECT $1, p, $2, pos FROM UNNEST($3::int[], $4::bigint[]) AS t(p, pos)
             ON CONFLICT (consumer, partition) DO UPDATE
                SET position = GREATEST(consumer_partitions.position, EXCLUDED.position), partitions = EXCLUDED.partitions",
        )
        .bind(consumer)
        .bind(batch.partition_count)
        .bind(&partitions)
        .bind(&positions)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Wakes readers waiting for consistency tokens, in any process, once the
/// transaction commits.
pub async fn notify_progress(conn: &mut PgConnection, consumer: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(PROGRESS_CHANNEL).bind(consumer).execute(conn).await?;
    Ok(())
}

/// Forgets the consumer's partitions: it starts over, or no longer reads a
/// partitioned source.
pub async fn clear_partitions(conn: &mut PgConnection, consumer: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consumer_partitions WHERE consumer = $1").bind(consumer).execute(conn).await?;
    Ok(())
}

/// The streams written by the append whose last event is at `position`
/// (a consistency token). An append's events take one range of positions,
/// whose start each of them records; events appended before that was
/// recorded (migration 10005) share their writing transaction, the upper
/// bits of the position. A position with no event names no streams.
pub async fn streams_of_append(pool: &PgPool, position: u64) -> Result<Vec<String>, sqlx::Error> {
    let position = position.min(i64::MAX as u64) as i64;
    sqlx::query_scalar(
        "SELECT DISTINCT e.stream_id
           FROM (SELECT coalesce(first_in_append, (global_position >> 20) << 20) AS first
                   FROM events WHERE global_position = $1) AS a
           JOIN events e ON e.global_position BETWEEN a.first AND $1",
    )
    .bind(position)
    .fetch_all(pool)
    .await
}
