//! Runs the order process (`domain::process`) against the log.
//!
//! It consumes the log from its checkpoint (in process, or from Kafka),
//! turns each event into the commands the policy asks for, and stores its
//! checkpoint after each batch. Its commands are idempotent per order, so
//! after a crash the events since the last checkpoint are simply handled
//! again. Fed in process, one instance runs at a time per database (a
//! session advisory lock elects it); fed from Kafka, the consumer group
//! shares the partitions between instances instead.

use std::time::Duration;

use async_trait::async_trait;
use domain::StreamId;
use domain::events::DomainEvent;
use domain::order::OrderAggregate;
use domain::process::{Step, react};
use domain::product::ProductAggregate;
use eventlog::source::BoxError;
use eventlog::{Batch, Consumer, Metadata, Progress, RecordedEvent, Resume, SourceFactory};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tracing::Instrument;

use crate::service::{CommandService, ServiceError};

pub use domain::process::NAME;

/// Tries per step before the batch fails and is resumed from the checkpoint.
const STEP_ATTEMPTS: u32 = 3;

pub struct ProcessManager {
    service: CommandService,
    pool: PgPool,
    sources: SourceFactory,
    /// Whether to elect one instance per database first (a source that is
    /// not partitioned would hand every instance every event).
    elect: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint store: {0}")]
    Checkpoint(#[from] sqlx::Error),
}

/// What became of one event.
pub enum Handled {
    Done,
    /// A step that cannot be taken as things are (an event that cannot
    /// be decoded, a step the domain refuses, a stream that cannot be
    /// read): parked with this error, so that its order shows it and a
    /// retry can take it once the cause is mended; the others go on.
    Parked(String),
}

impl ProcessManager {
    /// Fed in process from the service's log.
    pub fn new(service: CommandService, pool: PgPool) -> Self {
        let sources = eventlog::in_process(service.log().clone(), 200);
        ProcessManager { service, pool, sources, elect: true }
    }

    /// Fed by a partitioned source (a Kafka consumer group), which shares
    /// the work between instances.
    pub fn with_partitioned_source(mut self, sources: SourceFactory) -> Self {
        self.sources = sources;
        self.elect = false;
        self
    }

    pub async fn checkpoint(pool: &PgPool) -> Result<u64, sqlx::Error> {
        eventlog::progress::load_checkpoint(pool, NAME).await
    }

    async fn save_checkpoint(&self, batch: &Batch) -> Result<(), sqlx::Error> {
        let last = batch.events.iter().map(|e| e.global_position).max().unwrap_or(0);
        // Asynchronous commit: a checkpoint lost in a crash of PostgreSQL
        // only has its events handled again, and every step is idempotent
        // (keyed by the event and its place).
        let mut tx = self.pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await?;
        eventlog::progress::save_checkpoint(&mut *tx, NAME, last).await?;
        eventlog::progress::save_partitions(&mut tx, NAME, batch).await?;
        tx.commit().await?;
        metrics::gauge!("storekeeper_consumer_position", "consumer" => NAME).set(last as f64);
        Ok(())
    }

