//! What the integration tests of every crate share: a fresh migrated
//! database on the server `cargo xtask test` starts, the system started
//! the one way the binary starts it (`storekeeper::App`) on port 0, signed
//! webhook calls and problem+json assertions. A dev-dependency only.

pub mod sse;

use std::sync::Arc;

use commands::CommandService;
use edge::{JwtKeys, Role};
use eventlog::EventLog;
use reqwest::Response;
use serde_json::{Value, json};
use sqlx::PgPool;
use storekeeper::{App, Config, EventLogConfig, Listeners, Roles};
use uuid::Uuid;

pub use eventlog::testing::{database_url, fresh_database, fresh_database_url};

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
pub const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

/// A fresh database with every crate's migrations applied.
pub async fn migrated_database() -> PgPool {
    let pool = fresh_database().await;
    storekeeper::database::migrate(&pool).await.expect("migrate the test database");
    pool
}

/// A fresh migrated database, its log and a command service on it.
pub async fn command_side() -> (PgPool, Arc<dyn EventLog>, CommandService) {
    let pool = migrated_database().await;
    let (log, vault) = eventlog::vault::postgres_log(&pool);
    let service = CommandService::new(log.clone(), vault);
    (pool, log, service)
}

/// Parts of the system running in this process, as `storekeeper serve`
/// runs them, with the APIs on port 0.
pub struct Spawned {
    pub app: App,
    /// `http://127.0.0.1:<port>` of each API that runs.
    pub command: Option<String>,
    pub query: Option<String>,
}

/// Starts `roles` on `pool` (in-process feed).
pub async fn spawn(pool: PgPool, roles: Roles) -> Spawned {
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0") };
    let mut listeners = Listeners::default();
    if roles.command {
        listeners.command = Some(bind().await);
    }
    if roles.query {
        listeners.query = Some(bind().await);
    }
    let base = |l: &Option<tokio::net::TcpListener>| l.as_ref().map(|l| format!("http://{}", l.local_addr().unwrap()));
    let (command, query) = (base(&listeners.command), base(&listeners.query));
    let config = Config {
        roles,
        jwt_secret: JWT_SECRET.to_owned(),
        webhook_secret: WEBHOOK_SECRET.to_owned(),
        index_dir: std::env::temp_dir().join(format!("storekeeper-index-{}", Uuid::now_v7().simple())),
        kafka: None,
        event_log: EventLogConfig::default(),
        limits: edge::serve::Limits::default(),
        console_command_url: None,
    };
    let app = App::start(config, pool, listeners).await.expect("start the app");
    Spawned { app, command, query }
}

pub fn jwt() -> JwtKeys {
    JwtKeys::new(JWT_SECRET.as_bytes())
}

pub fn admin_token() -> String {
    jwt().mint("alice", Role::Admin, chrono::Duration::hours(1))
}

pub fn customer_token(id: Uuid) -> String {
    jwt().mint(&id.to_string(), Role::Customer, chrono::Duration::hours(1))
}

/// Posts `body` to the payment webhook at `base`, signed with `secret`.
pub async fn post_webhook(http: &reqwest::Client, base: &str, secret: &str, body: &Value) -> Response {
    let raw = serde_json::to_vec(body).unwrap();
    http.post(format!("{base}/v1/payments/webhook"))
        .header("content-type", "application/json")
        .header("x-signature", command_api::webhook::signature(secret.as_bytes(), &raw))
        .body(raw)
        .send()
        .await
        .unwrap()
}

pub fn address() -> Value {
    json!({"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"})
}

/// Asserts a problem+json answer with `status` and `code`; returns its body.
pub async fn problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["title"].is_string() && body["detail"].is_string() && body["type"].is_string());
    body
}

/// An event in its stored form (version 1 of its type), as another writer
/// would append it straight to the log: for tests of what consumers do
/// with events the command side would never write.
pub fn stored_event(event_type: &str, data: Value) -> eventlog::NewEvent {
    eventlog::NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: eventlog::Metadata::system("test"),
        data,
    }
}

/// Asserts that the document checked in at `path` (from the workspace
/// root) is `generated`, pretty-printed: the contracts under `schemas/`
/// are generated from the code and must not drift from it.
pub fn assert_checked_in(path: &str, generated: &Value) {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let generated = serde_json::to_string_pretty(generated).expect("documents serialize") + "\n";
    let checked_in = std::fs::read_to_string(&full).unwrap_or_default();
    assert!(checked_in == generated, "{path} differs from the generated document: run `cargo xtask schemas` and commit the result");
}
