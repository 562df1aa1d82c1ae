//! The HTTP edge of both APIs holds under any input: every class of
//! hostile request is tried on every endpoint it applies to, the
//! endpoints read from the two OpenAPI documents so a new endpoint is
//! covered without touching this file. Always: never 5xx, problem+json on
//! every 4xx, and nothing appended after any error.

use std::time::Duration;

use edge::{JwtKeys, Role};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::support::{TestApp, spawn_app};

/// (method, path with ids filled in, body properties and their schemas)
struct Endpoint {
    method: &'static str,
    base: String,
    path: String,
    properties: Vec<(String, Value)>,
    query: Vec<String>,
}

/// Every operation of both documents, with path parameters filled in.
fn endpoints(app: &TestApp) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (doc, base) in [(command_api::openapi::document(), &app.command), (query_api::openapi::document(), &app.query)] {
        let schemas = doc["components"]["schemas"].clone();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let path = path.replace("{id}", &Uuid::now_v7().to_string()).replace("{stream_id}", "product-x");
                let mut properties = Vec::new();
                if let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") {
                    let schema = resolve(schema, &schemas);
                    if let Some(props) = schema["properties"].as_object() {
                        properties = props.iter().map(|(k, v)| (k.clone(), resolve(v, &schemas))).collect();
                    }
                }
                let query = op["parameters"]
                    .as_array()
                    .map(|ps| ps.iter().filter(|p| p["in"] == "query").map(|p| p["name"].as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default();
                let method = if method == "post" { "POST" } else { "GET" };
                out.push(Endpoint { method, base: base.clone(), path, properties, query });
            }
        }
    }
    assert!(out.len() > 30, "both documents list their endpoints");
    out
}

fn resolve(schema: &Value, schemas: &Value) -> Value {
    match schema["$ref"].as_str() {
        Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
        None => schema.clone(),
    }
}

async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&app.pool).await.unwrap()
}

/// Sends, and asserts the invariants of any answer to a hostile request.
async fn send(_app: &TestApp, request: reqwest::RequestBuilder, what: &str) -> reqwest::StatusCode {
    let response = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status();
    assert!(!status.is_server_error() || status == 503, "{what}: {status} {}", response.text().await.unwrap_or_default());
    if status.is_client_error() {
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(content_type.as_deref(), Some("application/problem+json"), "{what}: {status}");
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{what}: problem body: {e}"));
        assert!(body["code"].is_string() && body["status"] == status.as_u16(), "{what}: {body}");
        let detail = body["detail"].as_str().unwrap_or("").to_lowercase();
        assert!(!detail.contains("sql") && !detail.contains("panicked"), "{what}: internal text leaked: {detail}");
    }
    status
}

fn request(app: &TestApp, endpoint: &Endpoint, suffix: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{}{suffix}", endpoint.base, endpoint.path);
    let request = if endpoint.method == "POST" { app.http.post(url) } else { app.http.get(url) };
    request.bearer_auth(&app.admin)
}

#[tokio::test]
async fn a_nul_or_control_character_anywhere_is_refused_and_nothing_is_appended() {
    let app = spawn_app().await;
    let before = event_count(&app).await;
    for endpoint in endpoints(&app) {
        for (field, schema) in &endpoint.properties {
            if schema["type"] == "string" || schema.get("type").is_none() {
                for bad in ["a\u{0}b", "\u{1b}[31m", "x\u{7f}"] {
                    let body = json!({ field.as_str(): bad });
                    let what = format!("{} {} with {field}={bad:?}", endpoint.method, endpoint.path);
                    let status = send(&app, request(&app, &endpoint, "").json(&body), &what).await;
                    assert!(status.is_client_error(), "{what}: {status}");
                }
            }
        }
        for name in &endpoint.query {
            let what = format!("{} {}?{name}=%00", endpoint.method, endpoint.path);
            for bad in ["a%00b", "%1b%5B31m", "line%0Abreak", "%C2%85"] {
                let status = send(&app, request(&app, &endpoint, &format!("?{name}={bad}")), &what).await;
                assert_eq!(status, 400, "{what} ({bad})");
            }
        }
        let what = format!("{} {} with a NUL in the path", endpoint.method, endpoint.path);
        let url = format!("{}{}%00", endpoint.base, endpoint.path);
        let status = send(&app, app.http.request(endpoint.method.parse().unwrap(), url).bearer_auth(&app.admin), &what).await;
        assert_eq!(status, 400, "{what}");
    }
    let status = send(&app, app.http.get(format!("{}/v1/streams/a%00b/events", app.query)).bearer_auth(&app.admin), "stream").await;
    assert_eq!(status, 400);
    assert_eq!(event_count(&app).await, before, "an error appended something");
}

