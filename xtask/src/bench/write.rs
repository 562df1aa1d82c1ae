//! `cargo xtask bench write`: figures for the write path, printed, on a
//! durable throwaway PostgreSQL (fsync and synchronous_commit on).
//!
//! (a) HTTP commands/s and latency for 32 concurrent clients sending
//!     single-event commands (restocks and price changes over 1,000
//!     products) to `storekeeper serve`;
//! (b) raw event-log appends/s for batches of 1, 10 and 100 events with 1
//!     and 16 writers, beside the machine's fdatasync rate.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, PgEventLog, StreamWrite};
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::server::{admin_token, build_storekeeper, start};
use super::{Answer, CLIENTS, create_database, drive, ms, num_cpus, rerun_in_release};
use crate::TestDatabase;

const PRODUCTS: usize = 1000;

struct Settings {
    http_seconds: u64,
    append_seconds: u64,
}

pub fn write(args: &[&str]) -> Result<()> {
    if rerun_in_release("write", args)? {
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    let settings = if quick { Settings { http_seconds: 5, append_seconds: 2 } } else { Settings { http_seconds: 20, append_seconds: 5 } };
    build_storekeeper()?;

    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let fsync = fdatasync_rate();
        println!("storekeeper write benchmark ({} cores, durable PostgreSQL: fsync=on, synchronous_commit=on)", num_cpus());
        match &fsync {
            Ok(rate) => println!("pg_test_fsync: fdatasync {rate:.0} ops/s (one 8 kB write per sync)"),
            Err(e) => println!("pg_test_fsync: unavailable ({e:#})"),
        }
        println!();
        http("command-api", &db.url, &settings).await?;
        println!();
        http("serve", &db.url, &settings).await?;
        println!();
        appends(&db.url, &settings, fsync.ok()).await
    })
}

fn fdatasync_rate() -> Result<f64> {
    let bindir = pgcluster::find_bindir()?;
    let file = std::env::temp_dir().join(format!("storekeeper-fsync-{}", std::process::id()));
    let out = Command::new(bindir.join("pg_test_fsync")).args(["-s", "1", "-f"]).arg(&file).output().context("run pg_test_fsync")?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.trim_start().starts_with("fdatasync"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .context("pg_test_fsync printed no fdatasync rate")
}

/// HTTP commands against one role: `command-api` alone, or `serve` with
/// every consumer running beside it.
async fn http(role: &str, admin_url: &str, settings: &Settings) -> Result<()> {
    let url = create_database(admin_url, &format!("bench_http_{}", role.replace('-', "_"))).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let server = start(role, &url, &client, None).await?;
    let base = server.command.clone();
    let token = admin_token();

    let products = seed_products(&client, &base, &token).await?;
    let (rate, histogram, errors) =
        drive(CLIENTS, Duration::from_secs(2), settings.http_seconds, commands(client, base, token, products)).await?;
    let metrics = reqwest::get(format!("{}/metrics", server.command)).await?.text().await?;
    let metric = |name: &str| -> f64 { metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0) };
    let group = metric("storekeeper_append_group_appends_sum") / metric("storekeeper_append_group_appends_count").max(1.0);
    println!(
        "(a) HTTP commands to `storekeeper {role}`: {CLIENTS} clients, restock/price change over {PRODUCTS} products, {}s measured",
        settings.http_seconds
    );
    println!(
        "    {rate:.0} commands/s   p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms   errors {errors}",
        ms(&histogram, 0.50),
        ms(&histogram, 0.99),
        ms(&histogram, 0.999),
        histogram.max() as f64 / 1000.0,
    );
    println!("    appends per group commit: {group:.1} on average since start-up (seeding included)");
    match role {
        "command-api" => println!("    target: >= 10000 commands/s with p99 < 10 ms"),
        _ => println!("    target: >= 6000 commands/s with every consumer running"),
    }
    Ok(())
}

