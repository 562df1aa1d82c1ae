//! What the query API answers, as types: handlers build these, and the
//! OpenAPI document is generated from them, so the two cannot drift.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

impl From<&domain::Money> for Money {
    fn from(m: &domain::Money) -> Self {
        Money { amount_minor: m.amount_minor, currency: m.currency.as_str().to_owned() }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Product {
    pub id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub stock: i64,
    #[schemars(with = "ProductStatus")]
    pub status: String,
    pub version: i64,
}

/// The states of a product, as the products view keeps them.
#[derive(JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum ProductStatus {
    Active,
    Discontinued,
}

/// The states of a customer; a forgotten customer's personal fields all
/// read `[redacted]`.
#[derive(JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum CustomerStatus {
    Active,
    Deactivated,
    Forgotten,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct Customer {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    #[schemars(with = "Option<domain::Address>")]
    pub shipping_address: Option<Value>,
    #[schemars(with = "CustomerStatus")]
    pub status: String,
    pub version: i64,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
}

impl From<&domain::order::OrderLine> for OrderLine {
    fn from(l: &domain::order::OrderLine) -> Self {
        OrderLine { product_id: l.product_id, quantity: l.quantity, unit_price: (&l.unit_price).into(), line_total: (&l.line_total).into() }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    #[schemars(with = "domain::order::OrderStatus")]
    pub status: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    #[schemars(with = "domain::Address")]
    pub shipping_address: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// One page of a list; `next_cursor` is absent on the last page.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page of at most `limit` items; a full page has a next one.
    pub fn new(items: Vec<T>, limit: i64, last: impl Fn(&T) -> String) -> Self {
        let next_cursor = if items.len() as i64 == limit { items.last().map(last) } else { None };
        Page { items, next_cursor }
    }
}

/// The search index answers in its own typed form.
pub use projections::search::{Hit as SearchHit, SearchResults};

#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum SalesItem {
    Day { day: NaiveDate, orders: i64, units: i64, revenue: Total },
    Product { product_id: Uuid, units: i64, revenue: Total },
}

/// A sum of many amounts: an integer of up to 128 bits in minor units, so
/// that no sum of i64 amounts overflows (it can exceed what a JavaScript
/// number holds exactly; parse it as a big integer).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Total {
    pub amount_minor: i128,
    pub currency: String,
}

/// A stream's history, from the log, with metadata.
#[derive(Debug, Serialize, JsonSchema)]
pub struct History {
    #[schemars(with = "Vec<Envelope>")]
    pub events: Vec<Value>,
    pub next_from_version: Option<u64>,
}

/// An event as the log keeps it (`eventlog::RecordedEvent`), personal
/// fields opened (or `[redacted]` once forgotten).
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct Envelope {
    event_id: Uuid,
    stream_id: String,
    /// Its place in the stream, from 0.
    stream_version: u64,
    /// Its place in the log, from 1.
    global_position: u64,
    /// Never renamed once stored; `data` has the schema
    /// `schemas/events/<event_type>.v<schema_version>.json`.
    event_type: String,
    schema_version: u32,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    metadata: EnvelopeMetadata,
    #[schemars(schema_with = "event_data")]
    data: Value,
}

/// An event's data: its schema is `schemas/events/<event_type>.v<schema_version>.json`.
fn event_data(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "The event's data, as schemas/events/<event_type>.v<schema_version>.json gives it (personal fields opened, or [redacted])"
    })
}

/// `eventlog::Metadata`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct EnvelopeMetadata {
    /// A token's subject, or `system:<process>`.
    actor: String,
    role: Option<String>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    request_id: Option<String>,
    idempotency_key: Option<String>,
    traceparent: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema, sqlx::FromRow)]
pub struct AuditEntry {
    pub global_position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub actor: String,
    pub role: Option<String>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

/// A projection's state: read models and this node's search index alike.
pub use projections::{ProjectionStatus as Projection, ProjectionVersion};

/// A projection's live view compared with a fresh fold of the log.
#[derive(Serialize, JsonSchema)]
pub struct Verified {
    /// Whether the live view is exactly the fold of the log.
    pub matches: bool,
    #[serde(flatten)]
    pub verification: projections::Verification,
}
