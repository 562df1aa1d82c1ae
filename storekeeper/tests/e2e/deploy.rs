//! The deployment files (docker-compose.yml, Prometheus, Grafana) against
//! the tools that read them and the binary whose metrics they use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{admin_token, brokers, free_port, run, storekeeper, temp_dir};

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
    let admin = admin_token();
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
    // The metrics listener answers its errors as the APIs do.
    for (response, code) in [
        (http.get(format!("{metrics}/nothing")).send().await.unwrap(), "not_found"),
        (http.post(format!("{metrics}/metrics")).send().await.unwrap(), "method_not_allowed"),
    ] {
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!((kind.as_str(), body["code"].as_str()), ("application/problem+json", Some(code)), "{body}");
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(missing.is_empty(), "used by the dashboard or the rules but exported by no role: {missing:?}");
}

/// `curl` (the tests' HTTP client has no TLS): the status line's code, the
/// headers and the body.
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = run(Command::new("curl").args(["-sk", "-D", "-", "--max-time", "20"]).args(args));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_routes_limits_and_answers_problems_under_real_nginx() {
    let dir = temp_dir("gateway");
    let (port, query_port, http_port, https_port) = (free_port(), free_port(), free_port(), free_port());
    let mut child = storekeeper(&["serve"])
        .env("STOREKEEPER_DATA_DIR", dir.join("data"))
        .env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{port}"))
        .env("STOREKEEPER_QUERY_ADDR", format!("127.0.0.1:{query_port}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http.get(format!("http://127.0.0.1:{query_port}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
        || !http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        assert!(started.elapsed() < Duration::from_secs(90), "serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The deployment's own gateway file, pointed at this machine.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    succeeds(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
            .arg(certs.join("dev.key"))
            .arg("-out")
            .arg(certs.join("dev.crt")),
    );
    let site = std::fs::read_to_string(root().join("deploy/nginx/storekeeper.conf"))
        .unwrap()
        .replace("command-api-1:8080", &format!("127.0.0.1:{port}"))
        .replace("command-api-2:8080", &format!("127.0.0.1:{port}"))
        .replace("query-api-1:8081", &format!("127.0.0.1:{query_port}"))
        .replace("query-api-2:8081", &format!("127.0.0.1:{query_port}"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{https_port} ssl;"))
        .replace("/etc/nginx/certs/", &format!("{}/", certs.display()));
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" };
    succeeds(Command::new(nginx).arg("-e").arg(dir.join("error.log")).arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).arg("-t"));
    let mut gateway = Command::new(nginx)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("https://127.0.0.1:{https_port}");
    let started = Instant::now();
    while curl(&[&format!("{base}/v1/products")]).0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nginx never answered: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Writes reach the command API, reads the query API, request ids pass.
    let admin = admin_token();
    let bearer = format!("Authorization: Bearer {admin}");
    let product = uuid::Uuid::now_v7();
    let body = json!({"id": product, "sku": "GATE-1", "name": "Gate", "description": "", "category": "c",
                      "price": {"amount_minor": 100, "currency": "USD"}, "initial_stock": 1})
    .to_string();
    let (code, head, _) = curl(&[
        "-X",
        "POST",
        "-H",
        &bearer,
        "-H",
        "Content-Type: application/json",
        "-H",
        "X-Request-Id: gate-trace-1",
        "-d",
        &body,
        &format!("{base}/v1/products"),
    ]);
    assert_eq!(code, 201, "{head}");
    assert!(head.contains("x-request-id: gate-trace-1"), "{head}");
    let token = head.lines().find_map(|l| l.strip_prefix("x-consistency-token: ")).unwrap().trim().to_owned();
    let (code, _, read) = curl(&["-H", &bearer, "-H", &format!("X-Consistency-Token: {token}"), &format!("{base}/v1/products/{product}")]);
    assert_eq!(code, 200, "{read}");
    assert!(read.contains("GATE-1"), "{read}");
    let (code, head, _) = curl(&[&format!("http://127.0.0.1:{http_port}/v1/products")]);
    assert_eq!(code, 301, "{head}");
    assert!(head.contains("location: https://"), "{head}");

    // Bodies over 64 KiB, and the sixth sign-in in a minute: problem+json.
    let big = format!("{{\"email\":\"{}\"}}", "x".repeat(70 * 1024));
    let (code, head, problem) = curl(&["-X", "POST", "-H", "Content-Type: application/json", "-d", &big, &format!("{base}/v1/auth/token")]);
    assert_eq!(code, 413, "{head}");
    assert!(
        head.contains("content-type: application/problem+json") && problem.contains("\"code\":\"payload_too_large\""),
        "{head}{problem}"
    );
    let sign_in = json!({"email": "nobody@example.com", "password": "wrong-password"}).to_string();
    let codes: Vec<u16> = (0..6)
        .map(|_| curl(&["-X", "POST", "-H", "Content-Type: application/json", "-d", &sign_in, &format!("{base}/v1/auth/token")]).0)
        .collect();
    assert_eq!(codes[..4], [401, 401, 401, 401], "{codes:?}");
    let (code, head, problem) =
        curl(&["-X", "POST", "-H", "Content-Type: application/json", "-d", &sign_in, &format!("{base}/v1/auth/token")]);
    assert_eq!(code, 429, "{codes:?} then {head}");
    assert!(head.contains("content-type: application/problem+json") && problem.contains("\"code\":\"rate_limited\""), "{head}{problem}");

    // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
    let _ = Command::new("kill").args(["-TERM", &gateway.id().to_string()]).status();
    let _ = gateway.wait();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}
