//! Orders. Placing captures each line's unit price and the total; the
//! process manager (`crate::process`) then reserves stock and reports each
//! outcome back here, and the order confirms itself once every line is
//! reserved, or is rejected at the first line that cannot be.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::event_enum;
use crate::product::ReservationFailure;
use crate::values::text;
use crate::{Address, Aggregate, DomainError, Money};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: Address,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLineReserved {
    pub product_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    pub product_id: Uuid,
    pub reason: ReservationFailure,
    /// Products whose reservations for this order are to be given back.
    pub release_products: Vec<Uuid>,
}

/// A reservation that arrived after the order was closed; the process
/// manager gives it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderReservationDiscarded {
    pub product_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPaid {
    pub provider_event_id: String,
    pub amount: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderShipped {
    pub carrier: String,
    pub tracking_number: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderDelivered {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub reason: String,
    /// Products whose reservations for this order are to be given back.
    pub release_products: Vec<Uuid>,
}

event_enum! {
    pub enum OrderEvent {
        // v2: the shipping address is stored encrypted (`crate::personal`).
        Placed(OrderPlaced) = ("OrderPlaced", 2),
        LineReserved(OrderLineReserved) = ("OrderLineReserved", 1),
        Confirmed(OrderConfirmed) = ("OrderConfirmed", 1),
        Rejected(OrderRejected) = ("OrderRejected", 1),
        ReservationDiscarded(OrderReservationDiscarded) = ("OrderReservationDiscarded", 1),
        Paid(OrderPaid) = ("OrderPaid", 1),
        Shipped(OrderShipped) = ("OrderShipped", 1),
        Delivered(OrderDelivered) = ("OrderDelivered", 1),
        Cancelled(OrderCancelled) = ("OrderCancelled", 1),
    }
}

/// A line as the client asked for it, with the unit price looked up from the
/// product before deciding.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedLine {
    pub product_id: Uuid,
    pub quantity: u32,
    pub unit_price: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place {
        order_id: Uuid,
        customer_id: Uuid,
        /// Whether the customer exists and is active, looked up first.
        customer_active: bool,
        lines: Vec<PricedLine>,
        shipping_address: Address,
    },
    RecordReservation {
        product_id: Uuid,
    },
    Reject {
        product_id: Uuid,
        reason: ReservationFailure,
    },
    Pay {
        provider_event_id: String,
        amount: Money,
    },
    Ship {
        carrier: String,
        tracking_number: String,
    },
    Deliver,
    Cancel {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Confirmed,
    Rejected,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
    /// Rejected or cancelled: the order holds no stock any more.
    pub fn is_closed(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled)
    }
}

impl OrderEvent {
    /// The status this event leaves its order in, for the events that set
    /// one: what `evolve` folds and what the read model shows.
    pub fn status_after(&self) -> Option<OrderStatus> {
        match self {
            OrderEvent::Placed(_) => Some(OrderStatus::Placed),
            OrderEvent::LineReserved(_) | OrderEvent::ReservationDiscarded(_) => None,
            OrderEvent::Confirmed(_) => Some(OrderStatus::Confirmed),
            OrderEvent::Rejected(_) => Some(OrderStatus::Rejected),
            OrderEvent::Paid(_) => Some(OrderStatus::Paid),
            OrderEvent::Shipped(_) => Some(OrderStatus::Shipped),
            OrderEvent::Delivered(_) => Some(OrderStatus::Delivered),
            OrderEvent::Cancelled(_) => Some(OrderStatus::Cancelled),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    pub shipping_address: Address,
    pub status: OrderStatus,
    /// Products whose reservation for this order is held.
    pub reserved: BTreeSet<Uuid>,
    pub payment: Option<OrderPaid>,
}

pub type OrderState = Option<Order>;

pub struct OrderAggregate;

const MAX_LINES: usize = 100;

impl Aggregate for OrderAggregate {
    const CATEGORY: crate::Category = crate::Category::Order;
    const SNAPSHOT_VERSION: u32 = 1;
    type State = OrderState;
    type Command = OrderCommand;
    type Event = OrderEvent;

    fn weight(state: &OrderState) -> usize {
        let Some(o) = state else { return std::mem::size_of::<OrderState>() };
        let a = &o.shipping_address;
        std::mem::size_of::<OrderState>()
            + o.lines.capacity() * std::mem::size_of::<OrderLine>()
            + o.reserved.len() * 2 * std::mem::size_of::<Uuid>()
            + a.line1.len()
            + a.line2.as_ref().map_or(0, String::len)
            + a.city.len()
            + a.postal_code.len()
            + a.country.len()
            + o.payment.as_ref().map_or(0, |p| p.provider_event_id.len())
    }

    fn decide(state: &OrderState, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderCommand as C;
        use OrderStatus as S;
        let order = match (state, command) {
            (Some(_), C::Place { .. }) => return Err(DomainError::AlreadyExists("order")),
            (None, C::Place { order_id, customer_id, customer_active, lines, shipping_address }) => {
                return place(order_id, customer_id, customer_active, lines, shipping_address);
            }
            (None, _) => return Err(DomainError::NotFound("order")),
            (Some(order), command) => (order, command),
        };
        match order {
            (o, C::RecordReservation { product_id }) => {
                if o.status.is_closed() {
                    return Ok(vec![OrderEvent::ReservationDiscarded(OrderReservationDiscarded { product_id })]);
                }
                if o.status != S::Placed || o.reserved.contains(&product_id) {
                    return Ok(vec![]);
                }
                if !o.lines.iter().any(|l| l.product_id == product_id) {
                    return Err(DomainError::invalid("product_id", "the order has no line for this product"));
                }
                let mut events = vec![OrderEvent::LineReserved(OrderLineReserved { product_id })];
                if o.reserved.len() + 1 == o.lines.len() {
                    events.push(OrderEvent::Confirmed(OrderConfirmed {}));
                }
                Ok(events)
            }
            (o, C::Reject { product_id, reason }) => {
                if o.status != S::Placed {
                    return Ok(vec![]);
                }
                Ok(vec![OrderEvent::Rejected(OrderRejected { product_id, reason, release_products: o.reserved.iter().copied().collect() })])
            }
            (o, C::Pay { provider_event_id, amount }) => {
                if let Some(paid) = &o.payment {
                    return if paid.provider_event_id == provider_event_id {
                        Ok(vec![])
                    } else {
                        Err(DomainError::state("the order is already paid"))
                    };
                }
                if o.status != S::Confirmed {
                    return Err(DomainError::state(format!("a {} order cannot be paid", o.status.as_str())));
                }
                if amount != o.total {
                    return Err(DomainError::PaymentMismatch(format!(
                        "payment of {} {} does not match the order total of {} {}",
                        amount.amount_minor, amount.currency, o.total.amount_minor, o.total.currency
                    )));
                }
                Ok(vec![OrderEvent::Paid(OrderPaid { provider_event_id, amount })])
            }
            (o, C::Ship { carrier, tracking_number }) => {
                if o.status != S::Paid {
                    return Err(DomainError::state(format!("a {} order cannot be shipped", o.status.as_str())));
                }
                text("carrier", &carrier, 100)?;
                text("tracking_number", &tracking_number, 100)?;
                Ok(vec![OrderEvent::Shipped(OrderShipped { carrier, tracking_number })])
            }
            (o, C::Deliver) => match o.status {
                S::Delivered => Ok(vec![]),
                S::Shipped => Ok(vec![OrderEvent::Delivered(OrderDelivered {})]),
                s => Err(DomainError::state(format!("a {} order cannot be delivered", s.as_str()))),
            },
            (o, C::Cancel { reason }) => match o.status {
                S::Cancelled => Ok(vec![]),
                S::Placed | S::Confirmed | S::Paid => {
                    text("reason", &reason, 1000)?;
                    Ok(vec![OrderEvent::Cancelled(OrderCancelled { reason, release_products: o.reserved.iter().copied().collect() })])
                }
                s => Err(DomainError::state(format!("a {} order cannot be cancelled", s.as_str()))),
            },
            (_, C::Place { .. }) => unreachable!("handled above"),
        }
    }

    fn evolve(state: OrderState, event: &OrderEvent) -> OrderState {
        use OrderEvent as E;
        let mut o = match (state, event) {
            (_, E::Placed(e)) => {
                return Some(Order {
                    id: e.order_id,
                    customer_id: e.customer_id,
                    lines: e.lines.clone(),
                    total: e.total.clone(),
                    shipping_address: e.shipping_address.clone(),
                    status: OrderStatus::Placed,
                    reserved: BTreeSet::new(),
                    payment: None,
                });
            }
            (None, _) => return None,
            (Some(o), _) => o,
        };
        if let Some(status) = event.status_after() {
            o.status = status;
        }
        match event {
            E::LineReserved(e) => {
                o.reserved.insert(e.product_id);
            }
            E::Rejected(_) | E::Cancelled(_) => o.reserved.clear(),
            E::Paid(e) => o.payment = Some(e.clone()),
            E::Placed(_) | E::ReservationDiscarded(_) | E::Confirmed(_) | E::Shipped(_) | E::Delivered(_) => {}
        }
        Some(o)
    }
}

fn place(
    order_id: Uuid,
    customer_id: Uuid,
    customer_active: bool,
    lines: Vec<PricedLine>,
    shipping_address: Address,
) -> Result<Vec<OrderEvent>, DomainError> {
    if !customer_active {
        return Err(DomainError::CustomerInactive);
    }
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(DomainError::invalid("lines", format!("must hold 1 to {MAX_LINES} lines")));
    }
    shipping_address.validate("shipping_address")?;
    let mut seen = BTreeSet::new();
    let mut total: Option<Money> = None;
    let mut placed = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        if line.quantity == 0 {
            return Err(DomainError::invalid(format!("lines[{i}].quantity"), "must be greater than zero"));
        }
        if !seen.insert(line.product_id) {
            return Err(DomainError::invalid(format!("lines[{i}].product_id"), "each product may appear on one line only"));
        }
        let line_total = line.unit_price.times(line.quantity)?;
        total = Some(match total {
            None => line_total.clone(),
            Some(sum) => sum.checked_add(&line_total)?,
        });
        placed.push(OrderLine { product_id: line.product_id, quantity: line.quantity, unit_price: line.unit_price, line_total });
    }
    let total = total.expect("at least one line");
    Ok(vec![OrderEvent::Placed(OrderPlaced { order_id, customer_id, lines: placed, total, shipping_address })])
}
