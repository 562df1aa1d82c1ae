//! The projection runner against a real PostgreSQL: checkpoints, restarts,
//! rebuilds and poison events.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use commands::CommandService;
use domain::events::DomainEvent;
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Currency, Money, Sku};
use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamWrite};
use projections::names::{CUSTOMERS, PRODUCTS};
use projections::{ApplyError, Projection, Runner};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

async fn setup() -> (PgPool, Arc<dyn EventLog>, CommandService) {
    test_support::command_side().await
}

fn start(
    pool: &PgPool,
    log: &Arc<dyn EventLog>,
    projections: Vec<Arc<dyn Projection>>,
    batch: usize,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let runner = Runner::with_sources(pool.clone(), projections, eventlog::in_process(log.clone(), batch));
    (tx, tokio::spawn(async move { runner.run(rx).await }))
}

async fn stop((tx, handle): (watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    tx.send(true).unwrap();
    handle.await.unwrap();
}

async fn caught_up(pool: &PgPool, log: &Arc<dyn EventLog>, name: &str) {
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

async fn products_table(pool: &PgPool) -> Vec<(Uuid, i64, i64, String, i64)> {
    sqlx::query_as("SELECT id, stock, price_minor, status, version FROM rm_products ORDER BY id").fetch_all(pool).await.unwrap()
}

fn metadata() -> Metadata {
    Metadata::system("test")
}

async fn add_products(service: &CommandService, n: usize) -> Vec<Uuid> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_and_restarting_mid_stream_equals_a_rebuild_from_the_log() {
    let (pool, log, service) = setup().await;
    let ids = add_products(&service, 20).await;
    let writer = {
        let (service, ids) = (service.clone(), ids.clone());
        tokio::spawn(async move {
            for round in 0..15u32 {
                for id in &ids {
                    let command = if round % 3 == 0 {
                        ProductCommand::ChangePrice { price: Money::new(100 + i64::from(round), Currency::usd()) }
                    } else {
                        ProductCommand::Restock { quantity: round + 1 }
                    };
                    service.execute::<ProductAggregate>(*id, command, None, &metadata()).await.unwrap();
                }
            }
        })
    };
    // Start and stop the runner several times while the writes go on.
    for _ in 0..4 {
        let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 7);
        tokio::time::sleep(Duration::from_millis(60)).await;
        stop(running).await;
    }
    writer.await.unwrap();
    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 7);
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    let incremental = products_table(&pool).await;
    assert_eq!(incremental.len(), 20);
    for (id, stock, ..) in &incremental {
        let product = service.load::<ProductAggregate>(&domain::stream_id::<ProductAggregate>(*id)).await.unwrap().state.unwrap();
        assert_eq!(*stock, i64::from(product.stock), "the read model agrees with the log");
    }

    // Redelivering the whole log on top changes nothing.
    let everything = log.read_all(0, usize::MAX).await.unwrap();
    let decoded: Vec<(&RecordedEvent, DomainEvent)> =
        everything.iter().map(|e| (e, DomainEvent::decode(&e.event_type, e.schema_version, &e.data).unwrap())).collect();
    let mut tx = pool.begin().await.unwrap();
    projections::ProductsProjection.apply_all(&mut tx, &decoded).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(products_table(&pool).await, incremental, "a redelivered batch is harmless");

    // Forget the checkpoint: the projection rebuilds from the log.
    sqlx::query("DELETE FROM projection_checkpoints").execute(&pool).await.unwrap();
    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 500);
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    assert_eq!(products_table(&pool).await, incremental);
}

/// A projection that fails while a switch is on.
struct Flaky;

#[async_trait]
impl Projection for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn version(&self) -> i32 {
        1
    }
    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent, _: &DomainEvent) -> Result<(), ApplyError> {
        let failing: bool = sqlx::query_scalar("SELECT failing FROM flaky_switch").fetch_one(&mut *tx).await?;
        if failing && event.event_type == "ProductRestocked" {
            return Err(ApplyError::Invalid("the switch is on".into()));
        }
        sqlx::query("INSERT INTO flaky_seen (position) VALUES ($1)").bind(event.global_position as i64).execute(tx).await?;
        Ok(())
    }
    fn tables(&self) -> &'static [&'static str] {
        &["flaky_seen"]
    }
}

