//! Each crate that owns tables keeps its own migrations, and all of them
//! share one database and one `_sqlx_migrations` table: each crate's run
//! passes over the versions the others applied.

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

/// Applies `migrator`'s migrations (a crate's `sqlx::migrate!()`).
pub async fn apply(mut migrator: Migrator, pool: &PgPool) -> Result<(), MigrateError> {
    migrator.set_ignore_missing(true);
    migrator.run(pool).await
}
