//! The command API (port 8080): the write side's HTTP edge, thin over the
//! command core (`commands`).
//!
//! `router(state)` builds the whole API so tests can call it on port 0.
//! Requests become domain commands (`dto`), run through the command
//! service, and every failure is a problem+json answer (`error`, on top of
//! the shared `edge`).

pub mod dto;
pub mod error;
pub mod handlers;
pub mod idempotency;
pub mod openapi;
pub mod webhook;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use commands::{Accounts, CommandService, IdempotencyStore, Operators, PasswordStore};
use edge::JwtKeys;
use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub service: CommandService,
    pub idempotency: IdempotencyStore,
    pub accounts: Accounts,
    pub operators: Operators,
    pub pool: PgPool,
    pub jwt: JwtKeys,
    pub webhook_secret: Arc<str>,
}

impl AppState {
    /// `passwords` are beside `service`'s log (`PasswordStore::new` when
    /// the log is in `pool`'s database).
    pub fn new(service: CommandService, passwords: PasswordStore, pool: PgPool, jwt: JwtKeys, webhook_secret: &str) -> Self {
        AppState {
            idempotency: IdempotencyStore::new(pool.clone()),
            operators: Operators::new(pool.clone(), passwords.clone()),
            accounts: Accounts::new(service.clone(), passwords),
            service,
            pool,
            jwt,
            webhook_secret: webhook_secret.into(),
        }
    }
}

pub fn router(state: AppState) -> Router {
    use handlers::*;
    // After the recorder is installed (by the stack below, or earlier).
    edge::metrics::prometheus();
    error::export_error_counters();
    let authenticated = Router::new()
        .route("/v1/customers", post(register_customer))
        .route("/v1/customers/{id}/email", post(change_email))
        .route("/v1/customers/{id}/address", post(update_address))
        .route("/v1/customers/{id}/deactivate", post(deactivate_customer))
        .route("/v1/customers/{id}/forget", post(forget_customer))
        .route("/v1/products", post(add_product))
        .route("/v1/products/{id}/details", post(update_product_details))
        .route("/v1/products/{id}/price", post(change_price))
        .route("/v1/products/{id}/restock", post(restock))
        .route("/v1/products/{id}/discontinue", post(discontinue))
        .route("/v1/orders", post(place_order))
        .route("/v1/orders/{id}/cancel", post(cancel_order))
        .route("/v1/orders/{id}/ship", post(ship_order))
        .route("/v1/orders/{id}/deliver", post(deliver_order))
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency::middleware))
        .route_layer(middleware::from_fn(edge::auth::require_principal));
    // Passwords are not kept under an Idempotency-Key (its record holds a
    // hash of the body); setting one twice is the same as once.
    let password = Router::new()
        .route("/v1/customers/{id}/password", post(set_password))
        .route_layer(middleware::from_fn(edge::auth::require_principal));
    let (jwt, pool) = (state.jwt.clone(), state.pool.clone());
    let routes = Router::new()
        .merge(authenticated)
        .merge(password)
        .route("/v1/auth/token", post(sign_in))
        .route("/v1/payments/webhook", post(payment_webhook))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .with_state(state.clone())
        .merge(edge::health::routes(move || eventlog::database::answers(pool.clone())));
    edge::stack(routes, "command", jwt, &openapi::document())
}
