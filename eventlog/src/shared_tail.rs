//! One reader of the log for every consumer in a process.
//!
//! The projections, the search indexer, the order process manager and the
//! relay each follow the whole log, mostly at the same place: catching up
//! side by side, or at the tail. Read one by one, each read was paid (the
//! query, the rows, the JSON) once per consumer. `SharedTail` keeps the
//! ranges recently read from the log, and a read that falls in one is
//! answered from memory; concurrent reads of a range not yet held wait for
//! the first of them rather than asking the database again.
//!
//! A range is only kept as read, from just after `after` to its last
//! event: everything up to that event is final (the adapter's `read_all`
//! never passes an event that may still appear), so an answer from memory
//! is the answer the log would give. An empty read is kept only briefly
//! ([`EMPTY_FOR`], shorter than a subscription's poll) and only until this
//! process appends again: consumers idle at the tail, each polling for
//! other processes' appends, then ask the database once between them, and
//! a consumer woken by an append always looks at the log itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{AppendResult, EventLog, EventLogError, Receipt, RecordedEvent, Snapshot, StreamWrite};

/// Events read at once when the log is asked, whatever the caller's limit
/// (others are likely to want the rest).
const READ_AHEAD: usize = 2000;
/// Events held at most; the oldest ranges go first.
const HELD_EVENTS: usize = 32_000;
/// How long a read that found nothing new answers the same from memory.
pub const EMPTY_FOR: std::time::Duration = std::time::Duration::from_millis(15);

struct Range {
    after: u64,
    last: u64,
    events: Arc<Vec<RecordedEvent>>,
}

pub struct SharedTail {
    log: Arc<dyn EventLog>,
    ranges: Mutex<VecDeque<Range>>,
    /// Reads on their way to the log, by where they start: a read from the
    /// same place waits for it, then looks in memory again. Reads from
    /// elsewhere (a consumer far behind) do not wait.
    reading: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// This process's appends, counted by the log.
    appends: watch::Receiver<u64>,
    /// The last read that found nothing: from where, when, and the count
    /// of appends before it.
    empty: Mutex<Option<(u64, std::time::Instant, u64)>>,
}

impl SharedTail {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        let appends = log.appends();
        SharedTail { log, ranges: Mutex::new(VecDeque::new()), reading: Mutex::new(HashMap::new()), appends, empty: Mutex::new(None) }
    }

    /// Whether a read from `after` found nothing a moment ago, with no
    /// append of this process since.
    fn found_empty(&self, after: u64) -> bool {
        let appended = *self.appends.borrow();
        self.empty
            .lock()
            .expect("shared tail poisoned")
            .is_some_and(|(from, at, count)| from == after && count == appended && at.elapsed() < EMPTY_FOR)
    }

    /// What memory holds after `after`, up to `limit` events, and whether
    /// that is all up to `limit` (false: a held range ended first).
    fn held(&self, after: u64, limit: usize) -> Option<(Vec<RecordedEvent>, bool)> {
        let ranges = self.ranges.lock().expect("shared tail poisoned");
        let range = ranges.iter().rev().find(|r| r.after <= after && after < r.last)?;
        let start = range.events.partition_point(|e| e.global_position <= after);
        let events: Vec<RecordedEvent> = range.events[start..].iter().take(limit).cloned().collect();
        metrics::counter!("storekeeper_shared_tail_reads_total", "from" => "memory").increment(1);
        let whole = events.len() == limit;
        Some((events, whole))
    }

    /// One step of a read: from memory, else from the log (where a read
    /// from the same place already on its way is waited for).
    async fn read_from(&self, after: u64, limit: usize) -> Result<(Vec<RecordedEvent>, bool), EventLogError> {
        if let Some(held) = self.held(after, limit) {
            return Ok(held);
        }
        if self.found_empty(after) {
            return Ok((Vec::new(), true));
        }
        let turn = Turn::take(self, after);
        let _turn = turn.lock.lock().await;
        if let Some(held) = self.held(after, limit) {
            return Ok(held);
        }
        if self.found_empty(after) {
            return Ok((Vec::new(), true));
        }
        metrics::counter!("storekeeper_shared_tail_reads_total", "from" => "log").increment(1);
        // Counted before the read: an append during it is not missed.
        let appended = *self.appends.borrow();
        let started = std::time::Instant::now();
        // A read of a few events (a point lookup) is not read ahead.
        let events = self.log.read_all(after, if limit < 100 { limit } else { limit.max(READ_AHEAD) }).await?;
        if events.is_empty() {
            *self.empty.lock().expect("shared tail poisoned") = Some((after, started, appended));
        }
        let answer = events.iter().take(limit).cloned().collect();
        self.keep(after, Arc::new(events));
        // The log answers everything up to its frontier at once.
        Ok((answer, true))
    }

    fn keep(&self, after: u64, events: Arc<Vec<RecordedEvent>>) {
        let Some(last) = events.last().map(|e| e.global_position) else { return };
        let mut ranges = self.ranges.lock().expect("shared tail poisoned");
        ranges.push_back(Range { after, last, events });
        let mut held: usize = ranges.iter().map(|r| r.events.len()).sum();
        while held > HELD_EVENTS && ranges.len() > 1 {
            held -= ranges.pop_front().map_or(0, |r| r.events.len());
        }
    }
}