    /// Waits until this process holds the leadership lock (or shutdown).
    /// The lock lives as long as the returned connection, which is taken out
    /// of the pool so that it cannot outlive this run there.
    async fn lead(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Option<PgConnection>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?.detach();
        loop {
            let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended('storekeeper:' || $1, 0))")
                .bind(NAME)
                .fetch_one(&mut conn)
                .await?;
            if won {
                return Ok(Some(conn));
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Runs until `shutdown` turns true, finishing the batch in hand.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        // Exported from the first scrape, so that "none parked" reads as 0.
        metrics::counter!("storekeeper_projection_parked_total", "projection" => NAME).increment(0);
        if !self.elect {
            eventlog::follow(&self, &self.sources.clone(), shutdown).await;
            return Ok(());
        }
        let Some(leadership) = self.lead(&mut shutdown).await? else { return Ok(()) };
        eventlog::follow(&self, &self.sources.clone(), shutdown).await;
        // Closing the session gives up the lock.
        let _ = leadership.close().await;
        Ok(())
    }

    /// A few quick tries for a failing step (a lock timeout, a lost
    /// connection); then the batch fails, and `follow` resumes from the
    /// checkpoint after its own backoff, which shutdown interrupts. The
    /// steps are idempotent, so handling the batch's events again is safe.
    pub async fn handle_with_retries(&self, event: &RecordedEvent) -> Result<Handled, ServiceError> {
        let (mut delay, mut attempt) = (Duration::from_millis(50), 0);
        loop {
            attempt += 1;
            match self.handle(event).await {
                Ok(handled) => return Ok(handled),
                Err(e) if attempt >= STEP_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, position = event.global_position, attempt, "order process step failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
            }
        }
    }

    /// Parks a step that cannot be taken. The process does not hold the
    /// event's stream back: one product's events concern many orders, and
    /// each order's own rules make a late step harmless (a reservation
    /// that arrives after its order was cancelled is discarded and
    /// released).
    async fn park(&self, parked: eventlog::progress::Parked<'_>, error: &str) -> Result<(), sqlx::Error> {
        tracing::error!(position = parked.position, stream_id = parked.stream_id, %error, "order process: parking a step it cannot take");
        let mut conn = self.pool.acquire().await?;
        eventlog::progress::park(&mut conn, NAME, parked, error, 1).await
    }

    async fn handle(&self, event: &RecordedEvent) -> Result<Handled, ServiceError> {
        let decoded = match DomainEvent::decode(&event.event_type, event.schema_version, &event.data) {
            Ok(decoded) => decoded,
            Err(e) => return Ok(Handled::Parked(format!("cannot decode: {e}"))),
        };
        let Ok(StreamId { id: entity_id, .. }) = StreamId::parse(&event.stream_id) else {
            return Ok(Handled::Parked(format!("not a stream of an entity: {}", event.stream_id)));
        };
        for (i, step) in react(entity_id, &decoded).into_iter().enumerate() {
            let metadata = Metadata {
                actor: format!("system:{NAME}"),
                role: None,
                correlation_id: event.metadata.correlation_id,
                causation_id: Some(event.event_id),
                request_id: None,
                idempotency_key: Some(format!("{}/{i}", event.event_id)),
                traceparent: Some(telemetry::traceparent(&tracing::Span::current()).unwrap_or_else(|| event.metadata.child_span())),
            };
            let (target, result) = match step {
                Step::Product { product_id, command } => {
                    (product_id, self.service.execute::<ProductAggregate>(product_id, command, None, &metadata).await)
                }
                Step::Order { order_id, command } => {
                    (order_id, self.service.execute::<OrderAggregate>(order_id, command, None, &metadata).await)
                }
            };
            match result {
                Ok(_) => {}
                Err(ServiceError::Domain(e)) => return Ok(Handled::Parked(format!("step {i} (on {target}) refused: {e}"))),
                Err(e @ ServiceError::Decode { .. }) => return Ok(Handled::Parked(format!("step {i} (on {target}): {e}"))),
                Err(e) => return Err(e),
            }
        }
        Ok(Handled::Done)
    }

    /// Takes a parked step again (`projections retry order-process`):
    /// answers the error it is still parked for, if any. The steps that
    /// were taken before are idempotent, so only what is missing happens.
    pub async fn retry(&self, event: &RecordedEvent) -> Result<Option<String>, ServiceError> {
        Ok(match self.handle_with_retries(event).await? {
            Handled::Done => None,
            Handled::Parked(error) => Some(error),
        })
    }
}

#[async_trait]
impl Consumer for ProcessManager {
    fn name(&self) -> &str {
        NAME
    }

    async fn resume(&self) -> Result<Resume, BoxError> {
        let mut progress = Progress { position: Self::checkpoint(&self.pool).await?, ..Progress::default() };
        eventlog::progress::load_partitions(&self.pool, NAME, &mut progress).await?;
        // The process manager never starts over, so its generation is fixed.
        Ok(Resume { consumer: NAME.into(), generation: "1".into(), progress })
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        for message in &batch.unreadable {
            self.park(message.into(), &format!("{} ({})", message.error, message.origin)).await?;
        }
        for event in batch.events.iter().filter(|e| domain::process::REACTS_TO.contains(&e.event_type.as_str())) {
            // Under the event's trace, when spans are exported.
            let span = tracing::info_span!(target: telemetry::SPANS, "order_process", stream_id = %event.stream_id, position = event.global_position, correlation_id = %event.metadata.correlation_id);
            telemetry::follow(&span, event.metadata.traceparent.as_deref());
            if let Handled::Parked(error) = self.handle_with_retries(event).instrument(span).await? {
                self.park(event.into(), &error).await?;
            }
        }
        Ok(self.save_checkpoint(batch).await?)
    }
}
