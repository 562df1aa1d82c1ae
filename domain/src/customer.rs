//! Customers: registration, email changes, shipping address, deactivation,
//! and being forgotten (their personal data shredded, see `crate::personal`).
//! Email uniqueness is not decided here but by the claim registry
//! (`crate::claim`), whose streams are appended atomically with these.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::event_enum;
use crate::values::text;
use crate::{Address, Aggregate, DomainError, Email};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerRegistered {
    pub customer_id: Uuid,
    pub email: Email,
    pub name: String,
    #[serde(default)]
    pub shipping_address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerEmailChanged {
    pub previous_email: Email,
    pub email: Email,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerShippingAddressUpdated {
    pub shipping_address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerDeactivated {
    pub reason: String,
}

/// The customer's key is deleted: every personal field of its events (and
/// of its orders) reads as redacted from now on, and its email is free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerForgotten {}

event_enum! {
    pub enum CustomerEvent {
        // v2: the personal fields are stored encrypted (`crate::personal`).
        Registered(CustomerRegistered) = ("CustomerRegistered", 2),
        EmailChanged(CustomerEmailChanged) = ("CustomerEmailChanged", 2),
        ShippingAddressUpdated(CustomerShippingAddressUpdated) = ("CustomerShippingAddressUpdated", 2),
        Deactivated(CustomerDeactivated) = ("CustomerDeactivated", 1),
        Forgotten(CustomerForgotten) = ("CustomerForgotten", 1),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CustomerCommand {
    Register { customer_id: Uuid, email: Email, name: String, shipping_address: Option<Address> },
    ChangeEmail { email: Email },
    UpdateShippingAddress { shipping_address: Address },
    Deactivate { reason: String },
    Forget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: Uuid,
    pub email: Email,
    pub name: String,
    pub shipping_address: Option<Address>,
    pub active: bool,
    #[serde(default)]
    pub forgotten: bool,
}

/// `None` until registered.
pub type CustomerState = Option<Customer>;

pub struct CustomerAggregate;

impl Aggregate for CustomerAggregate {
    const CATEGORY: crate::Category = crate::Category::Customer;
    const SNAPSHOT_VERSION: u32 = 2;
    type State = CustomerState;
    type Command = CustomerCommand;
    type Event = CustomerEvent;

    fn decide(state: &CustomerState, command: CustomerCommand) -> Result<Vec<CustomerEvent>, DomainError> {
        use CustomerCommand as C;
        let customer = match (state, command) {
            (Some(_), C::Register { .. }) => return Err(DomainError::AlreadyExists("customer")),
            (None, C::Register { customer_id, email, name, shipping_address }) => {
                text("name", &name, 200)?;
                if let Some(address) = &shipping_address {
                    address.validate("shipping_address")?;
                }
                return Ok(vec![CustomerEvent::Registered(CustomerRegistered { customer_id, email, name, shipping_address })]);
            }
            (None, _) => return Err(DomainError::NotFound("customer")),
            (Some(customer), command) => (customer, command),
        };
        match customer {
            (c, C::Forget) if c.forgotten => Ok(vec![]),
            (_, C::Forget) => Ok(vec![CustomerEvent::Forgotten(CustomerForgotten {})]),
            (c, C::ChangeEmail { .. } | C::UpdateShippingAddress { .. }) if c.forgotten => {
                Err(DomainError::state("the customer is forgotten"))
            }
            (c, C::ChangeEmail { .. } | C::UpdateShippingAddress { .. }) if !c.active => {
                Err(DomainError::state("the customer is deactivated"))
            }
            (c, C::ChangeEmail { email }) if c.email == email => Ok(vec![]),
            (c, C::ChangeEmail { email }) => {
                Ok(vec![CustomerEvent::EmailChanged(CustomerEmailChanged { previous_email: c.email.clone(), email })])
            }
            (c, C::UpdateShippingAddress { shipping_address }) => {
                shipping_address.validate("shipping_address")?;
                if c.shipping_address.as_ref() == Some(&shipping_address) {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::ShippingAddressUpdated(CustomerShippingAddressUpdated { shipping_address })])
            }
            (c, C::Deactivate { .. }) if !c.active => Ok(vec![]),
            (_, C::Deactivate { reason }) => {
                text("reason", &reason, 1000)?;
                Ok(vec![CustomerEvent::Deactivated(CustomerDeactivated { reason })])
            }
            (_, C::Register { .. }) => unreachable!("handled above"),
        }
    }

    fn evolve(state: CustomerState, event: &CustomerEvent) -> CustomerState {
        match (state, event) {
            (_, CustomerEvent::Registered(e)) => Some(Customer {
                id: e.customer_id,
                email: e.email.clone(),
                name: e.name.clone(),
                shipping_address: e.shipping_address.clone(),
                active: true,
                forgotten: false,
            }),
            (Some(c), CustomerEvent::EmailChanged(e)) => Some(Customer { email: e.email.clone(), ..c }),
            (Some(c), CustomerEvent::ShippingAddressUpdated(e)) => {
                Some(Customer { shipping_address: Some(e.shipping_address.clone()), ..c })
            }
            (Some(c), CustomerEvent::Deactivated(_)) => Some(Customer { active: false, ..c }),
            (Some(c), CustomerEvent::Forgotten(_)) => Some(Customer {
                email: Email::redacted(),
                name: crate::personal::REDACTED.to_owned(),
                shipping_address: c.shipping_address.map(|_| Address::redacted()),
                active: false,
                forgotten: true,
                ..c
            }),
            (None, _) => None,
        }
    }
}
