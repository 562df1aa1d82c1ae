use serde_json::json;
use uuid::Uuid;

use crate::support::*;

fn product_body() -> serde_json::Value {
    json!({"sku": "A-1", "name": "A", "description": "", "category": "c", "price": {"amount_minor": 100, "currency": "USD"}, "initial_stock": 1})
}

#[tokio::test]
async fn a_missing_or_bad_token_is_401_and_appends_nothing() {
    let app = spawn_app().await;
    let response = app.http.post(format!("{}/v1/products", app.base)).json(&product_body()).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    problem(response, 401, "unauthorized").await;
    problem(app.post_json("/v1/products", "not-a-jwt", product_body()).await, 401, "unauthorized").await;
    let foreign = edge::JwtKeys::new(b"some-other-secret-0123456789abcd").mint("alice", edge::Role::Admin, chrono::Duration::hours(1));
    problem(app.post_json("/v1/products", &foreign, product_body()).await, 401, "unauthorized").await;
    let expired = app.jwt.mint("alice", edge::Role::Admin, chrono::Duration::hours(-1));
    problem(app.post_json("/v1/products", &expired, product_body()).await, 401, "unauthorized").await;
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn customers_may_not_manage_products_or_fulfil_orders() {
    let app = spawn_app().await;
    let token = app.customer_token(Uuid::now_v7());
    problem(app.post_json("/v1/products", &token, product_body()).await, 403, "forbidden").await;
    let product = app.add_product("A-1", 100, 1).await;
    problem(app.post_json(format!("/v1/products/{product}/restock"), &token, json!({"quantity": 1})).await, 403, "forbidden").await;
    let order = Uuid::now_v7();
    problem(
        app.post_json(format!("/v1/orders/{order}/ship"), &token, json!({"carrier": "x", "tracking_number": "y"})).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(app.event_count().await, 2, "only the admin's product and its SKU claim");
}

#[tokio::test]
async fn a_customer_acts_only_on_itself() {
    let app = spawn_app().await;
    let (me, other) = (Uuid::now_v7(), Uuid::now_v7());
    let token = app.customer_token(me);
    // Registering itself: the id defaults to the token's subject.
    let response = app.post_json("/v1/customers", &token, json!({"email": "me@example.com", "name": "Me"})).await;
    assert_eq!(response.status(), 201);
    assert_eq!(id_of(response).await, me);
    let response = app.post_json("/v1/customers", &token, json!({"id": other, "email": "o@example.com", "name": "O"})).await;
    problem(response, 403, "forbidden").await;
    let theirs = app.register_customer("them@example.com").await;
    problem(app.post_json(format!("/v1/customers/{theirs}/deactivate"), &token, json!({"reason": "x"})).await, 403, "forbidden").await;
    let product = app.add_product("A-1", 100, 5).await;
    let order = json!({"customer_id": theirs, "lines": [{"product_id": product, "quantity": 1}], "shipping_address": address()});
    problem(app.post_json("/v1/orders", &token, order).await, 403, "forbidden").await;
    let mine = json!({"customer_id": me, "lines": [{"product_id": product, "quantity": 1}], "shipping_address": address()});
    assert_eq!(app.post_json("/v1/orders", &token, mine).await.status(), 202);
    let response = app.post_json(format!("/v1/customers/{me}/address"), &token, json!({"shipping_address": address()})).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_customer_cancels_only_its_own_orders() {
    let app = spawn_app().await;
    let product = app.add_product("A-1", 100, 5).await;
    let owner = app.register_customer("owner@example.com").await;
    let order = app.place_order(owner, &[(product, 1)]).await;
    let stranger = app.customer_token(Uuid::now_v7());
    problem(app.post_json(format!("/v1/orders/{order}/cancel"), &stranger, json!({"reason": "mine now"})).await, 403, "forbidden").await;
    let response =
        app.post_json(format!("/v1/orders/{order}/cancel"), &app.customer_token(owner), json!({"reason": "changed my mind"})).await;
    assert_eq!(response.status(), 200);
}
