//! `cargo xtask bench read`: the read side under a large log: how fast the
//! projections and the search index catch up, how soon a write becomes
//! visible (in process and through Kafka), and read latency under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::history::{ADJECTIVES, NOUNS, generate};
use super::server::{Serve, admin_token, build_storekeeper, serve};
use super::{CLIENTS, create_database, drive, ms, num_cpus, rerun_in_release};
use crate::TestDatabase;

/// `cargo xtask bench read`: projection throughput from a log of about 1,050,000
/// events, visibility lag, and read latency with 100,000 products indexed.
pub fn read(args: &[&str]) -> Result<()> {
    if rerun_in_release("read", args)? {
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    // 100,000 products of 8 events and 50,000 customers with an order of 3:
    // 1,050,000 events, a fifth of them for customers, orders and sales.
    let (products, per_product, seconds) = if quick { (10_000, 8, 5) } else { (100_000, 8, 10) };
    build_storekeeper()?;
    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let url = create_database(&db.url, "bench_read").await?;
        let pool = PgPoolOptions::new().max_connections(10).connect(&url).await?;
        eventlog::migrate(&pool).await?;
        // Through the vault, as `serve` writes: customers' and orders'
        // personal fields sealed, so catch-up pays for opening them.
        let (log, _) = eventlog::vault::postgres_log(&pool);
        println!("storekeeper read benchmark ({} cores, durable PostgreSQL)", num_cpus());
        let generated = Instant::now();
        let ids = generate(&log, products, per_product).await?;
        let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events").fetch_one(&pool).await?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await?;
        // The seeded orders are settled history: the order process starts
        // after them, so that its reactions do not run under the figures.
        eventlog::progress::save_checkpoint(&pool, commands::process_manager::NAME, last as u64).await?;
        // And sealed, as a running system keeps it: the sealer's rate here.
        let sealing = Instant::now();
        let mut sealed = 0;
        loop {
            let n = eventlog::seal::seal(&pool, 100_000).await?;
            if n == 0 {
                break;
            }
            sealed += n;
        }
        println!("sealed {sealed} events in {:.1}s: {:.0} events/s", sealing.elapsed().as_secs_f64(), sealed as f64 / sealing.elapsed().as_secs_f64());
        let total = total as usize;
        println!(
            "log: {total} events ({products} products x {per_product}, {} customers with an order of 3) appended in {:.1}s",
            products.div_ceil(2),
            generated.elapsed().as_secs_f64()
        );

        // (a) Every projection and the search index build from the whole log.
        let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
        let started = Instant::now();
        let server = serve(&url, &client, None).await?;
        let done = server.caught_up(&client, last, started, Duration::from_secs(1800)).await?;
        println!("(a) catching up from an empty read side (all six consumers run at once, sharing the cores; includes start-up)");
        for (name, secs) in &done {
            println!("    {name:<10} {secs:>7.1}s   {:>8.0} events/s", total as f64 / secs);
        }
        let slowest_pg = done.iter().filter(|(n, _)| *n != "search").map(|(_, s)| *s).fold(0.0, f64::max);
        println!(
            "    all five PostgreSQL read models: {:.0} events/s each, {:.0} events/s applied in all",
            total as f64 / slowest_pg,
            5.0 * total as f64 / slowest_pg
        );
        println!("    target: >= 20000 events/s into the read models");

        // (b) Command acknowledged to visible through the query API.
        let (lag, search_lag) = visibility(&client, &server, &ids).await?;
        println!("(b) visibility lag (write acknowledged -> read with its token answered), 150 each");
        println!(
            "    in process:   read model p50 {:.2} ms  p99 {:.2} ms   search index p50 {:.2} ms  p99 {:.2} ms",
            ms(&lag, 0.5),
            ms(&lag, 0.99),
            ms(&search_lag, 0.5),
            ms(&search_lag, 0.99)
        );
        // (c) Rebuilds from the whole log beside the live tables, one at a
        // time, each until it has taken over.
        println!("(c) rebuilding one projection at a time from the whole log (live tables keep serving)");
        for name in ["products", "audit"] {
            projections::request_rebuild(&pool, name).await?;
            let started = Instant::now();
            loop {
                let requested: bool = sqlx::query_scalar("SELECT rebuild_requested FROM projection_checkpoints WHERE projection = $1")
                    .bind(name)
                    .fetch_one(&pool)
                    .await?;
                if !requested {
                    break;
                }
                if started.elapsed() > Duration::from_secs(900) {
                    bail!("the rebuild of {name} did not take over within 15 minutes");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let secs = started.elapsed().as_secs_f64();
            println!("    {name:<10} {secs:>7.1}s   {:>8.0} events/s", total as f64 / secs);
        }
        println!("    target: >= 150000 events/s for one projection's rebuild");
        // (d) Reads under load: moderate (8 clients) and saturating (32).
        let ids = Arc::new(ids);
        println!("(d) {seconds}s per run, {products} products indexed");
        for clients in [8, CLIENTS] {
            let (query, c2, ids2) = (server.query.clone(), client.clone(), ids.clone());
            let (rate, histogram, errors) = drive(clients, Duration::from_secs(1), seconds, move |r| {
                let url = format!("{query}/v1/products/{}", ids2[(r % ids2.len() as u64) as usize]);
                let client = c2.clone();
                async move { client.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
            })
            .await?;
            println!(
                "    {clients:>2} clients, get product by id: {rate:>6.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {errors}",
                ms(&histogram, 0.5),
                ms(&histogram, 0.99)
            );
            let (query, c2) = (server.query.clone(), client.clone());
            let (rate, histogram, errors) = drive(clients, Duration::from_secs(1), seconds, move |r| {
                let q = format!("{} {}", ADJECTIVES[(r % 16) as usize], NOUNS[((r >> 8) % 16) as usize]);
                let url = format!("{query}/v1/search/products?q={}&limit=20", q.replace(' ', "+"));
                let client = c2.clone();
                async move { client.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
            })
            .await?;
            println!(
                "    {clients:>2} clients, search (two words, top 20, facets): {rate:>6.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {errors}",
                ms(&histogram, 0.5),
                ms(&histogram, 0.99)
            );
        }
        println!("    target: get-by-id p99 < 5 ms, search p99 < 15 ms (the load generator shares the cores)");
        if let Some((now, peak)) = server.resident_mib() {
            println!("    serve resident: {now:.0} MiB now, {peak:.0} MiB at its peak (catch-up, rebuilds and the load above); target < 1024 MiB");
        }
        let metrics = client.get(format!("{}/metrics", server.query)).send().await?.text().await?;
        for line in metrics.lines().filter(|l| l.starts_with("storekeeper_search_commit_seconds")) {
            println!("    {line}");
        }
        drop(server);

        // (b) again, through the relay and Kafka (the test broker, in
        // memory), on a smaller log of its own.
        let broker = crate::TestBroker::start()?;
        let url = create_database(&db.url, "bench_kafka").await?;
        let pool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
        eventlog::migrate(&pool).await?;
        let (log, _) = eventlog::vault::postgres_log(&pool);
        let ids = generate(&log, 1000, 2).await?;
        let topic = format!("storekeeper-bench-{}", Uuid::now_v7().simple());
        let server = serve(&url, &client, Some((&broker.brokers, &topic))).await?;
        let (lag, search_lag) = visibility(&client, &server, &ids).await?;
        println!(
            "    through Kafka: read model p50 {:.2} ms  p99 {:.2} ms   search index p50 {:.2} ms  p99 {:.2} ms",
            ms(&lag, 0.5),
            ms(&lag, 0.99),
            ms(&search_lag, 0.5),
            ms(&search_lag, 0.99)
        );
        println!("    target: p99 < 20 ms in process, < 100 ms through Kafka");
        drop(server);
        Ok(())
    })
}

/// Writes, each followed at once by a read with its consistency token:
/// the time from the acknowledgement to the answer, for the read models and
/// for the search index (150 each, after 20 to warm up).
async fn visibility(client: &reqwest::Client, server: &Serve, ids: &[Uuid]) -> Result<(Histogram<u64>, Histogram<u64>)> {
    let token = admin_token();
    let mut lag = Histogram::<u64>::new(3)?;
    let mut search_lag = Histogram::<u64>::new(3)?;
    for i in 0..320usize {
        let id = ids[(i * 7919) % ids.len()];
        let response = client
            .post(format!("{}/v1/products/{id}/restock", server.command))
            .bearer_auth(&token)
            .json(&json!({"quantity": 1}))
            .send()
            .await?;
        let consistency = response.headers().get("x-consistency-token").context("a write answers a token")?.to_str()?.to_owned();
        let acknowledged = Instant::now();
        let (path, histogram) = if i % 2 == 0 {
            (format!("/v1/products/{id}"), &mut lag)
        } else {
            (format!("/v1/search/products?q={}&limit=1", NOUNS[i % 16]), &mut search_lag)
        };
        let read = client
            .get(format!("{}{path}", server.query))
            .header("x-consistency-token", &consistency)
            .header("x-consistency-timeout", "10000")
            .send()
            .await?;
        if !read.status().is_success() {
            bail!("a read with a token failed: {}", read.status());
        }
        if i >= 20 {
            histogram.record(acknowledged.elapsed().as_micros() as u64)?;
        }
    }
    Ok((lag, search_lag))
}
