//! Where a projection's batches go and where it resumes: the target (live
//! tables or a rebuild's copies) and its checkpoint row. Shared by the
//! live follow loop and rebuilds, so it lives apart from both.

use eventlog::{Progress, Resume};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Projection;

/// Where a projection's batches go: its live tables, or a rebuild's copies
/// of them in a schema of their own.
#[derive(Clone)]
pub(crate) struct Target {
    /// Its checkpoint row (and partitions and dead letters): the
    /// projection's name, or `<name>:rebuild`.
    pub(crate) checkpoint: String,
    /// A rebuild's schema, put first on the search path.
    pub(crate) schema: Option<String>,
}

impl Target {
    pub(crate) fn live(projection: &dyn Projection) -> Target {
        Target { checkpoint: projection.name().to_owned(), schema: None }
    }

    pub(crate) fn rebuild(projection: &dyn Projection) -> Target {
        Target { checkpoint: format!("{}:rebuild", projection.name()), schema: Some(format!("rebuild_{}", projection.name())) }
    }

    pub(crate) async fn begin<'a>(&self, pool: &'a PgPool) -> Result<sqlx::Transaction<'a, sqlx::Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        if let Some(schema) = &self.schema {
            // A rebuild's copies grow from empty without statistics, and the
            // planner, taking them for small, scanned them whole for every
            // key of a batch (`id = ANY(...)`): each batch cost more than the
            // last. The statements here look rows up by key; a lookup
            // that has no index on the copy (built at take-over) still scans.
            sqlx::query("SELECT set_config('search_path', $1, true), set_config('enable_seqscan', 'off', true)")
                .bind(format!("{schema}, public"))
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("projection {0} is at version {1} in the database, newer than this process's {2}; leaving it to newer workers")]
    Newer(String, i32, i32),
    #[error("projection {0} was rebuilt or taken over meanwhile; resuming from its new checkpoint")]
    Superseded(String),
}

/// The projection's checkpoint row for `target`, created when missing, and
/// where to resume. A new live row starts at the beginning of the log; a
/// row of an older version is only for a rebuild to replace.
pub(crate) async fn prepare(pool: &PgPool, projection: &dyn Projection, target: &Target) -> Result<(Resume, Uuid), RunError> {
    let mut tx = pool.begin().await?;
    // Serialise workers preparing the same projection.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('projection:' || $1, 0))").bind(projection.name()).execute(&mut *tx).await?;
    let row: Option<(i32, i64, Uuid)> =
        sqlx::query_as("SELECT version, position, generation FROM projection_checkpoints WHERE projection = $1")
            .bind(&target.checkpoint)
            .fetch_optional(&mut *tx)
            .await?;
    let (position, generation) = match row {
        Some((version, position, generation)) if version == projection.version() => (position as u64, generation),
        Some((version, _, _)) if version > projection.version() && target.schema.is_none() => {
            return Err(RunError::Newer(projection.name().into(), version, projection.version()));
        }
        _ => {
            // Nothing yet, or a rebuild of another version: start over.
            if let Some(schema) = &target.schema {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut *tx).await?;
                sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&mut *tx).await?;
                for table in projection.tables() {
                    crate::table_copy::copy_table(&mut tx, schema, table, false).await?;
                }
            } else {
                projection.reset(&mut tx).await?;
            }
            sqlx::query("DELETE FROM dead_letters WHERE projection = $1").bind(&target.checkpoint).execute(&mut *tx).await?;
            eventlog::progress::clear_partitions(&mut tx, &target.checkpoint).await?;
            let state = if target.schema.is_some() { "rebuilding" } else { "running" };
            let generation: Uuid = sqlx::query_scalar(
                "INSERT INTO projection_checkpoints (projection, version, position, state) VALUES ($1, $2, 0, $3)
                 ON CONFLICT (projection) DO UPDATE SET version = EXCLUDED.version, position = 0, state = EXCLUDED.state, last_error = NULL,
                        generation = gen_random_uuid(), updated_at = now()
                 RETURNING generation",
            )
            .bind(&target.checkpoint)
            .bind(projection.version())
            .bind(state)
            .fetch_one(&mut *tx)
            .await?;
            (0, generation)
        }
    };
    tx.commit().await?;
    let mut progress = Progress { position, ..Progress::default() };
    eventlog::progress::load_partitions(pool, &target.checkpoint, &mut progress).await?;
    Ok((Resume { consumer: target.checkpoint.clone(), generation: generation.to_string(), progress }, generation))
}
