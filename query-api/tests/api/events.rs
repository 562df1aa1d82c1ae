//! `GET /v1/events`: the log as Server-Sent Events, read as a browser's
//! `EventSource` would.

use std::time::Duration;

use serde_json::json;
use test_support::problem;
use test_support::sse::{Sse, SseEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApp, spawn_app};

const WAIT: Duration = Duration::from_secs(10);

async fn subscribe(app: &TestApp, query: &str, last_event_id: Option<u64>) -> Sse {
    let mut request = app.http.get(format!("{}/v1/events{query}", app.query)).bearer_auth(&app.admin);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    Sse::new(request.send().await.unwrap())
}

/// The events of a finite read, and the head its `end` names.
async fn read_to_head(app: &TestApp, query: &str, last_event_id: Option<u64>) -> (Vec<SseEvent>, u64) {
    let mut events = subscribe(app, query, last_event_id).await.rest().await;
    let end = events.pop().expect("an end event");
    assert_eq!(end.event.as_deref(), Some("end"), "{end:?}");
    (events, end.json()["head"].as_u64().unwrap())
}

async fn logged_positions(app: &TestApp) -> Vec<u64> {
    let (log, _) = eventlog::vault::postgres_log(&app.pool);
    log.read_all(0, usize::MAX).await.unwrap().iter().map(|e| e.global_position).collect()
}

#[tokio::test]
async fn a_subscription_sends_the_log_in_order_then_live_and_resumes_just_after_the_last_event_id() {
    let app = spawn_app().await;
    for sku in ["SSE-1", "SSE-2", "SSE-3"] {
        app.add_product(sku, "tools", 500, 3).await;
    }
    // The whole log to its head, each event once, its id its position.
    let (events, head) = read_to_head(&app, "?until=head", None).await;
    let positions: Vec<u64> = events.iter().map(SseEvent::position).collect();
    assert_eq!(positions, logged_positions(&app).await);
    assert_eq!(head, *positions.last().unwrap());
    let first = events[0].json();
    assert_eq!(first["global_position"], positions[0]);
    assert!(first["event_type"].is_string() && first["metadata"]["actor"].is_string() && first["data"].is_object(), "{first}");

    // From a position: that position first.
    let (from_third, _) = read_to_head(&app, &format!("?from={}&until=head", positions[2]), None).await;
    assert_eq!(from_third.iter().map(SseEvent::position).collect::<Vec<_>>(), positions[2..]);

    // Cut off after two events, a client reconnects with the last id it
    // had (and the query it had, which the header overrides).
    let mut live = subscribe(&app, "", None).await;
    let seen: Vec<u64> = vec![live.next_within(WAIT).await.unwrap().position(), live.next_within(WAIT).await.unwrap().position()];
    drop(live);
    let (rest, _) = read_to_head(&app, "?from=1&until=head", Some(seen[1])).await;
    let resumed: Vec<u64> = seen.iter().copied().chain(rest.iter().map(SseEvent::position)).collect();
    assert_eq!(resumed, positions);

    // Live: from the head, what is appended from now on.
    let mut tail = subscribe(&app, "?from=head", None).await;
    let (product, _) = app.add_product("SSE-4", "tools", 700, 1).await;
    let stream = format!("product-{product}");
    let created = loop {
        let event = tail.next_within(WAIT).await.expect("a live event");
        assert!(event.position() > head);
        if event.json()["stream_id"] == stream.as_str() {
            break event.json();
        }
    };
    assert_eq!(created["event_type"], "ProductAdded");
    assert_eq!(created["data"]["sku"], "SSE-4");

    // A finite read of nothing: only its end.
    let (none, _) = read_to_head(&app, "?from=head&until=head", None).await;
    assert!(none.is_empty());
    // Positions taken and never used (a rolled-back append) at the head:
    // a finite read still ends, and a live one still waits for the next.
    sqlx::query("SELECT nextval('events_position_seq')").execute(&app.pool).await.unwrap();
    let (all, _) = tokio::time::timeout(WAIT, read_to_head(&app, "?until=head", None)).await.expect("a finite read ends");
    assert_eq!(all.iter().map(SseEvent::position).collect::<Vec<_>>(), logged_positions(&app).await);
}

#[tokio::test]
async fn a_subscription_ends_with_its_token_and_never_starts_beyond_the_head() {
    let app = spawn_app().await;
    app.add_product("SSE-T", "tools", 500, 3).await;
    let head = *logged_positions(&app).await.last().unwrap();
    for (query, last_event_id) in [(format!("?from={}", head + 2), None), (String::new(), Some(head + 1))] {
        let mut request = app.http.get(format!("{}/v1/events{query}", app.query)).bearer_auth(&app.admin);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        problem(request.send().await.unwrap(), 409, "beyond_the_head").await;
    }
    // From the next position: allowed, it waits for it.
    let mut next = subscribe(&app, &format!("?from={}", head + 1), None).await;
    app.add_product("SSE-U", "tools", 500, 3).await;
    assert!(next.next_within(WAIT).await.unwrap().position() > head);

    // A token that ends in a second (and the edge's 5 s of leeway).
    let short = app.jwt.mint("alice", edge::Role::Admin, chrono::Duration::seconds(1));
    let response = app.http.get(format!("{}/v1/events?from=head", app.query)).bearer_auth(short).send().await.unwrap();
    let mut live = Sse::new(response);
    let ended = tokio::time::timeout(Duration::from_secs(15), live.rest()).await;
    assert!(ended.is_ok(), "the subscription outlived its token");
}

