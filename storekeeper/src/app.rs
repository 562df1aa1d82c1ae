//! `App::start`: the running system from configuration. Which parts run is
//! `Roles`; how consumers are fed (in process from the log, or from Kafka)
//! follows from `KafkaConfig`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commands::{CommandService, IdempotencyStore, ProcessManager};
use edge::JwtKeys;
use eventlog::vault::WrappingKey;
use eventlog::{EventLog, PgEventLog, Vault, VaultedLog};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Which parts of the system a process runs.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub command: bool,
    pub query: bool,
    /// Projections and the order process manager.
    pub workers: bool,
    /// The Kafka relay (needs `KafkaConfig`).
    pub relay: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { command: true, query: true, workers: true, relay: true };
    pub const NONE: Roles = Roles { command: false, query: false, workers: false, relay: false };
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// Partitions when the relay creates the topic.
    pub partitions: i32,
}

#[derive(Clone)]
pub struct Config {
    pub roles: Roles,
    pub jwt_secret: String,
    pub webhook_secret: String,
    /// Where the query API keeps this node's product index.
    pub index_dir: PathBuf,
    pub kafka: Option<KafkaConfig>,
    pub event_log: EventLogConfig,
    /// What each API server takes at once before it sheds load.
    pub limits: edge::serve::Limits,
    /// The command API's URL for the console; none: this host's.
    pub console_command_url: Option<String>,
}

/// How a process opens the event log and its vault: parsed once, by the
/// binary, and passed down as values (no library reads the environment).
#[derive(Clone)]
pub struct EventLogConfig {
    /// The event log on KurrentDB instead of PostgreSQL (`KURRENTDB_URL`).
    pub kurrentdb_url: Option<String>,
    /// The key encryption key customers' data keys are wrapped under
    /// (`STOREKEEPER_VAULT_KEY`); none: stored as they are.
    pub vault_key: Option<WrappingKey>,
    /// Group-commit writers of the PostgreSQL log
    /// (`STOREKEEPER_APPEND_COMMITTERS`).
    pub append_committers: usize,
}

impl Default for EventLogConfig {
    /// PostgreSQL, keys unwrapped, the default committers.
    fn default() -> Self {
        EventLogConfig { kurrentdb_url: None, vault_key: None, append_committers: eventlog::DEFAULT_APPEND_COMMITTERS }
    }
}

/// Listeners bound before anything starts (a taken port fails first).
#[derive(Default)]
pub struct Listeners {
    pub command: Option<TcpListener>,
    pub query: Option<TcpListener>,
    /// `/metrics`, `/healthz` and `/readyz` alone.
    pub metrics: Option<TcpListener>,
}

/// The running parts.
pub struct App {
    pub pool: PgPool,
    pub log: Arc<dyn EventLog>,
    pub service: CommandService,
    pub jwt: JwtKeys,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
}

