//! Runs projections: one task each, batch by batch, checkpoint in the same
//! transaction as the rows.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::events::DomainEvent;
use eventlog::source::BoxError;
use eventlog::{Batch, Consumer, EventLog, Progress, RecordedEvent, Resume, SourceFactory};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::Projection;

/// Attempts at one event before it is parked.
const ATTEMPTS: u32 = 3;

pub struct Runner {
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    sources: SourceFactory,
}

/// Makes sure the projection has a checkpoint row for its current version,
/// and says where to resume; a new version starts again from the beginning
/// of the log, in a new generation.
async fn prepare(pool: &PgPool, projection: &dyn Projection) -> Result<Resume, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialise workers preparing the same projection.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('projection:' || $1, 0))").bind(projection.name()).execute(&mut *tx).await?;
    let row: Option<(i32, i64, Uuid)> =
        sqlx::query_as("SELECT version, position, generation FROM projection_checkpoints WHERE projection = $1")
            .bind(projection.name())
            .fetch_optional(&mut *tx)
            .await?;
    let (position, generation) = match row {
        Some((version, position, generation)) if version == projection.version() => (position as u64, generation),
        other => {
            if other.is_some() {
                tracing::warn!(
                    projection = projection.name(),
                    version = projection.version(),
                    "new projection version: rebuilding from the log"
                );
            }
            projection.reset(&mut tx).await?;
            sqlx::query("DELETE FROM dead_letters WHERE projection = $1").bind(projection.name()).execute(&mut *tx).await?;
            eventlog::progress::clear_partitions(&mut tx, projection.name()).await?;
            let generation: Uuid = sqlx::query_scalar(
                "INSERT INTO projection_checkpoints (projection, version, position, state) VALUES ($1, $2, 0, 'running')
                 ON CONFLICT (projection) DO UPDATE SET version = EXCLUDED.version, position = 0, state = 'running', last_error = NULL,
                        generation = gen_random_uuid(), updated_at = now()
                 RETURNING generation",
            )
            .bind(projection.name())
            .bind(projection.version())
            .fetch_one(&mut *tx)
            .await?;
            (0, generation)
        }
    };
    tx.commit().await?;
    let mut progress = Progress { position, ..Progress::default() };
    eventlog::progress::load_partitions(pool, projection.name(), &mut progress).await?;
    Ok(Resume { consumer: projection.name().to_owned(), generation: generation.to_string(), progress })
}

