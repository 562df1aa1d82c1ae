//! What both APIs' OpenAPI 3.1 documents share, written once: the schema
//! generator's settings, path and header parameters, the problem answer,
//! the operations every API serves beside its own, and the document's frame.
//! Each API lists its own operations and types.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// A generator whose definitions land under `/components/schemas`.
pub fn generator() -> SchemaGenerator {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    settings.into_generator()
}

/// What the stack takes in a path or query (no control character, tab and
/// line breaks included), and a password.
pub const NO_CONTROL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// One parameter per `{name}` segment of `path`: `id` is a UUID, others text.
pub fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter(|s| s.starts_with('{'))
        .map(|segment| {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            let schema = if name == "id" {
                json!({ "type": "string", "format": "uuid" })
            } else {
                json!({ "type": "string", "minLength": 1, "pattern": NO_CONTROL_PATTERN })
            };
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect()
}

pub fn header(name: &str, description: &str, required: bool, schema: Value) -> Value {
    json!({ "name": name, "in": "header", "required": required, "description": description, "schema": schema })
}

/// `X-Consistency-Token` and `X-Consistency-Timeout` as `consistency::decode`
/// reads them.
pub fn consistency_headers() -> [Value; 2] {
    [
        header(
            "X-Consistency-Token",
            "Tokens from writes, comma-separated (at most 64): the read waits until they are visible (503 not_yet_consistent after X-Consistency-Timeout ms, default 2000; 503 projection_degraded when one of its events is parked in a read model the answer comes from; 400 invalid_consistency_token, at once, for a token beyond the head of the log)",
            false,
            json!({ "type": "string", "pattern": crate::consistency::TOKENS_PATTERN }),
        ),
        header(
            "X-Consistency-Timeout",
            "How long to wait for the tokens, in ms (larger values are taken as 10000)",
            false,
            json!({ "type": "string", "pattern": crate::consistency::TIMEOUT_PATTERN }),
        ),
    ]
}

/// `post /v1/orders/{id}/cancel` → `post_orders_id_cancel`: a stable name
/// for generated clients.
pub fn operation_id(method: &str, path: &str) -> String {
    let parts = path.trim_start_matches("/v1/").split('/').map(|p| p.trim_matches(|c| c == '{' || c == '}'));
    let name = std::iter::once(method).chain(parts).collect::<Vec<_>>().join("_");
    name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
}

/// OpenAPI links from an answer to each of `targets` (method and path),
/// their `id` path parameter taken from the answer at `expression`, so that
/// clients and testers can follow a resource from one call to the next.
pub fn links<'a>(targets: impl IntoIterator<Item = (&'a str, &'a str)>, expression: &str) -> Option<Value> {
    let links: Map<String, Value> = targets
        .into_iter()
        .map(|(method, path)| {
            let id = operation_id(method, path);
            (id.clone(), json!({ "operationId": id, "parameters": { "path.id": expression } }))
        })
        .collect();
    (!links.is_empty()).then_some(Value::Object(links))
}

/// Statuses the shared edge may answer any request with, and their codes:
/// malformed requests, tokens, limits, methods, load.
pub const EDGE_PROBLEMS: &[(u16, &[&str])] = &[
    (400, &["validation_failed"]),
    (401, &["unauthorized"]),
    (403, &["forbidden"]),
    (404, &["not_found"]),
    (405, &["method_not_allowed"]),
    (408, &["request_timeout"]),
    (413, &["payload_too_large"]),
    (414, &["uri_too_long"]),
    (415, &["unsupported_media_type"]),
    (431, &["headers_too_large"]),
    (500, &["internal"]),
    (503, &["unavailable", "overloaded"]),
];

/// One response per status an operation may answer with a problem, each
/// naming its codes: the edge's (`EDGE_PROBLEMS`) and the API's own.
pub fn problem_responses(own: &[(u16, &[&str])]) -> Map<String, Value> {
    let mut codes: std::collections::BTreeMap<u16, Vec<&str>> = std::collections::BTreeMap::new();
    for (status, names) in EDGE_PROBLEMS.iter().chain(own) {
        let entry = codes.entry(*status).or_default();
        for name in names.iter() {
            if !entry.contains(name) {
                entry.push(name);
            }
        }
    }
    codes
        .into_iter()
        .map(|(status, names)| {
            let reason = axum::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Problem");
            let schema = json!({ "allOf": [
                { "$ref": "#/components/schemas/Problem" },
                { "type": "object", "properties": { "status": { "const": status }, "code": { "enum": names } } }
            ] });
            let mut response = json!({
                "description": format!("{reason}: {}", names.join(", ")),
                "content": { crate::problem::PROBLEM_JSON: { "schema": schema } }
            });
            if status == 405 {
                response["headers"] = json!({ "Allow": { "required": true, "schema": { "type": "string" } } });
            }
            if status == 503 {
                response["headers"] = json!({ "Retry-After": { "required": true, "schema": { "type": "string", "pattern": "^[0-9]+$" } } });
            }
            (status.to_string(), response)
        })
        .collect()
}

/// The document: `paths` with health, metrics and the document itself
/// added, and `schemas` with the problem's.
pub fn document(
    title: &str,
    version: &str,
    server: &str,
    readiness: &str,
    mut paths: Map<String, Value>,
    mut schemas: Map<String, Value>,
) -> Value {
    let text = |media: &str| json!({ media: { "schema": { "type": "string" } } });
    let object = json!({ "application/json": { "schema": { "type": "object" } } });
    for (path, summary, content) in [
        ("/healthz", "Liveness", text("text/plain")),
        ("/readyz", readiness, text("text/plain")),
        ("/metrics", "Prometheus metrics", text("text/plain")),
        ("/openapi.json", "This document", object),
    ] {
        let mut responses = problem_responses(&[]);
        responses.insert("200".into(), json!({ "description": "OK", "content": content }));
        let id = operation_id("get", path);
        paths.insert(path.into(), json!({ "get": { "operationId": id, "summary": summary, "security": [], "responses": responses } }));
    }
    schemas.insert("Problem".into(), crate::problem::openapi_schema());
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": version },
        "servers": [{ "url": server }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        }
    })
}
