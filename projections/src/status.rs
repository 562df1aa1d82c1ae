//! How far projections have got: their progress through the log (for
//! consistency tokens and rebuild take-over), their lag, and the status
//! shown by `projections list` and the query API. Read-only.

use eventlog::Progress;
use serde::Serialize;
use sqlx::PgPool;

/// How far each of `names` has applied the log (`None`: it never ran).
pub async fn progress(conn: impl sqlx::PgExecutor<'_>, names: &[&str]) -> Result<Vec<Option<Progress>>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        projection: String,
        position: i64,
        partition: Option<i32>,
        partitions: Option<i32>,
        partition_position: Option<i64>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.projection, c.position, p.partition, p.partitions, p.position AS partition_position
           FROM projection_checkpoints c LEFT JOIN consumer_partitions p ON p.consumer = c.projection
          WHERE c.projection = ANY($1)",
    )
    .bind(names)
    .fetch_all(conn)
    .await?;
    Ok(names
        .iter()
        .map(|name| {
            let mut found = None::<Progress>;
            for row in rows.iter().filter(|r| r.projection == *name) {
                let progress = found.get_or_insert_with(|| Progress { position: row.position as u64, ..Progress::default() });
                if let (Some(partition), Some(partitions), Some(at)) = (row.partition, row.partitions, row.partition_position) {
                    progress.partitions.insert(partition, at as u64);
                    progress.partition_count = partitions;
                }
            }
            found
        })
        .collect())
}

/// One projection's state, for `projections list` and the query API.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub version: i32,
    pub position: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub state: String,
    pub parked: u64,
    pub last_error: Option<String>,
}

/// Lag is counted event by event up to this many; beyond, it is reported
/// as this many, so a status call stays cheap however far behind.
pub const LAG_COUNTED_UP_TO: i64 = 1_000_000;

/// How far the log runs ahead of `position`: events (counted up to
/// `LAG_COUNTED_UP_TO`) and the age of the oldest one not applied.
pub async fn lag(pool: &PgPool, position: u64) -> Result<(u64, f64), sqlx::Error> {
    let (events, seconds): (i64, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT FROM events WHERE global_position > $1 LIMIT $2) behind),
                (SELECT extract(epoch FROM now() - recorded_at)::float8 FROM events WHERE global_position > $1
                  ORDER BY global_position LIMIT 1)",
    )
    .bind(position as i64)
    .bind(LAG_COUNTED_UP_TO)
    .fetch_one(pool)
    .await?;
    Ok((events as u64, seconds.unwrap_or(0.0).max(0.0)))
}

/// The state of every projection that has run against this database.
pub async fn status(pool: &PgPool) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        projection: String,
        version: i32,
        position: i64,
        state: String,
        last_error: Option<String>,
        parked: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.projection, c.version, c.position, c.state, c.last_error,
                (SELECT count(*) FROM dead_letters d WHERE d.projection = c.projection) AS parked
           FROM projection_checkpoints c ORDER BY c.projection",
    )
    .fetch_all(pool)
    .await?;
    let mut statuses = Vec::with_capacity(rows.len());
    for r in rows {
        let (lag_events, lag_seconds) = lag(pool, r.position as u64).await?;
        statuses.push(ProjectionStatus {
            name: r.projection,
            version: r.version,
            position: r.position as u64,
            lag_events,
            lag_seconds,
            state: if r.parked > 0 && r.state == "running" { "degraded".into() } else { r.state },
            parked: r.parked as u64,
            last_error: r.last_error,
        });
    }
    Ok(statuses)
}
