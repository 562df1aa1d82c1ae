//! The index itself: its schema, the documents it holds of products, and
//! the commit that records how far it has applied the log beside them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use domain::product::Product;
use eventlog::{Batch, EventLog, EventLogError, Progress};
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    FAST, Facet, FacetOptions, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};
use tokio::sync::watch;

use super::NAME;
use super::directory::Unsynced;
use crate::status::Rate;

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
pub(super) struct Fields {
    pub(super) id: Field,
    pub(super) sku: Field,
    pub(super) name: Field,
    pub(super) description: Field,
    pub(super) category: Field,
    category_facet: Field,
    pub(super) price: Field,
    pub(super) currency: Field,
    pub(super) in_stock: Field,
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
    pub(super) index: Index,
    pub(super) reader: IndexReader,
    writer: Mutex<IndexWriter>,
    pub(super) fields: Fields,
    pub(super) generation: String,
    pub(super) progress: watch::Sender<Progress>,
    last: Mutex<Option<(u64, uuid::Uuid)>>,
    /// The streams held back by a parked event, with its position: their
    /// documents stay as they were until a retry releases them, and are
    /// then read again from the log.
    pub(super) held: Mutex<BTreeMap<String, i64>>,
    rate: Mutex<Rate>,
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
    /// The streams held back, so that a retry made while the node was
    /// down still has their documents read again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    held: BTreeMap<String, i64>,
}

fn payload(generation: &str, progress: &Progress, last: Option<(u64, uuid::Uuid)>, held: &BTreeMap<String, i64>) -> String {
    serde_json::to_string(&Payload {
        index: INDEX_VERSION.into(),
        generation: generation.into(),
        progress: progress.clone(),
        last,
        held: held.clone(),
    })
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
        // Written without waiting for the disk (`directory`): an index whose
        // files do not all check out is built again, never served.
        let existing = Index::open(Unsynced::open(dir)?).ok().filter(|index| {
            index.schema() == schema
                && parse_payload(index.load_metas().ok().and_then(|m| m.payload).as_deref()).is_some()
                && index.validate_checksum().is_ok_and(|damaged| damaged.is_empty())
        });
        let index = match existing {
            Some(index) => index,
            None => {
                wipe(dir)?;
                let index = Index::create(Unsynced::open(dir)?, schema, tantivy::IndexSettings::default())?;
                let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_MEMORY)?;
                let mut commit = writer.prepare_commit()?;
                commit.set_payload(&payload(&uuid::Uuid::new_v4().to_string(), &Progress::default(), None, &BTreeMap::new()));
                commit.commit()?;
                index
            }
        };
        let Payload { generation, progress, last, held, .. } =
            parse_payload(index.load_metas()?.payload.as_deref()).expect("the index was just checked or created with a payload");
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let rate = Mutex::new(Rate::default());
        rate.lock().expect("fresh").start();
        Ok(Arc::new(SearchIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            generation,
            progress: watch::Sender::new(progress),
            last: Mutex::new(last),
            held: Mutex::new(held),
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
    pub(super) fn apply(
        &self,
        products: Vec<(uuid::Uuid, Option<Product>)>,
        batch: &Batch,
        held: BTreeMap<String, i64>,
    ) -> Result<(), SearchError> {
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
        commit.set_payload(&payload(&self.generation, &progress, *last, &held));
        drop(last);
        commit.commit()?;
        *self.held.lock().expect("held streams poisoned") = held;
        metrics::histogram!("storekeeper_search_commit_seconds").record(started.elapsed().as_secs_f64());
        drop(writer);
        self.reader.reload()?;
        metrics::gauge!("storekeeper_projection_position", "projection" => NAME).set(progress.position as f64);
        self.progress.send_replace(progress);
        self.rate.lock().expect("rate lock").observe(batch.events.len());
        Ok(())
    }
}
