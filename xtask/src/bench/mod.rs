//! `cargo xtask bench write|read|decide`: benchmarks against a durable throwaway
//! PostgreSQL and a release build of `storekeeper`. This module holds what
//! both share (the release re-run, a database per run, the closed-loop load
//! generator); `write` and `read` hold the benchmarks themselves, `server`
//! the `storekeeper serve` they drive and `history` the log `read` projects.

mod decide;
mod history;
mod peer;
mod read;
mod server;
mod write;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use sqlx::postgres::PgPoolOptions;

use crate::workspace_root;

pub use decide::decide;
pub use peer::peer;
pub use read::read;
pub use write::write;

/// Concurrent clients of a saturating HTTP load.
const CLIENTS: usize = 32;

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

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn create_database(admin_url: &str, name: &str) -> Result<String> {
    let admin = PgPoolOptions::new().max_connections(1).connect(admin_url).await.context("connect to the bench cluster")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').context("a database URL ends in /<database>")?;
    Ok(format!("{base}/{name}"))
}

/// The load generator: `clients` concurrent loops sending `request` (given
/// a random number) for `warmup` and then `seconds` more; answers the
/// measured requests/s, the latency histogram (µs) and the failures.
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

/// `cargo xtask bench all [--quick]`: every benchmark, one after another.
pub fn all(args: &[&str]) -> Result<()> {
    if rerun_in_release("all", args)? {
        return Ok(());
    }
    type Bench = fn(&[&str]) -> Result<()>;
    let benchmarks: [(&str, Bench); 4] = [("decide", decide), ("write", write), ("read", read), ("peer", peer)];
    for (name, run) in benchmarks {
        println!("==== cargo xtask bench {name} {}", args.join(" "));
        run(args)?;
        println!();
    }
    Ok(())
}
