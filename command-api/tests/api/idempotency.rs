use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn the_same_key_and_body_answer_the_first_response_and_append_nothing() {
    let app = spawn_app().await;
    let id = app.add_product("KET-1", 100, 0).await;
    let send = |key: &str, quantity: u32| {
        app.post(&format!("/v1/products/{id}/restock"), &app.admin)
            .header("idempotency-key", key)
            .json(&json!({"quantity": quantity}))
            .send()
    };
    let first = send("restock-1", 3).await.unwrap();
    assert_eq!(first.status(), 200);
    let first_etag = first.headers()["etag"].clone();
    let first_body: Value = first.json().await.unwrap();
    let events = app.event_count().await;

    let replay = send("restock-1", 3).await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["etag"], first_etag);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first_body);
    assert_eq!(app.event_count().await, events);

    problem(send("restock-1", 4).await.unwrap(), 422, "idempotency_key_reused").await;
    assert_eq!(app.event_count().await, events);
    assert_eq!(app.product(id).await.stock, 3);

    // Keys belong to their caller: another caller's same key is its own.
    let other = app.jwt.mint("bob", edge::Role::Admin, chrono::Duration::hours(1));
    let response = app
        .post(&format!("/v1/products/{id}/restock"), &other)
        .header("idempotency-key", "restock-1")
        .json(&json!({"quantity": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.product(id).await.stock, 6);
    let stored: Option<String> =
        sqlx::query_scalar("SELECT metadata->>'idempotency_key' FROM events ORDER BY global_position DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some("restock-1"));
}

#[tokio::test]
async fn a_failed_request_does_not_burn_its_key() {
    let app = spawn_app().await;
    let id = app.add_product("KET-1", 100, 0).await;
    let send = |quantity: u32| {
        app.post(&format!("/v1/products/{id}/restock"), &app.admin)
            .header("idempotency-key", "k")
            .json(&json!({"quantity": quantity}))
            .send()
    };
    app.post_json(format!("/v1/products/{id}/discontinue"), &app.admin, json!({})).await;
    problem(send(1).await.unwrap(), 409, "invalid_state").await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys").fetch_one(&app.pool).await.unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_key_expires_after_24_hours() {
    let app = spawn_app().await;
    let id = app.add_product("KET-1", 100, 0).await;
    let send = |quantity: u32| {
        app.post(&format!("/v1/products/{id}/restock"), &app.admin)
            .header("idempotency-key", "daily")
            .json(&json!({"quantity": quantity}))
            .send()
    };
    assert_eq!(send(1).await.unwrap().status(), 200);
    problem(send(2).await.unwrap(), 422, "idempotency_key_reused").await;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'").execute(&app.pool).await.unwrap();
    sqlx::query("UPDATE append_receipts SET recorded_at = now() - interval '25 hours'").execute(&app.pool).await.unwrap();
    let fresh = send(2).await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert!(fresh.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.product(id).await.stock, 3);
    assert_eq!(commands::IdempotencyStore::new(app.pool.clone()).purge_expired().await.unwrap(), 0, "the renewed key is not expired");
}
