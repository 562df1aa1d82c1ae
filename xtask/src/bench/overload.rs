//! `cargo xtask bench overload`: `storekeeper serve` under ten times the
//! command load it carries best, then back to that load. Prints what a
//! client sees (throughput, latency of the requests taken, how many were
//! shed with 503 `overloaded`, failures and timeouts), the server's memory
//! before and after, and how it recovers. Clients time out after 1 s; a
//! shed client waits `SHED_BACKOFF` before it asks again.

use std::time::Duration;

use anyhow::Result;

use super::server::{admin_token, build_storekeeper, serve};
use super::write::{commands, seed_products};
use super::{CLIENTS, Driven, create_database, drive_answers, ms, num_cpus, rerun_in_release};
use crate::TestDatabase;

/// Clients at ten times the load: `CLIENTS` keep the server busy.
const OVERLOAD: usize = 10 * CLIENTS;

pub fn overload(args: &[&str]) -> Result<()> {
    if rerun_in_release("overload", args)? {
        return Ok(());
    }
    let seconds = if args.contains(&"--quick") { 5 } else { 15 };
    build_storekeeper()?;
    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("storekeeper overload benchmark ({} cores, durable PostgreSQL, `serve` with its default limits)", num_cpus());
        let url = create_database(&db.url, "bench_overload").await?;
        let client =
            reqwest::Client::builder().pool_max_idle_per_host(OVERLOAD).timeout(Duration::from_secs(1)).build()?;
        let server = serve(&url, &client, None).await?;
        let token = admin_token();
        let products = seed_products(&client, &server.command, &token).await?;
        let load = || commands(client.clone(), server.command.clone(), token.clone(), products.clone());
        let memory = || server.resident_mib().map_or("unknown".to_owned(), |(now, peak)| format!("{now:.0} MiB (peak {peak:.0})"));

        let steady = drive_answers(CLIENTS, Duration::from_secs(2), seconds, load()).await?;
        print("steady", CLIENTS, seconds, &steady);
        println!("    resident: {}", memory());
        let loaded = drive_answers(OVERLOAD, Duration::from_secs(1), seconds, load()).await?;
        print("10x", OVERLOAD, seconds, &loaded);
        println!("    resident: {}", memory());
        let after = drive_answers(CLIENTS, Duration::ZERO, 3, load()).await?;
        print("after", CLIENTS, 3, &after);
        println!("    resident: {}", memory());

        let p99 = |d: &Driven| ms(&d.histogram, 0.99);
        println!();
        println!(
            "    under 10x: p99 of requests taken {:.1}x the steady p99 (target <= 5x), throughput {:.0}% of steady (target >= 80%), {:.0}% shed",
            p99(&loaded) / p99(&steady).max(0.001),
            100.0 * loaded.rate / steady.rate.max(1.0),
            100.0 * loaded.shed as f64 / (loaded.shed as f64 + loaded.histogram.len() as f64).max(1.0),
        );
        println!(
            "    recovered at once: the first 3 s after, {:.0}% of steady throughput, p99 {:.1}x steady",
            100.0 * after.rate / steady.rate.max(1.0),
            p99(&after) / p99(&steady).max(0.001)
        );
        Ok(())
    })
}

fn print(phase: &str, clients: usize, seconds: u64, driven: &Driven) {
    println!("({phase}) {clients} clients, restocks and price changes over 1000 products, {seconds}s measured");
    println!(
        "    {:.0} answered/s   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   shed (503 overloaded) {}   failed or timed out {}",
        driven.rate,
        ms(&driven.histogram, 0.50),
        ms(&driven.histogram, 0.99),
        driven.histogram.max() as f64 / 1000.0,
        driven.shed,
        driven.failed,
    );
}
