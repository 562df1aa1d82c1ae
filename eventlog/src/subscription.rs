//! A catch-up subscription: reads the log in batches from a position, then
//! follows it live. Which events it may read is the adapter's business
//! (`EventLog::read_all` never returns past an event that may still
//! appear), so this loop is the same for every backend.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{EventLog, EventLogError, RecordedEvent};

pub struct Subscription {
    log: Arc<dyn EventLog>,
    appends: watch::Receiver<u64>,
    position: u64,
    batch_size: usize,
    /// How long to wait for a wake-up before looking again anyway, for
    /// appends made by other processes.
    poll_interval: Duration,
}

impl Subscription {
    /// Follows the log from just after `after` (0: from the start).
    pub fn new(log: Arc<dyn EventLog>, after: u64) -> Self {
        Subscription { appends: log.appends(), log, position: after, batch_size: 1000, poll_interval: Duration::from_millis(20) }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Position of the last event handed out.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next batch of events, waiting while there are none.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventLogError> {
        loop {
            self.appends.borrow_and_update();
            let batch = self.log.read_all(self.position, self.batch_size).await?;
            if let Some(last) = batch.last() {
                self.position = last.global_position;
                return Ok(batch);
            }
            let _ = tokio::time::timeout(self.poll_interval, self.appends.changed()).await;
        }
    }
}
