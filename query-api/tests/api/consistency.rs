//! Read-your-writes through consistency tokens.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_with_the_token_of_a_write_sees_that_write() {
    let app = spawn_app().await;
    let (id, token) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    let product = app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await;
    assert_eq!(product["stock"], 10);
    for i in 1..=20u32 {
        let (_, token) = app.write(&format!("/v1/products/{id}/restock"), json!({"quantity": 1})).await;
        let product = app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await;
        assert_eq!(product["stock"], 10 + i, "the read saw the write it waited for");
        assert_eq!(product["version"], i);
    }
    // Tokens of several writes: the read waits for the latest of them.
    let (customer, t1) = app.write("/v1/customers", json!({"email": "ada@example.com", "name": "Ada"})).await;
    let (_, t2) = app.write(&format!("/v1/products/{id}/price"), json!({"price": {"amount_minor": 2499, "currency": "USD"}})).await;
    let response = app
        .http
        .get(format!("{}/v1/customers/{}", app.query, customer["id"].as_str().unwrap()))
        .bearer_auth(&app.admin)
        .header("x-consistency-token", &t1)
        .header("x-consistency-token", &t2)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["email"], "ada@example.com");
}

#[tokio::test]
async fn with_the_projections_stopped_a_read_answers_503_not_yet_consistent() {
    let mut app = spawn_app().await;
    let (id, token) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await;
    app.stop_workers().await;
    let (_, token) = app.write(&format!("/v1/products/{id}/restock"), json!({"quantity": 1})).await;
    let started = std::time::Instant::now();
    let response = app
        .http
        .get(format!("{}/v1/products/{id}", app.query))
        .header("x-consistency-token", &token)
        .header("x-consistency-timeout", "300")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_yet_consistent");
    // Without a token the (stale) read model answers at once.
    assert_eq!(app.get_json(&format!("/v1/products/{id}"), None, None).await["stock"], 10);
    let bad = app.get(&format!("/v1/products/{id}"), None, Some("yesterday")).await;
    assert_eq!(bad.status(), 400);
}

/// A token that no write has produced (beyond the head of the log) is
/// refused at once, not waited for until the timeout; one just written
/// is waited for as before.
#[tokio::test]
async fn a_token_beyond_the_head_of_the_log_is_400_at_once() {
    let mut app = spawn_app().await;
    let (id, token) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await;
    app.stop_workers().await;
    let head: u64 = token.parse().unwrap();
    for path in [format!("/v1/products/{id}"), "/v1/products".to_owned(), "/v1/search/products?q=ket".to_owned()] {
        let started = std::time::Instant::now();
        let response = app
            .http
            .get(format!("{}{path}", app.query))
            .header("x-consistency-token", format!("{head}, {}", head + 1000))
            .header("x-consistency-timeout", "5000")
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{path} waited");
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_consistency_token", "{path}");
    }
    // A token a write did produce, not yet applied: waited for, then 503.
    let (_, written) = app.write(&format!("/v1/products/{id}/restock"), json!({"quantity": 1})).await;
    let response = app
        .http
        .get(format!("{}/v1/products/{id}", app.query))
        .header("x-consistency-token", &written)
        .header("x-consistency-timeout", "200")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}

/// A write whose event the products projection parked never shows there:
/// a read with its token answers 503 projection_degraded at once instead
/// of stale data, other products still read, and after a retry it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_that_depends_on_a_parked_event_answers_503_projection_degraded() {
    let app = spawn_app().await;
    let (poisoned, _) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    let (other, _) = app.add_product("KET-2", "kitchen", 1999, 10).await;
    sqlx::query("ALTER TABLE rm_products ADD CONSTRAINT poison_price CHECK (price_minor <> 666)").execute(&app.pool).await.unwrap();
    let (_, parked) =
        app.write(&format!("/v1/products/{poisoned}/price"), json!({"price": {"amount_minor": 666, "currency": "USD"}})).await;
    let (_, held) = app.write(&format!("/v1/products/{poisoned}/restock"), json!({"quantity": 1})).await;
    let (_, fine) = app.write(&format!("/v1/products/{other}/restock"), json!({"quantity": 1})).await;

    for token in [&parked, &held] {
        let started = std::time::Instant::now();
        let response = app.get(&format!("/v1/products/{poisoned}"), None, Some(token)).await;
        test_support::problem(response, 503, "projection_degraded").await;
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "answered once the projection passed it, not at the timeout");
    }
    assert_eq!(app.get_json(&format!("/v1/products/{other}"), None, Some(&fine)).await["stock"], 11);

    sqlx::query("ALTER TABLE rm_products DROP CONSTRAINT poison_price").execute(&app.pool).await.unwrap();
    let log = eventlog::PgEventLog::new(app.pool.clone());
    let retried = projections::retry_parked(&app.pool, &log, &projections::ProductsProjection).await.unwrap();
    assert_eq!(retried, projections::Retried { applied: 2, still_parked: 0, discarded: 0 });
    let product = app.get_json(&format!("/v1/products/{poisoned}"), None, Some(&held)).await;
    assert_eq!((product["stock"].as_u64(), product["price"]["amount_minor"].as_u64()), (Some(11), Some(666)));
}

/// Waiting on tokens is bounded: past `MAX_WAITERS` requests waiting at
/// once, a read that would wait is answered 503 `overloaded` at once,
/// while reads that need not wait are answered as before; once the
/// waiters are gone, a read waits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_cap_on_waiting_reads_one_more_is_503_overloaded_at_once() {
    let mut app = spawn_app().await;
    let (id, token) = app.add_product("KET-1", "kitchen", 1999, 10).await;
    app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await;
    app.stop_workers().await;
    let (_, written) = app.write(&format!("/v1/products/{id}/restock"), json!({"quantity": 1})).await;
    let waiting = |timeout: &'static str| {
        app.http
            .get(format!("{}/v1/products/{id}", app.query))
            .header("x-consistency-token", &written)
            .header("x-consistency-timeout", timeout)
            .send()
    };
    let waiters: Vec<_> = (0..query_api::consistency::MAX_WAITERS).map(|_| tokio::spawn(waiting("5000"))).collect();
    let all_waiting = format!("storekeeper_consistency_waiting {}", query_api::consistency::MAX_WAITERS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while !app.http.get(format!("{}/metrics", app.query)).send().await.unwrap().text().await.unwrap().lines().any(|l| l == all_waiting) {
        assert!(std::time::Instant::now() < deadline, "the waiters never all waited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let started = std::time::Instant::now();
    let refused = waiting("3000").await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "refused at once");
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "overloaded");
    // A read that need not wait is answered.
    assert_eq!(app.get_json(&format!("/v1/products/{id}"), None, Some(&token)).await["stock"], 10);

    for waiter in waiters {
        let answer = waiter.await.unwrap().unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(answer.json::<serde_json::Value>().await.unwrap()["code"], "not_yet_consistent");
    }
    let again = waiting("200").await.unwrap();
    assert_eq!(again.json::<serde_json::Value>().await.unwrap()["code"], "not_yet_consistent", "waited again");
}
