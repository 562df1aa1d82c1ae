//! Nothing stuck without a sign: what no consumer can apply (a message on
//! the topic that is not an event, a step the order process cannot take,
//! an event the index cannot decode) is parked, shown in
//! `/v1/projections` and the metrics, and taken again by `projections
//! retry NAME`.

use std::time::Duration;

use eventlog::{ExpectedVersion, StreamWrite};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::deployment::Deployment;
use crate::{brokers, run, storekeeper};

/// Every consumer of the log that `serve` runs, as `/v1/projections` lists them.
const CONSUMERS: [&str; 7] = ["audit", "customers", "order-process", "orders", "products", "sales", "search"];

fn product(id: Uuid, name: &str, price: i64) -> Value {
    json!({"id": id, "sku": format!("PSN-{}", &id.simple().to_string()[20..]), "name": name, "description": "poison test",
           "category": "test", "price": {"amount_minor": price, "currency": "EUR"}, "initial_stock": 5})
}

fn parked(projections: &Value, name: &str) -> Option<u64> {
    projections["items"].as_array()?.iter().find(|p| p["name"] == name)?["parked"].as_u64()
}

/// `storekeeper projections retry NAME` against `url`: its exit and stdout.
fn retry(url: &str, name: &str) -> (bool, String) {
    let out = run(storekeeper(&["projections", "retry", name]).env("DATABASE_URL", url));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A read with a consistency token, answered as it is (no retry).
async fn read_once(d: &Deployment, path: &str, token: &str) -> (StatusCode, Value) {
    let response = d
        .http
        .get(format!("{}{path}", d.query))
        .bearer_auth(&d.admin)
        .header("x-consistency-token", token)
        .header("x-consistency-timeout", "10000")
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_kafka_a_message_that_is_not_an_event_is_parked_by_every_consumer_and_a_retry_mends_it() {
    let url = eventlog::testing::fresh_database_url().await;
    let topic = format!("storekeeper-e2e-poison-{}", Uuid::now_v7().simple());
    let mut d = Deployment::new(url.clone(), Some(topic.clone()));
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let (_, added) = d.write("/v1/products", product(first, "Poisoned Kettle", 1000)).await;
    let (_, other) = d.write("/v1/products", product(second, "Healthy Teapot", 1000)).await;
    // Every consumer that takes product events has the first one (so the
    // message below claims an event already applied).
    d.read("/v1/search/products?q=kettle", &[&added, &other]).await;
    d.read(&format!("/v1/products/{first}"), &[&added]).await;
    d.read(&format!("/v1/audit?stream_id=product-{first}"), &[&added]).await;

    // Another client produces to the topic: bytes that claim to be the
    // first product's event from another partition than its stream's (so
    // nothing says they are a copy of what was applied), and bytes that
    // claim nothing.
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let stream = format!("product-{first}");
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "global_position", value: Some(added.as_str()) })
        .insert(rdkafka::message::Header { key: "event_type", value: Some("ProductAdded") });
    let elsewhere = (eventlog::partition_for(&stream, crate::deployment::PARTITIONS) + 1) % crate::deployment::PARTITIONS;
    let claimed =
        FutureRecord::<str, [u8]>::to(&topic).key(&stream).partition(elsewhere).payload(b"\x00\x01 not json".as_slice()).headers(headers);
    producer.send(claimed, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    let bare = FutureRecord::<str, [u8]>::to(&topic).payload(b"{\"hello\": \"world\"}".as_slice());
    producer.send(bare, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    // A key no stream could have (PostgreSQL's text refuses its NUL).
    let nul = FutureRecord::<[u8], [u8]>::to(&topic).key(b"x\x00y".as_slice()).payload(b"\x00".as_slice());
    producer.send(nul, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();

    let listed = d.eventually("/v1/projections", |p| CONSUMERS.iter().all(|name| parked(p, name) == Some(3))).await;
    for item in listed["items"].as_array().unwrap() {
        assert_eq!(item["state"], "degraded", "{item}");
        assert!(item["last_error"].as_str().unwrap().contains("not an event of the log"), "{item}");
    }
    let kind = |name: &str| listed["items"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["kind"].clone();
    assert_eq!((kind("order-process"), kind("search"), kind("products")), (json!("process"), json!("index"), json!("read_model")));
    let metrics = d.http.get(format!("{}/metrics", d.query)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("storekeeper_kafka_unreadable_total"), "{metrics}");

    // The stream it named is held back: its next write is not shown stale.
    let (_, repriced) = d.write(&format!("/v1/products/{first}/price"), json!({"price": {"amount_minor": 2500, "currency": "EUR"}})).await;
    let (_, restocked) = d.write(&format!("/v1/products/{second}/restock"), json!({"quantity": 1})).await;
    assert_eq!(d.read(&format!("/v1/products/{second}"), &[&restocked]).await["stock"], 6, "other streams go on");
    let (status, body) = read_once(&d, &format!("/v1/products/{first}"), &repriced).await;
    assert_eq!((status, body["code"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!("projection_degraded")), "{body}");

    // A retry applies the log's own event in place of the message that
    // claimed to be it, and drops the one that claimed nothing.
    for name in CONSUMERS {
        let (ok, out) = retry(&url, name);
        assert!(ok, "{name}: {out}");
        assert!(out.contains("0 still parked, 2 dropped"), "{name}: {out}");
    }
    assert_eq!(d.read(&format!("/v1/products/{first}"), &[&repriced]).await["price"]["amount_minor"], 2500);
    let listed = d.read("/v1/projections", &[]).await;
    assert!(CONSUMERS.iter().all(|name| parked(&listed, name) == Some(0)), "{listed}");
    // A rebuild reads the topic afresh in a new consumer group, after the
    // log up to its head: the old messages are passed over, not parked again.
    let rebuilt = run(storekeeper(&["projections", "rebuild", "products", "--wait"]).env("DATABASE_URL", &url));
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    // Once its group has read past them in every partition (a product
    // written to each, read with its token).
    let mut tokens = Vec::new();
    let mut partitions = std::collections::BTreeSet::new();
    while partitions.len() < crate::deployment::PARTITIONS as usize {
        let id = Uuid::now_v7();
        if partitions.insert(eventlog::partition_for(&format!("product-{id}"), crate::deployment::PARTITIONS)) {
            tokens.push(d.write("/v1/products", product(id, "Later Mug", 300)).await.1);
        }
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    d.read("/v1/products?limit=1", &tokens).await;
    let listed = d.read("/v1/projections", &[]).await;
    assert_eq!(parked(&listed, "products"), Some(0), "{listed}");
    // The index reads the released product again with its next batch.
    let (_, later) = d.write(&format!("/v1/products/{second}/restock"), json!({"quantity": 1})).await;
    let found = d.read("/v1/search/products?q=kettle", &[&later]).await;
    assert_eq!(found["hits"][0]["price"]["amount_minor"], 2500, "{found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_step_the_order_process_cannot_take_and_an_event_the_index_cannot_decode_are_parked_and_shown() {
    let url = eventlog::testing::fresh_database_url().await;
    let mut d = Deployment::new(url.clone(), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    let (customer, missing, order) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    d.write("/v1/customers", json!({"id": customer, "email": format!("{}@example.com", customer.simple()), "name": "Ada"})).await;

    // An order for a product that does not exist yet, written straight to
    // the log (the API checks its lines): the process cannot reserve it.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (log, _vault) = eventlog::vault::postgres_log(&pool);
    let usd = |amount: i64| json!({"amount_minor": amount, "currency": "EUR"});
    let raw = test_support::stored_event;
    let placed = raw(
        "OrderPlaced",
        json!({"order_id": order, "customer_id": customer, "total": usd(2000),
                     "lines": [{"product_id": missing, "quantity": 2, "unit_price": usd(1000), "line_total": usd(2000)}],
                     "shipping_address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}),
    );
    let stream = format!("order-{order}");
    let write = StreamWrite { stream_id: stream, expected: ExpectedVersion::NoStream, events: vec![placed] };
    let written = log.append(vec![write]).await.unwrap().position.to_string();
    let listed = d.eventually("/v1/projections", |p| parked(p, "order-process") == Some(1)).await;
    let process = listed["items"].as_array().unwrap().iter().find(|p| p["name"] == "order-process").unwrap().clone();
    assert_eq!((process["kind"].clone(), process["state"].clone()), (json!("process"), json!("degraded")), "{process}");
    assert!(process["last_error"].as_str().unwrap().contains("refused"), "{process}");
    let metrics = d.http.get(format!("{}/metrics", d.query)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "storekeeper_projection_parked_total{projection=\"order-process\"} 1"), "{metrics}");
    assert_eq!(d.read(&format!("/v1/orders/{order}"), &[&written]).await["status"], "placed");

    // Mended (the product exists now), a retry takes the step.
    let (ok, out) = retry(&url, "order-process");
    assert!(!ok && out.contains("1 still parked"), "still refused: {out}");
    d.write("/v1/products", product(missing, "Late Kettle", 1000)).await;
    let (ok, out) = retry(&url, "order-process");
    assert!(ok && out.contains("1 parked event(s) of order-process applied"), "{out}");
    d.eventually(&format!("/v1/orders/{order}"), |o| o["status"] == "confirmed").await;
    d.eventually(&format!("/v1/products/{missing}"), |p| p["stock"] == 3).await;
    assert_eq!(parked(&d.read("/v1/projections", &[]).await, "order-process"), Some(0));

    // An event of the product that cannot be decoded, and a good one
    // after it, written straight to the log: the index parks the first
    // (as the products read model does), holds the second back behind it,
    // and keeps the document as it was.
    let events = vec![
        raw("ProductPriceChanged", json!({"price": "not money"})),
        raw("ProductPriceChanged", json!({"previous_price": usd(1000), "price": usd(1500)})),
    ];
    let write = StreamWrite { stream_id: format!("product-{missing}"), expected: ExpectedVersion::Any, events };
    let repriced = log.append(vec![write]).await.unwrap().position.to_string();
    let listed = d.eventually("/v1/projections", |p| parked(p, "search") == Some(2) && parked(p, "products") == Some(2)).await;
    let search = listed["items"].as_array().unwrap().iter().find(|p| p["name"] == "search").unwrap().clone();
    assert!(search["last_error"].as_str().unwrap().contains("cannot decode"), "{search}");
    let (_, other) = d.write("/v1/products", product(Uuid::now_v7(), "Other Kettle", 700)).await;
    let found = d.read("/v1/search/products?q=late", &[&other]).await;
    assert_eq!(found["hits"][0]["price"]["amount_minor"], 1000, "the document stays as it was: {found}");
    let (status, body) = read_once(&d, "/v1/search/products?q=late", &repriced).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (ok, out) = retry(&url, "search");
    assert!(!ok && out.contains("2 still parked"), "an event that cannot be decoded stays parked: {out}");
}
