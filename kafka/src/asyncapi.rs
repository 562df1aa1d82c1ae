//! The topic's contract as an AsyncAPI 3.0 document, generated from the
//! event schemas (the same ones `schemas/events/` holds) so it cannot
//! drift from them: one message per event type and schema version, with
//! its key, its headers (ours and CloudEvents') and its value, the
//! envelope, whose `data` is the event in its stored form (personal fields
//! may be sealed). A test compares it with `schemas/asyncapi/events.json`.
//!
//! Every schema in it is self-contained (references inlined), so that the
//! `$id` each envelope schema carries, the `ce_dataschema` of its
//! messages, is all a validator needs.

use serde_json::{Map, Value, json};

use crate::{cloudevents, headers};

/// Streams on the topic whose events are the log's own bookkeeping.
const INTERNAL_CATEGORIES: &str = "`claim-<uuid>` streams (UniqueValueClaimed, UniqueValueReleased; the uuid is a name-based hash, never the value) hold the uniqueness \
     claims of customers' emails and products' SKUs: internal bookkeeping that keeps those values unique across streams. They are on \
     the topic because the topic is the whole log, in order; a consumer of the public contract skips them.";

/// The document, for the topic `--kafka-topic` names by default.
pub fn document() -> Value {
    let historical: Vec<(&str, u32)> = domain::events::historical_schemas().iter().map(|s| (s.event_type, s.schema_version)).collect();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    let mut refs = Vec::new();
    for event in domain::events::all_schemas() {
        let name = format!("{}.v{}", event.event_type, event.schema_version);
        let schema = serde_json::to_value(&event.schema).expect("schemas serialize");
        let summary = if !historical.contains(&(event.event_type, event.schema_version)) {
            format!("{} (schema version {}, written today)", event.event_type, event.schema_version)
        } else {
            format!("{} (schema version {}, from history: no longer written, still on the topic)", event.event_type, event.schema_version)
        };
        messages.insert(
            name.clone(),
            json!({
                "name": format!("{}V{}", event.event_type, event.schema_version),
                "title": name,
                "summary": summary,
                "contentType": cloudevents::CONTENT_TYPE,
                "headers": message_headers(event.event_type, event.schema_version),
                "payload": { "$ref": format!("#/components/schemas/{name}") },
                "bindings": { "kafka": {
                    "key": { "type": "string", "description": "The stream id: a stream's events share a partition and keep their order" },
                    "bindingVersion": "0.5.0"
                } }
            }),
        );
        schemas.insert(name.clone(), envelope(event.event_type, event.schema_version, &schema));
        refs.push(json!({ "$ref": format!("#/channels/events/messages/{name}") }));
    }
    let channel_messages: Map<String, Value> =
        messages.keys().map(|name| (name.clone(), json!({ "$ref": format!("#/components/messages/{name}") }))).collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "storekeeper events topic",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Every event of storekeeper's log, published by `serve`'s relay in commit order, at least once (a consumer \
                 deduplicates by `event_id` or `global_position`). The value is the envelope as JSON; the headers carry the \
                 envelope's type, version and position, W3C trace context, and CloudEvents 1.0 attributes in Kafka's binary \
                 content mode. Streams: `product-<uuid>`, `customer-<uuid>`, `order-<uuid>`, the public contract. {INTERNAL_CATEGORIES} Personal \
                 fields (listed by `x-sealed-fields` in a payload's data) are stored and published encrypted as \
                 {{\"$sealed\": \"<base64>\"}} under the customer's key; once a customer is forgotten they cannot be opened."
            )
        },
        "defaultContentType": cloudevents::CONTENT_TYPE,
        "channels": {
            "events": {
                "address": crate::DEFAULT_TOPIC,
                "title": "The event log",
                "description": "The topic `--kafka-topic` names (storekeeper.events unless set). Partition = a stable hash of the \
                    key (the stream id) over the topic's partitions.",
                "messages": channel_messages
            }
        },
        "operations": {
            "publishEvents": {
                "action": "send",
                "title": "The relay publishes every event of the log",
                "channel": { "$ref": "#/channels/events" },
                "messages": refs
            }
        },
        "components": { "messages": messages, "schemas": schemas }
    })
}