/// A place in the queue of reads from one position; the last to leave
/// (finished or cancelled) clears the entry.
struct Turn<'a> {
    tail: &'a SharedTail,
    after: u64,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> Turn<'a> {
    fn take(tail: &'a SharedTail, after: u64) -> Self {
        let lock = tail.reading.lock().expect("shared tail poisoned").entry(after).or_default().clone();
        Turn { tail, after, lock }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut reading = self.tail.reading.lock().expect("shared tail poisoned");
        if reading.get(&self.after).is_some_and(|l| Arc::ptr_eq(l, &self.lock)) && Arc::strong_count(&self.lock) <= 2 {
            reading.remove(&self.after);
        }
    }
}

#[async_trait]
impl EventLog for SharedTail {
    async fn append_once(&self, writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        self.log.append_once(writes, receipt).await
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        self.log.read_stream(stream_id, from_version, limit).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        // As the log would answer: everything up to `limit`, so a held
        // range that ends early is continued from where it ends.
        let mut answer: Vec<RecordedEvent> = Vec::new();
        let mut at = after;
        loop {
            let (events, whole) = self.read_from(at, limit - answer.len()).await?;
            answer.extend(events);
            match answer.last() {
                Some(last) if !whole && answer.len() < limit => at = last.global_position,
                _ => return Ok(answer),
            }
        }
    }

    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        self.log.receipt(receipt).await
    }

    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        self.log.snapshot(stream_id).await
    }

    async fn snapshot_at_most(&self, stream_id: &str, version: u64) -> Result<Option<Snapshot>, EventLogError> {
        self.log.snapshot_at_most(stream_id, version).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        self.log.save_snapshot(snapshot).await
    }

    fn appends(&self) -> watch::Receiver<u64> {
        self.log.appends()
    }

    async fn head(&self) -> Result<Option<u64>, EventLogError> {
        self.log.head().await
    }

    async fn frontier(&self) -> Result<Option<u64>, EventLogError> {
        self.log.frontier().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::Subscription;
    use crate::counted::{Counted, write};

    #[tokio::test]
    async fn idle_consumers_at_the_tail_ask_the_log_once_between_them_and_wake_on_an_append() {
        let counted = Arc::new(Counted::default());
        let tail: Arc<dyn EventLog> = Arc::new(SharedTail::new(counted.clone()));
        tail.append(vec![write()]).await.unwrap();
        let mut subscriptions: Vec<Subscription> = (0..6).map(|_| Subscription::new(tail.clone(), 0)).collect();
        for s in &mut subscriptions {
            assert_eq!(s.next_batch().await.unwrap().len(), 1);
        }
        // Six consumers idle at the tail for half a second, each looking
        // every 20 ms: one in three of their looks reaches the log or less.
        counted.1.store(0, Ordering::Relaxed);
        let idle = subscriptions.iter_mut().map(|s| tokio::time::timeout(std::time::Duration::from_millis(500), s.next_batch()));
        for waited in futures::future::join_all(idle).await {
            assert!(waited.is_err(), "nothing was appended");
        }
        let reads = counted.reads();
        assert!(reads <= 6 * 25 / 3, "{reads} reads of the log for 6 idle consumers over 500 ms");
        // An append wakes each of them at once, past the empty read kept.
        let mut subscriptions: Vec<Subscription> = (0..6).map(|_| Subscription::new(tail.clone(), 1)).collect();
        for s in &mut subscriptions {
            assert!(tokio::time::timeout(std::time::Duration::from_millis(30), s.next_batch()).await.is_err());
        }
        tail.append(vec![write()]).await.unwrap();
        for s in &mut subscriptions {
            let batch = tokio::time::timeout(std::time::Duration::from_millis(15), s.next_batch()).await.expect("woken at once").unwrap();
            assert_eq!(batch.len(), 1);
        }
    }
}
