//! Events from Kafka for projections, through a consumer group: several
//! workers with the same group share the partitions. Offsets are committed
//! only after the runner has committed the batch's rows (`ack`), so a crash
//! redelivers rather than loses.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use eventlog::{EventLogError, RecordedEvent};
use projections::EventSource;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaError, client};

pub struct KafkaSource {
    consumer: StreamConsumer,
    topic: String,
    batch_size: usize,
    /// Next offset per partition to commit once the batch in hand is applied.
    pending: BTreeMap<i32, i64>,
}

impl KafkaSource {
    pub fn new(brokers: &str, group: &str, topic: &str) -> Result<KafkaSource, KafkaError> {
        let consumer: StreamConsumer = client(brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(KafkaSource { consumer, topic: topic.to_owned(), batch_size: 500, pending: BTreeMap::new() })
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }
}

fn to_log_error(e: impl std::error::Error + Send + Sync + 'static) -> EventLogError {
    EventLogError::Backend(Box::new(e))
}

#[async_trait]
impl EventSource for KafkaSource {
    async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventLogError> {
        let mut batch = Vec::new();
        self.pending.clear();
        loop {
            let message = if batch.is_empty() {
                self.consumer.recv().await.map_err(to_log_error)?
            } else {
                match tokio::time::timeout(Duration::from_millis(2), self.consumer.recv()).await {
                    Ok(message) => message.map_err(to_log_error)?,
                    Err(_) => break,
                }
            };
            let event: RecordedEvent = serde_json::from_slice(message.payload().unwrap_or_default()).map_err(to_log_error)?;
            self.pending.insert(message.partition(), message.offset() + 1);
            batch.push(event);
            if batch.len() >= self.batch_size {
                break;
            }
        }
        Ok(batch)
    }

    async fn ack(&mut self) -> Result<(), EventLogError> {
        if !self.pending.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (&partition, &offset) in &self.pending {
                offsets.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).map_err(to_log_error)?;
            }
            self.consumer.commit(&offsets, CommitMode::Sync).map_err(to_log_error)?;
            self.pending.clear();
        }
        Ok(())
    }
}
