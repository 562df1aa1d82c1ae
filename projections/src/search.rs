//! The product search index (tantivy), fed from the log.
//!
//! For every batch it re-reads the products the batch touched from the log
//! and replaces their documents (delete, then add, by product id);
//! discontinued products leave the index. How far the index has applied the
//! log (its `Progress`, per partition when fed from Kafka) rides in the
//! commit payload, so the index and its checkpoint can never disagree after
//! a crash. So does the index's generation, minted when the directory is
//! created: fed from Kafka, each node's index is its own consumer group,
//! and a new directory starts from the beginning. One reader serves
//! searches and is reloaded after each commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::Aggregate;
use domain::events::EventCodec;
use domain::product::{Product, ProductAggregate, ProductEvent};
use eventlog::source::BoxError;
use eventlog::{Batch, Consumer, EventLog, EventLogError, Progress, RecordedEvent, Resume, SourceFactory};
use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, FacetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, BoostQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Facet, FacetOptions, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, TextFieldIndexing, TextOptions, Value,
};
use tantivy::{DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::watch;

/// Bumped when the schema or what is indexed changes: the index is then
/// rebuilt from the log.
pub const INDEX_VERSION: &str = "products-v2";
const WRITER_MEMORY: usize = 50_000_000;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Directory(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error(transparent)]
    Log(#[from] EventLogError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    sku: Field,
    name: Field,
    description: Field,
    category: Field,
    category_facet: Field,
    price: Field,
    currency: Field,
    in_stock: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Names and descriptions are stemmed, so "waters" finds "water".
    let stemmed = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer("en_stem").set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        sku: b.add_text_field("sku", TEXT | STORED),
        name: b.add_text_field("name", stemmed.clone() | STORED),
        description: b.add_text_field("description", stemmed),
        category: b.add_text_field("category", STRING | STORED),
        category_facet: b.add_facet_field("category_facet", FacetOptions::default()),
        price: b.add_i64_field("price", INDEXED | FAST | STORED),
        currency: b.add_text_field("currency", STORED),
        in_stock: b.add_u64_field("in_stock", INDEXED | FAST | STORED),
    };
    (b.build(), fields)
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    generation: String,
    progress: watch::Sender<Progress>,
    last: Mutex<Option<(u64, uuid::Uuid)>>,
    rate: Mutex<crate::status::Rate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Relevance,
    PriceAsc,
    PriceDesc,
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub q: String,
    pub category: Option<String>,
    pub in_stock: Option<bool>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    pub sort: Sort,
    pub limit: usize,
    pub offset: usize,
}

/// One search hit, as the query API answers it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Hit {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: serde_json::Value,
    pub in_stock: bool,
    pub score: Option<f32>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    pub total: usize,
    /// `{"category": {"<category>": count}}`.
    pub facets: serde_json::Value,
}

/// What each commit records beside the documents.
#[derive(Serialize, Deserialize)]
struct Payload {
    index: String,
    generation: String,
    progress: Progress,
    /// The position and id of the last event applied: which log the index
    /// was built from (none in indexes from before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<(u64, uuid::Uuid)>,
}

fn payload(generation: &str, progress: &Progress, last: Option<(u64, uuid::Uuid)>) -> String {
    serde_json::to_string(&Payload { index: INDEX_VERSION.into(), generation: generation.into(), progress: progress.clone(), last })
        .expect("a payload serializes")
}

/// Empties `dir` as one step: it is renamed aside, then deleted. A crash
/// while deleting leaves an index whole or none, never a `meta.json`
/// naming segments that are gone (which no start could open).
fn wipe(dir: &Path) -> std::io::Result<()> {
    let mut aside = dir.as_os_str().to_owned();
    aside.push(".dropped");
    let aside = std::path::PathBuf::from(aside);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)?;
    }
    if dir.exists() {
        std::fs::rename(dir, &aside)?;
        std::fs::remove_dir_all(&aside)?;
    }
    std::fs::create_dir_all(dir)
}

fn parse_payload(payload: Option<&str>) -> Option<Payload> {
    serde_json::from_str::<Payload>(payload?).ok().filter(|p| p.index == INDEX_VERSION)
}

impl SearchIndex {
    /// Opens the index in `dir`, creating it, or recreating it when it was
    /// built by another index version.
    pub fn open(dir: &Path) -> Result<Arc<SearchIndex>, SearchError> {
        Self::open_as_is(dir).or_else(|error| {
            // Another process holds it: never wiped from under it.
            if matches!(error, SearchError::Index(tantivy::TantivyError::LockFailure(..))) {
                return Err(error);
            }
            // Derived data that cannot be read (files lost, a crash while
            // wiping before `wipe` did it in one step) is built again.
            tracing::warn!(dir = %dir.display(), %error, "the product index cannot be opened: building it again");
            wipe(dir)?;
            Self::open_as_is(dir)
        })
    }

