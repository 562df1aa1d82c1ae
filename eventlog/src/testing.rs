//! Test support: a fresh, migrated database per test on the cluster that
//! `cargo xtask test` starts (or the one `DATABASE_URL` names).

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The server tests run against.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with `cargo xtask test`, which starts a throwaway PostgreSQL")
}

/// Creates an empty database with a unique name and returns its URL, for
/// tests that hand it to another process.
pub async fn fresh_database_url() -> String {
    let admin: PgConnectOptions = database_url().parse().expect("DATABASE_URL is not a PostgreSQL URL");
    let name = format!("sk_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = admin.connect().await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create a test database");
    conn.close().await.ok();
    let url = database_url();
    // Keep the query string (sslmode and the like); swap the database.
    let (base, query) = url.split_once('?').map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("DATABASE_URL ends in /<database>");
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

/// Creates an empty database with a unique name and returns a pool on it
/// (no migrations applied).
pub async fn fresh_database() -> PgPool {
    PgPoolOptions::new().max_connections(20).connect(&fresh_database_url().await).await.expect("connect to the fresh test database")
}

/// A fresh database with the event log's migrations applied.
pub async fn fresh_event_log_database() -> PgPool {
    let pool = fresh_database().await;
    crate::migrate(&pool).await.expect("migrate the test database");
    pool
}
