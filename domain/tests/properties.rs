//! Properties that must hold over arbitrary command sequences, with the
//! process manager running in between, redelivering events at random the way
//! an at-least-once subscription does.

use std::collections::{BTreeMap, VecDeque};

use domain::events::DomainEvent;
use domain::events::EventCodec;
use domain::order::*;
use domain::process::{REACTS_TO, Step, react};
use domain::product::*;
use domain::{Address, Aggregate, Currency, Money, Sku};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Op {
    Place(Vec<(usize, u32)>),
    Restock(usize, u32),
    Discontinue(usize),
    Cancel(usize),
    /// Let the process manager handle this many queued events.
    Pump(usize),
    /// Deliver an already handled event once more.
    Redeliver(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec((0..4usize, 1..6u32), 1..4).prop_map(Op::Place),
        1 => (0..4usize, 1..5u32).prop_map(|(p, q)| Op::Restock(p, q)),
        1 => (0..4usize).prop_map(Op::Discontinue),
        1 => (0..8usize).prop_map(Op::Cancel),
        3 => (1..6usize).prop_map(Op::Pump),
        1 => (0..64usize).prop_map(Op::Redeliver),
    ]
}

#[derive(Default)]
struct World {
    products: BTreeMap<Uuid, ProductState>,
    product_ids: Vec<Uuid>,
    orders: BTreeMap<Uuid, OrderState>,
    order_ids: Vec<Uuid>,
    queue: VecDeque<(Uuid, DomainEvent)>,
    handled: Vec<(Uuid, DomainEvent)>,
    supplied: BTreeMap<Uuid, u64>,
}

impl World {
    fn new(stocks: &[u32]) -> Self {
        let mut world = World::default();
        for (i, &stock) in stocks.iter().enumerate() {
            let id = Uuid::from_u128(i as u128 + 1);
            world.product_ids.push(id);
            world.supplied.insert(id, u64::from(stock));
            world.product(
                id,
                ProductCommand::Add {
                    product_id: id,
                    sku: Sku::parse(&format!("SKU-{i}")).unwrap(),
                    name: "thing".into(),
                    description: String::new(),
                    category: "c".into(),
                    price: Money::new(100 + i as i64, Currency::usd()),
                    initial_stock: stock,
                },
            );
        }
        world
    }

    fn product(&mut self, id: Uuid, command: ProductCommand) {
        let state = self.products.remove(&id).unwrap_or_default();
        let events = ProductAggregate::decide(&state, command).unwrap_or_default();
        let state = events.iter().fold(state, ProductAggregate::evolve);
        self.products.insert(id, state);
        self.queue.extend(events.into_iter().map(|e| (id, DomainEvent::Product(e))));
    }

    fn order(&mut self, id: Uuid, command: OrderCommand) {
        let state = self.orders.remove(&id).unwrap_or_default();
        let events = OrderAggregate::decide(&state, command).unwrap_or_default();
        let state = events.iter().fold(state, OrderAggregate::evolve);
        self.orders.insert(id, state);
        self.queue.extend(events.into_iter().map(|e| (id, DomainEvent::Order(e))));
    }

    fn handle(&mut self, entity: Uuid, event: DomainEvent) {
        let steps = react(entity, &event);
        // The process manager decodes only the types it reacts to.
        let stored_type = match &event {
            DomainEvent::Product(e) => e.event_type(),
            DomainEvent::Order(e) => e.event_type(),
            DomainEvent::Customer(e) => e.event_type(),
            DomainEvent::Claim(e) => e.event_type(),
        };
        assert!(steps.is_empty() || REACTS_TO.contains(&stored_type), "{stored_type} is reacted to but not in REACTS_TO");
        for step in steps {
            match step {
                Step::Product { product_id, command } => self.product(product_id, command),
                Step::Order { order_id, command } => self.order(order_id, command),
            }
        }
        self.handled.push((entity, event));
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Place(lines) => {
                let id = Uuid::from_u128(1000 + self.order_ids.len() as u128);
                self.order_ids.push(id);
                let mut seen = Vec::new();
                let lines = lines
                    .into_iter()
                    .filter(|(p, _)| {
                        !seen.contains(p) && {
                            seen.push(*p);
                            true
                        }
                    })
                    .map(|(p, quantity)| {
                        let product_id = self.product_ids[p];
                        let unit_price = self.products[&product_id].as_ref().unwrap().price.clone();
                        PricedLine { product_id, quantity, unit_price }
                    })
                    .collect();
                let address = Address { line1: "x".into(), line2: None, city: "y".into(), postal_code: "1".into(), country: "US".into() };
                self.order(
                    id,
                    OrderCommand::Place { order_id: id, customer_id: Uuid::nil(), customer_active: true, lines, shipping_address: address },
                );
            }
            Op::Restock(p, quantity) => {
                let id = self.product_ids[p];
                let before = self.products[&id].as_ref().unwrap().stock;
                self.product(id, ProductCommand::Restock { quantity });
                if self.products[&id].as_ref().unwrap().stock != before {
                    *self.supplied.get_mut(&id).unwrap() += u64::from(quantity);
                }
            }
            Op::Discontinue(p) => self.product(self.product_ids[p], ProductCommand::Discontinue),
            Op::Cancel(o) => {
                if let Some(&id) = self.order_ids.get(o) {
                    self.order(id, OrderCommand::Cancel { reason: "changed my mind".into() });
                }
            }
            Op::Pump(n) => {
                for _ in 0..n {
                    if let Some((entity, event)) = self.queue.pop_front() {
                        self.handle(entity, event);
                    }
                }
            }
            Op::Redeliver(i) => {
                if !self.handled.is_empty() {
                    let (entity, event) = self.handled[i % self.handled.len()].clone();
                    self.handle(entity, event);
                }
            }
        }
    }

    fn settle(&mut self) {
        while let Some((entity, event)) = self.queue.pop_front() {
            self.handle(entity, event);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn stock_is_conserved_and_closed_orders_hold_nothing(
        stocks in prop::collection::vec(0..8u32, 4),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let mut world = World::new(&stocks);
        for op in ops {
            world.apply(op);
            // Stock never goes below zero and nothing is created or lost:
            // what can be reserved plus what is held equals what was supplied.
            for (id, product) in &world.products {
                let p = product.as_ref().unwrap();
                prop_assert_eq!(u64::from(p.stock) + p.reserved(), world.supplied[id]);
            }
        }
        world.settle();
        for (id, order) in &world.orders {
            let Some(order) = order else { continue };
            let sum: i64 = order.lines.iter().map(|l| l.line_total.amount_minor).sum();
            prop_assert_eq!(order.total.amount_minor, sum, "total equals the sum of the lines");
            for line in &order.lines {
                prop_assert_eq!(line.line_total.amount_minor, line.unit_price.amount_minor * i64::from(line.quantity));
            }
            let holds = |product: &Uuid| {
                world.products[product].as_ref().unwrap().held.contains_key(id)
            };
            if order.status.is_closed() {
                for line in &order.lines {
                    prop_assert!(!holds(&line.product_id), "a {:?} order holds no reservation", order.status);
                }
            }
            if order.status == OrderStatus::Confirmed {
                for line in &order.lines {
                    prop_assert!(holds(&line.product_id), "a confirmed order holds every line");
                }
            }
            prop_assert!(order.status != OrderStatus::Placed, "every order is decided once the process manager settles");
        }
    }
}
