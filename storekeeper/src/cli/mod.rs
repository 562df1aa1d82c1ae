//! The command line: each subcommand takes only the flags it uses, each
//! with an environment fallback. Configuration is parsed here, once, and
//! passed down as values: no library reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use eventlog::vault::WrappingKey;

mod admin;
pub use admin::{EventsAction, OperatorsAction, ProjectionsAction};

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
        vault: VaultArgs,
        #[command(flatten)]
        append: AppendArgs,
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
        limits: LimitArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Only the command API, on DATABASE_URL.
    CommandApi {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        vault: VaultArgs,
        #[command(flatten)]
        append: AppendArgs,
        #[command(flatten)]
        command: CommandAddr,
        #[command(flatten)]
        jwt: JwtSecret,
        #[command(flatten)]
        webhook: WebhookSecret,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Only the query API with its own product index, on DATABASE_URL (fed
    /// from Kafka when KAFKA_BROKERS is set).
    QueryApi {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        vault: VaultArgs,
        #[command(flatten)]
        query: QueryAddr,
        #[command(flatten)]
        jwt: JwtSecret,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Publishes the log to Kafka (KAFKA_BROKERS), in commit order, key =
    /// stream id; creates the topic on start.
    Relay {
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        vault: VaultArgs,
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
        vault: VaultArgs,
        #[command(flatten)]
        append: AppendArgs,
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
        #[command(flatten)]
        vault: VaultArgs,
        #[command(flatten)]
        append: AppendArgs,
    },
    /// Mints a JWT signed with the configured secret and prints it alone.
    Token(TokenArgs),
    /// The people who sign in for an admin token (`POST /v1/auth/token`):
    /// `add` (password from STOREKEEPER_OPERATOR_PASSWORD or a line on
    /// stdin), `remove`, `list`.
    Operators {
        #[command(subcommand)]
        action: OperatorsAction,
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

/// How a command that reads or writes through the vault opens the log:
/// where (`db`), under which key encryption key, with how many committers
/// (the default for a command that does not append).
pub fn event_log(db: &DatabaseArgs, vault: &VaultArgs, append: Option<&AppendArgs>) -> crate::EventLogConfig {
    crate::EventLogConfig {
        kurrentdb_url: db.kurrentdb_url().map(str::to_owned),
        vault_key: vault.wrapping_key(),
        append_committers: append.map_or(eventlog::DEFAULT_APPEND_COMMITTERS, |a| a.append_committers as usize),
    }
}

#[derive(Args, Clone)]
pub struct VaultArgs {
    /// Key encryption key (64 hex digits) every customer's data key is
    /// stored wrapped under, so that the database's files and backups hold
    /// no usable key; the same for every role. A database whose keys are
    /// wrapped under another key, or none, is refused. Unset or empty: keys
    /// are stored as they are.
    #[arg(long, env = "STOREKEEPER_VAULT_KEY", hide_env_values = true, value_name = "HEX", value_parser = VaultKeyParser)]
    vault_key: Option<VaultKey>,
}

impl VaultArgs {
    pub fn wrapping_key(&self) -> Option<WrappingKey> {
        self.vault_key.as_ref().and_then(|k| k.0)
    }
}

/// A parsed `--vault-key`: empty means unset (compose passes an empty
/// value for that).
#[derive(Clone)]
struct VaultKey(Option<WrappingKey>);

/// Parses `--vault-key` without ever echoing the value (clap's own
/// errors quote it).
#[derive(Clone)]
struct VaultKeyParser;

impl TypedValueParser for VaultKeyParser {
    type Value = VaultKey;

    fn parse_ref(&self, cmd: &clap::Command, _: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<VaultKey, clap::Error> {
        let text = value.to_str().unwrap_or("-");
        if text.trim().is_empty() {
            return Ok(VaultKey(None));
        }
        text.parse()
            .map(|key| VaultKey(Some(key)))
            .map_err(|_| cmd.clone().error(ErrorKind::ValueValidation, "STOREKEEPER_VAULT_KEY must be 64 hex digits (a 256-bit key)"))
    }
}

#[derive(Args, Clone)]
pub struct AppendArgs {
    /// Group-commit writers of the event log in this process: more overlap
    /// the flushes of large appends, fewer make larger groups.
    /// 1 to 64; empty means the default.
    #[arg(
        long,
        env = "STOREKEEPER_APPEND_COMMITTERS",
        default_value_t = eventlog::DEFAULT_APPEND_COMMITTERS as u64,
        value_parser = CommittersParser,
    )]
    append_committers: u64,
}

/// Parses `--append-committers`: empty (as compose passes an unset
/// variable) is the default, as it was before the flag existed.
#[derive(Clone)]
struct CommittersParser;

impl TypedValueParser for CommittersParser {
    type Value = u64;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<u64, clap::Error> {
        if value.to_str().is_some_and(|v| v.trim().is_empty()) {
            return Ok(eventlog::DEFAULT_APPEND_COMMITTERS as u64);
        }
        clap::value_parser!(u64).range(1..=eventlog::MAX_APPEND_COMMITTERS as u64).parse_ref(cmd, arg, value)
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
    /// The command API's URL as a browser reaches it, for the console
    /// (`/console`) to sign in and send commands to; `/` for the console's
    /// own origin (a gateway in front of both APIs). Unset: `serve`'s own
    /// command API on the console's host; `query-api` alone, port 8080 of
    /// the console's host.
    #[arg(long, env = "STOREKEEPER_CONSOLE_COMMAND_URL")]
    pub console_command_url: Option<String>,
}

/// How much each API server takes at once; past it, 503 `overloaded` with
/// `Retry-After` at once (see `edge::serve`).
#[derive(Args, Clone)]
pub struct LimitArgs {
    /// Connections open at once, per API.
    #[arg(long, env = "STOREKEEPER_MAX_CONNECTIONS", default_value_t = edge::serve::Limits::default().connections, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections: usize,
    /// Requests answered at once, per API (health probes and /metrics
    /// aside).
    #[arg(long, env = "STOREKEEPER_MAX_IN_FLIGHT", default_value_t = edge::serve::Limits::default().in_flight, value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_in_flight: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> edge::serve::Limits {
        edge::serve::Limits { connections: self.max_connections, in_flight: self.max_in_flight }
    }
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
    #[arg(long, env = "STOREKEEPER_KAFKA_TOPIC", default_value = kafka::DEFAULT_TOPIC)]
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn vault_key(args: &[&str]) -> Result<Option<WrappingKey>, String> {
        let cli = Cli::try_parse_from([&["storekeeper", "seed"], args].concat()).map_err(|e| e.to_string())?;
        let Cmd::Seed { vault, .. } = cli.command else { unreachable!("seed parses as seed") };
        Ok(vault.wrapping_key())
    }

    #[test]
    fn the_vault_key_and_committers_show_in_help_with_their_variables() {
        Cli::command().debug_assert();
        for role in ["serve", "command-api", "projections", "seed"] {
            let help = Cli::command().find_subcommand_mut(role).expect("a subcommand").render_long_help().to_string();
            for wanted in ["--vault-key", "STOREKEEPER_VAULT_KEY", "--append-committers", "STOREKEEPER_APPEND_COMMITTERS"] {
                assert!(help.contains(wanted), "{role} --help lacks {wanted}");
            }
        }
        for role in ["query-api", "relay"] {
            let help = Cli::command().find_subcommand_mut(role).expect("a subcommand").render_long_help().to_string();
            assert!(help.contains("STOREKEEPER_VAULT_KEY"), "{role} --help lacks the vault key");
        }
    }

    #[test]
    fn the_vault_key_is_parsed_once_and_a_malformed_one_is_refused_without_echoing_it() {
        assert_eq!(vault_key(&["--vault-key", KEY]), Ok(Some(KEY.parse().unwrap())));
        assert_eq!(vault_key(&["--vault-key", " "]), Ok(None), "empty means unset");
        let refused = vault_key(&["--vault-key", "secret-but-not-hex"]).unwrap_err();
        assert!(refused.contains("STOREKEEPER_VAULT_KEY must be 64 hex digits (a 256-bit key)"), "{refused}");
        assert!(!refused.contains("secret-but-not-hex"), "{refused}");
    }

    #[test]
    fn committers_are_one_by_default_and_held_within_their_range() {
        let committers = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["storekeeper", "command-api"], args].concat()).map_err(|e| e.to_string())?;
            let Cmd::CommandApi { db, vault, append, .. } = cli.command else { unreachable!("command-api parses as command-api") };
            Ok::<_, String>(event_log(&db, &vault, Some(&append)).append_committers)
        };
        assert_eq!(committers(&[]), Ok(eventlog::DEFAULT_APPEND_COMMITTERS));
        assert_eq!(committers(&["--append-committers", "3"]), Ok(3));
        assert_eq!(committers(&["--append-committers", ""]), Ok(eventlog::DEFAULT_APPEND_COMMITTERS), "empty means the default");
        assert!(committers(&["--append-committers", "0"]).is_err());
        assert!(committers(&["--append-committers", "65"]).is_err());
    }
}
