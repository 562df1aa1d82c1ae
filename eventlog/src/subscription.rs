//! A catch-up subscription: reads the log in batches from a position, then
//! follows it live. Which events it may read is the adapter's business
//! (`EventLog::read_all` never returns past an event that may still
//! appear), so this loop is the same for every backend.
//!
//! While catching up, the next batch is read while the last is applied:
//! a consumer alone (a rebuild) otherwise left the database and itself
//! idle in turn, a third of the time. What is read ahead is what the log
//! would answer later, since `read_all` returns only final events.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{EventLog, EventLogError, RecordedEvent};

/// How long to wait for a wake-up before looking again anyway, for appends
/// made by other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub struct Subscription {
    log: Arc<dyn EventLog>,
    appends: watch::Receiver<u64>,
    position: u64,
    batch_size: usize,
    /// The read of the next batch, started when the last one was full.
    ahead: Option<Ahead>,
}

type Read = Result<Vec<RecordedEvent>, EventLogError>;

/// A read on its way; dropped with the subscription, it stops.
struct Ahead(tokio::task::JoinHandle<Read>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Subscription {
    /// Follows the log from just after `after` (0: from the start).
    pub fn new(log: Arc<dyn EventLog>, after: u64) -> Self {
        Subscription { appends: log.appends(), log, position: after, batch_size: 1000, ahead: None }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Position of the last event handed out.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next batch of events, waiting while there are none.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, EventLogError> {
        loop {
            let batch = match self.ahead.as_mut() {
                Some(ahead) => {
                    let read = (&mut ahead.0).await;
                    self.ahead = None;
                    read.map_err(|e| EventLogError::Backend(Box::new(e)))??
                }
                None => {
                    self.appends.borrow_and_update();
                    self.log.read_all(self.position, self.batch_size).await?
                }
            };
            if let Some(last) = batch.last() {
                self.position = last.global_position;
                if batch.len() == self.batch_size {
                    let (log, after, limit) = (self.log.clone(), self.position, self.batch_size);
                    self.ahead = Some(Ahead(tokio::spawn(async move { log.read_all(after, limit).await })));
                }
                return Ok(batch);
            }
            let _ = tokio::time::timeout(POLL_INTERVAL, self.appends.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counted::{Counted, write};

    #[tokio::test]
    async fn a_full_batch_starts_the_read_of_the_next_and_a_short_one_does_not() {
        let counted = Arc::new(Counted::default());
        for _ in 0..5 {
            counted.append(vec![write()]).await.unwrap();
        }
        let mut sub = Subscription::new(counted.clone(), 0).with_batch_size(2);
        let versions = |batch: Vec<RecordedEvent>| batch.iter().map(|e| e.global_position).collect::<Vec<_>>();
        assert_eq!(versions(sub.next_batch().await.unwrap()), [1, 2]);
        // Not asked for yet, the next batch is being read.
        tokio::time::timeout(Duration::from_secs(5), async {
            while counted.reads() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the next batch is read ahead");
        assert_eq!(versions(sub.next_batch().await.unwrap()), [3, 4]);
        assert_eq!(versions(sub.next_batch().await.unwrap()), [5]);
        assert_eq!(counted.reads(), 3, "each batch read once");
        // At the tail nothing is read ahead: the next look is the next call's.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(counted.reads(), 3);
    }
}
