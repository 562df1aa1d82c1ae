//! Poison events: an event that fails is retried a bounded number of times
//! inside a savepoint, then parked in `dead_letters` so the projection
//! goes on; `retry_parked` applies the parked ones again on request.

use std::time::Duration;

use domain::events::DomainEvent;
use eventlog::{EventLog, RecordedEvent};
use sqlx::{PgConnection, PgPool};

use crate::Projection;

/// Attempts at one event before it is parked.
const ATTEMPTS: u32 = 3;

/// Applies one event with bounded retries inside a savepoint; answers the
/// error it gave up on, if any.
pub(crate) async fn apply_one(
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

pub(crate) async fn park(
    conn: &mut PgConnection,
    projection: &str,
    event: &RecordedEvent,
    error: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (projection, global_position, stream_id, event_type, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (projection, global_position) DO UPDATE SET error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts, parked_at = now()",
    )
    .bind(projection)
    .bind(event.global_position as i64)
    .bind(&event.stream_id)
    .bind(&event.event_type)
    .bind(error)
    .bind(attempts as i32)
    .execute(conn)
    .await?;
    metrics::counter!("storekeeper_projection_parked_total", "projection" => projection.to_owned()).increment(1);
    Ok(())
}

/// Applies a projection's parked events again, in log order; those that
/// still fail stay parked. Answers how many were applied.
pub async fn retry_parked(pool: &PgPool, log: &dyn EventLog, projection: &dyn Projection) -> Result<u64, RetryError> {
    let parked: Vec<i64> = sqlx::query_scalar("SELECT global_position FROM dead_letters WHERE projection = $1 ORDER BY global_position")
        .bind(projection.name())
        .fetch_all(pool)
        .await?;
    let mut applied = 0;
    for position in parked {
        let position = position as u64;
        let Some(event) = log.read_all(position - 1, 1).await?.into_iter().find(|e| e.global_position == position) else {
            return Err(RetryError::Missing(position));
        };
        let mut tx = pool.begin().await?;
        match apply_one(&mut tx, projection, &event).await? {
            None => {
                sqlx::query("DELETE FROM dead_letters WHERE projection = $1 AND global_position = $2")
                    .bind(projection.name())
                    .bind(position as i64)
                    .execute(&mut *tx)
                    .await?;
                applied += 1;
            }
            Some((error, attempts)) => park(&mut tx, projection.name(), &event, &error, attempts).await?,
        }
        tx.commit().await?;
    }
    sqlx::query(
        "UPDATE projection_checkpoints SET state = 'running', last_error = NULL
          WHERE projection = $1 AND NOT EXISTS (SELECT FROM dead_letters WHERE projection = $1)",
    )
    .bind(projection.name())
    .execute(pool)
    .await?;
    Ok(applied)
}

#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Log(#[from] eventlog::EventLogError),
    #[error("parked event at position {0} is not in the log")]
    Missing(u64),
}