impl App {
    pub async fn start(config: Config, pool: PgPool, listeners: Listeners) -> Result<App> {
        // First: what the parts register as they start is exported from
        // the first scrape.
        edge::metrics::prometheus();
        // One reader of the log for every part of this process that follows it.
        // What is stored (ciphertext) goes to the relay; everything else
        // reads and writes through the vault.
        let (stored, vault) = event_log(&pool, &config.event_log).await?;
        let log: Arc<dyn EventLog> = Arc::new(VaultedLog::new(stored.clone(), vault.clone()));
        let service = CommandService::new(log.clone(), vault.clone());
        let jwt = JwtKeys::new(config.jwt_secret.as_bytes());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let roles = config.roles;
        if let Some(listener) = listeners.metrics {
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
            let checked = pool.clone();
            let ready = move || eventlog::database::answers(checked.clone());
            tasks.spawn(serve_until(
                listener,
                edge::stack::problems_only(edge::health::routes(ready)),
                config.limits,
                stop_rx.clone(),
                "metrics",
            ));
        }

        if roles.relay
            && let Some(kafka) = &config.kafka
        {
            kafka::ensure_topic(&kafka.brokers, &kafka.topic, kafka.partitions)
                .await
                .with_context(|| format!("create the topic {} on {}", kafka.topic, kafka.brokers))?;
            let relay =
                kafka::Relay::new(stored.clone(), pool.clone(), &kafka.brokers, &kafka.topic).context("start the Kafka producer")?;
            let stop = stop_rx.clone();
            tracing::info!(topic = %kafka.topic, "relay publishing the log to Kafka");
            tasks.spawn(async move { relay.run(stop).await.context("Kafka relay") });
        }
        // With Kafka, every consumer reads the topic the relay fills, each in
        // its own consumer group; without, each tails the log in process.
        let sources =
            config.kafka.as_ref().map(|k| eventlog::vault::opening(kafka::sources(&k.brokers, &k.topic, stored.clone()), vault.clone()));
        if roles.workers {
            let manager = match &sources {
                Some(sources) => ProcessManager::new(service.clone(), pool.clone()).with_partitioned_source(sources.clone()),
                None => ProcessManager::new(service.clone(), pool.clone()),
            };
            let stop = stop_rx.clone();
            tasks.spawn(async move { manager.run(stop).await.context("order process manager") });
            // The hash chain covers a log in PostgreSQL only.
            if config.event_log.kurrentdb_url.is_none() {
                let (sealer_pool, stop) = (pool.clone(), stop_rx.clone());
                tasks.spawn(async move {
                    eventlog::seal::run_sealer(sealer_pool, stop).await;
                    Ok(())
                });
            }
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
        // The console (on the query API) sends commands to this process's
        // command API unless told otherwise.
        let command_port = listeners.command.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port());
        if let Some(listener) = listeners.command {
            let passwords = match config.event_log.kurrentdb_url {
                None => commands::PasswordStore::new(pool.clone()),
                Some(_) => commands::PasswordStore::beside_another_log(pool.clone()),
            };
            let state = command_api::AppState::new(service.clone(), passwords.clone(), pool.clone(), jwt.clone(), &config.webhook_secret);
            tracing::info!(addr = ?listener.local_addr().ok(), "command API listening");
            tasks.spawn(serve_until(listener, command_api::router(state), config.limits, stop_rx.clone(), "command API"));
            tasks.spawn(purge_expired(IdempotencyStore::new(pool.clone()), passwords, stop_rx.clone()));
        }
        if let Some(listener) = listeners.query {
            // Each query API node keeps its own product index, fed by its own indexer.
            let search = projections::search::SearchIndex::open_for(&config.index_dir, &*log)
                .await
                .with_context(|| format!("open the product index in {}", config.index_dir.display()))?;
            let index_sources = sources.clone().unwrap_or_else(|| eventlog::in_process(log.clone(), 2000));
            let indexer = search.clone().run(pool.clone(), log.clone(), index_sources, stop_rx.clone());
            tasks.spawn(async move {
                indexer.await;
                Ok(())
            });
            let state = query_api::AppState::new(pool.clone(), log.clone(), jwt.clone(), search)
                .stopping_with(stop_rx.clone())
                .with_console(query_api::console::Settings { command_url: config.console_command_url.clone(), command_port });
            tracing::info!(addr = ?listener.local_addr().ok(), "query API listening");
            tasks.spawn(serve_until(listener, query_api::router(state), config.limits, stop_rx.clone(), "query API"));
        }
        Ok(App { pool, log, service, jwt, stop, tasks })
    }

    /// Runs until `signal` resolves (Ok) or a part fails (its error), then
    /// stops every part.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        let result = tokio::select! {
            _ = signal => Ok(()),
            Some(done) = self.tasks.join_next() => match done {
                Ok(Ok(())) => Err(anyhow::anyhow!("a part of the server stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
        };
        self.shutdown().await;
        result
    }

    /// Servers drain in-flight requests, workers finish their batch; parts
    /// that do not stop within the deadline are abandoned.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::error!("{e:#}");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(parts = self.tasks.len(), "parts still running at the shutdown deadline; stopping them");
            self.tasks.abort_all();
        }
        // The pool is the caller's: another `App` may share it.
    }
}

/// How long shutdown waits for the parts, within SIGTERM's 10 s (the
/// servers' own drain is `edge::serve::DRAIN`, shorter).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(7);

