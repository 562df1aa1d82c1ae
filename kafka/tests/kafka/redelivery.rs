//! What comes through the topic a second time, or unreadable: a copy of
//! an event applied already, and a message that is not an event at all.

use std::sync::Arc;
use std::time::Duration;

use eventlog::{ExpectedVersion, StreamWrite};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{brokers, ensure_topic, setup, start_relay, stop, topic};

const PARTITIONS: i32 = 3;

use test_support::stored_event as event;

/// Produces one message to `topic` as another client would; keyed, to
/// the partition the relay puts the key's stream in, or the one after it.
async fn produce(topic: &str, key: Option<&str>, elsewhere: bool, position: Option<u64>, payload: &[u8]) {
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let position = position.map(|p| p.to_string());
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
    if let Some(key) = key {
        let partition = (eventlog::partition_for(key, PARTITIONS) + i32::from(elsewhere)) % PARTITIONS;
        record = record.key(key).partition(partition);
    }
    if let Some(position) = &position {
        record = record.headers(
            OwnedHeaders::new()
                .insert(Header { key: "event_type", value: Some("OrderPaid") })
                .insert(Header { key: "global_position", value: Some(position.as_str()) }),
        );
    }
    producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
}

/// Sales booked per day: orders and revenue, summed over every day.
async fn booked(pool: &PgPool) -> (i64, String) {
    sqlx::query_as("SELECT coalesce(sum(orders), 0)::bigint, coalesce(sum(revenue_minor), 0)::text FROM rm_sales_daily")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_handed_over_again_after_its_cancellation_is_booked_once_and_garbage_is_parked_then_dropped() {
    let (pool, log, _service) = setup().await;
    let topic = topic();
    ensure_topic(&brokers(), &topic, PARTITIONS).await.unwrap();
    let (order, customer, product) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let stream = format!("order-{order}");
    let usd = |amount: i64| json!({"amount_minor": amount, "currency": "USD"});
    let placed = event(
        "OrderPlaced",
        json!({"order_id": order, "customer_id": customer, "total": usd(500),
               "lines": [{"product_id": product, "quantity": 2, "unit_price": usd(250), "line_total": usd(500)}],
               "shipping_address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}),
    );
    let paid = event("OrderPaid", json!({"provider_event_id": "evt_1", "amount": usd(500)}));
    let cancelled = event("OrderCancelled", json!({"reason": "changed mind", "release_products": []}));
    let written = log
        .append(vec![StreamWrite { stream_id: stream.clone(), expected: ExpectedVersion::NoStream, events: vec![placed, paid, cancelled] }])
        .await
        .unwrap();
    let head = written.position;
    let paid_at = head - 1;

    let relay = start_relay(&log, &pool, &topic);
    let (stop_tx, stop_rx) = watch::channel(false);
    let runner = projections::Runner::with_sources(
        pool.clone(),
        vec![Arc::new(projections::SalesProjection)],
        kafka::sources(&brokers(), &topic, log.clone()),
    );
    let worker = tokio::spawn(async move { runner.run(stop_rx).await });
    let caught_up = |at: u64| {
        let pool = pool.clone();
        async move { projections::progress(&pool, &["sales"]).await.unwrap()[0].as_ref().is_some_and(|p| p.position >= at) }
    };
    eventually("the sales catching up", || caught_up(head)).await;
    assert_eq!(booked(&pool).await, (0, "0".into()), "paid, then cancelled: nothing booked");

    // The payment's event again, as the relay published it (a producer's
    // retry, a relay publishing again), and a corrupt copy of it, both in
    // its stream's partition, which is past it: passed over. Then a
    // message claiming to be it from another partition, which cannot be
    // read (nothing says it is a copy: parked), and one that claims
    // nothing at all.
    let stored = log.read_all(paid_at - 1, 1).await.unwrap().remove(0);
    produce(&topic, Some(&stream), false, Some(paid_at), &serde_json::to_vec(&stored).unwrap()).await;
    produce(&topic, Some(&stream), false, Some(paid_at), b"\xff a corrupt copy").await;
    produce(&topic, Some(&stream), true, Some(paid_at), b"\xff not an event").await;
    produce(&topic, None, false, None, b"garbage from another client").await;
    let parked = || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE projection = 'sales'").fetch_one(&pool).await.unwrap();
            n == 2
        }
    };
    eventually("both unreadable messages parked", parked).await;
    let status = projections::status(&pool).await.unwrap();
    let sales = status.iter().find(|s| s.name == "sales").unwrap();
    assert_eq!((sales.state.as_str(), sales.parked), ("degraded", 2), "{sales:?}");
    assert!(sales.last_error.as_deref().unwrap_or_default().contains("not an event of the log"), "{sales:?}");
    assert_eq!(booked(&pool).await, (0, "0".into()), "the copies were passed over");

    // A retry applies the log's own event where the message claimed to be
    // (booked once: the order remembers it), and drops what claims nothing.
    let retried = projections::retry_parked(&pool, &*log, &projections::SalesProjection).await.unwrap();
    assert_eq!(retried, projections::Retried { applied: 1, still_parked: 0, discarded: 1 });
    assert_eq!(booked(&pool).await, (0, "0".into()), "a payment handed over again after its cancellation is not booked again");

    // And the sales go on.
    let again = event("OrderPaid", json!({"provider_event_id": "evt_2", "amount": usd(500)}));
    let written = log
        .append(vec![StreamWrite { stream_id: stream.clone(), expected: ExpectedVersion::Exact(2), events: vec![again] }])
        .await
        .unwrap();
    eventually("the sales following the topic", || caught_up(written.position)).await;
    assert_eq!(booked(&pool).await, (1, "500".into()));
    let status = projections::status(&pool).await.unwrap();
    assert_eq!(status.iter().find(|s| s.name == "sales").unwrap().parked, 0);
    stop_tx.send(true).unwrap();
    worker.await.unwrap();
    stop(relay).await;
}
