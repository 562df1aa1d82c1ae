//! `storekeeper serve`, built in release and started on free ports against
//! a benchmark's database, with an admin token to drive it: the system
//! under test for both benchmarks.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use uuid::Uuid;

use crate::workspace_root;

/// Benchmarks `STOREKEEPER_BENCH_BINARY` instead when it is set (another
/// build, for an A/B run on the same machine and hour).
pub(super) fn build_storekeeper() -> Result<()> {
    if other_binary().is_some() {
        return Ok(());
    }
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(workspace_root()).args(["build", "--release", "--quiet", "--package", "storekeeper"]);
    if !build.status().context("build storekeeper")?.success() {
        bail!("building storekeeper failed");
    }
    Ok(())
}

/// `STOREKEEPER_BENCH_BINARY`, unless unset or empty.
fn other_binary() -> Option<std::path::PathBuf> {
    std::env::var_os("STOREKEEPER_BENCH_BINARY").filter(|v| !v.is_empty()).map(Into::into)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

const SECRET: &str = "bench-jwt-secret-0123456789abcdef";

/// A role of `storekeeper` (release) on `url`, with its APIs on free ports.
pub(crate) struct Serve {
    _server: Server,
    pub(crate) command: String,
    pub(crate) query: String,
    _index: tempdir::Dir,
}

impl Serve {
    /// Stops the process (SIGTERM, and waits), keeping its data directory.
    pub(super) fn stop(self) -> tempdir::Dir {
        let Serve { _server, _index, .. } = self;
        drop(_server);
        _index
    }

    /// The process's resident memory now and at its peak, in MiB (Linux).
    pub(super) fn resident_mib(&self) -> Option<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self._server.0.id())).ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Waits until the read models and the search index have applied the
    /// log up to `last` (the order process is left out: benches set it at
    /// the head). Answers each one's seconds since `started`.
    pub(super) async fn caught_up(
        &self,
        client: &reqwest::Client,
        last: i64,
        started: Instant,
        within: Duration,
    ) -> Result<std::collections::BTreeMap<String, f64>> {
        let mut done = std::collections::BTreeMap::new();
        loop {
            let listed: serde_json::Value =
                client.get(format!("{}/v1/projections", self.query)).bearer_auth(admin_token()).send().await?.json().await?;
            let consumers: Vec<&serde_json::Value> =
                listed["items"].as_array().into_iter().flatten().filter(|item| item["kind"] != "process").collect();
            for item in &consumers {
                let name = item["name"].as_str().unwrap_or_default().to_owned();
                if item["position"].as_i64().unwrap_or(0) >= last && !done.contains_key(&name) {
                    done.insert(name, started.elapsed().as_secs_f64());
                }
            }
            if !consumers.is_empty() && done.len() == consumers.len() {
                return Ok(done);
            }
            if started.elapsed() > within {
                bail!("the projections did not catch up within {} s", within.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

pub(crate) mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `storekeeper serve`: every role in one process.
pub(super) async fn serve(url: &str, client: &reqwest::Client, kafka: Option<(&str, &str)>) -> Result<Serve> {
    start("serve", url, client, kafka).await
}

/// `storekeeper <role>` (`serve`, `command-api`, ...), the release build.
pub(super) async fn start(role: &str, url: &str, client: &reqwest::Client, kafka: Option<(&str, &str)>) -> Result<Serve> {
    let binary = other_binary().unwrap_or_else(|| workspace_root().join("target/release/storekeeper"));
    start_binary(&binary, role, url, client, kafka).await
}

/// `binary <role>` on `url`, with its APIs on free ports.
pub(crate) async fn start_binary(
    binary: &std::path::Path,
    role: &str,
    url: &str,
    client: &reqwest::Client,
    kafka: Option<(&str, &str)>,
) -> Result<Serve> {
    let dir = tempdir::Dir(std::env::temp_dir().join(format!("storekeeper-bench-{}", Uuid::now_v7().simple())));
    launch(binary, role, url, client, kafka, dir).await
}

/// `serve` again in the data directory a stopped one left (`Serve::stop`):
/// its search index goes on from where it was, as after a restart.
pub(super) async fn serve_again(url: &str, client: &reqwest::Client, dir: tempdir::Dir) -> Result<Serve> {
    let binary = other_binary().unwrap_or_else(|| workspace_root().join("target/release/storekeeper"));
    launch(&binary, "serve", url, client, None, dir).await
}

async fn launch(
    binary: &std::path::Path,
    role: &str,
    url: &str,
    client: &reqwest::Client,
    kafka: Option<(&str, &str)>,
    dir: tempdir::Dir,
) -> Result<Serve> {
    let free = || -> Result<u16> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (command, query) = (free()?, free()?);
    let mut command_line = Command::new(binary);
    match kafka {
        Some((brokers, topic)) => command_line.env("KAFKA_BROKERS", brokers).env("STOREKEEPER_KAFKA_TOPIC", topic),
        None => command_line.env_remove("KAFKA_BROKERS"),
    };
    let server = Server(
        command_line
            .arg(role)
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
    wait_ready(&serve.command, client).await?;
    Ok(serve)
}

/// The peer service (`xtask/peer`: axum + cqrs-es + postgres-es), built in
/// release in its own target directory. It is its own workspace, so CI
/// never builds it; building it needs crates.io.
pub(super) fn build_peer() -> Result<()> {
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build.current_dir(workspace_root().join("xtask/peer")).env("CARGO_TARGET_DIR", workspace_root().join("target/peer")).args([
        "build",
        "--release",
        "--quiet",
    ]);
    if !build.status().context("build the peer service")?.success() {
        bail!("building the peer service (xtask/peer) failed");
    }
    Ok(())
}

/// The peer on `url`, on a free port; `command` is its base URL.
pub(super) async fn start_peer(url: &str, client: &reqwest::Client) -> Result<Serve> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let binary = workspace_root().join("target/peer/release/peer");
    let server = Server(
        Command::new(&binary)
            .env("DATABASE_URL", url)
            .env("PEER_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?,
    );
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempdir::Dir(std::env::temp_dir().join(format!("storekeeper-bench-peer-{}", Uuid::now_v7().simple())));
    let peer = Serve { _server: server, command: base.clone(), query: base, _index: dir };
    wait_ready(&peer.command, client).await?;
    Ok(peer)
}

async fn wait_ready(base: &str, client: &reqwest::Client) -> Result<()> {
    let ready = Instant::now();
    while !client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        if ready.elapsed() > Duration::from_secs(60) {
            bail!("{base} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub(crate) fn admin_token() -> String {
    edge::JwtKeys::new(SECRET.as_bytes()).mint("bench", edge::Role::Admin, chrono::Duration::hours(2))
}
