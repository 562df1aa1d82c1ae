//! A history to project: products with their events, and beside every
//! second product a customer with an order paid for it (some cancelled),
//! appended straight into the log. Products are named from small word lists
//! that the read benchmark's searches draw on too.

use std::sync::Arc;

use anyhow::Result;
use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, StreamWrite};
use uuid::Uuid;

pub(super) const ADJECTIVES: [&str; 16] = [
    "red", "blue", "green", "steel", "copper", "wooden", "compact", "deluxe", "electric", "classic", "modern", "rustic", "silver",
    "golden", "tiny", "giant",
];
pub(super) const NOUNS: [&str; 16] = [
    "kettle", "mug", "lamp", "chair", "table", "shovel", "hose", "blender", "toaster", "pillow", "blanket", "bottle", "knife", "pan",
    "clock", "vase",
];

fn product_name(i: usize) -> String {
    format!("{} {} {}", ADJECTIVES[i % 16], ADJECTIVES[(i / 16) % 16], NOUNS[(i / 256) % 16])
}

/// Appends `products` products with `per_product` events each and, for
/// every second product, a customer (2 events) and an order (3 events),
/// straight into the log in batches, as a history to project.
pub(super) async fn generate(log: &Arc<dyn EventLog>, products: usize, per_product: usize) -> Result<Vec<Uuid>> {
    use domain::product::{ProductAdded, ProductEvent, ProductPriceChanged, ProductRestocked};
    let ids: Arc<Vec<Uuid>> = Arc::new((0..products).map(|_| Uuid::now_v7()).collect());
    let writers = 8;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (log, ids) = (log.clone(), ids.clone());
            tokio::spawn(async move {
                let metadata = Metadata::system("bench-seed");
                let usd = domain::Currency::usd();
                let mine: Vec<(usize, Uuid)> = ids.iter().copied().enumerate().skip(w).step_by(writers).collect();
                for chunk in mine.chunks(100) {
                    let mut writes = Vec::with_capacity(chunk.len());
                    for &(i, id) in chunk {
                        let mut events = vec![ProductEvent::Added(ProductAdded {
                            product_id: id,
                            sku: domain::Sku::parse(&format!("B-{i}")).expect("valid sku"),
                            name: product_name(i),
                            description: format!("A {} for every {}", NOUNS[i % 16], ADJECTIVES[(i / 7) % 16]),
                            category: format!("category-{}", i % 20),
                            price: domain::Money::new(500 + (i % 10_000) as i64, usd.clone()),
                            initial_stock: (i % 5) as u32,
                        })];
                        for n in 1..per_product {
                            events.push(if n % 4 == 0 {
                                ProductEvent::PriceChanged(ProductPriceChanged {
                                    previous_price: domain::Money::new(500, usd.clone()),
                                    price: domain::Money::new(500 + n as i64, usd.clone()),
                                })
                            } else {
                                ProductEvent::Restocked(ProductRestocked { quantity: 1, stock_after: (i % 5 + n) as u32 })
                            });
                        }
                        let events = NewEvent::encode_all(&events, &metadata);
                        writes.push(StreamWrite {
                            stream_id: domain::stream_id::<domain::product::ProductAggregate>(id),
                            expected: ExpectedVersion::NoStream,
                            events,
                        });
                        if i.is_multiple_of(2) {
                            writes.extend(customer_with_order(i, id, &metadata));
                        }
                    }
                    log.append(writes).await?;
                }
                Ok::<_, eventlog::EventLogError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(Arc::try_unwrap(ids).unwrap_or_else(|ids| (*ids).clone()))
}

/// A customer who registers, moves, and orders two of product `product`
/// and one other, paying for the order; every eighth order is cancelled
/// after payment, the rest shipped.
fn customer_with_order(i: usize, product: Uuid, metadata: &Metadata) -> [StreamWrite; 2] {
    use domain::customer::{CustomerEvent, CustomerRegistered, CustomerShippingAddressUpdated};
    use domain::order::{OrderCancelled, OrderEvent, OrderLine, OrderPaid, OrderPlaced, OrderShipped};
    let (customer, order) = (Uuid::now_v7(), Uuid::now_v7());
    let address = |street: usize| domain::Address {
        line1: format!("{street} Main St"),
        line2: None,
        city: "Springfield".into(),
        postal_code: "12345".into(),
        country: "US".into(),
    };
    let money = |amount: i64| domain::Money::new(amount, domain::Currency::usd());
    let customer_events = [
        CustomerEvent::Registered(CustomerRegistered {
            customer_id: customer,
            email: domain::Email::parse(&format!("bench-{i}@example.com")).expect("valid email"),
            name: format!("Customer {i}"),
            shipping_address: Some(address(i)),
        }),
        CustomerEvent::ShippingAddressUpdated(CustomerShippingAddressUpdated { shipping_address: address(i + 1) }),
    ];
    let lines = vec![
        OrderLine { product_id: product, quantity: 2, unit_price: money(500), line_total: money(1000) },
        OrderLine { product_id: Uuid::from_u128(i as u128 % 97), quantity: 1, unit_price: money(250), line_total: money(250) },
    ];
    let order_events = [
        OrderEvent::Placed(OrderPlaced { order_id: order, customer_id: customer, lines, total: money(1250), shipping_address: address(i) }),
        OrderEvent::Paid(OrderPaid { provider_event_id: format!("bench-{i}"), amount: money(1250) }),
        if i.is_multiple_of(16) {
            OrderEvent::Cancelled(OrderCancelled { reason: "changed mind".into(), release_products: vec![] })
        } else {
            OrderEvent::Shipped(OrderShipped { carrier: "UPS".into(), tracking_number: format!("1Z{i}") })
        },
    ];
    [
        StreamWrite {
            stream_id: domain::stream_id::<domain::customer::CustomerAggregate>(customer),
            expected: ExpectedVersion::NoStream,
            events: NewEvent::encode_all(&customer_events, metadata),
        },
        StreamWrite {
            stream_id: domain::stream_id::<domain::order::OrderAggregate>(order),
            expected: ExpectedVersion::NoStream,
            events: NewEvent::encode_all(&order_events, metadata),
        },
    ]
}