#[tokio::test]
async fn the_frameworks_own_rejections_are_problem_json() {
    let app = spawn_app().await;
    let q = &app.query;
    let c = &app.command;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (app.http.get(format!("{q}/v1/products?limit=abc")), 400, "bad query value"),
        (app.http.get(format!("{q}/v1/products?nonsense=1")), 400, "unknown query parameter"),
        (app.http.get(format!("{q}/v1/products/%FF")), 400, "bad path parameter"),
        (app.http.delete(format!("{q}/v1/products")), 405, "unknown method (query)"),
        (app.http.put(format!("{c}/v1/products")).bearer_auth(&app.admin), 405, "unknown method (command)"),
        (app.http.get(format!("{q}/v1/products?category={}", "x".repeat(9000))), 414, "long URI"),
        (app.http.get(format!("{q}/healthz")).header("x-filler", "y".repeat(20_000)), 431, "large headers"),
        (
            app.http.post(format!("{c}/v1/payments/webhook")).header("content-type", "application/json").body(vec![b' '; 70_000]),
            413,
            "webhook body over 64 KiB",
        ),
        (app.http.post(format!("{c}/v1/products")).bearer_auth(&app.admin).body(vec![b' '; 70_000]), 413, "command body over 64 KiB"),
        (app.http.get(format!("{q}/v1/products")).body(vec![b' '; 70_000]), 413, "read body over 64 KiB"),
        (app.http.get(format!("{q}/no/such/route")), 404, "unknown route"),
        (app.http.get(format!("{q}/v1/reports/sales?from=-4714-11-24")).bearer_auth(&app.admin), 400, "date before PostgreSQL's range"),
        (app.http.get(format!("{q}/v1/audit?to=-262143-01-01T00:00:00Z")).bearer_auth(&app.admin), 400, "time before PostgreSQL's range"),
        (app.http.get(format!("{q}/v1/search/products?q={}", "a".repeat(257))), 400, "a query of 257 characters"),
        (app.http.get(format!("{q}/v1/search/products?q={}", vec!["abc"; 33].join("-"))), 200, "33 terms: the 33rd is left out"),
        (
            app.http.post(format!("{c}/v1/products")).bearer_auth(&app.admin).header("idempotency-key", "a\tb").json(&json!({})),
            400,
            "idempotency key with a tab",
        ),
    ];
    for (request, status, what) in cases {
        assert_eq!(send(&app, request, what).await, status, "{what}");
    }
}

#[tokio::test]
async fn a_body_is_exactly_one_json_object() {
    let app = spawn_app().await;
    let before = event_count(&app).await;
    let valid =
        r#"{"sku":"K-1","name":"Kettle","description":"d","category":"c","price":{"amount_minor":1,"currency":"USD"},"initial_stock":1}"#;
    for body in [format!("{valid}garbage"), format!("{valid} {valid}"), format!("[{valid}]"), "[]".to_owned(), "\"x\"".to_owned()] {
        let request =
            app.http.post(format!("{}/v1/products", app.command)).bearer_auth(&app.admin).header("content-type", "application/json");
        assert_eq!(send(&app, request.body(body.clone()), &body).await, 400, "{body}");
    }
    assert_eq!(event_count(&app).await, before);
}

#[tokio::test]
async fn a_present_but_invalid_token_is_401_everywhere_public_endpoints_included() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let keys = JwtKeys::new(test_support::JWT_SECRET.as_bytes());
    let not_yet = keys.sign(&edge::auth::Claims { sub: "alice".into(), role: Role::Admin, exp: now + 3600, nbf: Some(now + 600) });
    let expired = keys.mint("alice", Role::Admin, chrono::Duration::hours(-1));
    let other_key = JwtKeys::new(b"another-secret-0123456789abcdef").mint("alice", Role::Admin, chrono::Duration::hours(1));
    // alg none: header {"alg":"none","typ":"JWT"}, no signature.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", base64_url(&json!({"sub": "alice", "role": "admin", "exp": now + 3600})));
    let public = [
        format!("{}/v1/products", app.query),
        format!("{}/v1/search/products?q=kettle", app.query),
        format!("{}/healthz", app.query),
        format!("{}/openapi.json", app.command),
        format!("{}/metrics", app.command),
    ];
    for token in [&not_yet, &expired, &other_key, &none, &"garbage".to_owned()] {
        for url in &public {
            let status = send(&app, app.http.get(url).bearer_auth(token), url).await;
            assert_eq!(status, 401, "{url} with {token}");
        }
        let status = send(&app, app.http.get(format!("{}/v1/products", app.query)).header("authorization", "Basic abc"), "basic").await;
        assert_eq!(status, 401);
    }
    // A subject the log cannot store as an actor, and a second header.
    let nul_sub = keys.sign(&edge::auth::Claims { sub: "a\u{0}b".into(), role: Role::Admin, exp: now + 3600, nbf: None });
    let request = app.http.post(format!("{}/v1/products/{}/restock", app.command, Uuid::now_v7())).bearer_auth(nul_sub);
    assert_eq!(send(&app, request.json(&json!({"quantity": 1})), "NUL subject").await, 401);
    let two = app.http.get(&public[0]).bearer_auth(&app.admin).header("authorization", "Bearer garbage");
    assert_eq!(send(&app, two, "two Authorization headers").await, 401);
    // And without any token, public reads stay public.
    assert_eq!(send(&app, app.http.get(&public[0]), "anonymous").await, 200);
}

