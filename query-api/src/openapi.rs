//! The OpenAPI 3.1 document of the query API, generated from the query
//! parameter and response types the handlers use, so it cannot drift from
//! them; a test compares it with the copy under `schemas/openapi/`.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::responses::{AuditEntry, Customer, History, Order, Page, Product, Projection, SalesItem, SearchResults, Verified};
use crate::time_travel::AtQuery;
use crate::{audit::AuditQuery, history::HistoryQuery, sales::SalesQuery};
use crate::{orders::OrderFilter, products::ProductFilter, products::SearchQuery};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

struct Op {
    path: &'static str,
    summary: &'static str,
    /// Who may call it: `public`, `admin`, or `owner` (admin, or the customer it concerns).
    auth: &'static str,
    query: Option<SchemaFn>,
    response: SchemaFn,
    /// Whether `X-Consistency-Token` makes it wait.
    consistent: bool,
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.root_schema_for::<T>()
}

fn operations() -> Vec<Op> {
    let op = |path, summary, auth, query, response, consistent| Op { path, summary, auth, query, response, consistent };
    vec![
        op("/v1/products", "List products (keyset pagination)", "public", Some(inline::<ProductFilter>), schema::<Page<Product>>, true),
        op("/v1/products/{id}", "A product", "public", None, schema::<Product>, true),
        op("/v1/products/{id}/at", "A product as it was at a version or time", "public", Some(inline::<AtQuery>), schema::<Product>, false),
        op(
            "/v1/search/products",
            "Full-text product search (typo tolerant) with category facet counts",
            "public",
            Some(inline::<SearchQuery>),
            schema::<SearchResults>,
            true,
        ),
        op("/v1/customers/{id}", "A customer", "owner", None, schema::<Customer>, true),
        op(
            "/v1/customers/{id}/at",
            "A customer as it was at a version or time",
            "owner",
            Some(inline::<AtQuery>),
            schema::<Customer>,
            false,
        ),
        op("/v1/customers/{id}/orders", "A customer's orders", "owner", Some(inline::<OrderFilter>), schema::<Page<Order>>, true),
        op("/v1/orders", "List orders (customers see their own)", "owner", Some(inline::<OrderFilter>), schema::<Page<Order>>, true),
        op("/v1/orders/{id}", "An order", "owner", None, schema::<Order>, true),
        op("/v1/orders/{id}/at", "An order as it was at a version or time", "owner", Some(inline::<AtQuery>), schema::<Order>, false),
        op("/v1/reports/sales", "Sales per day or per product", "admin", Some(inline::<SalesQuery>), schema::<Page<SalesItem>>, true),
        op(
            "/v1/streams/{stream_id}/events",
            "A stream's history from the log, with metadata",
            "admin",
            Some(inline::<HistoryQuery>),
            schema::<History>,
            false,
        ),
        op("/v1/audit", "The audit trail across all streams", "admin", Some(inline::<AuditQuery>), schema::<Page<AuditEntry>>, true),
        op("/v1/projections", "Every projection's version, position, lag and state", "admin", None, schema::<Page<Projection>>, false),
        op(
            "/v1/projections/{name}/verify",
            "Folds the log beside a projection's live tables and lists the rows that differ",
            "admin",
            None,
            schema::<Verified>,
            false,
        ),
    ]
}

/// Each property of a query type's schema as one query parameter.
fn query_parameters(schema: &Schema) -> Vec<Value> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            let description = property.as_object_mut().and_then(|p| p.remove("description"));
            let mut parameter = json!({ "name": name, "in": "query", "required": false, "schema": property });
            if let Some(description) = description {
                parameter["description"] = description;
            }
            parameter
        })
        .collect()
}

pub fn document() -> Value {
    let mut generator = edge::openapi::generator();
    let mut paths = serde_json::Map::new();
    for op in operations() {
        let mut parameters = edge::openapi::path_parameters(op.path);
        if let Some(query) = op.query {
            parameters.extend(query_parameters(&query(&mut generator)));
        }
        if op.consistent {
            parameters.push(json!({ "name": "X-Consistency-Token", "in": "header", "required": false,
                "description": "Token from a write: the read waits until it is visible (503 not_yet_consistent after X-Consistency-Timeout ms, default 2000; 503 projection_degraded when one of its events is parked in a read model the answer comes from; 400 invalid_consistency_token, at once, for a token beyond the head of the log)",
                "schema": { "type": "string" } }));
            parameters.push(json!({ "name": "X-Consistency-Timeout", "in": "header", "required": false,
                "description": "How long to wait for the tokens, in ms (larger values are taken as 10000)", "schema": { "type": "string" } }));
        }
        let security = if op.auth == "public" { json!([]) } else { json!([{ "bearer": [] }]) };
        let response = (op.response)(&mut generator);
        paths.insert(
            op.path.to_owned(),
            json!({ "get": {
                "summary": op.summary,
                "description": format!("Allowed: {}.", op.auth),
                "security": security,
                "parameters": parameters,
                "responses": {
                    "200": { "description": "OK", "content": { "application/json": { "schema": response } } },
                    "default": edge::openapi::problem_response()
                }
            }}),
        );
    }
    let schemas = generator.take_definitions(true);
    let (title, version, server) = ("storekeeper query API", env!("CARGO_PKG_VERSION"), "http://127.0.0.1:8081");
    edge::openapi::document(title, version, server, "Readiness: the database answers", paths, schemas)
}
