//! Verification: does a live read model hold what its log says? The log is
//! folded afresh into scratch copies of the projection's tables, up to
//! exactly what the live view has applied, and the two are compared row by
//! row. The live view is only read, never locked: the last stretch of the
//! fold and the comparison share one repeatable-read snapshot, in which the
//! live rows and the live checkpoint agree (the runner commits them
//! together).

use std::time::Instant;

use domain::events::DomainEvent;
use eventlog::{EventLog, EventLogError, Progress, RecordedEvent};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::dead_letters::is_transient;
use crate::{ApplyError, Projection};

/// Events read from the log and applied per step of the fold.
const BATCH: usize = 2000;
/// Differing rows listed in a report; all of them are counted.
const SHOWN: i64 = 50;

/// What a verification found.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Verification {
    pub projection: String,
    /// The live view's position the fold was compared at.
    pub position: u64,
    /// Events folded from the log.
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Rows in the live view that a fold of the log does not have, and the
    /// other way round (a row that differs counts on both sides).
    pub differing_rows: u64,
    /// The first of them, ordered so that both sides of a row sit together.
    pub differences: Vec<Difference>,
    /// Events of the log that the fold could not apply.
    pub unapplied: Vec<Unapplied>,
    /// Events the live view has parked as dead letters. Their streams are
    /// held back, so the rows they touch differ until they are retried.
    pub parked: u64,
}

impl Verification {
    /// Whether the live view is exactly the fold of the log.
    pub fn matches(&self) -> bool {
        self.differing_rows == 0 && self.unapplied.is_empty()
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Difference {
    pub table: String,
    /// `live`: only in the live view; `log`: only in the fold of the log.
    #[schemars(with = "OnlyIn")]
    pub only_in: String,
    /// The row, column by column (each column as the table holds it).
    #[schemars(schema_with = "row_schema")]
    pub row: serde_json::Value,
}

/// A table's row as a JSON object, one member per column.
fn row_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "description": "One member per column of the table" })
}

/// Which side of a comparison a row is on.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum OnlyIn {
    Live,
    Log,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Unapplied {
    pub position: u64,
    pub stream_id: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("projection {0} has not run against this database yet")]
    NotStarted(String),
    #[error("projection {0} is being verified already")]
    Busy(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Log(#[from] EventLogError),
}

/// Folds the log beside `projection`'s live tables and compares them.
pub async fn verify(pool: &PgPool, log: &dyn EventLog, projection: &dyn Projection) -> Result<Verification, VerifyError> {
    let name = projection.name();
    // A connection of its own, closed when done: the lock that keeps two
    // verifications of one projection apart goes with it, even when the
    // caller gives up half way.
    let mut conn = pool.acquire().await?.detach();
    let free: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('verify:' || $1, 0))").bind(name).fetch_one(&mut conn).await?;
    if !free {
        return Err(VerifyError::Busy(name.to_owned()));
    }
    let schema = format!("verify_{name}");
    let result = compare(&mut conn, log, projection, &schema).await;
    let dropped = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await;
    // Released here rather than when the server notices the connection
    // closed, so that a verification right after this one is not refused.
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('verify:' || $1, 0))").bind(name).execute(&mut conn).await.ok();
    conn.close().await.ok();
    let verification = result?;
    dropped?;
    metrics::gauge!("storekeeper_projection_verify_differing_rows", "projection" => name).set(verification.differing_rows as f64);
    metrics::gauge!("storekeeper_projection_verify_events_per_second", "projection" => name).set(verification.events_per_second);
    Ok(verification)
}

