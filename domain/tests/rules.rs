//! Given/when/then tests for every business rule.

use domain::claim::*;
use domain::customer::*;
use domain::events::DomainEvent;
use domain::order::*;
use domain::process::{Step, react};
use domain::product::*;
use domain::{Address, Aggregate, Currency, DomainError, Email, Money, Sku};
use uuid::Uuid;

fn given<A: Aggregate>(history: &[A::Event], command: A::Command) -> Result<Vec<A::Event>, DomainError> {
    A::decide(&A::fold(history), command)
}

fn usd(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::usd())
}

fn address() -> Address {
    Address { line1: "1 Main St".into(), line2: None, city: "Springfield".into(), postal_code: "12345".into(), country: "US".into() }
}

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

fn registered(id: Uuid) -> CustomerEvent {
    CustomerEvent::Registered(CustomerRegistered {
        customer_id: id,
        email: email("ada@example.com"),
        name: "Ada".into(),
        shipping_address: None,
    })
}

fn added(id: Uuid, stock: u32) -> ProductEvent {
    ProductEvent::Added(ProductAdded {
        product_id: id,
        sku: Sku::parse("SKU-1").unwrap(),
        name: "Kettle".into(),
        description: "Boils water".into(),
        category: "kitchen".into(),
        price: usd(1999),
        initial_stock: stock,
    })
}

// --- customers ---

#[test]
fn a_customer_registers_once() {
    let id = Uuid::now_v7();
    let cmd = || CustomerCommand::Register { customer_id: id, email: email("ada@example.com"), name: "Ada".into(), shipping_address: None };
    assert_eq!(given::<CustomerAggregate>(&[], cmd()).unwrap(), vec![registered(id)]);
    assert_eq!(given::<CustomerAggregate>(&[registered(id)], cmd()), Err(DomainError::AlreadyExists("customer")));
}

#[test]
fn a_customer_needs_a_name_and_a_valid_address() {
    let id = Uuid::now_v7();
    let bad_name = CustomerCommand::Register { customer_id: id, email: email("a@b.co"), name: "  ".into(), shipping_address: None };
    assert!(matches!(given::<CustomerAggregate>(&[], bad_name), Err(DomainError::Invalid { field, .. }) if field == "name"));
    let bad_country = Address { country: "usa".into(), ..address() };
    let cmd = CustomerCommand::Register { customer_id: id, email: email("a@b.co"), name: "A".into(), shipping_address: Some(bad_country) };
    assert!(matches!(given::<CustomerAggregate>(&[], cmd), Err(DomainError::Invalid { field, .. }) if field == "shipping_address.country"));
}

#[test]
fn changing_the_email_records_the_previous_one_and_the_same_email_is_a_no_op() {
    let id = Uuid::now_v7();
    let events = given::<CustomerAggregate>(&[registered(id)], CustomerCommand::ChangeEmail { email: email("ada@new.example") }).unwrap();
    assert_eq!(
        events,
        vec![CustomerEvent::EmailChanged(CustomerEmailChanged {
            previous_email: email("ada@example.com"),
            email: email("ada@new.example")
        })]
    );
    assert_eq!(
        given::<CustomerAggregate>(&[registered(id)], CustomerCommand::ChangeEmail { email: email("ada@example.com") }).unwrap(),
        vec![]
    );
}

#[test]
fn a_deactivated_customer_cannot_change_and_deactivating_twice_is_a_no_op() {
    let id = Uuid::now_v7();
    let history = [registered(id), CustomerEvent::Deactivated(CustomerDeactivated { reason: "asked".into() })];
    assert!(matches!(
        given::<CustomerAggregate>(&history, CustomerCommand::UpdateShippingAddress { shipping_address: address() }),
        Err(DomainError::InvalidState(_))
    ));
    assert_eq!(given::<CustomerAggregate>(&history, CustomerCommand::Deactivate { reason: "again".into() }).unwrap(), vec![]);
    assert!(!CustomerAggregate::fold(&history).unwrap().active);
}

