//! `cargo xtask bench decide`: what one command's decision costs as a
//! stream's history grows, in process against a durable PostgreSQL (the
//! command service and the log, no HTTP).
//!
//! For a product stream of 10, 1k, 10k and 100k events it prints:
//! - cold, no snapshot: the first command after a restart with no
//!   snapshot stored (folds the whole stream once; every order placed paid
//!   about this for each line before snapshots and cached prices);
//! - cold, snapshot: the first command after a restart (snapshot plus the
//!   events since);
//! - warm: restocks on the same product (p50/p99);
//! - place order: orders for that product, priced from the cached product
//!   state caught up with the log (p50/p99).

use std::time::Instant;

use anyhow::{Context, Result};
use commands::CommandService;
use domain::customer::CustomerCommand;
use domain::product::{ProductAdded, ProductCommand, ProductEvent, ProductRestocked};
use domain::{Address, Currency, Email, Money, Sku};
use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, StreamWrite};
use hdrhistogram::Histogram;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::{create_database, ms, num_cpus, rerun_in_release};
use crate::TestDatabase;

pub fn decide(args: &[&str]) -> Result<()> {
    if rerun_in_release("decide", args)? {
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    let lengths: &[u64] = if quick { &[10, 1_000, 10_000] } else { &[10, 1_000, 10_000, 100_000] };
    let samples = if quick { 50 } else { 200 };
    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let url = create_database(&db.url, "storekeeper_bench_decide").await?;
        let pool = PgPoolOptions::new().max_connections(8).connect(&url).await.context("connect")?;
        eventlog::migrate(&pool).await?;
        commands::migrate(&pool).await?;
        let (log, vault) = eventlog::vault::postgres_log(&pool);
        println!("storekeeper decision benchmark ({} cores, durable PostgreSQL, in process, {samples} samples each)", num_cpus());
        println!(
            "    {:>8}  {:>14}  {:>14}  {:>17}  {:>17}",
            "events", "cold, no snap", "cold, snapshot", "warm p50 / p99", "place order p50/p99"
        );
        let customer = Uuid::now_v7();
        let metadata = Metadata::system("bench");
        CommandService::new(log.clone(), vault.clone())
            .customer(
                customer,
                CustomerCommand::Register {
                    customer_id: customer,
                    email: Email::parse("bench@example.com").expect("valid"),
                    name: "Bench".into(),
                    shipping_address: None,
                },
                None,
                &metadata,
            )
            .await?;
        for &length in lengths {
            let product = history(&*log, length).await?;
            let restock = ProductCommand::Restock { quantity: 1 };

            sqlx::query("DELETE FROM snapshots").execute(&pool).await?;
            let started = Instant::now();
            CommandService::new(log.clone(), vault.clone()).product(product, restock.clone(), None, &metadata).await?;
            let cold = started.elapsed();
            // Let the snapshot that load stored settle, then restart again.
            let started = Instant::now();
            let service = CommandService::new(log.clone(), vault.clone());
            service.product(product, restock.clone(), None, &metadata).await?;
            let cold_snapshot = started.elapsed();

            let mut warm = Histogram::<u64>::new(3)?;
            for _ in 0..samples {
                let started = Instant::now();
                service.product(product, restock.clone(), None, &metadata).await?;
                warm.record(started.elapsed().as_micros() as u64)?;
            }
            let mut orders = Histogram::<u64>::new(3)?;
            for _ in 0..samples {
                let started = Instant::now();
                service.place_order(Uuid::now_v7(), customer, vec![(product, 1)], address(), &metadata).await?;
                orders.record(started.elapsed().as_micros() as u64)?;
            }
            println!(
                "    {:>8}  {:>11.2} ms  {:>11.2} ms  {:>6.2} / {:>5.2} ms  {:>6.2} / {:>5.2} ms",
                length,
                cold.as_secs_f64() * 1000.0,
                cold_snapshot.as_secs_f64() * 1000.0,
                ms(&warm, 0.5),
                ms(&warm, 0.99),
                ms(&orders, 0.5),
                ms(&orders, 0.99)
            );
        }
        println!("    target: warm and place-order latency flat in the stream's length; cold with a snapshot flat too");
        vault_costs(&vault, 20).await
    })
}

