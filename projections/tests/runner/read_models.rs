//! What the read models hold: the same whatever the batches, and what
//! `verify` finds when the live view is compared with the log.

use std::sync::Arc;

use domain::events::DomainEvent;
use domain::product::{ProductAggregate, ProductCommand};
use eventlog::RecordedEvent;
use projections::Projection;
use projections::names::PRODUCTS;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{add_products, caught_up, metadata, setup, start, stop};

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
            let mut rest: Vec<(&RecordedEvent, &DomainEvent)> = log.iter().map(|(e, d)| (e, d)).collect();
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
