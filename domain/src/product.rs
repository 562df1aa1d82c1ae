//! Products and their stock. `stock` is what can still be reserved:
//! restocks add, reservations take, releases give back, and it never goes
//! below zero. Reservations are keyed by order, which makes the process
//! manager's commands idempotent: a redelivered reserve or release for the
//! same order changes nothing.

use std::collections::{BTreeMap, VecDeque};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::event_enum;
use crate::values::text;
use crate::{Aggregate, DomainError, Money, Sku};

/// `ProductAdded` as stored today (v2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    pub product_id: Uuid,
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub initial_stock: u32,
}

/// `ProductAdded` as stored before money carried its currency (v1): the
/// price was in US cents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAddedV1 {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_cents: i64,
    pub initial_stock: u32,
}

pub(crate) fn upcast_product_added_v1(data: serde_json::Value) -> Result<serde_json::Value, serde_json::Error> {
    let v1: ProductAddedV1 = serde_json::from_value(data)?;
    serde_json::to_value(serde_json::json!({
        "product_id": v1.product_id,
        "sku": v1.sku,
        "name": v1.name,
        "description": v1.description,
        "category": v1.category,
        "price": { "amount_minor": v1.price_cents, "currency": "USD" },
        "initial_stock": v1.initial_stock,
    }))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDetailsUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductPriceChanged {
    pub previous_price: Money,
    pub price: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductRestocked {
    pub quantity: u32,
    pub stock_after: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProductDiscontinued {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub quantity: u32,
    pub stock_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationFailure {
    InsufficientStock,
    Discontinued,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservationFailed {
    pub order_id: Uuid,
    pub requested: u32,
    pub available: u32,
    pub reason: ReservationFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservationReleased {
    pub order_id: Uuid,
    pub quantity: u32,
    pub stock_after: u32,
}

event_enum! {
    pub enum ProductEvent {
        Added(ProductAdded) = ("ProductAdded", 2),
        DetailsUpdated(ProductDetailsUpdated) = ("ProductDetailsUpdated", 1),
        PriceChanged(ProductPriceChanged) = ("ProductPriceChanged", 1),
        Restocked(ProductRestocked) = ("ProductRestocked", 1),
        Discontinued(ProductDiscontinued) = ("ProductDiscontinued", 1),
        StockReserved(StockReserved) = ("StockReserved", 1),
        StockReservationFailed(StockReservationFailed) = ("StockReservationFailed", 1),
        StockReservationReleased(StockReservationReleased) = ("StockReservationReleased", 1),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProductCommand {
    Add { product_id: Uuid, sku: Sku, name: String, description: String, category: String, price: Money, initial_stock: u32 },
    UpdateDetails { name: Option<String>, description: Option<String>, category: Option<String> },
    ChangePrice { price: Money },
    Restock { quantity: u32 },
    Discontinue,
    Reserve { order_id: Uuid, quantity: u32 },
    Release { order_id: Uuid },
}

/// How many released reservations a product remembers, so that a
/// reservation redelivered after its release is still recognised. Older
/// ones are forgotten: the state stays bounded however many orders the
/// product has seen (the event log's receipts cover redeliveries within a
/// day regardless).
pub const REMEMBERED_RELEASES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: Uuid,
    pub sku: Sku,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub stock: u32,
    pub discontinued: bool,
    /// Orders holding units now, with how many: only open reservations,
    /// so the state does not grow with the product's history.
    pub held: BTreeMap<Uuid, u32>,
    /// The most recently released reservations (at most
    /// `REMEMBERED_RELEASES`), oldest first.
    pub released: VecDeque<Uuid>,
}

impl Product {
    /// Units held by orders right now.
    pub fn reserved(&self) -> u64 {
        self.held.values().map(|q| u64::from(*q)).sum()
    }

    /// Whether `order_id` has reserved here (held or released lately).
    pub fn has_reserved_for(&self, order_id: &Uuid) -> bool {
        self.held.contains_key(order_id) || self.released.contains(order_id)
    }
}

pub type ProductState = Option<Product>;

pub struct ProductAggregate;

fn details(name: &str, description: &str, category: &str) -> Result<(), DomainError> {
    text("name", name, 200)?;
    crate::values::free_text("description", description, 10_000)?;
    text("category", category, 100)
}

impl Aggregate for ProductAggregate {
    const CATEGORY: crate::Category = crate::Category::Product;
    const SNAPSHOT_VERSION: u32 = 1;
    type State = ProductState;
    type Command = ProductCommand;
    type Event = ProductEvent;

    fn weight(state: &ProductState) -> usize {
        let Some(p) = state else { return std::mem::size_of::<ProductState>() };
        // A B-tree entry costs about its key and value again in nodes.
        std::mem::size_of::<ProductState>()
            + p.sku.as_str().len()
            + p.name.len()
            + p.description.len()
            + p.category.len()
            + p.held.len() * 2 * std::mem::size_of::<(Uuid, u32)>()
            + p.released.capacity() * std::mem::size_of::<Uuid>()
    }

    fn decide(state: &ProductState, command: ProductCommand) -> Result<Vec<ProductEvent>, DomainError> {
        use ProductCommand as C;
        let product = match (state, command) {
            (Some(_), C::Add { .. }) => return Err(DomainError::AlreadyExists("product")),
            (None, C::Add { product_id, sku, name, description, category, price, initial_stock }) => {
                details(&name, &description, &category)?;
                let price = Money::price(price.amount_minor, price.currency)?;
                return Ok(vec![ProductEvent::Added(ProductAdded { product_id, sku, name, description, category, price, initial_stock })]);
            }
            (None, _) => return Err(DomainError::NotFound("product")),
            (Some(product), command) => (product, command),
        };
        match product {
            (p, C::UpdateDetails { name, description, category }) => {
                details(
                    name.as_deref().unwrap_or(&p.name),
                    description.as_deref().unwrap_or(&p.description),
                    category.as_deref().unwrap_or(&p.category),
                )?;
                let changed = |new: &Option<String>, old: &String| new.clone().filter(|n| n != old);
                let event = ProductDetailsUpdated {
                    name: changed(&name, &p.name),
                    description: changed(&description, &p.description),
                    category: changed(&category, &p.category),
                };
                if event.name.is_none() && event.description.is_none() && event.category.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::DetailsUpdated(event)])
            }
            (p, C::ChangePrice { .. } | C::Restock { .. }) if p.discontinued => Err(DomainError::state("the product is discontinued")),
            (p, C::ChangePrice { price }) => {
                let price = Money::price(price.amount_minor, price.currency)?;
                if price == p.price {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::PriceChanged(ProductPriceChanged { previous_price: p.price.clone(), price })])
            }
            (_, C::Restock { quantity: 0 }) => Err(DomainError::invalid("quantity", "must be greater than zero")),
            (p, C::Restock { quantity }) => {
                // Units held by orders come back on release: stock plus
                // everything held must fit, or a release would lose units.
                let stock_after = p
                    .stock
                    .checked_add(quantity)
                    .filter(|after| u64::from(*after) + p.reserved() <= u64::from(u32::MAX))
                    .ok_or_else(|| DomainError::state("stock and reserved units would exceed 4294967295"))?;
                Ok(vec![ProductEvent::Restocked(ProductRestocked { quantity, stock_after })])
            }
            (p, C::Discontinue) if p.discontinued => Ok(vec![]),
            (_, C::Discontinue) => Ok(vec![ProductEvent::Discontinued(ProductDiscontinued {})]),
            // Reserving twice for one order is a redelivery: nothing to do.
            (p, C::Reserve { order_id, .. }) if p.has_reserved_for(&order_id) => Ok(vec![]),
            (_, C::Reserve { quantity: 0, .. }) => Err(DomainError::invalid("quantity", "must be greater than zero")),
            (p, C::Reserve { order_id, quantity }) => {
                let failure = if p.discontinued {
                    Some(ReservationFailure::Discontinued)
                } else if quantity > p.stock {
                    Some(ReservationFailure::InsufficientStock)
                } else {
                    None
                };
                Ok(vec![match failure {
                    Some(reason) => ProductEvent::StockReservationFailed(StockReservationFailed {
                        order_id,
                        requested: quantity,
                        available: p.stock,
                        reason,
                    }),
                    None => ProductEvent::StockReserved(StockReserved { order_id, quantity, stock_after: p.stock - quantity }),
                }])
            }
            (p, C::Release { order_id }) => match p.held.get(&order_id) {
                Some(quantity) => Ok(vec![ProductEvent::StockReservationReleased(StockReservationReleased {
                    order_id,
                    quantity: *quantity,
                    // Never overflows: restocks keep stock + held within u32.
                    stock_after: p.stock.checked_add(*quantity).ok_or_else(|| DomainError::state("stock would overflow"))?,
                })]),
                _ => Ok(vec![]),
            },
            (_, C::Add { .. }) => unreachable!("handled above"),
        }
    }

    fn evolve(state: ProductState, event: &ProductEvent) -> ProductState {
        use ProductEvent as E;
        let mut p = match (state, event) {
            (_, E::Added(e)) => {
                return Some(Product {
                    id: e.product_id,
                    sku: e.sku.clone(),
                    name: e.name.clone(),
                    description: e.description.clone(),
                    category: e.category.clone(),
                    price: e.price.clone(),
                    stock: e.initial_stock,
                    discontinued: false,
                    held: BTreeMap::new(),
                    released: VecDeque::new(),
                });
            }
            (None, _) => return None,
            (Some(p), _) => p,
        };
        match event {
            E::Added(_) => {}
            E::DetailsUpdated(e) => {
                if let Some(name) = &e.name {
                    p.name = name.clone();
                }
                if let Some(description) = &e.description {
                    p.description = description.clone();
                }
                if let Some(category) = &e.category {
                    p.category = category.clone();
                }
            }
            E::PriceChanged(e) => p.price = e.price.clone(),
            E::Restocked(e) => p.stock = e.stock_after,
            E::Discontinued(_) => p.discontinued = true,
            E::StockReserved(e) => {
                p.stock = e.stock_after;
                p.held.insert(e.order_id, e.quantity);
            }
            E::StockReservationFailed(_) => {}
            E::StockReservationReleased(e) => {
                p.stock = e.stock_after;
                p.held.remove(&e.order_id);
                if p.released.len() == REMEMBERED_RELEASES {
                    p.released.pop_front();
                }
                p.released.push_back(e.order_id);
            }
        }
        Some(p)
    }
}
