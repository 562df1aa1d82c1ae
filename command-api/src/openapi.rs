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
            "Sign in: a 15-minute access token for an email and password, an admin's for an operator (`storekeeper operators add`), a customer's for a customer (401 invalid_credentials otherwise)",
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

/// Problems a command may answer with beside the edge's.
const PROBLEMS: &[(u16, &[&str])] = &[
    (
        409,
        &[
            "version_conflict",
            "idempotency_in_progress",
            "already_exists",
            "invalid_state",
            "email_taken",
            "sku_taken",
            "customer_inactive",
        ],
    ),
    (422, &["validation_failed", "idempotency_key_reused", "payment_mismatch"]),
    (503, &["contention"]),
];

/// What may follow a create: every command on the entity it made, its id
/// taken from the answer.
fn links(path: &str) -> Option<Value> {
    let prefix = format!("{path}/{{id}}/");
    let operations = operations();
    let targets = operations.iter().filter(|target| target.path.starts_with(&prefix)).map(|target| ("post", target.path));
    edge::openapi::links(targets, "$response.body#/id")
}

/// The whole document.
pub fn document() -> Value {
    let mut generator = edge::openapi::generator();
    let mut paths = serde_json::Map::new();
    for op in operations() {
        let schema = (op.body)(&mut generator);
        let mut parameters = edge::openapi::path_parameters(op.path);
        // Sign-in reads no command headers; passwords and the webhook are
        // not kept under an Idempotency-Key; If-Match only where the
        // command is on one stream's version.
        let commands = op.path != "/v1/auth/token";
        let keyed = !op.auth.is_empty() && !op.path.ends_with("/password");
        let versioned = commands && !["/v1/orders", "/v1/payments/webhook"].contains(&op.path) && !op.path.ends_with("/password");
        let headers = [
            header(
                "Idempotency-Key",
                "Replays the first response for the same key and body within 24 h",
                false,
                json!({ "type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$" }),
            ),
            header(
                "If-Match",
                "Expected stream version, e.g. \"3\"; a stale one answers 409",
                false,
                json!({ "type": "string", "pattern": crate::handlers::IF_MATCH_PATTERN }),
            ),
            header(
                "X-Correlation-Id",
                "UUID that ties related commands together in the audit trail",
                false,
                json!({ "type": "string", "format": "uuid" }),
            ),
        ];
        let [idempotency, if_match, correlation] = headers;
        if keyed {
            parameters.push(idempotency);
        }
        if versioned {
            parameters.push(if_match);
        }
        if commands {
            parameters.push(correlation);
        }
        if op.path == "/v1/payments/webhook" {
            parameters.push(header(
                "X-Signature",
                "sha256=<hex HMAC-SHA256 of the raw body>",
                true,
                json!({ "type": "string", "pattern": "^sha256=[0-9a-fA-F]{64}$" }),
            ));
        }
        let security = if op.auth.is_empty() { json!([]) } else { json!([{ "bearer": [] }]) };
        let description = if op.auth.is_empty() { String::new() } else { format!("Allowed: {}.", op.auth) };
        let mut responses = edge::openapi::problem_responses(PROBLEMS);
        let success = match op.path {
            "/v1/auth/token" => {
                responses.insert("401".into(), edge::openapi::problem_responses(&[(401, &["invalid_credentials"])])["401"].clone());
                json!({ "description": "Signed in", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AccessToken" } } } })
            }
            "/v1/customers/{id}/password" => {
                json!({ "description": "The password is set", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/PasswordSet" } } } })
            }
            _ => json!({
                "description": "Done; the stream's new version and the write's consistency token",
                "headers": {
                    "ETag": { "required": true, "schema": { "type": "string", "pattern": "^\"[0-9]+\"$" } },
                    "X-Consistency-Token": { "required": true, "schema": { "type": "string", "pattern": "^[0-9]+$" } }
                },
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CommandResult" } } }
            }),
        };
        let mut success = success;
        if let Some(links) = links(op.path) {
            success["links"] = links;
        }
        responses.insert(op.status.to_string(), success);
        paths.insert(
            op.path.to_owned(),
            json!({ "post": {
                "operationId": edge::openapi::operation_id("post", op.path),
                "summary": op.summary,
                "description": description,
                "security": security,
                "parameters": parameters,
                "requestBody": { "required": true, "content": { "application/json": { "schema": schema } } },
                "responses": responses
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
                "consistency_token": { "type": "string", "pattern": "^[0-9]+$" }
            }
        }),
    );
    schemas.insert(
        "AccessToken".into(),
        json!({
            "type": "object",
            "required": ["access_token", "token_type", "expires_in"],
            "properties": {
                "access_token": { "type": "string", "description": "A JWT for the Authorization header" },
                "token_type": { "const": "Bearer" },
                "expires_in": { "type": "integer", "description": "Seconds it lasts", "minimum": 1 }
            }
        }),
    );
    schemas.insert(
        "PasswordSet".into(),
        json!({ "type": "object", "required": ["id"], "properties": { "id": { "type": "string", "format": "uuid" } } }),
    );
    let (title, version, server) = ("storekeeper command API", env!("CARGO_PKG_VERSION"), "http://127.0.0.1:8080");
    edge::openapi::document(title, version, server, "Readiness: the event log answers", paths, schemas)
}
