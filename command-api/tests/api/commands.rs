use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn a_create_answers_201_with_version_position_and_token() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let response = app
        .post_json(
            "/v1/products",
            &app.admin,
            json!({"id": id, "sku": "KET-1", "name": "Kettle", "description": "Boils water", "category": "kitchen",
                   "price": {"amount_minor": 1999, "currency": "USD"}, "initial_stock": 10}),
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"0\"");
    let token = response.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["stream_id"], format!("product-{id}"));
    assert_eq!(body["version"], 0);
    assert_eq!(body["consistency_token"], token);
    let events = app.stream(&format!("product-{id}")).await;
    assert_eq!(events.len(), 1);
    assert_eq!(body["position"], events[0].global_position);
    assert_eq!(events[0].event_type, "ProductAdded");
    assert_eq!(events[0].schema_version, 2);
    assert_eq!(events[0].metadata.actor, "alice");
    assert_eq!(events[0].metadata.role.as_deref(), Some("admin"));
    assert_eq!(events[0].data["price"], json!({"amount_minor": 1999, "currency": "USD"}));
}

#[tokio::test]
async fn every_product_command_appends_its_event() {
    let app = spawn_app().await;
    let id = app.add_product("KET-1", 1999, 10).await;
    let post = |path: &str, body: Value| app.post_json(format!("/v1/products/{id}/{path}"), &app.admin, body);
    assert_eq!(post("details", json!({"description": "Boils water fast"})).await.status(), 200);
    assert_eq!(post("price", json!({"price": {"amount_minor": 2499, "currency": "USD"}})).await.status(), 200);
    let restocked = post("restock", json!({"quantity": 5})).await;
    assert_eq!(restocked.headers()["etag"], "\"3\"");
    assert_eq!(post("discontinue", json!({})).await.status(), 200);
    let types: Vec<String> = app.stream(&format!("product-{id}")).await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, ["ProductAdded", "ProductDetailsUpdated", "ProductPriceChanged", "ProductRestocked", "ProductDiscontinued"]);
    let product = app.product(id).await;
    assert_eq!((product.stock, product.price.amount_minor, product.discontinued), (15, 2499, true));
    // A no-op answers 200 with the current version and appends nothing.
    let again = post("discontinue", json!({})).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["etag"], "\"4\"");
    problem(post("restock", json!({"quantity": 1})).await, 409, "invalid_state").await;
}

#[tokio::test]
async fn a_stale_if_match_is_409_with_the_current_version() {
    let app = spawn_app().await;
    let id = app.add_product("KET-1", 1999, 10).await;
    let restock = |version: &str| {
        app.post(&format!("/v1/products/{id}/restock"), &app.admin).header("if-match", version).json(&json!({"quantity": 1})).send()
    };
    let fresh = restock("\"0\"").await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.headers()["etag"], "\"1\"");
    let before = app.event_count().await;
    let body = problem(restock("\"0\"").await.unwrap(), 409, "version_conflict").await;
    assert_eq!(body["current_version"], 1);
    assert_eq!(app.event_count().await, before);
    problem(restock("three").await.unwrap(), 400, "validation_failed").await;
}

#[tokio::test]
async fn customers_register_change_email_address_and_deactivate() {
    let app = spawn_app().await;
    let id = app.register_customer("ada@example.com").await;
    let post = |path: &str, body: Value| app.post_json(format!("/v1/customers/{id}/{path}"), &app.admin, body);
    assert_eq!(post("email", json!({"email": "ada@new.example.com"})).await.status(), 200);
    assert_eq!(post("address", json!({"shipping_address": address()})).await.status(), 200);
    assert_eq!(post("deactivate", json!({"reason": "asked to leave"})).await.status(), 200);
    problem(post("email", json!({"email": "ada@third.example.com"})).await, 409, "invalid_state").await;
    let types: Vec<String> = app.stream(&format!("customer-{id}")).await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, ["CustomerRegistered", "CustomerEmailChanged", "CustomerShippingAddressUpdated", "CustomerDeactivated"]);
}

#[tokio::test]
async fn emails_and_skus_are_unique_ignoring_case_and_a_changed_email_is_freed() {
    let app = spawn_app().await;
    let first = app.register_customer("Ada@Example.com").await;
    let taken = app.post_json("/v1/customers", &app.admin, json!({"email": "ada@example.COM", "name": "Copy"})).await;
    problem(taken, 409, "email_taken").await;
    let changed = app.post_json(format!("/v1/customers/{first}/email"), &app.admin, json!({"email": "ada@elsewhere.com"})).await;
    assert_eq!(changed.status(), 200);
    app.register_customer("ada@example.com").await;
    let second = app.post_json(format!("/v1/customers/{first}/email"), &app.admin, json!({"email": "ADA@example.com"})).await;
    problem(second, 409, "email_taken").await;

    // Changing only the letter case keeps the claim: nobody else can take
    // the address afterwards.
    let cased = app.register_customer("Bea@Example.com").await;
    let recased = app.post_json(format!("/v1/customers/{cased}/email"), &app.admin, json!({"email": "bea@example.com"})).await;
    assert_eq!(recased.status(), 200);
    problem(app.post_json("/v1/customers", &app.admin, json!({"email": "BEA@example.com", "name": "Copy"})).await, 409, "email_taken")
        .await;
    let again = app.post_json(format!("/v1/customers/{cased}/email"), &app.admin, json!({"email": "BEA@EXAMPLE.COM"})).await;
    assert_eq!(again.status(), 200);
    problem(app.post_json("/v1/customers", &app.admin, json!({"email": "bea@example.com", "name": "Copy"})).await, 409, "email_taken")
        .await;

    app.add_product("KET-1", 100, 1).await;
    let dup = app
        .post_json(
            "/v1/products",
            &app.admin,
            json!({"sku": "ket-1", "name": "K", "description": "", "category": "c", "price": {"amount_minor": 1, "currency": "USD"}, "initial_stock": 0}),
        )
        .await;
    problem(dup, 409, "sku_taken").await;
}

#[tokio::test]
async fn health_readiness_metrics_and_openapi_answer() {
    let app = spawn_app().await;
    let get = |path: &str| app.http.get(format!("{}{path}", app.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    app.add_product("KET-1", 100, 1).await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("storekeeper_http_requests_total"), "{metrics}");
    let doc: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/orders"]["post"].is_object());
    problem(get("/v1/nowhere").await.unwrap(), 404, "not_found").await;
}