async fn compare(
    conn: &mut PgConnection,
    log: &dyn EventLog,
    projection: &dyn Projection,
    schema: &str,
) -> Result<Verification, VerifyError> {
    let name = projection.name();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut *conn).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut *conn).await?;
    for table in projection.tables() {
        // Unlogged and with only the unique indexes (what the projection's
        // upserts need): scratch that is dropped at the end.
        crate::table_copy::copy_table(&mut *conn, schema, table, true).await?;
    }
    let started = Instant::now();
    let mut fold = Fold { schema, folded: 0, events: 0, unapplied: Vec::new() };
    // Most of the way outside any long transaction, then the rest and the
    // comparison in one snapshot.
    let Some(progress) = crate::progress(&mut *conn, &[name]).await?.pop().flatten() else {
        return Err(VerifyError::NotStarted(name.to_owned()));
    };
    // From a partitioned source, outside the snapshot only as far as every
    // partition has applied: beyond that, which events are in the live view
    // is only known in the snapshot, and each event is folded once.
    fold.to(&mut *conn, log, projection, &progress, progress.applied_everywhere()).await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let progress = crate::progress(&mut *tx, &[name]).await?.pop().flatten().unwrap_or(progress);
    fold.to(&mut tx, log, projection, &progress, progress.position).await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut differences = Vec::new();
    let mut differing_rows = 0;
    for table in projection.tables() {
        let rows: Vec<(String, serde_json::Value, i64)> = sqlx::query_as(&format!(
            "WITH live AS (SELECT * FROM public.{table} EXCEPT ALL SELECT * FROM {schema}.{table}),
                  fold AS (SELECT * FROM {schema}.{table} EXCEPT ALL SELECT * FROM public.{table})
             SELECT side, row, count(*) OVER () FROM (
                 SELECT 'live' AS side, to_jsonb(l) AS row FROM live l UNION ALL SELECT 'log', to_jsonb(f) FROM fold f
             ) d ORDER BY row::text, side LIMIT {SHOWN}"
        ))
        .fetch_all(&mut *tx)
        .await?;
        differing_rows += rows.first().map_or(0, |r| r.2 as u64);
        let room = (SHOWN as usize).saturating_sub(differences.len());
        differences.extend(rows.into_iter().take(room).map(|(side, row, _)| Difference { table: (*table).to_owned(), only_in: side, row }));
    }
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE projection = $1").bind(name).fetch_one(&mut *tx).await?;
    tx.rollback().await?;
    Ok(Verification {
        projection: name.to_owned(),
        position: progress.position,
        events: fold.events,
        seconds,
        events_per_second: if seconds > 0.0 { fold.events as f64 / seconds } else { 0.0 },
        differing_rows,
        differences,
        unapplied: fold.unapplied,
        parked: parked as u64,
    })
}

/// The fold of the log into the scratch tables, so far.
struct Fold<'a> {
    schema: &'a str,
    /// The log is read up to here.
    folded: u64,
    events: u64,
    unapplied: Vec<Unapplied>,
}

impl Fold<'_> {
    /// Folds, up to `up_to`, what `progress` says the live view has applied
    /// and the fold has not read yet: every event up to its position or,
    /// from a partitioned source, up to its stream's partition's position.
    async fn to(
        &mut self,
        conn: &mut PgConnection,
        log: &dyn EventLog,
        projection: &dyn Projection,
        progress: &Progress,
        up_to: u64,
    ) -> Result<(), VerifyError> {
        let up_to = up_to.min(progress.position);
        let applied = |e: &RecordedEvent| e.global_position <= up_to && progress.has_applied(&e.stream_id, e.global_position);
        while self.folded < up_to {
            let events = log.read_all(self.folded, BATCH).await?;
            let Some(last) = events.last() else { break };
            self.folded = last.global_position.min(up_to);
            let mut decoded = Vec::with_capacity(events.len());
            for event in events.iter().filter(|e| applied(e) && projection.handles(&e.event_type)) {
                match DomainEvent::decode(&event.event_type, event.schema_version, &event.data) {
                    Ok(d) => decoded.push((event, d)),
                    Err(e) => self.unapplied.push(Unapplied {
                        position: event.global_position,
                        stream_id: event.stream_id.clone(),
                        error: format!("cannot be decoded: {e}"),
                    }),
                }
            }
            self.events += decoded.len() as u64;
            let decoded: Vec<(&RecordedEvent, &DomainEvent)> = decoded.iter().map(|(e, d)| (*e, d)).collect();
            self.apply(conn, projection, &decoded).await?;
        }
        Ok(())
    }

    /// The whole batch at once or, should that fail, event by event, each
    /// failure noted.
    async fn apply(
        &mut self,
        conn: &mut PgConnection,
        projection: &dyn Projection,
        decoded: &[(&RecordedEvent, &DomainEvent)],
    ) -> Result<(), VerifyError> {
        let mut tx = conn.begin().await?;
        sqlx::query(&format!("SET LOCAL search_path TO {}, public", self.schema)).execute(&mut *tx).await?;
        match projection.apply_all(&mut tx, decoded).await {
            Ok(()) => {
                tx.commit().await?;
                return Ok(());
            }
            Err(ApplyError::Database(e)) if is_transient(&e) => return Err(e.into()),
            Err(_) => {}
        }
        tx.rollback().await?;
        for (event, d) in decoded {
            let mut tx = conn.begin().await?;
            sqlx::query(&format!("SET LOCAL search_path TO {}, public", self.schema)).execute(&mut *tx).await?;
            match projection.apply(&mut tx, event, d).await {
                Ok(()) => tx.commit().await?,
                Err(ApplyError::Database(e)) if is_transient(&e) => return Err(e.into()),
                Err(e) => {
                    tx.rollback().await?;
                    self.unapplied.push(Unapplied {
                        position: event.global_position,
                        stream_id: event.stream_id.clone(),
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
