//! Running roles from the command line: secrets checked (with the
//! development fallback only where it is safe), listeners bound before
//! anything starts, the database opened, then `App::start` until SIGTERM,
//! within the 10 s an orchestrator gives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cli::{AppendArgs, DatabaseArgs, KafkaArgs, LogArgs, LogFormat, VaultArgs};
use crate::{App, Config, EventLogConfig, Listeners, Roles, database};

/// Development secrets: accepted only by `serve` on a loopback address,
/// and announced in its log.
pub const DEV_JWT_SECRET: &str = "storekeeper-development-jwt-secret-not-for-production";
const DEV_WEBHOOK_SECRET: &str = "storekeeper-development-webhook-secret-not-for-production";

/// What a role-running command was given.
pub struct RoleArgs {
    pub roles: Roles,
    /// `serve`: may start a private PostgreSQL, and use development
    /// secrets on loopback.
    pub embedded: bool,
    pub db: DatabaseArgs,
    /// The log's store, its key encryption key, its committers.
    pub event_log: EventLogConfig,
    pub command_addr: Option<SocketAddr>,
    pub query_addr: Option<SocketAddr>,
    /// Where the console sends its commands, if not to this host.
    pub console_command_url: Option<String>,
    pub jwt_secret: Option<String>,
    pub webhook_secret: Option<String>,
    pub kafka: Option<KafkaArgs>,
    pub log_format: LogFormat,
    pub metrics_addr: Option<SocketAddr>,
    /// What each API server takes at once.
    pub limits: edge::serve::Limits,
}

impl RoleArgs {
    /// `roles` on `db`, with nothing else configured.
    pub fn new(roles: Roles, db: DatabaseArgs, log: LogArgs, vault: VaultArgs, append: Option<AppendArgs>) -> Self {
        RoleArgs {
            roles,
            embedded: false,
            event_log: crate::cli::event_log(&db, &vault, append.as_ref()),
            db,
            command_addr: None,
            query_addr: None,
            console_command_url: None,
            jwt_secret: None,
            webhook_secret: None,
            kafka: None,
            log_format: log.log_format,
            metrics_addr: log.metrics_addr,
            limits: edge::serve::Limits::default(),
        }
    }
}

/// Runs the roles until SIGTERM or Ctrl-C.
pub async fn run(args: RoleArgs) -> Result<()> {
    let _telemetry = init_tracing(args.log_format, args.roles)?;
    let loopback = args.command_addr.is_none_or(|a| a.ip().is_loopback()) && args.query_addr.is_none_or(|a| a.ip().is_loopback());
    let dev = args.embedded && loopback;
    let roles = args.roles;
    let jwt_secret =
        if roles.command || roles.query { secret(args.jwt_secret, "STOREKEEPER_JWT_SECRET", DEV_JWT_SECRET, dev)? } else { String::new() };
    let webhook_secret =
        if roles.command { secret(args.webhook_secret, "STOREKEEPER_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET, dev)? } else { String::new() };

    // Bind first: a taken port should fail before anything else starts.
    let mut listeners = Listeners::default();
    if let Some(addr) = args.command_addr {
        listeners.command = Some(bind(addr, "command API", "STOREKEEPER_COMMAND_ADDR").await?);
    }
    if let Some(addr) = args.query_addr {
        listeners.query = Some(bind(addr, "query API", "STOREKEEPER_QUERY_ADDR").await?);
    }
    if let Some(addr) = args.metrics_addr {
        listeners.metrics = Some(bind(addr, "metrics", "STOREKEEPER_METRICS_ADDR").await?);
    }
    let (cluster, pool) = args.db.open(args.embedded).await?;
    let config = Config {
        roles,
        jwt_secret,
        webhook_secret,
        index_dir: database::index_dir(&args.db.data_dir),
        kafka: args.kafka.as_ref().and_then(KafkaArgs::config),
        event_log: args.event_log,
        limits: args.limits,
        console_command_url: args.console_command_url,
    };
    let result = match App::start(config, pool.clone(), listeners).await {
        Ok(app) => app.run_until(shutdown_signal()).await,
        Err(e) => Err(e),
    };
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_millis(500), pool.close()).await.ok();
    if let Some(mut cluster) = cluster {
        // Whatever is left of SIGTERM's 10 s, less a margin for the exit.
        let since_signal = SIGNALLED.get().map_or(Duration::ZERO, |at| stopping.duration_since(*at));
        let budget = EXIT_WITHIN.saturating_sub(since_signal).saturating_sub(Duration::from_millis(1500));
        let stopped = tokio::task::spawn_blocking(move || cluster.stop_within(budget)).await;
        if let Ok(Err(e)) = stopped {
            tracing::warn!(error = %e, "the private PostgreSQL did not stop in time; stopped it immediately");
        }
    }
    result
}

/// Logs, and spans to the OTLP collector when one is configured, named
/// after the roles this process runs.
fn init_tracing(format: LogFormat, roles: Roles) -> Result<telemetry::Guard> {
    let service = match roles {
        Roles { command: true, query: true, .. } => "storekeeper",
        Roles { command: true, .. } => "storekeeper-command-api",
        Roles { query: true, .. } => "storekeeper-query-api",
        Roles { relay: true, .. } => "storekeeper-relay",
        _ => "storekeeper-projections",
    };
    // tantivy logs every commit at INFO: quiet by default.
    let guard = telemetry::init(matches!(format, LogFormat::Json), "info,sqlx=warn,tower_http=warn,tantivy=warn", service)?;
    Ok(guard)
}

/// A secret from configuration, or the development default when allowed.
fn secret(given: Option<String>, name: &str, dev_default: &str, dev_allowed: bool) -> Result<String> {
    match given {
        Some(s) if s.len() >= 16 => Ok(s),
        Some(_) => bail!("{name} must be at least 16 characters"),
        None if dev_allowed => {
            tracing::warn!("{name} is not set: using the built-in DEVELOPMENT secret. Set {name} before exposing this server.");
            Ok(dev_default.to_owned())
        }
        None => bail!("{name} must be set (a development default exists only for `storekeeper serve` on a loopback address)"),
    }
}

async fn bind(addr: SocketAddr, what: &str, variable: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} (is another server using it? set {variable})"))
}

/// SIGTERM to exit, whatever is still running.
const EXIT_WITHIN: Duration = Duration::from_secs(10);
/// When the shutdown signal arrived.
static SIGNALLED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    let _ = SIGNALLED.set(Instant::now());
    tracing::info!("shutting down: draining in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::secret;

    #[test]
    fn a_secret_is_long_enough_given_or_the_development_one_where_allowed() {
        assert_eq!(secret(Some("0123456789abcdef".into()), "S", "dev", false).unwrap(), "0123456789abcdef");
        let short = secret(Some("short".into()), "S", "dev", true).unwrap_err();
        assert_eq!(short.to_string(), "S must be at least 16 characters");
        assert_eq!(secret(None, "S", "dev", true).unwrap(), "dev");
        assert!(secret(None, "S", "dev", false).unwrap_err().to_string().starts_with("S must be set"));
    }
}
