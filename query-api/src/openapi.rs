//! The OpenAPI 3.1 document of the query API, generated from the query
//! parameter and response types the handlers use, so it cannot drift from
//! them; a test compares it with the copy under `schemas/openapi/`.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::events::{EventsQuery, sent_schema};
use crate::operations::{ParkedEvent, ParkedQuery, Rebuild, RetryOutcome};
use crate::responses::{AuditEntry, Customer, History, Order, Page, Product, Projection, SalesItem, SearchResults, Verified};
use crate::time_travel::AtQuery;
use crate::{audit::AuditQuery, history::HistoryQuery, sales::SalesQuery};
use crate::{orders::OrderFilter, products::ProductFilter, products::SearchQuery};

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// Who may call it: `public`, `admin`, or `owner` (admin, or the customer it concerns).
    auth: &'static str,
    query: Option<SchemaFn>,
    response: SchemaFn,
    /// Whether `X-Consistency-Token` makes it wait.
    consistent: bool,
    /// Answered as Server-Sent Events, each event's data `response`.
    event_stream: bool,
    /// The status of a success.
    ok: u16,
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

fn inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.root_schema_for::<T>()
}

fn operations() -> Vec<Op> {
    let op = |path, summary, auth, query, response, consistent| Op {
        method: "get",
        path,
        summary,
        auth,
        query,
        response,
        consistent,
        event_stream: false,
        ok: 200,
    };
    let operation = |method, path, summary, response, ok| Op {
        method,
        path,
        summary,
        auth: "admin",
        query: None,
        response,
        consistent: false,
        event_stream: false,
        ok,
    };
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
        Op {
            method: "get",
            ok: 200,
            path: "/v1/events",
            summary: "The log as Server-Sent Events: from a position, then live (or to the head with until=head)",
            auth: "admin",
            query: Some(inline::<EventsQuery>),
            response: sent_schema,
            consistent: false,
            event_stream: true,
        },
        op("/v1/projections", "Every projection's version, position, lag and state", "admin", None, schema::<Page<Projection>>, false),
        op(
            "/v1/projections/{name}/verify",
            "Folds the log beside a projection's live tables and lists the rows that differ",
            "admin",
            None,
            schema::<Verified>,
            false,
        ),
        op(
            "/v1/projections/{name}/parked",
            "A consumer's parked events (read models, search, order-process), with their errors",
            "admin",
            Some(inline::<ParkedQuery>),
            schema::<Page<ParkedEvent>>,
            false,
        ),
        operation(
            "post",
            "/v1/projections/{name}/retry",
            "Applies a read model's or the index's parked events again, in log order",
            schema::<RetryOutcome>,
            200,
        ),
        operation(
            "post",
            "/v1/projections/{name}/rebuild",
            "Asks the workers to rebuild a read model beside its live tables (answers at once)",
            schema::<Rebuild>,
            202,
        ),
        operation("get", "/v1/projections/{name}/rebuild", "Where a read model's rebuild stands", schema::<Rebuild>, 200),
    ]
}

/// Each property of a query type's schema as one query parameter.
fn query_parameters(schema: &Schema) -> Vec<Value> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = never_null(property.clone());
            let description = property.as_object_mut().and_then(|p| p.remove("description"));
            let mut parameter = json!({ "name": name, "in": "query", "required": false, "schema": property });
            if let Some(description) = description {
                parameter["description"] = description;
            }
            parameter
        })
        .collect()
}

/// A query parameter's schema without the `null` its `Option` brings: a
/// parameter is absent, never null.
fn never_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get_mut(key).and_then(Value::as_array_mut) {
            options.retain(|o| o.get("type").and_then(Value::as_str) != Some("null"));
            if options.len() == 1 {
                let only = options[0].clone();
                let object = schema.as_object_mut().expect("a schema with anyOf is an object");
                object.remove(key);
                if let Value::Object(members) = only {
                    object.extend(members);
                }
            }
        }
    }
    if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
        values.retain(|v| !v.is_null());
    }
    schema.as_object_mut().map(|o| o.remove("default"));
    schema
}

/// From a list to its first item's reads.
fn links(path: &str) -> Option<Value> {
    let prefix = format!("{path}/{{id}}");
    let operations = operations();
    let lists = path.matches('/').count() == 2;
    let targets = operations.iter().filter(|target| lists && target.path.starts_with(&prefix)).map(|target| ("get", target.path));
    edge::openapi::links(targets, "$response.body#/items/0/id")
}

/// Problems a read may answer with beside the edge's.
const PROBLEMS: &[(u16, &[&str])] = &[
    (400, &["invalid_consistency_token"]),
    (409, &["verify_in_progress", "retried_by_the_command_side", "beyond_the_head"]),
    (503, &["not_yet_consistent", "projection_degraded", "history_too_long"]),
];

pub fn document() -> Value {
    let mut generator = edge::openapi::generator();
    let mut paths = serde_json::Map::new();
    for op in operations() {
        let mut parameters = edge::openapi::path_parameters(op.path);
        if let Some(query) = op.query {
            // A customer's orders are the path's customer's.
            let path_names: Vec<Value> = parameters.iter().map(|p| p["name"].clone()).collect();
            let own = op.path.starts_with("/v1/customers/");
            parameters.extend(
                query_parameters(&query(&mut generator))
                    .into_iter()
                    .filter(|p| !(path_names.contains(&p["name"]) || own && p["name"] == "customer_id")),
            );
        }
        if op.consistent {
            parameters.extend(edge::openapi::consistency_headers());
        }
        if op.event_stream {
            parameters.push(edge::openapi::header(
                "Last-Event-ID",
                "The id of the last event received, as a reconnecting EventSource sends it: the subscription goes on just after it (before `from`).",
                false,
                json!({ "type": "string", "pattern": crate::events::POSITION_PATTERN }),
            ));
        }
        let security = if op.auth == "public" { json!([]) } else { json!([{ "bearer": [] }]) };
        let response = (op.response)(&mut generator);
        let mut responses = edge::openapi::problem_responses(PROBLEMS);
        let mut ok = if op.event_stream {
            let description = "Server-Sent Events: each event's `id` is its position in the log and its `data` the event as JSON (this schema); \
                               a finite read (`until=head`) ends with an event of type `end` whose data is `{\"head\": <position>}`. \
                               Comments keep an idle subscription open.";
            json!({ "description": description, "content": { "text/event-stream": { "schema": response } } })
        } else {
            json!({ "description": "OK", "content": { "application/json": { "schema": response } } })
        };
        if let Some(links) = links(op.path) {
            ok["links"] = links;
        }
        responses.insert(op.ok.to_string(), ok);
        let path = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        path[op.method] = json!({
                "operationId": edge::openapi::operation_id(op.method, op.path),
                "summary": op.summary,
                "description": format!("Allowed: {}.", op.auth),
                "security": security,
                "parameters": parameters,
                "responses": responses
        });
    }
    let schemas = generator.take_definitions(true);
    let (title, version, server) = ("storekeeper query API", env!("CARGO_PKG_VERSION"), "http://127.0.0.1:8081");
    edge::openapi::document(title, version, server, "Readiness: the database answers", paths, schemas)
}
