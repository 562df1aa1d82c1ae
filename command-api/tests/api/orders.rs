//! Orders end to end, with the process manager reserving stock.

use domain::order::OrderStatus;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn an_order_is_confirmed_paid_shipped_and_delivered() {
    let app = spawn_app_with_process_manager().await;
    let (kettle, mug) = (app.add_product("KET-1", 1999, 5).await, app.add_product("MUG-1", 500, 10).await);
    let customer = app.register_customer("ada@example.com").await;

    let correlation = Uuid::now_v7();
    let response = app
        .post("/v1/orders", &app.admin)
        .header("x-correlation-id", correlation.to_string())
        .json(&json!({"customer_id": customer, "lines": [{"product_id": kettle, "quantity": 2}, {"product_id": mug, "quantity": 1}], "shipping_address": address()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let order_id = id_of(response).await;
    let order = app.wait_for_order(order_id, OrderStatus::Confirmed).await;
    assert_eq!(order.total.amount_minor, 2 * 1999 + 500);
    assert_eq!(app.product(kettle).await.stock, 3);
    assert_eq!(app.product(mug).await.stock, 9);

    // The process manager's commands carry the order's correlation id and
    // the event that caused them.
    let placed = app.stream(&format!("order-{order_id}")).await.remove(0);
    let reservation = app.stream(&format!("product-{kettle}")).await.into_iter().find(|e| e.event_type == "StockReserved").unwrap();
    assert_eq!(reservation.metadata.correlation_id, correlation);
    assert_eq!(reservation.metadata.causation_id, Some(placed.event_id));
    assert_eq!(reservation.metadata.actor, "system:order-process");

    let payment = |amount: i64, event: &str| json!({"provider_event_id": event, "order_id": order_id, "amount": {"amount_minor": amount, "currency": "USD"}, "status": "captured"});
    problem(app.webhook(&payment(4498, "evt_1"), "wrong-secret").await, 401, "unauthorized").await;
    problem(app.webhook(&payment(100, "evt_1"), WEBHOOK_SECRET).await, 422, "payment_mismatch").await;
    assert_eq!(app.webhook(&payment(4498, "evt_1"), WEBHOOK_SECRET).await.status(), 200);
    let events = app.event_count().await;
    assert_eq!(app.webhook(&payment(4498, "evt_1"), WEBHOOK_SECRET).await.status(), 200, "the provider retried");
    assert_eq!(app.event_count().await, events, "a repeated provider event changes nothing");
    problem(app.webhook(&payment(4498, "evt_2"), WEBHOOK_SECRET).await, 409, "invalid_state").await;

    let ship =
        app.post_json(format!("/v1/orders/{order_id}/ship"), &app.admin, json!({"carrier": "UPS", "tracking_number": "1Z999"})).await;
    assert_eq!(ship.status(), 200);
    problem(app.post_json(format!("/v1/orders/{order_id}/cancel"), &app.admin, json!({"reason": "too late"})).await, 409, "invalid_state")
        .await;
    assert_eq!(app.post_json(format!("/v1/orders/{order_id}/deliver"), &app.admin, json!({})).await.status(), 200);
    assert_eq!(app.order(order_id).await.status, OrderStatus::Delivered);
}

#[tokio::test]
async fn a_line_short_of_stock_rejects_the_order_and_releases_the_others() {
    let app = spawn_app_with_process_manager().await;
    let (plenty, scarce) = (app.add_product("A-1", 100, 10).await, app.add_product("B-1", 100, 1).await);
    let customer = app.register_customer("ada@example.com").await;
    let order = app.place_order(customer, &[(plenty, 3), (scarce, 2)]).await;
    app.wait_for_order(order, OrderStatus::Rejected).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.product(plenty).await.stock != 10 {
        assert!(tokio::time::Instant::now() < deadline, "the reservation was not released");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(app.product(scarce).await.stock, 1);
    assert_eq!(app.product(plenty).await.reserved(), 0);
}

#[tokio::test]
async fn cancelling_releases_the_stock_and_inactive_customers_cannot_order() {
    let app = spawn_app_with_process_manager().await;
    let product = app.add_product("A-1", 100, 4).await;
    let customer = app.register_customer("ada@example.com").await;
    let order = app.place_order(customer, &[(product, 4)]).await;
    app.wait_for_order(order, OrderStatus::Confirmed).await;
    assert_eq!(app.product(product).await.stock, 0);
    assert_eq!(app.post_json(format!("/v1/orders/{order}/cancel"), &app.admin, json!({"reason": "changed my mind"})).await.status(), 200);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.product(product).await.stock != 4 {
        assert!(tokio::time::Instant::now() < deadline, "cancelling did not release the stock");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    app.post_json(format!("/v1/customers/{customer}/deactivate"), &app.admin, json!({"reason": "left"})).await;
    let body = json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}], "shipping_address": address()});
    problem(app.post_json("/v1/orders", &app.admin, body).await, 409, "customer_inactive").await;
    let unknown = json!({"customer_id": customer, "lines": [{"product_id": Uuid::now_v7(), "quantity": 1}], "shipping_address": address()});
    // A product or customer that does not exist is not there to be ordered, whatever the request's shape.
    problem(app.post_json("/v1/orders", &app.admin, unknown).await, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_process_manager_survives_restarts_without_losing_or_doubling_a_reservation() {
    let mut app = spawn_app().await;
    let products = [app.add_product("A-1", 100, 1000).await, app.add_product("B-1", 100, 1000).await];
    let customer = app.register_customer("ada@example.com").await;
    let mut orders = Vec::new();
    for i in 0..30u32 {
        orders.push(app.place_order(customer, &[(products[0], 1 + i % 3), (products[1], 2)]).await);
    }
    // Start, stop after some progress, start again: twice.
    for _ in 0..2 {
        app.start_process_manager();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        app.stop_process_manager().await;
    }
    app.start_process_manager();
    for order in &orders {
        app.wait_for_order(*order, OrderStatus::Confirmed).await;
    }
    app.stop_process_manager().await;
    let expected_a: u32 = 1000 - (0..30u32).map(|i| 1 + i % 3).sum::<u32>();
    assert_eq!(app.product(products[0]).await.stock, expected_a);
    assert_eq!(app.product(products[1]).await.stock, 1000 - 60);

    // Losing the checkpoint replays the whole log: still nothing doubles.
    let events = app.event_count().await;
    sqlx::query("DELETE FROM checkpoints").execute(&app.pool).await.unwrap();
    app.start_process_manager();
    let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events").fetch_one(&app.pool).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let position = commands::ProcessManager::checkpoint(&app.pool).await.unwrap();
        if position as i64 >= last {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replay did not finish");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.stop_process_manager().await;
    assert_eq!(app.event_count().await, events, "replaying appended nothing");
    assert_eq!(app.product(products[0]).await.stock, expected_a);
}

#[tokio::test]
async fn the_audit_trail_of_an_order_follows_one_correlation_id() {
    let app = spawn_app_with_process_manager().await;
    let product = app.add_product("A-1", 100, 5).await;
    let customer = app.register_customer("ada@example.com").await;
    let order = app.place_order(customer, &[(product, 1)]).await;
    app.wait_for_order(order, OrderStatus::Confirmed).await;
    let placed = app.stream(&format!("order-{order}")).await.remove(0);
    let story: Vec<(String, Value)> = sqlx::query_as::<_, (String, Value)>(
        "SELECT event_type, metadata FROM events WHERE metadata->>'correlation_id' = $1 ORDER BY global_position",
    )
    .bind(placed.metadata.correlation_id.to_string())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let types: Vec<&str> = story.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "StockReserved", "OrderLineReserved", "OrderConfirmed"]);
}
