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

/// Events per batch read in process: large enough to amortise a
/// transaction while catching up; live batches are as small as the
/// traffic.
const BATCH: usize = 2000;

/// Attempts at one event before it is parked.
const ATTEMPTS: u32 = 3;

pub struct Runner {
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    sources: SourceFactory,
}

/// Where a projection's batches go: its live tables, or a rebuild's copies
/// of them in a schema of their own.
#[derive(Clone)]
struct Target {
    /// Its checkpoint row (and partitions and dead letters): the
    /// projection's name, or `<name>:rebuild`.
    checkpoint: String,
    /// A rebuild's schema, put first on the search path.
    schema: Option<String>,
}

impl Target {
    fn live(projection: &dyn Projection) -> Target {
        Target { checkpoint: projection.name().to_owned(), schema: None }
    }

    fn rebuild(projection: &dyn Projection) -> Target {
        Target { checkpoint: format!("{}:rebuild", projection.name()), schema: Some(format!("rebuild_{}", projection.name())) }
    }

    async fn begin<'a>(&self, pool: &'a PgPool) -> Result<sqlx::Transaction<'a, sqlx::Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        if let Some(schema) = &self.schema {
            sqlx::query(&format!("SET LOCAL search_path TO {schema}, public")).execute(&mut *tx).await?;
        }
        Ok(tx)
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("projection {0} is at version {1} in the database, newer than this process's {2}; leaving it to newer workers")]
    Newer(String, i32, i32),
    #[error("projection {0} was rebuilt or taken over meanwhile; resuming from its new checkpoint")]
    Superseded(String),
}

/// The projection's checkpoint row for `target`, created when missing, and
/// where to resume. A new live row starts at the beginning of the log; a
/// row of an older version is only for a rebuild to replace.
async fn prepare(pool: &PgPool, projection: &dyn Projection, target: &Target) -> Result<(Resume, Uuid), RunError> {
    let mut tx = pool.begin().await?;
    // Serialise workers preparing the same projection.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('projection:' || $1, 0))").bind(projection.name()).execute(&mut *tx).await?;
    let row: Option<(i32, i64, Uuid)> =
        sqlx::query_as("SELECT version, position, generation FROM projection_checkpoints WHERE projection = $1")
            .bind(&target.checkpoint)
            .fetch_optional(&mut *tx)
            .await?;
    let (position, generation) = match row {
        Some((version, position, generation)) if version == projection.version() => (position as u64, generation),
        Some((version, _, _)) if version > projection.version() && target.schema.is_none() => {
            return Err(RunError::Newer(projection.name().into(), version, projection.version()));
        }
        _ => {
            // Nothing yet, or a rebuild of another version: start over.
            if let Some(schema) = &target.schema {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut *tx).await?;
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut *tx).await?;
                for table in projection.tables() {
                    sqlx::query(&format!("CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)")).execute(&mut *tx).await?;
                }
            } else {
                projection.reset(&mut tx).await?;
            }
            sqlx::query("DELETE FROM dead_letters WHERE projection = $1").bind(&target.checkpoint).execute(&mut *tx).await?;
            eventlog::progress::clear_partitions(&mut tx, &target.checkpoint).await?;
            let state = if target.schema.is_some() { "rebuilding" } else { "running" };
            let generation: Uuid = sqlx::query_scalar(
                "INSERT INTO projection_checkpoints (projection, version, position, state) VALUES ($1, $2, 0, $3)
                 ON CONFLICT (projection) DO UPDATE SET version = EXCLUDED.version, position = 0, state = EXCLUDED.state, last_error = NULL,
                        generation = gen_random_uuid(), updated_at = now()
                 RETURNING generation",
            )
            .bind(&target.checkpoint)
            .bind(projection.version())
            .bind(state)
            .fetch_one(&mut *tx)
            .await?;
            (0, generation)
        }
    };
    tx.commit().await?;
    let mut progress = Progress { position, ..Progress::default() };
    eventlog::progress::load_partitions(pool, &target.checkpoint, &mut progress).await?;
    Ok((Resume { consumer: target.checkpoint.clone(), generation: generation.to_string(), progress }, generation))
}

