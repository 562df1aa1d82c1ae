//! `storekeeper`: one binary for every role. Configuration comes from flags
//! with environment fallbacks; `anyhow` is used here, at the edge, only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod events;
mod seed;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use command_api::process_manager::ProcessManager;
use command_api::{AppState, CommandService, JwtKeys, Role};
use eventlog::PgEventLog;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

/// Development secrets: accepted only by `serve` on a loopback address,
/// and announced in its log.
const DEV_JWT_SECRET: &str = "storekeeper-development-jwt-secret-not-for-production";
const DEV_WEBHOOK_SECRET: &str = "storekeeper-development-webhook-secret-not-for-production";

#[derive(Parser)]
#[command(name = "storekeeper", version, about = "Event-sourced CQRS commerce backend")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything in one process: command API, query API, projections and
    /// the order process manager, on DATABASE_URL or a private PostgreSQL it
    /// starts itself.
    Serve(ServeArgs),
    /// Only the command API, on DATABASE_URL.
    CommandApi(ServeArgs),
    /// Only the query API, on DATABASE_URL.
    QueryApi(ServeArgs),
    /// Publishes the log to Kafka (KAFKA_BROKERS), in commit order, key =
    /// stream id; creates the topic on start.
    Relay(ServeArgs),
    /// The projection workers and the order process manager, on
    /// DATABASE_URL; or `list` their states, `retry NAME`'s parked events,
    /// or `rebuild NAME` beside its live tables.
    Projections {
        #[command(subcommand)]
        action: Option<ProjectionsAction>,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// The log as JSON Lines: `export` it, or `import` an export into an
    /// empty log.
    Events {
        #[command(subcommand)]
        action: EventsAction,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Demo and benchmark data through the command service, with a
    /// progress bar.
    Seed {
        /// Products to add.
        #[arg(long, default_value_t = 100)]
        products: usize,
        /// Customers to register.
        #[arg(long, default_value_t = 20)]
        customers: usize,
        /// Orders to place (random customers and products).
        #[arg(long, default_value_t = 50)]
        orders: usize,
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Mints a JWT signed with the configured secret and prints it alone.
    Token(TokenArgs),
}

#[derive(Subcommand, Clone)]
enum EventsAction {
    /// Writes every event, one envelope per line, in global order.
    Export {
        /// Where to write; `-` or absent: stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Appends an export's events to an empty log.
    Import {
        /// Where to read; `-` or absent: stdin.
        #[arg(long)]
        input: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// PostgreSQL for the event log. Unset: `serve` starts a private cluster
    /// under the data directory from the installed server binaries.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where `serve` keeps its private PostgreSQL cluster.
    #[arg(long, env = "STOREKEEPER_DATA_DIR", default_value = "./.storekeeper")]
    data_dir: PathBuf,
    /// Address of the command API.
    #[arg(long, env = "STOREKEEPER_COMMAND_ADDR", default_value = "127.0.0.1:8080")]
    command_addr: SocketAddr,
    /// Address of the query API.
    #[arg(long, env = "STOREKEEPER_QUERY_ADDR", default_value = "127.0.0.1:8081")]
    query_addr: SocketAddr,
    /// HS256 secret for bearer tokens. `serve` on loopback falls back to a
    /// development secret and says so.
    #[arg(long, env = "STOREKEEPER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// HMAC-SHA256 secret of the payment webhook. Same fallback rule.
    #[arg(long, env = "STOREKEEPER_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Kafka bootstrap servers. When set, `serve` also runs the relay.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The topic the relay publishes the log to.
    #[arg(long, env = "STOREKEEPER_KAFKA_TOPIC", default_value = "storekeeper.events")]
    kafka_topic: String,
    /// Partitions of that topic when the relay creates it.
    #[arg(long, env = "STOREKEEPER_KAFKA_PARTITIONS", default_value_t = 6)]
    kafka_partitions: i32,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "STOREKEEPER_DB_POOL_SIZE", default_value_t = 40)]
    db_pool_size: u32,
    /// Log format.
    #[arg(long, env = "STOREKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand, Clone)]
enum ProjectionsAction {
    /// Every projection's version, position, lag, state and parked events.
    List,
    /// Applies a projection's parked (dead-lettered) events again.
    Retry { name: String },
    /// Rebuilds a projection from the log beside its live tables; the
    /// running workers build it and swap it in once it has caught up.
    Rebuild { name: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
struct TokenArgs {
    #[arg(long, value_enum)]
    role: TokenRole,
    /// Subject: an admin's name, or the customer's id.
    #[arg(long)]
    sub: String,
    /// Lifetime in hours.
    #[arg(long, default_value_t = 24)]
    ttl_hours: i64,
    #[arg(long, env = "STOREKEEPER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TokenRole {
    Admin,
    Customer,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Serve(args) => serve(args, Roles::ALL).await,
            Cmd::CommandApi(args) => serve(args, Roles { command: true, ..Roles::NONE }).await,
            Cmd::QueryApi(args) => serve(args, Roles { query: true, ..Roles::NONE }).await,
            Cmd::Relay(args) if args.kafka_brokers.is_none() => Err(anyhow::anyhow!("KAFKA_BROKERS must be set for `storekeeper relay`")),
            Cmd::Relay(args) => serve(args, Roles { relay: true, ..Roles::NONE }).await,
            Cmd::Projections { action: None, args } => serve(args, Roles { workers: true, ..Roles::NONE }).await,
            Cmd::Projections { action: Some(action), args } => projections_admin(args, action).await,
            Cmd::Events { action, args } => events(args, action).await,
            Cmd::Seed { products, customers, orders, args } => {
                let (_cluster, pool) = database(&args, false).await?;
                let service = CommandService::new(Arc::new(PgEventLog::new(pool)));
                let (p, c, o) = seed::seed(&service, seed::Sizes { products, customers, orders }).await?;
                println!("seeded {p} products, {c} customers and {o} orders");
                Ok(())
            }
            Cmd::Token(args) => token(args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storekeeper: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn events(args: ServeArgs, action: EventsAction) -> Result<()> {
    let (_cluster, pool) = database(&args, false).await?;
    let log = PgEventLog::new(pool.clone());
    let is_std = |path: &Option<PathBuf>| path.as_ref().is_none_or(|p| p.as_os_str() == "-");
    match action {
        EventsAction::Export { output } => {
            let mut out: Box<dyn std::io::Write> = if is_std(&output) {
                Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
            } else {
                let path = output.expect("checked above");
                Box::new(std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?))
            };
            let written = events::export(&log, &mut out).await?;
            eprintln!("storekeeper: exported {written} events");
        }
        EventsAction::Import { input } => {
            let read: Box<dyn std::io::BufRead> = if is_std(&input) {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                let path = input.expect("checked above");
                Box::new(std::io::BufReader::new(std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?))
            };
            let imported = events::import(&log, &pool, read).await?;
            eprintln!("storekeeper: imported {imported} events");
        }
    }
    Ok(())
}

fn token(args: TokenArgs) -> Result<()> {
    let secret = match args.jwt_secret {
        Some(secret) => secret,
        None => {
            eprintln!("storekeeper: STOREKEEPER_JWT_SECRET is not set; signing with the development secret that `serve` uses on loopback");
            DEV_JWT_SECRET.to_owned()
        }
    };
    let role = match args.role {
        TokenRole::Admin => Role::Admin,
        TokenRole::Customer => {
            uuid::Uuid::parse_str(&args.sub).context("a customer token's --sub must be the customer id (a UUID)")?;
            Role::Customer
        }
    };
    println!("{}", JwtKeys::new(secret.as_bytes()).mint(&args.sub, role, chrono::Duration::hours(args.ttl_hours)));
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

async fn connect(url: &str, pool_size: u32) -> Result<PgPool> {
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
async fn embedded_postgres(data_dir: PathBuf) -> Result<(pgcluster::Cluster, String)> {
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}

/// Which parts of the system a process runs.
#[derive(Clone, Copy)]
struct Roles {
    command: bool,
    query: bool,
    /// Projections and the order process manager.
    workers: bool,
    /// The Kafka relay (also inside `serve` when KAFKA_BROKERS is set).
    relay: bool,
    /// Only `serve`: may start its own PostgreSQL and use development secrets.
    embedded: bool,
}

impl Roles {
    const ALL: Roles = Roles { command: true, query: true, workers: true, relay: true, embedded: true };
    const NONE: Roles = Roles { command: false, query: false, workers: false, relay: false, embedded: false };
}

async fn bind(addr: SocketAddr, what: &str, variable: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} (is another server using it? set {variable})"))
}

/// Connects to DATABASE_URL (or, for `serve`, the private cluster) and
/// applies every migration.
async fn database(args: &ServeArgs, embedded: bool) -> Result<(Option<pgcluster::Cluster>, PgPool)> {
    let (cluster, url) = match &args.database_url {
        Some(url) => (None, url.clone()),
        None if embedded => {
            let (cluster, url) = embedded_postgres(args.data_dir.clone()).await?;
            (Some(cluster), url)
        }
        // Beside a `serve` that owns its private cluster, use that.
        None => match std::fs::read_to_string(args.data_dir.join("postgres/url")) {
            Ok(url) if !url.trim().is_empty() => (None, url.trim().to_owned()),
            _ => bail!("DATABASE_URL must be set (only `storekeeper serve` starts its own PostgreSQL)"),
        },
    };
    let pool = connect(&url, args.db_pool_size).await?;
    eventlog::migrate(&pool).await.context("migrate the event log")?;
    command_api::migrate(&pool).await.context("migrate the command API tables")?;
    projections::migrate(&pool).await.context("migrate the read models")?;
    Ok((cluster, pool))
}

async fn projections_admin(args: ServeArgs, action: ProjectionsAction) -> Result<()> {
    let (_cluster, pool) = database(&args, false).await?;
    match action {
        ProjectionsAction::List => {
            println!("{:<12} {:>7} {:>20} {:>10} {:>10} {:>9} {:>7}", "NAME", "VERSION", "POSITION", "LAG", "LAG (s)", "STATE", "PARKED");
            for p in projections::status(&pool).await.context("read projection states")? {
                println!(
                    "{:<12} {:>7} {:>20} {:>10} {:>10.1} {:>9} {:>7}",
                    p.name, p.version, p.position, p.lag_events, p.lag_seconds, p.state, p.parked
                );
                if let Some(error) = p.last_error {
                    println!("             last error: {error}");
                }
            }
        }
        ProjectionsAction::Retry { name } => {
            let projection =
                projections::all().into_iter().find(|p| p.name() == name).with_context(|| format!("no projection is called {name}"))?;
            let log = PgEventLog::new(pool.clone());
            let applied = projections::retry_parked(&pool, &log, &*projection).await.context("retry parked events")?;
            println!("{applied} parked event(s) of {name} applied");
        }
        ProjectionsAction::Rebuild { name } => {
            if !projections::request_rebuild(&pool, &name).await.context("request the rebuild")? {
                bail!("no projection called {name} has run against this database");
            }
            println!(
                "rebuild of {name} requested: the running workers build it beside the live tables and swap it in (watch `storekeeper projections list`)"
            );
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs, roles: Roles) -> Result<()> {
    init_tracing(args.log_format);
    let loopback = args.command_addr.ip().is_loopback() && args.query_addr.ip().is_loopback();
    let dev = roles.embedded && loopback;
    let jwt_secret = if roles.command || roles.query {
        secret(args.jwt_secret.clone(), "STOREKEEPER_JWT_SECRET", DEV_JWT_SECRET, dev)?
    } else {
        String::new()
    };
    let webhook_secret = if roles.command {
        secret(args.webhook_secret.clone(), "STOREKEEPER_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET, dev)?
    } else {
        String::new()
    };

    // Bind first: a taken port should fail before anything else starts.
    let command_listener = match roles.command {
        true => Some(bind(args.command_addr, "command API", "STOREKEEPER_COMMAND_ADDR").await?),
        false => None,
    };
    let query_listener = match roles.query {
        true => Some(bind(args.query_addr, "query API", "STOREKEEPER_QUERY_ADDR").await?),
        false => None,
    };
    let (cluster, pool) = database(&args, roles.embedded).await?;

    let log: Arc<dyn eventlog::EventLog> = Arc::new(PgEventLog::new(pool.clone()));
    let service = CommandService::new(log.clone());
    let jwt = JwtKeys::new(jwt_secret.as_bytes());

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
    if roles.relay
        && let Some(brokers) = &args.kafka_brokers
    {
        kafka::ensure_topic(brokers, &args.kafka_topic, args.kafka_partitions)
            .await
            .with_context(|| format!("create the topic {} on {brokers}", args.kafka_topic))?;
        let relay = kafka::Relay::new(log.clone(), pool.clone(), brokers, &args.kafka_topic).context("start the Kafka producer")?;
        let stop = stop_rx.clone();
        tracing::info!(topic = %args.kafka_topic, "relay publishing the log to Kafka");
        tasks.spawn(async move { relay.run(stop).await.context("Kafka relay") });
    }
    // With Kafka, every consumer reads the topic the relay fills, each in
    // its own consumer group; without, each tails the log in process.
    let sources = args.kafka_brokers.as_deref().map(|brokers| kafka::sources(brokers, &args.kafka_topic, log.clone()));
    if roles.workers {
        let manager = match &sources {
            Some(sources) => ProcessManager::new(service.clone(), pool.clone()).with_partitioned_source(sources.clone()),
            None => ProcessManager::new(service.clone(), pool.clone()),
        };
        let stop = stop_rx.clone();
        tasks.spawn(async move { manager.run(stop).await.context("order process manager") });
        let runner = match &sources {
            Some(sources) => projections::Runner::with_sources(pool.clone(), projections::all(), sources.clone()),
            None => projections::Runner::new(pool.clone(), log.clone(), projections::all()),
        };
        let stop = stop_rx.clone();
        tasks.spawn(async move {
            runner.run(stop).await;
            Ok(())
        });
    }
    if let Some(listener) = command_listener {
        let state = AppState { service: service.clone(), pool: pool.clone(), jwt: jwt.clone(), webhook_secret: webhook_secret.into() };
        let mut stop = stop_rx.clone();
        tracing::info!(addr = %args.command_addr, "command API listening");
        tasks.spawn(async move {
            axum::serve(listener, command_api::router(state))
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("command API server")
        });
        let pool = pool.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                match command_api::idempotency::purge_expired(&pool).await {
                    Ok(n) if n > 0 => tracing::info!(purged = n, "expired idempotency keys removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
                }
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
            }
        });
    }
    if let Some(listener) = query_listener {
        // Each query API node keeps its own product index, fed by its own indexer.
        let index_dir = args.data_dir.join("index");
        let search = projections::search::SearchIndex::open(&index_dir)
            .with_context(|| format!("open the product index in {}", index_dir.display()))?;
        let index_sources = sources.clone().unwrap_or_else(|| eventlog::in_process(log.clone(), 2000));
        let indexer = search.clone().run(log.clone(), index_sources, stop_rx.clone());
        tasks.spawn(async move {
            indexer.await;
            Ok(())
        });
        let state = query_api::AppState::new(pool.clone(), log.clone(), jwt.clone(), search);
        let mut stop = stop_rx.clone();
        tracing::info!(addr = %args.query_addr, "query API listening");
        tasks.spawn(async move {
            axum::serve(listener, query_api::router(state))
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("query API server")
        });
    }

    // Run until a signal, or until a part fails.
    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a part of the server stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        },
    };
    // Servers drain in-flight requests, workers finish their batch.
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::error!("{e:#}");
        }
    }
    pool.close().await;
    if let Some(mut cluster) = cluster {
        tokio::task::spawn_blocking(move || cluster.stop()).await.ok();
    }
    result
}