    fn open_as_is(dir: &Path) -> Result<Arc<SearchIndex>, SearchError> {
        std::fs::create_dir_all(dir)?;
        let (schema, fields) = schema();
        let existing = Index::open_in_dir(dir).ok().filter(|index| {
            index.schema() == schema && parse_payload(index.load_metas().ok().and_then(|m| m.payload).as_deref()).is_some()
        });
        let index = match existing {
            Some(index) => index,
            None => {
                wipe(dir)?;
                let index = Index::create_in_dir(dir, schema)?;
                let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY)?;
                let mut commit = writer.prepare_commit()?;
                commit.set_payload(&payload(&uuid::Uuid::new_v4().to_string(), &Progress::default(), None));
                commit.commit()?;
                index
            }
        };
        let Payload { generation, progress, last, .. } =
            parse_payload(index.load_metas()?.payload.as_deref()).expect("the index was just checked or created with a payload");
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let rate = Mutex::new(crate::status::Rate::default());
        rate.lock().expect("fresh").start();
        Ok(Arc::new(SearchIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            generation,
            progress: watch::Sender::new(progress),
            last: Mutex::new(last),
            rate,
        }))
    }

    /// Opens the index in `dir` for `log`: an index built from another log
    /// (a fresh or restored database beside an old directory) is dropped
    /// and built again from the start, never served.
    pub async fn open_for(dir: &Path, log: &dyn EventLog) -> Result<Arc<SearchIndex>, SearchError> {
        let index = Self::open(dir)?;
        if index.built_from(log).await? {
            return Ok(index);
        }
        tracing::warn!(dir = %dir.display(), position = index.position(), "the product index was built from another log: building it again");
        drop(index);
        wipe(dir)?;
        Self::open(dir)
    }

    /// Whether the log holds the last event this index applied, where the
    /// index says it was.
    async fn built_from(&self, log: &dyn EventLog) -> Result<bool, EventLogError> {
        let last = *self.last.lock().expect("last event poisoned");
        let at = match last {
            Some((position, _)) => position,
            None => self.position(),
        };
        if at == 0 {
            return Ok(true);
        }
        let found = log.read_all(at - 1, 1).await?;
        Ok(match (found.first(), last) {
            (Some(e), Some((position, id))) => e.global_position == position && e.event_id == id,
            // Written before the last event was kept: the log reaches as
            // far as the index at least.
            (Some(_), None) => true,
            (None, _) => false,
        })
    }

    /// The highest log position the index has applied and committed.
    pub fn position(&self) -> u64 {
        self.progress.borrow().position
    }

    /// Events indexed per second lately (a moving average over batches).
    pub fn events_per_second(&self) -> f64 {
        self.rate.lock().expect("rate lock").per_second
    }

    /// Follows how far the index has applied the log.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    fn document(&self, p: &Product) -> TantivyDocument {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, p.id.to_string());
        doc.add_text(f.sku, p.sku.as_str());
        doc.add_text(f.name, &p.name);
        doc.add_text(f.description, &p.description);
        doc.add_text(f.category, &p.category);
        doc.add_facet(f.category_facet, Facet::from_path([p.category.as_str()]));
        doc.add_i64(f.price, p.price.amount_minor);
        doc.add_text(f.currency, p.price.currency.as_str());
        doc.add_u64(f.in_stock, u64::from(p.stock > 0));
        doc
    }

    /// Replaces the documents of `products` (`None` or discontinued: gone)
    /// and commits with the progress after `batch`.
    fn apply(&self, products: Vec<(uuid::Uuid, Option<Product>)>, batch: &Batch) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().expect("index writer poisoned");
        for (id, product) in products {
            writer.delete_term(Term::from_field_text(self.fields.id, &id.to_string()));
            if let Some(product) = product.filter(|p| !p.discontinued) {
                writer.add_document(self.document(&product))?;
            }
        }
        let mut progress = self.progress.borrow().clone();
        progress.advance(batch);
        let mut last = self.last.lock().expect("last event poisoned");
        if let Some(e) = batch.events.last() {
            *last = Some((e.global_position, e.event_id));
        }
        let started = std::time::Instant::now();
        let mut commit = writer.prepare_commit()?;
        commit.set_payload(&payload(&self.generation, &progress, *last));
        drop(last);
        commit.commit()?;
        metrics::histogram!("storekeeper_search_commit_seconds").record(started.elapsed().as_secs_f64());
        drop(writer);
        self.reader.reload()?;
        metrics::gauge!("storekeeper_projection_position", "projection" => NAME).set(progress.position as f64);
        self.progress.send_replace(progress);
        self.rate.lock().expect("rate lock").observe(batch.events.len());
        Ok(())
    }

    /// Keeps the index up to date until `shutdown`, fed by `sources`; the
    /// documents come from `log`.
    pub async fn run(self: Arc<Self>, log: Arc<dyn EventLog>, sources: SourceFactory, shutdown: watch::Receiver<bool>) {
        let indexer = Indexer { index: self, log, known: Mutex::new(HashMap::new()), next_commit: Mutex::new(None) };
        eventlog::follow(&indexer, &sources, shutdown).await
    }

    /// Whether every word of `q` is a term of the name, SKU or description
    /// (each field tokenizes the query its own way).
    fn all_words_known(&self, searcher: &tantivy::Searcher, q: &str) -> Result<bool, SearchError> {
        let f = self.fields;
        let mut known: Vec<bool> = Vec::new();
        for field in [f.name, f.sku, f.description] {
            let mut tokenizer = self.index.tokenizer_for_field(field)?;
            let mut words = Vec::new();
            tokenizer.token_stream(q).process(&mut |token| words.push(token.text.clone()));
            known.resize(known.len().max(words.len()), false);
            for (i, word) in words.iter().enumerate() {
                if known[i] {
                    continue;
                }
                for segment in searcher.segment_readers() {
                    if segment.inverted_index(field)?.terms().get(word.as_bytes())?.is_some() {
                        known[i] = true;
                        break;
                    }
                }
            }
        }
        Ok(known.iter().all(|k| *k))
    }

    pub fn search(&self, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let q = request.q.trim();
        if !q.is_empty() {
            let fields = vec![f.name, f.sku, f.description];
            let mut exact = QueryParser::for_index(&self.index, fields.clone());
            exact.set_conjunction_by_default();
            let (exact, _) = exact.parse_query_lenient(q);
            // Typo tolerance costs a fuzzy expansion per word and field, so
            // it is paid only when some word is not in the index as written.
            let text: Box<dyn Query> = if self.all_words_known(&searcher, q)? {
                exact
            } else {
                let mut fuzzy = QueryParser::for_index(&self.index, fields.clone());
                fuzzy.set_conjunction_by_default();
                for field in fields {
                    fuzzy.set_field_fuzzy(field, false, 1, true);
                }
                let (fuzzy, _) = fuzzy.parse_query_lenient(q);
                Box::new(BooleanQuery::new(vec![
                    (Occur::Should, Box::new(BoostQuery::new(exact, 2.0)) as Box<dyn Query>),
                    (Occur::Should, fuzzy),
                ]))
            };
            must.push((Occur::Must, text));
        }
        if let Some(category) = &request.category {
            must.push((Occur::Must, Box::new(TermQuery::new(Term::from_field_text(f.category, category), IndexRecordOption::Basic))));
        }
        if let Some(in_stock) = request.in_stock {
            must.push((
                Occur::Must,
                Box::new(TermQuery::new(Term::from_field_u64(f.in_stock, u64::from(in_stock)), IndexRecordOption::Basic)),
            ));
        }
        if request.min_price.is_some() || request.max_price.is_some() {
            let bound =
                |v: Option<i64>| v.map_or(std::ops::Bound::Unbounded, |v| std::ops::Bound::Included(Term::from_field_i64(f.price, v)));
            must.push((Occur::Must, Box::new(RangeQuery::new(bound(request.min_price), bound(request.max_price)))));
        }
        let query: Box<dyn Query> = if must.is_empty() { Box::new(AllQuery) } else { Box::new(BooleanQuery::new(must)) };

        let mut facets = FacetCollector::for_field("category_facet");
        facets.add_facet("/");
        let top = TopDocs::with_limit(request.limit.max(1)).and_offset(request.offset);
        let (docs, total, facet_counts): (Vec<(Option<f32>, DocAddress)>, usize, _) = match request.sort {
            Sort::Relevance => {
                let (docs, total, facets) = searcher.search(&query, &(top, Count, facets))?;
                (docs.into_iter().map(|(score, address)| (Some(score), address)).collect(), total, facets)
            }
            Sort::PriceAsc | Sort::PriceDesc => {
                let order = if request.sort == Sort::PriceAsc { Order::Asc } else { Order::Desc };
                let (docs, total, facets) = searcher.search(&query, &(top.order_by_fast_field::<i64>("price", order), Count, facets))?;
                (docs.into_iter().map(|(_, address)| (None, address)).collect(), total, facets)
            }
        };
        let mut hits = Vec::with_capacity(docs.len());
        for (score, address) in docs {
            let doc: TantivyDocument = searcher.doc(address)?;
            let text = |field: Field| doc.get_first(field).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let price = doc.get_first(f.price).and_then(|v| v.as_i64()).unwrap_or_default();
            hits.push(Hit {
                id: text(f.id),
                sku: text(f.sku),
                name: text(f.name),
                category: text(f.category),
                price: serde_json::json!({"amount_minor": price, "currency": text(f.currency)}),
                in_stock: doc.get_first(f.in_stock).and_then(|v| v.as_u64()) == Some(1),
                score,
            });
        }
        let mut categories = serde_json::Map::new();
        for (facet, count) in facet_counts.get("/") {
            let name = facet.to_path().last().map(|s| s.to_string()).unwrap_or_default();
            categories.insert(name, serde_json::json!(count));
        }
        Ok(SearchResults { hits, total, facets: serde_json::json!({ "category": categories }) })
    }
}

/// The index's name among consumers (and in `/v1/projections`).
pub const NAME: &str = crate::names::SEARCH;

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
                && let Some(id) = e.stream_id.strip_prefix("product-").and_then(|id| uuid::Uuid::parse_str(id).ok())
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
