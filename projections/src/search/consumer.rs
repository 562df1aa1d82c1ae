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
use sqlx::PgPool;
use tokio::sync::watch;

use super::{NAME, SearchIndex};

impl SearchIndex {
    /// Keeps the index up to date until `shutdown`, fed by `sources`; the
    /// documents come from `log`, and what cannot be applied is parked in
    /// `pool`'s dead letters.
    pub async fn run(self: Arc<Self>, pool: PgPool, log: Arc<dyn EventLog>, sources: SourceFactory, shutdown: watch::Receiver<bool>) {
        // Exported from the first scrape (empty until the first commit).
        let _ = metrics::histogram!("storekeeper_search_commit_seconds");
        metrics::counter!("storekeeper_projection_parked_total", "projection" => NAME).increment(0);
        let indexer = Indexer { index: self, pool, log, known: Mutex::new(HashMap::new()), next_commit: Mutex::new(None) };
        eventlog::follow(&indexer, &sources, shutdown).await
    }
}

struct Indexer {
    index: Arc<SearchIndex>,
    pool: PgPool,
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

/// What a batch parks: entries with their errors, and the streams held
/// back (each from its first parked position).
#[derive(Default)]
struct Parking {
    entries: Vec<(Entry, Option<String>)>,
    held: BTreeMap<String, i64>,
}

/// One parked entry: an event, or a message that claims to be one.
struct Entry {
    stream_id: String,
    position: i64,
    event_type: String,
    origin: Option<String>,
}

impl Parking {
    /// Parks `e`: for `error`, or, with none, held back behind its stream's
    /// first parked event.
    fn event(&mut self, e: &RecordedEvent, error: Option<String>) {
        let entry =
            Entry { stream_id: e.stream_id.clone(), position: e.global_position as i64, event_type: e.event_type.clone(), origin: None };
        self.park(entry, error);
    }

    fn park(&mut self, entry: Entry, error: Option<String>) {
        let first = self.held.entry(entry.stream_id.clone()).or_insert(entry.position);
        *first = (*first).min(entry.position);
        self.entries.push((entry, error));
    }

    fn holds(&self, stream_id: &str) -> bool {
        self.held.contains_key(stream_id)
    }