#[test]
fn a_forgotten_customer_reads_as_redacted_and_takes_no_more_changes() {
    let id = Uuid::now_v7();
    let with_address = CustomerEvent::ShippingAddressUpdated(CustomerShippingAddressUpdated { shipping_address: address() });
    let history = [registered(id), with_address];
    assert_eq!(
        given::<CustomerAggregate>(&history, CustomerCommand::Forget).unwrap(),
        vec![CustomerEvent::Forgotten(CustomerForgotten {})]
    );
    let forgotten = [registered(id), history[1].clone(), CustomerEvent::Forgotten(CustomerForgotten {})];
    let state = CustomerAggregate::fold(&forgotten).unwrap();
    assert!(state.forgotten && !state.active);
    assert!(state.email.is_redacted());
    assert_eq!(state.name, "[redacted]");
    assert_eq!(state.shipping_address, Some(domain::Address::redacted()));
    assert_eq!(given::<CustomerAggregate>(&forgotten, CustomerCommand::Forget).unwrap(), vec![], "forgetting twice appends nothing");
    assert_eq!(
        given::<CustomerAggregate>(&forgotten, CustomerCommand::ChangeEmail { email: email("new@example.com") }),
        Err(DomainError::state("the customer is forgotten"))
    );
    assert_eq!(given::<CustomerAggregate>(&forgotten, CustomerCommand::Deactivate { reason: "x".into() }).unwrap(), vec![]);
    assert_eq!(given::<CustomerAggregate>(&[], CustomerCommand::Forget), Err(DomainError::NotFound("customer")));
}

#[test]
fn commands_on_an_unknown_customer_are_not_found() {
    assert_eq!(given::<CustomerAggregate>(&[], CustomerCommand::Deactivate { reason: "x".into() }), Err(DomainError::NotFound("customer")));
}

#[test]
fn emails_are_validated() {
    for bad in ["", "ada", "ada@", "@example.com", "ada@example", "a da@example.com", "ada@.com"] {
        assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
    }
    assert_eq!(Email::parse("Ada@Example.COM").unwrap().key(), "ada@example.com");
}

// --- claims ---

#[test]
fn a_value_is_claimed_by_one_owner_until_released() {
    let claim =
        |owner: &str| ClaimCommand::Claim { kind: ClaimKind::Email, value: "ada@example.com".into(), owner_stream_id: owner.into() };
    let first = given::<ClaimAggregate>(&[], claim("customer-a")).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(given::<ClaimAggregate>(&first, claim("customer-b")), Err(DomainError::EmailTaken));
    assert_eq!(given::<ClaimAggregate>(&first, claim("customer-a")).unwrap(), vec![], "claiming again is a no-op");
    let release = ClaimCommand::Release { kind: ClaimKind::Email, value: "ada@example.com".into(), owner_stream_id: "customer-b".into() };
    assert_eq!(given::<ClaimAggregate>(&first, release).unwrap(), vec![], "only the owner releases");
    let release = ClaimCommand::Release { kind: ClaimKind::Email, value: "ada@example.com".into(), owner_stream_id: "customer-a".into() };
    let mut history = first.clone();
    history.extend(given::<ClaimAggregate>(&first, release).unwrap());
    assert_eq!(given::<ClaimAggregate>(&history, claim("customer-b")).unwrap().len(), 1, "a released value is free");
}

#[test]
fn claim_streams_ignore_case() {
    assert_eq!(email_claim_stream(&email("Ada@Example.com").key()), email_claim_stream(&email("ada@example.COM").key()));
    assert_ne!(email_claim_stream(&email("ada@example.com").key()), email_claim_stream(&email("bob@example.com").key()));
    assert_eq!(sku_claim_stream(&Sku::parse("abc-1").unwrap()), sku_claim_stream(&Sku::parse("ABC-1").unwrap()));
    assert!(email_claim_stream(&email("a@b.co").key()).starts_with("claim-"));
}

// --- products ---

