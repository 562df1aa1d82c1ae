//! The relay: log → Kafka, at least once, in commit order.
//!
//! It is a consumer of the log like any other, run by `eventlog::follow`.
//! Its checkpoint (the last global position acknowledged by the broker) is
//! stored in PostgreSQL after each batch. After a crash it resumes from the
//! checkpoint: events published since then are published again, which the
//! consumers absorb. It reads the stored log (no vault), so the topic
//! carries ciphertext.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use eventlog::source::{Batch, BoxError, Consumer, Progress, Resume};
use eventlog::{EventLog, RecordedEvent};
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
    /// The topic's partition count, read whenever the relay resumes.
    partitions: AtomicI32,
}

impl Relay {
    pub fn new(log: Arc<dyn EventLog>, pool: PgPool, brokers: &str, topic: &str) -> Result<Relay, KafkaError> {
        let producer: FutureProducer = client(brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Relay { log, pool, producer, topic: topic.to_owned(), batch_size: 1000, partitions: AtomicI32::new(1) })
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
            let flags =
                event.metadata.traceparent.as_deref().and_then(|t| t.rsplit('-').next()).and_then(|f| u8::from_str_radix(f, 16).ok());
            let traceparent = telemetry::traceparent(&span)
                .unwrap_or_else(|| telemetry::w3c::format(&trace_id, &event.event_id.simple().to_string()[16..], flags.unwrap_or(1)));
            tracing::debug!(parent: &span, trace_id, position = event.global_position, stream_id = %event.stream_id, "relayed");
            let mut record_headers = OwnedHeaders::new_with_capacity(12)
                .insert(Header { key: headers::EVENT_TYPE, value: Some(event.event_type.as_str()) })
                .insert(Header { key: headers::SCHEMA_VERSION, value: Some(schema_version.as_str()) })
                .insert(Header { key: headers::GLOBAL_POSITION, value: Some(position.as_str()) })
                .insert(Header { key: headers::TRACEPARENT, value: Some(traceparent.as_str()) });
            for (key, value) in crate::cloudevents::headers(event) {
                record_headers = record_headers.insert(Header { key, value: Some(value.as_str()) });
            }
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

    /// Runs until `shutdown` in `eventlog::follow`, like every consumer of
    /// the log: a batch in hand is given its grace to be published and
    /// checkpointed, and any failure resumes from the checkpoint.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        metrics::counter!("storekeeper_relay_published_total").increment(0);
        let sources = eventlog::source::in_process(self.log.clone(), self.batch_size);
        eventlog::source::follow(&self, &sources, shutdown).await;
        Ok(())
    }

    /// The topic's partition count, read from the broker on a blocking
    /// thread (librdkafka's metadata call blocks).
    async fn read_partitions(&self) -> Result<i32, KafkaError> {
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            crate::partition_count(producer.client(), &topic)
        })
        .await
        .expect("reading metadata panicked")
    }
}

#[async_trait]
impl Consumer for Relay {
    fn name(&self) -> &str {
        "relay"
    }

    /// From the checkpoint, with the topic's partitions read afresh.
    async fn resume(&self) -> Result<Resume, BoxError> {
        let position = self.checkpoint().await?;
        let partitions = self.read_partitions().await?;
        self.partitions.store(partitions, Ordering::Relaxed);
        tracing::info!(topic = %self.topic, position, partitions, "relay running");
        Ok(Resume { consumer: self.checkpoint_name(), generation: String::new(), progress: Progress { position, ..Progress::default() } })
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let Some(last) = batch.events.last() else { return Ok(()) };
        self.publish(&batch.events, self.partitions.load(Ordering::Relaxed)).await?;
        self.save(last.global_position).await?;
        metrics::counter!("storekeeper_relay_published_total").increment(batch.events.len() as u64);
        Ok(())
    }
}
