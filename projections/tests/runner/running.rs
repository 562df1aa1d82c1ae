//! A runner at work: stopped and restarted, fed poison events and
//! transient failures.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::events::DomainEvent;
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Currency, Money};
use eventlog::{ExpectedVersion, NewEvent, RecordedEvent, StreamWrite};
use projections::names::{CUSTOMERS, PRODUCTS};
use projections::{ApplyError, Projection};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::support::{add_products, caught_up, metadata, products_table, rows, setup, start, stop};

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
    let decoded: Vec<(&RecordedEvent, &DomainEvent)> = decoded.iter().map(|(e, d)| (*e, d)).collect();
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

/// Read models commit asynchronously, so a crash of PostgreSQL can take
/// back their last commits while this process goes on. A running feed
/// whose checkpoint went back under it reads the log again from there,
/// rather than moving the checkpoint past what was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_that_went_back_under_a_running_feed_is_read_again_from_there() {
    let (pool, log, service) = setup().await;
    let ids = add_products(&service, 20).await;
    let running = start(&pool, &log, vec![Arc::new(projections::ProductsProjection), Arc::new(projections::CustomersProjection)], 100);
    caught_up(&pool, &log, PRODUCTS).await;
    let before = products_table(&pool).await;
    // What a crash that lost every commit of the feed leaves behind.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM rm_products").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE projection_checkpoints SET position = 0").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    service.execute::<ProductAggregate>(ids[0], ProductCommand::Restock { quantity: 4 }, None, &metadata()).await.unwrap();
    caught_up(&pool, &log, PRODUCTS).await;
    caught_up(&pool, &log, CUSTOMERS).await;
    stop(running).await;
    let after = products_table(&pool).await;
    assert_eq!(after.len(), before.len(), "every product is back, not only the one written since");
    let found = projections::verify(&pool, &*log, &projections::ProductsProjection).await.unwrap();
    assert!(found.matches(), "{found:?}");
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
    assert_eq!(
        projections::retry_parked(&pool, &*log, &customers).await.unwrap(),
        projections::Retried { applied: 1, still_parked: 0, discarded: 0 }
    );

    sqlx::query("UPDATE flaky_switch SET failing = false").execute(&pool).await.unwrap();
    let retried = projections::retry_parked(&pool, &*log, &*flaky).await.unwrap();
    assert_eq!(
        retried,
        projections::Retried { applied: 2, still_parked: 1, discarded: 0 },
        "the restock and the discontinuation apply now, in order; the undecodable event stays parked"
    );
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM flaky_seen").fetch_one(&pool).await.unwrap();
    assert_eq!(seen, 4);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE projection = 'flaky'").fetch_one(&pool).await.unwrap();
    assert_eq!(parked, 1);
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
    rows(pool, "SELECT event_type, error FROM dead_letters WHERE projection = $1 ORDER BY global_position", projection).await
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
    assert_eq!(retried, projections::Retried { applied: 0, still_parked: 3, discarded: 0 });
    sqlx::query("ALTER TABLE rm_products DROP CONSTRAINT poison_price").execute(&pool).await.unwrap();
    let retried = projections::retry_parked(&pool, &*log, &projections::ProductsProjection).await.unwrap();
    assert_eq!(retried, projections::Retried { applied: 3, still_parked: 0, discarded: 0 });
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
