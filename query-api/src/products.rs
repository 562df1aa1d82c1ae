//! Products: one by id, lists with keyset pagination, full-text search
//! from this node's index, and time travel.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use domain::product::ProductAggregate;
use edge::Query;
use projections::names::PRODUCTS;
use schemars::JsonSchema;
use serde::Deserialize;
use sqlx::FromRow;
use uuid::Uuid;

use crate::params::{cursor_id, limit, parse_id};
use crate::responses::{Money, Page, Product, SearchResults};
use crate::time_travel::{AtQuery, entity_at};
use crate::{ApiError, AppState, wait_for_index, wait_for_tokens};

#[derive(FromRow)]
struct ProductRow {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    category: String,
    price_minor: i64,
    currency: String,
    stock: i64,
    status: String,
    version: i64,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            category: r.category,
            price: Money { amount_minor: r.price_minor, currency: r.currency },
            stock: r.stock,
            status: r.status,
            version: r.version,
        }
    }
}

const PRODUCT_COLUMNS: &str = "id, sku, name, description, category, price_minor, currency, stock, status, version";

pub async fn get_product(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> Result<Json<Product>, ApiError> {
    let id = parse_id(&id)?;
    wait_for_tokens(&state, &headers, &[PRODUCTS]).await?;
    let row: Option<ProductRow> =
        sqlx::query_as(&format!("SELECT {PRODUCT_COLUMNS} FROM rm_products WHERE id = $1")).bind(id).fetch_optional(&state.pool).await?;
    row.map(|r| Json(r.into())).ok_or(ApiError::NotFound("product"))
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductFilter {
    #[schemars(pattern(edge::openapi::NO_CONTROL_PATTERN))]
    category: Option<String>,
    #[schemars(with = "Option<crate::responses::ProductStatus>")]
    status: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    /// Items per page (default 50).
    #[schemars(range(min = 1, max = crate::params::MAX_LIMIT))]
    limit: Option<i64>,
    /// `next_cursor` of the page before.
    #[schemars(with = "Option<uuid::Uuid>")]
    cursor: Option<String>,
}

pub async fn list_products(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(filter): Query<ProductFilter>,
) -> Result<Json<Page<Product>>, ApiError> {
    let limit = limit(filter.limit)?;
    if let Some(status) = &filter.status
        && status != "active"
        && status != "discontinued"
    {
        return Err(ApiError::malformed("status", "must be active or discontinued"));
    }
    let after = cursor_id(filter.cursor.as_deref())?;
    wait_for_tokens(&state, &headers, &[PRODUCTS]).await?;
    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM rm_products
          WHERE ($1::text IS NULL OR category = $1) AND ($2::text IS NULL OR status = $2)
            AND ($3::bigint IS NULL OR price_minor >= $3) AND ($4::bigint IS NULL OR price_minor <= $4)
            AND ($5::uuid IS NULL OR id > $5)
          ORDER BY id LIMIT $6"
    ))
    .bind(&filter.category)
    .bind(&filter.status)
    .bind(filter.min_price)
    .bind(filter.max_price)
    .bind(after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(Page::new(rows.into_iter().map(Product::from).collect(), limit, |p| p.id.to_string())))
}

/// Search text is bounded so that no one request can take more than a few
/// MB: every word becomes (fuzzy) term queries over three fields.
pub const MAX_QUERY_CHARS: usize = 256;
pub const MAX_QUERY_TERMS: usize = 32;
const MAX_OFFSET: usize = 10_000;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words to find in name, description and SKU (words past the 32nd
    /// are left out).
    #[schemars(length(max = MAX_QUERY_CHARS), pattern(edge::openapi::NO_CONTROL_PATTERN))]
    q: Option<String>,
    #[schemars(length(max = MAX_QUERY_CHARS), pattern(edge::openapi::NO_CONTROL_PATTERN))]
    category: Option<String>,
    in_stock: Option<bool>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    /// Relevance unless told.
    #[schemars(with = "Option<SortBy>")]
    sort: Option<String>,
    /// Items per page (default 50).
    #[schemars(range(min = 1, max = crate::params::MAX_LIMIT))]
    limit: Option<i64>,
    #[schemars(range(max = MAX_OFFSET))]
    offset: Option<usize>,
}

/// Orders of search hits.
#[derive(JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum SortBy {
    Relevance,
    PriceAsc,
    PriceDesc,
}

/// The query text with whitespace collapsed, refused past
/// `MAX_QUERY_CHARS`, and cut after its 32nd term, as search engines do
/// (a bound on the work that the document can state). Terms are counted as
/// the index's tokenizer splits them (runs of letters and digits), so
/// `a-b-c` is three.
pub fn normalise_query(q: &str) -> Result<String, ApiError> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(ApiError::malformed("q", format!("at most {MAX_QUERY_CHARS} characters")));
    }
    let (mut terms, mut in_term, mut end) = (0, false, q.len());
    for (i, c) in q.char_indices() {
        let alphanumeric = c.is_alphanumeric();
        if alphanumeric && !in_term {
            terms += 1;
            if terms > MAX_QUERY_TERMS {
                end = i;
                break;
            }
        }
        in_term = alphanumeric;
    }
    Ok(q[..end].split_whitespace().collect::<Vec<_>>().join(" "))
}

pub async fn search_products(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchResults>, ApiError> {
    use projections::search::{SearchRequest, Sort};
    let sort = match q.sort.as_deref().unwrap_or("relevance") {
        "relevance" => Sort::Relevance,
        "price_asc" => Sort::PriceAsc,
        "price_desc" => Sort::PriceDesc,
        _ => return Err(ApiError::malformed("sort", "must be relevance, price_asc or price_desc")),
    };
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::malformed("offset", format!("must be at most {MAX_OFFSET}")));
    }
    if q.category.as_ref().is_some_and(|c| c.chars().count() > MAX_QUERY_CHARS) {
        return Err(ApiError::malformed("category", format!("at most {MAX_QUERY_CHARS} characters")));
    }
    let request = SearchRequest {
        q: normalise_query(q.q.as_deref().unwrap_or(""))?,
        category: q.category,
        in_stock: q.in_stock,
        min_price: q.min_price,
        max_price: q.max_price,
        sort,
        limit: limit(q.limit)? as usize,
        offset,
    };
    wait_for_index(&state, &headers).await?;
    let index = state.search.clone();
    let results =
        tokio::task::spawn_blocking(move || index.search(&request)).await.map_err(ApiError::internal)?.map_err(ApiError::internal)?;
    Ok(Json(results))
}

pub async fn product_at(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(at): Query<AtQuery>,
) -> Result<Json<Product>, ApiError> {
    let (product, version) = entity_at::<ProductAggregate, _>(&state, parse_id(&id)?, &at, "product").await?;
    Ok(Json(Product::folded(product, version)))
}
