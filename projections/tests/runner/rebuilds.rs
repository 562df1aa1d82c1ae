//! Rebuilds: built beside the live tables, taken over in one step, and
//! resumed after a crash.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::events::DomainEvent;
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Currency, Money, Sku};
use eventlog::{EventLog, ExpectedVersion, NewEvent, RecordedEvent, StreamWrite};
use projections::names::PRODUCTS;
use projections::{ApplyError, Projection, Runner};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::support::{add_products, caught_up, metadata, products_table, rows, setup, start, stop};

/// The products projection under a newer version number.
struct ProductsV2;

#[async_trait]
impl Projection for ProductsV2 {
    fn name(&self) -> &'static str {
        PRODUCTS
    }
    fn version(&self) -> i32 {
        projections::ProductsProjection.version() + 1
    }
    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, decoded: &DomainEvent) -> Result<(), ApplyError> {
        projections::ProductsProjection.apply(tx, event, decoded).await
    }
    fn tables(&self) -> &'static [&'static str] {
        projections::ProductsProjection.tables()
    }
}

/// Waits until `name`'s live checkpoint is at `version` with no rebuild
/// left beside it.
async fn taken_over(pool: &PgPool, name: &str, version: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<(String, i32, String)> =
            rows(pool, "SELECT projection, version, state FROM projection_checkpoints WHERE projection LIKE $1 || '%'", name).await;
        if found == [(name.to_owned(), version, "running".to_owned())] {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no take-over: {found:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuilds_are_built_beside_the_live_tables_and_take_over_in_one_step() {
    let (pool, log, service) = setup().await;
    let ids = add_products(&service, 40).await;
    for id in &ids {
        service.execute::<ProductAggregate>(*id, ProductCommand::Restock { quantity: 1 }, None, &metadata()).await.unwrap();
    }
    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 500);
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;

    // Readers keep reading the whole time; they must never see a
    // half-built table.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let (pool, reading) = (pool.clone(), reading.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                let count: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_products").fetch_one(&pool).await.unwrap();
                assert_eq!(count, 40, "a read saw a half-built view");
                reads += 1;
            }
            reads
        })
    };

    // A new version: built in a schema of its own while writes go on, then
    // swapped in.
    let running = start(&pool, &log, vec![Arc::new(ProductsV2)], 7);
    for id in &ids {
        service.execute::<ProductAggregate>(*id, ProductCommand::Restock { quantity: 2 }, None, &metadata()).await.unwrap();
    }
    taken_over(&pool, PRODUCTS, ProductsV2.version()).await;
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    for (id, stock, ..) in products_table(&pool).await {
        let product = service.load::<ProductAggregate>(&domain::stream_id::<ProductAggregate>(id)).await.unwrap().state.unwrap();
        assert_eq!(stock, i64::from(product.stock), "the rebuilt read model agrees with the log");
    }

    // An older worker leaves the newer version alone.
    let old = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 7);
    service.execute::<ProductAggregate>(ids[0], ProductCommand::Restock { quantity: 5 }, None, &metadata()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(old).await;
    let version: i32 =
        sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE projection = 'products'").fetch_one(&pool).await.unwrap();
    assert_eq!(version, ProductsV2.version());

    // Asked for (`projections rebuild products`): the live run goes on
    // while the rebuild catches up and takes over.
    let before = products_table(&pool).await;
    let generation: Uuid =
        sqlx::query_scalar("SELECT generation FROM projection_checkpoints WHERE projection = 'products'").fetch_one(&pool).await.unwrap();
    assert!(projections::request_rebuild(&pool, PRODUCTS).await.unwrap());
    let running = start(&pool, &log, vec![Arc::new(ProductsV2)], 7);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now: Uuid = sqlx::query_scalar("SELECT generation FROM projection_checkpoints WHERE projection = 'products'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if now != generation {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the requested rebuild never took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    taken_over(&pool, PRODUCTS, ProductsV2.version()).await;
    // Fed with the other live read models again after the take-over: a
    // write made after it shows.
    service.execute::<ProductAggregate>(ids[1], ProductCommand::Restock { quantity: 3 }, None, &metadata()).await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.await.unwrap() > 10, "the reader kept reading");
    let after = products_table(&pool).await;
    assert_eq!(after.len(), before.len());
    for (id, stock, ..) in after {
        let product = service.load::<ProductAggregate>(&domain::stream_id::<ProductAggregate>(id)).await.unwrap().state.unwrap();
        assert_eq!(stock, i64::from(product.stock));
    }
}

/// `products` products of `per_product` events each, appended straight
/// into the log.
async fn product_history(log: &Arc<dyn EventLog>, products: usize, per_product: u32) {
    use domain::product::{ProductAdded, ProductEvent, ProductRestocked};
    for chunk in (0..products).collect::<Vec<_>>().chunks(200) {
        let writes = chunk
            .iter()
            .map(|i| {
                let id = Uuid::now_v7();
                let mut events = vec![ProductEvent::Added(ProductAdded {
                    product_id: id,
                    sku: Sku::parse(&format!("H-{i}")).unwrap(),
                    name: format!("Product {i}"),
                    description: String::new(),
                    category: "c".into(),
                    price: Money::new(100, Currency::usd()),
                    initial_stock: 1,
                })];
                events.extend((1..per_product).map(|n| ProductEvent::Restocked(ProductRestocked { quantity: 1, stock_after: 1 + n })));
                StreamWrite {
                    stream_id: format!("product-{id}"),
                    expected: ExpectedVersion::NoStream,
                    events: NewEvent::encode_all(&events, &metadata()),
                }
            })
            .collect();
        log.append(writes).await.unwrap();
    }
}

