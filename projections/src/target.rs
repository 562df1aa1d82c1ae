//! Where a projection's batches go and where it resumes: the target (live
//! tables or a rebuild's copies) and its checkpoint row. Shared by the
//! live follow loop and rebuilds, so it lives apart from both.

use eventlog::{Progress, Resume};
use sqlx::PgPool;
use uuid::Uuid;

use crate::Projection;
use crate::dead_letters::lock_dead_letters;

/// Where a projection's batches go: its live tables, or a rebuild's copies
/// of them in a schema of their own.
#[derive(Clone)]
pub(crate) struct Target {
    /// Its checkpoint row (and partitions and dead letters): the
    /// projection's name, or `<name>:rebuild`.
    pub(crate) checkpoint: String,
    /// A rebuild's schema, put first on the search path.
    pub(crate) schema: Option<String>,
    /// Committed asynchronously: only when fed in process, where a batch
    /// lost to a crash of PostgreSQL is read from the log again. From
    /// Kafka, the broker's offsets move on after each batch, so a batch
    /// commits durably before they do.
    pub(crate) asynchronous: bool,
}

impl Target {
    pub(crate) fn live(projection: &dyn Projection) -> Target {
        Target { checkpoint: projection.name().to_owned(), schema: None, asynchronous: false }
    }

    pub(crate) fn rebuild(projection: &dyn Projection) -> Target {
        Target {
            checkpoint: format!("{}:rebuild", projection.name()),
            schema: Some(format!("rebuild_{}", projection.name())),
            asynchronous: false,
        }
    }

    /// The same, committed asynchronously (fed in process).
    pub(crate) fn committed_asynchronously(self, asynchronous: bool) -> Target {
        Target { asynchronous, ..self }
    }

    /// A transaction for one batch, begun in one round trip with the
    /// dead-letter lock that `dead_letters::retry` takes exclusively,
    /// shared; committed asynchronously when the target says so.
    ///
    /// Asynchronous commit: a read model is derived from the log, and its
    /// checkpoint commits with its rows, so a crash of PostgreSQL can lose
    /// only the last few batches' commits, rows and checkpoint alike. Fed
    /// in process, they are read from the log again: each checkpoint update
    /// is guarded by the position this run last committed, so a run that
    /// went on past a lost commit fails its next batch and resumes from
    /// the checkpoint. The batch's commit then waits for no disk flush.
    pub(crate) async fn begin(&self, pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        Target::begin_for(pool, std::slice::from_ref(self)).await
    }

    /// One transaction for the batches of several targets (the read models
    /// fed together), as `begin` begins one: every target's dead-letter
    /// lock, and asynchronous commit when each of them may.
    pub(crate) async fn begin_for(pool: &PgPool, targets: &[Target]) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut begin = String::from("BEGIN;");
        if targets.iter().all(|t| t.asynchronous) {
            begin.push_str(" SET LOCAL synchronous_commit = off;");
        }
        for target in targets {
            begin.push(' ');
            begin.push_str(&lock_dead_letters(&target.checkpoint, false));
        }
        for schema in targets.iter().filter_map(|t| t.schema.as_ref()) {
            // A rebuild's copies grow from empty without statistics, and the
            // planner, taking them for small, scanned them whole for every
            // key of a batch (`id = ANY(...)`): each batch cost more than the
            // last. The statements here look rows up by key; a lookup
            // that has no index on the copy (built at take-over) still scans.
            begin.push_str(&format!(" SET LOCAL search_path = {schema}, public; SET LOCAL enable_seqscan = off;"));
        }
        pool.begin_with(begin).await
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("projection {0} is at version {1} in the database, newer than this process's {2}; leaving it to newer workers")]
    Newer(String, i32, i32),
    /// Its checkpoint is not where this run left it: rebuilt or taken over
    /// meanwhile, or behind (its database lost the last commits).
    #[error(
        "projection {0}'s checkpoint is not where this run left it (rebuilt, taken over, or its database lost its last commits); resuming from it"
    )]
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
