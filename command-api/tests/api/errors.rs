//! Every bad request gets a clear problem+json answer and leaves the log
//! untouched.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field_and_append_nothing() {
    let app = spawn_app().await;
    let product = app.add_product("KET-1", 100, 1).await;
    let before = app.event_count().await;
    let raw = |path: String, body: &'static str| app.post(&path, &app.admin).header("content-type", "application/json").body(body).send();

    let body = problem(raw("/v1/products".into(), "{\"sku\": ").await.unwrap(), 400, "validation_failed").await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("malformed JSON"), "{body}");

    let unknown = raw(format!("/v1/products/{product}/restock"), r#"{"quantity": 1, "qty": 2}"#).await.unwrap();
    let body = problem(unknown, 400, "validation_failed").await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("unknown field `qty`"), "{body}");

    let wrong_type = raw(format!("/v1/products/{product}/restock"), r#"{"quantity": "five"}"#).await.unwrap();
    let body = problem(wrong_type, 400, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "quantity");

    let negative = raw(format!("/v1/products/{product}/restock"), r#"{"quantity": -1}"#).await.unwrap();
    problem(negative, 400, "validation_failed").await;

    let bad_path = raw("/v1/products/not-a-uuid/restock".into(), r#"{"quantity": 1}"#).await.unwrap();
    let body = problem(bad_path, 400, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "id");

    let bad_uuid = raw("/v1/orders".into(), r#"{"customer_id": "nope", "lines": [], "shipping_address": {}}"#).await.unwrap();
    let body = problem(bad_uuid, 400, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "customer_id");

    let not_json = app.post(&format!("/v1/products/{product}/restock"), &app.admin).header("content-type", "text/plain").body("1").send();
    problem(not_json.await.unwrap(), 415, "unsupported_media_type").await;

    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn values_that_break_rules_are_422_with_every_field_listed() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/v1/products",
            &app.admin,
            json!({"sku": "", "name": " ", "description": "", "category": "c", "price": {"amount_minor": -5, "currency": "usd"}, "initial_stock": 1}),
        )
        .await;
    let body = problem(response, 422, "validation_failed").await;
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["sku", "price.currency", "name"]);
    let response = app.post_json("/v1/customers", &app.admin, json!({"email": "not-an-email", "name": "X"})).await;
    let body = problem(response, 422, "validation_failed").await;
    assert_eq!(body["errors"][0]["field"], "email");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = spawn_app().await;
    let description = "x".repeat(70 * 1024);
    let response = app
        .post_json(
            "/v1/products",
            &app.admin,
            json!({"sku": "BIG", "name": "Big", "description": description, "category": "c", "price": {"amount_minor": 1, "currency": "USD"}, "initial_stock": 1}),
        )
        .await;
    problem(response, 413, "payload_too_large").await;
    // Also on the idempotent path, which reads the body first.
    let response = app
        .post("/v1/products", &app.admin)
        .header("idempotency-key", "big-1")
        .json(&json!({"sku": "BIG", "name": "Big", "description": "x".repeat(70 * 1024), "category": "c", "price": {"amount_minor": 1, "currency": "USD"}, "initial_stock": 1}))
        .send()
        .await
        .unwrap();
    problem(response, 413, "payload_too_large").await;
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn unknown_entities_are_404_and_internal_errors_stay_inside() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::now_v7();
    let response = app.post_json(format!("/v1/products/{missing}/restock"), &app.admin, json!({"quantity": 1})).await;
    problem(response, 404, "not_found").await;
    let response = app.post_json(format!("/v1/customers/{missing}/deactivate"), &app.admin, json!({"reason": "x"})).await;
    problem(response, 404, "not_found").await;

    // Break the database under the API: the client learns nothing of it.
    sqlx::query("ALTER TABLE events RENAME TO events_gone").execute(&app.pool).await.unwrap();
    let response = app.post_json(format!("/v1/products/{missing}/restock"), &app.admin, json!({"quantity": 1})).await;
    let body = problem(response, 500, "internal").await;
    let text = body.to_string().to_lowercase();
    assert!(!text.contains("events_gone") && !text.contains("relation") && !text.contains("sql"), "{text}");
}