/// Swaps a caught-up rebuild in for the live tables, in one transaction:
/// readers see the old tables or the new ones, never a mix.
async fn take_over(pool: &PgPool, projection: &dyn Projection) -> Result<(), sqlx::Error> {
    let rebuild = Target::rebuild(projection);
    let schema = rebuild.schema.as_deref().expect("a rebuild has a schema");
    let name = projection.name();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('projection:' || $1, 0))").bind(name).execute(&mut *tx).await?;
    let pending: Option<i32> = sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(&rebuild.checkpoint)
        .fetch_optional(&mut *tx)
        .await?;
    if pending.is_none() {
        return Ok(()); // another worker took it over already
    }
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS public.{table}")).execute(&mut *tx).await?;
        sqlx::query(&format!("ALTER TABLE {schema}.{table} SET SCHEMA public")).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut *tx).await?;
    for (table, column) in [("projection_checkpoints", "projection"), ("consumer_partitions", "consumer"), ("dead_letters", "projection")] {
        sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1")).bind(name).execute(&mut *tx).await?;
        sqlx::query(&format!("UPDATE {table} SET {column} = $2 WHERE {column} = $1"))
            .bind(&rebuild.checkpoint)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE projection_checkpoints SET state = 'running', rebuild_requested = false, updated_at = now() WHERE projection = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(eventlog::progress::PROGRESS_CHANNEL).bind(name).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(projection = name, version = projection.version(), "rebuild caught up and took over");
    Ok(())
}

/// Applies one event with bounded retries inside a savepoint; answers the
/// error it gave up on, if any.
async fn apply_one(
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
async fn apply_batch(pool: &PgPool, projection: &dyn Projection, target: &Target, generation: Uuid, whole: &Batch) -> Result<(), RunError> {
    let batch = &whole.events[..];
    // From Kafka, a batch interleaves partitions: the checkpoint is the
    // highest position applied, and each partition's is kept beside it.
    let Some(last) = batch.iter().max_by_key(|e| e.global_position) else {
        // Only partitions to record (a source that passed over
        // redeliveries), as long as the checkpoint is still this run's.
        let mut tx = pool.begin().await?;
        let ours: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM projection_checkpoints WHERE projection = $1 AND generation = $2 FOR UPDATE")
                .bind(&target.checkpoint)
                .bind(generation)
                .fetch_optional(&mut *tx)
                .await?;
        if ours.is_none() {
            return Err(RunError::Superseded(target.checkpoint.clone()));
        }
        eventlog::progress::save_partitions(&mut tx, &target.checkpoint, whole).await?;
        eventlog::progress::notify_progress(&mut tx, &target.checkpoint).await?;
        tx.commit().await?;
        return Ok(());
    };
    let mut tx = target.begin(pool).await?;
    // Fast path: the whole batch without savepoints. Should any event fail,
    // the transaction is dropped and the batch is applied event by event.
    let decoded: Option<Vec<(&RecordedEvent, DomainEvent)>> =
        batch.iter().map(|e| DomainEvent::decode(&e.event_type, e.schema_version, &e.data).ok().map(|d| (e, d))).collect();
    let clean = match decoded {
        Some(decoded) => projection.apply_all(&mut tx, &decoded).await.is_ok(),
        None => false,
    };
    if !clean {
        tx.rollback().await?;
        tx = target.begin(pool).await?;
    }
    let mut parked = None;
    for event in batch.iter().filter(|_| !clean) {
        if let Some((error, attempts)) = apply_one(&mut tx, projection, event).await? {
            tracing::error!(projection = projection.name(), position = event.global_position, stream_id = %event.stream_id, %error, "parking a poison event");
            park(&mut tx, &target.checkpoint, event, &error, attempts).await?;
            parked = Some(error);
        }
    }
    // Only while the checkpoint is still this run's: a rebuild that took
    // over meanwhile owns the tables now.
    let updated = sqlx::query(
        "UPDATE projection_checkpoints
            SET position = GREATEST(position, $2), updated_at = now(),
                state = CASE WHEN $3::text IS NULL THEN state ELSE 'degraded' END,
                last_error = coalesce($3, last_error)
          WHERE projection = $1 AND generation = $4",
    )
    .bind(&target.checkpoint)
    .bind(last.global_position as i64)
    .bind(parked)
    .bind(generation)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(RunError::Superseded(target.checkpoint.clone()));
    }
    eventlog::progress::save_partitions(&mut tx, &target.checkpoint, whole).await?;
    eventlog::progress::notify_progress(&mut tx, &target.checkpoint).await?;
    tx.commit().await?;
    metrics::gauge!("storekeeper_projection_position", "projection" => projection.name()).set(last.global_position as f64);
    metrics::counter!("storekeeper_projection_events_total", "projection" => projection.name()).increment(batch.len() as u64);
    Ok(())
}