/// What encrypting and decrypting personal fields costs, against the key table:
/// batches of 2,000 registrations of different customers (one key lookup
/// per batch, as a consumer's read pays it).
async fn vault_costs(vault: &std::sync::Arc<eventlog::Vault>, rounds: usize) -> Result<()> {
    use domain::customer::{CustomerEvent, CustomerRegistered};
    const BATCH: usize = 2000;
    let metadata = Metadata::system("bench");
    let mut writes: Vec<StreamWrite> = (0..BATCH)
        .map(|i| {
            let customer = Uuid::now_v7();
            let registered = CustomerEvent::Registered(CustomerRegistered {
                customer_id: customer,
                email: Email::parse(&format!("bench-{i}@example.com")).expect("valid"),
                name: format!("Bench Customer {i}"),
                shipping_address: Some(address()),
            });
            StreamWrite {
                stream_id: domain::stream_id::<domain::customer::CustomerAggregate>(customer),
                expected: ExpectedVersion::NoStream,
                events: NewEvent::encode_all(&[registered], &metadata),
            }
        })
        .collect();
    let plain = writes.clone();
    vault.encrypt(&mut writes).await?; // makes the keys
    let started = Instant::now();
    for _ in 0..rounds {
        let mut again = plain.clone();
        vault.encrypt(&mut again).await?;
    }
    let seal = (rounds * BATCH) as f64 / started.elapsed().as_secs_f64();
    let stored: Vec<eventlog::RecordedEvent> = writes
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let e = w.events.into_iter().next().expect("one event");
            eventlog::RecordedEvent {
                event_id: e.event_id,
                stream_id: w.stream_id,
                stream_version: 0,
                global_position: i as u64 + 1,
                event_type: e.event_type,
                schema_version: e.schema_version,
                occurred_at: e.occurred_at,
                recorded_at: e.occurred_at,
                metadata: e.metadata,
                data: e.data,
            }
        })
        .collect();
    let started = Instant::now();
    for _ in 0..rounds {
        let mut batch = stored.clone();
        vault.decrypt(&mut batch).await?;
    }
    let open = (rounds * BATCH) as f64 / started.elapsed().as_secs_f64();
    println!("vault: personal fields of a registration (email, name, address), batches of {BATCH}, against the key table");
    println!("    encrypting {seal:.0} events/s, decrypting {open:.0} events/s (each batch one key lookup)");
    Ok(())
}

/// A product stream of `length` events: added, then restocked.
async fn history(log: &dyn EventLog, length: u64) -> Result<Uuid> {
    let product = Uuid::now_v7();
    let stream_id = domain::stream_id::<domain::product::ProductAggregate>(product);
    let added = ProductEvent::Added(ProductAdded {
        product_id: product,
        sku: Sku::parse(&format!("BENCH-{}", product.simple())).expect("valid"),
        name: "Bench product".into(),
        description: String::new(),
        category: "bench".into(),
        price: Money::new(100, Currency::usd()),
        initial_stock: 1_000_000,
    });
    let mut events = vec![added];
    events.extend((1..length).map(|n| ProductEvent::Restocked(ProductRestocked { quantity: 1, stock_after: 1_000_000 + n as u32 })));
    let mut version: Option<u64> = None;
    for chunk in events.chunks(5_000) {
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let encoded = NewEvent::encode_all(chunk, &Metadata::system("bench"));
        log.append(vec![StreamWrite { stream_id: stream_id.clone(), expected, events: encoded }]).await?;
        version = Some(version.map_or(0, |v| v + 1) + chunk.len() as u64 - 1);
    }
    Ok(product)
}

fn address() -> Address {
    Address { line1: "1 Bench Road".into(), line2: None, city: "Testville".into(), postal_code: "12345".into(), country: "DE".into() }
}
