//! The port that feeds everything downstream of the log (projections, the
//! search index, the order process manager), and the one loop that follows
//! it.
//!
//! A source hands out batches in per-stream order. The in-process source
//! reads the log in global order, so "applied up to position P" is one
//! number. A partitioned source (Kafka) interleaves partitions, so a
//! consumer records the highest position applied *per partition*: a write
//! at position P to stream S is visible once the partition of S has
//! reached P. `Progress` carries both and answers that question.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{EventLog, EventLogError, RecordedEvent, Subscription};

/// Events handed out together, with where each partition got to.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub events: Vec<RecordedEvent>,
    /// Partitioned sources: the highest position in this batch per partition.
    pub partitions: BTreeMap<i32, u64>,
    /// Partitioned sources: how many partitions the topic has (0: none).
    pub partition_count: i32,
    /// Messages that are not events of the log (garbage produced to the
    /// topic, a corrupt copy): each consumer parks them like a poison
    /// event, so nothing stalls and nothing passes unseen.
    pub unreadable: Vec<Unreadable>,
}

impl Batch {
    /// Whether there is anything for a consumer to do: events, progress
    /// to record, or messages to park.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.partitions.is_empty() && self.unreadable.is_empty()
    }
}

/// A message a partitioned source could not read as an event. It never
/// moves a partition's progress (what it claims is not to be trusted);
/// it is parked under what it claims to be, so that the stream it names
/// is held back behind it, and a retry applies the log's own event at
/// that position, if the log has one of that stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its key, when that is text; else where it sits.
    pub stream_id: String,
    /// The log position it claims (its `global_position` header), or,
    /// with none, a key below zero made of where it sits: unique, never
    /// a position of the log.
    pub position: i64,
    /// Its `event_type` header, or `unreadable`.
    pub event_type: String,
    /// Where it sits (topic, partition, offset).
    pub origin: String,
    /// Why it cannot be read.
    pub error: String,
}

/// How far a consumer has applied the log.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The highest position applied.
    pub position: u64,
    /// From a partitioned source: the highest position applied per partition.
    #[serde(default)]
    pub partitions: BTreeMap<i32, u64>,
    #[serde(default)]
    pub partition_count: i32,
}

impl Progress {
    pub fn advance(&mut self, batch: &Batch) {
        if let Some(max) = batch.events.iter().map(|e| e.global_position).max() {
            self.position = self.position.max(max);
        }
        for (&partition, &position) in &batch.partitions {
            let entry = self.partitions.entry(partition).or_default();
            *entry = (*entry).max(position);
        }
        if batch.partition_count > 0 {
            self.partition_count = batch.partition_count;
        }
    }

    /// Whether every event up to `token` of `streams` is applied. Without
    /// partitions the single position says so; with them, each stream's
    /// partition must have reached the token (within a partition, events
    /// arrive in position order).
    pub fn covers(&self, token: u64, streams: &[String]) -> bool {
        if self.partition_count == 0 {
            return self.position >= token;
        }
        !streams.is_empty() && streams.iter().all(|s| self.has_applied(s, token))
    }

    /// Whether the event of `stream_id` at `position` is applied: up to the
    /// position, or from a partitioned source, up to its partition's.
    pub fn has_applied(&self, stream_id: &str, position: u64) -> bool {
        if self.partition_count == 0 {
            return self.position >= position;
        }
        self.partitions.get(&partition_for(stream_id, self.partition_count)).is_some_and(|p| *p >= position)
    }

    /// The highest position up to which every event is applied, whatever
    /// its partition.
    pub fn applied_everywhere(&self) -> u64 {
        if self.partition_count == 0 {
            return self.position;
        }
        (0..self.partition_count).map(|p| self.partitions.get(&p).copied().unwrap_or(0)).min().unwrap_or(0)
    }

    pub fn is_partitioned(&self) -> bool {
        self.partition_count > 0
    }

    /// Whether everything `other` has applied, this has too.
    pub fn includes(&self, other: &Progress) -> bool {
        if self.is_partitioned() && other.is_partitioned() {
            other.partitions.iter().all(|(p, at)| self.partitions.get(p).is_some_and(|mine| mine >= at))
        } else {
            self.position >= other.position
        }
    }
}

/// The partition a stream's events go to: a stable hash of the stream id
/// (FNV-1a), so that the relay and every reader agree without asking the
/// broker.
pub fn partition_for(stream_id: &str, partitions: i32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % partitions.max(1) as u64) as i32
}

