//! The stored form of events, kept apart from the domain enums.
//!
//! An event is stored as `event_type` + `schema_version` + JSON `data`.
//! Stored event types are never renamed and a stored shape never changes:
//! a new shape is a new `schema_version` plus an upcaster from the previous
//! one, and readers always upcast to the current version before decoding.
//! The JSON Schemas under `schemas/events/` are generated from these types.

use serde_json::Value;
use thiserror::Error;

/// An event in its stored form, ready for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    pub event_type: &'static str,
    pub schema_version: u32,
    pub data: Value,
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("{event_type} has schema version {version}, newer than this build knows ({known})")]
    FutureVersion { event_type: String, version: u32, known: u32 },
    #[error("no upcaster from {event_type} v{version}")]
    MissingUpcaster { event_type: String, version: u32 },
    #[error("{event_type} v{version} payload: {source}")]
    Payload {
        event_type: String,
        version: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// Conversion between a domain event enum and its stored form.
pub trait EventCodec: Sized {
    /// Every stored event type of this enum with its current schema version.
    const TYPES: &'static [(&'static str, u32)];
    fn event_type(&self) -> &'static str;
    fn encode(&self) -> EncodedEvent;
    /// Decodes a stored event of any known version, upcasting old ones.
    /// Current versions decode straight from the borrowed JSON.
    fn decode(event_type: &str, schema_version: u32, data: &Value) -> Result<Self, DecodeError>;
    /// JSON Schemas of the current version of every type.
    fn schemas() -> Vec<EventSchema>;
}

/// A generated JSON Schema of one event type at one version.
pub struct EventSchema {
    pub event_type: &'static str,
    pub schema_version: u32,
    pub schema: schemars::Schema,
}

type Upcaster = fn(Value) -> Result<Value, serde_json::Error>;

/// Every upcaster: (event type, version it reads). Each lifts data by one
/// version.
const UPCASTERS: &[(&str, u32, Upcaster)] = &[
    ("ProductAdded", 1, crate::product::upcast_product_added_v1),
    // v2 of these stores the personal fields encrypted; once decrypted (or for
    // v1, which holds them in the clear) the shape is the same.
    ("CustomerRegistered", 1, Ok),
    ("CustomerEmailChanged", 1, Ok),
    ("CustomerShippingAddressUpdated", 1, Ok),
    ("OrderPlaced", 1, Ok),
];

/// Lifts `data` stored at `stored` up to `current`, one version at a time.
pub fn upcast(event_type: &str, stored: u32, current: u32, mut data: Value) -> Result<Value, DecodeError> {
    if stored > current {
        return Err(DecodeError::FutureVersion { event_type: event_type.into(), version: stored, known: current });
    }
    for version in stored..current {
        let (_, _, lift) = UPCASTERS
            .iter()
            .find(|(ty, from, _)| *ty == event_type && *from == version)
            .ok_or_else(|| DecodeError::MissingUpcaster { event_type: event_type.into(), version })?;
        data = lift(data).map_err(|source| DecodeError::Payload { event_type: event_type.into(), version, source })?;
    }
    Ok(data)
}

/// Schemas of historical versions that are still read through upcasters.
pub fn historical_schemas() -> Vec<EventSchema> {
    use crate::{customer::*, order::OrderPlaced};
    vec![
        EventSchema { event_type: "ProductAdded", schema_version: 1, schema: schemars::schema_for!(crate::product::ProductAddedV1) },
        EventSchema { event_type: "CustomerRegistered", schema_version: 1, schema: schemars::schema_for!(CustomerRegistered) },
        EventSchema { event_type: "CustomerEmailChanged", schema_version: 1, schema: schemars::schema_for!(CustomerEmailChanged) },
        EventSchema {
            event_type: "CustomerShippingAddressUpdated",
            schema_version: 1,
            schema: schemars::schema_for!(CustomerShippingAddressUpdated),
        },
        EventSchema { event_type: "OrderPlaced", schema_version: 1, schema: schemars::schema_for!(OrderPlaced) },
    ]
}

