//! How far projections have got: their progress through the log (for
//! consistency tokens and rebuild take-over), their lag, and the status
//! shown by `projections list` and the query API. Read-only.

use eventlog::Progress;
use schemars::JsonSchema;
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

/// Events applied per second lately: a moving average over batches, each
/// sample being a batch's events over the time since the one before (so
/// reading the log counts, and so does waiting for traffic).
#[derive(Default)]
pub(crate) struct Rate {
    since: Option<std::time::Instant>,
    pub(crate) per_second: f64,
}

impl Rate {
    pub(crate) fn start(&mut self) {
        self.since = Some(std::time::Instant::now());
    }

    pub(crate) fn observe(&mut self, events: usize) -> f64 {
        let now = std::time::Instant::now();
        if let Some(since) = self.since {
            let sample = events as f64 / now.duration_since(since).as_secs_f64().max(1e-3);
            self.per_second = if self.per_second == 0.0 { sample } else { 0.8 * self.per_second + 0.2 * sample };
        }
        self.since = Some(now);
        self.per_second
    }
}

/// One projection's state, for `projections list` and the query API.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "Projection")]
pub struct ProjectionStatus {
    pub name: String,
    /// What follows the log under this name.
    pub kind: ConsumerKind,
    pub version: ProjectionVersion,
    pub position: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    #[schemars(with = "ProjectionState")]
    pub state: String,
    pub parked: u64,
    pub last_error: Option<String>,
    /// Events applied per second lately (a moving average over batches).
    pub events_per_second: f64,
    /// Seconds left to catch up at that rate: 0 when caught up, null while
    /// there is no rate to go by.
    pub eta_seconds: Option<f64>,
}

/// What a projection is doing.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ProjectionState {
    /// Following the log.
    Running,
    /// Following the log with events parked (`parked` says how many).
    Degraded,
    /// Building a new version beside the live one.
    Rebuilding,
    /// Stopped on an error (`last_error`).
    Failed,
}

/// The consumers of the log listed beside one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    /// A read model in PostgreSQL.
    ReadModel,
    /// This node's product search index.
    Index,
    /// The order process, which turns events into commands.
    Process,
}

/// A read model's version number, or the search index's version name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ProjectionVersion {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for ProjectionVersion {
    /// As the number or the name would show, widths and all.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProjectionVersion::Number(n) => std::fmt::Display::fmt(n, f),
            ProjectionVersion::Name(name) => f.pad(name),
        }
    }
}

/// How long `lag_events` take at `per_second`.
pub fn eta(lag_events: u64, per_second: f64) -> Option<f64> {
    match lag_events {
        0 => Some(0.0),
        _ if per_second > 0.0 => Some(lag_events as f64 / per_second),
        _ => None,
    }
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
        events_per_second: f64,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.projection, c.version, c.position, c.state, c.last_error,
                -- A rate only while batches come: idle for 10 s, none.
                CASE WHEN c.updated_at > now() - interval '10 seconds' THEN c.events_per_second ELSE 0 END AS events_per_second,
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
            kind: ConsumerKind::ReadModel,
            version: ProjectionVersion::Number(r.version),
            position: r.position as u64,
            lag_events,
            lag_seconds,
            state: if r.parked > 0 && r.state == "running" { "degraded".into() } else { r.state },
            parked: r.parked as u64,
            last_error: r.last_error,
            events_per_second: r.events_per_second,
            eta_seconds: eta(lag_events, r.events_per_second),
        });
    }
    statuses.extend(process_status(pool).await?);
    Ok(statuses)
}

/// How many entries `consumer` has parked, and the newest one's error: for
/// the consumers whose state is not a row of `projection_checkpoints` (the
/// index, the order process), whose state is `degraded` while any is.
pub(crate) async fn parked(pool: &PgPool, consumer: &str) -> Result<(u64, Option<String>), sqlx::Error> {
    let (count, last_error): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), (SELECT error FROM dead_letters WHERE projection = $1 ORDER BY parked_at DESC LIMIT 1)
           FROM dead_letters WHERE projection = $1",
    )
    .bind(consumer)
    .fetch_one(pool)
    .await?;
    Ok((count as u64, last_error))
}

/// `running`, or `degraded` while anything is parked.
pub(crate) fn state_with(parked: u64) -> String {
    if parked > 0 { "degraded" } else { "running" }.to_owned()
}

/// The order process's state, once it has run against this database: its
/// checkpoint, and the steps it parked (a parked step leaves its order
/// where it was until a retry takes it).
async fn process_status(pool: &PgPool) -> Result<Option<ProjectionStatus>, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(crate::names::ORDER_PROCESS)
        .fetch_optional(pool)
        .await?;
    let Some(position) = position else { return Ok(None) };
    let (parked, last_error) = parked(pool, crate::names::ORDER_PROCESS).await?;
    let (lag_events, lag_seconds) = lag(pool, position as u64).await?;
    Ok(Some(ProjectionStatus {
        name: crate::names::ORDER_PROCESS.to_owned(),
        kind: ConsumerKind::Process,
        version: ProjectionVersion::Number(1),
        position: position as u64,
        lag_events,
        lag_seconds,
        state: state_with(parked),
        parked,
        last_error,
        events_per_second: 0.0,
        eta_seconds: eta(lag_events, 0.0),
    }))
}
