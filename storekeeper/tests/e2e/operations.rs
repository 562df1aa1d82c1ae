//! What operators do to a running `storekeeper serve`: kill it mid-burst,
//! and restart it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use crate::deployment::Deployment;
use crate::{run, storekeeper};

const RESTOCKS: usize = 600;

/// One restock under its key; `Ok(true)` when it answered success, whether
/// applied now or replayed.
async fn restock(d: &Deployment, product: Uuid, key: &str) -> Result<bool, reqwest::Error> {
    let response = d
        .http
        .post(format!("{}/v1/products/{product}/restock", d.command))
        .bearer_auth(&d.admin)
        .header("idempotency-key", key)
        .json(&json!({"quantity": 1}))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    Ok(response.status().is_success())
}

/// 600 restocks under distinct keys, `serve` killed with SIGKILL in the
/// middle of the burst, restarted, and every request retried: each restock
/// is applied exactly once. The key's record commits with the events, so
/// no crash leaves an effect without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_apply_once_across_a_sigkill() {
    let url = eventlog::testing::fresh_database_url().await;
    let mut d = Deployment::new(url.clone(), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    let product = Uuid::now_v7();
    d.write(
        "/v1/products",
        json!({"id": product, "sku": format!("IDEM-{}", &product.simple().to_string()[20..]), "name": "Idempotent",
               "description": "restocked exactly once per key", "category": "test",
               "price": {"amount_minor": 100, "currency": "EUR"}, "initial_stock": 0}),
    )
    .await;
    let keys: Vec<String> = (0..RESTOCKS).map(|i| format!("restock-{product}-{i}")).collect();

    let done = Arc::new(AtomicUsize::new(0));
    let d = Arc::new(tokio::sync::Mutex::new(d));
    let burst = {
        let (d, keys, done) = (d.clone(), keys.clone(), done.clone());
        tokio::spawn(async move {
            let http = d.lock().await.http.clone();
            let (command, admin) = {
                let d = d.lock().await;
                (d.command.clone(), d.admin.clone())
            };
            futures::stream::iter(keys)
                .for_each_concurrent(16, |key| {
                    let (http, command, admin, done) = (http.clone(), command.clone(), admin.clone(), done.clone());
                    async move {
                        let sent = http
                            .post(format!("{command}/v1/products/{product}/restock"))
                            .bearer_auth(&admin)
                            .header("idempotency-key", &key)
                            .json(&json!({"quantity": 1}))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        if sent.is_ok_and(|r| r.status().is_success()) {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
                .await;
        })
    };
    while done.load(Ordering::SeqCst) < RESTOCKS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.lock().await.kill("serve");
    burst.await.unwrap();
    let answered_before = done.load(Ordering::SeqCst);
    assert!(answered_before < RESTOCKS, "the kill came after the burst");

    let mut d = Arc::try_unwrap(d).ok().unwrap().into_inner();
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    // Every request again, until each one answers (a key whose first run
    // died before appending is taken over after ten seconds).
    let mut pending: HashSet<String> = keys.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{} retries never succeeded", pending.len());
        let mut answered = Vec::new();
        for key in &pending {
            if restock(&d, product, key).await.unwrap_or(false) {
                answered.push(key.clone());
            }
        }
        for key in answered {
            pending.remove(&key);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let restocked: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'ProductRestocked'")
        .bind(format!("product-{product}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(restocked, RESTOCKS as i64, "{answered_before} answered before the kill");
    let (_, token) = d.write(&format!("/v1/products/{product}/restock"), json!({"quantity": 1})).await;
    let read = d.read(&format!("/v1/products/{product}"), &[&token]).await;
    assert_eq!(read["stock"].as_u64(), Some(RESTOCKS as u64 + 1), "{read}");
}

/// A log written on a cluster whose transaction ids ran far ahead, dumped
/// and restored into another cluster (the test cluster, far behind): old
/// reads and old tokens still answer, new writes are projected and read
/// with their tokens, and the order process runs on.
/// What a deployment holds before an operation moves its database: a
/// product, a customer, the product's token and the product as read then.
struct Before {
    product: Uuid,
    customer: Uuid,
    added: String,
    old: serde_json::Value,
}

async fn before_the_move(d: &Deployment) -> Before {
    let (product, customer) = (Uuid::now_v7(), Uuid::now_v7());
    let (_, added) = d
        .write(
            "/v1/products",
            json!({"id": product, "sku": format!("RST-{}", &product.simple().to_string()[20..]), "name": "Restored",
                   "description": "survives a move", "category": "test",
                   "price": {"amount_minor": 250, "currency": "EUR"}, "initial_stock": 5}),
        )
        .await;
    d.write("/v1/customers", json!({"id": customer, "email": format!("{}@example.com", customer.simple()), "name": "Old"})).await;
    let old = d.read(&format!("/v1/products/{product}"), &[&added]).await;
    Before { product, customer, added, old }
}

/// On the moved database, old tokens still answer and everything goes on:
/// new positions above the old ones, read models, the order process and
/// the search index, with nothing parked.
async fn carries_on(d: &Deployment, before: &Before) {
    let Before { product, customer, added, old } = before;
    assert_eq!(&d.read(&format!("/v1/products/{product}"), &[added]).await, old, "an old token still answers");
    let (_, restocked) = d.write(&format!("/v1/products/{product}/restock"), json!({"quantity": 3})).await;
    assert!(restocked.parse::<u64>().unwrap() > added.parse::<u64>().unwrap(), "new positions continue above the old ones");
    let read = d.read(&format!("/v1/products/{product}"), &[&restocked]).await;
    assert_eq!(read["stock"], 8, "{read}");
    let order = Uuid::now_v7();
    let (_, placed) = d
        .write(
            "/v1/orders",
            json!({"id": order, "customer_id": customer, "lines": [{"product_id": product, "quantity": 2}],
                   "shipping_address": {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}),
        )
        .await;
    assert_eq!(d.read(&format!("/v1/orders/{order}"), &[&placed]).await["status"], "placed");
    d.eventually(&format!("/v1/orders/{order}"), |o| o["status"] == "confirmed").await;
    d.eventually(&format!("/v1/products/{product}"), |p| p["stock"] == 6).await;
    let found = d.read("/v1/search/products?q=restored", &[&restocked]).await;
    assert!(found["hits"].as_array().unwrap().iter().any(|h| h["id"] == product.to_string()), "{found}");
    let projections = d.read("/v1/projections", &[]).await;
    assert!(projections["items"].as_array().unwrap().iter().all(|p| p["parked"] == 0), "{projections}");
}

/// A cluster of its own under `dir`, with a database `shop`.
async fn cluster_with_shop(dir: std::path::PathBuf) -> pgcluster::Cluster {
    let mut options = pgcluster::Options::new(dir);
    options.durable = false;
    options.first_xid = Some(1_000_000);
    let cluster = tokio::task::spawn_blocking(move || pgcluster::Cluster::start(&options)).await.unwrap().unwrap();
    let admin = sqlx::PgPool::connect(&cluster.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE shop").execute(&admin).await.unwrap();
    admin.close().await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restored_into_another_cluster_keeps_positions_progress_and_tokens() {
    let dir = crate::temp_dir("restore");
    let source = cluster_with_shop(dir.join("source")).await;
    let mut d = Deployment::new(source.url("shop"), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    let before = before_the_move(&d).await;
    d.kill("serve");

    let dump = dir.join("shop.dump");
    source.run_tool("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), &source.url("shop")]).unwrap();
    let target = eventlog::testing::fresh_database_url().await;
    source.run_tool("pg_restore", &["--no-owner", "--no-acl", "-d", &target, dump.to_str().unwrap()]).unwrap();
    drop(source);

    let mut d = Deployment::new(target.clone(), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    carries_on(&d, &before).await;
}

/// A streaming replica, started from a base backup of the primary while
/// `serve` writes to it, then promoted: `serve` on the promoted replica
/// goes on where the primary stopped. (pg_upgrade is not tested: only one
/// PostgreSQL major version is installable here, Debian 12's 15.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_streaming_replica_keeps_positions_progress_and_tokens() {
    let dir = crate::temp_dir("replica");
    let mut primary = cluster_with_shop(dir.join("primary")).await;
    let mut d = Deployment::new(primary.url("shop"), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;

    // The replica: a base backup with its standby settings (-R), owned by
    // the account the server runs as, and the primary's password file.
    let standby_dir = dir.join("standby");
    std::fs::create_dir_all(standby_dir.join("pgdata")).unwrap();
    std::fs::copy(dir.join("primary/pg-password"), standby_dir.join("pg-password")).unwrap();
    let pgdata = standby_dir.join("pgdata");
    primary
        .run_tool("pg_basebackup", &["-D", pgdata.to_str().unwrap(), "-R", "-X", "stream", "-c", "fast", "-d", &primary.url("postgres")])
        .unwrap();
    let owner = std::fs::metadata(dir.join("primary/pgdata"))
        .map(|m| (std::os::unix::fs::MetadataExt::uid(&m), std::os::unix::fs::MetadataExt::gid(&m)))
        .unwrap();
    for entry in walk(&standby_dir) {
        std::os::unix::fs::chown(&entry, Some(owner.0), Some(owner.1)).unwrap();
    }
    std::fs::set_permissions(&pgdata, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let options = pgcluster::Options { durable: false, ..pgcluster::Options::new(&standby_dir) };
    let mut standby = tokio::task::spawn_blocking(move || pgcluster::Cluster::start(&options)).await.unwrap().unwrap();

    // Written while the replica streams.
    let before = before_the_move(&d).await;
    d.kill("serve");
    let primary_pool = sqlx::PgPool::connect(&primary.url("shop")).await.unwrap();
    let flushed: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&primary_pool).await.unwrap();
    primary_pool.close().await;
    let replica = sqlx::PgPool::connect(&standby.url("shop")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let caught_up: bool =
            sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn").bind(&flushed).fetch_one(&replica).await.unwrap();
        if caught_up {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica did not catch up with the primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    primary.stop().unwrap();
    let promoted: bool = sqlx::query_scalar("SELECT pg_promote(true, 30)").fetch_one(&replica).await.unwrap();
    assert!(promoted);
    replica.close().await;

    let mut d = Deployment::new(standby.url("shop"), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    carries_on(&d, &before).await;
    d.kill("serve");
    standby.stop().unwrap();
}

/// Every file and directory under `dir`, `dir` included.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            found.extend(walk(&entry.unwrap().path()));
        }
    }
    found
}

/// `events verify` against the binary: a log written by `serve` is sealed
/// in the background and verifies; an altered event and a removed stream
/// are named by position, and the command exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_verify_passes_a_sealed_log_and_names_an_altered_event_or_a_removed_stream() {
    let url = eventlog::testing::fresh_database_url().await;
    let mut d = Deployment::new(url.clone(), None);
    d.start("serve", &["serve"]);
    d.wait_ready().await;
    let mut products = Vec::new();
    for i in 0..4 {
        let product = Uuid::now_v7();
        d.write(
            "/v1/products",
            json!({"id": product, "sku": format!("SEAL-{i}-{}", &product.simple().to_string()[24..]), "name": "Sealed",
                   "description": "hashed behind the frontier", "category": "test",
                   "price": {"amount_minor": 100, "currency": "EUR"}, "initial_stock": 1}),
        )
        .await;
        products.push(product);
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (head, sealed): (i64, Option<i64>) =
            sqlx::query_as("SELECT (SELECT max(global_position) FROM events), (SELECT max(up_to) FROM log_seals)")
                .fetch_one(&pool)
                .await
                .unwrap();
        if sealed == Some(head) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sealer did not reach the head of the log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verify = || run(storekeeper(&["events", "verify"]).env("DATABASE_URL", &url));
    // While writes go on and the sealer keeps sealing, it still verifies.
    let (command, admin, http) = (d.command.clone(), d.admin.clone(), d.http.clone());
    let writes = tokio::spawn(async move {
        for _ in 0..40 {
            let restocked = http
                .post(format!("{command}/v1/products/{}/restock", products[0]))
                .bearer_auth(&admin)
                .json(&json!({"quantity": 1}))
                .send()
                .await
                .unwrap();
            assert!(restocked.status().is_success());
        }
        products
    });
    for _ in 0..3 {
        let live = verify();
        assert!(live.status.success(), "verified during writes: {live:?}");
    }
    let products = writes.await.unwrap();
    drop(d);
    let clean = verify();
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success() && stdout.contains("the log verifies") && stdout.contains("latest seal"), "{clean:?}");

    let tamper = |statement: String| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("ALTER TABLE events DISABLE TRIGGER events_no_update").execute(&mut *tx).await.unwrap();
            sqlx::query(&statement).execute(&mut *tx).await.unwrap();
            sqlx::query("ALTER TABLE events ENABLE TRIGGER events_no_update").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let stream = format!("product-{}", products[1]);
    let altered: i64 =
        sqlx::query_scalar("SELECT global_position FROM events WHERE stream_id = $1").bind(&stream).fetch_one(&pool).await.unwrap();
    tamper(format!("UPDATE events SET data = jsonb_set(data, '{{initial_stock}}', '1000') WHERE global_position = {altered}")).await;
    let caught = verify();
    let stdout = String::from_utf8_lossy(&caught.stdout);
    assert_eq!(caught.status.code(), Some(1), "{caught:?}");
    assert!(stdout.contains(&format!("fails verification at position {altered}")) && stdout.contains("altered"), "{stdout}");
    tamper(format!("UPDATE events SET data = jsonb_set(data, '{{initial_stock}}', '1') WHERE global_position = {altered}")).await;
    assert!(verify().status.success(), "put back as it was");

    let gone = format!("product-{}", products[2]);
    tamper(format!("DELETE FROM events WHERE stream_id = '{gone}'")).await;
    let caught = verify();
    assert_eq!(caught.status.code(), Some(1), "{caught:?}");
    assert!(String::from_utf8_lossy(&caught.stdout).contains("was removed"), "{caught:?}");
    sqlx::query(
        "DELETE FROM event_hashes WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.global_position = event_hashes.global_position)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let caught = verify();
    assert_eq!(caught.status.code(), Some(1), "removed with its hashes too: {caught:?}");
    assert!(String::from_utf8_lossy(&caught.stdout).contains("seal"), "{caught:?}");
}
