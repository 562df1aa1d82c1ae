use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who did it, why, and as part of what: stored with every event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The JWT `sub`, or `system:<process>`.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub correlation_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace context of the request (or event) that caused it, so its
    /// trace goes on through the log, Kafka and every consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Metadata {
    /// A new span under this event's, as a `traceparent` for what it causes.
    pub fn child_span(&self) -> String {
        self.traceparent.as_deref().map_or_else(|| telemetry::w3c::child(&self.trace_id(), true), telemetry::w3c::child_of)
    }

    /// The trace this event belongs to: its `traceparent`'s trace id, or
    /// (written before traces were kept) its correlation id.
    pub fn trace_id(&self) -> String {
        self.traceparent
            .as_deref()
            .and_then(telemetry::w3c::trace_id)
            .map_or_else(|| self.correlation_id.simple().to_string(), str::to_owned)
    }
}

impl Metadata {
    /// Metadata for work a process does on its own behalf.
    pub fn system(process: &str) -> Self {
        Metadata {
            actor: format!("system:{process}"),
            role: None,
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            request_id: None,
            idempotency_key: None,
            traceparent: None,
        }
    }
}

/// An event on its way into the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub data: serde_json::Value,
}

impl NewEvent {
    /// Domain events in their stored form, ready to append: new ids, one
    /// `occurred_at`, the same metadata.
    pub fn encode_all<E: domain::events::EventCodec>(events: &[E], metadata: &Metadata) -> Vec<NewEvent> {
        let occurred_at = Utc::now();
        events
            .iter()
            .map(|event| {
                let encoded = event.encode();
                NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: encoded.event_type.to_owned(),
                    schema_version: encoded.schema_version,
                    occurred_at,
                    metadata: metadata.clone(),
                    data: encoded.data,
                }
            })
            .collect()
    }
}

/// An event as the log stores and publishes it: the envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_version: u64,
    pub global_position: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    pub metadata: Metadata,
    pub data: serde_json::Value,
}

/// What a write expects of its stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Whatever it is: appends after the current end.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` satisfies this.
    pub fn admits(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Events for one stream within an append.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamWrite {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppended {
    pub stream_id: String,
    /// The stream's last version after the append (`None`: it has no events).
    pub version: Option<u64>,
    /// Global position of this stream's last appended event, if any.
    pub position: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// One entry per write, in the order given.
    pub streams: Vec<StreamAppended>,
    /// The highest global position written (0 when nothing was).
    pub position: u64,
    /// The append's receipt was already recorded within 24 hours: nothing
    /// was appended, and this is the first append's result.
    pub replayed: bool,
}

/// What an append is recorded under, for exact idempotency: the caller's
/// idempotency key, scoped to the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt<'a> {
    pub actor: &'a str,
    pub key: &'a str,
}

/// Checks what every adapter refuses before touching storage.
pub fn validate(writes: &[StreamWrite]) -> Result<(), crate::EventLogError> {
    let total: usize = writes.iter().map(|w| w.events.len()).sum();
    if total > crate::MAX_EVENTS_PER_APPEND {
        return Err(crate::EventLogError::InvalidAppend(format!(
            "{total} events exceed the limit of {} per append",
            crate::MAX_EVENTS_PER_APPEND
        )));
    }
    for (i, w) in writes.iter().enumerate() {
        if domain::stream::split(&w.stream_id).is_err() {
            return Err(crate::EventLogError::InvalidAppend(format!("stream id {:?} is not <category>-<uuid>", w.stream_id)));
        }
        if writes[..i].iter().any(|o| o.stream_id == w.stream_id) {
            return Err(crate::EventLogError::InvalidAppend(format!("stream {} appears twice in one append", w.stream_id)));
        }
    }
    Ok(())
}