impl Runner {
    /// Projections fed in process from the log.
    pub fn new(pool: PgPool, log: Arc<dyn EventLog>, projections: Vec<Arc<dyn Projection>>) -> Self {
        Runner::with_sources(pool, projections, eventlog::in_process(log, BATCH))
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
            let (pool, sources, projection, shutdown) = (self.pool.clone(), self.sources.clone(), projection.clone(), shutdown.clone());
            tasks.spawn(async move { run_projection(pool, sources, projection, shutdown).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a projection task panicked");
            }
        }
    }
}

/// One projection: live, and beside it a rebuild when its version is new
/// or one was requested (`projections rebuild NAME`).
async fn run_projection(pool: PgPool, sources: SourceFactory, projection: Arc<dyn Projection>, mut shutdown: watch::Receiver<bool>) {
    let name = projection.name();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let row: Result<Option<(i32, bool)>, sqlx::Error> =
            sqlx::query_as("SELECT version, rebuild_requested FROM projection_checkpoints WHERE projection = $1")
                .bind(name)
                .fetch_optional(&pool)
                .await;
        let live = ProjectionConsumer::new(&pool, &projection, Target::live(&*projection));
        let rebuild = ProjectionConsumer::new(&pool, &projection, Target::rebuild(&*projection));
        match row {
            // An older version serves reads until its replacement is built.
            Ok(Some((version, _))) if version < projection.version() => {
                tracing::info!(
                    projection = name,
                    from = version,
                    to = projection.version(),
                    "new version: rebuilding beside the live tables"
                );
                eventlog::follow(&rebuild, &sources, rebuild.until_taken_over(&shutdown)).await;
            }
            Ok(Some((_, true))) => {
                tracing::info!(projection = name, "rebuild requested: building beside the live tables");
                tokio::select! {
                    _ = eventlog::follow(&live, &sources, shutdown.clone()) => return,
                    _ = eventlog::follow(&rebuild, &sources, rebuild.until_taken_over(&shutdown)) => {}
                }
            }
            Ok(_) => {
                tokio::select! {
                    _ = eventlog::follow(&live, &sources, shutdown.clone()) => return,
                    _ = rebuild_requested(&pool, name) => {}
                }
            }
            Err(e) => {
                tracing::warn!(projection = name, error = %e, "reading the projection's checkpoint failed; retrying");
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Returns once someone asks for the projection to be rebuilt.
async fn rebuild_requested(pool: &PgPool, name: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let requested: Result<Option<bool>, _> =
            sqlx::query_scalar("SELECT rebuild_requested FROM projection_checkpoints WHERE projection = $1")
                .bind(name)
                .fetch_optional(pool)
                .await;
        if let Ok(Some(true)) = requested {
            return;
        }
    }
}

/// Asks the running workers to rebuild `name` beside its live tables.
pub async fn request_rebuild(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let updated =
        sqlx::query("UPDATE projection_checkpoints SET rebuild_requested = true WHERE projection = $1").bind(name).execute(pool).await?;
    Ok(updated.rows_affected() > 0)
}

/// One projection, live or rebuilding, as a consumer of the log.
struct ProjectionConsumer {
    pool: PgPool,
    projection: Arc<dyn Projection>,
    target: Target,
    /// The generation this run resumed in.
    generation: std::sync::Mutex<Uuid>,
    /// A rebuild: turned true once it has taken over.
    taken_over: watch::Sender<bool>,
}

impl ProjectionConsumer {
    fn new(pool: &PgPool, projection: &Arc<dyn Projection>, target: Target) -> Self {
        ProjectionConsumer {
            pool: pool.clone(),
            projection: projection.clone(),
            target,
            generation: std::sync::Mutex::new(Uuid::nil()),
            taken_over: watch::Sender::new(false),
        }
    }

    /// A shutdown signal for the rebuild: the real one, or its take-over.
    fn until_taken_over(&self, shutdown: &watch::Receiver<bool>) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let (mut shutdown, mut taken_over) = (shutdown.clone(), self.taken_over.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {}
                _ = taken_over.wait_for(|t| *t) => {}
                _ = tx.closed() => return,
            }
            let _ = tx.send(true);
        });
        rx
    }
}