/// Adds `PRODUCTS` products through `base`'s command API (storekeeper's
/// or the peer's: the same bodies).
pub(super) async fn seed_products(client: &reqwest::Client, base: &str, token: &str) -> Result<Arc<Vec<Uuid>>> {
    let products: Arc<Vec<Uuid>> = Arc::new((0..PRODUCTS).map(|_| Uuid::now_v7()).collect());
    let seeded = futures::future::join_all((0..CLIENTS).map(|c| {
        let (client, products) = (client.clone(), products.clone());
        async move {
            for (i, id) in products.iter().enumerate().skip(c).step_by(CLIENTS) {
                let body = json!({"id": id, "sku": format!("BENCH-{i}"), "name": format!("Product {i}"), "description": "bench",
                                  "category": "bench", "price": {"amount_minor": 1000, "currency": "USD"}, "initial_stock": 100});
                let response = client.post(format!("{base}/v1/products")).bearer_auth(token).json(&body).send().await?;
                if response.status() != 201 {
                    bail!("seeding failed: {}", response.text().await?);
                }
            }
            Ok(())
        }
    }))
    .await;
    seeded.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(products)
}

/// The command load: single-event restocks and price changes over
/// `products`, chosen by the load generator's random number.
pub(super) fn commands(
    client: reqwest::Client,
    base: String,
    token: String,
    products: Arc<Vec<Uuid>>,
) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync + 'static {
    move |rng| {
        let id = products[(rng % products.len() as u64) as usize];
        let (path, body) = if rng.is_multiple_of(2) {
            ("restock", json!({"quantity": 1}))
        } else {
            ("price", json!({"price": {"amount_minor": 1000 + (rng % 1000) as i64, "currency": "USD"}}))
        };
        let request = client.post(format!("{base}/v1/products/{id}/{path}")).bearer_auth(&token).json(&body).send();
        Box::pin(async move { Answer::of(request.await).await })
    }
}

fn events(count: usize) -> Vec<NewEvent> {
    let metadata = Metadata::system("bench");
    (0..count)
        .map(|n| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "BenchHappened".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: metadata.clone(),
            data: json!({"n": n, "payload": "a typical small event body of some eighty bytes or so"}),
        })
        .collect()
}

async fn appends(admin_url: &str, settings: &Settings, fsync: Option<f64>) -> Result<()> {
    let url = create_database(admin_url, "bench_log").await?;
    let pool = PgPoolOptions::new().max_connections(20).connect(&url).await?;
    eventlog::migrate(&pool).await?;
    // As the binary takes it, so that one variable sets both.
    let committers = std::env::var("STOREKEEPER_APPEND_COMMITTERS").ok().and_then(|v| v.parse().ok());
    let log: Arc<dyn EventLog> = Arc::new(PgEventLog::with_committers(pool, committers.unwrap_or(eventlog::DEFAULT_APPEND_COMMITTERS)));
    println!("(b) raw event-log appends, {}s each, one new stream per append", settings.append_seconds);
    println!("    {:>6} {:>8} {:>12} {:>12} {:>10}", "batch", "writers", "appends/s", "events/s", "p99 ms");
    for batch in [1usize, 10, 100] {
        for writers in [1usize, 16] {
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let (log, stop) = (log.clone(), stop.clone());
                    tokio::spawn(async move {
                        let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                        let mut appended = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let write = StreamWrite {
                                stream_id: format!("bench-{}", Uuid::now_v7()),
                                expected: ExpectedVersion::NoStream,
                                events: events(batch),
                            };
                            let sent = Instant::now();
                            log.append(vec![write]).await.expect("append");
                            histogram.record(sent.elapsed().as_micros() as u64).expect("in range");
                            appended += 1;
                        }
                        (histogram, appended)
                    })
                })
                .collect();
            tokio::time::sleep(Duration::from_secs(settings.append_seconds)).await;
            stop.store(true, Ordering::Relaxed);
            let elapsed = started.elapsed().as_secs_f64();
            let mut histogram = Histogram::<u64>::new(3)?;
            let mut appended = 0;
            for task in tasks {
                let (h, n) = task.await?;
                histogram.add(h)?;
                appended += n;
            }
            println!(
                "    {:>6} {:>8} {:>12.0} {:>12.0} {:>10.2}",
                batch,
                writers,
                appended as f64 / elapsed,
                (appended as usize * batch) as f64 / elapsed,
                histogram.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
    }
    if let Some(rate) = fsync {
        println!(
            "    fdatasync rate of this disk: {rate:.0}/s (a single writer's commits cannot outrun it; concurrent writers share syncs)"
        );
    }
    println!("    target: >= 50000 events/s in batches of 100");
    Ok(())
}
