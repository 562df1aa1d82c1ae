//! Events from Kafka, through a consumer group: several workers with the
//! same group share the partitions. The consumer's own durable progress
//! (per partition, stored with its effects) is the truth: messages at or
//! below it are passed over, so a redelivery after a crash or a rebalance,
//! or a relay's republishing, is not applied again. Offsets are committed
//! only after the batch is applied (`ack`); they only save re-reading.
//! The group is named after the consumer and its generation, so starting
//! over (a rebuild, a new index directory) reads the topic from the start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventlog::{Batch, EventLog, EventLogError, EventSource, Progress, RecordedEvent, Resume};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaError, client};

pub struct KafkaSource {
    /// Shared with the blocking threads that read metadata and commit.
    consumer: Arc<StreamConsumer>,
    topic: String,
    batch_size: usize,
    /// The topic's partition count, read from the broker before the first
    /// batch (off the async threads: librdkafka blocks for it).
    partition_count: Option<i32>,
    /// What the consumer has applied, and what this source has handed out.
    progress: Progress,
    /// Next offset per partition to commit once the batch in hand is applied.
    pending: BTreeMap<i32, i64>,
    /// Partitions to record with the first batch: a consumer that comes
    /// from reading the log in order has applied everything up to its
    /// position, in every partition.
    carried: BTreeMap<i32, u64>,
    /// Per partition, the offset below which an unreadable message came
    /// before the log was read to its head (`covering`).
    covered: BTreeMap<i32, i64>,
}

impl KafkaSource {
    /// Joins the consumer group of `resume`'s consumer and generation.
    /// Does not wait for the broker: the partition count is read with the
    /// first batch.
    pub fn new(brokers: &str, topic: &str, resume: &Resume) -> Result<KafkaSource, KafkaError> {
        let group = format!("storekeeper.{}.{}", resume.consumer, resume.generation);
        let consumer: StreamConsumer = client(brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .set("enable.partition.eof", "false")
            // Fetches return as soon as there is data; this bounds how long
            // an idle fetch waits, and with it the delivery delay on brokers
            // that do not answer a waiting fetch early.
            .set("fetch.wait.max.ms", "10")
            .create()?;
        consumer.subscribe(&[topic])?;
        // Exported from the first scrape: none is the healthy reading.
        metrics::counter!("storekeeper_kafka_unreadable_total").increment(0);
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            batch_size: 500,
            partition_count: None,
            progress: resume.progress.clone(),
            pending: BTreeMap::new(),
            carried: BTreeMap::new(),
            covered: BTreeMap::new(),
        })
    }

    /// The topic's partition count, read once, on a blocking thread.
    async fn partition_count(&mut self) -> Result<i32, EventLogError> {
        if let Some(count) = self.partition_count {
            return Ok(count);
        }
        let (consumer, topic) = (self.consumer.clone(), self.topic.clone());
        let count = tokio::task::spawn_blocking(move || crate::partition_count(consumer.client(), &topic))
            .await
            .map_err(to_log_error)?
            .map_err(to_log_error)?;
        let progress = &mut self.progress;
        if !progress.is_partitioned() && progress.position > 0 {
            self.carried = (0..count).map(|p| (p, progress.position)).collect();
            progress.partitions = self.carried.clone();
            progress.partition_count = count;
        }
        self.partition_count = Some(count);
        Ok(count)
    }

    /// Unreadable messages below these offsets (per partition) came before
    /// the consumer read the log itself to its head, which holds whatever
    /// they could have been: passed over, never parked.
    pub fn covering(mut self, below: BTreeMap<i32, i64>) -> Self {
        self.covered = below;
        self
    }

    /// Whether an unreadable message is of what this consumer has applied
    /// already: it came before the log was read to its head (`covered`),
    /// or it is a copy of an event this partition has applied (it claims a
    /// stream of this partition and a position the partition is past:
    /// within a partition, events come in position order, so the event
    /// itself came before it).
    fn covers(&self, message: &eventlog::Unreadable, partition: i32, offset: i64, partitions: i32) -> bool {
        if self.covered.get(&partition).is_some_and(|below| offset < *below) {
            return true;
        }
        message.position > 0
            && eventlog::partition_for(&message.stream_id, partitions) == partition
            && self.progress.partitions.get(&partition).is_some_and(|applied| *applied >= message.position as u64)
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }
}

