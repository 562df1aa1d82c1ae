//! The order process manager's policy: which commands follow which events.
//!
//! It is stateless; everything it needs travels in the event and the id of
//! the stream it was recorded in. Every command it issues is idempotent per
//! order (products key reservations by order, orders ignore repeated
//! outcomes), so redelivering an event after a crash never reserves or
//! releases twice.

use uuid::Uuid;

use crate::events::DomainEvent;
use crate::order::{OrderCommand, OrderEvent};
use crate::product::{ProductCommand, ProductEvent};

/// A command the process manager issues, with the entity it targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Product { product_id: Uuid, command: ProductCommand },
    Order { order_id: Uuid, command: OrderCommand },
}

/// The order process's name among the consumers of the log: its
/// checkpoint, its parked steps, its entry beside the projections.
pub const NAME: &str = "order-process";

/// The stored types of the events [`react`] answers with commands: the
/// others need not be decoded to know that nothing follows them.
pub const REACTS_TO: &[&str] =
    &["OrderPlaced", "StockReserved", "StockReservationFailed", "OrderRejected", "OrderCancelled", "OrderReservationDiscarded"];

/// The commands that follow `event`, recorded in the stream of entity
/// `entity_id`, in the order they are to be issued.
pub fn react(entity_id: Uuid, event: &DomainEvent) -> Vec<Step> {
    let release = |order_id: Uuid, products: &[Uuid]| -> Vec<Step> {
        products.iter().map(|&product_id| Step::Product { product_id, command: ProductCommand::Release { order_id } }).collect()
    };
    match event {
        DomainEvent::Order(OrderEvent::Placed(e)) => e
            .lines
            .iter()
            .map(|line| Step::Product {
                product_id: line.product_id,
                command: ProductCommand::Reserve { order_id: e.order_id, quantity: line.quantity },
            })
            .collect(),
        DomainEvent::Product(ProductEvent::StockReserved(e)) => {
            vec![Step::Order { order_id: e.order_id, command: OrderCommand::RecordReservation { product_id: entity_id } }]
        }
        DomainEvent::Product(ProductEvent::StockReservationFailed(e)) => {
            vec![Step::Order { order_id: e.order_id, command: OrderCommand::Reject { product_id: entity_id, reason: e.reason } }]
        }
        DomainEvent::Order(OrderEvent::Rejected(e)) => release(entity_id, &e.release_products),
        DomainEvent::Order(OrderEvent::Cancelled(e)) => release(entity_id, &e.release_products),
        DomainEvent::Order(OrderEvent::ReservationDiscarded(e)) => release(entity_id, &[e.product_id]),
        _ => vec![],
    }
}
