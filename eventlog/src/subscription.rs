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

/// At the tail of a busy log, the least time between one look and the
/// next: a consumer that handed out a short batch lets the next gather for
/// what is left of this after applying it. Under a steady stream of writes
/// every consumer's batch (a transaction, a commit, a read of the log) is
/// then paid for several appends instead of one; a consumer that takes
/// longer than this to apply a batch never waits; and one that found the
/// log idle looks again as soon as it is woken.
pub const GATHER: Duration = Duration::from_millis(4);

pub struct Subscription {
    log: Arc<dyn EventLog>,
    appends: watch::Receiver<u64>,
    position: u64,
    batch_size: usize,
    /// The read of the next batch, started when the last one was full.
    ahead: Option<Ahead>,
    /// When the last short batch that was not empty was handed out: the
    /// log is busy, and the next look waits until `GATHER` after it.
    busy: Option<tokio::time::Instant>,
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
        Subscription { appends: log.appends(), log, position: after, batch_size: 1000, ahead: None, busy: None }
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
                    if let Some(busy) = self.busy.take() {
                        tokio::time::sleep_until(busy + GATHER).await;
                    }
                    self.appends.borrow_and_update();
                    self.log.read_all(self.position, self.batch_size).await?
                }
            };
            if let Some(last) = batch.last() {
                self.position = last.global_position;
                if batch.len() == self.batch_size {
                    let (log, after, limit) = (self.log.clone(), self.position, self.batch_size);
                    self.ahead = Some(Ahead(tokio::spawn(async move { log.read_all(after, limit).await })));
                } else {
                    self.busy = Some(tokio::time::Instant::now());
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

    #[tokio::test(start_paused = true)]
    async fn at_a_busy_tail_a_batch_gathers_for_a_moment_and_after_an_idle_spell_none_waits() {
        let counted = Arc::new(Counted::default());
        counted.append(vec![write()]).await.unwrap();
        let mut sub = Subscription::new(counted.clone(), 0);
        assert_eq!(sub.next_batch().await.unwrap().len(), 1);
        // Busy: the next look comes `GATHER` after the last batch, and takes
        // what arrived meanwhile at once.
        let handed = tokio::time::Instant::now();
        let writer = {
            let counted = counted.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    counted.append(vec![write()]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let batch = sub.next_batch().await.unwrap();
        writer.await.unwrap();
        assert_eq!(handed.elapsed(), GATHER);
        assert_eq!(batch.len(), 3, "the appends made while it gathered, in one batch");
        // Idle, then woken by an append: it reads at once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waiting = tokio::spawn(async move { (sub.next_batch().await.unwrap().len(), tokio::time::Instant::now()) });
        tokio::time::sleep(Duration::from_millis(7)).await;
        // Not yet: nothing was appended.
        assert!(!waiting.is_finished());
        let appended = tokio::time::Instant::now();
        counted.append(vec![write()]).await.unwrap();
        let (len, read) = waiting.await.unwrap();
        assert_eq!((len, read - appended), (1, Duration::ZERO));
    }

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
