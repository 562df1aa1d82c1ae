//! Kafka fan-out for scale-out deployments.
//!
//! The relay tails the log in commit order and publishes every event with
//! the idempotent producer, key = stream id, so each stream keeps its order
//! within one partition. `KafkaSource` is the projections' event source
//! through a consumer group. Delivery is at least once; projections make it
//! exactly once in effect (version-guarded, idempotent applies).

mod relay;
mod source;

pub use relay::{Relay, ensure_topic};
pub use source::KafkaSource;

use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("event log: {0}")]
    Log(#[from] eventlog::EventLogError),
    #[error("checkpoint store: {0}")]
    Checkpoint(#[from] sqlx::Error),
    #[error("creating topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

/// Client settings shared by producer, consumers and the admin client.
fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("client.id", "storekeeper");
    config
}

/// Header names on every published event.
pub mod headers {
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const GLOBAL_POSITION: &str = "global_position";
    pub const TRACEPARENT: &str = "traceparent";
}