/// What a message that is not an event claims to be, from its key and
/// headers, and where it sits.
fn unreadable(message: &impl Message, topic: &str, error: &serde_json::Error) -> eventlog::Unreadable {
    let origin = format!("partition {} offset {} of {topic}", message.partition(), message.offset());
    let header = |name: &str| {
        message.headers().and_then(|headers| {
            headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned)
        })
    };
    // A position it claims that the log could have; else a key below zero
    // made of where it sits, unique per message and never the log's.
    let position = header(crate::headers::GLOBAL_POSITION)
        .and_then(|p| p.parse::<i64>().ok())
        .filter(|p| *p > 0)
        .unwrap_or_else(|| -((i64::from(message.partition()) << 40) + message.offset() + 1));
    // A key or type that no stream or event type could have (empty, long,
    // or with control characters) claims nothing.
    let plausible = |s: &str| !s.is_empty() && s.len() <= 200 && !s.chars().any(char::is_control);
    let stream_id = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| plausible(k))
        .map_or_else(|| format!("kafka-message-{}-{}", message.partition(), message.offset()), str::to_owned);
    let event_type = header(crate::headers::EVENT_TYPE).filter(|t| plausible(t)).unwrap_or_else(|| "unreadable".to_owned());
    eventlog::Unreadable { stream_id, position, event_type, origin, error: format!("not an event of the log: {error}") }
}

fn to_log_error(e: impl std::error::Error + Send + Sync + 'static) -> EventLogError {
    EventLogError::Backend(Box::new(e))
}

#[async_trait]
impl EventSource for KafkaSource {
    async fn next_batch(&mut self) -> Result<Batch, EventLogError> {
        let partition_count = self.partition_count().await?;
        let mut batch = Batch { partition_count, partitions: std::mem::take(&mut self.carried), ..Batch::default() };
        let mut passed_over = 0;
        self.pending.clear();
        loop {
            let message = if batch.events.is_empty() && batch.unreadable.is_empty() && passed_over == 0 {
                self.consumer.recv().await.map_err(to_log_error)?
            } else {
                match tokio::time::timeout(Duration::from_millis(2), self.consumer.recv()).await {
                    Ok(message) => message.map_err(to_log_error)?,
                    Err(_) => break,
                }
            };
            let partition = message.partition();
            self.pending.insert(partition, message.offset() + 1);
            let event: RecordedEvent = match serde_json::from_slice(message.payload().unwrap_or_default()) {
                Ok(event) => event,
                Err(error) => {
                    // Not an event of the log: parked by the consumer, never
                    // a reason to stall the partition.
                    let unreadable = unreadable(&message, &self.topic, &error);
                    metrics::counter!("storekeeper_kafka_unreadable_total").increment(1);
                    if self.covers(&unreadable, partition, message.offset(), partition_count) {
                        tracing::warn!(origin = %unreadable.origin, %error, "an unreadable message of what this consumer has applied already; passing it over");
                        passed_over += 1;
                    } else {
                        tracing::error!(origin = %unreadable.origin, stream_id = %unreadable.stream_id, %error, "an unreadable message on the topic; parking it");
                        batch.unreadable.push(unreadable);
                    }
                    if batch.events.len() + batch.unreadable.len() + passed_over >= self.batch_size {
                        break;
                    }
                    continue;
                }
            };
            let applied = self.progress.partitions.entry(partition).or_default();
            if event.global_position <= *applied {
                // Already applied: a redelivery, or the relay publishing again.
                passed_over += 1;
            } else {
                *applied = event.global_position;
                batch.partitions.insert(partition, event.global_position);
                batch.events.push(event);
            }
            if batch.events.len() + batch.unreadable.len() + passed_over >= self.batch_size {
                break;
            }
        }
        if passed_over > 0 {
            metrics::counter!("storekeeper_kafka_redelivered_total").increment(passed_over as u64);
        }
        Ok(batch)
    }

