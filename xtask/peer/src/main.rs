//! `peer`: a straightforward product service built the way the cqrs-es documentation shows
//! (axum 0.8, cqrs-es 0.5, postgres-es 0.5, `postgres_cqrs` with no snapshots and no queries).
//!
//! It exists only so `cargo xtask bench` has an honest baseline to compare storekeeper's write
//! path against: the same routes and JSON bodies, the same PostgreSQL, none of storekeeper's
//! machinery. A command loads the aggregate by replaying its events, handles the command and
//! inserts the new events; a concurrent writer that lost the optimistic lock gets 409 and no
//! retry, which is what a plain cqrs-es service does (the comparison counts those as errors).
//!
//! It is its own cargo workspace, outside storekeeper's, so CI never builds it.
//! Environment: `DATABASE_URL` (a dedicated PostgreSQL database) and `PEER_ADDR` (e.g. `127.0.0.1:9000`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
use postgres_es::{PostgresCqrs, postgres_cqrs};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// The tables postgres-es reads and writes (`events`, `snapshots`), as in its `db/init.sql`.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json                                 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Money {
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Deserialize)]
struct AddProduct {
    #[serde(default)]
    id: Option<Uuid>,
    sku: String,
    name: String,
    description: String,
    category: String,
    price: Money,
    initial_stock: u32,
}

#[derive(Debug, Deserialize)]
struct Restock {
    quantity: u32,
}

#[derive(Debug, Deserialize)]
struct ChangePrice {
    price: Money,
}

enum ProductCommand {
    Add(Uuid, AddProduct),
    Restock(Restock),
    ChangePrice(ChangePrice),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum ProductEvent {
    ProductAdded { id: Uuid, sku: String, name: String, description: String, category: String, price: Money, initial_stock: u32 },
    Restocked { quantity: u32 },
    PriceChanged { price: Money },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ProductAdded { .. } => "ProductAdded",
            Self::Restocked { .. } => "Restocked",
            Self::PriceChanged { .. } => "PriceChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, thiserror::Error)]
enum ProductError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("the product already exists")]
    Exists,
    #[error("no such product")]
    NotFound,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Product {
    added: bool,
    stock: u64,
    price: Option<Money>,
}

fn check_price(price: &Money) -> Result<(), ProductError> {
    if price.amount_minor < 0 { Err(ProductError::Invalid("price.amount_minor must be >= 0")) } else { Ok(()) }
}

impl Aggregate for Product {
    const TYPE: &'static str = "Product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    type Services = ();

    async fn handle(&mut self, command: ProductCommand, _: &(), sink: &EventSink<Self>) -> Result<(), ProductError> {
        let event = match command {
            ProductCommand::Add(id, add) => {
                if self.added {
                    return Err(ProductError::Exists);
                }
                check_price(&add.price)?;
                ProductEvent::ProductAdded {
                    id,
                    sku: add.sku,
                    name: add.name,
                    description: add.description,
                    category: add.category,
                    price: add.price,
                    initial_stock: add.initial_stock,
                }
            }
            _ if !self.added => return Err(ProductError::NotFound),
            ProductCommand::Restock(Restock { quantity: 0 }) => return Err(ProductError::Invalid("quantity must be > 0")),
            ProductCommand::Restock(Restock { quantity }) => ProductEvent::Restocked { quantity },
            ProductCommand::ChangePrice(ChangePrice { price }) => {
                check_price(&price)?;
                ProductEvent::PriceChanged { price }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ProductEvent) {
        match event {
            ProductEvent::ProductAdded { price, initial_stock, .. } => {
                self.added = true;
                self.stock = initial_stock.into();
                self.price = Some(price);
            }
            ProductEvent::Restocked { quantity } => self.stock += u64::from(quantity),
            ProductEvent::PriceChanged { price } => self.price = Some(price),
        }
    }
}

type Cqrs = Arc<PostgresCqrs<Product>>;

/// Maps a cqrs-es outcome to a status: rule violations 422/409/404, a lost optimistic lock 409
/// (no retry), anything else 500.
fn respond(result: Result<(), AggregateError<ProductError>>, ok: StatusCode, body: serde_json::Value) -> Response {
    let (status, message) = match result {
        Ok(()) => return (ok, Json(body)).into_response(),
        Err(AggregateError::UserError(e @ ProductError::Invalid(_))) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(AggregateError::UserError(e @ ProductError::Exists)) => (StatusCode::CONFLICT, e.to_string()),
        Err(AggregateError::UserError(e @ ProductError::NotFound)) => (StatusCode::NOT_FOUND, e.to_string()),
        Err(AggregateError::AggregateConflict) => (StatusCode::CONFLICT, "concurrent update".to_string()),
        Err(e) => {
            eprintln!("peer: command failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    };
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn add_product(State(cqrs): State<Cqrs>, Json(body): Json<AddProduct>) -> Response {
    let id = body.id.unwrap_or_else(Uuid::new_v4);
    let result = cqrs.execute(&id.to_string(), ProductCommand::Add(id, body)).await;
    respond(result, StatusCode::CREATED, serde_json::json!({ "id": id }))
}

async fn restock(State(cqrs): State<Cqrs>, Path(id): Path<Uuid>, Json(body): Json<Restock>) -> Response {
    let result = cqrs.execute(&id.to_string(), ProductCommand::Restock(body)).await;
    respond(result, StatusCode::OK, serde_json::json!({ "id": id }))
}

async fn change_price(State(cqrs): State<Cqrs>, Path(id): Path<Uuid>, Json(body): Json<ChangePrice>) -> Response {
    let result = cqrs.execute(&id.to_string(), ProductCommand::ChangePrice(body)).await;
    respond(result, StatusCode::OK, serde_json::json!({ "id": id }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL")?;
    let addr = std::env::var("PEER_ADDR").map_err(|_| "set PEER_ADDR")?;
    let pool = PgPoolOptions::new().max_connections(32).connect(&url).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let cqrs: Cqrs = Arc::new(postgres_cqrs(pool, vec![], ()));
    let app = Router::new()
        .route("/readyz", get(|| async { StatusCode::OK }))
        .route("/v1/products", post(add_product))
        .route("/v1/products/{id}/restock", post(restock))
        .route("/v1/products/{id}/price", post(change_price))
        .with_state(cqrs);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("peer: listening on {addr}");
    axum::serve(listener, app).await?;
    Ok(())
}
