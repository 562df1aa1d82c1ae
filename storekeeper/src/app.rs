//! `App::start`: the running system from configuration. Which parts run is
//! `Roles`; how consumers are fed (in process from the log, or from Kafka)
//! follows from `KafkaConfig`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use commands::{CommandService, IdempotencyStore, ProcessManager};
use edge::JwtKeys;
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
    /// The event log on KurrentDB instead of PostgreSQL (`KURRENTDB_URL`).
    pub kurrentdb_url: Option<String>,
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
        // One reader of the log for every part of this process that follows it.
        // What is stored (ciphertext) goes to the relay; everything else
        // reads and writes through the vault.
        let (stored, vault) = event_log(&pool, config.kurrentdb_url.as_deref()).await?;
        let log: Arc<dyn EventLog> = Arc::new(VaultedLog::new(stored.clone(), vault.clone()));
        let service = CommandService::new(log.clone(), vault.clone());
        let jwt = JwtKeys::new(config.jwt_secret.as_bytes());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let roles = config.roles;
        if let Some(listener) = listeners.metrics {
            edge::metrics::prometheus();
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
            let checked = pool.clone();
            let ready = move || eventlog::database::answers(checked.clone());
            tasks.spawn(serve_until(listener, edge::stack::problems_only(edge::health::routes(ready)), stop_rx.clone(), "metrics"));
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
            if config.kurrentdb_url.is_none() {
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
        if let Some(listener) = listeners.command {
            let passwords = match config.kurrentdb_url {
                None => commands::PasswordStore::new(pool.clone()),
                Some(_) => commands::PasswordStore::beside_another_log(pool.clone()),
            };
            let state = command_api::AppState::new(service.clone(), passwords, pool.clone(), jwt.clone(), &config.webhook_secret);
            tracing::info!(addr = ?listener.local_addr().ok(), "command API listening");
            tasks.spawn(serve_until(listener, command_api::router(state), stop_rx.clone(), "command API"));
            tasks.spawn(purge_idempotency_keys(IdempotencyStore::new(pool.clone()), stop_rx.clone()));
        }
        if let Some(listener) = listeners.query {
            // Each query API node keeps its own product index, fed by its own indexer.
            let search = projections::search::SearchIndex::open_for(&config.index_dir, &*log)
                .await
                .with_context(|| format!("open the product index in {}", config.index_dir.display()))?;
            let index_sources = sources.clone().unwrap_or_else(|| eventlog::in_process(log.clone(), 2000));
            let indexer = search.clone().run(log.clone(), index_sources, stop_rx.clone());
            tasks.spawn(async move {
                indexer.await;
                Ok(())
            });
            let state = query_api::AppState::new(pool.clone(), log.clone(), jwt.clone(), search);
            tracing::info!(addr = ?listener.local_addr().ok(), "query API listening");
            tasks.spawn(serve_until(listener, query_api::router(state), stop_rx.clone(), "query API"));
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

async fn serve_until(listener: TcpListener, router: axum::Router, mut stop: watch::Receiver<bool>, what: &'static str) -> Result<()> {
    edge::serve(listener, router, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await
    .with_context(|| format!("{what} server"))
}

async fn purge_idempotency_keys(store: IdempotencyStore, mut stop: watch::Receiver<bool>) -> Result<()> {
    loop {
        match store.purge_expired().await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired idempotency keys removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// The log as stored (ciphertext), behind one shared reader, and the vault
/// (keys in PostgreSQL) that seals and opens it: in PostgreSQL, or on
/// KurrentDB when `kurrentdb_url` is given.
pub async fn event_log(pool: &PgPool, kurrentdb_url: Option<&str>) -> Result<(Arc<dyn EventLog>, Arc<Vault>)> {
    Ok(match kurrentdb_url {
        None => (Arc::new(eventlog::SharedTail::new(Arc::new(PgEventLog::new(pool.clone())))), Vault::postgres(pool.clone())),
        Some(url) => {
            let log = kurrent::KurrentEventLog::connect(url, kurrent::LOG_STREAM)
                .await
                .context("open the event log on KurrentDB (KURRENTDB_URL)")?;
            tracing::info!(stream = kurrent::LOG_STREAM, "the event log is on KurrentDB");
            (Arc::new(eventlog::SharedTail::new(Arc::new(log))), Vault::postgres_beside_another_log(pool.clone()))
        }
    })
}

/// [`event_log`], read and written through the vault.
pub async fn vaulted_log(pool: &PgPool, kurrentdb_url: Option<&str>) -> Result<(Arc<dyn EventLog>, Arc<Vault>)> {
    let (stored, vault) = event_log(pool, kurrentdb_url).await?;
    Ok((Arc::new(VaultedLog::new(stored, vault.clone())), vault))
}
