//! The dependency rules ARCHITECTURE.md states, checked from `cargo
//! metadata` on every `cargo xtask test`: a rule that is only written down
//! is a rule that erodes.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Crates the pure domain must never reach (IO, runtimes, frameworks).
const IO_CRATES: [&str; 10] = ["tokio", "sqlx", "axum", "hyper", "rdkafka", "reqwest", "tantivy", "tower", "async-trait", "futures"];
/// Crates that are parts to be wired, not libraries to build on: only the
/// binary (and test and automation code) may depend on them.
const PARTS: [&str; 3] = ["command-api", "query-api", "kafka"];
const WIRING: [&str; 3] = ["storekeeper", "test-support", "xtask"];

/// Each workspace crate's normal (non-dev) dependencies.
fn normal_dependencies() -> Result<BTreeMap<String, Vec<String>>> {
    let output = super::cargo().args(["metadata", "--format-version", "1", "--no-deps", "--offline"]).output().context("cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout).context("read cargo metadata")?;
    let mut deps = BTreeMap::new();
    for package in metadata["packages"].as_array().context("packages")? {
        let names = package["dependencies"]
            .as_array()
            .context("dependencies")?
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
        deps.insert(package["name"].as_str().context("name")?.to_owned(), names);
    }
    Ok(deps)
}

/// Every broken rule, as sentences.
pub fn violations(deps: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut broken = Vec::new();
    let on = |krate: &str, dep: &str| deps.get(krate).is_some_and(|d| d.iter().any(|x| x == dep));
    for io in IO_CRATES {
        if on("domain", io) {
            broken.push(format!("domain depends on {io}: the domain does no IO"));
        }
    }
    for workspace_crate in deps.keys().filter(|k| *k != "domain") {
        if on("domain", workspace_crate) {
            broken.push(format!("domain depends on {workspace_crate}: the domain depends on no other crate of ours"));
        }
    }
    for command_side in ["command-api", "commands"] {
        for query_side in ["query-api", "projections"] {
            if on(query_side, command_side) {
                broken.push(format!("{query_side} depends on {command_side}: the query side never depends on the command side"));
            }
        }
    }
    for (krate, list) in deps {
        if WIRING.contains(&krate.as_str()) {
            continue;
        }
        for part in PARTS {
            if list.iter().any(|d| d == part) {
                broken.push(format!("{krate} depends on {part}: only the binary wires the parts together"));
            }
        }
        if list.iter().any(|d| d == "test-support") {
            broken.push(format!("{krate} depends on test-support outside [dev-dependencies]"));
        }
    }
    for domain_crate in ["domain", "eventlog", "commands", "projections"] {
        if on("edge", domain_crate) {
            broken.push(format!("edge depends on {domain_crate}: the HTTP edge knows nothing of the domain"));
        }
    }
    for store in ["sqlx", "rdkafka", "tantivy"] {
        if on("edge", store) {
            broken.push(format!("edge depends on {store}: the HTTP edge is given its readiness checks, it opens no store"));
        }
    }
    broken
}

pub fn check() -> Result<()> {
    let broken = violations(&normal_dependencies()?);
    if !broken.is_empty() {
        bail!("dependency rules broken (see ARCHITECTURE.md):\n  {}", broken.join("\n  "));
    }
    eprintln!("xtask: dependency rules hold");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn each_rule_catches_its_breach() {
        let ok = graph(&[("domain", &["serde"]), ("query-api", &["edge", "projections"]), ("storekeeper", &["command-api", "kafka"])]);
        assert!(violations(&ok).is_empty());
        assert_eq!(violations(&graph(&[("domain", &["tokio"])])).len(), 1);
        assert_eq!(violations(&graph(&[("domain", &[]), ("eventlog", &[]), ("domain2", &[])])).len(), 0);
        assert_eq!(violations(&graph(&[("query-api", &["commands"])])).len(), 1);
        assert_eq!(violations(&graph(&[("projections", &["kafka"])])).len(), 1);
        assert_eq!(violations(&graph(&[("edge", &["domain"])])).len(), 1);
        assert_eq!(violations(&graph(&[("edge", &["sqlx"])])).len(), 1);
        assert_eq!(violations(&graph(&[("kafka", &["test-support"])])).len(), 1);
    }

    #[test]
    fn the_workspace_keeps_the_rules() {
        let broken = violations(&normal_dependencies().unwrap());
        assert!(broken.is_empty(), "{broken:?}");
    }
}