    /// Writes what was parked, in one transaction, under the index's
    /// dead-letter lock (shared; a retry takes it exclusively). A stream a
    /// retry released since the batch began is not held back behind what
    /// is gone: its product is read again from the log with the next batch.
    async fn write(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mut tx = pool.begin().await?;
        sqlx::query(&crate::dead_letters::lock_dead_letters(NAME, false)).execute(&mut *tx).await?;
        let still = parked_streams(&mut tx).await?;
        let failing_now: std::collections::BTreeSet<String> =
            self.entries.iter().filter(|(_, error)| error.is_some()).map(|(e, _)| e.stream_id.clone()).collect();
        for (entry, error) in &self.entries {
            if error.is_none() && !still.contains_key(&entry.stream_id) && !failing_now.contains(&entry.stream_id) {
                continue;
            }
            let error = match error {
                Some(error) => error.clone(),
                None => format!("held back behind the parked event at position {} of this stream", self.held[&entry.stream_id]),
            };
            tracing::error!(consumer = NAME, position = entry.position, stream_id = %entry.stream_id, %error, "parking an event");
            let parked = eventlog::progress::Parked {
                position: entry.position,
                stream_id: &entry.stream_id,
                event_type: &entry.event_type,
                origin: entry.origin.as_deref(),
            };
            eventlog::progress::park(&mut tx, NAME, parked, &error, 1).await?;
        }
        tx.commit().await
    }
}

/// The streams the index's parked events hold back, as PostgreSQL has
/// them now (a retry deletes them).
async fn parked_streams(conn: &mut sqlx::PgConnection) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    sqlx::query_as("SELECT stream_id, min(global_position) FROM dead_letters WHERE projection = $1 GROUP BY stream_id")
        .bind(NAME)
        .fetch_all(conn)
        .await
        .map(|rows: Vec<(String, i64)>| rows.into_iter().collect())
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
        let mut conn = self.pool.acquire().await?;
        let held = parked_streams(&mut conn).await?;
        drop(conn);
        let mut parking = Parking { held, ..Parking::default() };
        // Streams this index held back that a retry has released since:
        // their products are read again from the log.
        let released: Vec<String> =
            self.index.held.lock().expect("held streams poisoned").keys().filter(|s| !parking.holds(s)).cloned().collect();
        for message in &batch.unreadable {
            let error = format!("{} ({})", message.error, message.origin);
            let entry = Entry {
                stream_id: message.stream_id.clone(),
                position: message.position,
                event_type: message.event_type.clone(),
                origin: Some(message.origin.clone()),
            };
            parking.park(entry, Some(error));
        }
        let mut touched: BTreeMap<uuid::Uuid, Vec<&RecordedEvent>> = BTreeMap::new();
        for e in &batch.events {
            if ProductEvent::TYPES.iter().any(|(ty, _)| *ty == e.event_type)
                && let Some(id) = StreamId::id_in(&e.stream_id, Category::Product)
            {
                if parking.holds(&e.stream_id) {
                    parking.event(e, None);
                } else {
                    touched.entry(id).or_default().push(e);
                }
            }
        }
        let mut known = std::mem::take(&mut *self.known.lock().expect("known products poisoned"));
        if known.len() > KNOWN_PRODUCTS {
            known.clear();
        }
        for stream in &released {
            if let Some(id) = StreamId::id_in(stream, Category::Product) {
                known.remove(&id);
                touched.entry(id).or_default();
            }
        }
        let mut products = Vec::with_capacity(touched.len());
        for (id, mut events) in touched {
            events.sort_by_key(|e| e.stream_version);
            // Where folding can start: what is remembered, or nothing at
            // all when the batch holds the product's first event.
            let start = match known.remove(&id) {
                Some((state, version)) => Some((state, Some(version))),
                None if events.first().is_some_and(|e| e.stream_version == 0) => Some((None, None)),
                None => None,
            };
            let folded = match start {
                Some(start) => fold(start, &events),
                None => Folding::FromTheLog,
            };
            let folded = match folded {
                Folding::FromTheLog => match load_product(&*self.log, id).await {
                    Ok(loaded) => Folding::Folded(loaded.0, loaded.1),
                    Err(eventlog::FoldError::Decode { stream_id, version, source }) => {
                        // The event that fails, wherever it is in the stream.
                        let failing = self.log.read_stream(&stream_id, version, 1).await?.into_iter().next();
                        let error = format!("cannot decode: stream {stream_id}, version {version}: {source}");
                        Folding::Failed(failing.map(Box::new), error)
                    }
                    Err(e) => return Err(e.into()),
                },
                folded => folded,
            };
            match folded {
                Folding::Folded(state, version) => {
                    products.push((id, state.clone()));
                    known.insert(id, (state, version));
                }
                // The product's document stays as it was; the event that
                // failed holds its stream back, and so do the rest.
                Folding::Failed(failing, error) => {
                    // Parked: the event that fails (an event of the log, so
                    // that a retry finds it), and the batch's events of
                    // the product after it, behind it.
                    let at = failing.as_ref().map_or(0, |e| e.global_position);
                    if let Some(failing) = &failing {
                        parking.event(failing, Some(error.clone()));
                    }
                    for e in events.iter().filter(|e| e.global_position > at) {
                        parking.event(e, None);
                    }
                }
                Folding::FromTheLog => unreachable!("read from the log above"),
            }
        }
        *self.known.lock().expect("known products poisoned") = known;
        // Parked first: a crash before the index commits parks again, which
        // counts an attempt more and loses nothing.
        parking.write(&self.pool).await?;
        let next = *self.next_commit.lock().expect("commit clock poisoned");
        if let Some(next) = next {
            tokio::time::sleep_until(next.into()).await;
        }
        let started = std::time::Instant::now();
        let (index, batch, held) = (self.index.clone(), batch.clone(), parking.held);
        let result = tokio::task::spawn_blocking(move || index.apply(products, &batch, held)).await.expect("the indexing task panicked");
        *self.next_commit.lock().expect("commit clock poisoned") = Some(next_commit_after(std::time::Instant::now(), started.elapsed()));
        if result.is_err() {
            // What is remembered may be ahead of the index now.
            self.known.lock().expect("known products poisoned").clear();
        }
        Ok(result?)
    }
}

