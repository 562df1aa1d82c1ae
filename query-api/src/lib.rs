//! The query API (port 8081): reads from the read models, full-text search
//! from this node's index, the history of any stream and time travel from
//! the log, and read-your-writes through consistency tokens
//! (`consistency`). It depends on the shared `edge`, never on the command
//! side.

mod audit;
pub mod consistency;
pub mod console;
mod customers;
pub mod error;
pub mod events;
mod history;
pub mod openapi;
pub mod operations;
mod orders;
mod params;
pub mod products;
mod read_models;
pub mod responses;
mod sales;
mod time_travel;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use edge::JwtKeys;
use eventlog::EventLog;
use sqlx::PgPool;

pub use consistency::{wait_for_index, wait_for_tokens};
pub use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub jwt: JwtKeys,
    /// This node's product index, fed by its own indexer.
    pub search: Arc<projections::search::SearchIndex>,
    /// The read models' progress for requests waiting on tokens.
    pub board: Arc<consistency::Board>,
    /// Requests waiting on consistency tokens at once
    /// (`consistency::MAX_WAITERS`); one more is answered 503 `overloaded`.
    pub waiters: Arc<tokio::sync::Semaphore>,
    /// Subscriptions to the log open at once (`events::MAX_SUBSCRIBERS`).
    pub subscribers: Arc<tokio::sync::Semaphore>,
    /// Turns true when the server stops: open subscriptions end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// What the console needs to know of its deployment.
    pub console: console::Settings,
}

impl AppState {
    /// Also starts listening for the consumers' progress notifications.
    pub fn new(pool: PgPool, log: Arc<dyn EventLog>, jwt: JwtKeys, search: Arc<projections::search::SearchIndex>) -> Self {
        let board = consistency::Board::keep(pool.clone(), consistency::listen_for_progress(pool.clone()));
        let waiters = Arc::new(tokio::sync::Semaphore::new(consistency::MAX_WAITERS));
        metrics::counter!("storekeeper_http_shed_total", "reason" => "waiters").increment(0);
        metrics::gauge!("storekeeper_consistency_waiting").set(0.0);
        metrics::counter!("storekeeper_http_shed_total", "reason" => "subscribers").increment(0);
        metrics::gauge!("storekeeper_subscriptions_open").set(0.0);
        let subscribers = Arc::new(tokio::sync::Semaphore::new(events::MAX_SUBSCRIBERS));
        AppState {
            pool,
            log,
            jwt,
            search,
            board,
            waiters,
            subscribers,
            stop: tokio::sync::watch::channel(false).1,
            console: Default::default(),
        }
    }

    /// Ends open subscriptions when `stop` turns true.
    pub fn with_console(mut self, console: console::Settings) -> Self {
        self.console = console;
        self
    }

    pub fn stopping_with(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }
}

pub fn router(state: AppState) -> Router {
    let jwt = state.jwt.clone();
    let routes = Router::new()
        .route("/v1/products", get(products::list_products))
        .route("/v1/products/{id}", get(products::get_product))
        .route("/v1/products/{id}/at", get(products::product_at))
        .route("/v1/search/products", get(products::search_products))
        .route("/v1/customers/{id}", get(customers::get_customer))
        .route("/v1/customers/{id}/at", get(customers::customer_at))
        .route("/v1/customers/{id}/orders", get(customers::customer_orders))
        .route("/v1/orders", get(orders::list_orders))
        .route("/v1/orders/{id}", get(orders::get_order))
        .route("/v1/orders/{id}/at", get(orders::order_at))
        .route("/v1/reports/sales", get(sales::sales_report))
        .route("/v1/streams/{stream_id}/events", get(history::stream_events))
        .route("/v1/audit", get(audit::audit))
        .route("/v1/events", get(events::subscribe))
        .route("/v1/projections", get(read_models::list_projections))
        .route("/v1/projections/{name}/verify", get(read_models::verify_projection))
        .route("/v1/projections/{name}/parked", get(operations::parked))
        .route("/v1/projections/{name}/retry", post(operations::retry))
        .route("/v1/projections/{name}/rebuild", post(operations::request_rebuild).get(operations::rebuild_progress))
        .route("/console", get(console::to_page))
        .route("/console/", get(console::page))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/console/settings.json", get(console::settings))
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .with_state(state.clone())
        .merge(edge::health::routes(move || eventlog::database::answers(state.pool.clone())));
    edge::stack(routes, "query", jwt, &openapi::document())
}
