//! Runs the order process (`domain::process`) against the log.
//!
//! It tails the log from its checkpoint, turns each event into the commands
//! the policy asks for, and stores its checkpoint after each batch. Its
//! commands are idempotent per order, so after a crash the events since the
//! last checkpoint are simply handled again. One instance runs at a time per
//! database: a session advisory lock elects it, so several `serve`
//! processes can share a database safely.

use std::time::Duration;

use domain::events::DomainEvent;
use domain::order::OrderAggregate;
use domain::process::{Step, react};
use domain::product::ProductAggregate;
use eventlog::{Metadata, RecordedEvent, Subscription};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::service::{CommandService, ServiceError};

pub const NAME: &str = "order-process";

pub struct ProcessManager {
    service: CommandService,
    pool: PgPool,
    batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("checkpoint store: {0}")]
    Checkpoint(#[from] sqlx::Error),
}

/// What became of one event.
enum Handled {
    Done,
    /// Could not be handled and never will be (a bug or corrupt data):
    /// logged and passed over so that the others are not held up.
    Skipped,
}

impl ProcessManager {
    pub fn new(service: CommandService, pool: PgPool) -> Self {
        ProcessManager { service, pool, batch_size: 200 }
    }

    pub async fn checkpoint(pool: &PgPool) -> Result<u64, sqlx::Error> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1").bind(NAME).fetch_optional(pool).await?;
        Ok(position.unwrap_or(0) as u64)
    }

    async fn save_checkpoint(&self, position: u64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
        )
        .bind(NAME)
        .bind(position as i64)
        .execute(&self.pool)
        .await?;
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
        let Some(leadership) = self.lead(&mut shutdown).await? else { return Ok(()) };
        let result = self.follow(shutdown).await;
        // Closing the session gives up the lock.
        let _ = leadership.close().await;
        result
    }

    async fn follow(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let start = Self::checkpoint(&self.pool).await?;
        tracing::info!(position = start, "order process manager started");
        let mut subscription = Subscription::new(self.service.log().clone(), start).with_batch_size(self.batch_size);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let batch = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                batch = subscription.next_batch() => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    subscription =
                        Subscription::new(self.service.log().clone(), Self::checkpoint(&self.pool).await?).with_batch_size(self.batch_size);
                    continue;
                }
            };
            for event in &batch {
                self.handle_with_retries(event).await;
            }
            if let Some(last) = batch.last() {
                self.save_checkpoint(last.global_position).await?;
                metrics::gauge!("storekeeper_consumer_position", "consumer" => NAME).set(last.global_position as f64);
            }
        }
    }

    async fn handle_with_retries(&self, event: &RecordedEvent) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.handle(event).await {
                Ok(Handled::Done) => return,
                Ok(Handled::Skipped) => {
                    metrics::counter!("storekeeper_process_manager_skipped_total").increment(1);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, position = event.global_position, "order process step failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(stream_id = %event.stream_id, position = event.global_position, correlation_id = %event.metadata.correlation_id))]
    async fn handle(&self, event: &RecordedEvent) -> Result<Handled, ServiceError> {
        let decoded = match DomainEvent::decode(&event.event_type, event.schema_version, event.data.clone()) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!(error = %e, "cannot decode event; skipping it");
                return Ok(Handled::Skipped);
            }
        };
        let Some(entity_id) = event.stream_id.split_once('-').and_then(|(_, id)| Uuid::parse_str(id).ok()) else {
            return Ok(Handled::Skipped);
        };
        for (i, step) in react(entity_id, &decoded).into_iter().enumerate() {
            let metadata = Metadata {
                actor: format!("system:{NAME}"),
                role: None,
                correlation_id: event.metadata.correlation_id,
                causation_id: Some(event.event_id),
                request_id: None,
                idempotency_key: Some(format!("{}/{i}", event.event_id)),
            };
            let result = match step {
                Step::Product { product_id, command } => {
                    self.service.execute::<ProductAggregate>(product_id, command, None, &metadata).await
                }
                Step::Order { order_id, command } => self.service.execute::<OrderAggregate>(order_id, command, None, &metadata).await,
            };
            match result {
                Ok(_) => {}
                Err(ServiceError::Domain(e)) => {
                    tracing::error!(error = %e, "the domain refused a process step; skipping it");
                    return Ok(Handled::Skipped);
                }
                Err(e @ ServiceError::Decode { .. }) => {
                    tracing::error!(error = %e, "a target stream cannot be read; skipping the step");
                    return Ok(Handled::Skipped);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Handled::Done)
    }
}
