//! Tamper evidence for the PostgreSQL log (migration 10008): a hash chain
//! per stream over each event's stored bytes, and seals over position
//! order, written by a sealer behind the read frontier rather than by
//! appends, so that appends cost exactly what they did. Hashing and
//! checking are SQL functions, so that the bytes hashed are the bytes
//! stored, whoever computes them.

use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgExecutor, PgPool};
use tokio::sync::watch;

/// Events hashed per sealer transaction.
const SEAL_BATCH: i32 = 10_000;

/// Hashes and seals up to `max` final events not sealed yet (all of them:
/// `None`); answers how many. Another process sealing at the same moment: 0.
/// This is the one computation of stream hashes and seals (`seal_log`):
/// the sealer, export and import all go through it.
async fn seal_log(conn: impl PgExecutor<'_>, max: Option<i32>) -> Result<u64, sqlx::Error> {
    let sealed: i64 = sqlx::query_scalar("SELECT seal_log($1)").bind(max).fetch_one(conn).await?;
    Ok(sealed as u64)
}

/// Hashes and seals up to `max` final events not sealed yet; answers how
/// many. Another process sealing at the same moment: 0.
pub async fn seal(pool: &PgPool, max: i32) -> Result<u64, sqlx::Error> {
    seal_log(pool, Some(max)).await
}

/// Seals the log up to its frontier, waiting a little (10 s) for a sealer
/// of another process that is at it already; answers whether it got there
/// (if not, the newest events stay unsealed for now).
pub async fn seal_to_frontier(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let mut tries = 0;
    while tries < 100 {
        // A batch at a time: one call holds its batch's hashes in memory.
        if seal_log(pool, Some(SEAL_BATCH)).await? == SEAL_BATCH as u64 {
            continue;
        }
        tries += 1;
        let done: bool =
            sqlx::query_scalar("SELECT coalesce((SELECT max(up_to) FROM log_seals), 0) >= events_frontier()").fetch_one(pool).await?;
        if done {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// Seals, inside the caller's transaction, until `events` more events are
/// hashed, trying `tries` times 50 ms apart while another process's sealer
/// holds the lock; answers whether it got them all.
pub(crate) async fn seal_within(conn: &mut PgConnection, events: u64, tries: u32) -> Result<bool, sqlx::Error> {
    let (mut sealed, mut tried) = (0, 0);
    while tried < tries {
        // A batch at a time: one call holds its batch's hashes in memory.
        let now = seal_log(&mut *conn, Some(SEAL_BATCH)).await?;
        sealed += now;
        if sealed >= events {
            return Ok(true);
        }
        if now < SEAL_BATCH as u64 {
            tried += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(false)
}

/// The latest seal: the position it covers and its value (none before the
/// first event is sealed).
pub async fn latest_seal(conn: impl PgExecutor<'_>) -> Result<Option<(u64, Vec<u8>)>, sqlx::Error> {
    let seal: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT up_to, seal FROM log_seals ORDER BY up_to DESC LIMIT 1").fetch_optional(conn).await?;
    Ok(seal.map(|(up_to, seal)| (up_to as u64, seal)))
}

/// Seals what has become final, about once a second, until `shutdown`.
pub async fn run_sealer(pool: PgPool, mut shutdown: watch::Receiver<bool>) {
    // Exported from the first scrape, before a backlog is sealed.
    metrics::counter!("storekeeper_log_sealed_events_total").increment(0);
    let head = sqlx::query_scalar::<_, i64>("SELECT events_frontier()").fetch_one(&pool);
    tokio::select! {
        _ = shutdown.changed() => return,
        head = head => if let Ok(head) = head {
            metrics::gauge!("storekeeper_log_head_position").set(head as f64);
        },
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A database that is gone must not hold shutdown up.
        let sealed = tokio::select! {
            _ = shutdown.changed() => return,
            sealed = seal(&pool, SEAL_BATCH) => sealed,
        };
        match sealed {
            // More waiting: straight on.
            Ok(n) if n as i32 == SEAL_BATCH => continue,
            Ok(n) => {
                if n > 0 {
                    metrics::counter!("storekeeper_log_sealed_events_total").increment(n);
                }
                // Where the log's readers can go: what each consumer's
                // position is compared with for its lag in events.
                if let Ok(head) = sqlx::query_scalar::<_, i64>("SELECT events_frontier()").fetch_one(&pool).await {
                    metrics::gauge!("storekeeper_log_head_position").set(head as f64);
                }
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => tracing::error!(
                error = %e,
                "the log's hashes run past its last seal: seals were removed; `storekeeper events verify` names where. Sealing stops until it is looked into"
            ),
            Err(e) => tracing::warn!(error = %e, "sealing the log failed; trying again"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What `verify` found.
#[derive(Debug)]
pub struct LogVerification {
    /// The first problem by position, and what it is.
    pub problem: Option<(u64, String)>,
    /// Sealed events checked against their hashes.
    pub checked: u64,
    /// Events the sealer has not reached yet (not checked).
    pub unsealed: u64,
    /// The latest seal: the position it covers and its hex value, worth
    /// keeping outside the database.
    pub seal: Option<(u64, String)>,
    pub seconds: f64,
}

/// Checks every sealed event against its hash and its stream's chain, and
/// every seal against the hashes before it.
pub async fn verify(pool: &PgPool) -> Result<LogVerification, sqlx::Error> {
    let started = Instant::now();
    // One snapshot for the whole check: seals and hashes the sealer commits
    // meanwhile are not half seen.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
    let (problem_at, problem, checked, unsealed): (Option<i64>, Option<String>, i64, i64) =
        sqlx::query_as("SELECT problem_at, problem, checked, unsealed FROM verify_log()").fetch_one(&mut *tx).await?;
    let seal = latest_seal(&mut *tx).await?;
    tx.rollback().await?;
    Ok(LogVerification {
        problem: problem_at.map(|at| (at as u64, problem.unwrap_or_default())),
        checked: checked as u64,
        unsealed: unsealed as u64,
        seal: seal.map(|(at, seal)| (at, hex::encode(seal))),
        seconds: started.elapsed().as_secs_f64(),
    })
}