#[tokio::test]
async fn filters_narrow_by_category_stream_and_type_and_personal_fields_are_opened_until_forgotten() {
    let app = spawn_app().await;
    app.add_product("SSE-F", "tools", 500, 3).await;
    let (customer, _) = app.write("/v1/customers", json!({"email": "sse@example.com", "name": "Grace"})).await;
    let stream = format!("customer-{}", customer["id"].as_str().unwrap());

    let (customers, _) = read_to_head(&app, "?category=customer&until=head", None).await;
    assert!(!customers.is_empty());
    assert!(customers.iter().all(|e| e.json()["stream_id"] == stream.as_str()), "{customers:?}");
    let registered = customers[0].json();
    assert_eq!(registered["event_type"], "CustomerRegistered");
    assert_eq!(registered["data"]["email"], "sse@example.com", "admins see personal fields opened");

    let (of_type, _) = read_to_head(&app, "?event_type=ProductAdded,CustomerRegistered&until=head", None).await;
    let mut types: Vec<String> = of_type.iter().map(|e| e.json()["event_type"].as_str().unwrap().to_owned()).collect();
    types.sort();
    assert_eq!(types, ["CustomerRegistered", "ProductAdded"]);
    let (of_stream, _) = read_to_head(&app, &format!("?stream_id={stream}&category=customer&until=head"), None).await;
    assert_eq!(of_stream, customers);
    let (nothing, _) = read_to_head(&app, &format!("?stream_id={stream}&category=product&until=head"), None).await;
    assert!(nothing.is_empty(), "filters combine");

    let id = customer["id"].as_str().unwrap();
    let forgotten =
        app.http.post(format!("{}/v1/customers/{id}/forget", app.command)).bearer_auth(&app.admin).json(&json!({})).send().await;
    assert_eq!(forgotten.unwrap().status(), 200);
    let (after, _) = read_to_head(&app, &format!("?stream_id={stream}&until=head"), None).await;
    assert_eq!(after[0].json()["data"]["email"], "[redacted]");
    assert_eq!(after.last().unwrap().json()["event_type"], "CustomerForgotten");

    // Admins only; a bad filter or id is refused before anything is sent.
    let anonymous = app.http.get(format!("{}/v1/events", app.query)).send().await.unwrap();
    problem(anonymous, 401, "unauthorized").await;
    let customer_token = app.customer_token(uuid::Uuid::parse_str(id).unwrap());
    let as_customer = app.http.get(format!("{}/v1/events", app.query)).bearer_auth(customer_token).send().await.unwrap();
    problem(as_customer, 403, "forbidden").await;
    for bad in ["?category=orders", "?event_type=ProductMade", "?stream_id=product-1", "?from=-1", "?until=tail", "?limit=3"] {
        let response = app.http.get(format!("{}/v1/events{bad}", app.query)).bearer_auth(&app.admin).send().await.unwrap();
        problem(response, 400, "validation_failed").await;
    }
    let response =
        app.http.get(format!("{}/v1/events", app.query)).bearer_auth(&app.admin).header("last-event-id", "x").send().await.unwrap();
    problem(response, 400, "validation_failed").await;
}

/// A client that asks and never reads: its answer stops where its
/// connection's buffers are full, the server cuts it off once it has taken
/// nothing for `edge::serve::WRITE_STALL_TIMEOUT`, and meanwhile writes
/// and other subscribers go on as before.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_and_holds_no_one_up() {
    let app = spawn_app().await;
    let (log, _) = eventlog::vault::postgres_log(&app.pool);
    // About 6 MB of history, more than loopback's buffers hold.
    let filler = "x".repeat(2000);
    for round in 0..30 {
        let writes = (0..100)
            .map(|i| eventlog::StreamWrite {
                stream_id: format!("product-{}", uuid::Uuid::now_v7()),
                expected: eventlog::ExpectedVersion::NoStream,
                events: vec![{
                    let n = round * 100 + i;
                    test_support::stored_event(
                        "ProductAdded",
                        json!({"product_id": uuid::Uuid::now_v7(), "sku": format!("FILL-{n}"), "name": "Filler", "description": filler,
                               "category": "filler", "price_cents": 100, "initial_stock": 1}),
                    )
                }],
            })
            .collect();
        log.append(writes).await.unwrap();
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = app.query.trim_start_matches("http://").parse().unwrap();
    let mut stalled = socket.connect(address).await.unwrap();
    let request = format!("GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n", app.admin);
    stalled.write_all(request.as_bytes()).await.unwrap();
    let asked = tokio::time::Instant::now();

    // While it holds still, a write and a live subscriber take no longer
    // than they would.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tail = subscribe(&app, "?from=head&category=product", None).await;
    let started = tokio::time::Instant::now();
    let (product, _) = app.add_product("SSE-LIVE", "tools", 100, 1).await;
    let seen = tail.next_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(seen.json()["stream_id"], format!("product-{product}"));
    assert!(started.elapsed() < Duration::from_secs(2));

    // Cut off: reading what was sent ends at the connection's close, well
    // short of the history.
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::time::sleep(edge::serve::WRITE_STALL_TIMEOUT + Duration::from_secs(2)).await;
        stalled.read_to_end(&mut received).await
    })
    .await;
    assert!(read.is_ok(), "the server never closed the stalled subscription");
    assert!(asked.elapsed() >= edge::serve::WRITE_STALL_TIMEOUT);
    assert!(received.len() < 6_000_000, "{} bytes sent: it was not held back", received.len());
}