/// Applies one event with bounded retries inside a savepoint; answers the
/// error it gave up on, if any.
async fn apply_one(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    event: &RecordedEvent,
) -> Result<Option<(String, u32)>, sqlx::Error> {
    let decoded = match DomainEvent::decode(&event.event_type, event.schema_version, event.data.clone()) {
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

async fn park(conn: &mut PgConnection, projection: &str, event: &RecordedEvent, error: &str, attempts: u32) -> Result<(), sqlx::Error> {
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

/// Applies a batch and moves the checkpoint, in one transaction.
async fn apply_batch(pool: &PgPool, projection: &dyn Projection, whole: &Batch) -> Result<(), sqlx::Error> {
    let batch = &whole.events[..];
    // From Kafka, a batch interleaves partitions: the checkpoint is the
    // highest position applied, and each partition's is kept beside it.
    let Some(last) = batch.iter().max_by_key(|e| e.global_position) else { return Ok(()) };
    let mut tx = pool.begin().await?;
    // Fast path: the whole batch without savepoints. Should any event fail,
    // the transaction is dropped and the batch is applied event by event.
    let decoded: Option<Vec<(&RecordedEvent, DomainEvent)>> =
        batch.iter().map(|e| DomainEvent::decode(&e.event_type, e.schema_version, e.data.clone()).ok().map(|d| (e, d))).collect();
    let clean = match decoded {
        Some(decoded) => projection.apply_all(&mut tx, &decoded).await.is_ok(),
        None => false,
    };
    if !clean {
        tx.rollback().await?;
        tx = pool.begin().await?;
    }
    let mut parked = None;
    for event in batch.iter().filter(|_| !clean) {
        if let Some((error, attempts)) = apply_one(&mut tx, projection, event).await? {
            tracing::error!(projection = projection.name(), position = event.global_position, stream_id = %event.stream_id, %error, "parking a poison event");
            park(&mut tx, projection.name(), event, &error, attempts).await?;
            parked = Some(error);
        }
    }
    sqlx::query(
        "UPDATE projection_checkpoints
            SET position = GREATEST(position, $2), updated_at = now(),
                state = CASE WHEN $3::text IS NULL THEN state ELSE 'degraded' END,
                last_error = coalesce($3, last_error)
          WHERE projection = $1",
    )
    .bind(projection.name())
    .bind(last.global_position as i64)
    .bind(parked)
    .execute(&mut *tx)
    .await?;
    eventlog::progress::save_partitions(&mut tx, projection.name(), whole).await?;
    tx.commit().await?;
    metrics::gauge!("storekeeper_projection_position", "projection" => projection.name()).set(last.global_position as f64);
    metrics::counter!("storekeeper_projection_events_total", "projection" => projection.name()).increment(batch.len() as u64);
    Ok(())
}

impl Runner {
    /// Projections fed in process from the log.
    pub fn new(pool: PgPool, log: Arc<dyn EventLog>, projections: Vec<Arc<dyn Projection>>) -> Self {
        Runner::with_sources(pool, projections, eventlog::in_process(log, 500))
    }

    /// Projections fed by other sources (Kafka).
    pub fn with_sources(pool: PgPool, projections: Vec<Arc<dyn Projection>>, sources: SourceFactory) -> Self {
        Runner { pool, projections, sources }
    }

    /// Runs every projection until `shutdown` turns true; a batch in hand is
    /// finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for projection in &self.projections {
            let consumer = ProjectionConsumer { pool: self.pool.clone(), projection: projection.clone() };
            let (sources, shutdown) = (self.sources.clone(), shutdown.clone());
            tasks.spawn(async move { eventlog::follow(&consumer, &sources, shutdown).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a projection task panicked");
            }
        }
    }
}

/// One projection as a consumer of the log.
struct ProjectionConsumer {
    pool: PgPool,
    projection: Arc<dyn Projection>,
}

#[async_trait]
impl Consumer for ProjectionConsumer {
    fn name(&self) -> &str {
        self.projection.name()
    }

    async fn resume(&self) -> Result<Resume, BoxError> {
        Ok(prepare(&self.pool, &*self.projection).await?)
    }

    async fn opened(&self, resume: &Resume, partitioned: bool) -> Result<(), BoxError> {
        // Partitions recorded by an earlier partitioned run would otherwise
        // stand still and hold every consistency token back.
        if resume.progress.is_partitioned() && !partitioned {
            let mut conn = self.pool.acquire().await?;
            eventlog::progress::clear_partitions(&mut conn, self.projection.name()).await?;
        }
        Ok(())
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        Ok(apply_batch(&self.pool, &*self.projection, batch).await?)
    }
}

/// One projection's state, for `projections list` and the query API.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: i32,
    pub position: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub state: String,
    pub parked: u64,
    pub last_error: Option<String>,
}

/// The state of every projection that has run against this database.
pub async fn status(pool: &PgPool) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        projection: String,
        version: i32,
        position: i64,
        state: String,
        last_error: Option<String>,
        parked: i64,
        lag_events: i64,
        lag_seconds: Option<f64>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.projection, c.version, c.position, c.state, c.last_error,
                (SELECT count(*) FROM dead_letters d WHERE d.projection = c.projection) AS parked,
                (SELECT count(*) FROM events e WHERE e.global_position > c.position) AS lag_events,
                (SELECT extract(epoch FROM now() - min(e.recorded_at))::float8 FROM events e WHERE e.global_position > c.position) AS lag_seconds
           FROM projection_checkpoints c ORDER BY c.projection",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ProjectionStatus {
            name: r.projection,
            version: r.version,
            position: r.position as u64,
            lag_events: r.lag_events as u64,
            lag_seconds: r.lag_seconds.unwrap_or(0.0).max(0.0),
            state: if r.parked > 0 && r.state == "running" { "degraded".into() } else { r.state },
            parked: r.parked as u64,
            last_error: r.last_error,
        })
        .collect())
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
