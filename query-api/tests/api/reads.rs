use std::collections::HashSet;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn products_list_with_filters_and_stable_keyset_pages() {
    let app = spawn_app().await;
    let mut token = String::new();
    for i in 0..7 {
        let category = if i % 2 == 0 { "kitchen" } else { "garden" };
        token = app.add_product(&format!("P-{i}"), category, 100 * (i + 1), 5).await.1;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/products?limit=3&cursor={c}"),
            None => "/v1/products?limit=3".to_owned(),
        };
        let page = app.get_json(&path, None, Some(&token)).await;
        seen.extend(page["items"].as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 7, "no product twice across pages");
    let kitchen = app.get_json("/v1/products?category=kitchen&min_price=200&max_price=500", None, None).await;
    let skus: Vec<&str> = kitchen["items"].as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap()).collect();
    assert_eq!(skus, ["P-2", "P-4"]);
    let product = &kitchen["items"][0];
    for field in ["id", "sku", "name", "description", "category", "price", "stock", "status", "version"] {
        assert!(product.get(field).is_some(), "{field} missing from {product}");
    }
    assert_eq!(product["price"], json!({"amount_minor": 300, "currency": "USD"}));
    assert_eq!(app.get("/v1/products?limit=0", None, None).await.status(), 400);
    assert_eq!(app.get("/v1/products?colour=red", None, None).await.status(), 400);
    assert_eq!(app.get(&format!("/v1/products/{}", Uuid::now_v7()), None, None).await.status(), 404);
}

#[tokio::test]
async fn customers_and_orders_are_private_to_their_customer() {
    let app = spawn_app().await;
    let (product, _) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    let (customer, _) = app.write("/v1/customers", json!({"email": "ada@example.com", "name": "Ada", "shipping_address": address()})).await;
    let customer = Uuid::parse_str(customer["id"].as_str().unwrap()).unwrap();
    let (order, token) = app
        .write(
            "/v1/orders",
            json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 2}], "shipping_address": address()}),
        )
        .await;
    let order = order["id"].as_str().unwrap().to_owned();
    let own = app.customer_token(customer);
    let stranger = app.customer_token(Uuid::now_v7());

    let me = app.get_json(&format!("/v1/customers/{customer}"), Some(&own), Some(&token)).await;
    assert_eq!((me["email"].as_str(), me["status"].as_str()), (Some("ada@example.com"), Some("active")));
    assert_eq!(app.get(&format!("/v1/customers/{customer}"), Some(&stranger), None).await.status(), 403);
    assert_eq!(app.get(&format!("/v1/customers/{customer}"), None, None).await.status(), 401);
    assert_eq!(app.get(&format!("/v1/customers/{customer}"), Some("garbage"), None).await.status(), 401);

    let placed = app.get_json(&format!("/v1/orders/{order}"), Some(&own), Some(&token)).await;
    assert_eq!(placed["total"], json!({"amount_minor": 3998, "currency": "USD"}));
    assert_eq!(placed["lines"][0]["unit_price"], json!({"amount_minor": 1999, "currency": "USD"}));
    assert_eq!(app.get(&format!("/v1/orders/{order}"), Some(&stranger), None).await.status(), 403);
    let mine = app.get_json(&format!("/v1/customers/{customer}/orders"), Some(&own), None).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    let listed = app.get_json("/v1/orders", Some(&stranger), None).await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "a customer lists only its own orders");

    // The order is confirmed by the process manager; wait for it in the read model.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let order = app.get_json(&format!("/v1/orders/{order}"), Some(&app.admin), None).await;
        if order["status"] == "confirmed" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "order not confirmed: {order}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let confirmed = app.get_json("/v1/orders?status=confirmed", Some(&app.admin), None).await;
    assert_eq!(confirmed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn history_audit_and_time_travel_come_from_the_log() {
    let app = spawn_app().await;
    let (id, _) = app.add_product("KET-1", "kitchen", 1000, 10).await;
    app.write(&format!("/v1/products/{id}/restock"), json!({"quantity": 5})).await;
    let after_restock = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let correlation = Uuid::now_v7();
    let response = app
        .http
        .post(format!("{}/v1/products/{id}/price", app.command))
        .bearer_auth(&app.admin)
        .header("x-correlation-id", correlation.to_string())
        .json(&json!({"price": {"amount_minor": 1500, "currency": "USD"}}))
        .send()
        .await
        .unwrap();
    let token = response.headers()["x-consistency-token"].to_str().unwrap().to_owned();

    let history = app.get_json(&format!("/v1/streams/product-{id}/events"), Some(&app.admin), None).await;
    let events = history["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ProductAdded", "ProductRestocked", "ProductPriceChanged"]);
    assert_eq!(events[2]["metadata"]["correlation_id"], correlation.to_string());
    assert_eq!(events[0]["metadata"]["actor"], "alice");
    let page = app.get_json(&format!("/v1/streams/product-{id}/events?from_version=1&limit=1"), Some(&app.admin), None).await;
    assert_eq!(page["events"][0]["stream_version"], 1);
    assert_eq!(page["next_from_version"], 2);
    assert_eq!(app.get(&format!("/v1/streams/product-{id}/events"), Some(&app.customer_token(Uuid::now_v7())), None).await.status(), 403);

    let audit = app.get_json(&format!("/v1/audit?correlation_id={correlation}"), Some(&app.admin), Some(&token)).await;
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["event_type"], "ProductPriceChanged");
    let by_actor = app.get_json("/v1/audit?actor=alice&event_type=ProductAdded", Some(&app.admin), Some(&token)).await;
    assert_eq!(by_actor["items"].as_array().unwrap().len(), 1);

    let v0 = app.get_json(&format!("/v1/products/{id}/at?version=0"), None, None).await;
    assert_eq!((v0["stock"].as_i64(), v0["price"]["amount_minor"].as_i64(), v0["version"].as_i64()), (Some(10), Some(1000), Some(0)));
    let then = app
        .get_json(&format!("/v1/products/{id}/at?time={}", after_restock.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)), None, None)
        .await;
    assert_eq!((then["stock"].as_i64(), then["price"]["amount_minor"].as_i64()), (Some(15), Some(1000)));
    let now = app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await;
    assert_eq!(now["price"]["amount_minor"], 1500);
    // With neither a version nor a time, as it is now; with both, whichever comes first.
    let latest = app.get_json(&format!("/v1/products/{id}/at"), None, None).await;
    assert_eq!(latest["price"]["amount_minor"], 1500);
    let both = app
        .get_json(
            &format!("/v1/products/{id}/at?version=0&time={}", after_restock.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            None,
            None,
        )
        .await;
    assert_eq!(both["version"], 0);
}

