//! What an operator does to the read side over HTTP: parked events listed
//! and retried, a rebuild asked for and followed to its end, and the
//! cross-origin calls a console on another port makes.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::problem;

use crate::support::spawn_app;

#[tokio::test]
async fn parked_events_are_listed_and_retried_and_a_rebuild_is_followed_to_its_end() {
    let app = spawn_app().await;
    let (product, _) = app.add_product("OPS-1", "tools", 500, 3).await;
    // An event the products read model cannot apply, appended as another
    // writer could.
    let (log, _) = eventlog::vault::postgres_log(&app.pool);
    let poison = test_support::stored_event("ProductRestocked", json!({"quantity": "a great many"}));
    let stream = format!("product-{product}");
    let appended = log
        .append(vec![eventlog::StreamWrite {
            stream_id: stream.clone(),
            expected: eventlog::ExpectedVersion::Exact(0),
            events: vec![poison],
        }])
        .await
        .unwrap();
    let position = appended.position;
    let parked = loop {
        let page = app.get_json("/v1/projections/products/parked", Some(&app.admin), None).await;
        if let Some(first) = page["items"].as_array().and_then(|items| items.first()) {
            break first.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(parked["global_position"], position);
    assert_eq!(parked["stream_id"], stream.as_str());
    assert_eq!(parked["event_type"], "ProductRestocked");
    assert!(parked["error"].as_str().unwrap().contains("a great many"), "{parked}");

    let post = |path: &str| app.http.post(format!("{}{path}", app.query)).bearer_auth(&app.admin).send();
    let retried: Value = post("/v1/projections/products/retry").await.unwrap().json().await.unwrap();
    assert_eq!(retried, json!({"applied": 0, "still_parked": 1, "discarded": 0}), "poison stays poison");
    problem(post("/v1/projections/order-process/retry").await.unwrap(), 409, "retried_by_the_command_side").await;
    problem(post("/v1/projections/nothing/retry").await.unwrap(), 404, "not_found").await;
    problem(post("/v1/projections/search/rebuild").await.unwrap(), 404, "not_found").await;

    let asked = post("/v1/projections/customers/rebuild").await.unwrap();
    assert_eq!(asked.status(), 202);
    let asked: Value = asked.json().await.unwrap();
    assert_eq!(asked["requested"], true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let progress = app.get_json("/v1/projections/customers/rebuild", Some(&app.admin), None).await;
        if progress["requested"] == false {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuild did not finish: {progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // For admins only.
    let customer = app.customer_token(uuid::Uuid::now_v7());
    for (method, path) in [
        ("GET", "/v1/projections/products/parked"),
        ("POST", "/v1/projections/products/retry"),
        ("POST", "/v1/projections/products/rebuild"),
    ] {
        let request = app.http.request(method.parse().unwrap(), format!("{}{path}", app.query)).bearer_auth(&customer);
        problem(request.send().await.unwrap(), 403, "forbidden").await;
    }
}

#[tokio::test]
async fn a_browser_on_another_origin_may_call_with_a_token_and_read_what_it_needs() {
    let app = spawn_app().await;
    // The preflight a browser sends before a command with a token: answered
    // before authentication and the method check.
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/v1/customers/x/forget", app.command))
        .header("origin", "http://console.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let allowed = |name: &str| preflight.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(allowed("access-control-allow-origin"), "*");
    assert!(allowed("access-control-allow-methods").contains("POST"));
    assert!(allowed("access-control-allow-headers").contains("authorization"));
    // The request itself: a script may read the consistency token.
    let answer = app
        .http
        .post(format!("{}/v1/products", app.command))
        .bearer_auth(&app.admin)
        .header("origin", "http://console.example")
        .json(&json!({"sku": "CORS-1", "name": "n", "description": "", "category": "c", "price": {"amount_minor": 1, "currency": "USD"}, "initial_stock": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(answer.headers()["access-control-allow-origin"], "*");
    assert!(answer.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-consistency-token"));
    // No Origin, no CORS headers; an OPTIONS that is no preflight is a
    // method the path does not have.
    let plain = app.get("/v1/products", None, None).await;
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    let options = app.http.request(reqwest::Method::OPTIONS, format!("{}/v1/products", app.query)).send().await.unwrap();
    assert_eq!(options.status(), 405);

    // The console is served, with a policy that loads nothing from elsewhere.
    let page = app.http.get(format!("{}/console/", app.query)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
    assert!(page.text().await.unwrap().contains("/console/console.js"));
    let settings: Value = app.http.get(format!("{}/console/settings.json", app.query)).send().await.unwrap().json().await.unwrap();
    assert_eq!(settings["command_url"], Value::Null);
}
