//! Which stored fields hold personal data, and what a reader sees of them
//! once their owner is forgotten.
//!
//! Personal fields are stored encrypted with their owner's key (see
//! `eventlog::vault`), so deleting the key forgets them everywhere the
//! event went. The owner is always a customer: the stream's own id for
//! customer events, the `customer_id` field for orders. This is data, not
//! IO: the domain says what is personal, the vault does the encryption.

use serde_json::Value;
use uuid::Uuid;

use crate::{Address, Category, StreamId};

/// What a forgotten text field reads as.
pub const REDACTED: &str = "[redacted]";

/// The stored type of the event that forgets a customer: its key goes in
/// the same transaction, and readers scrub what they hold of it.
pub const FORGOTTEN: &str = "CustomerForgotten";

/// Whether events of the stream `stream_id` may hold personal fields.
pub fn holds_personal_data(stream_id: &str) -> bool {
    StreamId::parse(stream_id).is_ok_and(|s| s.category.holds_personal_data())
}

/// The customer that an event of `event_type` on `stream_id` forgets, if
/// it is a forget.
pub fn forgotten_customer(stream_id: &str, event_type: &str) -> Option<Uuid> {
    (event_type == FORGOTTEN).then(|| StreamId::id_in(stream_id, Category::Customer)).flatten()
}

/// The shape of a personal field, for its redacted stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text,
    Address,
}

/// Where an event's owner is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The uuid of the event's own stream (`customer-<uuid>`).
    Stream,
    /// A uuid field of the event's data.
    Field(&'static str),
}

/// The personal fields of one stored event type (every version).
pub struct PersonalFields {
    pub event_type: &'static str,
    pub owner: Owner,
    pub fields: &'static [(&'static str, Shape)],
}

pub const PERSONAL: &[PersonalFields] = &[
    PersonalFields {
        event_type: "CustomerRegistered",
        owner: Owner::Stream,
        fields: &[("email", Shape::Text), ("name", Shape::Text), ("shipping_address", Shape::Address)],
    },
    PersonalFields {
        event_type: "CustomerEmailChanged",
        owner: Owner::Stream,
        fields: &[("previous_email", Shape::Text), ("email", Shape::Text)],
    },
    PersonalFields { event_type: "CustomerShippingAddressUpdated", owner: Owner::Stream, fields: &[("shipping_address", Shape::Address)] },
    PersonalFields { event_type: "OrderPlaced", owner: Owner::Field("customer_id"), fields: &[("shipping_address", Shape::Address)] },
];

/// The personal fields of `event_type`, if it has any.
pub fn personal_fields(event_type: &str) -> Option<&'static PersonalFields> {
    PERSONAL.iter().find(|p| p.event_type == event_type)
}

impl PersonalFields {
    /// The customer whose key encrypts this event's personal fields.
    pub fn owner_of(&self, stream_id: &str, data: &Value) -> Option<Uuid> {
        let raw = match self.owner {
            Owner::Stream => return StreamId::id_in(stream_id, Category::Customer),
            Owner::Field(field) => data.get(field)?.as_str()?,
        };
        Uuid::parse_str(raw).ok()
    }
}

impl Address {
    /// An address whose every field is redacted.
    pub fn redacted() -> Address {
        let r = || REDACTED.to_owned();
        Address { line1: r(), line2: None, city: r(), postal_code: r(), country: r() }
    }
}

impl Shape {
    /// The stand-in a reader sees for a forgotten field of this shape.
    pub fn redacted(self) -> Value {
        match self {
            Shape::Text => Value::String(REDACTED.to_owned()),
            Shape::Address => serde_json::to_value(Address::redacted()).expect("an address serializes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::{CustomerEvent, CustomerForgotten};
    use crate::events::EventCodec;

    #[test]
    fn the_forget_event_is_named_as_the_codec_stores_it() {
        assert_eq!(CustomerEvent::Forgotten(CustomerForgotten {}).event_type(), FORGOTTEN);
        let customer = Uuid::from_u128(7);
        let stream = StreamId::new(Category::Customer, customer).to_string();
        assert_eq!(forgotten_customer(&stream, FORGOTTEN), Some(customer));
        assert_eq!(forgotten_customer(&stream, "CustomerDeactivated"), None);
        assert!(holds_personal_data(&stream));
        assert!(!holds_personal_data(&StreamId::new(Category::Product, customer).to_string()));
    }
}