#[async_trait]
impl Consumer for ProjectionConsumer {
    fn name(&self) -> &str {
        &self.target.checkpoint
    }

    async fn resume(&self) -> Result<Resume, BoxError> {
        let (resume, generation) = prepare(&self.pool, &*self.projection, &self.target).await?;
        *self.generation.lock().expect("generation lock") = generation;
        Ok(resume)
    }

    async fn opened(&self, resume: &Resume, partitioned: bool) -> Result<(), BoxError> {
        // Partitions recorded by an earlier partitioned run would otherwise
        // stand still and hold every consistency token back.
        if resume.progress.is_partitioned() && !partitioned {
            let mut conn = self.pool.acquire().await?;
            eventlog::progress::clear_partitions(&mut conn, &self.target.checkpoint).await?;
        }
        Ok(())
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let generation = *self.generation.lock().expect("generation lock");
        apply_batch(&self.pool, &*self.projection, &self.target, generation, batch).await?;
        if self.target.schema.is_some() {
            // Caught up once it has applied all the live tables have: the
            // swap then never shows readers an older view than before.
            let both = progress(&self.pool, &[self.projection.name(), &self.target.checkpoint]).await?;
            if let [live, Some(rebuilt)] = &both[..]
                && live.as_ref().is_none_or(|live| rebuilt.includes(live))
            {
                take_over(&self.pool, &*self.projection).await?;
                self.taken_over.send_replace(true);
            }
        }
        Ok(())
    }
}

/// How far each of `names` has applied the log (`None`: it never ran).
pub async fn progress(pool: &PgPool, names: &[&str]) -> Result<Vec<Option<Progress>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        projection: String,
        position: i64,
        partition: Option<i32>,
        partitions: Option<i32>,
        partition_position: Option<i64>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.projection, c.position, p.partition, p.partitions, p.position AS partition_position
           FROM projection_checkpoints c LEFT JOIN consumer_partitions p ON p.consumer = c.projection
          WHERE c.projection = ANY($1)",
    )
    .bind(names)
    .fetch_all(pool)
    .await?;
    Ok(names
        .iter()
        .map(|name| {
            let mut found = None::<Progress>;
            for row in rows.iter().filter(|r| r.projection == *name) {
                let progress = found.get_or_insert_with(|| Progress { position: row.position as u64, ..Progress::default() });
                if let (Some(partition), Some(partitions), Some(at)) = (row.partition, row.partitions, row.partition_position) {
                    progress.partitions.insert(partition, at as u64);
                    progress.partition_count = partitions;
                }
            }
            found
        })
        .collect())
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

/// Lag is counted event by event up to this many; beyond, it is reported
/// as this many, so a status call stays cheap however far behind.
pub const LAG_COUNTED_UP_TO: i64 = 1_000_000;

/// How far the log runs ahead of `position`: events (counted up to
/// `LAG_COUNTED_UP_TO`) and the age of the oldest one not applied.
pub async fn lag(pool: &PgPool, position: u64) -> Result<(u64, f64), sqlx::Error> {
    let (events, seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT FROM events WHERE global_position > $1 LIMIT $2) behind),
                (SELECT extract(epoch FROM now() - recorded_at)::float8 FROM events WHERE global_position > $1
                  ORDER BY global_position LIMIT 1)",
    )
    .bind(position as i64)
    .bind(LAG_COUNTED_UP_TO)
    .fetch_one(pool)
    .await?;
    Ok((events as u64, seconds.unwrap_or(0.0).max(0.0)))
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
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.projection, c.version, c.position, c.state, c.last_error,
                (SELECT count(*) FROM dead_letters d WHERE d.projection = c.projection) AS parked
           FROM projection_checkpoints c ORDER BY c.projection",
    )
    .fetch_all(pool)
    .await?;
    let mut statuses = Vec::with_capacity(rows.len());
    for r in rows {
        let (lag_events, lag_seconds) = lag(pool, r.position as u64).await?;
        statuses.push(ProjectionStatus {
            name: r.projection,
            version: r.version,
            position: r.position as u64,
            lag_events,
            lag_seconds,
            state: if r.parked > 0 && r.state == "running" { "degraded".into() } else { r.state },
            parked: r.parked as u64,
            last_error: r.last_error,
        });
    }
    Ok(statuses)
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