#[test]
fn a_product_is_added_with_a_non_negative_price() {
    let id = Uuid::now_v7();
    let add = |amount| ProductCommand::Add {
        product_id: id,
        sku: Sku::parse("SKU-1").unwrap(),
        name: "Kettle".into(),
        description: "Boils water".into(),
        category: "kitchen".into(),
        price: usd(amount),
        initial_stock: 5,
    };
    assert_eq!(given::<ProductAggregate>(&[], add(1999)).unwrap(), vec![added(id, 5)]);
    assert!(matches!(given::<ProductAggregate>(&[], add(-1)), Err(DomainError::Invalid { .. })));
    assert_eq!(given::<ProductAggregate>(&[added(id, 5)], add(1999)), Err(DomainError::AlreadyExists("product")));
}

#[test]
fn restocking_adds_and_needs_a_positive_quantity() {
    let id = Uuid::now_v7();
    assert_eq!(
        given::<ProductAggregate>(&[added(id, 5)], ProductCommand::Restock { quantity: 3 }).unwrap(),
        vec![ProductEvent::Restocked(ProductRestocked { quantity: 3, stock_after: 8 })]
    );
    assert!(matches!(
        given::<ProductAggregate>(&[added(id, 5)], ProductCommand::Restock { quantity: 0 }),
        Err(DomainError::Invalid { .. })
    ));
}

#[test]
fn a_reservation_takes_stock_or_fails_without_going_below_zero() {
    let (id, order) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        given::<ProductAggregate>(&[added(id, 5)], ProductCommand::Reserve { order_id: order, quantity: 5 }).unwrap(),
        vec![ProductEvent::StockReserved(StockReserved { order_id: order, quantity: 5, stock_after: 0 })]
    );
    assert_eq!(
        given::<ProductAggregate>(&[added(id, 5)], ProductCommand::Reserve { order_id: order, quantity: 6 }).unwrap(),
        vec![ProductEvent::StockReservationFailed(StockReservationFailed {
            order_id: order,
            requested: 6,
            available: 5,
            reason: ReservationFailure::InsufficientStock
        })]
    );
}

#[test]
fn reserving_twice_for_one_order_and_releasing_twice_change_nothing() {
    let (id, order) = (Uuid::now_v7(), Uuid::now_v7());
    let reserved = ProductEvent::StockReserved(StockReserved { order_id: order, quantity: 2, stock_after: 3 });
    let history = [added(id, 5), reserved.clone()];
    assert_eq!(given::<ProductAggregate>(&history, ProductCommand::Reserve { order_id: order, quantity: 2 }).unwrap(), vec![]);
    let released = given::<ProductAggregate>(&history, ProductCommand::Release { order_id: order }).unwrap();
    assert_eq!(
        released,
        vec![ProductEvent::StockReservationReleased(StockReservationReleased { order_id: order, quantity: 2, stock_after: 5 })]
    );
    let history = [added(id, 5), reserved, released[0].clone()];
    assert_eq!(given::<ProductAggregate>(&history, ProductCommand::Release { order_id: order }).unwrap(), vec![]);
    assert_eq!(given::<ProductAggregate>(&history, ProductCommand::Reserve { order_id: order, quantity: 2 }).unwrap(), vec![]);
    assert_eq!(ProductAggregate::fold(&history).unwrap().stock, 5);
}

#[test]
fn a_discontinued_product_accepts_no_reservation_restock_or_price_change() {
    let (id, order) = (Uuid::now_v7(), Uuid::now_v7());
    let history = [added(id, 5), ProductEvent::Discontinued(ProductDiscontinued {})];
    assert_eq!(
        given::<ProductAggregate>(&history, ProductCommand::Reserve { order_id: order, quantity: 1 }).unwrap(),
        vec![ProductEvent::StockReservationFailed(StockReservationFailed {
            order_id: order,
            requested: 1,
            available: 5,
            reason: ReservationFailure::Discontinued
        })]
    );
    assert!(matches!(given::<ProductAggregate>(&history, ProductCommand::Restock { quantity: 1 }), Err(DomainError::InvalidState(_))));
    assert!(matches!(
        given::<ProductAggregate>(&history, ProductCommand::ChangePrice { price: usd(1) }),
        Err(DomainError::InvalidState(_))
    ));
    assert_eq!(given::<ProductAggregate>(&history, ProductCommand::Discontinue).unwrap(), vec![]);
}