#[tokio::test]
async fn sales_are_reported_by_day_and_by_product_once_paid() {
    let app = spawn_app().await;
    let (product, _) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    let (customer, _) = app.write("/v1/customers", json!({"email": "ada@example.com", "name": "Ada"})).await;
    let order_id = app.confirmed_order(&customer["id"], product, 2).await;
    let token = app.pay(&order_id, "evt_1", 3998).await;
    let today = chrono::Utc::now().date_naive();
    let by_day = app.get_json(&format!("/v1/reports/sales?from={today}&to={today}&group_by=day"), Some(&app.admin), Some(&token)).await;
    assert_eq!(by_day["items"][0]["revenue"], json!({"amount_minor": 3998, "currency": "USD"}));
    assert_eq!(by_day["items"][0]["units"], 2);
    let by_product = app.get_json("/v1/reports/sales?group_by=product", Some(&app.admin), Some(&token)).await;
    assert_eq!(by_product["items"][0]["product_id"], product.to_string());
    assert_eq!(app.get("/v1/reports/sales", Some(&app.customer_token(Uuid::now_v7())), None).await.status(), 403);
    assert_eq!(app.get("/v1/reports/sales?group_by=week", Some(&app.admin), None).await.status(), 400);
}

#[tokio::test]
async fn sales_sums_beyond_i64_are_reported_exactly_and_the_projection_keeps_going() {
    let app = spawn_app().await;
    const PRICE: i64 = 7_000_000_000_000_000_000;
    let (product, _) = app.add_product("GOLD-1", "vault", PRICE, 10).await;
    let (customer, _) = app.write("/v1/customers", json!({"email": "rich@example.com", "name": "Rich"})).await;
    let mut token = String::new();
    for i in 0..3 {
        let order_id = app.confirmed_order(&customer["id"], product, 1).await;
        token = app.pay(&order_id, &format!("evt_{i}"), PRICE).await;
    }
    // 21e18: beyond i64 and u64 alike. Compared as text, since a JSON
    // reader's own number type may not hold it.
    for group_by in ["day", "product"] {
        let response = app.get(&format!("/v1/reports/sales?group_by={group_by}"), Some(&app.admin), Some(&token)).await;
        assert_eq!(response.status(), 200);
        let body = response.text().await.unwrap();
        assert!(body.contains(r#""revenue":{"amount_minor":21000000000000000000,"currency":"USD"}"#), "{group_by}: {body}");
    }
    let projections = app.get_json("/v1/projections", Some(&app.admin), None).await;
    for projection in projections["items"].as_array().unwrap() {
        assert_eq!(projection["parked"], 0, "{projection}");
    }
}

#[tokio::test]
async fn projections_report_their_positions_and_health_endpoints_answer() {
    let app = spawn_app().await;
    let (_, token) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    app.get_json("/v1/products", None, Some(&token)).await;
    // Each projection is listed once its runner has started it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let listed = app.get_json("/v1/projections", Some(&app.admin), None).await;
        let names: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        if names == ["audit", "customers", "orders", "products", "sales", "order-process", "search"] {
            break listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "projections listed: {names:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let products = listed["items"].as_array().unwrap().iter().find(|p| p["name"] == "products").unwrap();
    assert!(products["position"].as_u64().unwrap() >= token.parse::<u64>().unwrap());
    assert_eq!(products["state"], "running");
    let kinds: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["read_model", "read_model", "read_model", "read_model", "read_model", "process", "index"]);
    for field in ["version", "lag_events", "lag_seconds", "parked"] {
        assert!(products.get(field).is_some());
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(app.get(path, None, None).await.status(), 200, "{path}");
    }
    let problem: Value = app.get("/v1/nowhere", None, None).await.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");
}