/// Where a consumer resumes: its progress and its generation, which
/// changes whenever it starts over from the beginning (a rebuild), so that
/// a partitioned source does not pick up offsets of an earlier run.
#[derive(Debug, Clone)]
pub struct Resume {
    pub consumer: String,
    pub generation: String,
    pub progress: Progress,
}

#[async_trait]
pub trait EventSource: Send {
    /// The next events after those already handed out, waiting for some.
    async fn next_batch(&mut self) -> Result<Batch, EventLogError>;

    /// Called once the last batch is durably applied: a source that tracks
    /// its own progress (Kafka offsets) records it now. Failing here loses
    /// nothing: the consumer's own progress decides what is applied.
    async fn ack(&mut self) -> Result<(), EventLogError> {
        Ok(())
    }
}

/// Opens a consumer's source where it left off.
pub type SourceFactory = Arc<dyn Fn(&Resume) -> Result<Box<dyn EventSource>, EventLogError> + Send + Sync>;

/// A catch-up subscription to the log in this process.
///
/// A consumer that comes from a partitioned source (Kafka) has applied
/// each partition up to its own position, and faster partitions are ahead
/// of slower ones. It resumes here from the slowest, passes over what each
/// partition already applied, and keeps its progress per partition (the
/// partitions computed as the relay does), so nothing is skipped or
/// applied twice, now or after a crash, and it can move back to Kafka
/// without starting over.
pub struct InProcessSource {
    subscription: Subscription,
    /// The partitioned progress carried over, if any.
    applied: Option<Progress>,
}

impl InProcessSource {
    pub fn new(log: Arc<dyn EventLog>, after: u64, batch_size: usize) -> Self {
        InProcessSource { subscription: Subscription::new(log, after).with_batch_size(batch_size), applied: None }
    }

    /// Resumes `progress`, partitioned or not.
    pub fn resuming(log: Arc<dyn EventLog>, progress: &Progress, batch_size: usize) -> Self {
        if !progress.is_partitioned() {
            return InProcessSource::new(log, progress.position, batch_size);
        }
        let slowest = (0..progress.partition_count).map(|p| progress.partitions.get(&p).copied().unwrap_or(0)).min().unwrap_or(0);
        InProcessSource { subscription: Subscription::new(log, slowest).with_batch_size(batch_size), applied: Some(progress.clone()) }
    }
}

#[async_trait]
impl EventSource for InProcessSource {
    async fn next_batch(&mut self) -> Result<Batch, EventLogError> {
        let events = self.subscription.next_batch().await?;
        let Some(applied) = &mut self.applied else { return Ok(Batch { events, ..Batch::default() }) };
        let count = applied.partition_count;
        let mut batch = Batch { partition_count: count, ..Batch::default() };
        for event in events {
            let partition = partition_for(&event.stream_id, count);
            let done = applied.partitions.entry(partition).or_default();
            if event.global_position > *done {
                *done = event.global_position;
                batch.partitions.insert(partition, event.global_position);
                batch.events.push(event);
            }
        }
        Ok(batch)
    }
}

