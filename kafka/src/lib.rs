//! Kafka fan-out for scale-out deployments.
//!
//! The relay tails the log in commit order and publishes every event with
//! the idempotent producer, key = stream id, so each stream keeps its order
//! within one partition, which the relay chooses itself from a stable hash
//! of the stream id (`eventlog::partition_for`), so readers can tell which
//! partition a write went to. `KafkaSource` is the consumers' event source
//! through a consumer group. Delivery is at least once; consumers make it
//! exactly once in effect (per-partition progress stored with their
//! effects, version-guarded applies).

pub mod asyncapi;
pub mod cloudevents;
mod relay;
mod source;

/// The topic `serve` publishes to unless told otherwise.
pub const DEFAULT_TOPIC: &str = "storekeeper.events";

pub use relay::{Relay, ensure_topic};
pub use source::{CatchUpSource, KafkaSource};

/// Event sources for consumers, each in its own consumer group on
/// `topic`; a consumer new to the topic catches up from `log` first.
pub fn sources(brokers: &str, topic: &str, log: std::sync::Arc<dyn eventlog::EventLog>) -> eventlog::SourceFactory {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    std::sync::Arc::new(move |resume: &eventlog::Resume| {
        CatchUpSource::new(log.clone(), &brokers, &topic, resume)
            .map(|source| Box::new(source) as Box<dyn eventlog::EventSource>)
            .map_err(|e| eventlog::EventLogError::Backend(Box::new(e)))
    })
}

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

/// How many partitions `topic` has, from the broker's metadata (blocking).
fn partition_count<C: rdkafka::client::ClientContext>(client: &rdkafka::client::Client<C>, topic: &str) -> Result<i32, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if count == 0 {
        return Err(KafkaError::Topic { topic: topic.to_owned(), message: "the topic does not exist (the relay creates it)".into() });
    }
    Ok(count as i32)
}

/// Header names on every published event.
pub mod headers {
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const GLOBAL_POSITION: &str = "global_position";
    pub const TRACEPARENT: &str = "traceparent";
}
