//! What the runner's tests share: a command side on a fresh database, a
//! runner started and stopped, and ways to wait for it and look at its work.

use std::sync::Arc;
use std::time::Duration;

use commands::CommandService;
use domain::product::ProductCommand;
use domain::{Currency, Money, Sku};
use eventlog::{EventLog, Metadata};
use projections::{Projection, Runner};
use sqlx::PgPool;
use sqlx::postgres::PgRow;
use tokio::sync::watch;
use uuid::Uuid;

pub async fn setup() -> (PgPool, Arc<dyn EventLog>, CommandService) {
    test_support::command_side().await
}

pub fn start(
    pool: &PgPool,
    log: &Arc<dyn EventLog>,
    projections: Vec<Arc<dyn Projection>>,
    batch: usize,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let runner = Runner::in_process(pool.clone(), log.clone(), projections, batch);
    (tx, tokio::spawn(async move { runner.run(rx).await }))
}

pub async fn stop((tx, handle): (watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    tx.send(true).unwrap();
    handle.await.unwrap();
}

pub async fn caught_up(pool: &PgPool, log: &Arc<dyn EventLog>, name: &str) {
    // The newest committed event, whether or not the tail has reached it.
    let _ = log;
    let last: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM events").fetch_one(pool).await.unwrap();
    let last = last as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let position: Option<i64> = sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .unwrap();
        if position.is_some_and(|p| p as u64 >= last) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn products_table(pool: &PgPool) -> Vec<(Uuid, i64, i64, String, i64)> {
    sqlx::query_as("SELECT id, stock, price_minor, status, version FROM rm_products ORDER BY id").fetch_all(pool).await.unwrap()
}

pub fn metadata() -> Metadata {
    Metadata::system("test")
}

pub async fn add_products(service: &CommandService, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Uuid::now_v7();
        let add = ProductCommand::Add {
            product_id: id,
            sku: Sku::parse(&format!("SKU-{i}")).unwrap(),
            name: format!("Product {i}"),
            description: String::new(),
            category: "c".into(),
            price: Money::new(100, Currency::usd()),
            initial_stock: 10,
        };
        service.product(id, add, None, &metadata()).await.unwrap();
        ids.push(id);
    }
    ids
}

/// What `sql` answers with `$1` bound to `arg`, row by row.
pub async fn rows<T>(pool: &PgPool, sql: &str, arg: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as(sql).bind(arg).fetch_all(pool).await.unwrap()
}
