//! The live follow loop: one task per projection, fed batch by batch, each
//! batch applied with the checkpoint in the same transaction as the rows.
//! A rebuild runs beside it through the same consumer (see `rebuild`);
//! events that fail are left to `dead_letters`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::events::DomainEvent;
use eventlog::source::BoxError;
use eventlog::{Batch, Consumer, EventLog, RecordedEvent, Resume, SourceFactory};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::dead_letters::{apply_or_park, held_back, is_transient, park_unreadable};
use crate::rebuild::{rebuild_requested, take_over};
use crate::status::{Rate, progress};
use crate::target::{RunError, Target, prepare};
use crate::together::{CheckpointRow, LAGGING, Together, checkpoint_row, fed_together_at};
use crate::{ApplyError, Projection};

/// Events per batch read in process: large enough to amortise a
/// transaction while catching up; live batches are as small as the
/// traffic.
const BATCH: usize = 2000;

pub struct Runner {
    pool: PgPool,
    projections: Vec<Arc<dyn Projection>>,
    sources: SourceFactory,
    /// Fed in process (the log, for how far its head is): the live read
    /// models are applied together (`together`). From Kafka, each follows
    /// its own consumer group.
    in_process: Option<Arc<dyn EventLog>>,
}

/// Applies a batch and moves the checkpoint, in one transaction.
/// `committed`: the checkpoint's position as this run last committed it
/// (or resumed from); the checkpoint moves only from there or beyond.
pub(crate) async fn apply_batch(
    pool: &PgPool,
    projection: &dyn Projection,
    target: &Target,
    (generation, committed): (Uuid, u64),
    whole: &Batch,
    rate: &std::sync::Mutex<Rate>,
) -> Result<(), RunError> {
    let batch = &whole.events[..];
    // From Kafka, a batch interleaves partitions: the checkpoint is the
    // highest position applied, and each partition's is kept beside it.
    let Some(last) = batch.iter().max_by_key(|e| e.global_position) else {
        // Only partitions to record (a source that passed over
        // redeliveries) or unreadable messages to park, as long as the
        // checkpoint is still this run's.
        let mut tx = target.begin(pool).await?;
        let ours: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM projection_checkpoints WHERE projection = $1 AND generation = $2 FOR UPDATE")
                .bind(&target.checkpoint)
                .bind(generation)
                .fetch_optional(&mut *tx)
                .await?;
        if ours.is_none() {
            return Err(RunError::Superseded(target.checkpoint.clone()));
        }
        if let Some(error) = park_unreadable(&mut tx, &target.checkpoint, &mut HashMap::new(), whole).await? {
            degraded(&mut tx, &target.checkpoint, &error).await?;
        }
        eventlog::progress::save_partitions(&mut tx, &target.checkpoint, whole).await?;
        eventlog::progress::notify_progress(&mut tx, &target.checkpoint).await?;
        tx.commit().await?;
        return Ok(());
    };
    let mine: Vec<&RecordedEvent> = batch.iter().filter(|e| projection.handles(&e.event_type)).collect();
    let mut tx = target.begin(pool).await?;
    let mut held = held_back(&mut tx, &target.checkpoint).await?;
    // Unreadable messages first: the streams they name are held back.
    let mut parked = park_unreadable(&mut tx, &target.checkpoint, &mut held, whole).await?;
    // Fast path: the whole batch without savepoints, when no stream of it is
    // held back. Should it fail for the events' sake, the transaction is
    // dropped and the batch is applied event by event; a transient failure
    // fails the batch, to be tried again.
    let mut clean = false;
    if !mine.iter().any(|e| held.contains_key(&e.stream_id)) {
        let decoded: Option<Vec<(&RecordedEvent, DomainEvent)>> =
            mine.iter().map(|&e| DomainEvent::decode(&e.event_type, e.schema_version, &e.data).ok().map(|d| (e, d))).collect();
        if let Some(decoded) = decoded {
            let decoded: Vec<(&RecordedEvent, &DomainEvent)> = decoded.iter().map(|(e, d)| (*e, d)).collect();
            match projection.apply_all(&mut tx, &decoded).await {
                Ok(()) => clean = true,
                Err(ApplyError::Database(e)) if is_transient(&e) => return Err(e.into()),
                Err(_) => {}
            }
        }
        if !clean {
            tx.rollback().await?;
            tx = target.begin(pool).await?;
            held = held_back(&mut tx, &target.checkpoint).await?;
            parked = park_unreadable(&mut tx, &target.checkpoint, &mut held, whole).await?;
        }
    }
    for event in mine.iter().filter(|_| !clean) {
        if let Some(error) = apply_or_park(&mut tx, projection, &target.checkpoint, &mut held, event).await? {
            parked = Some(error);
        }
    }
    // Only while the checkpoint is still this run's: a rebuild that took
    // over meanwhile owns the tables now.
    let per_second = rate.lock().expect("rate lock").observe(batch.len());
    // The checkpoint moves and readers waiting on a token are told, in one
    // statement.
    let updated = sqlx::query(
        "UPDATE projection_checkpoints
            SET position = GREATEST(position, $2), updated_at = now(),
                state = CASE WHEN $3::text IS NULL THEN state ELSE 'degraded' END,
                last_error = coalesce($3, last_error), events_per_second = $5
          WHERE projection = $1 AND generation = $4 AND position >= $7
         RETURNING pg_notify($6, $1)",
    )
    .bind(&target.checkpoint)
    .bind(last.global_position as i64)
    .bind(parked)
    .bind(generation)
    .bind(per_second)
    .bind(eventlog::progress::PROGRESS_CHANNEL)
    .bind(committed.min(i64::MAX as u64) as i64)
    .fetch_optional(&mut *tx)
    .await?;
    if updated.is_none() {
        return Err(RunError::Superseded(target.checkpoint.clone()));
    }
    eventlog::progress::save_partitions(&mut tx, &target.checkpoint, whole).await?;
    tx.commit().await?;
    applied(projection, batch, last);
    Ok(())
}

