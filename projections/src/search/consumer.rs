//! The indexer: a consumer of the log that keeps the index up to date,
//! one commit per batch (or per several, under a steady stream of writes).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::events::EventCodec;
use domain::product::{Product, ProductAggregate, ProductEvent};
use domain::{Aggregate, Category, StreamId};
use eventlog::source::BoxError;
use eventlog::{Batch, Consumer, EventLog, RecordedEvent, Resume, SourceFactory};
use tokio::sync::watch;

use super::{NAME, SearchIndex};

impl SearchIndex {
    /// Keeps the index up to date until `shutdown`, fed by `sources`; the
    /// documents come from `log`.
    pub async fn run(self: Arc<Self>, log: Arc<dyn EventLog>, sources: SourceFactory, shutdown: watch::Receiver<bool>) {
        // Exported from the first scrape (empty until the first commit).
        let _ = metrics::histogram!("storekeeper_search_commit_seconds");
        let indexer = Indexer { index: self, log, known: Mutex::new(HashMap::new()), next_commit: Mutex::new(None) };
        eventlog::follow(&indexer, &sources, shutdown).await
    }
}

struct Indexer {
    index: Arc<SearchIndex>,
    log: Arc<dyn EventLog>,
    /// Products as the events indexed so far left them, with the stream
    /// version of the last one: a batch that continues a known product is
    /// folded in memory; only products seen for the first time, or with a
    /// gap, are read from the log.
    known: Mutex<HashMap<uuid::Uuid, (Option<Product>, u64)>>,
    /// When the next commit may start.
    next_commit: Mutex<Option<std::time::Instant>>,
}

/// After a commit that took `d`, the next one starts no sooner than `d`
/// after it ended. A tantivy commit costs ~10 ms of CPU however small it is
/// (more on a large index); under a steady stream of writes, committing back
/// to back would take a core from the APIs and the projections, so the
/// indexer keeps to about half of one and what arrives meanwhile goes into
/// the next commit. After a quiet spell a batch commits at once.
fn next_commit_after(ended: std::time::Instant, took: std::time::Duration) -> std::time::Instant {
    ended + took
}

/// Beyond this many remembered products, the memory is cleared and
/// products are read from the log again as they come.
const KNOWN_PRODUCTS: usize = 1_000_000;

fn decode(e: &RecordedEvent) -> Option<ProductEvent> {
    match ProductEvent::decode(&e.event_type, e.schema_version, &e.data) {
        Ok(event) => Some(event),
        Err(error) => {
            tracing::error!(%error, stream_id = %e.stream_id, "search indexer: cannot decode a product event; skipping it");
            None
        }
    }
}

#[async_trait]
impl Consumer for Indexer {
    fn name(&self) -> &str {
        NAME
    }

    async fn resume(&self) -> Result<Resume, BoxError> {
        Ok(Resume { consumer: NAME.into(), generation: self.index.generation.clone(), progress: self.index.progress.borrow().clone() })
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        let mut touched: BTreeMap<uuid::Uuid, Vec<&RecordedEvent>> = BTreeMap::new();
        for e in &batch.events {
            if ProductEvent::TYPES.iter().any(|(ty, _)| *ty == e.event_type)
                && let Some(id) = StreamId::id_in(&e.stream_id, Category::Product)
            {
                touched.entry(id).or_default().push(e);
            }
        }
        let mut known = std::mem::take(&mut *self.known.lock().expect("known products poisoned"));
        if known.len() > KNOWN_PRODUCTS {
            known.clear();
        }
        let mut products = Vec::with_capacity(touched.len());
        for (id, mut events) in touched {
            events.sort_by_key(|e| e.stream_version);
            // Where folding can start: what is remembered, or nothing at
            // all when the batch holds the product's first event.
            let start = match known.remove(&id) {
                Some((state, version)) => Some((state, Some(version))),
                None if events[0].stream_version == 0 => Some((None, None)),
                None => None,
            };
            let folded = start.and_then(|(mut state, mut version)| {
                for e in &events {
                    let next = version.map_or(0, |v| v + 1);
                    if e.stream_version < next {
                        continue; // already folded in
                    }
                    if e.stream_version > next {
                        return None; // a gap: read the log instead
                    }
                    if let Some(event) = decode(e) {
                        state = ProductAggregate::evolve(state, &event);
                    }
                    version = Some(next);
                }
                version.map(|v| (state, v))
            });
            let (state, version) = match folded {
                Some(folded) => folded,
                None => load_product(&*self.log, id).await?,
            };
            products.push((id, state.clone()));
            known.insert(id, (state, version));
        }
        *self.known.lock().expect("known products poisoned") = known;
        let next = *self.next_commit.lock().expect("commit clock poisoned");
        if let Some(next) = next {
            tokio::time::sleep_until(next.into()).await;
        }
        let started = std::time::Instant::now();
        let (index, batch) = (self.index.clone(), batch.clone());
        let result = tokio::task::spawn_blocking(move || index.apply(products, &batch)).await.expect("the indexing task panicked");
        *self.next_commit.lock().expect("commit clock poisoned") = Some(next_commit_after(std::time::Instant::now(), started.elapsed()));
        if result.is_err() {
            // What is remembered may be ahead of the index now.
            self.known.lock().expect("known products poisoned").clear();
        }
        Ok(result?)
    }
}

/// A product as the log says it is now, and its stream version: from its
/// snapshot onward, so a product with a long history costs its newest
/// events, and the state folded is bounded (open reservations only).
async fn load_product(log: &dyn EventLog, id: uuid::Uuid) -> Result<(Option<Product>, u64), eventlog::FoldError> {
    let folded = eventlog::load::<ProductAggregate>(log, &domain::stream_id::<ProductAggregate>(id), None).await?;
    Ok((folded.state, folded.version.unwrap_or(0)))
}
