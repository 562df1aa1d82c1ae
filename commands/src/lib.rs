//! The command core: everything that turns a command into events, with no
//! HTTP in it. The command API, the CLI's `seed`, the order process manager
//! and the tests all go through `CommandService`.
//!
//! - `service`: load, decide, append, retry; uniqueness claims; the state
//!   cache.
//! - `idempotency`: the `Idempotency-Key` store.
//! - `passwords`: sign-in passwords, outside the log.
//! - `process_manager`: the order process, a consumer of the log that
//!   issues commands through the same service.

pub mod idempotency;
pub mod passwords;
pub mod process_manager;
pub mod service;

pub use idempotency::{Begin, IdempotencyStore};
pub use passwords::{PasswordError, PasswordStore};
pub use process_manager::ProcessManager;
pub use service::{CommandService, Outcome, ServiceError};

/// Applies the command core's own migrations (idempotency keys).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    eventlog::migrations::apply(sqlx::migrate!("./migrations"), pool).await
}
