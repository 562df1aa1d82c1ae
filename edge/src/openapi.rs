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

/// One parameter per `{name}` segment of `path`: `id` is a UUID, others text.
pub fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter(|s| s.starts_with('{'))
        .map(|segment| {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            let schema = if name == "id" { json!({ "type": "string", "format": "uuid" }) } else { json!({ "type": "string" }) };
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect()
}

pub fn header(name: &str, description: &str, required: bool) -> Value {
    json!({ "name": name, "in": "header", "required": required, "description": description, "schema": { "type": "string" } })
}

/// The `default` response of every operation: a problem.
pub fn problem_response() -> Value {
    json!({ "description": "A problem", "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } })
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
    for (path, summary) in
        [("/healthz", "Liveness"), ("/readyz", readiness), ("/metrics", "Prometheus metrics"), ("/openapi.json", "This document")]
    {
        paths
            .insert(path.into(), json!({ "get": { "summary": summary, "security": [], "responses": { "200": { "description": "OK" } } } }));
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