/// Marks a projection degraded by a parked entry (the checkpoint's row is
/// this transaction's to change: its generation was checked).
async fn degraded(tx: &mut sqlx::PgConnection, checkpoint: &str, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_checkpoints SET state = 'degraded', last_error = $2 WHERE projection = $1")
        .bind(checkpoint)
        .bind(error)
        .execute(tx)
        .await?;
    Ok(())
}

/// `projection`'s live tables resume from `position`: its position gauge
/// says so from the first scrape, before its first batch, so that its lag
/// in events (against the log's head) is known at once. Its lag in seconds
/// is left to the first batch: a guess of 0 would hide one far behind.
pub(crate) fn resumed(projection: &dyn Projection, position: u64) {
    metrics::gauge!("storekeeper_projection_position", "projection" => projection.name()).set(position as f64);
}

/// Metrics and spans of `batch`, applied by `projection` up to `last`.
pub(crate) fn applied<'a>(projection: &dyn Projection, batch: impl IntoIterator<Item = &'a RecordedEvent>, last: &RecordedEvent) {
    metrics::gauge!("storekeeper_projection_position", "projection" => projection.name()).set(last.global_position as f64);
    let behind = (chrono::Utc::now() - last.recorded_at).num_milliseconds().max(0) as f64 / 1000.0;
    metrics::gauge!("storekeeper_projection_lag_seconds", "projection" => projection.name()).set(behind);
    let mut count = 0;
    for event in batch {
        count += 1;
        // Off (a no-op) unless spans are exported or debug logs are on.
        let span =
            tracing::debug_span!(target: telemetry::EVENT_SPANS, "apply", projection = projection.name(), position = event.global_position);
        telemetry::follow(&span, event.metadata.traceparent.as_deref());
        let _in = span.enter();
        tracing::debug!(projection = projection.name(), trace_id = %event.metadata.trace_id(), position = event.global_position, "applied");
    }
    metrics::counter!("storekeeper_projection_events_total", "projection" => projection.name()).increment(count);
}

impl Runner {
    /// Projections fed in process from the log.
    pub fn new(pool: PgPool, log: Arc<dyn EventLog>, projections: Vec<Arc<dyn Projection>>) -> Self {
        Runner::in_process(pool, log, projections, BATCH)
    }

    /// Projections fed in process from the log, `batch` events at most at
    /// once; their live read models together.
    pub fn in_process(pool: PgPool, log: Arc<dyn EventLog>, projections: Vec<Arc<dyn Projection>>, batch: usize) -> Self {
        Runner { pool, projections, sources: eventlog::in_process(log.clone(), batch), in_process: Some(log) }
    }

    /// Projections fed by other sources (Kafka), each alone.
    pub fn with_sources(pool: PgPool, projections: Vec<Arc<dyn Projection>>, sources: SourceFactory) -> Self {
        Runner { pool, projections, sources, in_process: None }
    }

