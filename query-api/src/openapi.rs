//! The OpenAPI 3.1 document of the query API; a test compares it with the
//! copy checked in under `schemas/openapi/`.

use serde_json::{Value, json};

fn param(name: &str, location: &str, schema: Value) -> Value {
    json!({ "name": name, "in": location, "required": location == "path", "schema": schema })
}

pub fn document() -> Value {
    let string = json!({ "type": "string" });
    let uuid = json!({ "type": "string", "format": "uuid" });
    let integer = json!({ "type": "integer", "minimum": 0 });
    let token = json!({ "name": "X-Consistency-Token", "in": "header", "required": false,
                        "description": "Token from a write: the read waits until it is visible (503 not_yet_consistent after X-Consistency-Timeout ms, default 2000)",
                        "schema": { "type": "string" } });
    let ops: Vec<(&str, &str, &str, Vec<Value>)> = vec![
        (
            "/v1/products",
            "List products (keyset pagination)",
            "public",
            vec![
                param("category", "query", string.clone()),
                param("status", "query", json!({"enum": ["active", "discontinued"]})),
                param("min_price", "query", integer.clone()),
                param("max_price", "query", integer.clone()),
                param("limit", "query", integer.clone()),
                param("cursor", "query", string.clone()),
                token.clone(),
            ],
        ),
        ("/v1/products/{id}", "A product", "public", vec![param("id", "path", uuid.clone()), token.clone()]),
        (
            "/v1/search/products",
            "Full-text product search (typo tolerant) with category facet counts",
            "public",
            vec![
                param("q", "query", string.clone()),
                param("category", "query", string.clone()),
                param("in_stock", "query", json!({"type": "boolean"})),
                param("min_price", "query", integer.clone()),
                param("max_price", "query", integer.clone()),
                param("sort", "query", json!({"enum": ["relevance", "price_asc", "price_desc"]})),
                param("limit", "query", integer.clone()),
                param("offset", "query", integer.clone()),
                token.clone(),
            ],
        ),
        (
            "/v1/products/{id}/at",
            "A product as it was at a version or time",
            "public",
            vec![
                param("id", "path", uuid.clone()),
                param("version", "query", integer.clone()),
                param("time", "query", json!({"type": "string", "format": "date-time"})),
            ],
        ),
        ("/v1/customers/{id}", "A customer", "admin, or the customer", vec![param("id", "path", uuid.clone()), token.clone()]),
        (
            "/v1/customers/{id}/at",
            "A customer as it was at a version or time",
            "admin, or the customer",
            vec![
                param("id", "path", uuid.clone()),
                param("version", "query", integer.clone()),
                param("time", "query", json!({"type": "string", "format": "date-time"})),
            ],
        ),
        (
            "/v1/customers/{id}/orders",
            "A customer's orders",
            "admin, or the customer",
            vec![
                param("id", "path", uuid.clone()),
                param("status", "query", string.clone()),
                param("limit", "query", integer.clone()),
                param("cursor", "query", string.clone()),
                token.clone(),
            ],
        ),
        (
            "/v1/orders",
            "List orders (customers see their own)",
            "authenticated",
            vec![
                param("status", "query", string.clone()),
                param("customer_id", "query", uuid.clone()),
                param("limit", "query", integer.clone()),
                param("cursor", "query", string.clone()),
                token.clone(),
            ],
        ),
        ("/v1/orders/{id}", "An order", "admin, or its customer", vec![param("id", "path", uuid.clone()), token.clone()]),
        (
            "/v1/orders/{id}/at",
            "An order as it was at a version or time",
            "admin, or its customer",
            vec![
                param("id", "path", uuid.clone()),
                param("version", "query", integer.clone()),
                param("time", "query", json!({"type": "string", "format": "date-time"})),
            ],
        ),
        (
            "/v1/reports/sales",
            "Sales by day or by product",
            "admin",
            vec![
                param("from", "query", json!({"type": "string", "format": "date"})),
                param("to", "query", json!({"type": "string", "format": "date"})),
                param("group_by", "query", json!({"enum": ["day", "product"]})),
                token.clone(),
            ],
        ),
        (
            "/v1/streams/{stream_id}/events",
            "A stream's history from the log, with metadata",
            "admin",
            vec![
                param("stream_id", "path", string.clone()),
                param("from_version", "query", integer.clone()),
                param("limit", "query", integer.clone()),
            ],
        ),
        (
            "/v1/audit",
            "The audit log across all streams",
            "admin",
            vec![
                param("actor", "query", string.clone()),
                param("correlation_id", "query", uuid.clone()),
                param("stream_id", "query", string.clone()),
                param("event_type", "query", string.clone()),
                param("from", "query", json!({"type": "string", "format": "date-time"})),
                param("to", "query", json!({"type": "string", "format": "date-time"})),
                param("limit", "query", integer.clone()),
                param("cursor", "query", string.clone()),
                token,
            ],
        ),
        ("/v1/projections", "Every projection's version, position, lag and state", "public", vec![]),
        ("/healthz", "Liveness", "public", vec![]),
        ("/readyz", "Readiness: the database answers", "public", vec![]),
        ("/metrics", "Prometheus metrics", "public", vec![]),
        ("/openapi.json", "This document", "public", vec![]),
    ];
    let mut paths = serde_json::Map::new();
    for (path, summary, auth, parameters) in ops {
        let security = if auth == "public" { json!([]) } else { json!([{ "bearer": [] }]) };
        paths.insert(
            path.to_owned(),
            json!({ "get": {
                "summary": summary,
                "description": format!("Allowed: {auth}."),
                "security": security,
                "parameters": parameters,
                "responses": {
                    "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } },
                    "default": { "description": "A problem", "content": { "application/problem+json": { "schema": { "type": "object",
                        "required": ["type", "title", "status", "detail", "code"] } } } }
                }
            }}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "storekeeper query API", "version": env!("CARGO_PKG_VERSION") },
        "servers": [{ "url": "http://127.0.0.1:8081" }],
        "paths": paths,
        "components": { "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } } }
    })
}