/// A product folded over a batch's events.
enum Folding {
    Folded(Option<Product>, u64),
    /// A gap, or nothing remembered: the log has it.
    FromTheLog,
    /// The event that cannot be decoded (if the log still has it), and why.
    Failed(Option<Box<RecordedEvent>>, String),
}

/// Folds `events` (in stream order) onto what is remembered of a product.
fn fold((mut state, mut version): (Option<Product>, Option<u64>), events: &[&RecordedEvent]) -> Folding {
    for e in events {
        let next = version.map_or(0, |v| v + 1);
        if e.stream_version < next {
            continue; // already folded in
        }
        if e.stream_version > next {
            return Folding::FromTheLog; // a gap: read the log instead
        }
        match ProductEvent::decode(&e.event_type, e.schema_version, &e.data) {
            Ok(event) => state = ProductAggregate::evolve(state, &event),
            Err(error) => return Folding::Failed(Some(Box::new((*e).clone())), format!("cannot decode: {error}")),
        }
        version = Some(next);
    }
    match version {
        Some(version) => Folding::Folded(state, version),
        None => Folding::FromTheLog,
    }
}

/// A product as the log says it is now, and its stream version: from its
/// snapshot onward, so a product with a long history costs its newest
/// events, and the state folded is bounded (open reservations only).
async fn load_product(log: &dyn EventLog, id: uuid::Uuid) -> Result<(Option<Product>, u64), eventlog::FoldError> {
    let folded = eventlog::load::<ProductAggregate>(log, &domain::stream_id::<ProductAggregate>(id), None).await?;
    Ok((folded.state, folded.version.unwrap_or(0)))
}

/// Retries the index's parked events: a product whose stream now folds
/// from the log (a release that can decode it) is released, and each
/// node's indexer reads it again from the log with its next batch; one
/// that still fails stays parked. A parked message that was not an event
/// of the log is dropped.
pub async fn retry_parked(pool: &PgPool, log: &dyn EventLog) -> Result<crate::Retried, crate::RetryError> {
    let mut conn = pool.begin().await?;
    sqlx::raw_sql(&crate::dead_letters::lock_dead_letters(NAME, true)).execute(&mut *conn).await?;
    let mut retried = crate::Retried { applied: 0, still_parked: 0, discarded: 0 };
    let mut streams: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for entry in crate::parked_in_order(&mut conn, log, NAME).await? {
        match entry {
            crate::ParkedEntry::Event(e) => streams.entry(e.stream_id).or_default().push(e.global_position as i64),
            crate::ParkedEntry::NotInTheLog(position) => {
                crate::forget_parked(&mut conn, NAME, position).await?;
                retried.discarded += 1;
            }
        }
    }
    for (stream, positions) in streams {
        let folds = match StreamId::id_in(&stream, Category::Product) {
            Some(id) => match load_product(log, id).await {
                Ok(_) => true,
                Err(eventlog::FoldError::Decode { .. }) => false,
                Err(eventlog::FoldError::Log(e)) => return Err(e.into()),
                Err(e @ eventlog::FoldError::TooLong { .. }) => unreachable!("a load folds the whole stream: {e}"),
            },
            // Not a product: nothing of the index's.
            None => true,
        };
        if !folds {
            retried.still_parked += positions.len() as u64;
            continue;
        }
        for position in positions {
            crate::forget_parked(&mut conn, NAME, position).await?;
            retried.applied += 1;
        }
    }
    conn.commit().await?;
    Ok(retried)
}
