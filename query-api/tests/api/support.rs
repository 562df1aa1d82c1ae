use std::sync::Arc;

use command_api::process_manager::ProcessManager;
use command_api::{CommandService, JwtKeys, Role};
use eventlog::{EventLog, PgEventLog};
use reqwest::Response;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

pub struct TestApp {
    pub command: String,
    pub query: String,
    pub http: reqwest::Client,
    pub jwt: JwtKeys,
    pub admin: String,
    stop_workers: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

/// Both APIs on port 0 over a fresh database, with the projections and the
/// process manager running in process.
pub async fn spawn_app() -> TestApp {
    let pool = eventlog::testing::fresh_event_log_database().await;
    command_api::migrate(&pool).await.unwrap();
    projections::migrate(&pool).await.unwrap();
    let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pool.clone()));
    let service = CommandService::new(log.clone());
    let jwt = JwtKeys::new(b"test-jwt-secret-0123456789abcdef");
    let command = serve(command_api::router(command_api::AppState {
        service: service.clone(),
        pool: pool.clone(),
        jwt: jwt.clone(),
        webhook_secret: "test-webhook-secret".into(),
    }))
    .await;
    let index_dir = std::env::temp_dir().join(format!("storekeeper-index-{}", Uuid::now_v7().simple()));
    let search = projections::search::SearchIndex::open(&index_dir).unwrap();
    let query = serve(query_api::router(query_api::AppState::new(pool.clone(), log.clone(), jwt.clone(), search.clone()))).await;
    let (stop_workers, stop) = watch::channel(false);
    let indexer = search.run(log.clone(), eventlog::in_process(log.clone(), 2000), stop.clone());
    let manager = ProcessManager::new(service, pool.clone());
    let runner = projections::Runner::new(pool.clone(), log, projections::all());
    let stop2 = stop.clone();
    let workers = vec![
        tokio::spawn(async move { manager.run(stop).await.unwrap() }),
        tokio::spawn(async move { runner.run(stop2).await }),
        tokio::spawn(indexer),
    ];
    let admin = jwt.mint("alice", Role::Admin, chrono::Duration::hours(1));
    TestApp { command, query, http: reqwest::Client::new(), jwt, admin, stop_workers, workers }
}

impl TestApp {
    pub async fn stop_workers(&mut self) {
        self.stop_workers.send(true).unwrap();
        for worker in self.workers.drain(..) {
            worker.await.unwrap();
        }
    }

    pub fn customer_token(&self, id: Uuid) -> String {
        self.jwt.mint(&id.to_string(), Role::Customer, chrono::Duration::hours(1))
    }

    /// A command; answers the body and the consistency token.
    pub async fn write(&self, path: &str, body: Value) -> (Value, String) {
        let response = self.http.post(format!("{}{path}", self.command)).bearer_auth(&self.admin).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        let token = response.headers()["x-consistency-token"].to_str().unwrap().to_owned();
        (response.json().await.unwrap(), token)
    }

    pub async fn add_product(&self, sku: &str, category: &str, price: i64, stock: u32) -> (Uuid, String) {
        let (body, token) = self
            .write(
                "/v1/products",
                json!({"sku": sku, "name": format!("Product {sku}"), "description": format!("The {sku} thing"), "category": category,
                       "price": {"amount_minor": price, "currency": "USD"}, "initial_stock": stock}),
            )
            .await;
        (Uuid::parse_str(body["id"].as_str().unwrap()).unwrap(), token)
    }

    pub async fn get(&self, path: &str, token: Option<&str>, consistency: Option<&str>) -> Response {
        let mut request = self.http.get(format!("{}{path}", self.query));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(consistency) = consistency {
            request = request.header("x-consistency-token", consistency);
        }
        request.send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str, token: Option<&str>, consistency: Option<&str>) -> Value {
        let response = self.get(path, token, consistency).await;
        if response.status() != 200 {
            let projections = self.get("/v1/projections", None, None).await.text().await.unwrap();
            panic!(
                "{path}: {} {}\nprojections: {projections}\nconsistency token: {consistency:?}",
                response.status(),
                response.text().await.unwrap()
            );
        }
        response.json().await.unwrap()
    }
}

pub fn address() -> Value {
    json!({"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"})
}