#[tokio::test]
async fn a_poison_event_is_parked_the_others_go_on_and_retry_applies_it_later() {
    let (pool, log, service) = setup().await;
    sqlx::query("CREATE TABLE flaky_switch (failing boolean NOT NULL)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO flaky_switch VALUES (true)").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE flaky_seen (position bigint PRIMARY KEY)").execute(&pool).await.unwrap();
    let id = add_products(&service, 1).await[0];
    service.execute::<ProductAggregate>(id, ProductCommand::Restock { quantity: 1 }, None, &metadata()).await.unwrap();
    service.execute::<ProductAggregate>(id, ProductCommand::Discontinue, None, &metadata()).await.unwrap();
    // And an event no projection can read.
    let garbage = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ProductAdded".into(),
        schema_version: 2,
        occurred_at: chrono::Utc::now(),
        metadata: metadata(),
        data: serde_json::json!({"not": "a product"}),
    };
    log.append(vec![StreamWrite {
        stream_id: format!("product-{}", Uuid::now_v7()),
        expected: ExpectedVersion::NoStream,
        events: vec![garbage],
    }])
    .await
    .unwrap();

    let flaky: Arc<dyn Projection> = Arc::new(Flaky);
    let running =
        start(&pool, &log, vec![flaky.clone(), Arc::new(projections::ProductsProjection), Arc::new(projections::CustomersProjection)], 100);
    caught_up(&pool, &log, "flaky").await;
    caught_up(&pool, &log, PRODUCTS).await;
    caught_up(&pool, &log, CUSTOMERS).await;
    stop(running).await;

    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM flaky_seen").fetch_one(&pool).await.unwrap();
    assert_eq!(seen, 2, "the events before the poison ones were applied (added, claim)");
    let status = projections::status(&pool).await.unwrap();
    let flaky_status = status.iter().find(|s| s.name == "flaky").unwrap();
    assert_eq!(
        (flaky_status.state.as_str(), flaky_status.parked),
        ("degraded", 3),
        "the restock, the discontinuation held back behind it, the undecodable event"
    );
    assert!(flaky_status.last_error.is_some());
    let products_status = status.iter().find(|s| s.name == PRODUCTS).unwrap();
    assert_eq!(products_status.parked, 1, "the undecodable event is parked");
    let customers_status = status.iter().find(|s| s.name == CUSTOMERS).unwrap();
    assert_eq!(
        (customers_status.state.as_str(), customers_status.parked),
        ("running", 0),
        "a read model that has no use for product events neither reads nor parks them"
    );
    assert_eq!(products_table(&pool).await[0].3, "discontinued");
    // Nor does it count it unapplied when verified; and a dead letter of
    // such an event (as one parked by an earlier release) is cleared by a
    // retry, not kept failing.
    let customers = projections::CustomersProjection;
    let verified = projections::verify(&pool, &*log, &customers).await.unwrap();
    assert!(verified.matches(), "{verified:?}");
    sqlx::query(
        "INSERT INTO dead_letters (projection, global_position, stream_id, event_type, error, attempts)
         SELECT 'customers', global_position, stream_id, event_type, 'cannot be decoded', 3 FROM events WHERE event_type = 'ProductAdded' AND schema_version = 2 AND data ? 'not'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(projections::retry_parked(&pool, &*log, &customers).await.unwrap(), projections::Retried { applied: 1, still_parked: 0 });

    sqlx::query("UPDATE flaky_switch SET failing = false").execute(&pool).await.unwrap();
    let retried = projections::retry_parked(&pool, &*log, &*flaky).await.unwrap();
    assert_eq!(
        retried,
        projections::Retried { applied: 2, still_parked: 1 },
        "the restock and the discontinuation apply now, in order; the undecodable event stays parked"
    );
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM flaky_seen").fetch_one(&pool).await.unwrap();
    assert_eq!(seen, 4);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE projection = 'flaky'").fetch_one(&pool).await.unwrap();
    assert_eq!(parked, 1);
}

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
        let rows: Vec<(String, i32, String)> =
            sqlx::query_as("SELECT projection, version, state FROM projection_checkpoints WHERE projection LIKE $1 || '%'")
                .bind(name)
                .fetch_all(pool)
                .await
                .unwrap();
        if rows == [(name.to_owned(), version, "running".to_owned())] {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no take-over: {rows:?}");
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

/// Makes the real products projection fail on one price (a constraint the
/// test adds), or with a transient error while `transient` is on.
async fn sabotage_products(pool: &PgPool) {
    for statement in [
        "ALTER TABLE rm_products ADD CONSTRAINT poison_price CHECK (price_minor <> 666)",
        "CREATE TABLE transient_switch (on_ boolean NOT NULL)",
        "INSERT INTO transient_switch VALUES (false)",
        "CREATE FUNCTION transient_failure() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF (SELECT on_ FROM transient_switch) THEN
                 RAISE EXCEPTION 'deadlock detected (injected)' USING ERRCODE = '40P01';
             END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER transient_failure BEFORE UPDATE ON rm_products FOR EACH ROW EXECUTE FUNCTION transient_failure()",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
}

async fn parked(pool: &PgPool, projection: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT event_type, error FROM dead_letters WHERE projection = $1 ORDER BY global_position")
        .bind(projection)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A parked price change holds back the restock after it; fixed and
/// retried, both land, in order, and nothing is reported applied that did
/// not land.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_event_holds_back_its_stream_and_a_retry_applies_them_in_order() {
    let (pool, log, service) = setup().await;
    sabotage_products(&pool).await;
    let ids = add_products(&service, 2).await;
    let (poisoned, other) = (ids[0], ids[1]);
    service
        .execute::<ProductAggregate>(poisoned, ProductCommand::ChangePrice { price: Money::new(666, Currency::usd()) }, None, &metadata())
        .await
        .unwrap();
    service.execute::<ProductAggregate>(poisoned, ProductCommand::Restock { quantity: 5 }, None, &metadata()).await.unwrap();
    service.execute::<ProductAggregate>(other, ProductCommand::Restock { quantity: 1 }, None, &metadata()).await.unwrap();

    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 100);
    caught_up(&pool, &log, PRODUCTS).await;
    let rows = products_table(&pool).await;
    let row = |id: Uuid| rows.iter().find(|r| r.0 == id).cloned().unwrap();
    assert_eq!((row(poisoned).1, row(poisoned).2), (10, 100), "neither the price change nor the restock after it is applied");
    assert_eq!(row(other).1, 11, "other streams go on");
    let dead = parked(&pool, PRODUCTS).await;
    assert_eq!(dead.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["ProductPriceChanged", "ProductRestocked"]);
    assert!(dead[1].1.starts_with("held back"), "{dead:?}");

    // More events for the held stream while it is parked: held back too.
    service.execute::<ProductAggregate>(poisoned, ProductCommand::Restock { quantity: 2 }, None, &metadata()).await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;
    assert_eq!(parked(&pool, PRODUCTS).await.len(), 3);

    // Still broken: a retry applies nothing and says so.
    let retried = projections::retry_parked(&pool, &*log, &projections::ProductsProjection).await.unwrap();
    assert_eq!(retried, projections::Retried { applied: 0, still_parked: 3 });
    sqlx::query("ALTER TABLE rm_products DROP CONSTRAINT poison_price").execute(&pool).await.unwrap();
    let retried = projections::retry_parked(&pool, &*log, &projections::ProductsProjection).await.unwrap();
    assert_eq!(retried, projections::Retried { applied: 3, still_parked: 0 });
    let rows = products_table(&pool).await;
    let fixed = rows.iter().find(|r| r.0 == poisoned).unwrap();
    assert_eq!((fixed.1, fixed.2), (17, 666), "every held event landed: {fixed:?}");
    let product = service.load::<ProductAggregate>(&domain::stream_id::<ProductAggregate>(poisoned)).await.unwrap();
    assert_eq!(fixed.4 as u64, product.version.unwrap(), "the row is at the stream's version");

    // Live events after the retry apply directly again.
    service.execute::<ProductAggregate>(poisoned, ProductCommand::Restock { quantity: 1 }, None, &metadata()).await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    assert_eq!(products_table(&pool).await.iter().find(|r| r.0 == poisoned).unwrap().1, 18);
    let status = projections::status(&pool).await.unwrap();
    let products = status.iter().find(|s| s.name == PRODUCTS).unwrap();
    assert_eq!((products.state.as_str(), products.parked), ("running", 0));
}

/// A deadlock (or any transient failure) is retried with backoff until it
/// passes; it is never parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failures_are_retried_never_parked() {
    let (pool, log, service) = setup().await;
    sabotage_products(&pool).await;
    let id = add_products(&service, 1).await[0];
    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 100);
    caught_up(&pool, &log, PRODUCTS).await;
    sqlx::query("UPDATE transient_switch SET on_ = true").execute(&pool).await.unwrap();
    service.execute::<ProductAggregate>(id, ProductCommand::Restock { quantity: 4 }, None, &metadata()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(parked(&pool, PRODUCTS).await.is_empty(), "a transient failure is not the event's fault");
    assert_eq!(products_table(&pool).await[0].1, 10, "not applied while the failure lasts");
    sqlx::query("UPDATE transient_switch SET on_ = false").execute(&pool).await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;
    stop(running).await;
    assert_eq!(products_table(&pool).await[0].1, 14);
    assert!(parked(&pool, PRODUCTS).await.is_empty());
}

