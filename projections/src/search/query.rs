//! Searching the index: words (typo tolerant when some word is not in the
//! index as written), filters, sorting and category facet counts.

use serde::Serialize;
use tantivy::collector::{Count, FacetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, BoostQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::{DocAddress, Order, TantivyDocument, Term};

use super::{SearchError, SearchIndex};

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

/// A hit's price.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: String,
}

/// One search hit, as the query API answers it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Hit {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub price: Price,
    pub in_stock: bool,
    pub score: Option<f32>,
}

#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    pub total: usize,
    /// `{"category": {"<category>": count}}`.
    #[schemars(with = "std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>")]
    pub facets: serde_json::Value,
}

impl SearchIndex {
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
                price: Price { amount_minor: price, currency: text(f.currency) },
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
