//! Where projections get their events from. The in-process source tails the
//! log directly (single machine); a Kafka source joins a consumer group
//! (scale-out). Both hand out events in per-stream order from a position.

use std::sync::Arc;

use async_trait::async_trait;
use eventlog::{EventLog, EventLogError, RecordedEvent, Subscription};

#[async_trait]
pub trait EventSource: Send {
    /// The next events after those already handed out, waiting for some.
    async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventLogError>;

    /// Called once the last batch is durably applied: a source that tracks
    /// its own progress (Kafka offsets) records it now.
    async fn ack(&mut self) -> Result<(), EventLogError> {
        Ok(())
    }
}

/// A catch-up subscription to the log in this process.
pub struct InProcessSource(Subscription);

impl InProcessSource {
    pub fn new(log: Arc<dyn EventLog>, after: u64, batch_size: usize) -> Self {
        InProcessSource(Subscription::new(log, after).with_batch_size(batch_size))
    }
}

#[async_trait]
impl EventSource for InProcessSource {
    async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventLogError> {
        self.0.next_batch().await
    }
}
