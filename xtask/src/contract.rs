//! `cargo xtask contract`, also the last step of `cargo xtask test`: the
//! public contract checked from outside, by tools that are not ours, against
//! a `storekeeper serve` started for it with Kafka. Schemathesis
//! (property-based, every check, a fixed seed and budget) runs on both
//! OpenAPI documents as served; then a consumer written with
//! confluent-kafka and the CloudEvents SDK reads the whole topic those runs
//! filled and checks every message against the AsyncAPI document.
//!
//! The Python tools are pinned and installed from PyPI under
//! `target/pytools` on first use.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bench::server::{admin_token, start_binary};
use crate::{TestBroker, TestDatabase, run, workspace_root};

/// The tools, at the versions the contract was last checked with.
const PYTHON_TOOLS: [&str; 4] = ["schemathesis==4.32.5", "confluent-kafka==2.16.1", "cloudevents==2.2.0", "jsonschema==4.26.0"];

/// Fixed so that a failure is reproduced by running again.
const SEED: &str = "20261204";
/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "60";

/// `cargo xtask contract`: with its own database and broker unless the
/// environment names them.
pub fn standalone() -> Result<()> {
    let db = TestDatabase::start(false, "contract")?;
    let broker = TestBroker::start()?;
    let mut build = crate::cargo();
    build.args(["build", "--quiet", "--package", "storekeeper"]);
    run(build).context("build storekeeper")?;
    check(&db.url, &broker.brokers)
}

/// Runs every contract check against the debug build of `storekeeper`.
pub fn check(admin_url: &str, brokers: &str) -> Result<()> {
    let tools = python_tools()?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let binary = target.join("debug/storekeeper");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let url = crate::bench::create_database(admin_url, "contract").await?;
        let topic = format!("storekeeper-contract-{}", uuid::Uuid::now_v7().simple());
        let client = reqwest::Client::new();
        let server = start_binary(&binary, "serve", &url, &client, Some((brokers, &topic))).await?;
        let token = admin_token();
        let mut failed = Vec::new();
        for (api, base) in [("command API", &server.command), ("query API", &server.query)] {
            eprintln!("xtask: schemathesis against the {api} ({base}/openapi.json)");
            if !schemathesis(&tools, base, &token)?.success() {
                failed.push(format!("schemathesis found failures in the {api}"));
            }
        }
        eprintln!("xtask: the topic {topic} read by confluent-kafka and the CloudEvents SDK, against schemas/asyncapi/events.json");
        let status = python(&tools)
            .arg(workspace_root().join("xtask/contract/topic.py"))
            .args(["--brokers", brokers, "--topic", &topic, "--command", &server.command, "--token", &token])
            .arg("--asyncapi")
            .arg(workspace_root().join("schemas/asyncapi/events.json"))
            .status()
            .context("run xtask/contract/topic.py")?;
        if !status.success() {
            failed.push("the topic's messages do not keep the AsyncAPI and CloudEvents contract".into());
        }
        drop(server);
        if !failed.is_empty() {
            bail!("{}", failed.join("; "));
        }
        Ok(())
    })
}

fn schemathesis(tools: &Path, base: &str, token: &str) -> Result<std::process::ExitStatus> {
    let config = workspace_root().join("xtask/contract/schemathesis.toml");
    python(tools)
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json"), "--url", base])
        .args(["--checks", "all", "--seed", SEED, "--max-examples", MAX_EXAMPLES, "--workers", "2"])
        .env("STOREKEEPER_CONTRACT_TOKEN", token)
        .args(["--generation-database", "none", "--output-truncate", "false"])
        .status()
        .context("run schemathesis")
}

fn python(tools: &Path) -> Command {
    let mut command = Command::new("python3");
    let path = std::env::join_paths([tools.to_path_buf(), workspace_root().join("xtask/contract")]).expect("paths without separators");
    // Run under `target/` so that the tools' own state (schemathesis keeps a
    // `.schemathesis/` folder in its working directory) stays out of the tree.
    let cwd = workspace_root().join("target");
    let _ = std::fs::create_dir_all(&cwd);
    command.env("PYTHONPATH", path).env("PYTHONDONTWRITEBYTECODE", "1").current_dir(cwd);
    command
}

/// The pinned tools under `target/pytools`, installed once per pin.
fn python_tools() -> Result<PathBuf> {
    let dir = workspace_root().join("target/pytools");
    let stamp = dir.join(".pins");
    let pins = PYTHON_TOOLS.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(pins.as_str()) {
        eprintln!("xtask: installing {pins} into {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let mut pip = Command::new("python3");
        pip.args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]).arg(&dir).args(PYTHON_TOOLS);
        run(pip).context("pip install the contract tools (needs python3 with pip and access to PyPI)")?;
        std::fs::write(&stamp, &pins).context("write target/pytools/.pins")?;
    }
    Ok(dir)
}
