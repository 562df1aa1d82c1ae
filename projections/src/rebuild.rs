//! Rebuilds: a projection whose version is new, or whose rebuild was
//! asked for, is built beside its live tables and swapped in once it has
//! caught up. This module holds the asking, the watching and the swap.

use std::time::Duration;

use sqlx::PgPool;

use crate::Projection;
use crate::target::Target;

/// Swaps a caught-up rebuild in for the live tables, in one transaction:
/// readers see the old tables or the new ones, never a mix.
pub(crate) async fn take_over(pool: &PgPool, projection: &dyn Projection) -> Result<(), sqlx::Error> {
    let rebuild = Target::rebuild(projection);
    let schema = rebuild.schema.as_deref().expect("a rebuild has a schema");
    let name = projection.name();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('projection:' || $1, 0))").bind(name).execute(&mut *tx).await?;
    let pending: Option<i32> = sqlx::query_scalar("SELECT version FROM projection_checkpoints WHERE projection = $1 FOR UPDATE")
        .bind(&rebuild.checkpoint)
        .fetch_optional(&mut *tx)
        .await?;
    if pending.is_none() {
        return Ok(()); // another worker took it over already
    }
    // Loaded without its secondary indexes: built now, before readers see it.
    for table in projection.tables() {
        crate::table_copy::build_other_indexes(&mut tx, schema, table).await?;
    }
    for table in projection.tables() {
        sqlx::query(&format!("DROP TABLE IF EXISTS public.{table}")).execute(&mut *tx).await?;
        sqlx::query(&format!("ALTER TABLE {schema}.{table} SET SCHEMA public")).execute(&mut *tx).await?;
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&mut *tx).await?;
    for (table, column) in [("projection_checkpoints", "projection"), ("consumer_partitions", "consumer"), ("dead_letters", "projection")] {
        sqlx::query(&format!("DELETE FROM {table} WHERE {column} = $1")).bind(name).execute(&mut *tx).await?;
        sqlx::query(&format!("UPDATE {table} SET {column} = $2 WHERE {column} = $1"))
            .bind(&rebuild.checkpoint)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE projection_checkpoints SET state = 'running', rebuild_requested = false, updated_at = now() WHERE projection = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(eventlog::progress::PROGRESS_CHANNEL).bind(name).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(projection = name, version = projection.version(), "rebuild caught up and took over");
    Ok(())
}

/// Returns once someone asks for the projection to be rebuilt.
pub(crate) async fn rebuild_requested(pool: &PgPool, name: &str) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let requested: Result<Option<bool>, _> =
            sqlx::query_scalar("SELECT rebuild_requested FROM projection_checkpoints WHERE projection = $1")
                .bind(name)
                .fetch_optional(pool)
                .await;
        if let Ok(Some(true)) = requested {
            return;
        }
    }
}

/// Asks the running workers to rebuild `name` beside its live tables.
pub async fn request_rebuild(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let updated =
        sqlx::query("UPDATE projection_checkpoints SET rebuild_requested = true WHERE projection = $1").bind(name).execute(pool).await?;
    Ok(updated.rows_affected() > 0)
}

/// How far a requested rebuild has got, for whoever watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Still asked for: the rebuild has not taken over yet.
    pub requested: bool,
    /// Where the rebuild has got; none until a worker has started it.
    pub position: Option<u64>,
    /// The last position in the log.
    pub head: u64,
}

/// Where the rebuild of `name` stands.
pub async fn rebuild_progress(pool: &PgPool, name: &str) -> Result<RebuildProgress, sqlx::Error> {
    let (requested, position, head): (bool, Option<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT rebuild_requested FROM projection_checkpoints WHERE projection = $1),
                (SELECT position FROM projection_checkpoints WHERE projection = $1 || ':rebuild'),
                (SELECT coalesce(max(global_position), 0) FROM events)",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    Ok(RebuildProgress { requested, position: position.map(|p| p as u64), head: head as u64 })
}
