//! `storekeeper`: one binary for every role. Parses the command line and
//! hands over to the library (`App::start` for the roles).

mod cli;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use cli::{AppendArgs, Cli, Cmd, DatabaseArgs, EventsAction, KafkaArgs, LogFormat, ProjectionsAction, TokenArgs, TokenRole, VaultArgs};
use edge::{JwtKeys, Role};
use eventlog::PgEventLog;
use storekeeper::{App, Config, Listeners, Roles, database};

/// mimalloc rather than glibc's allocator: the log's events are JSON
/// trees, allocated and freed by the thousand per batch by every
/// consumer, and glibc spent more of a catch-up's CPU in malloc and free
/// (a quarter of the machine, `perf record -a`) than in the code it served.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Development secrets: accepted only by `serve` on a loopback address,
/// and announced in its log.
const DEV_JWT_SECRET: &str = "storekeeper-development-jwt-secret-not-for-production";
const DEV_WEBHOOK_SECRET: &str = "storekeeper-development-webhook-secret-not-for-production";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime");
    let result = runtime.block_on(dispatch(cli.command));
    // Whatever is still running (a stuck task) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storekeeper: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What a role-running command was given.
struct RoleArgs {
    roles: Roles,
    embedded: bool,
    db: DatabaseArgs,
    event_log: storekeeper::EventLogConfig,
    command_addr: Option<SocketAddr>,
    query_addr: Option<SocketAddr>,
    jwt_secret: Option<String>,
    webhook_secret: Option<String>,
    kafka: Option<KafkaArgs>,
    log_format: LogFormat,
    metrics_addr: Option<SocketAddr>,
}

impl RoleArgs {
    /// `roles` on `db`, with nothing else configured.
    fn new(roles: Roles, db: DatabaseArgs, log: cli::LogArgs, vault: VaultArgs, append: Option<AppendArgs>) -> Self {
        RoleArgs {
            roles,
            embedded: false,
            event_log: cli::event_log(&db, &vault, append.as_ref()),
            db,
            command_addr: None,
            query_addr: None,
            jwt_secret: None,
            webhook_secret: None,
            kafka: None,
            log_format: log.log_format,
            metrics_addr: log.metrics_addr,
        }
    }
}

async fn dispatch(command: Cmd) -> Result<()> {
    let none = Roles::NONE;
    match command {
        Cmd::Serve { db, vault, append, command, query, jwt, webhook, kafka, log } => {
            run(RoleArgs {
                embedded: true,
                command_addr: Some(command.command_addr),
                query_addr: Some(query.query_addr),
                jwt_secret: jwt.jwt_secret,
                webhook_secret: webhook.webhook_secret,
                kafka: Some(kafka),
                ..RoleArgs::new(Roles::ALL, db, log, vault, Some(append))
            })
            .await
        }
        Cmd::CommandApi { db, vault, append, command, jwt, webhook, log } => {
            run(RoleArgs {
                command_addr: Some(command.command_addr),
                jwt_secret: jwt.jwt_secret,
                webhook_secret: webhook.webhook_secret,
                ..RoleArgs::new(Roles { command: true, ..none }, db, log, vault, Some(append))
            })
            .await
        }
        Cmd::QueryApi { db, vault, query, jwt, kafka, log } => {
            run(RoleArgs {
                query_addr: Some(query.query_addr),
                jwt_secret: jwt.jwt_secret,
                kafka: Some(kafka),
                ..RoleArgs::new(Roles { query: true, ..none }, db, log, vault, None)
            })
            .await
        }
        Cmd::Relay { kafka, .. } if kafka.kafka_brokers.is_none() => bail!("KAFKA_BROKERS must be set for `storekeeper relay`"),
        Cmd::Relay { db, vault, kafka, log } => {
            run(RoleArgs { kafka: Some(kafka), ..RoleArgs::new(Roles { relay: true, ..none }, db, log, vault, None) }).await
        }
        Cmd::Projections { action: None, db, vault, append, kafka, log } => {
            let roles = Roles { workers: true, ..none };
            run(RoleArgs { kafka: Some(kafka), ..RoleArgs::new(roles, db, log, vault, Some(append)) }).await
        }
        Cmd::Projections { action: Some(action), .. } => projections_admin(action).await,
        Cmd::Events { action } => events(action).await,
        Cmd::Seed { products, customers, orders, db, vault, append } => {
            let (_cluster, pool) = open(&db, false).await?;
            let (log, vault) = storekeeper::app::vaulted_log(&pool, &cli::event_log(&db, &vault, Some(&append))).await?;
            let service = commands::CommandService::new(log, vault);
            let (p, c, o) = storekeeper::seed::seed(&service, storekeeper::seed::Sizes { products, customers, orders }).await?;
            println!("seeded {p} products, {c} customers and {o} orders");
            Ok(())
        }
        Cmd::Token(args) => token(args),
    }
}

