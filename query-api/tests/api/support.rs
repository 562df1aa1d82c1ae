use edge::{JwtKeys, Role};
use reqwest::Response;
use serde_json::{Value, json};
use storekeeper::{App, Roles};
use uuid::Uuid;

pub use test_support::address;

pub struct TestApp {
    pub command: String,
    pub query: String,
    pub http: reqwest::Client,
    pub jwt: JwtKeys,
    pub admin: String,
    pub pool: sqlx::PgPool,
    _apis: App,
    workers: Option<App>,
}

/// Both APIs on port 0 over a fresh database, with the projections and the
/// process manager running in process (as a separate part, so a test can
/// stop them alone).
pub async fn spawn_app() -> TestApp {
    let pool = test_support::migrated_database().await;
    let apis = test_support::spawn(pool.clone(), Roles { command: true, query: true, ..Roles::NONE }).await;
    let workers = test_support::spawn(pool.clone(), Roles { workers: true, ..Roles::NONE }).await;
    TestApp {
        command: apis.command.unwrap(),
        query: apis.query.unwrap(),
        http: reqwest::Client::new(),
        jwt: test_support::jwt(),
        admin: test_support::admin_token(),
        pool,
        _apis: apis.app,
        workers: Some(workers.app),
    }
}

impl TestApp {
    pub async fn stop_workers(&mut self) {
        if let Some(workers) = self.workers.take() {
            workers.shutdown().await;
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

    /// Places an order of `quantity` of `product` for `customer` and waits
    /// until the order process has confirmed it; answers the order id.
    pub async fn confirmed_order(&self, customer: &Value, product: Uuid, quantity: u32) -> String {
        let (order, placed) = self
            .write(
                "/v1/orders",
                json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": quantity}], "shipping_address": test_support::address()}),
            )
            .await;
        let order_id = order["id"].as_str().unwrap().to_owned();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.get_json(&format!("/v1/orders/{order_id}"), Some(&self.admin), Some(&placed)).await["status"] != "confirmed" {
            assert!(tokio::time::Instant::now() < deadline, "order {order_id} not confirmed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        order_id
    }

    /// Pays `order_id` through the signed payment webhook; answers the
    /// consistency token.
    pub async fn pay(&self, order_id: &str, provider_event_id: &str, amount_minor: i64) -> String {
        let webhook = json!({"provider_event_id": provider_event_id, "order_id": order_id,
                             "amount": {"amount_minor": amount_minor, "currency": "USD"}, "status": "captured"});
        let paid = test_support::post_webhook(&self.http, &self.command, test_support::WEBHOOK_SECRET, &webhook).await;
        assert_eq!(paid.status(), 200);
        paid.headers()["x-consistency-token"].to_str().unwrap().to_owned()
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
            let projections = self.get("/v1/projections", Some(&self.admin), None).await.text().await.unwrap();
            panic!(
                "{path}: {} {}\nprojections: {projections}\nconsistency token: {consistency:?}",
                response.status(),
                response.text().await.unwrap()
            );
        }
        response.json().await.unwrap()
    }
}
