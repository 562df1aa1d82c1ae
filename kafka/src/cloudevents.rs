//! CloudEvents 1.0 in Kafka's binary content mode: every message carries
//! the required attributes as `ce_*` headers (and its content type), so a
//! consumer with any CloudEvents SDK reads it without knowing storekeeper.
//! The message value stays the envelope our own consumers read, which is
//! the event's CloudEvents `data`; `ce_dataschema` names the envelope's JSON
//! Schema for that event type and version, by the `$id` it has in the
//! AsyncAPI document (`schemas/asyncapi/events.json`).
//!
//! Names and values here are the public contract of the topic: never
//! rename one.

use eventlog::RecordedEvent;

pub const SPEC_VERSION: &str = "1.0";
/// The value's media type, as Kafka's binary mode gives it.
pub const CONTENT_TYPE: &str = "application/json";

/// Header names, as CloudEvents' Kafka binding spells them.
pub mod header {
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    pub const DATA_SCHEMA: &str = "ce_dataschema";
    pub const CONTENT_TYPE: &str = "content-type";
}

/// `ce_type`: one per event type and schema version.
pub fn event_type(event_type: &str, schema_version: u32) -> String {
    format!("storekeeper.{event_type}.v{schema_version}")
}

/// `ce_dataschema`: the `$id` of the envelope schema for this type and
/// version.
pub fn data_schema(event_type: &str, schema_version: u32) -> String {
    format!("urn:storekeeper:schema:{event_type}.v{schema_version}")
}

/// `ce_source`: the stream's category (`/storekeeper/order` for
/// `order-<uuid>`); with the event id unique in the log, source and id
/// name one event.
pub fn source(stream_id: &str) -> String {
    let category = stream_id.split_once('-').map_or(stream_id, |(category, _)| category);
    format!("/storekeeper/{category}")
}

/// Every CloudEvents header of `event`, name and value.
pub fn headers(event: &RecordedEvent) -> [(&'static str, String); 8] {
    [
        (header::ID, event.event_id.to_string()),
        (header::SOURCE, source(&event.stream_id)),
        (header::SPEC_VERSION, SPEC_VERSION.to_owned()),
        (header::TYPE, event_type(&event.event_type, event.schema_version)),
        (header::TIME, event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        (header::SUBJECT, event.stream_id.clone()),
        (header::DATA_SCHEMA, data_schema(&event.event_type, event.schema_version)),
        (header::CONTENT_TYPE, CONTENT_TYPE.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_name_the_event() {
        assert_eq!(source("order-0190f3c4-0000-7000-8000-00000000a001"), "/storekeeper/order");
        assert_eq!(source("claim-email-abc"), "/storekeeper/claim");
        assert_eq!(event_type("OrderPlaced", 2), "storekeeper.OrderPlaced.v2");
        assert_eq!(data_schema("OrderPlaced", 2), "urn:storekeeper:schema:OrderPlaced.v2");
    }
}