    /// Runs every projection until `shutdown` turns true; a batch in hand is
    /// finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        // Bumped after each rebuild: who is fed together may have changed.
        let rebuilt = self.in_process.is_some().then(|| watch::Sender::new(0u64));
        if let (Some(rebuilt), Some(log)) = (&rebuilt, &self.in_process) {
            let together = Arc::new(Together::new(self.pool.clone(), self.projections.clone()));
            let fed = Fed { pool: self.pool.clone(), sources: self.sources.clone(), log: log.clone(), shutdown: shutdown.clone() };
            let rebuilt = rebuilt.clone();
            tasks.spawn(async move { run_together(together, fed, rebuilt).await });
        }
        for projection in &self.projections {
            // Exported from the start, so that "none parked" reads as 0.
            metrics::counter!("storekeeper_projection_parked_total", "projection" => projection.name().to_owned()).increment(0);
            let (pool, sources, projection, shutdown) = (self.pool.clone(), self.sources.clone(), projection.clone(), shutdown.clone());
            let rebuilt = rebuilt.clone();
            tasks.spawn(async move { run_projection(pool, sources, projection, shutdown, rebuilt).await });
        }
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a projection task panicked");
            }
        }
    }
}

/// What feeds the read models in process.
#[derive(Clone)]
struct Fed {
    pool: PgPool,
    sources: SourceFactory,
    log: Arc<dyn EventLog>,
    shutdown: watch::Receiver<bool>,
}

