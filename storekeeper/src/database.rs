//! Which PostgreSQL: `DATABASE_URL`, or the private cluster `serve` starts
//! (and that other commands beside it find). Every migration is applied on
//! connect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Applies every crate's migrations, in dependency order.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    eventlog::migrate(pool).await.context("migrate the event log")?;
    commands::migrate(pool).await.context("migrate the command core's tables")?;
    projections::migrate(pool).await.context("migrate the read models")?;
    Ok(())
}

pub async fn connect(url: &str, pool_size: u32) -> Result<PgPool> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("DATABASE_URL is not a valid PostgreSQL URL (postgres://user:password@host:port/database)");
    }
    let options: PgConnectOptions = url.parse().context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let target = format!("{}:{}/{}", options.get_host(), options.get_port(), options.get_database().unwrap_or("(default)"));
    // One plain connection first: its error says what is wrong, where the
    // pool would only say it timed out.
    let probe = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(&options))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))?;
    probe.close().await.ok();
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {target}"))
}

/// Starts (or attaches to) the private cluster and makes sure the
/// `storekeeper` database exists.
pub async fn embedded_postgres(data_dir: &Path) -> Result<(pgcluster::Cluster, String)> {
    let dir = data_dir.join("postgres");
    tracing::info!("DATABASE_URL is not set: using a private PostgreSQL cluster in {}", dir.display());
    let cluster = tokio::task::spawn_blocking(move || pgcluster::Cluster::start(&pgcluster::Options::new(dir)))
        .await
        .context("starting PostgreSQL")?
        .context("cannot start the private PostgreSQL cluster")?;
    let admin = connect(&cluster.url("postgres"), 1).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = 'storekeeper')")
        .fetch_one(&admin)
        .await
        .context("inspect the private cluster")?;
    if !exists {
        sqlx::query("CREATE DATABASE storekeeper").execute(&admin).await.context("create the storekeeper database")?;
    }
    admin.close().await;
    let url = cluster.url("storekeeper");
    // For psql and other tools: `psql "$(cat .storekeeper/postgres/url)"`.
    let url_file = data_dir.join("postgres/url");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&url_file)
            .with_context(|| format!("write {}", url_file.display()))?;
        writeln!(file, "{url}").with_context(|| format!("write {}", url_file.display()))?;
    }
    Ok((cluster, url))
}

/// Connects to `database_url` (or, when `embedded`, a private cluster it
/// starts; otherwise the one a `serve` beside it runs) and migrates.
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    pool_size: u32,
    embedded: bool,
) -> Result<(Option<pgcluster::Cluster>, PgPool)> {
    let (cluster, url) = match database_url {
        Some(url) => (None, url.to_owned()),
        None if embedded => {
            let (cluster, url) = embedded_postgres(data_dir).await?;
            (Some(cluster), url)
        }
        None => match std::fs::read_to_string(data_dir.join("postgres/url")) {
            Ok(url) if !url.trim().is_empty() => (None, url.trim().to_owned()),
            _ => bail!("DATABASE_URL must be set (only `storekeeper serve` starts its own PostgreSQL)"),
        },
    };
    let pool = connect(&url, pool_size).await?;
    migrate(&pool).await?;
    Ok((cluster, pool))
}

/// Where a query API node keeps its product index.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}