/// The rebuild's checkpoint: position and generation.
async fn rebuild_checkpoint(pool: &PgPool) -> Option<(i64, Uuid)> {
    rows(pool, "SELECT position, generation FROM projection_checkpoints WHERE projection = $1", "products:rebuild").await.pop()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_cut_short_by_a_crash_resumes_where_it_was_and_reports_its_rate_and_time_left() {
    let (pool, log, _) = setup().await;
    product_history(&log, 8000, 5).await;
    let projection = || -> Vec<Arc<dyn Projection>> { vec![Arc::new(projections::ProductsProjection)] };
    let running = start(&pool, &log, projection(), 2000);
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    let live = projections::status(&pool).await.unwrap().into_iter().find(|s| s.name == PRODUCTS).unwrap();
    assert!(live.events_per_second > 0.0, "{live:?}");
    assert_eq!(live.eta_seconds, Some(0.0), "caught up: {live:?}");

    let shape = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'rm_products'
                 UNION ALL SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.rm_products'::regclass
                 ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let shape_before = shape().await;

    // Rebuilt in small batches, and killed part way.
    assert!(projections::request_rebuild(&pool, PRODUCTS).await.unwrap());
    let (_stop, stopped) = watch::channel(false);
    let crashed = tokio::spawn(Runner::with_sources(pool.clone(), projection(), eventlog::in_process(log.clone(), 100)).run(stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (before, generation) = loop {
        if let Some((position, generation)) = rebuild_checkpoint(&pool).await
            && position >= 5000
        {
            break (position, generation);
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuild did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    crashed.abort();
    let _ = crashed.await;
    // A commit already sent when the task was dropped still lands.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cut_at, _) = rebuild_checkpoint(&pool).await.unwrap();
    assert!(cut_at >= before && cut_at < 40_000, "cut short part way: {cut_at}");
    let rebuilding = projections::status(&pool).await.unwrap().into_iter().find(|s| s.name == "products:rebuild").unwrap();
    assert_eq!(rebuilding.position as i64, cut_at);
    assert_eq!(rebuilding.lag_events as i64, 40_000 - cut_at);
    assert!(rebuilding.events_per_second > 0.0, "{rebuilding:?}");
    let left = rebuilding.eta_seconds.expect("a time left");
    assert!((left - rebuilding.lag_events as f64 / rebuilding.events_per_second).abs() < 1e-6, "{rebuilding:?}");

    // Restarted, it goes on from there: same generation, never behind.
    let running = start(&pool, &log, projection(), 100);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some((position, same)) = rebuild_checkpoint(&pool).await {
        assert_eq!(same, generation, "the rebuild started over");
        assert!(position >= cut_at, "the rebuild went back from {cut_at} to {position}");
        assert!(tokio::time::Instant::now() < deadline, "the rebuild did not take over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let requested: bool = sqlx::query_scalar("SELECT rebuild_requested FROM projection_checkpoints WHERE projection = 'products'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!requested, "taken over");
    assert_eq!(shape().await, shape_before, "the rebuilt table has every index and constraint of the one it replaced");
    let found = projections::verify(&pool, &*log, &projections::ProductsProjection).await.unwrap();
    assert!(found.matches(), "{found:?}");
    stop(running).await;
}

/// A read model new to a long log (a release that adds one) catches up
/// apart: the read models already there go on with the writes meanwhile,
/// rather than waiting for it, and it is fed with them once near the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_model_new_to_a_long_log_catches_up_apart_and_the_others_do_not_wait() {
    let (pool, log, service) = setup().await;
    product_history(&log, 2500, 8).await;
    let customers: Arc<dyn Projection> = Arc::new(projections::CustomersProjection);
    let running = start(&pool, &log, vec![customers.clone()], 2000);
    caught_up(&pool, &log, projections::names::CUSTOMERS).await;
    stop(running).await;

    let ids = add_products(&service, 2).await;
    let running = start(&pool, &log, vec![customers, Arc::new(projections::ProductsProjection)], 2000);
    let written = service.execute::<ProductAggregate>(ids[0], ProductCommand::Restock { quantity: 1 }, None, &metadata()).await.unwrap();
    let position = |name: &'static str| {
        let pool = pool.clone();
        async move {
            rows::<(i64,)>(&pool, "SELECT position FROM projection_checkpoints WHERE projection = $1", name).await.pop().map_or(0, |r| r.0)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while position(projections::names::CUSTOMERS).await < written.position as i64 {
        assert!(tokio::time::Instant::now() < deadline, "customers did not reach the write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let products_then = position(PRODUCTS).await;
    assert!(products_then < 20_000, "customers reached the write while products was still catching up (at {products_then})");
    caught_up(&pool, &log, PRODUCTS).await;
    // Fed together from now on: a later write reaches both.
    let later = service.execute::<ProductAggregate>(ids[1], ProductCommand::Restock { quantity: 2 }, None, &metadata()).await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;
    caught_up(&pool, &log, projections::names::CUSTOMERS).await;
    assert!(position(PRODUCTS).await >= later.position as i64);
    stop(running).await;
    let found = projections::verify(&pool, &*log, &projections::ProductsProjection).await.unwrap();
    assert!(found.matches(), "{found:?}");
}
