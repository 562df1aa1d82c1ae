//! SIGTERM as an orchestrator sends it: `serve` exits within 10 s whatever
//! its clients or its database are doing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::Serve;
use crate::{admin_token, temp_dir};

#[tokio::test]
async fn sigterm_exits_within_ten_seconds_with_slow_clients_connected() {
    use std::io::Write;
    let dir = temp_dir("slow-clients");
    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    let mut slow = Vec::new();
    for base in [&serve.base, &serve.query] {
        let addr = base.trim_start_matches("http://").to_owned();
        for i in 0..5 {
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            if i % 2 == 0 {
                // Headers that never end.
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n").unwrap();
            } else {
                // A body that never arrives.
                stream
                    .write_all(b"POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
                    .unwrap();
            }
            slow.push(stream);
        }
    }
    // One idle keep-alive client too.
    let idle = reqwest::Client::new();
    idle.get(format!("{}/healthz", serve.query)).send().await.unwrap();
    let started = Instant::now();
    let status = serve.terminate();
    assert!(started.elapsed() < Duration::from_secs(10), "SIGTERM took {:?} with slow clients connected", started.elapsed());
    assert!(status.success(), "{status}");
    drop(slow);
}

/// Every process of the private cluster under `data_dir`: the postmaster
/// (first line of `postmaster.pid`) and its children.
fn cluster_processes(data_dir: &Path) -> Vec<String> {
    let pid_file = data_dir.join("postgres/pgdata/postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let postmaster = text.lines().next().unwrap().trim().to_owned();
    let children = Command::new("pgrep").args(["-P", &postmaster]).output().unwrap();
    let mut pids = vec![postmaster];
    pids.extend(String::from_utf8_lossy(&children.stdout).split_whitespace().map(str::to_owned));
    pids
}

#[tokio::test]
async fn sigterm_exits_within_ten_seconds_with_its_database_frozen() {
    let dir = temp_dir("frozen-db");
    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    let pids = cluster_processes(&dir);
    let signal = |sig: &str| {
        for pid in &pids {
            let _ = Command::new("kill").args([sig, pid]).status();
        }
    };
    // The database stops answering (a hung disk, a frozen VM): nothing it
    // is asked returns.
    signal("-STOP");
    let started = Instant::now();
    let status = serve.terminate();
    let took = started.elapsed();
    signal("-CONT");
    // Whatever happened, leave no server behind.
    let _ = Command::new("kill").args(["-QUIT", &pids[0]]).status();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?} with the database frozen");
    // It may report that the database did not stop cleanly; it must exit.
    assert!(status.code().is_some(), "{status}");
}

#[tokio::test]
async fn sigterm_with_its_database_gone_stops_every_part_on_its_own() {
    let dir = temp_dir("gone-db");
    let log_path = dir.join("serve.log");
    let mut serve = Serve::start_logging(&dir, std::fs::File::create(&log_path).unwrap());
    serve.wait_ready().await;
    // Work in flight for every consumer: orders the order process is still
    // reserving stock for when the database goes.
    let http = reqwest::Client::new();
    let token = admin_token();
    let post = |path: &str, body: serde_json::Value| http.post(format!("{}{path}", serve.base)).bearer_auth(&token).json(&body).send();
    let product = post(
        "/v1/products",
        json!({"sku": "GONE-1", "name": "Gone", "description": "", "category": "c",
        "price": {"amount_minor": 100, "currency": "USD"}, "initial_stock": 100000}),
    )
    .await
    .unwrap();
    assert_eq!(product.status(), 201);
    let product: serde_json::Value = product.json().await.unwrap();
    let customer: serde_json::Value =
        post("/v1/customers", json!({"email": "gone@example.com", "name": "Gone"})).await.unwrap().json().await.unwrap();
    let address = json!({"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"});
    // 200 orders, 50 at a time (within the requests a server takes at once).
    for _ in 0..4 {
        let orders = (0..50).map(|_| {
            post(
                "/v1/orders",
                json!({"customer_id": customer["id"], "lines": [{"product_id": product["id"], "quantity": 1}], "shipping_address": address}),
            )
        });
        for placed in futures::future::join_all(orders).await {
            assert_eq!(placed.unwrap().status(), 202);
        }
    }
    let pids = cluster_processes(&dir);
    // The database goes away (crashed, or stopped under it): every
    // connection fails at once, and every part keeps retrying.
    for pid in &pids {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let status = serve.terminate();
    let took = started.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?} with the database gone");
    assert!(status.code().is_some(), "{status}");
    assert!(!log.contains("still running at the shutdown deadline"), "a part ignored shutdown:\n{log}");
}
