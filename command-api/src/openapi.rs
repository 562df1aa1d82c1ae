//! The OpenAPI 3.1 document of the command API, generated from the request
//! types so it cannot drift from them; a test compares it with the copy
//! checked in under `schemas/openapi/`.

use edge::openapi::header;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Value, json};

use crate::dto;

type BodyFn = fn(&mut SchemaGenerator) -> schemars::Schema;

struct Op {
    path: &'static str,
    summary: &'static str,
    /// The request body's schema, as a `$ref`.
    body: BodyFn,
    status: u16,
    auth: &'static str,
}

fn body<T: JsonSchema>(generator: &mut SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

const ADMIN: &str = "admin";
const OWNER: &str = "admin, or the customer it concerns";

fn operations() -> Vec<Op> {
    let op = |path, summary, body, status, auth| Op { path, summary, body, status, auth };
    vec![
        op("/v1/customers", "Register a customer", body::<dto::RegisterCustomer>, 201, OWNER),
        op("/v1/customers/{id}/email", "Change a customer's email", body::<dto::ChangeEmail>, 200, OWNER),
        op("/v1/customers/{id}/address", "Update a customer's shipping address", body::<dto::UpdateAddress>, 200, OWNER),
        op("/v1/customers/{id}/deactivate", "Deactivate a customer", body::<dto::Reason>, 200, OWNER),
        op(
            "/v1/customers/{id}/forget",
            "Forget a customer: its personal data is shredded everywhere and its email freed",
            body::<dto::Empty>,
            200,
            OWNER,
        ),
        op("/v1/products", "Add a product", body::<dto::AddProduct>, 201, ADMIN),
        op("/v1/products/{id}/details", "Update a product's name, description or category", body::<dto::UpdateDetails>, 200, ADMIN),
        op("/v1/products/{id}/price", "Change a product's price", body::<dto::ChangePrice>, 200, ADMIN),
        op("/v1/products/{id}/restock", "Restock a product", body::<dto::Restock>, 200, ADMIN),
        op("/v1/products/{id}/discontinue", "Discontinue a product", body::<dto::Empty>, 200, ADMIN),
        op("/v1/orders", "Place an order (stock is reserved asynchronously)", body::<dto::PlaceOrder>, 202, OWNER),
        op("/v1/orders/{id}/cancel", "Cancel an order before it ships", body::<dto::Reason>, 200, OWNER),
        op("/v1/orders/{id}/ship", "Ship a paid order", body::<dto::ShipOrder>, 200, ADMIN),
        op("/v1/orders/{id}/deliver", "Mark a shipped order delivered", body::<dto::Empty>, 200, ADMIN),
        op(
            "/v1/customers/{id}/password",
            "Set a customer's sign-in password (argon2id, outside the log; deleted when it is forgotten)",
            body::<dto::SetPassword>,
            200,
            OWNER,
        ),
        op(
            "/v1/auth/token",
            "Sign in: a 15-minute customer access token for an email and password (401 invalid_credentials otherwise)",
            body::<dto::SignIn>,
            200,
            "",
        ),
        op(
            "/v1/payments/webhook",
            "Payment provider webhook (HMAC-SHA256 of the raw body in X-Signature)",
            body::<dto::PaymentWebhook>,
            200,
            "",
        ),
    ]
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = edge::openapi::generator();
    let mut paths = serde_json::Map::new();
    for op in operations() {
        let schema = (op.body)(&mut generator);
        let mut parameters = edge::openapi::path_parameters(op.path);
        parameters.extend([
            header("Idempotency-Key", "Replays the first response for the same key and body within 24 h", false),
            header("If-Match", "Expected stream version, e.g. \"3\"; a stale one answers 409", false),
            header("X-Correlation-Id", "UUID that ties related commands together in the audit trail", false),
        ]);
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
                    "default": edge::openapi::problem_response()
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
    let (title, version, server) = ("storekeeper command API", env!("CARGO_PKG_VERSION"), "http://127.0.0.1:8080");
    edge::openapi::document(title, version, server, "Readiness: the event log answers", paths, schemas)
}
