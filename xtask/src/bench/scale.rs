//! `cargo xtask bench scale`: does storekeeper slow down as its log grows?
//! The same measurements on an empty log and on a large one (10,000,000
//! events; `--quick` 1,000,000; `--events N` any size): catching up on the
//! history, commands through `serve` (append rate and p99), catching up on
//! a fixed tail appended while `serve` was stopped, and `serve`'s resident
//! memory at its peak.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::history::generate;
use super::server::{admin_token, build_storekeeper, serve, serve_again};
use super::write::{commands, seed_products};
use super::{CLIENTS, create_database, drive, ms, num_cpus, rerun_in_release};
use crate::TestDatabase;

/// Products in the tail both logs are measured catching up on: 10.5 events
/// each (see `generate`), about 105,000 events.
const TAIL_PRODUCTS: usize = 10_000;

/// What one log size measured.
struct Figures {
    events: i64,
    history_catch_up: Option<f64>,
    commands: f64,
    p99: f64,
    errors: u64,
    tail_catch_up: f64,
    peak_mib: f64,
}

pub fn scale(args: &[&str]) -> Result<()> {
    if rerun_in_release("scale", args)? {
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    let events: usize = match args.iter().position(|a| *a == "--events") {
        Some(i) => args.get(i + 1).context("--events takes a number")?.replace('_', "").parse().context("--events takes a number")?,
        None if quick => 1_000_000,
        None => 10_000_000,
    };
    let seconds = if quick { 5 } else { 10 };
    build_storekeeper()?;
    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        println!("storekeeper scale benchmark ({} cores, durable PostgreSQL): an empty log against {events} events", num_cpus());
        let empty = measure(&db.url, "bench_scale_empty", 0, seconds).await?;
        let large = measure(&db.url, "bench_scale_large", events, seconds).await?;
        println!();
        println!("| | empty log | {} events | large / empty |", large.events);
        println!("|---|---|---|---|");
        let row = |what: &str, a: f64, b: f64, unit: &str| println!("| {what} | {a:.1}{unit} | {b:.1}{unit} | {:.2} |", b / a);
        row(&format!("commands through serve ({CLIENTS} clients, {seconds} s), per s"), empty.commands, large.commands, "");
        row("their p99", empty.p99, large.p99, " ms");
        row(
            &format!("catching up on a tail of {TAIL_PRODUCTS} products' history, events/s (slowest consumer)"),
            empty.tail_catch_up,
            large.tail_catch_up,
            "",
        );
        row("serve's resident peak", empty.peak_mib, large.peak_mib, " MiB");
        println!("errors: {} / {}", empty.errors, large.errors);
        if let Some(rate) = large.history_catch_up {
            println!("catching up on the whole large log from an empty read side: {rate:.0} events/s (slowest consumer)");
        }
        println!("target: append p99 and projection throughput within 20% of the empty log's; serve under 1024 MiB resident");
        Ok(())
    })
}

/// One database with `events` of history (about): sealed, caught up on by a
/// fresh `serve`, then the load and the tail.
async fn measure(admin_url: &str, name: &str, events: usize, seconds: u64) -> Result<Figures> {
    let url = create_database(admin_url, name).await?;
    let pool = PgPoolOptions::new().max_connections(10).connect(&url).await?;
    eventlog::migrate(&pool).await?;
    let (log, _) = eventlog::vault::postgres_log(&pool);
    println!();
    if events > 0 {
        let appending = Instant::now();
        generate(&log, (events * 2).div_ceil(21), 8).await?;
        let total = head(&pool).await?;
        println!(
            "history: {total} events appended in {:.0} s ({:.0}/s)",
            appending.elapsed().as_secs_f64(),
            total as f64 / appending.elapsed().as_secs_f64()
        );
        let sealing = Instant::now();
        while eventlog::seal::seal(&pool, 100_000).await? > 0 {}
        println!("sealed in {:.0} s", sealing.elapsed().as_secs_f64());
    }
    // The seeded orders are settled history: the order process starts after them.
    let last = head(&pool).await?;
    eventlog::progress::save_checkpoint(&pool, commands::process_manager::NAME, last as u64).await?;

    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let started = Instant::now();
    let server = serve(&url, &client, None).await?;
    let done = server.caught_up(&client, last, started, Duration::from_secs(4 * 3600)).await?;
    let history_catch_up = (events > 0).then(|| last as f64 / done.values().copied().fold(0.0, f64::max));
    if let Some(rate) = history_catch_up {
        println!("caught up on {last} events from an empty read side: {rate:.0} events/s (slowest), {done:?} s");
    }

    let token = admin_token();
    let products = seed_products(&client, &server.command, &token).await?;
    let (rate, histogram, errors) =
        drive(CLIENTS, Duration::from_secs(2), seconds, commands(client.clone(), server.command.clone(), token, products)).await?;
    println!("commands through serve: {rate:.0}/s  p50 {:.2} ms  p99 {:.2} ms  errors {errors}", ms(&histogram, 0.5), ms(&histogram, 0.99));
    let mut peak = server.resident_mib().map_or(0.0, |(_, peak)| peak);
    let before = head(&pool).await?;
    // Let the read side settle on the load before it stops.
    server.caught_up(&client, before, Instant::now(), Duration::from_secs(600)).await?;
    // Its data directory (the search index) stays for the restart.
    let dir = server.stop();

    generate(&log, TAIL_PRODUCTS, 8).await?;
    while eventlog::seal::seal(&pool, 100_000).await? > 0 {}
    let last = head(&pool).await?;
    eventlog::progress::save_checkpoint(&pool, commands::process_manager::NAME, last as u64).await?;
    let started = Instant::now();
    let server = serve_again(&url, &client, dir).await?;
    let done = server.caught_up(&client, last, started, Duration::from_secs(3600)).await?;
    let tail_catch_up = (last - before) as f64 / done.values().copied().fold(0.0, f64::max);
    println!("caught up on a tail of {} events: {tail_catch_up:.0} events/s (slowest), {done:?} s", last - before);
    peak = peak.max(server.resident_mib().map_or(0.0, |(_, peak)| peak));
    println!("serve resident at its peak: {peak:.0} MiB");
    drop(server);
    Ok(Figures { events: last, history_catch_up, commands: rate, p99: ms(&histogram, 0.99), errors, tail_catch_up, peak_mib: peak })
}

async fn head(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT max(global_position) FROM events").fetch_one(pool).await?.unwrap_or(0))
}
