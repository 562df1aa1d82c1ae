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

/// The least time of `n` sign-ins with each of `bodies`, taken in turn
/// (so that load from other tests falls on all alike), each answered 401.
/// Noise only adds time, so the least is the work a sign-in itself does.
async fn refused_in<const K: usize>(app: &TestApp, bodies: [serde_json::Value; K], n: usize) -> [std::time::Duration; K] {
    let mut least = [std::time::Duration::MAX; K];
    for _ in 0..n {
        for (body, least) in bodies.iter().zip(least.iter_mut()) {
            let started = std::time::Instant::now();
            let answer = app.http.post(format!("{}/v1/auth/token", app.base)).json(body).send().await.unwrap();
            *least = (*least).min(started.elapsed());
            problem(answer, 401, "invalid_credentials").await;
        }
    }
    least
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_sign_in_with_a_password_kept_outside_the_log_and_gone_when_forgotten() {
    let app = spawn_app().await;
    let secret = "Opal-Sunrise-4711";
    let registered =
        app.post_json("/v1/customers", &app.admin, json!({"email": "Signer@Example.com", "name": "Signer", "password": secret})).await;
    assert_eq!(registered.status(), 201);
    let customer = id_of(registered).await;
    let sign_in = |email: &str, password: &str| {
        app.http.post(format!("{}/v1/auth/token", app.base)).json(&json!({"email": email, "password": password})).send()
    };

    // Any letter case of the email; the token acts as the customer.
    let answer = sign_in("signer@example.COM", secret).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!((answer["token_type"].as_str(), answer["expires_in"].as_i64()), (Some("Bearer"), Some(900)));
    let token = answer["access_token"].as_str().unwrap().to_owned();
    let moved = app
        .post_json(
            format!("/v1/customers/{customer}/address"),
            &token,
            json!({"shipping_address":
        {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}}),
        )
        .await;
    assert_eq!(moved.status(), 200);

    // A wrong password, an unknown email and a malformed one: one answer, about one time.
    let [wrong, unknown, _] = refused_in(
        &app,
        [
            json!({"email": "signer@example.com", "password": "not-the-password"}),
            json!({"email": "nobody@example.com", "password": "not-the-password"}),
            json!({"email": "not an email", "password": "whatever1"}),
        ],
        7,
    )
    .await;
    let (slow, fast) = if wrong > unknown { (wrong, unknown) } else { (unknown, wrong) };
    assert!(slow < fast * 3, "wrong password {wrong:?}, unknown email {unknown:?}");

    // Changing it: the customer itself (or an admin), 8 to 128 characters.
    problem(
        app.post_json(format!("/v1/customers/{customer}/password"), &token, json!({"password": "short"})).await,
        422,
        "validation_failed",
    )
    .await;
    let stranger = app.customer_token(Uuid::now_v7());
    problem(
        app.post_json(format!("/v1/customers/{customer}/password"), &stranger, json!({"password": "Long-enough-1"})).await,
        403,
        "forbidden",
    )
    .await;
    let changed = app.post_json(format!("/v1/customers/{customer}/password"), &token, json!({"password": "Granite-Moon-2024"})).await;
    assert_eq!(changed.status(), 200);
    assert_eq!(sign_in("signer@example.com", secret).await.unwrap().status(), 401);
    assert_eq!(sign_in("signer@example.com", "Granite-Moon-2024").await.unwrap().status(), 200);
    problem(
        app.post_json(format!("/v1/customers/{}/password", Uuid::now_v7()), &app.admin, json!({"password": "Long-enough-1"})).await,
        404,
        "not_found",
    )
    .await;

    // Nowhere in the log; deleted with the customer.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE data::text LIKE '%Granite%' OR data::text LIKE '%Opal%'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(app.post_json(format!("/v1/customers/{customer}/forget"), &token, json!({})).await.status(), 200);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM customer_passwords").fetch_one(&app.pool).await.unwrap();
    assert_eq!(kept, 0, "the password goes with the customer");
    assert_eq!(sign_in("signer@example.com", "Granite-Moon-2024").await.unwrap().status(), 401);
    problem(
        app.post_json(format!("/v1/customers/{customer}/password"), &app.admin, json!({"password": "Long-enough-1"})).await,
        409,
        "invalid_state",
    )
    .await;
    // A password set that checked before the forget and stores after it
    // (its hashing spans the forget) stores nothing.
    let late = commands::PasswordStore::new(app.pool.clone()).set(customer, "Granite-Moon-2024".into()).await;
    assert!(matches!(late, Err(commands::PasswordError::Forgotten)), "{late:?}");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM customer_passwords").fetch_one(&app.pool).await.unwrap();
    assert_eq!(kept, 0);
}

/// A flood of sign-ins takes one hashing turn per core (argon2 takes
/// 19 MiB apiece): the rest wait a little, then get 503, never a 500 and
/// never unbounded memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_sign_ins_is_turned_away_with_503_rather_than_hashed_all_at_once() {
    let app = spawn_app().await;
    let body = json!({"email": "nobody@example.com", "password": "wrong-password-1"});
    let answers =
        futures::future::join_all((0..200).map(|_| app.http.post(format!("{}/v1/auth/token", app.base)).json(&body).send())).await;
    let codes: Vec<u16> = answers.iter().map(|a| a.as_ref().unwrap().status().as_u16()).collect();
    assert!(codes.iter().all(|c| *c == 401 || *c == 503), "{codes:?}");
    assert!(codes.contains(&503), "200 sign-ins at once all hashed: {codes:?}");
    assert!(codes.contains(&401));
}

#[tokio::test]
async fn operators_sign_in_for_an_admin_token_and_what_they_do_carries_their_identity() {
    let app = spawn_app().await;
    let operators = commands::Operators::new(app.pool.clone(), commands::PasswordStore::new(app.pool.clone()));
    let id = operators.add("Ops@Example.com", "Night-Shift-2026".into()).await.unwrap();
    assert!(matches!(operators.add("ops@example.COM", "Another-Password".into()).await, Err(commands::OperatorError::Exists)));
    assert!(matches!(operators.add("ops2@example.com", "short".into()).await, Err(commands::OperatorError::Invalid(_))));
    assert_eq!(operators.list().await.unwrap().iter().map(|o| o.email.as_str()).collect::<Vec<_>>(), ["Ops@Example.com"]);

    let answer = app
        .http
        .post(format!("{}/v1/auth/token", app.base))
        .json(&json!({"email": "ops@example.com", "password": "Night-Shift-2026"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let token = answer.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    // An admin's token: it adds a product, and the product's event names the operator.
    let added = app
        .post_json(
            "/v1/products",
            &token,
            json!({"sku": "OPS-1", "name": "Lamp", "description": "", "category": "c", "price": {"amount_minor": 100, "currency": "EUR"}, "initial_stock": 1}),
        )
        .await;
    assert_eq!(added.status(), 201);
    let product = id_of(added).await;
    let actor: String = sqlx::query_scalar("SELECT metadata->>'actor' FROM events WHERE stream_id = $1")
        .bind(format!("product-{product}"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(actor, format!("operator:{id}"));

    // A wrong password is refused like a customer's; a removed operator signs in no more.
    refused_in(&app, [json!({"email": "ops@example.com", "password": "not-the-password"})], 1).await;
    assert!(operators.remove("OPS@example.com").await.unwrap());
    assert!(!operators.remove("ops@example.com").await.unwrap());
    refused_in(&app, [json!({"email": "ops@example.com", "password": "Night-Shift-2026"})], 1).await;
}