/// In-process catch-up subscriptions to `log`.
pub fn in_process(log: Arc<dyn EventLog>, batch_size: usize) -> SourceFactory {
    Arc::new(move |resume: &Resume| {
        Ok(Box::new(InProcessSource::resuming(log.clone(), &resume.progress, batch_size)) as Box<dyn EventSource>)
    })
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Something that applies the log: a projection, the index, a process
/// manager.
#[async_trait]
pub trait Consumer: Send + Sync {
    fn name(&self) -> &str;
    /// Where to resume, from the consumer's durable state.
    async fn resume(&self) -> Result<Resume, BoxError>;
    /// Applies a batch and records the progress, durably, or fails as a whole.
    async fn handle(&self, batch: &Batch) -> Result<(), BoxError>;
}

/// Follows the source for `consumer` until `shutdown` turns true, finishing
/// the batch in hand. Any failure resumes from the consumer's durable
/// progress after a backoff, so nothing is skipped.
pub async fn follow(consumer: &dyn Consumer, sources: &SourceFactory, mut shutdown: watch::Receiver<bool>) {
    let name = consumer.name().to_owned();
    // Exported from the first scrape: a consumer that keeps failing is
    // what `StorekeeperConsumerFailing` watches for.
    metrics::counter!("storekeeper_consumer_restarts_total", "consumer" => name.clone()).increment(0);
    let mut delay = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match follow_once(consumer, sources, &mut shutdown).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(consumer = %name, %error, "consuming the log failed; resuming from the last durable position");
                metrics::counter!("storekeeper_consumer_restarts_total", "consumer" => name.clone()).increment(1);
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long a batch in hand may still take once shutdown is asked for.
/// Past it the batch is abandoned: its transaction rolls back and it is
/// applied again on the next start, so nothing is lost.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

async fn follow_once(consumer: &dyn Consumer, sources: &SourceFactory, shutdown: &mut watch::Receiver<bool>) -> Result<(), BoxError> {
    let resume = tokio::select! {
        _ = shutdown.changed() => return Ok(()),
        resume = consumer.resume() => resume?,
    };
    let mut source = sources(&resume)?;
    tracing::info!(consumer = consumer.name(), position = resume.progress.position, "consuming the log");
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let batch = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            batch = source.next_batch() => batch?,
        };
        if !batch.is_empty() {
            let handled = consumer.handle(&batch);
            tokio::pin!(handled);
            tokio::select! {
                result = &mut handled => result?,
                _ = shutdown.changed() => {
                    match tokio::time::timeout(SHUTDOWN_GRACE, handled).await {
                        Ok(result) => result?,
                        Err(_) => {
                            tracing::warn!(consumer = consumer.name(), "shutting down with a batch unfinished; it is applied again on the next start");
                            return Ok(());
                        }
                    }
                }
            }
        }
        // From Kafka: how far each partition is applied, for its lag.
        for (partition, position) in &batch.partitions {
            metrics::gauge!("storekeeper_kafka_partition_position", "consumer" => consumer.name().to_owned(), "partition" => partition.to_string())
                .set(*position as f64);
        }
        let acked = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            acked = source.ack() => acked,
        };
        if let Err(error) = acked {
            tracing::warn!(consumer = consumer.name(), %error, "recording the source's offsets failed; they will be recorded with the next batch");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_pinned() {
        // The relay and every reader must agree across releases: changing
        // this function reorders streams on a live topic.
        // FNV-1a 64 of the stream id, modulo the partition count (values
        // checked against an independent implementation).
        for (stream, six, three) in [
            ("product-0190f3c4-0000-7000-8000-00000000a001", 2, 2),
            ("order-0190f3c4-0000-7000-8000-00000000e001", 3, 0),
            ("customer-0190f3c4-0000-7000-8000-00000000c001", 3, 0),
            ("", 5, 2),
        ] {
            assert_eq!((partition_for(stream, 6), partition_for(stream, 3)), (six, three), "{stream}");
        }
        assert!((0..1000).map(|i| partition_for(&format!("s-{i}"), 6)).all(|p| (0..6).contains(&p)));
        assert_eq!(partition_for("anything", 1), 0);
    }

    #[test]
    fn a_token_is_covered_once_its_streams_partitions_reach_it() {
        let stream = "order-1".to_owned();
        let mine = partition_for(&stream, 4);
        let other = (mine + 1) % 4;
        let mut progress = Progress::default();
        assert!(!progress.covers(10, std::slice::from_ref(&stream)));
        progress.advance(&Batch { partitions: [(other, 50)].into(), partition_count: 4, ..Batch::default() });
        assert!(!progress.covers(10, std::slice::from_ref(&stream)), "another partition's progress says nothing");
        progress.advance(&Batch { partitions: [(mine, 10)].into(), partition_count: 4, ..Batch::default() });
        assert!(progress.covers(10, std::slice::from_ref(&stream)));
        assert!(!progress.covers(11, std::slice::from_ref(&stream)));
        assert!(!progress.covers(10, &[]), "a token whose streams are unknown is never covered");

        let in_order = Progress { position: 10, ..Progress::default() };
        assert!(in_order.covers(10, &[]) && !in_order.covers(11, &[]));
    }

    #[test]
    fn inclusion_is_partition_by_partition() {
        let a = Progress { position: 9, partitions: [(0, 9), (1, 3)].into(), partition_count: 2 };
        let b = Progress { position: 5, partitions: [(0, 5), (1, 5)].into(), partition_count: 2 };
        assert!(!a.includes(&b), "a higher maximum does not mean every partition is further");
        assert!(a.includes(&Progress { position: 9, partitions: [(0, 9)].into(), partition_count: 2 }));
        assert!(Progress { position: 9, ..Progress::default() }.includes(&Progress { position: 9, ..Progress::default() }));
    }
}
