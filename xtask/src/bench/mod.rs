//! `cargo xtask bench write|read|decide|overload|peer|scale`: benchmarks against a durable throwaway
//! PostgreSQL and a release build of `storekeeper`. This module holds what
//! both share (the release re-run, a database per run, the closed-loop load
//! generator); `write` and `read` hold the benchmarks themselves, `server`
//! the `storekeeper serve` they drive and `history` the log `read` projects.

mod decide;
mod history;
mod overload;
mod peer;
mod read;
mod scale;
pub(crate) mod server;
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
pub use overload::overload;
pub use peer::peer;
pub use read::read;
pub use scale::scale;
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

pub(crate) async fn create_database(admin_url: &str, name: &str) -> Result<String> {
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
    Fut: Future + Send,
    Fut::Output: Into<Answer>,
{
    let driven = drive_answers(clients, warmup, seconds, request).await?;
    Ok((driven.rate, driven.histogram, driven.failed))
}

/// What one request of the load got.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    /// Refused at once (503 `overloaded`): the client waits `SHED_BACKOFF`
    /// before its next request.
    Shed,
    Failed,
}

impl From<bool> for Answer {
    fn from(ok: bool) -> Self {
        if ok { Answer::Ok } else { Answer::Failed }
    }
}

impl Answer {
    /// What an HTTP request got: 2xx, 503 `overloaded`, or a failure.
    async fn of(sent: reqwest::Result<reqwest::Response>) -> Answer {
        match sent {
            Ok(r) if r.status().is_success() => Answer::Ok,
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => match r.json::<serde_json::Value>().await {
                Ok(problem) if problem["code"] == "overloaded" => Answer::Shed,
                _ => Answer::Failed,
            },
            _ => Answer::Failed,
        }
    }
}

/// How long a client refused with 503 `overloaded` waits before it asks
/// again: a tenth of the `Retry-After` it is given, so that the load stays
/// far above what the server takes.
const SHED_BACKOFF: Duration = Duration::from_millis(100);

/// What `drive_answers` measured after the warm-up.
struct Driven {
    /// Requests answered (taken, whether they succeeded) per second.
    rate: f64,
    /// Latency (µs) of the requests answered.
    histogram: Histogram<u64>,
    failed: u64,
    shed: u64,
}

/// `drive`, telling requests refused at once (not timed) from the others.
async fn drive_answers<F, Fut>(clients: usize, warmup: Duration, seconds: u64, request: F) -> Result<Driven>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future + Send,
    Fut::Output: Into<Answer>,
{
    let request = Arc::new(request);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (request, stop) = (request.clone(), stop.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("histogram");
                let (mut failed, mut shed) = (0u64, 0u64);
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let sent = Instant::now();
                    let answer: Answer = request(rng).await.into();
                    let measured = started.elapsed() > warmup;
                    match answer {
                        Answer::Shed => {
                            shed += u64::from(measured);
                            tokio::time::sleep(SHED_BACKOFF).await;
                        }
                        _ if measured => {
                            failed += u64::from(answer == Answer::Failed);
                            histogram.record(sent.elapsed().as_micros() as u64).expect("in range");
                        }
                        _ => {}
                    }
                }
                (histogram, failed, shed)
            })
        })
        .collect();
    tokio::time::sleep(warmup + Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = (started.elapsed() - warmup).as_secs_f64();
    let mut driven = Driven { rate: 0.0, histogram: Histogram::<u64>::new(3)?, failed: 0, shed: 0 };
    for task in tasks {
        let (h, failed, shed) = task.await?;
        driven.histogram.add(h)?;
        driven.failed += failed;
        driven.shed += shed;
    }
    driven.rate = driven.histogram.len() as f64 / elapsed;
    Ok(driven)
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
    let benchmarks: [(&str, Bench); 5] = [("decide", decide), ("write", write), ("read", read), ("overload", overload), ("peer", peer)];
    for (name, run) in benchmarks {
        println!("==== cargo xtask bench {name} {}", args.join(" "));
        run(args)?;
        println!();
    }
    Ok(())
}
