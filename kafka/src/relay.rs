//! The relay: log → Kafka, at least once, in commit order.
//!
//! Its checkpoint (the last global position acknowledged by the broker) is
//! stored in PostgreSQL after each batch. After a crash it resumes from the
//! checkpoint: events published since then are published again, which the
//! consumers absorb.

use std::sync::Arc;
use std::time::Duration;

use eventlog::{EventLog, RecordedEvent, Subscription};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::{KafkaError, client, headers};

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin.create_topics([&new], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::Topic { topic, message: code.to_string() }),
        }
    }
    Ok(())
}

pub struct Relay {
    log: Arc<dyn EventLog>,
    pool: PgPool,
    producer: FutureProducer,
    topic: String,
    batch_size: usize,
}

impl Relay {
    pub fn new(log: Arc<dyn EventLog>, pool: PgPool, brokers: &str, topic: &str) -> Result<Relay, KafkaError> {
        let producer: FutureProducer = client(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Relay { log, pool, producer, topic: topic.to_owned(), batch_size: 1000 })
    }

    fn checkpoint_name(&self) -> String {
        format!("relay:{}", self.topic)
    }

    pub async fn checkpoint(&self) -> Result<u64, sqlx::Error> {
        eventlog::progress::load_checkpoint(&self.pool, &self.checkpoint_name()).await
    }

    async fn save(&self, position: u64) -> Result<(), sqlx::Error> {
        eventlog::progress::save_checkpoint(&self.pool, &self.checkpoint_name(), position).await
    }

    /// Publishes a batch and waits until the broker has acknowledged all of
    /// it. The idempotent producer keeps the order within each partition.
    async fn publish(&self, batch: &[RecordedEvent], partitions: i32) -> Result<(), KafkaError> {
        let mut deliveries = Vec::with_capacity(batch.len());
        for event in batch {
            let payload = serde_json::to_vec(event).expect("envelopes serialize");
            let position = event.global_position.to_string();
            let schema_version = event.schema_version.to_string();
            // W3C trace context: the write's trace (for events from before
            // traces were kept, the correlation id), one span per event.
            let span = tracing::debug_span!(target: telemetry::EVENT_SPANS, "relay", stream_id = %event.stream_id, position = event.global_position);
            telemetry::follow(&span, event.metadata.traceparent.as_deref());
            let trace_id = event.metadata.trace_id();
            let flags = event.metadata.traceparent.as_deref().and_then(|t| t.rsplit('-').next()).unwrap_or("01");
            let traceparent = telemetry::traceparent(&span)
                .unwrap_or_else(|| format!("00-{trace_id}-{}-{flags}", &event.event_id.simple().to_string()[16..]));
            tracing::debug!(parent: &span, trace_id, position = event.global_position, stream_id = %event.stream_id, "relayed");
            let record_headers = OwnedHeaders::new()
                .insert(Header { key: headers::EVENT_TYPE, value: Some(event.event_type.as_str()) })
                .insert(Header { key: headers::SCHEMA_VERSION, value: Some(schema_version.as_str()) })
                .insert(Header { key: headers::GLOBAL_POSITION, value: Some(position.as_str()) })
                .insert(Header { key: headers::TRACEPARENT, value: Some(traceparent.as_str()) });
            let mut record = FutureRecord::to(&self.topic)
                .key(event.stream_id.as_str())
                .partition(eventlog::partition_for(&event.stream_id, partitions))
                .payload(&payload)
                .headers(record_headers);
            let delivery = loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            };
            deliveries.push(delivery);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e.into()),
                Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
            }
        }
        Ok(())
    }

    /// Runs until `shutdown`; a batch in hand is published and checkpointed
    /// first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        'resume: loop {
            let start = self.checkpoint().await?;
            let (producer, topic) = (self.producer.clone(), self.topic.clone());
            let partitions = match tokio::task::spawn_blocking(move || {
                use rdkafka::producer::Producer;
                crate::partition_count(producer.client(), &topic)
            })
            .await
            .expect("reading metadata panicked")
            {
                Ok(partitions) => partitions,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "relay cannot read the topic's partitions; retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue 'resume;
                }
            };
            tracing::info!(topic = %self.topic, position = start, partitions, "relay running");
            let mut subscription = Subscription::new(self.log.clone(), start).with_batch_size(self.batch_size);
            loop {
                let batch = tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    batch = subscription.next_batch() => batch,
                };
                let result = match batch {
                    Ok(batch) => match self.publish(&batch, partitions).await {
                        Ok(()) => match batch.last() {
                            Some(last) => self.save(last.global_position).await.map_err(KafkaError::from).map(|()| batch.len()),
                            None => Ok(0),
                        },
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.into()),
                };
                match result {
                    Ok(published) => metrics::counter!("storekeeper_relay_published_total").increment(published as u64),
                    Err(e) => {
                        tracing::warn!(error = %e, "relay batch failed; resuming from the checkpoint");
                        tokio::select! {
                            _ = shutdown.changed() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        continue 'resume;
                    }
                }
            }
        }
    }
}