#[test]
fn details_and_price_changes_record_only_what_changed() {
    let id = Uuid::now_v7();
    let update = ProductCommand::UpdateDetails { name: Some("Kettle".into()), description: Some("Boils fast".into()), category: None };
    assert_eq!(
        given::<ProductAggregate>(&[added(id, 1)], update).unwrap(),
        vec![ProductEvent::DetailsUpdated(ProductDetailsUpdated { name: None, description: Some("Boils fast".into()), category: None })]
    );
    assert_eq!(given::<ProductAggregate>(&[added(id, 1)], ProductCommand::ChangePrice { price: usd(1999) }).unwrap(), vec![]);
    assert_eq!(
        given::<ProductAggregate>(&[added(id, 1)], ProductCommand::ChangePrice { price: usd(2499) }).unwrap(),
        vec![ProductEvent::PriceChanged(ProductPriceChanged { previous_price: usd(1999), price: usd(2499) })]
    );
}

// --- orders ---

fn place(order: Uuid, customer_active: bool, lines: Vec<PricedLine>) -> OrderCommand {
    OrderCommand::Place { order_id: order, customer_id: Uuid::nil(), customer_active, lines, shipping_address: address() }
}

fn line(product: Uuid, quantity: u32, unit: i64) -> PricedLine {
    PricedLine { product_id: product, quantity, unit_price: usd(unit) }
}