    async fn ack(&mut self) -> Result<(), EventLogError> {
        if !self.pending.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for (&partition, &offset) in &self.pending {
                offsets.add_partition_offset(&self.topic, partition, Offset::Offset(offset)).map_err(to_log_error)?;
            }
            // A synchronous commit waits for the broker: on a blocking thread.
            let consumer = self.consumer.clone();
            tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
                .await
                .map_err(to_log_error)?
                .map_err(to_log_error)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// A consumer new to the topic (just created, rebuilding, a new index
/// directory, or coming from the in-process source) first reads the log
/// itself, in global order, up to its head: the topic may no longer hold
/// the oldest events, and reading them in order needs no partitions. Then
/// it joins its consumer group, which passes over everything up to where
/// the log reading ended.
pub struct CatchUpSource {
    log: Arc<dyn EventLog>,
    brokers: String,
    topic: String,
    resume: Resume,
    kafka: Option<KafkaSource>,
}

/// Events per read while catching up from the log.
const CATCH_UP_BATCH: usize = 2000;

impl CatchUpSource {
    pub fn new(log: Arc<dyn EventLog>, brokers: &str, topic: &str, resume: &Resume) -> Result<CatchUpSource, KafkaError> {
        let mut source = CatchUpSource { log, brokers: brokers.to_owned(), topic: topic.to_owned(), resume: resume.clone(), kafka: None };
        if resume.progress.is_partitioned() {
            source.kafka = Some(KafkaSource::new(brokers, topic, resume)?);
        }
        Ok(source)
    }
}

/// The high watermark of each of `topic`'s partitions: every message
/// below it is in the topic now (blocking).
fn watermarks(brokers: &str, topic: &str) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let consumer: rdkafka::consumer::BaseConsumer = client(brokers).create()?;
    let count = crate::partition_count(consumer.client(), topic)?;
    (0..count).map(|p| Ok((p, consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?.1))).collect()
}

#[async_trait]
impl EventSource for CatchUpSource {
    async fn next_batch(&mut self) -> Result<Batch, EventLogError> {
        if let Some(kafka) = &mut self.kafka {
            return kafka.next_batch().await;
        }
        // Near the head, the read may be the last: what the topic holds
        // before it is what the log holds up to its end, so an unreadable
        // message among it is passed over once this consumer joins.
        let position = self.resume.progress.position;
        let near_head = self.log.head().await?.is_none_or(|head| head.saturating_sub(position) <= CATCH_UP_BATCH as u64);
        let covered = if near_head {
            let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
            tokio::task::spawn_blocking(move || watermarks(&brokers, &topic)).await.map_err(to_log_error)?.map_err(to_log_error)?
        } else {
            BTreeMap::new()
        };
        let events = self.log.read_all(position, CATCH_UP_BATCH).await?;
        if events.len() < CATCH_UP_BATCH {
            tracing::info!(consumer = %self.resume.consumer, position, "caught up from the log; joining the consumer group");
            let mut resume = self.resume.clone();
            if let Some(last) = events.last() {
                resume.progress.position = last.global_position;
            }
            self.kafka = Some(KafkaSource::new(&self.brokers, &self.topic, &resume).map_err(to_log_error)?.covering(covered));
        }
        if let Some(last) = events.last() {
            self.resume.progress.position = last.global_position;
        }
        Ok(Batch { events, ..Batch::default() })
    }

    async fn ack(&mut self) -> Result<(), EventLogError> {
        match &mut self.kafka {
            Some(kafka) => kafka.ack().await,
            None => Ok(()),
        }
    }
}