/// Marks the encrypted fields of a current schema: stored, each is an object
/// `{"$sealed": "<base64 of nonce and ciphertext>"}` (XChaCha20-Poly1305
/// under the owner's key), which opens to the shape the schema gives.
fn mark_sealed(mut schema: EventSchema) -> EventSchema {
    if let Some(personal) = crate::personal::personal_fields(schema.event_type)
        && schema.schema_version >= 2
    {
        let fields: Vec<&str> = personal.fields.iter().map(|(f, _)| *f).collect();
        schema.schema.insert("x-sealed-fields".into(), serde_json::json!(fields));
    }
    schema
}

/// Every schema, current and historical, in a stable order.
pub fn all_schemas() -> Vec<EventSchema> {
    let mut all = Vec::new();
    all.extend(crate::customer::CustomerEvent::schemas());
    all.extend(crate::product::ProductEvent::schemas());
    all.extend(crate::order::OrderEvent::schemas());
    all.extend(crate::claim::ClaimEvent::schemas());
    all.extend(historical_schemas());
    let mut all: Vec<EventSchema> = all.into_iter().map(mark_sealed).collect();
    all.sort_by(|a, b| (a.event_type, a.schema_version).cmp(&(b.event_type, b.schema_version)));
    all
}

/// Declares an event enum of newtype variants and its `EventCodec`.
macro_rules! event_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($variant:ident($payload:ty) = ($ty:literal, $ver:literal)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name { $($variant($payload)),+ }

        impl $crate::events::EventCodec for $name {
            const TYPES: &'static [(&'static str, u32)] = &[$(($ty, $ver)),+];

            fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => $ty),+ }
            }

            fn encode(&self) -> $crate::events::EncodedEvent {
                match self {
                    $(Self::$variant(payload) => $crate::events::EncodedEvent {
                        event_type: $ty,
                        schema_version: $ver,
                        data: serde_json::to_value(payload).expect("event payloads always serialize"),
                    }),+
                }
            }

            fn decode(event_type: &str, schema_version: u32, data: &serde_json::Value) -> Result<Self, $crate::events::DecodeError> {
                match event_type {
                    $($ty => {
                        let payload = if schema_version == $ver {
                            <$payload as serde::Deserialize>::deserialize(data)
                        } else {
                            let lifted = $crate::events::upcast($ty, schema_version, $ver, data.clone())?;
                            <$payload as serde::Deserialize>::deserialize(&lifted)
                        };
                        payload
                            .map(Self::$variant)
                            .map_err(|source| $crate::events::DecodeError::Payload { event_type: $ty.into(), version: $ver, source })
                    })+
                    other => Err($crate::events::DecodeError::UnknownType(other.to_owned())),
                }
            }

            fn schemas() -> Vec<$crate::events::EventSchema> {
                vec![$($crate::events::EventSchema { event_type: $ty, schema_version: $ver, schema: schemars::schema_for!($payload) }),+]
            }
        }
    };
}
pub(crate) use event_enum;

/// Any domain event, for consumers that see every stream (the process
/// manager, projections).
#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    Customer(crate::customer::CustomerEvent),
    Product(crate::product::ProductEvent),
    Order(crate::order::OrderEvent),
    Claim(crate::claim::ClaimEvent),
}

impl DomainEvent {
    pub fn decode(event_type: &str, schema_version: u32, data: &Value) -> Result<Self, DecodeError> {
        use crate::{claim::ClaimEvent, customer::CustomerEvent, order::OrderEvent, product::ProductEvent};
        let known = |types: &[(&str, u32)]| types.iter().any(|(ty, _)| *ty == event_type);
        if known(CustomerEvent::TYPES) {
            CustomerEvent::decode(event_type, schema_version, data).map(DomainEvent::Customer)
        } else if known(ProductEvent::TYPES) {
            ProductEvent::decode(event_type, schema_version, data).map(DomainEvent::Product)
        } else if known(OrderEvent::TYPES) {
            OrderEvent::decode(event_type, schema_version, data).map(DomainEvent::Order)
        } else if known(ClaimEvent::TYPES) {
            ClaimEvent::decode(event_type, schema_version, data).map(DomainEvent::Claim)
        } else {
            Err(DecodeError::UnknownType(event_type.to_owned()))
        }
    }
}
