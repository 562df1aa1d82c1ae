//! One end-to-end scenario, run against both deployments: `storekeeper
//! serve` (everything in one process, fed in process) and the scale-out one
//! (relay, command API, query API and two projection workers as separate
//! processes, fed through Kafka). The Kafka run then kills a projection
//! worker with SIGKILL under load, restarts it, and checks that the read
//! models equal a fresh rebuild from the log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edge::{JwtKeys, Role};
use eventlog::EventLog;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{brokers, free_port, storekeeper, temp_dir};

const JWT_SECRET: &str = "e2e-jwt-secret-0123456789abcdef";
const WEBHOOK_SECRET: &str = "e2e-webhook-secret-0123456789abcdef";
pub(crate) const PARTITIONS: i32 = 3;

/// A running deployment; its processes are killed when it is dropped.
pub(crate) struct Deployment {
    pub(crate) url: String,
    topic: Option<String>,
    dir: PathBuf,
    pub(crate) command: String,
    pub(crate) query: String,
    command_port: u16,
    query_port: u16,
    processes: Vec<(&'static str, Child)>,
    pub(crate) http: reqwest::Client,
    pub(crate) admin: String,
    /// Set on every role started from now on.
    env: Vec<(String, String)>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Deployment {
    pub(crate) fn new(url: String, topic: Option<String>) -> Deployment {
        let (command_port, query_port) = (free_port(), free_port());
        Deployment {
            url,
            topic,
            dir: temp_dir("deployment"),
            command: format!("http://127.0.0.1:{command_port}"),
            query: format!("http://127.0.0.1:{query_port}"),
            command_port,
            query_port,
            processes: Vec::new(),
            http: reqwest::Client::new(),
            admin: JwtKeys::new(JWT_SECRET.as_bytes()).mint("alice", Role::Admin, chrono::Duration::hours(1)),
            env: Vec::new(),
        }
    }

    /// Sets `name` for every role started from now on.
    pub(crate) fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Starts one role as its own process.
    pub(crate) fn start(&mut self, name: &'static str, args: &[&str]) {
        self.start_with(name, storekeeper(args));
    }

    /// Starts one role with its JSON log, filtered by `filter`, in
    /// `<name>.log` of the deployment's directory; answers that path.
    pub(crate) fn start_logging(&mut self, name: &'static str, args: &[&str], filter: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.log"));
        let mut cmd = storekeeper(args);
        cmd.env("RUST_LOG", filter).env("STOREKEEPER_LOG_FORMAT", "json");
        self.start_with(name, cmd);
        let (_, child) = self.processes.last_mut().expect("just started");
        let mut out = child.stdout.take().expect("piped");
        let mut file = std::fs::File::create(&path).unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut file));
        path
    }

