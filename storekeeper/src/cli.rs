//! The command line: each subcommand takes only the flags it uses, each
//! with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "storekeeper", version, about = "Event-sourced CQRS commerce backend")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Everything in one process: command API, query API, projections and
    /// the order process manager (and the relay with KAFKA_BROKERS), on
    /// DATABASE_URL or a private PostgreSQL it starts itself.
    Serve {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        command: CommandAddr,
        #[command(flatten)]
        query: QueryAddr,
        #[command(flatten)]
        jwt: JwtSecret,
        #[command(flatten)]
        webhook: WebhookSecret,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Only the command API, on DATABASE_URL.
    CommandApi {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        command: CommandAddr,
        #[command(flatten)]
        jwt: JwtSecret,
        #[command(flatten)]
        webhook: WebhookSecret,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Only the query API with its own product index, on DATABASE_URL (fed
    /// from Kafka when KAFKA_BROKERS is set).
    QueryApi {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        query: QueryAddr,
        #[command(flatten)]
        jwt: JwtSecret,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Publishes the log to Kafka (KAFKA_BROKERS), in commit order, key =
    /// stream id; creates the topic on start.
    Relay {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// The projection workers and the order process manager, on
    /// DATABASE_URL; or `list` their states, `retry NAME`'s parked events,
    /// or `rebuild NAME` beside its live tables.
    Projections {
        #[command(subcommand)]
        action: Option<ProjectionsAction>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// The log as JSON Lines: `export` it, or `import` an export into an
    /// empty log.
    Events {
        #[command(subcommand)]
        action: EventsAction,
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
        db: DatabaseArgs,
    },
    /// Mints a JWT signed with the configured secret and prints it alone.
    Token(TokenArgs),
}

#[derive(Subcommand)]
pub enum EventsAction {
    /// Checks every sealed event against its hash and its stream's hash
    /// chain, and every seal; exits 1 naming the first position that fails.
    Verify {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Writes every event, one envelope per line, in global order.
    Export {
        /// Where to write; `-` or absent: stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Appends an export's events to an empty log.
    Import {
        /// Where to read; `-` or absent: stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Seal personal data the file holds in the clear (a log from
        /// before sealing) under fresh per-customer keys; the new log is
        /// hashed and sealed afresh.
        #[arg(long)]
        reencrypt: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Subcommand)]
pub enum ProjectionsAction {
    /// Every projection's version, position, lag, state and parked events.
    List {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Applies a projection's parked (dead-lettered) events again.
    Retry {
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Rebuilds a projection from the log beside its live tables; the
    /// running workers build it and swap it in once it has caught up.
    Rebuild {
        name: String,
        /// Stay, with a progress bar, until the rebuild has taken over.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Folds the log afresh beside a projection's live tables (every
    /// PostgreSQL read model when no name is given), compares them row by
    /// row and prints the rows that differ; exits 1 on any difference.
    Verify {
        name: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// PostgreSQL holding the event log. Unset: `serve` starts a private
    /// cluster under the data directory; other commands use that one.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where `serve` keeps its private PostgreSQL cluster and the query
    /// API its product index (`index/`).
    #[arg(long, env = "STOREKEEPER_DATA_DIR", default_value = "./.storekeeper")]
    pub data_dir: PathBuf,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "STOREKEEPER_DB_POOL_SIZE", default_value_t = 40)]
    pub db_pool_size: u32,
    /// Keep the event log on KurrentDB (`kurrentdb://host:2113?tls=false`)
    /// instead of PostgreSQL, which still holds the read models, keys and
    /// checkpoints.
    #[arg(long, env = "KURRENTDB_URL", hide_env_values = true)]
    kurrentdb_url: Option<String>,
}

impl DatabaseArgs {
    /// The pool on this database (and the private cluster when it was
    /// started here: `embedded`, by `serve`), migrated.
    pub async fn open(&self, embedded: bool) -> anyhow::Result<(Option<pgcluster::Cluster>, sqlx::PgPool)> {
        crate::database::open(self.database_url.as_deref(), &self.data_dir, self.db_pool_size, embedded).await
    }

    /// KurrentDB's address, if set to anything (compose passes an empty
    /// value to mean unset).
    pub fn kurrentdb_url(&self) -> Option<&str> {
        self.kurrentdb_url.as_deref().map(str::trim).filter(|u| !u.is_empty())
    }
}

#[derive(Args, Clone)]
pub struct CommandAddr {
    /// Address of the command API.
    #[arg(long, env = "STOREKEEPER_COMMAND_ADDR", default_value = "127.0.0.1:8080")]
    pub command_addr: SocketAddr,
}

#[derive(Args, Clone)]
pub struct QueryAddr {
    /// Address of the query API.
    #[arg(long, env = "STOREKEEPER_QUERY_ADDR", default_value = "127.0.0.1:8081")]
    pub query_addr: SocketAddr,
}

#[derive(Args, Clone)]
pub struct JwtSecret {
    /// HS256 secret for bearer tokens. `serve` on loopback falls back to a
    /// development secret and says so.
    #[arg(long, env = "STOREKEEPER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

#[derive(Args, Clone)]
pub struct WebhookSecret {
    /// HMAC-SHA256 secret of the payment webhook. Same fallback rule.
    #[arg(long, env = "STOREKEEPER_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

#[derive(Args, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers. Set: consumers read the topic, and `serve`
    /// also runs the relay.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The topic the relay publishes the log to.
    #[arg(long, env = "STOREKEEPER_KAFKA_TOPIC", default_value = "storekeeper.events")]
    pub kafka_topic: String,
    /// Partitions of that topic when the relay creates it.
    #[arg(long, env = "STOREKEEPER_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
}

impl KafkaArgs {
    pub fn config(&self) -> Option<crate::KafkaConfig> {
        self.kafka_brokers.as_ref().map(|brokers| crate::KafkaConfig {
            brokers: brokers.clone(),
            topic: self.kafka_topic.clone(),
            partitions: self.kafka_partitions,
        })
    }
}

#[derive(Args, Clone)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "STOREKEEPER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also serve `/metrics`, `/healthz` and `/readyz` here: how roles
    /// without an API (`projections`, `relay`) are scraped and checked.
    #[arg(long, env = "STOREKEEPER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long, value_enum)]
    pub role: TokenRole,
    /// Subject: an admin's name, or the customer's id.
    #[arg(long)]
    pub sub: String,
    /// Lifetime in hours.
    #[arg(long, default_value_t = 24)]
    pub ttl_hours: i64,
    #[command(flatten)]
    pub jwt: JwtSecret,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TokenRole {
    Admin,
    Customer,
}