/// A small deterministic generator, so a failing mix can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A mixed log of customers, products and orders whose later events come
/// in any order the dice choose, including orders paid, cancelled and paid
/// again, and lines naming one product twice.
fn mixed_log(dice: &mut Dice) -> Vec<(RecordedEvent, DomainEvent)> {
    let usd = |amount: i64| serde_json::json!({"amount_minor": amount, "currency": "USD"});
    let address =
        |n: usize| serde_json::json!({"line1": format!("{n} Main St"), "city": "Springfield", "postal_code": "12345", "country": "US"});
    let customers: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let products: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    let orders: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    // Each stream: its id, how many of its events are in the log, its events.
    type Stream = (String, u64, Vec<(&'static str, serde_json::Value)>);
    let mut streams: Vec<Stream> = Vec::new();
    // ProductAdded is stored at version 2; every other type here at 1.
    let version_of = |event_type: &str| if event_type == "ProductAdded" { 2 } else { 1 };
    for (i, id) in customers.iter().enumerate() {
        let mut events = vec![(
            "CustomerRegistered",
            serde_json::json!({"customer_id": id, "email": format!("c{i}@example.com"), "name": format!("C {i}"), "shipping_address": address(i)}),
        )];
        for k in 0..dice.roll(5) {
            events.push(match dice.roll(3) {
                0 => (
                    "CustomerEmailChanged",
                    serde_json::json!({"previous_email": format!("c{i}@example.com"), "email": format!("c{i}.{k}@example.com")}),
                ),
                1 => ("CustomerShippingAddressUpdated", serde_json::json!({"shipping_address": address(100 + k)})),
                _ => ("CustomerDeactivated", serde_json::json!({"reason": "asked"})),
            });
        }
        streams.push((format!("customer-{id}"), 0, events));
    }
    for (i, id) in products.iter().enumerate() {
        let mut events = vec![(
            "ProductAdded",
            serde_json::json!({"product_id": id, "sku": format!("SKU-{i}"), "name": "P", "description": "", "category": "c", "price": usd(100), "initial_stock": 10}),
        )];
        for k in 0..dice.roll(6) as u32 {
            events.push(match dice.roll(2) {
                0 => ("ProductRestocked", serde_json::json!({"quantity": 1, "stock_after": 11 + k})),
                _ => ("ProductPriceChanged", serde_json::json!({"previous_price": usd(100), "price": usd(100 + i64::from(k))})),
            });
        }
        streams.push((format!("product-{id}"), 0, events));
    }
    for (i, id) in orders.iter().enumerate() {
        let lines: Vec<serde_json::Value> = (0..1 + dice.roll(3))
            .map(|_| {
                let quantity = 1 + dice.roll(4) as i64;
                serde_json::json!({"product_id": products[dice.roll(2)], "quantity": quantity, "unit_price": usd(250), "line_total": usd(250 * quantity)})
            })
            .collect();
        let total: i64 = lines.iter().map(|l| l["line_total"]["amount_minor"].as_i64().unwrap()).sum();
        let mut events = vec![(
            "OrderPlaced",
            serde_json::json!({"order_id": id, "customer_id": customers[i % customers.len()], "lines": lines, "total": usd(total), "shipping_address": address(i)}),
        )];
        for _ in 0..dice.roll(6) {
            events.push(match dice.roll(4) {
                0 => ("OrderPaid", serde_json::json!({"provider_event_id": Uuid::now_v7().to_string(), "amount": usd(total)})),
                1 => ("OrderCancelled", serde_json::json!({"reason": "changed mind", "release_products": []})),
                2 => ("OrderConfirmed", serde_json::json!({})),
                _ => ("OrderShipped", serde_json::json!({"carrier": "UPS", "tracking_number": "1Z"})),
            });
        }
        streams.push((format!("order-{id}"), 0, events));
    }
    // Interleave the streams at random, each in its own order.
    let mut log = Vec::new();
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-01T23:00:00Z").unwrap().to_utc();
    while !streams.is_empty() {
        let s = dice.roll(streams.len());
        let (stream_id, next, events) = &mut streams[s];
        let (event_type, data) = events[*next as usize].clone();
        *next += 1;
        let position = log.len() as u64 + 1;
        // Minutes apart, so payments fall on different days.
        let at = start + chrono::Duration::minutes(position as i64 * 37);
        let recorded = RecordedEvent {
            event_id: Uuid::now_v7(),
            stream_id: stream_id.clone(),
            stream_version: *next,
            global_position: position,
            event_type: event_type.into(),
            schema_version: version_of(event_type),
            occurred_at: at,
            recorded_at: at,
            metadata: metadata(),
            data,
        };
        let decoded = DomainEvent::decode(&recorded.event_type, recorded.schema_version, &recorded.data).unwrap();
        log.push((recorded, decoded));
        if *next as usize == events.len() {
            streams.swap_remove(s);
        }
    }
    log
}

/// Every row of a projection's tables, in a fixed order.
async fn rows_of(pool: &PgPool, projection: &dyn Projection) -> Vec<String> {
    let mut rows = Vec::new();
    for table in projection.tables() {
        let mut these: Vec<String> = sqlx::query_scalar(&format!("SELECT '{table} ' || row_to_json(t)::text FROM {table} t ORDER BY 1"))
            .fetch_all(pool)
            .await
            .unwrap();
        rows.append(&mut these);
    }
    rows
}

#[tokio::test]
async fn each_read_model_is_the_same_applied_in_batches_of_any_size_as_event_by_event() {
    let pool = test_support::migrated_database().await;
    for seed in 1..=12u64 {
        let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let log = mixed_log(&mut dice);
        for projection in projections::all() {
            let mut tx = pool.begin().await.unwrap();
            projection.reset(&mut tx).await.unwrap();
            for (event, decoded) in &log {
                projection.apply(&mut tx, event, decoded).await.unwrap();
            }
            tx.commit().await.unwrap();
            let one_by_one = rows_of(&pool, projection.as_ref()).await;
            assert!(!one_by_one.is_empty());

            let mut tx = pool.begin().await.unwrap();
            projection.reset(&mut tx).await.unwrap();
            let mut rest: Vec<(&RecordedEvent, DomainEvent)> = log.iter().map(|(e, d)| (e, d.clone())).collect();
            while !rest.is_empty() {
                let take = (1 + dice.roll(40)).min(rest.len());
                let batch: Vec<_> = rest.drain(..take).collect();
                projection.apply_all(&mut tx, &batch).await.unwrap();
            }
            tx.commit().await.unwrap();
            assert_eq!(rows_of(&pool, projection.as_ref()).await, one_by_one, "{} with seed {seed}", projection.name());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_compares_the_live_view_with_the_log_while_both_move_and_names_each_row_that_differs() {
    let (pool, log, service) = setup().await;
    let ids = add_products(&service, 30).await;
    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection)], 50);
    caught_up(&pool, &log, PRODUCTS).await;
    let projection = projections::ProductsProjection;
    assert!(matches!(
        projections::verify(&pool, &*log, &projections::CustomersProjection).await,
        Err(projections::VerifyError::NotStarted(_))
    ));

    // Writes go on while it verifies: it compares at one position of the
    // live view, whatever that is by then.
    let writer = {
        let (service, ids) = (service.clone(), ids.clone());
        tokio::spawn(async move {
            for round in 0..10u32 {
                for id in &ids {
                    service
                        .execute::<ProductAggregate>(*id, ProductCommand::Restock { quantity: round + 1 }, None, &metadata())
                        .await
                        .unwrap();
                }
            }
        })
    };
    while !writer.is_finished() {
        let found = projections::verify(&pool, &*log, &projection).await.unwrap();
        assert!(found.matches(), "{found:?}");
        assert!(found.events >= 30, "{found:?}");
    }
    writer.await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;

    // Tampered behind its back: one row changed, one deleted, one made up.
    sqlx::query("UPDATE rm_products SET stock = stock + 1 WHERE id = $1").bind(ids[0]).execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM rm_products WHERE id = $1").bind(ids[1]).execute(&pool).await.unwrap();
    let made_up = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO rm_products (id, sku, name, description, category, price_minor, currency, stock, status, version, updated_at)
         VALUES ($1, 'FAKE-1', 'Fake', '', 'c', 1, 'USD', 1, 'active', 1, now())",
    )
    .bind(made_up)
    .execute(&pool)
    .await
    .unwrap();
    let found = projections::verify(&pool, &*log, &projection).await.unwrap();
    assert!(!found.matches());
    assert_eq!(found.differing_rows, 4, "{found:?}");
    let sides = |id: Uuid| -> Vec<&str> {
        let mut sides: Vec<&str> = found.differences.iter().filter(|d| d.row["id"] == id.to_string()).map(|d| d.only_in.as_str()).collect();
        sides.sort();
        sides
    };
    assert_eq!(sides(ids[0]), ["live", "log"], "{found:?}");
    assert_eq!(sides(ids[1]), ["log"], "{found:?}");
    assert_eq!(sides(made_up), ["live"], "{found:?}");
    assert!(found.differences.iter().all(|d| d.table == "rm_products"));

    // One verification of a projection at a time; the scratch tables go.
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('verify:products', 0))").execute(&mut *holder).await.unwrap();
    assert!(matches!(projections::verify(&pool, &*log, &projection).await, Err(projections::VerifyError::Busy(_))));
    drop(holder.detach());
    let scratch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'verify\\_%'").fetch_one(&pool).await.unwrap();
    assert_eq!(scratch, 0);
    stop(running).await;
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
    sqlx::query_as("SELECT position, generation FROM projection_checkpoints WHERE projection = 'products:rebuild'")
        .fetch_optional(pool)
        .await
        .unwrap()
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
