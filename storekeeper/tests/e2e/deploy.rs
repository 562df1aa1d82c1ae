//! The deployment files (docker-compose.yml, Prometheus, Grafana) against
//! the tools that read them and the binary whose metrics they use.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{brokers, free_port, run, storekeeper, temp_dir};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn succeeds(cmd: &mut Command) -> String {
    let out = run(cmd.current_dir(root()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

#[test]
fn prometheus_accepts_the_scrape_config_and_the_rules_fire_as_tested() {
    succeeds(Command::new("promtool").args(["check", "config", "deploy/prometheus/prometheus.yml"]));
    succeeds(Command::new("promtool").args(["check", "rules", "deploy/prometheus/rules.yml"]));
    succeeds(Command::new("promtool").args(["test", "rules", "deploy/prometheus/rules_test.yml"]));
}

#[test]
fn docker_compose_accepts_the_deployment_with_the_example_secrets() {
    let config = succeeds(Command::new("docker-compose").args(["--env-file", ".env.example", "-f", "docker-compose.yml", "config"]));
    for service in [
        "postgres",
        "kafka",
        "relay",
        "projections-1",
        "projections-2",
        "command-api-1",
        "command-api-2",
        "query-api-1",
        "query-api-2",
        "gateway",
        "prometheus",
        "grafana",
        "otel-collector",
        "jaeger",
    ] {
        assert!(config.contains(&format!("\n  {service}:\n")), "no service {service} in:\n{config}");
    }
    // Without the secrets it refuses to start, rather than run with none.
    let empty = temp_dir("compose-env").join("empty.env");
    std::fs::write(&empty, "").unwrap();
    let out = run(Command::new("docker-compose")
        .args(["--env-file"])
        .arg(&empty)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(root()));
    assert!(!out.status.success(), "{out:?}");
}

/// Every `storekeeper_*` metric named in `text` (histogram series by their
/// base name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("storekeeper_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        if at == 0 || !rest[..at].ends_with(':') {
            names.insert(base.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_and_the_rules_use_is_exported_by_a_running_role() {
    let dashboard = std::fs::read_to_string(root().join("deploy/grafana/dashboards/storekeeper.json")).unwrap();
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<&str> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    let mut wanted = metric_names(&exprs.join("\n"));
    wanted.extend(metric_names(&rules));
    assert!(wanted.len() >= 10, "{wanted:?}");

    // Every role in one process, through Kafka, with the metrics listener
    // that the roles without an API are scraped on.
    let dir = temp_dir("metrics");
    let (port, query_port, metrics_port) = (free_port(), free_port(), free_port());
    let mut child = storekeeper(&["serve"])
        .env("STOREKEEPER_DATA_DIR", &dir)
        .env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{port}"))
        .env("STOREKEEPER_QUERY_ADDR", format!("127.0.0.1:{query_port}"))
        .env("STOREKEEPER_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env("KAFKA_BROKERS", brokers())
        .env("STOREKEEPER_KAFKA_TOPIC", format!("storekeeper-metrics-{}", uuid::Uuid::now_v7().simple()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let (base, query, metrics) =
        (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{query_port}"), format!("http://127.0.0.1:{metrics_port}"));
    let started = Instant::now();
    while !http.get(format!("{metrics}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(started.elapsed() < Duration::from_secs(90), "the metrics listener never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = String::from_utf8(run(&mut storekeeper(&["token", "--role", "admin", "--sub", "ops"])).stdout).unwrap().trim().to_owned();
    let mut missing = wanted.clone();
    let started = Instant::now();
    while !missing.is_empty() && started.elapsed() < Duration::from_secs(60) {
        // Traffic of every kind the dashboard shows: a write, a refusal,
        // reads and a search.
        let sku = format!("MET-{}", uuid::Uuid::now_v7().simple());
        let added = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(&admin)
            .json(&json!({"sku": sku, "name": "Meter", "description": "",
            "category": "tools", "price": {"amount_minor": 100, "currency": "USD"}, "initial_stock": 1}))
            .send()
            .await;
        if let Ok(added) = added {
            let token = added.headers().get("x-consistency-token").map(|t| t.to_str().unwrap().to_owned()).unwrap_or_default();
            let _ = http.get(format!("{query}/v1/search/products?q=meter")).header("x-consistency-token", token).send().await;
        }
        let unknown = uuid::Uuid::now_v7();
        let _ = http.post(format!("{base}/v1/products/{unknown}/restock")).bearer_auth(&admin).json(&json!({"quantity": 1})).send().await;
        let page = http.get(format!("{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
        let exported = metric_names(&page);
        missing.retain(|m| !exported.contains(m));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(missing.is_empty(), "used by the dashboard or the rules but exported by no role: {missing:?}");
}