/// The live read models fed together, until shutdown; followed again from
/// their checkpoints after each rebuild (`rebuilt` moves). One far behind
/// the others (a read model new to this log) catches up apart first.
async fn run_together(together: Arc<Together>, fed: Fed, rebuilt: watch::Sender<u64>) {
    let shutdown = fed.shutdown.clone();
    let mut changed = rebuilt.subscribe();
    while !*shutdown.borrow() {
        changed.borrow_and_update();
        match together.set_apart_laggards().await {
            Ok(laggards) => {
                for projection in laggards {
                    let (together, fed, rebuilt) = (together.clone(), fed.clone(), rebuilt.clone());
                    tokio::spawn(async move {
                        catch_up(&fed, &projection).await;
                        together.rejoin(projection.name());
                        rebuilt.send_modify(|n| *n += 1);
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the read models' checkpoints failed; feeding them together"),
        }
        let (stop, stopped) = watch::channel(false);
        let (mut stopping, mut changes) = (shutdown.clone(), changed.clone());
        let stopper = tokio::spawn(async move {
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => {}
                _ = changes.changed() => {}
            }
            let _ = stop.send(true);
        });
        // The batch in hand is finished before it stops.
        eventlog::follow(&*together, &fed.sources, stopped).await;
        stopper.abort();
        if shutdown.has_changed().is_err() {
            return; // its sender is gone: nothing will say "stop" any more
        }
    }
}

/// Feeds `projection`'s live tables alone until it is within `LAGGING`
/// events of the log's head (or shutdown).
async fn catch_up(fed: &Fed, projection: &Arc<dyn Projection>) {
    tracing::info!(projection = projection.name(), "far behind the other read models: catching up apart");
    let mut alone = ProjectionConsumer::new(&fed.pool, projection, Target::live(&**projection).committed_asynchronously(true));
    alone.near_head = Some(fed.log.clone());
    eventlog::follow(&alone, &fed.sources, alone.until_taken_over(&fed.shutdown)).await;
}

/// One projection: live (unless fed with the others), and beside it a
/// rebuild when its version is new or one was requested (`projections
/// rebuild NAME`). `rebuilt`, when the live read models are fed together,
/// is told of each rebuild that ends.
async fn run_projection(
    pool: PgPool,
    sources: SourceFactory,
    projection: Arc<dyn Projection>,
    mut shutdown: watch::Receiver<bool>,
    rebuilt: Option<watch::Sender<u64>>,
) {
    let name = projection.name();
    let rebuild_ended = || {
        if let Some(rebuilt) = &rebuilt {
            rebuilt.send_modify(|n| *n += 1);
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let row = checkpoint_row(&pool, name).await;
        // Fed with the others (or, far behind them, caught up apart by
        // `run_together`), or alone (here).
        let alone = |row: Option<&CheckpointRow>| rebuilt.is_none() || !fed_together_at(&*projection, row);
        // Fed in process (`rebuilt` is there then): committed asynchronously.
        let in_process = rebuilt.is_some();
        let live = ProjectionConsumer::new(&pool, &projection, Target::live(&*projection).committed_asynchronously(in_process));
        let rebuild = ProjectionConsumer::new(&pool, &projection, Target::rebuild(&*projection).committed_asynchronously(in_process));
        match row {
            // An older version serves reads until its replacement is built.
            Ok(Some(row)) if row.version < projection.version() => {
                tracing::info!(
                    projection = name,
                    from = row.version,
                    to = projection.version(),
                    "new version: rebuilding beside the live tables"
                );
                eventlog::follow(&rebuild, &sources, rebuild.until_taken_over(&shutdown)).await;
                rebuild_ended();
            }
            Ok(Some(row)) if row.rebuild_requested => {
                tracing::info!(projection = name, "rebuild requested: building beside the live tables");
                if alone(Some(&row)) {
                    tokio::select! {
                        _ = eventlog::follow(&live, &sources, shutdown.clone()) => return,
                        _ = eventlog::follow(&rebuild, &sources, rebuild.until_taken_over(&shutdown)) => {}
                    }
                } else {
                    eventlog::follow(&rebuild, &sources, rebuild.until_taken_over(&shutdown)).await;
                }
                rebuild_ended();
            }
            Ok(row) => {
                if alone(row.as_ref()) {
                    tokio::select! {
                        _ = eventlog::follow(&live, &sources, shutdown.clone()) => return,
                        _ = rebuild_requested(&pool, name) => {}
                    }
                } else {
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = rebuild_requested(&pool, name) => {}
                    }
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

/// One projection, live or rebuilding, as a consumer of the log.
struct ProjectionConsumer {
    pool: PgPool,
    projection: Arc<dyn Projection>,
    target: Target,
    /// The generation this run resumed in, and the checkpoint's position
    /// as this run last committed it.
    run: std::sync::Mutex<(Uuid, u64)>,
    /// Turned true once this run is done: a rebuild that took over, or a
    /// catch-up that came near the head.
    taken_over: watch::Sender<bool>,
    /// A catch-up: done within `LAGGING` events of this log's head.
    near_head: Option<Arc<dyn EventLog>>,
    rate: std::sync::Mutex<Rate>,
}

impl ProjectionConsumer {
    fn new(pool: &PgPool, projection: &Arc<dyn Projection>, target: Target) -> Self {
        ProjectionConsumer {
            pool: pool.clone(),
            projection: projection.clone(),
            target,
            run: std::sync::Mutex::new((Uuid::nil(), 0)),
            taken_over: watch::Sender::new(false),
            near_head: None,
            rate: std::sync::Mutex::new(Rate::default()),
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
        *self.run.lock().expect("run lock") = (generation, resume.progress.position);
        self.rate.lock().expect("rate lock").start();
        if self.target.schema.is_none() {
            resumed(&*self.projection, resume.progress.position);
        } else if resume.progress.position > 0 {
            self.take_over_if_caught_up(true).await?;
        }
        Ok(resume)
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let run = *self.run.lock().expect("run lock");
        apply_batch(&self.pool, &*self.projection, &self.target, run, batch, &self.rate).await?;
        if let Some(last) = batch.events.iter().map(|e| e.global_position).max() {
            self.run.lock().expect("run lock").1 = run.1.max(last);
            if let Some(log) = &self.near_head
                && log.head().await?.is_some_and(|head| head.saturating_sub(last) <= LAGGING)
            {
                self.taken_over.send_replace(true);
            }
        }
        if self.target.schema.is_some() {
            self.take_over_if_caught_up(false).await?;
        }
        Ok(())
    }
}

impl ProjectionConsumer {
    /// A rebuild has caught up once it has applied all the live tables
    /// have: the swap then never shows readers an older view than before.
    /// Checked after each batch, and again when the rebuild resumes: a
    /// take-over that failed (a deadlock with the live run, a lost
    /// connection) is tried again then, even if no event comes after.
    async fn take_over_if_caught_up(&self, resuming: bool) -> Result<(), BoxError> {
        let both = progress(&self.pool, &[self.projection.name(), &self.target.checkpoint]).await?;
        if let [live, Some(rebuilt)] = &both[..]
            && (if resuming {
                live.as_ref().is_some_and(|live| rebuilt.includes(live))
            } else {
                live.as_ref().is_none_or(|live| rebuilt.includes(live))
            })
        {
            take_over(&self.pool, &*self.projection).await?;
            self.taken_over.send_replace(true);
        }
        Ok(())
    }
}