fn base64_url(value: &Value) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = serde_json::to_vec(value).unwrap();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn projection_states_are_for_admins_only() {
    let app = spawn_app().await;
    let url = format!("{}/v1/projections", app.query);
    assert_eq!(send(&app, app.http.get(&url), "anonymous").await, 401);
    let customer = app.customer_token(Uuid::now_v7());
    assert_eq!(send(&app, app.http.get(&url).bearer_auth(customer), "customer").await, 403);
    assert_eq!(send(&app, app.http.get(&url).bearer_auth(&app.admin), "admin").await, 200);
}

#[tokio::test]
async fn search_queries_are_bounded() {
    let app = spawn_app().await;
    let search = |q: String| app.http.get(format!("{}/v1/search/products", app.query)).query(&[("q", q)]);
    let words = |n: usize| (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    assert_eq!(send(&app, search(words(32)), "32 words").await, 200);
    // Words past the 32nd are left out, as search engines do; the length is the bound.
    assert_eq!(send(&app, search(words(33)), "33 words").await, 200);
    assert_eq!(query_api::products::normalise_query(&words(40)).unwrap(), words(32));
    assert_eq!(query_api::products::normalise_query("a-b-c").unwrap(), "a-b-c");
    assert_eq!(send(&app, search(words(1000)), "1000 words").await, 400);
    assert_eq!(send(&app, search("a".repeat(257)), "257 characters").await, 400);
    assert_eq!(send(&app, search(format!("  {}  ", "a ".repeat(20))), "whitespace collapses").await, 200);
}

#[tokio::test]
async fn a_client_that_sends_its_headers_slowly_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app.query.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    loop {
        // One header line a second, never finishing.
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => break, // an answer (408) then the close
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(20), "a slow client was never cut off");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Arbitrary strings, JSON and boundary numbers in every body field and
/// query parameter of both documents.
#[tokio::test]
async fn arbitrary_input_from_the_openapi_documents_never_breaks_the_edge() {
    let app = spawn_app().await;
    let before = event_count(&app).await;
    let mut runner = TestRunner::new(Config { rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..Config::default() });
    let leaf = prop_oneof![
        any::<String>().prop_map(Value::String),
        "\\PC{0,40}".prop_map(Value::String),
        prop_oneof![Just(0i64), Just(-1), Just(i64::MAX), Just(i64::MIN), Just(u32::MAX as i64 + 1), any::<i64>()].prop_map(|n| json!(n)),
        Just(json!(1e308)),
        Just(json!(u64::MAX)),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
    ];
    let value = leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    });
    let endpoints = endpoints(&app);
    let mut writes_accepted = 0;
    for round in 0..6 {
        for endpoint in &endpoints {
            if endpoint.method == "POST" {
                let mut body = Map::new();
                for (field, _) in &endpoint.properties {
                    body.insert(field.clone(), value.new_tree(&mut runner).unwrap().current());
                }
                let what = format!("POST {} round {round} body {}", endpoint.path, Value::Object(body.clone()));
                if send(&app, request(&app, endpoint, "").json(&body), &what).await.is_success() {
                    writes_accepted += 1;
                }
            } else {
                let pairs: Vec<(String, String)> = endpoint
                    .query
                    .iter()
                    .map(|name| {
                        let v = value.new_tree(&mut runner).unwrap().current();
                        (name.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    })
                    .collect();
                let what = format!("GET {} round {round} query {pairs:?}", endpoint.path);
                let request = request(&app, endpoint, "").query(&pairs).header("x-consistency-timeout", "50");
                send(&app, request, &what).await;
            }
        }
    }
    // Every refused write left the log as it was.
    if writes_accepted == 0 {
        assert_eq!(event_count(&app).await, before, "a refused request appended events");
    }
}

/// Sends raw bytes and returns what came back until the server closed or
/// `wait` passed.
async fn raw(addr: &str, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413_even_where_no_handler_reads_it() {
    let app = spawn_app().await;
    let addr = app.query.trim_start_matches("http://").to_owned();
    let mut request = b"GET /v1/products HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..70 {
        request.extend_from_slice(b"400\r\n");
        request.extend_from_slice(&[b' '; 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(&addr, &request, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{}", &answer[..answer.len().min(200)]);
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test]
async fn a_body_trickled_one_byte_a_second_is_answered_408_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app.command.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // No token needed: the webhook is public, so anyone could try this.
    stream.write_all(b"POST /v1/payments/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let read = loop {
        if stream.write_all(b"x").await.is_err() {
            break 0;
        }
        if let Ok(read) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut answer)).await {
            break read.unwrap_or(0);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "a trickled body was never cut off");
    };
    assert!(started.elapsed() < Duration::from_secs(13), "cut off after {:?}", started.elapsed());
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"), "{answer}");
}

#[tokio::test]
async fn clients_cannot_mint_metric_series_with_made_up_methods() {
    let app = spawn_app().await;
    for i in 0..3 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        send(&app, app.http.request(method, format!("{}/v1/products", app.query)), "made-up method").await;
    }
    let metrics = app.http.get(format!("{}/metrics", app.query)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("MADEUP"), "a request's method became a label value");
    assert!(metrics.contains("method=\"other\""), "made-up methods are counted as other");
}
