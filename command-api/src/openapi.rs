//! The OpenAPI 3.1 document of the command API, generated from the request
//! types so it cannot drift from them; a test compares it with the copy
//! checked in under `schemas/openapi/`.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Value, json};

use crate::dto;

struct Op {
    path: &'static str,
    summary: &'static str,
    /// The request body's schema, as a `$ref`.
    body: fn(&mut SchemaGenerator) -> schemars::Schema,
    status: u16,
    auth: &'static str,
}

fn body<T: JsonSchema>(generator: &mut SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

const ADMIN: &str = "admin";
const OWNER: &str = "admin, or the customer it concerns";

fn operations() -> Vec<Op> {
    vec![
        Op { path: "/v1/customers", summary: "Register a customer", body: body::<dto::RegisterCustomer>, status: 201, auth: OWNER },
        Op {
            path: "/v1/customers/{id}/email",
            summary: "Change a customer's email",
            body: body::<dto::ChangeEmail>,
            status: 200,
            auth: OWNER,
        },
        Op {
            path: "/v1/customers/{id}/address",
            summary: "Update a customer's shipping address",
            body: body::<dto::UpdateAddress>,
            status: 200,
            auth: OWNER,
        },
        Op { path: "/v1/customers/{id}/deactivate", summary: "Deactivate a customer", body: body::<dto::Reason>, status: 200, auth: OWNER },
        Op {
            path: "/v1/customers/{id}/forget",
            summary: "Forget a customer: its personal data is shredded everywhere and its email freed",
            body: body::<dto::Empty>,
            status: 200,
            auth: OWNER,
        },
        Op { path: "/v1/products", summary: "Add a product", body: body::<dto::AddProduct>, status: 201, auth: ADMIN },
        Op {
            path: "/v1/products/{id}/details",
            summary: "Update a product's name, description or category",
            body: body::<dto::UpdateDetails>,
            status: 200,
            auth: ADMIN,
        },
        Op {
            path: "/v1/products/{id}/price",
            summary: "Change a product's price",
            body: body::<dto::ChangePrice>,
            status: 200,
            auth: ADMIN,
        },
        Op { path: "/v1/products/{id}/restock", summary: "Restock a product", body: body::<dto::Restock>, status: 200, auth: ADMIN },
        Op { path: "/v1/products/{id}/discontinue", summary: "Discontinue a product", body: body::<dto::Empty>, status: 200, auth: ADMIN },
        Op {
            path: "/v1/orders",
            summary: "Place an order (stock is reserved asynchronously)",
            body: body::<dto::PlaceOrder>,
            status: 202,
            auth: OWNER,
        },
        Op {
            path: "/v1/orders/{id}/cancel",
            summary: "Cancel an order before it ships",
            body: body::<dto::Reason>,
            status: 200,
            auth: OWNER,
        },
        Op { path: "/v1/orders/{id}/ship", summary: "Ship a paid order", body: body::<dto::ShipOrder>, status: 200, auth: ADMIN },
        Op {
            path: "/v1/orders/{id}/deliver",
            summary: "Mark a shipped order delivered",
            body: body::<dto::Empty>,
            status: 200,
            auth: ADMIN,
        },
        Op {
            path: "/v1/customers/{id}/password",
            summary: "Set a customer's sign-in password (argon2id, outside the log; deleted when it is forgotten)",
            body: body::<dto::SetPassword>,
            status: 200,
            auth: OWNER,
        },
        Op {
            path: "/v1/auth/token",
            summary: "Sign in: a 15-minute customer access token for an email and password (401 invalid_credentials otherwise)",
            body: body::<dto::SignIn>,
            status: 200,
            auth: "",
        },
        Op {
            path: "/v1/payments/webhook",
            summary: "Payment provider webhook (HMAC-SHA256 of the raw body in X-Signature)",
            body: body::<dto::PaymentWebhook>,
            status: 200,
            auth: "",
        },
    ]
}

fn header(name: &str, description: &str, required: bool) -> Value {
    json!({ "name": name, "in": "header", "required": required, "description": description, "schema": { "type": "string" } })
}

/// The whole document.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    let mut generator = settings.into_generator();
    let mut paths = serde_json::Map::new();
    for op in operations() {
        let schema = (op.body)(&mut generator);
        let mut parameters = vec![
            header("Idempotency-Key", "Replays the first response for the same key and body within 24 h", false),
            header("If-Match", "Expected stream version, e.g. \"3\"; a stale one answers 409", false),
            header("X-Correlation-Id", "UUID that ties related commands together in the audit trail", false),
        ];
        if op.path.contains("{id}") {
            parameters.insert(0, json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "format": "uuid" } }));
        }
        let security = if op.auth.is_empty() {
            parameters.push(header("X-Signature", "sha256=<hex HMAC-SHA256 of the raw body>", true));
            json!([])
        } else {
            json!([{ "bearer": [] }])
        };
        let description = if op.auth.is_empty() { String::new() } else { format!("Allowed: {}.", op.auth) };
        paths.insert(
            op.path.to_owned(),
            json!({ "post": {
                "summary": op.summary,
                "description": description,
                "security": security,
                "parameters": parameters,
                "requestBody": { "required": true, "content": { "application/json": { "schema": schema } } },
                "responses": {
                    op.status.to_string(): {
                        "description": "Accepted; the stream's new version and the write's consistency token",
                        "headers": {
                            "ETag": { "schema": { "type": "string" } },
                            "X-Consistency-Token": { "schema": { "type": "string" } }
                        },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CommandResult" } } }
                    },
                    "default": {
                        "description": "A problem",
                        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                    }
                }
            }}),
        );
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "CommandResult".into(),
        json!({
            "type": "object",
            "required": ["id", "stream_id", "version", "position", "consistency_token"],
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "stream_id": { "type": "string" },
                "version": { "type": "integer", "minimum": 0 },
                "position": { "type": "integer", "minimum": 0 },
                "consistency_token": { "type": "string" }
            }
        }),
    );
    schemas.insert("Problem".into(), edge::problem::openapi_schema());
    let mut get = |path: &str, summary: &str| {
        paths
            .insert(path.into(), json!({ "get": { "summary": summary, "security": [], "responses": { "200": { "description": "OK" } } } }));
    };
    get("/healthz", "Liveness");
    get("/readyz", "Readiness: the event log answers");
    get("/metrics", "Prometheus metrics");
    get("/openapi.json", "This document");
    json!({
        "openapi": "3.1.0",
        "info": { "title": "storekeeper command API", "version": env!("CARGO_PKG_VERSION") },
        "servers": [{ "url": "http://127.0.0.1:8080" }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } }
        }
    })
}
