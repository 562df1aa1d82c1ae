//! `cargo xtask bench peer`: storekeeper beside a straightforward peer
//! service (`xtask/peer`: axum + cqrs-es + postgres-es, built the way their
//! documentation shows), so the comparison in issue 9 is reproducible: the
//! same bodies, one durable PostgreSQL cluster (a database each), the same
//! load generator, rounds taken in turn so that drift on a shared machine
//! hits every system alike.
//!
//! The peer answers a lost optimistic-lock race with 409 and no retry, as a
//! plain cqrs-es service does; those count as errors. Storekeeper retries
//! such races itself.

use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;

use super::server::{Serve, admin_token, build_peer, build_storekeeper, start, start_peer};
use super::write::{commands, seed_products};
use super::{CLIENTS, create_database, drive, ms, num_cpus, rerun_in_release};
use crate::TestDatabase;

pub fn peer(args: &[&str]) -> Result<()> {
    if rerun_in_release("peer", args)? {
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    let (rounds, seconds) = if quick { (2, 3) } else { (3, 6) };
    build_storekeeper()?;
    build_peer()?;
    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("storekeeper beside a cqrs-es + postgres-es peer ({} cores, durable PostgreSQL, one cluster)", num_cpus());
        println!(
            "{CLIENTS} clients, single-event restocks and price changes over 1000 products, {rounds} rounds of {seconds}s each, in turn"
        );
        let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
        let token = admin_token();
        let mut systems: Vec<(&str, Serve)> = Vec::new();
        for (name, database) in [
            ("storekeeper command-api", "bench_peer_command_api"),
            ("storekeeper serve", "bench_peer_serve"),
            ("cqrs-es peer", "bench_peer_peer"),
        ] {
            let url = create_database(&db.url, database).await?;
            let server = match name {
                "storekeeper command-api" => start("command-api", &url, &client, None).await?,
                "storekeeper serve" => start("serve", &url, &client, None).await?,
                _ => start_peer(&url, &client).await?,
            };
            systems.push((name, server));
        }
        let mut loads = Vec::new();
        for (_, server) in &systems {
            let products = seed_products(&client, &server.command, &token).await?;
            loads.push(products);
        }
        let mut totals: Vec<(Histogram<u64>, u64, f64)> = systems.iter().map(|_| (Histogram::new(3).expect("histogram"), 0, 0.0)).collect();
        for _ in 0..rounds {
            for (i, (_, server)) in systems.iter().enumerate() {
                let load = commands(client.clone(), server.command.clone(), token.clone(), loads[i].clone());
                let (rate, histogram, errors) = drive(CLIENTS, Duration::from_secs(1), seconds, load).await?;
                let (total, failed, elapsed) = &mut totals[i];
                total.add(&histogram)?;
                *failed += errors;
                *elapsed += histogram.len() as f64 / rate.max(f64::MIN_POSITIVE);
                // Let a system's consumers finish before the next one is driven.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        println!();
        println!("    {:<26} {:>8} {:>9} {:>9} {:>9}", "system", "ok/s", "p50 ms", "p99 ms", "errors");
        for ((name, _), (histogram, errors, elapsed)) in systems.iter().zip(&totals) {
            let ok = (histogram.len() - errors) as f64 / elapsed;
            println!("    {name:<26} {ok:>8.0} {:>9.2} {:>9.2} {errors:>9}", ms(histogram, 0.5), ms(histogram, 0.99));
        }
        Ok(())
    })
}
