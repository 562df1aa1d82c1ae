//! `cargo xtask bench write`: figures for the write path, printed, on a
//! durable throwaway PostgreSQL (fsync and synchronous_commit on).
//!
//! (a) HTTP commands/s and latency for 32 concurrent clients sending
//!     single-event commands (restocks and price changes over 1,000
//!     products) to `storekeeper serve`;
//! (b) raw event-log appends/s for batches of 1, 10 and 100 events with 1
//!     and 16 writers, beside the machine's fdatasync rate.

use std::process::{Child, Command, Stdio};
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

use crate::{TestDatabase, workspace_root};

const CLIENTS: usize = 32;
const PRODUCTS: usize = 1000;

struct Settings {
    http_seconds: u64,
    append_seconds: u64,
}

/// Benchmarks measure optimised code: from a debug build, re-run the same
/// command from a release build. Answers whether it did.
fn rerun_in_release(which: &str, args: &[&str]) -> Result<bool> {
    if !cfg!(debug_assertions) {
        return Ok(false);
    }
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args(["run", "--release", "--quiet", "--package", "xtask", "--", "bench", which]).args(args);
    let status = cmd.status().context("run the release build of xtask")?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    Ok(true)
}

fn build_storekeeper() -> Result<()> {
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(workspace_root()).args(["build", "--release", "--quiet", "--package", "storekeeper"]);
    if !build.status().context("build storekeeper")?.success() {
        bail!("building storekeeper failed");
    }
    Ok(())
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
        http(&db.url, &settings).await?;
        println!();
        appends(&db.url, &settings, fsync.ok()).await
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    let admin = PgPoolOptions::new().max_connections(1).connect(admin_url).await.context("connect to the bench cluster")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').context("a database URL ends in /<database>")?;
    Ok(format!("{base}/{name}"))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

const SECRET: &str = "bench-jwt-secret-0123456789abcdef";

/// `storekeeper serve` (release) on `url`, with both APIs on free ports.
struct Serve {
    _server: Server,
    command: String,
    query: String,
    _index: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn serve(url: &str, client: &reqwest::Client, kafka: Option<(&str, &str)>) -> Result<Serve> {
    let free = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (command, query) = (free()?, free()?);
    let dir = tempdir::Dir(std::env::temp_dir().join(format!("storekeeper-bench-{}", Uuid::now_v7().simple())));
    let binary = workspace_root().join("target/release/storekeeper");
    let mut command_line = Command::new(&binary);
    match kafka {
        Some((brokers, topic)) => command_line.env("KAFKA_BROKERS", brokers).env("STOREKEEPER_KAFKA_TOPIC", topic),
        None => command_line.env_remove("KAFKA_BROKERS"),
    };
    let server = Server(
        command_line
            .arg("serve")
            .env("DATABASE_URL", url)
            .env("STOREKEEPER_DATA_DIR", &dir.0)
            .env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{command}"))
            .env("STOREKEEPER_QUERY_ADDR", format!("127.0.0.1:{query}"))
            .env("STOREKEEPER_JWT_SECRET", SECRET)
            .env("STOREKEEPER_WEBHOOK_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?,
    );
    let serve =
        Serve { _server: server, command: format!("http://127.0.0.1:{command}"), query: format!("http://127.0.0.1:{query}"), _index: dir };
    let ready = Instant::now();
    while !client.get(format!("{}/readyz", serve.command)).send().await.is_ok_and(|r| r.status().is_success()) {
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("storekeeper did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(serve)
}

fn admin_token() -> String {
    command_api::JwtKeys::new(SECRET.as_bytes()).mint("bench", command_api::Role::Admin, chrono::Duration::hours(2))
}

async fn http(admin_url: &str, settings: &Settings) -> Result<()> {
    let url = create_database(admin_url, "bench_http").await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
    let server = serve(&url, &client, None).await?;
    let base = server.command.clone();
    let token = admin_token();

    let products: Arc<Vec<Uuid>> = Arc::new((0..PRODUCTS).map(|_| Uuid::now_v7()).collect());
    let seeded = futures::future::join_all((0..CLIENTS).map(|c| {
        let (client, base, token, products) = (client.clone(), base.clone(), token.clone(), products.clone());
        async move {
            for (i, id) in products.iter().enumerate().skip(c).step_by(CLIENTS) {
                let body = json!({"id": id, "sku": format!("BENCH-{i}"), "name": format!("Product {i}"), "description": "bench",
                                  "category": "bench", "price": {"amount_minor": 1000, "currency": "USD"}, "initial_stock": 100});
                let response = client.post(format!("{base}/v1/products")).bearer_auth(&token).json(&body).send().await?;
                if response.status() != 201 {
                    bail!("seeding failed: {}", response.text().await?);
                }
            }
            Ok(())
        }
    }))
    .await;
    seeded.into_iter().collect::<Result<Vec<()>>>()?;

    let (rate, histogram, errors) = drive(CLIENTS, Duration::from_secs(2), settings.http_seconds, move |rng| {
        let id = products[(rng % PRODUCTS as u64) as usize];
        let (path, body) = if rng.is_multiple_of(2) {
            ("restock", json!({"quantity": 1}))
        } else {
            ("price", json!({"price": {"amount_minor": 1000 + (rng % 1000) as i64, "currency": "USD"}}))
        };
        let request = client.post(format!("{base}/v1/products/{id}/{path}")).bearer_auth(&token).json(&body).send();
        async move { request.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await?;
    println!("(a) HTTP commands: {CLIENTS} clients, restock/price change over {PRODUCTS} products, {}s measured", settings.http_seconds);
    println!(
        "    {rate:.0} commands/s   p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms   max {:.2} ms   errors {errors}",
        ms(&histogram, 0.50),
        ms(&histogram, 0.99),
        ms(&histogram, 0.999),
        histogram.max() as f64 / 1000.0,
    );
    println!("    target: >= 3000 commands/s with p99 < 25 ms");
    Ok(())
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
    let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pool));
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

const ADJECTIVES: [&str; 16] = [
    "red", "blue", "green", "steel", "copper", "wooden", "compact", "deluxe", "electric", "classic", "modern", "rustic", "silver",
    "golden", "tiny", "giant",
];
const NOUNS: [&str; 16] = [
    "kettle", "mug", "lamp", "chair", "table", "shovel", "hose", "blender", "toaster", "pillow", "blanket", "bottle", "knife", "pan",
    "clock", "vase",
];

fn product_name(i: usize) -> String {
    format!("{} {} {}", ADJECTIVES[i % 16], ADJECTIVES[(i / 16) % 16], NOUNS[(i / 256) % 16])
}

/// Appends `products` products with `per_product` events each, straight
/// into the log in batches, as a history to project.
async fn generate(log: &Arc<dyn EventLog>, products: usize, per_product: usize) -> Result<Vec<Uuid>> {
    use domain::events::EventCodec;
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
                        let events = events
                            .iter()
                            .map(|e| {
                                let encoded = e.encode();
                                NewEvent {
                                    event_id: Uuid::now_v7(),
                                    event_type: encoded.event_type.to_owned(),
                                    schema_version: encoded.schema_version,
                                    occurred_at: Utc::now(),
                                    metadata: metadata.clone(),
                                    data: encoded.data,
                                }
                            })
                            .collect();
                        writes.push(StreamWrite { stream_id: format!("product-{id}"), expected: ExpectedVersion::NoStream, events });
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

/// `clients` concurrent loops of `request` for `seconds`: requests/s and
/// the latency histogram (µs).
/// `clients` loops sending `request` (given a random number) for `warmup`
/// and then `seconds` more; answers the measured rate, latencies and
/// failures.
async fn drive<F, Fut>(clients: usize, warmup: Duration, seconds: u64, request: F) -> Result<(f64, Histogram<u64>, u64)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (request, stop) = (request.clone(), stop.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                let mut errors = 0u64;
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let sent = Instant::now();
                    let ok = request(rng).await;
                    if started.elapsed() > warmup {
                        errors += u64::from(!ok);
                        histogram.record(sent.elapsed().as_micros() as u64).expect("in range");
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    tokio::time::sleep(warmup + Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = (started.elapsed() - warmup).as_secs_f64();
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for task in tasks {
        let (h, e) = task.await?;
        histogram.add(h)?;
        errors += e;
    }
    Ok((histogram.len() as f64 / elapsed, histogram, errors))
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// `cargo xtask bench read`: projection throughput from a log of 1,000,000
/// events, visibility lag, and read latency with 100,000 products indexed.
pub fn read(args: &[&str]) -> Result<()> {
    if rerun_in_release("read", args)? {
        return Ok(());
    }
    let quick = args.contains(&"--quick");
    let (products, per_product, seconds) = if quick { (10_000, 10, 5) } else { (100_000, 10, 10) };
    build_storekeeper()?;
    let db = TestDatabase::start(true, "bench")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let url = create_database(&db.url, "bench_read").await?;
        let pool = PgPoolOptions::new().max_connections(10).connect(&url).await?;
        eventlog::migrate(&pool).await?;
        let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pool.clone()));
        println!("storekeeper read benchmark ({} cores, durable PostgreSQL)", num_cpus());
        let generated = Instant::now();
        let ids = generate(&log, products, per_product).await?;
        let total = products * per_product;
        let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events").fetch_one(&pool).await?;
        println!("log: {total} events ({products} products x {per_product}) appended in {:.1}s", generated.elapsed().as_secs_f64());

        // (a) Every projection and the search index build from the whole log.
        let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build()?;
        let started = Instant::now();
        let server = serve(&url, &client, None).await?;
        let mut done: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
        while done.len() < 6 {
            let listed: serde_json::Value = client.get(format!("{}/v1/projections", server.query)).send().await?.json().await?;
            for item in listed["items"].as_array().into_iter().flatten() {
                let name = item["name"].as_str().unwrap_or_default().to_owned();
                if item["position"].as_i64().unwrap_or(0) >= last && !done.contains_key(&name) {
                    done.insert(name, started.elapsed().as_secs_f64());
                }
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("the projections did not catch up within 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
        // (c) Reads under load: moderate (8 clients) and saturating (32).
        let ids = Arc::new(ids);
        println!("(c) {seconds}s per run, {products} products indexed");
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
        let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pool.clone()));
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