async fn open(db: &DatabaseArgs, embedded: bool) -> Result<(Option<pgcluster::Cluster>, sqlx::PgPool)> {
    database::open(db.database_url.as_deref(), &db.data_dir, db.db_pool_size, embedded).await
}

async fn run(args: RoleArgs) -> Result<()> {
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
    let (cluster, pool) = open(&args.db, args.embedded).await?;
    let config = Config {
        roles,
        jwt_secret,
        webhook_secret,
        index_dir: database::index_dir(&args.db.data_dir),
        kafka: args.kafka.as_ref().and_then(KafkaArgs::config),
        event_log: args.event_log,
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

async fn events(action: EventsAction) -> Result<()> {
    let is_std = |path: &Option<std::path::PathBuf>| path.as_ref().is_none_or(|p| p.as_os_str() == "-");
    let (EventsAction::Verify { db } | EventsAction::Export { db, .. } | EventsAction::Import { db, .. }) = &action;
    if db.kurrentdb_url().is_some() {
        bail!(
            "`storekeeper events` works on a log in PostgreSQL: with KURRENTDB_URL set the log is on KurrentDB, which has its own backups (and no hash chain of ours)"
        );
    }
    match action {
        EventsAction::Verify { db } => {
            let (_cluster, pool) = open(&db, false).await?;
            let found = eventlog::seal::verify(&pool).await.context("verify the log")?;
            let rate = found.checked as f64 / found.seconds.max(1e-3);
            if let Some((position, problem)) = found.problem {
                println!("the log fails verification at position {position}: {problem}");
                bail!("the log was altered at or before position {position}");
            }
            println!(
                "the log verifies: {} sealed events checked in {:.1} s ({rate:.0} events/s), {} newer ones not sealed yet",
                found.checked, found.seconds, found.unsealed
            );
            if let Some((up_to, seal)) = found.seal {
                println!("latest seal, up to position {up_to}: {seal} (keep it elsewhere to check against later)");
            }
        }
        EventsAction::Export { output, db } => {
            let (_cluster, pool) = open(&db, false).await?;
            let log = PgEventLog::new(pool.clone());
            let mut out: Box<dyn std::io::Write> = if is_std(&output) {
                Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
            } else {
                let path = output.expect("checked above");
                Box::new(std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?))
            };
            let written = storekeeper::events::export(&log, &pool, &mut out).await?;
            eprintln!("storekeeper: exported {written} events");
        }
        EventsAction::Import { input, reencrypt, db, vault } => {
            let (_cluster, pool) = open(&db, false).await?;
            let read: Box<dyn std::io::BufRead> = if is_std(&input) {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                let path = input.expect("checked above");
                Box::new(std::io::BufReader::new(std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?))
            };
            let plaintext = match reencrypt {
                true => storekeeper::events::Plaintext::Reencrypt(vault.wrapping_key()),
                false => storekeeper::events::Plaintext::Keep,
            };
            let imported = storekeeper::events::import(&pool, read, plaintext).await?;
            eprintln!("storekeeper: imported {} events, each checked against its hash; seal {}", imported.events, imported.seal);
            if let Some(n) = imported.reencrypted {
                eprintln!(
                    "storekeeper: sealed the personal data of {n} events held in the clear, under fresh keys per customer; the log was hashed and sealed afresh"
                );
            }
        }
    }
    Ok(())
}

async fn projections_admin(action: ProjectionsAction) -> Result<()> {
    match action {
        ProjectionsAction::List { db } => {
            let (_cluster, pool) = open(&db, false).await?;
            println!(
                "{:<18} {:>7} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
                "NAME", "VERSION", "POSITION", "LAG", "LAG (s)", "EVENTS/S", "LEFT (s)", "STATE", "PARKED"
            );
            for p in projections::status(&pool).await.context("read projection states")? {
                let left = p.eta_seconds.map_or("-".to_owned(), |s| format!("{s:.1}"));
                println!(
                    "{:<18} {:>7} {:>12} {:>10} {:>10.1} {:>10.0} {:>10} {:>10} {:>7}",
                    p.name, p.version, p.position, p.lag_events, p.lag_seconds, p.events_per_second, left, p.state, p.parked
                );
                if let Some(error) = p.last_error {
                    println!("             last error: {error}");
                }
            }
        }
        ProjectionsAction::Retry { name, db, vault } => {
            let (_cluster, pool) = open(&db, false).await?;
            let projection =
                projections::all().into_iter().find(|p| p.name() == name).with_context(|| format!("no projection is called {name}"))?;
            let (log, _) = storekeeper::app::vaulted_log(&pool, &cli::event_log(&db, &vault, None)).await?;
            let retried = projections::retry_parked(&pool, &*log, &*projection).await.context("retry parked events")?;
            println!("{} parked event(s) of {name} applied, {} still parked", retried.applied, retried.still_parked);
            if retried.still_parked > 0 {
                bail!("{} event(s) of {name} are still parked: see `storekeeper projections list`", retried.still_parked);
            }
        }
        ProjectionsAction::Rebuild { name, wait, db } => {
            let (_cluster, pool) = open(&db, false).await?;
            if !projections::request_rebuild(&pool, &name).await.context("request the rebuild")? {
                bail!("no projection called {name} has run against this database");
            }
            println!(
                "rebuild of {name} requested: the running workers build it beside the live tables and swap it in (watch `storekeeper projections list`)"
            );
            if wait {
                watch_rebuild(&pool, &name).await?;
            }
        }
        ProjectionsAction::Verify { name, db, vault } => {
            let (_cluster, pool) = open(&db, false).await?;
            let chosen: Vec<_> = projections::all().into_iter().filter(|p| name.as_deref().is_none_or(|n| n == p.name())).collect();
            if chosen.is_empty() {
                let name = name.unwrap_or_default();
                if name == projections::names::SEARCH {
                    bail!(
                        "the search index cannot be verified yet; rebuild it with `storekeeper projections rebuild` on the query API's node"
                    );
                }
                bail!("no projection is called {name}");
            }
            let (log, _) = storekeeper::app::vaulted_log(&pool, &cli::event_log(&db, &vault, None)).await?;
            let mut differ = Vec::new();
            for projection in chosen {
                let found =
                    projections::verify(&pool, &*log, &*projection).await.with_context(|| format!("verify {}", projection.name()))?;
                print_verification(&found);
                if !found.matches() {
                    differ.push(found.projection);
                }
            }
            if !differ.is_empty() {
                bail!("{} differ from the log: mend with `storekeeper projections rebuild NAME`", differ.join(", "));
            }
        }
    }
    Ok(())
}

/// A progress bar for a requested rebuild until it has taken over.
async fn watch_rebuild(pool: &sqlx::PgPool, name: &str) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let waiting = Instant::now();
    loop {
        let (requested, position, head): (bool, Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT rebuild_requested FROM projection_checkpoints WHERE projection = $1),
                    (SELECT position FROM projection_checkpoints WHERE projection = $1 || ':rebuild'),
                    (SELECT coalesce(max(global_position), 0) FROM events)",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .context("read the rebuild's progress")?;
        if !requested {
            bar.finish_and_clear();
            println!("{name} rebuilt from the log and swapped in after {:.1} s", waiting.elapsed().as_secs_f64());
            return Ok(());
        }
        bar.set_length(head as u64);
        bar.set_position(position.unwrap_or(0) as u64);
        bar.set_message(match position {
            Some(_) => format!("rebuilding {name}"),
            None if waiting.elapsed() > Duration::from_secs(5) => {
                format!("{name}: no worker has started the rebuild yet (is `storekeeper serve` or `storekeeper projections` running?)")
            }
            None => format!("{name}: waiting for a worker"),
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_verification(found: &projections::Verification) {
    let name = &found.projection;
    let folded = format!("{} events folded in {:.1} s, {:.0} events/s", found.events, found.seconds, found.events_per_second);
    if found.matches() {
        println!("{name}: matches the log at position {} ({folded})", found.position);
        return;
    }
    println!("{name}: {} row(s) differ from the log at position {} ({folded})", found.differing_rows, found.position);
    for d in &found.differences {
        let side = if d.only_in == "live" { "only in the live view" } else { "only in a fold of the log" };
        println!("  {} {side}: {}", d.table, d.row);
    }
    if (found.differences.len() as u64) < found.differing_rows {
        println!("  ... and {} more", found.differing_rows - found.differences.len() as u64);
    }
    for u in &found.unapplied {
        println!("  event {} of {} cannot be applied: {}", u.position, u.stream_id, u.error);
    }
    if found.parked > 0 {
        println!(
            "  {} event(s) are parked as dead letters and hold back their streams (`storekeeper projections retry {name}`)",
            found.parked
        );
    }
}

fn token(args: TokenArgs) -> Result<()> {
    let secret = match args.jwt.jwt_secret {
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
