use std::sync::Arc;
use std::time::Duration;

use commands::{CommandService, ProcessManager};
use edge::{JwtKeys, Role};
use eventlog::{EventLog, RecordedEvent};
use reqwest::{RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::PgPool;
use storekeeper::{App, Roles};
use tokio::sync::watch;
use uuid::Uuid;

pub use test_support::{WEBHOOK_SECRET, address, problem};

pub struct TestApp {
    pub base: String,
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub service: CommandService,
    pub jwt: JwtKeys,
    pub http: reqwest::Client,
    pub admin: String,
    _app: App,
    stop_manager: Option<watch::Sender<bool>>,
    manager: Option<tokio::task::JoinHandle<()>>,
}

/// The command API on port 0 over a fresh database, without the process
/// manager.
pub async fn spawn_app() -> TestApp {
    let pool = test_support::migrated_database().await;
    let spawned = test_support::spawn(pool.clone(), Roles { command: true, ..Roles::NONE }).await;
    let app = spawned.app;
    TestApp {
        base: spawned.command.unwrap(),
        pool,
        log: app.log.clone(),
        service: app.service.clone(),
        jwt: app.jwt.clone(),
        http: reqwest::Client::new(),
        admin: test_support::admin_token(),
        _app: app,
        stop_manager: None,
        manager: None,
    }
}

/// The same, with the order process manager running.
pub async fn spawn_app_with_process_manager() -> TestApp {
    let mut app = spawn_app().await;
    app.start_process_manager();
    app
}

impl TestApp {
    pub fn start_process_manager(&mut self) {
        let (tx, rx) = watch::channel(false);
        let manager = ProcessManager::new(self.service.clone(), self.pool.clone());
        self.manager = Some(tokio::spawn(async move { manager.run(rx).await.unwrap() }));
        self.stop_manager = Some(tx);
    }

    pub async fn stop_process_manager(&mut self) {
        if let Some(tx) = self.stop_manager.take() {
            tx.send(true).unwrap();
        }
        if let Some(handle) = self.manager.take() {
            handle.await.unwrap();
        }
    }

    pub fn customer_token(&self, id: Uuid) -> String {
        self.jwt.mint(&id.to_string(), Role::Customer, chrono::Duration::hours(1))
    }

    pub fn post(&self, path: &str, token: &str) -> RequestBuilder {
        self.http.post(format!("{}{path}", self.base)).bearer_auth(token)
    }

    pub async fn post_json(&self, path: impl AsRef<str>, token: &str, body: Value) -> Response {
        self.post(path.as_ref(), token).json(&body).send().await.unwrap()
    }

    pub async fn add_product(&self, sku: &str, price: i64, stock: u32) -> Uuid {
        let response = self
            .post_json(
                "/v1/products",
                &self.admin,
                json!({"sku": sku, "name": format!("Product {sku}"), "description": "A thing", "category": "things",
                       "price": {"amount_minor": price, "currency": "USD"}, "initial_stock": stock}),
            )
            .await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        id_of(response).await
    }

    pub async fn register_customer(&self, email: &str) -> Uuid {
        let response = self.post_json("/v1/customers", &self.admin, json!({"email": email, "name": "Ada Lovelace"})).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        id_of(response).await
    }

    pub async fn place_order(&self, customer: Uuid, lines: &[(Uuid, u32)]) -> Uuid {
        let lines: Vec<Value> = lines.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect();
        let response = self
            .post_json("/v1/orders", &self.admin, json!({"customer_id": customer, "lines": lines, "shipping_address": address()}))
            .await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
        id_of(response).await
    }

    pub async fn webhook(&self, body: &Value, secret: &str) -> Response {
        test_support::post_webhook(&self.http, &self.base, secret, body).await
    }

    /// Every event in the log, read straight from the table.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&self.pool).await.unwrap()
    }

    pub async fn stream(&self, stream_id: &str) -> Vec<RecordedEvent> {
        self.log.read_stream(stream_id, 0, 10_000).await.unwrap()
    }

    pub async fn product(&self, id: Uuid) -> domain::product::Product {
        let stream = domain::stream_id::<domain::product::ProductAggregate>(id);
        self.service.load::<domain::product::ProductAggregate>(&stream).await.unwrap().state.expect("product exists")
    }

    pub async fn order(&self, id: Uuid) -> domain::order::Order {
        let stream = domain::stream_id::<domain::order::OrderAggregate>(id);
        self.service.load::<domain::order::OrderAggregate>(&stream).await.unwrap().state.expect("order exists")
    }

    /// Waits until the order reaches `status`.
    pub async fn wait_for_order(&self, id: Uuid, status: domain::order::OrderStatus) -> domain::order::Order {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let order = self.order(id).await;
            if order.status == status {
                return order;
            }
            assert!(tokio::time::Instant::now() < deadline, "order stuck at {:?}, expected {status:?}", order.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn id_of(response: Response) -> Uuid {
    let body: Value = response.json().await.unwrap();
    Uuid::parse_str(body["id"].as_str().unwrap()).unwrap()
}