async fn serve_until(
    listener: TcpListener,
    router: axum::Router,
    limits: edge::serve::Limits,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> Result<()> {
    edge::serve(listener, router, limits, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
    .with_context(|| format!("{what} server"))
}

/// Hourly: idempotency keys and receipts past their 24 hours, and
/// passwords staged for registrations that never took effect.
async fn purge_expired(store: IdempotencyStore, passwords: commands::PasswordStore, mut stop: watch::Receiver<bool>) -> Result<()> {
    loop {
        match store.purge_expired().await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired idempotency keys removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
        match passwords.purge_expired_stagings().await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "passwords staged for registrations that never took effect removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging staged passwords failed"),
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// The log as stored (ciphertext), behind one shared reader, and the vault
/// (keys in PostgreSQL) that encrypts and decrypts it: in PostgreSQL, or on
/// KurrentDB when `kurrentdb_url` is given. Refuses a key encryption key
/// other than the one the database's keys are wrapped under.
pub async fn event_log(pool: &PgPool, config: &EventLogConfig) -> Result<(Arc<dyn EventLog>, Arc<Vault>)> {
    eventlog::vault::check_wrapping_key(pool, config.vault_key).await?;
    Ok(match config.kurrentdb_url.as_deref() {
        None => {
            let log = PgEventLog::with_committers(pool.clone(), config.append_committers);
            (Arc::new(eventlog::SharedTail::new(Arc::new(log))), Vault::postgres(pool.clone(), config.vault_key))
        }
        Some(url) => {
            let log = kurrent::KurrentEventLog::connect(url, kurrent::LOG_STREAM)
                .await
                .context("open the event log on KurrentDB (KURRENTDB_URL)")?;
            tracing::info!(stream = kurrent::LOG_STREAM, "the event log is on KurrentDB");
            (Arc::new(eventlog::SharedTail::new(Arc::new(log))), Vault::postgres_beside_another_log(pool.clone(), config.vault_key))
        }
    })
}

/// [`event_log`], read and written through the vault.
pub async fn vaulted_log(pool: &PgPool, config: &EventLogConfig) -> Result<(Arc<dyn EventLog>, Arc<Vault>)> {
    let (stored, vault) = event_log(pool, config).await?;
    Ok((Arc::new(VaultedLog::new(stored, vault.clone())), vault))
}

#[cfg(test)]
mod tests {
    use domain::{Category, StreamId};
    use eventlog::{ExpectedVersion, Metadata, NewEvent, StreamWrite};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    /// Each process (here, each call) opens the log with the configuration
    /// it was given: its keys wrapped under its key encryption key, and a
    /// database held to the first one.
    #[tokio::test]
    async fn the_log_is_opened_with_the_vault_key_it_is_given() {
        let pool = eventlog::testing::fresh_event_log_database().await;
        let config = EventLogConfig { vault_key: Some(WrappingKey::generate()), append_committers: 2, ..EventLogConfig::default() };
        let (log, _) = vaulted_log(&pool, &config).await.unwrap();
        let customer = Uuid::now_v7();
        let registered = NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "CustomerRegistered".into(),
            schema_version: 2,
            occurred_at: chrono::Utc::now(),
            metadata: Metadata::system("test"),
            data: json!({"customer_id": customer, "email": "ada@example.com", "name": "Ada", "shipping_address": null}),
        };
        let stream_id = StreamId::new(Category::Customer, customer).to_string();
        log.append(vec![StreamWrite { stream_id, expected: ExpectedVersion::NoStream, events: vec![registered] }]).await.unwrap();
        let stored: Vec<u8> =
            sqlx::query_scalar("SELECT key FROM customer_keys WHERE customer_id = $1").bind(customer).fetch_one(&pool).await.unwrap();
        assert_eq!(stored.len(), 72, "wrapped under the configured key");

        let other = EventLogConfig { vault_key: Some(WrappingKey::generate()), ..EventLogConfig::default() };
        let refused = vaulted_log(&pool, &other).await.err().expect("another key is refused");
        assert!(refused.to_string().contains("not the key"), "{refused:#}");
        let refused = vaulted_log(&pool, &EventLogConfig::default()).await.err().expect("no key is refused");
        assert!(refused.to_string().contains("set STOREKEEPER_VAULT_KEY"), "{refused:#}");
    }
}