    fn start_with(&mut self, name: &'static str, mut cmd: std::process::Command) {
        let logged = cmd.get_envs().any(|(k, _)| k == "STOREKEEPER_LOG_FORMAT");
        cmd.env("DATABASE_URL", &self.url)
            .env("STOREKEEPER_JWT_SECRET", JWT_SECRET)
            .env("STOREKEEPER_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{}", self.command_port))
            .env("STOREKEEPER_QUERY_ADDR", format!("127.0.0.1:{}", self.query_port))
            .env("STOREKEEPER_DATA_DIR", self.dir.join(format!("{name}-{}", self.processes.len())))
            .env("STOREKEEPER_DB_POOL_SIZE", "10")
            .stdout(if logged { Stdio::piped() } else { Stdio::null() });
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(topic) = &self.topic {
            cmd.env("KAFKA_BROKERS", brokers())
                .env("STOREKEEPER_KAFKA_TOPIC", topic)
                .env("STOREKEEPER_KAFKA_PARTITIONS", PARTITIONS.to_string());
        }
        self.processes.push((name, cmd.spawn().unwrap()));
    }

    pub(crate) fn kill(&mut self, name: &str) {
        let at = self.processes.iter().position(|(n, _)| *n == name).unwrap_or_else(|| panic!("no {name} running"));
        let (_, mut child) = self.processes.remove(at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    pub(crate) async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let command = self.http.get(format!("{}/readyz", self.command)).send().await;
            let query = self.http.get(format!("{}/readyz", self.query)).send().await;
            if command.is_ok_and(|r| r.status() == 200) && query.is_ok_and(|r| r.status() == 200) {
                return;
            }
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("storekeeper {name} exited early: {status}");
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "the deployment did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A command as the admin: the body and the consistency token.
    pub(crate) async fn write(&self, path: &str, body: Value) -> (Value, String) {
        let response = self.http.post(format!("{}{path}", self.command)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {} {}", response.status(), response.text().await.unwrap());
        let token = response.headers()["x-consistency-token"].to_str().unwrap().to_owned();
        (response.json().await.unwrap(), token)
    }

    /// A command as the admin under the caller's `traceparent`: its status.
    pub(crate) async fn traced(&self, path: &str, body: Value, traceparent: &str) -> u16 {
        let request = self.http.post(format!("{}{path}", self.command)).bearer_auth(&self.admin).header("traceparent", traceparent);
        request.json(&body).send().await.unwrap().status().as_u16()
    }

    /// A read as the admin, waiting for `tokens`: as a patient client
    /// does, asked again after a 503 `not_yet_consistent` (a wait is at
    /// most 10 s), for up to 40 s in all.
    pub(crate) async fn read(&self, path: &str, tokens: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let mut request =
                self.http.get(format!("{}{path}", self.query)).bearer_auth(&self.admin).header("x-consistency-timeout", "10000");
            for token in tokens {
                request = request.header("x-consistency-token", *token);
            }
            let response = request.send().await.unwrap();
            if response.status() == StatusCode::SERVICE_UNAVAILABLE && tokio::time::Instant::now() < deadline {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["code"], "not_yet_consistent", "{path}: {body}");
                continue;
            }
            assert_eq!(response.status(), StatusCode::OK, "{path}: {}", response.text().await.unwrap());
            return response.json().await.unwrap();
        }
    }

    /// Reads `path` until `done` holds (for effects of the order process).
    /// Generous: through Kafka, the first effect waits for both workers'
    /// consumer groups to settle, which a loaded machine stretches.
    pub(crate) async fn eventually(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let value = self.read(path, &[]).await;
            if done(&value) {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path} never got there: {value}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a user does on day one: write, read their writes everywhere
/// (read models, search, audit), let the order process run, pay, and look
/// back in time.
async fn scenario(d: &Deployment) {
    let product = Uuid::now_v7();
    let (_, added) = d
        .write(
            "/v1/products",
            json!({"id": product, "sku": format!("KET-{}", &product.simple().to_string()[24..]), "name": "Kettle",
                   "description": "Boils water fast", "category": "kitchen",
                   "price": {"amount_minor": 1999, "currency": "USD"}, "initial_stock": 10}),
        )
        .await;
    let read = d.read(&format!("/v1/products/{product}"), &[&added]).await;
    assert_eq!((read["stock"].as_i64(), read["price"]["amount_minor"].as_i64()), (Some(10), Some(1999)), "{read}");
    let found = d.read("/v1/search/products?q=kettel", &[&added]).await;
    assert!(found["hits"].as_array().unwrap().iter().any(|h| h["id"] == product.to_string()), "typo-tolerant search: {found}");

    let (customer, registered) =
        d.write("/v1/customers", json!({"email": format!("{}@example.com", Uuid::now_v7().simple()), "name": "Ada Lovelace"})).await;
    let customer = customer["id"].as_str().unwrap().to_owned();
    let read = d.read(&format!("/v1/customers/{customer}"), &[&registered]).await;
    assert_eq!(read["name"], "Ada Lovelace");

    let order = Uuid::now_v7();
    let (_, placed) = d
        .write(
            "/v1/orders",
            json!({"id": order, "customer_id": customer, "lines": [{"product_id": product, "quantity": 2}],
                   "shipping_address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}),
        )
        .await;
    // Several tokens at once: the read waits for all of them.
    let read = d.read(&format!("/v1/customers/{customer}/orders"), &[&placed, &registered]).await;
    assert_eq!(read["items"][0]["id"], order.to_string(), "{read}");
    // The order process reserves the stock through the event source.
    d.eventually(&format!("/v1/orders/{order}"), |o| o["status"] == "confirmed").await;
    d.eventually(&format!("/v1/products/{product}"), |p| p["stock"] == 8).await;

    let webhook = json!({"provider_event_id": format!("evt-{order}"), "order_id": order,
                         "amount": {"amount_minor": 3998, "currency": "USD"}, "status": "captured"});
    let paid = test_support::post_webhook(&d.http, &d.command, WEBHOOK_SECRET, &webhook).await;
    assert!(paid.status().is_success(), "webhook: {}", paid.status());
    let paid = paid.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let read = d.read(&format!("/v1/orders/{order}"), &[&paid]).await;
    assert_eq!(read["status"], "paid", "{read}");
    let sales = d.read("/v1/reports/sales", &[&paid]).await;
    assert!(sales.to_string().contains("3998"), "paid revenue in the sales report: {sales}");

    let audit = d.read(&format!("/v1/audit?stream_id=order-{order}"), &[&paid]).await;
    let types: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|i| i["event_type"].as_str().unwrap()).collect();
    assert!(types.len() >= 3 && types.contains(&"OrderPlaced") && types.contains(&"OrderPaid"), "audit trail: {types:?}");
    let history = d.read(&format!("/v1/streams/order-{order}/events"), &[]).await;
    assert_eq!(history["events"].as_array().unwrap().len(), types.len(), "history and audit agree");
    let then = d.read(&format!("/v1/products/{product}/at?version=0"), &[]).await;
    assert_eq!(then["stock"], 10, "time travel: {then}");
    let projections = d.read("/v1/projections", &[]).await;
    for name in ["audit", "customers", "orders", "products", "sales", "search"] {
        assert!(projections["items"].as_array().unwrap().iter().any(|p| p["name"] == name), "{name} in {projections}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_in_one_process_passes_the_end_to_end_scenario() {
    let mut d = Deployment::new(eventlog::testing::fresh_database_url().await, None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    scenario(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_deployment_passes_the_scenario_and_a_killed_worker_leaves_read_models_equal_to_a_rebuild() {
    let url = eventlog::testing::fresh_database_url().await;
    let topic = format!("storekeeper-e2e-{}", Uuid::now_v7().simple());
    let mut d = Deployment::new(url.clone(), Some(topic));
    d.start("relay", &["relay"]);
    d.start("command-api", &["command-api"]);
    d.start("query-api", &["query-api"]);
    d.start("worker-a", &["projections"]);
    d.start("worker-b", &["projections"]);
    d.wait_ready().await;
    scenario(&d).await;
    // A subscriber on the query API node, from just after the head as it
    // is now: it sees the load below live.
    let subscribe = |query: String, last_event_id: Option<u64>| {
        let mut request = d.http.get(format!("{}/v1/events{query}", d.query)).bearer_auth(&d.admin);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        async move { test_support::sse::Sse::new(request.send().await.unwrap()) }
    };
    let end = subscribe("?from=head&until=head".into(), None).await.rest().await;
    let before_load = end.last().unwrap().json()["head"].as_u64().unwrap();
    let mut live = subscribe(format!("?from={}", before_load + 1), None).await;

    // Load, with worker A killed (SIGKILL) in the middle of it and
    // started again.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.unwrap();
    let d = Arc::new(tokio::sync::Mutex::new(d));
    let mut products = Vec::new();
    for i in 0..24 {
        let id = Uuid::now_v7();
        d.lock()
            .await
            .write(
                "/v1/products",
                json!({"id": id, "sku": format!("LOAD-{i}-{}", &id.simple().to_string()[24..]), "name": format!("Load {i}"),
                       "description": "", "category": "load", "price": {"amount_minor": 100, "currency": "USD"}, "initial_stock": 0}),
            )
            .await;
        products.push(id);
    }
    let (command, admin, http) = {
        let d = d.lock().await;
        (d.command.clone(), d.admin.clone(), d.http.clone())
    };
    let load = tokio::spawn(async move {
        let mut last = BTreeMap::new();
        for round in 0..15 {
            let writes = products.iter().map(|id| {
                let request = http
                    .post(format!("{command}/v1/products/{id}/restock"))
                    .bearer_auth(&admin)
                    .json(&json!({"quantity": round + 1}))
                    .send();
                async move {
                    let response = request.await.unwrap();
                    assert!(response.status().is_success());
                    (*id, response.headers()["x-consistency-token"].to_str().unwrap().to_owned())
                }
            });
            last.extend(futures::future::join_all(writes).await);
        }
        last
    });
    let before: i64 =
        sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = 'audit'").fetch_one(&pool).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now: i64 =
            sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = 'audit'").fetch_one(&pool).await.unwrap();
        if now > before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the workers applied nothing of the load");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.lock().await.kill("worker-a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.lock().await.start("worker-a", &["projections"]);
    // Verified while the load goes on through the partitions: each time
    // against whatever each partition has applied by then.
    let (log, _) = eventlog::vault::postgres_log(&pool);
    let mut verified = 0;
    while !load.is_finished() || verified == 0 {
        let found = projections::verify(&pool, &*log, &projections::ProductsProjection).await.unwrap();
        assert!(found.matches(), "{found:?}");
        verified += 1;
    }
    let last = load.await.unwrap();

    // Every last write is visible, with its token, through Kafka.
    let total: i64 = (1..=15).sum();
    for (id, token) in &last {
        let product = d.lock().await.read(&format!("/v1/products/{id}"), &[token]).await;
        assert_eq!(product["stock"], total, "{product}");
    }
    caught_up_through_kafka(&pool, &log).await;

    // The subscriber saw every event of the load once, in the log's order;
    // resumed from the middle with Last-Event-ID, the rest follows exactly.
    let logged: Vec<u64> = log.read_all(before_load, usize::MAX).await.unwrap().iter().map(|e| e.global_position).collect();
    let mut seen = Vec::new();
    while seen.last() != logged.last() {
        seen.push(live.next_within(Duration::from_secs(10)).await.expect("the subscription ended").position());
    }
    assert_eq!(seen, logged);
    drop(live);
    let middle = logged[logged.len() / 2];
    let resumed: Vec<u64> = {
        let d = d.lock().await;
        let request =
            d.http.get(format!("{}/v1/events?until=head", d.query)).bearer_auth(&d.admin).header("last-event-id", middle.to_string());
        test_support::sse::Sse::new(request.send().await.unwrap())
            .rest()
            .await
            .iter()
            .filter(|e| e.id.is_some())
            .map(|e| e.position())
            .filter(|p| p <= logged.last().unwrap())
            .collect()
    };
    assert_eq!(resumed, logged[logged.len() / 2 + 1..]);

    let live = read_models(&pool).await;
    // Verified while the workers still run, against each one's progress
    // through the partitions.
    for projection in projections::all() {
        let found = projections::verify(&pool, &*log, &*projection).await.unwrap();
        assert!(found.matches(), "{found:?}");
    }
    drop(d); // every process killed

    // A fresh rebuild from the log, in process.
    sqlx::query("DELETE FROM projection_checkpoints").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM consumer_partitions").execute(&pool).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = tokio::spawn(projections::Runner::new(pool.clone(), log.clone(), projections::all()).run(stopped));
    let head = log.read_all(0, usize::MAX).await.unwrap().last().unwrap().global_position as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let behind: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints WHERE position >= $1")
            .bind(head)
            .fetch_one(&pool)
            .await
            .unwrap();
        if behind == projections::all().len() as i64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuild did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    runner.await.unwrap();
    let rebuilt = read_models(&pool).await;
    for (table, rows) in &live {
        assert!(rows == &rebuilt[table], "{table} differs from a fresh rebuild:\nlive:    {rows}\nrebuilt: {}", rebuilt[table]);
    }
}

/// Waits until every projection has applied, in every partition, the last
/// event the log holds for it.
async fn caught_up_through_kafka(pool: &PgPool, log: &Arc<dyn EventLog>) {
    let events = log.read_all(0, usize::MAX).await.unwrap();
    let mut wanted: BTreeMap<i32, i64> = BTreeMap::new();
    for e in &events {
        let at = wanted.entry(eventlog::partition_for(&e.stream_id, PARTITIONS)).or_default();
        *at = (*at).max(e.global_position as i64);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for projection in projections::all() {
        loop {
            let applied: BTreeMap<i32, i64> =
                sqlx::query_as::<_, (i32, i64)>("SELECT partition, position FROM consumer_partitions WHERE consumer = $1")
                    .bind(projection.name())
                    .fetch_all(pool)
                    .await
                    .unwrap()
                    .into_iter()
                    .collect();
            if wanted.iter().all(|(p, at)| applied.get(p).is_some_and(|a| a >= at)) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} stayed behind: {applied:?} of {wanted:?}", projection.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every read model table, as ordered JSON.
async fn read_models(pool: &PgPool) -> BTreeMap<String, String> {
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'rm\\_%' ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut dump = BTreeMap::new();
    for table in tables {
        let rows: String = sqlx::query_scalar(&format!("SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM {table} t"))
            .fetch_one(pool)
            .await
            .unwrap();
        dump.insert(table, rows);
    }
    assert!(dump.len() >= 6, "read model tables: {:?}", dump.keys());
    dump
}