fn placed(order: Uuid, products: &[Uuid]) -> OrderEvent {
    match OrderAggregate::decide(&None, place(order, true, products.iter().map(|&p| line(p, 1, 100)).collect())).unwrap().remove(0) {
        e @ OrderEvent::Placed(_) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn placing_captures_unit_prices_and_the_total() {
    let (order, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let events = given::<OrderAggregate>(&[], place(order, true, vec![line(a, 2, 1999), line(b, 1, 500)])).unwrap();
    let OrderEvent::Placed(e) = &events[0] else { panic!("{events:?}") };
    assert_eq!(e.total, usd(2 * 1999 + 500));
    assert_eq!(e.lines[0].unit_price, usd(1999));
    assert_eq!(e.lines[0].line_total, usd(3998));
}

#[test]
fn only_active_customers_place_orders() {
    let order = Uuid::now_v7();
    assert_eq!(given::<OrderAggregate>(&[], place(order, false, vec![line(Uuid::now_v7(), 1, 1)])), Err(DomainError::CustomerInactive));
}

#[test]
fn an_order_needs_lines_of_one_currency_each_product_once_and_positive_quantities() {
    let (order, a) = (Uuid::now_v7(), Uuid::now_v7());
    assert!(matches!(given::<OrderAggregate>(&[], place(order, true, vec![])), Err(DomainError::Invalid { .. })));
    assert!(matches!(given::<OrderAggregate>(&[], place(order, true, vec![line(a, 0, 1)])), Err(DomainError::Invalid { .. })));
    assert!(matches!(
        given::<OrderAggregate>(&[], place(order, true, vec![line(a, 1, 1), line(a, 1, 1)])),
        Err(DomainError::Invalid { .. })
    ));
    let eur = PricedLine { product_id: Uuid::now_v7(), quantity: 1, unit_price: Money::new(1, Currency::parse("EUR").unwrap()) };
    // Prices are the products' state, not the request's shape.
    assert!(matches!(given::<OrderAggregate>(&[], place(order, true, vec![line(a, 1, 1), eur])), Err(DomainError::InvalidState(_))));
}

#[test]
fn the_order_confirms_once_every_line_is_reserved() {
    let (order, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let history = vec![placed(order, &[a, b])];
    let first = given::<OrderAggregate>(&history, OrderCommand::RecordReservation { product_id: a }).unwrap();
    assert_eq!(first, vec![OrderEvent::LineReserved(OrderLineReserved { product_id: a })]);
    let history = [history, first].concat();
    assert_eq!(given::<OrderAggregate>(&history, OrderCommand::RecordReservation { product_id: a }).unwrap(), vec![]);
    let second = given::<OrderAggregate>(&history, OrderCommand::RecordReservation { product_id: b }).unwrap();
    assert_eq!(second, vec![OrderEvent::LineReserved(OrderLineReserved { product_id: b }), OrderEvent::Confirmed(OrderConfirmed {})]);
}

#[test]
fn a_rejected_order_releases_what_it_holds_and_discards_late_reservations() {
    let (order, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let history = vec![placed(order, &[a, b]), OrderEvent::LineReserved(OrderLineReserved { product_id: a })];
    let rejected =
        given::<OrderAggregate>(&history, OrderCommand::Reject { product_id: b, reason: ReservationFailure::InsufficientStock }).unwrap();
    assert_eq!(
        rejected,
        vec![OrderEvent::Rejected(OrderRejected {
            product_id: b,
            reason: ReservationFailure::InsufficientStock,
            release_products: vec![a]
        })]
    );
    let history = [history, rejected].concat();
    assert_eq!(
        given::<OrderAggregate>(&history, OrderCommand::RecordReservation { product_id: b }).unwrap(),
        vec![OrderEvent::ReservationDiscarded(OrderReservationDiscarded { product_id: b })]
    );
}

fn confirmed(order: Uuid, product: Uuid) -> Vec<OrderEvent> {
    vec![
        placed(order, &[product]),
        OrderEvent::LineReserved(OrderLineReserved { product_id: product }),
        OrderEvent::Confirmed(OrderConfirmed {}),
    ]
}

#[test]
fn payment_must_match_the_total_and_is_idempotent_per_provider_event() {
    let (order, a) = (Uuid::now_v7(), Uuid::now_v7());
    let history = confirmed(order, a);
    let pay = |id: &str, amount| OrderCommand::Pay { provider_event_id: id.into(), amount };
    assert!(matches!(given::<OrderAggregate>(&history, pay("evt_1", usd(99))), Err(DomainError::PaymentMismatch(_))));
    let eur = Money::new(100, Currency::parse("EUR").unwrap());
    assert!(matches!(given::<OrderAggregate>(&history, pay("evt_1", eur)), Err(DomainError::PaymentMismatch(_))));
    let paid = given::<OrderAggregate>(&history, pay("evt_1", usd(100))).unwrap();
    assert_eq!(paid.len(), 1);
    let history = [history, paid].concat();
    assert_eq!(given::<OrderAggregate>(&history, pay("evt_1", usd(100))).unwrap(), vec![]);
    assert!(matches!(given::<OrderAggregate>(&history, pay("evt_2", usd(100))), Err(DomainError::InvalidState(_))));
}

#[test]
fn only_confirmed_orders_are_paid_only_paid_are_shipped_only_shipped_delivered() {
    let (order, a) = (Uuid::now_v7(), Uuid::now_v7());
    let placed_only = vec![placed(order, &[a])];
    assert!(matches!(
        given::<OrderAggregate>(&placed_only, OrderCommand::Pay { provider_event_id: "e".into(), amount: usd(100) }),
        Err(DomainError::InvalidState(_))
    ));
    let ship = || OrderCommand::Ship { carrier: "UPS".into(), tracking_number: "1Z".into() };
    assert!(matches!(given::<OrderAggregate>(&confirmed(order, a), ship()), Err(DomainError::InvalidState(_))));
    let paid = [confirmed(order, a), vec![OrderEvent::Paid(OrderPaid { provider_event_id: "e".into(), amount: usd(100) })]].concat();
    assert!(matches!(given::<OrderAggregate>(&paid, OrderCommand::Deliver), Err(DomainError::InvalidState(_))));
    let shipped = given::<OrderAggregate>(&paid, ship()).unwrap();
    let history = [paid, shipped].concat();
    assert_eq!(given::<OrderAggregate>(&history, OrderCommand::Deliver).unwrap(), vec![OrderEvent::Delivered(OrderDelivered {})]);
    assert!(matches!(given::<OrderAggregate>(&history, OrderCommand::Cancel { reason: "late".into() }), Err(DomainError::InvalidState(_))));
}

#[test]
fn cancelling_before_shipping_releases_the_reserved_lines() {
    let (order, a) = (Uuid::now_v7(), Uuid::now_v7());
    let events = given::<OrderAggregate>(&confirmed(order, a), OrderCommand::Cancel { reason: "changed my mind".into() }).unwrap();
    assert_eq!(events, vec![OrderEvent::Cancelled(OrderCancelled { reason: "changed my mind".into(), release_products: vec![a] })]);
}

// --- process manager ---

#[test]
fn the_process_manager_reserves_every_line_then_reports_outcomes_and_releases_on_close() {
    let (order, a, b) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let steps = react(order, &DomainEvent::Order(placed(order, &[a, b])));
    assert_eq!(
        steps,
        vec![
            Step::Product { product_id: a, command: ProductCommand::Reserve { order_id: order, quantity: 1 } },
            Step::Product { product_id: b, command: ProductCommand::Reserve { order_id: order, quantity: 1 } },
        ]
    );
    let reserved = DomainEvent::Product(ProductEvent::StockReserved(StockReserved { order_id: order, quantity: 1, stock_after: 0 }));
    assert_eq!(react(a, &reserved), vec![Step::Order { order_id: order, command: OrderCommand::RecordReservation { product_id: a } }]);
    let failed = DomainEvent::Product(ProductEvent::StockReservationFailed(StockReservationFailed {
        order_id: order,
        requested: 1,
        available: 0,
        reason: ReservationFailure::InsufficientStock,
    }));
    assert_eq!(
        react(b, &failed),
        vec![Step::Order {
            order_id: order,
            command: OrderCommand::Reject { product_id: b, reason: ReservationFailure::InsufficientStock }
        }]
    );
    let rejected = DomainEvent::Order(OrderEvent::Rejected(OrderRejected {
        product_id: b,
        reason: ReservationFailure::InsufficientStock,
        release_products: vec![a],
    }));
    assert_eq!(react(order, &rejected), vec![Step::Product { product_id: a, command: ProductCommand::Release { order_id: order } }]);
    let late = DomainEvent::Order(OrderEvent::ReservationDiscarded(OrderReservationDiscarded { product_id: b }));
    assert_eq!(react(order, &late), vec![Step::Product { product_id: b, command: ProductCommand::Release { order_id: order } }]);
}

// --- stock at the limits, and bounded state ---

fn reserved(order_id: Uuid, quantity: u32, stock_after: u32) -> ProductEvent {
    ProductEvent::StockReserved(StockReserved { order_id, quantity, stock_after })
}

#[test]
fn a_restock_that_would_leave_no_room_for_held_units_is_refused_so_releases_never_lose_units() {
    let (id, order) = (Uuid::now_v7(), Uuid::now_v7());
    let history = vec![added(id, 10), reserved(order, 5, 5)];
    assert!(matches!(
        given::<ProductAggregate>(&history, ProductCommand::Restock { quantity: u32::MAX - 5 }),
        Err(DomainError::InvalidState(_))
    ));
    let restocked = given::<ProductAggregate>(&history, ProductCommand::Restock { quantity: u32::MAX - 10 }).unwrap();
    let mut history = history;
    history.extend(restocked);
    let released = given::<ProductAggregate>(&history, ProductCommand::Release { order_id: order }).unwrap();
    assert_eq!(
        released,
        vec![ProductEvent::StockReservationReleased(StockReservationReleased { order_id: order, quantity: 5, stock_after: u32::MAX })],
        "every held unit comes back"
    );
}

#[test]
fn a_products_state_holds_only_open_reservations_however_long_its_history() {
    let id = Uuid::now_v7();
    let mut state = ProductAggregate::fold(&[added(id, 10)]);
    let orders: Vec<Uuid> = (0..3000).map(|_| Uuid::now_v7()).collect();
    for order in &orders {
        for command in [ProductCommand::Reserve { order_id: *order, quantity: 2 }, ProductCommand::Release { order_id: *order }] {
            for event in ProductAggregate::decide(&state, command).unwrap() {
                state = ProductAggregate::evolve(state, &event);
            }
        }
    }
    let product = state.clone().unwrap();
    assert!(product.held.is_empty());
    assert_eq!((product.stock, product.released.len()), (10, REMEMBERED_RELEASES));
    // A reservation redelivered after its release is still recognised.
    let late = ProductCommand::Reserve { order_id: *orders.last().unwrap(), quantity: 2 };
    assert_eq!(ProductAggregate::decide(&state, late), Ok(vec![]));
}