/// The headers of one message: ours, then CloudEvents'.
fn message_headers(event_type: &str, version: u32) -> Value {
    let properties = json!({
        headers::EVENT_TYPE: { "const": event_type },
        headers::SCHEMA_VERSION: { "const": version.to_string() },
        headers::GLOBAL_POSITION: { "type": "string", "pattern": "^[1-9][0-9]*$", "description": "The event's position in the log" },
        headers::TRACEPARENT: {
            "type": "string",
            "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context: the trace of the request that caused the event"
        },
        cloudevents::header::ID: { "type": "string", "format": "uuid", "description": "The event id" },
        cloudevents::header::SOURCE: { "type": "string", "pattern": "^/storekeeper/[a-z]+$", "description": "/storekeeper/<stream category>" },
        cloudevents::header::SPEC_VERSION: { "const": cloudevents::SPEC_VERSION },
        cloudevents::header::TYPE: { "const": cloudevents::event_type(event_type, version) },
        cloudevents::header::TIME: { "type": "string", "format": "date-time", "description": "When the event occurred" },
        cloudevents::header::SUBJECT: { "type": "string", "description": "The stream id" },
        cloudevents::header::DATA_SCHEMA: { "const": cloudevents::data_schema(event_type, version) },
        cloudevents::header::CONTENT_TYPE: { "const": cloudevents::CONTENT_TYPE }
    });
    let required: Vec<&String> = properties.as_object().expect("an object").keys().collect();
    json!({ "type": "object", "required": required, "properties": properties })
}

/// The envelope schema of one event type and version.
fn envelope(event_type: &str, version: u32, schema: &Value) -> Value {
    let name = format!("{event_type}.v{version}");
    json!({
        "$id": cloudevents::data_schema(event_type, version),
        "title": name,
        "type": "object",
        "additionalProperties": false,
        "required": ["event_id", "stream_id", "stream_version", "global_position", "event_type", "schema_version", "occurred_at", "recorded_at", "metadata", "data"],
        "properties": {
            "event_id": { "type": "string", "format": "uuid" },
            "stream_id": { "type": "string", "pattern": "^[a-z]+-.+$" },
            "stream_version": { "type": "integer", "minimum": 0, "description": "The event's place in its stream, from 0" },
            "global_position": { "type": "integer", "minimum": 1, "description": "The event's place in the log, from 1" },
            "event_type": { "const": event_type },
            "schema_version": { "const": version },
            "occurred_at": { "type": "string", "format": "date-time" },
            "recorded_at": { "type": "string", "format": "date-time" },
            "metadata": metadata(),
            "data": stored_form(schema)
        }
    })
}

fn metadata() -> Value {
    let text = json!({ "type": "string" });
    let uuid = json!({ "type": "string", "format": "uuid" });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["actor", "correlation_id"],
        "properties": {
            "actor": { "type": "string", "description": "Who: a token's subject, or system:<process>" },
            "role": { "enum": ["admin", "customer"] },
            "correlation_id": uuid,
            "causation_id": uuid,
            "request_id": text,
            "idempotency_key": text,
            "traceparent": text
        }
    })
}

/// `schema` with its references inlined and its sealed fields allowed in
/// their encrypted form.
fn stored_form(schema: &Value) -> Value {
    let definitions = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let mut data = inline(schema, &definitions);
    let object = data.as_object_mut().expect("an event schema is an object");
    for key in ["$schema", "$defs"] {
        object.remove(key);
    }
    let sealed: Vec<String> = object
        .get("x-sealed-fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        for field in sealed {
            if let Some(plain) = properties.remove(&field) {
                let encrypted = json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["$sealed"],
                    "properties": { "$sealed": { "type": "string", "contentEncoding": "base64" } }
                });
                properties.insert(field, json!({ "anyOf": [plain, encrypted] }));
            }
        }
    }
    data
}

/// Replaces every `{"$ref": "#/$defs/X"}` with X, recursively.
fn inline(value: &Value, definitions: &Value) -> Value {
    match value {
        Value::Object(object) => {
            if let Some(target) = object.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
                let mut resolved = inline(&definitions[target], definitions);
                // Siblings of a reference (a description) stay beside it.
                if let Value::Object(resolved_object) = &mut resolved {
                    for (key, sibling) in object.iter().filter(|(k, _)| *k != "$ref") {
                        resolved_object.insert(key.clone(), inline(sibling, definitions));
                    }
                }
                return resolved;
            }
            Value::Object(object.iter().filter(|(k, _)| *k != "$defs").map(|(k, v)| (k.clone(), inline(v, definitions))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| inline(v, definitions)).collect()),
        other => other.clone(),
    }
}
