//! The `storekeeper` binary as a newcomer runs it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{admin_token, free_port, run, storekeeper, temp_dir, token};

struct Serve {
    child: Child,
    base: String,
    query: String,
}

impl Serve {
    fn start(data_dir: &Path) -> Serve {
        Serve::start_logging(data_dir, Stdio::null())
    }

    /// With its log (standard output) going to `log`.
    fn start_logging(data_dir: &Path, log: impl Into<Stdio>) -> Serve {
        let (port, query_port) = (free_port(), free_port());
        let child = storekeeper(&["serve"])
            .env("STOREKEEPER_DATA_DIR", data_dir)
            .env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{port}"))
            .env("STOREKEEPER_QUERY_ADDR", format!("127.0.0.1:{query_port}"))
            .stdout(log)
            .spawn()
            .unwrap();
        Serve { child, base: format!("http://127.0.0.1:{port}"), query: format!("http://127.0.0.1:{query_port}") }
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let (Ok(c), Ok(q)) =
                (reqwest::get(format!("{}/readyz", self.base)).await, reqwest::get(format!("{}/readyz", self.query)).await)
                && c.status() == 200
                && q.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("storekeeper serve exited early: {status}");
            }
            assert!(started.elapsed() < Duration::from_secs(90), "storekeeper serve did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, as an orchestrator stops it.
    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "storekeeper did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn token_prints_a_jwt_alone_on_stdout() {
    let token = admin_token();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(!token.contains(char::is_whitespace));
    let out = run(&mut storekeeper(&["token", "--role", "customer", "--sub", "not-a-uuid"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("customer id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_starts_its_own_postgres_keeps_data_across_restarts_and_stops_on_sigterm() {
    let dir = temp_dir("serve");
    let token = admin_token();
    let http = reqwest::Client::new();

    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    let product = uuid::Uuid::now_v7();
    let created = http
        .post(format!("{}/v1/products", serve.base))
        .bearer_auth(&token)
        .json(&json!({"id": product, "sku": "KET-1", "name": "Kettle", "description": "Boils water", "category": "kitchen",
                      "price": {"amount_minor": 1999, "currency": "USD"}, "initial_stock": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let consistency = created.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let read = |path: String| http.get(format!("{}{path}", serve.query)).header("x-consistency-token", &consistency).send();
    let read_back: serde_json::Value = read(format!("/v1/products/{product}")).await.unwrap().json().await.unwrap();
    assert_eq!(read_back["stock"], 10, "the query API reads its own writes");
    let found: serde_json::Value = read("/v1/search/products?q=kettel".into()).await.unwrap().json().await.unwrap();
    assert_eq!(found["total"], 1, "and finds them in the search index");
    let url = std::fs::read_to_string(dir.join("postgres/url")).unwrap();
    // Without DATABASE_URL, beside `serve`: its private cluster is found.
    let listed = run(storekeeper(&["projections", "list"]).env("STOREKEEPER_DATA_DIR", &dir));
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed = String::from_utf8(listed.stdout).unwrap();
    for name in ["audit", "customers", "orders", "products", "sales"] {
        assert!(listed.lines().any(|l| l.starts_with(name) && l.contains("running")), "{name} missing from:\n{listed}");
    }
    let retried = run(storekeeper(&["projections", "retry", "products"]).env("DATABASE_URL", url.trim()));
    assert!(String::from_utf8_lossy(&retried.stdout).contains("0 parked event(s) of products applied"));
    let rebuild = run(storekeeper(&["projections", "rebuild", "products"]).env("DATABASE_URL", url.trim()));
    assert!(String::from_utf8_lossy(&rebuild.stdout).contains("rebuild of products requested"), "{rebuild:?}");
    let unknown = run(storekeeper(&["projections", "rebuild", "nope"]).env("DATABASE_URL", url.trim()));
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("no projection called nope"));
    // The running server builds it beside the live table and swaps it in.
    let pool = sqlx::PgPool::connect(url.trim()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, bool>("SELECT rebuild_requested FROM projection_checkpoints WHERE projection = 'products'")
        .fetch_one(&pool)
        .await
        .unwrap()
    {
        assert!(Instant::now() < deadline, "the requested rebuild did not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
    let read_back: serde_json::Value = read(format!("/v1/products/{product}")).await.unwrap().json().await.unwrap();
    assert_eq!(read_back["stock"], 10, "the rebuilt read model serves the product");
    assert!(serve.terminate().success(), "a clean exit on SIGTERM");
    assert!(!dir.join("postgres/pgdata/postmaster.pid").exists(), "the private PostgreSQL stopped with it");

    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    let restock = |version: &str| {
        http.post(format!("{}/v1/products/{product}/restock", serve.base))
            .bearer_auth(&token)
            .header("if-match", version)
            .json(&json!({"quantity": 5}))
            .send()
    };
    assert_eq!(restock("\"0\"").await.unwrap().status(), 200, "the product survived the restart");
    assert_eq!(restock("\"0\"").await.unwrap().status(), 409);
    assert!(serve.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_database_url_fails_with_a_clear_message() {
    let out = run(storekeeper(&["serve"])
        .env("DATABASE_URL", "postgres://nobody:secret@127.0.0.1:1/storekeeper")
        .env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{}", free_port())));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1/storekeeper"), "{stderr}");
    assert!(!stderr.contains("secret"), "the password is not printed: {stderr}");
    let out =
        run(storekeeper(&["serve"]).env("DATABASE_URL", "mysql://x").env("STOREKEEPER_COMMAND_ADDR", format!("127.0.0.1:{}", free_port())));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL is not a valid PostgreSQL URL"));
}

#[test]
fn a_taken_port_fails_with_a_clear_message() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(storekeeper(&["serve"])
        .env("STOREKEEPER_COMMAND_ADDR", &addr)
        .env("STOREKEEPER_QUERY_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("STOREKEEPER_DATA_DIR", temp_dir("port")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

#[test]
fn a_malformed_vault_key_stops_a_role_before_it_starts() {
    let out = run(storekeeper(&["command-api"]).env("STOREKEEPER_VAULT_KEY", "not-hex").env("DATABASE_URL", "postgres://127.0.0.1:1/none"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STOREKEEPER_VAULT_KEY must be 64 hex digits"), "{out:?}");
}

#[test]
fn an_otlp_protocol_other_than_http_protobuf_stops_a_role_before_it_starts() {
    for variable in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] {
        let out = run(storekeeper(&["projections"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
            .env(variable, "grpc")
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none"));
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"), "{out:?}");
    }
}

#[tokio::test]
async fn with_kurrentdb_url_set_the_events_commands_refuse_and_a_bad_url_is_not_echoed() {
    let url = eventlog::testing::fresh_database_url().await;
    let out =
        run(storekeeper(&["events", "verify"]).env("DATABASE_URL", &url).env("KURRENTDB_URL", "kurrentdb://127.0.0.1:2113?tls=false"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("works on a log in PostgreSQL"), "{out:?}");
    // An empty value is unset, as compose passes it.
    let out = run(storekeeper(&["events", "verify"]).env("DATABASE_URL", &url).env("KURRENTDB_URL", " "));
    assert!(out.status.success(), "{out:?}");
    let out = run(storekeeper(&["projections", "verify"])
        .env("DATABASE_URL", &url)
        .env("KURRENTDB_URL", "kurrentdb//admin:s3cret-pw@host:99999"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a KurrentDB connection string") && !stderr.contains("s3cret-pw"), "{stderr}");
}

#[test]
fn roles_other_than_serve_need_explicit_secrets() {
    let out = run(storekeeper(&["command-api"]).env("DATABASE_URL", "postgres://x@127.0.0.1:1/x"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STOREKEEPER_JWT_SECRET must be set"));
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_export_and_import_into_an_empty_database_keep_every_event() {
    let (source, target) = (eventlog::testing::fresh_database_url().await, eventlog::testing::fresh_database_url().await);
    let seeded = run(storekeeper(&["seed", "--products", "30", "--customers", "5", "--orders", "10"]).env("DATABASE_URL", &source));
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    assert!(String::from_utf8_lossy(&seeded.stdout).contains("seeded 30 products, 5 customers and 10 orders"));

    let dir = temp_dir("export");
    let (exported, reexported) = (dir.join("log.jsonl"), dir.join("again.jsonl"));
    let export =
        |url: &str, file: &Path| run(storekeeper(&["events", "export", "--output", file.to_str().unwrap()]).env("DATABASE_URL", url));
    let import =
        |url: &str, file: &Path| run(storekeeper(&["events", "import", "--input", file.to_str().unwrap()]).env("DATABASE_URL", url));
    assert!(export(&source, &exported).status.success());
    let imported = import(&target, &exported);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let twice = import(&target, &exported);
    assert!(!twice.status.success() && String::from_utf8_lossy(&twice.stderr).contains("not empty"), "a second import is refused");
    assert!(export(&target, &reexported).status.success());

    // Exported again, the restored log gives the same bytes.
    let (before, after) = (std::fs::read(&exported).unwrap(), std::fs::read(&reexported).unwrap());
    let lines = String::from_utf8_lossy(&before).lines().count();
    assert!(lines > 30 + 5 + 10, "{lines} events");
    assert!(before == after, "the round trip changed the bytes");
    let text = String::from_utf8_lossy(&before).into_owned();
    let (all, end) = text.trim_end().rsplit_once('\n').unwrap();
    // The vault's lines (its secret, each customer's key) come before the end line.
    let vault = |l: &&str| l.starts_with("{\"vault\":") || l.starts_with("{\"customer_key\":");
    assert_eq!(all.lines().filter(vault).count(), 1 + 5, "the secret and five customers' keys");
    let events = all.lines().filter(|l| !vault(l)).collect::<Vec<_>>().join("\n");
    let events = events.as_str();
    let counted = events.lines().count();
    assert!(events.lines().all(|l| l.contains("\"stream_hash\":\"")), "every event carries its hash");
    assert!(end.starts_with(&format!("{{\"end_of_export\":{{\"events\":{counted}")), "{end}");
    assert!(
        String::from_utf8_lossy(&imported.stderr).contains(&format!("imported {counted} events, each checked against its hash")),
        "{imported:?}"
    );
    // The keys came along: the restored log reads as the first one.
    let (restored, _) = eventlog::vault::postgres_log(&sqlx::PgPool::connect(&target).await.unwrap());
    let customer = events.lines().find(|l| l.contains("\"CustomerRegistered\"")).unwrap();
    let stream = customer.split("\"stream_id\":\"").nth(1).unwrap().split('"').next().unwrap();
    let read = restored.read_stream(stream, 0, 1).await.unwrap();
    assert!(read[0].data["email"].as_str().is_some_and(|e| e.contains('@')), "{:?}", read[0].data);

    // Cut short, or a whole stream taken out: refused.
    let refused = |file: &Path, contents: String| {
        std::fs::write(file, contents).unwrap();
        let empty = std::thread::spawn(|| tokio::runtime::Runtime::new().unwrap().block_on(eventlog::testing::fresh_database_url()))
            .join()
            .unwrap();
        let out = import(&empty, file);
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cut = refused(&dir.join("cut.jsonl"), format!("{events}\n"));
    assert!(cut.contains("no end line"), "{cut}");
    let single = events.lines().map(|l| l.split("\"stream_id\":\"").nth(1).unwrap().split('"').next().unwrap()).collect::<Vec<_>>();
    let lonely = single.iter().find(|s| single.iter().filter(|t| t == s).count() == 1).expect("a stream of one event");
    let without: Vec<&str> = text.lines().filter(|l| !l.contains(&format!("\"stream_id\":\"{lonely}\""))).collect();
    let taken_out = refused(&dir.join("taken-out.jsonl"), without.join("\n") + "\n");
    assert!(taken_out.contains("do not add up to its end line"), "{taken_out}");

    // One value changed in the file: refused, and nothing imported.
    let altered = dir.join("altered.jsonl");
    let text = String::from_utf8(before).unwrap();
    let victim = text.lines().position(|l| l.contains("\"initial_stock\":")).expect("a product in the export");
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| if i == victim { l.replacen("\"initial_stock\":", "\"initial_stock\":9", 1) } else { l.to_owned() })
        .collect();
    std::fs::write(&altered, tampered.join("\n") + "\n").unwrap();
    let empty = eventlog::testing::fresh_database_url().await;
    let refused = import(&empty, &altered);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(stderr.contains(&format!("line {}:", victim + 1)) && stderr.contains("does not match its stream_hash"), "{stderr}");
    let pool = sqlx::PgPool::connect(&empty).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0, "nothing of a refused file stays");
    let sequence: (i64, bool) = sqlx::query_as("SELECT last_value, is_called FROM events_position_seq").fetch_one(&pool).await.unwrap();
    assert_eq!(sequence, (1, false), "not even the position sequence moves");
    pool.close().await;

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"not\": \"an event\"}\n").unwrap();
    let refused = import(&eventlog::testing::fresh_database_url().await, &bad);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("line 1: not an event envelope"), "{refused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

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
    let orders = (0..200).map(|_| {
        post(
            "/v1/orders",
            json!({"customer_id": customer["id"], "lines": [{"product_id": product["id"], "quantity": 1}], "shipping_address": address}),
        )
    });
    for placed in futures::future::join_all(orders).await {
        assert_eq!(placed.unwrap().status(), 202);
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

#[tokio::test(flavor = "multi_thread")]
async fn verify_catches_a_tampered_read_model_and_a_rebuild_mends_it() {
    let dir = temp_dir("verify");
    let token = admin_token();
    let http = reqwest::Client::new();
    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    let mut products = Vec::new();
    let mut consistency = String::new();
    for i in 0..5 {
        let product = uuid::Uuid::now_v7();
        let created = http
            .post(format!("{}/v1/products", serve.base))
            .bearer_auth(&token)
            .json(&json!({"id": product, "sku": format!("VER-{i}"), "name": "Kettle", "description": "Boils water", "category": "kitchen",
                          "price": {"amount_minor": 1999, "currency": "USD"}, "initial_stock": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        consistency = created.headers()["x-consistency-token"].to_str().unwrap().to_owned();
        products.push(product);
    }
    let read =
        http.get(format!("{}/v1/products/{}", serve.query, products[4])).header("x-consistency-token", &consistency).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let url = std::fs::read_to_string(dir.join("postgres/url")).unwrap();
    let verify = |name: Option<&str>| {
        let mut args = vec!["projections", "verify"];
        args.extend(name);
        run(storekeeper(&args).env("DATABASE_URL", url.trim()))
    };

    let clean = verify(None);
    let stdout = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{clean:?}");
    for name in ["audit", "customers", "orders", "products", "sales"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("{name}: matches the log at position"))), "{name} missing from:\n{stdout}");
    }
    assert!(stdout.contains("events/s"), "{stdout}");

    // Someone edits one product's stock and deletes an audit entry behind
    // the projections' back.
    let pool = sqlx::PgPool::connect(url.trim()).await.unwrap();
    sqlx::query("UPDATE rm_products SET stock = 999 WHERE id = $1").bind(products[2]).execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM rm_audit WHERE global_position = (SELECT max(global_position) FROM rm_audit)").execute(&pool).await.unwrap();
    let tampered = verify(None);
    let stdout = String::from_utf8_lossy(&tampered.stdout);
    assert_eq!(tampered.status.code(), Some(1), "{tampered:?}");
    assert!(stdout.contains("products: 2 row(s) differ from the log"), "{stdout}");
    let id = products[2].to_string();
    assert!(stdout.lines().any(|l| l.contains("only in the live view") && l.contains(&id) && l.contains("999")), "{stdout}");
    assert!(stdout.lines().any(|l| l.contains("only in a fold of the log") && l.contains(&id) && l.contains("\"stock\":10")), "{stdout}");
    assert!(stdout.contains("audit: 1 row(s) differ from the log"), "{stdout}");
    assert!(stdout.contains("customers: matches the log"), "{stdout}");
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("products, audit differ from the log"), "{tampered:?}");
    let unknown = verify(Some("nope"));
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("no projection is called nope"));

    // The same over HTTP, for admins only.
    let answer = |path: &str, bearer: Option<&str>| {
        let request = http.get(format!("{}{path}", serve.query));
        match bearer {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
        .send()
    };
    let found = answer("/v1/projections/products/verify", Some(&token)).await.unwrap();
    assert_eq!(found.status(), 200);
    let found: serde_json::Value = found.json().await.unwrap();
    assert_eq!(found["matches"], false, "{found}");
    assert_eq!(found["differing_rows"], 2, "{found}");
    assert!(found["events_per_second"].as_f64().unwrap() > 0.0, "{found}");
    let metrics = http.get(format!("{}/metrics", serve.query)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "storekeeper_projection_verify_differing_rows{projection=\"products\"} 2"), "{metrics}");
    assert_eq!(answer("/v1/projections/products/verify", None).await.unwrap().status(), 401);
    let customer = crate::token("customer", &uuid::Uuid::now_v7().to_string());
    assert_eq!(answer("/v1/projections/products/verify", Some(&customer)).await.unwrap().status(), 403);
    let missing = answer("/v1/projections/nope/verify", Some(&token)).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/problem+json");

    // A rebuild from the log mends both; `--wait` stays until it has.
    for name in ["products", "audit"] {
        let rebuilt = run(storekeeper(&["projections", "rebuild", name, "--wait"]).env("DATABASE_URL", url.trim()));
        let stdout = String::from_utf8_lossy(&rebuilt.stdout);
        assert!(rebuilt.status.success() && stdout.contains(&format!("{name} rebuilt from the log and swapped in")), "{rebuilt:?}");
    }
    let listed = run(storekeeper(&["projections", "list"]).env("DATABASE_URL", url.trim()));
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().next().is_some_and(|h| h.contains("EVENTS/S") && h.contains("LEFT (s)")), "{listed}");
    let requested: i64 =
        sqlx::query_scalar("SELECT count(*) FROM projection_checkpoints WHERE rebuild_requested").fetch_one(&pool).await.unwrap();
    assert_eq!(requested, 0);
    let listed: serde_json::Value = answer("/v1/projections", Some(&token)).await.unwrap().json().await.unwrap();
    for item in listed["items"].as_array().unwrap() {
        assert!(item["events_per_second"].is_number() && item.get("eta_seconds").is_some(), "{item}");
    }
    pool.close().await;
    let mended = verify(None);
    assert!(mended.status.success(), "{}", String::from_utf8_lossy(&mended.stdout));
    assert!(serve.terminate().success());
}

/// Everything a scan for one customer's personal data must not find.
const SECRETS: [&str; 4] = ["zelda.quartermain@forget.example", "Zelda Quartermain", "12 Hyrule Lane", "77 Shredding Street"];

/// Which of `SECRETS` appear in `bytes`, in any letter case.
fn secrets_in(bytes: &[u8]) -> Vec<&'static str> {
    let text = String::from_utf8_lossy(bytes).to_lowercase();
    SECRETS.iter().filter(|s| text.contains(&s.to_lowercase())).copied().collect()
}

/// Every file under `dir`, concatenated.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_customer_leaves_no_personal_data_in_the_database_the_index_or_a_fresh_export() {
    let dir = temp_dir("forget");
    let admin = admin_token();
    let http = reqwest::Client::new();
    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    let token_for = |id: uuid::Uuid| token("customer", &id.to_string());
    let post = |path: String, token: &str, body: serde_json::Value| {
        http.post(format!("{}{path}", serve.base)).bearer_auth(token).json(&body).send()
    };
    let address = |line1: &str| json!({"line1": line1, "city": "Kakariko", "postal_code": "40401", "country": "DE"});

    let product = uuid::Uuid::now_v7();
    let added = post(
        "/v1/products".into(),
        &admin,
        json!({"id": product, "sku": "FGT-1", "name": "Lantern", "description": "Lights",
        "category": "camping", "price": {"amount_minor": 2500, "currency": "EUR"}, "initial_stock": 10}),
    );
    assert_eq!(added.await.unwrap().status(), 201);
    let customer = uuid::Uuid::now_v7();
    let own = token_for(customer);
    let registered = post(
        "/v1/customers".into(),
        &own,
        json!({"email": "Zelda.Quartermain@forget.example", "name": "Zelda Quartermain",
        "shipping_address": address("12 Hyrule Lane")}),
    );
    assert_eq!(registered.await.unwrap().status(), 201);
    let order = uuid::Uuid::now_v7();
    let placed = http
        .post(format!("{}/v1/orders", serve.base))
        .bearer_auth(&own)
        .header("idempotency-key", "forget-order-1")
        .json(&json!({"id": order, "customer_id": customer, "lines": [{"product_id": product, "quantity": 2}],
                      "shipping_address": address("77 Shredding Street")}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let token = placed.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let read = |path: String, token: String| {
        let request = http.get(format!("{}{path}", serve.query)).bearer_auth(&admin).header("x-consistency-token", token);
        async move {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 200, "{path}");
            answer.json::<serde_json::Value>().await.unwrap()
        }
    };
    // Before: readers see the data, while the log holds none of it.
    assert_eq!(read(format!("/v1/customers/{customer}"), token.clone()).await["name"], "Zelda Quartermain");
    assert_eq!(read(format!("/v1/orders/{order}"), token.clone()).await["shipping_address"]["line1"], "77 Shredding Street");
    let url = std::fs::read_to_string(dir.join("postgres/url")).unwrap();
    let url = url.trim();
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let events: Vec<String> = sqlx::query_scalar("SELECT data::text FROM events").fetch_all(&pool).await.unwrap();
    assert_eq!(secrets_in(events.join("\n").as_bytes()), Vec::<&str>::new(), "the log itself holds only ciphertext");

    // Only the customer itself, or an admin, may forget it.
    let stranger = token_for(uuid::Uuid::now_v7());
    assert_eq!(post(format!("/v1/customers/{customer}/forget"), &stranger, json!({})).await.unwrap().status(), 403);
    let forgotten = post(format!("/v1/customers/{customer}/forget"), &own, json!({})).await.unwrap();
    assert_eq!(forgotten.status(), 200);
    let token = forgotten.headers()["x-consistency-token"].to_str().unwrap().to_owned();
    let again = post(format!("/v1/customers/{customer}/forget"), &admin, json!({})).await.unwrap();
    assert_eq!(again.status(), 200, "forgetting twice is a no-op");

    // Every reader shows the fields redacted; the order keeps its lines and amounts.
    let shown = read(format!("/v1/customers/{customer}"), token.clone()).await;
    assert_eq!(
        (shown["email"].as_str(), shown["name"].as_str(), shown["status"].as_str()),
        (Some("[redacted]"), Some("[redacted]"), Some("forgotten")),
        "{shown}"
    );
    let shown = read(format!("/v1/orders/{order}"), token.clone()).await;
    assert_eq!(shown["shipping_address"]["line1"], "[redacted]", "{shown}");
    assert_eq!(shown["lines"][0]["quantity"], 2, "{shown}");
    assert_eq!(shown["total"]["amount_minor"], 5000, "{shown}");
    let then = read(format!("/v1/customers/{customer}/at?version=0"), token.clone()).await;
    assert_eq!(then["name"], "[redacted]", "time travel: {then}");
    for stream in [format!("customer-{customer}"), format!("order-{order}")] {
        let history = read(format!("/v1/streams/{stream}/events"), token.clone()).await;
        assert_eq!(secrets_in(history.to_string().as_bytes()), Vec::<&str>::new(), "history of {stream}: {history}");
        assert!(history.to_string().contains("[redacted]"), "{history}");
    }
    // The same after rebuilding every view from the log, and they still verify.
    for name in ["customers", "orders", "audit"] {
        let rebuilt = run(storekeeper(&["projections", "rebuild", name, "--wait"]).env("DATABASE_URL", url));
        assert!(rebuilt.status.success(), "{rebuilt:?}");
    }
    let verified = run(storekeeper(&["projections", "verify"]).env("DATABASE_URL", url));
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    assert_eq!(read(format!("/v1/customers/{customer}"), token.clone()).await["email"], "[redacted]");

    // No copy left: the whole database, the index directory, a fresh export.
    let pg_dump = pgcluster::find_bindir().unwrap().join("pg_dump");
    let dump = run(Command::new(pg_dump).arg(url));
    assert!(dump.status.success() && dump.stdout.len() > 10_000, "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(String::from_utf8_lossy(&dump.stdout).contains("CustomerForgotten"));
    assert_eq!(secrets_in(&dump.stdout), Vec::<&str>::new(), "pg_dump of the whole database");
    assert_eq!(secrets_in(&all_bytes(&dir.join("index"))), Vec::<&str>::new(), "the index directory");
    let export = run(storekeeper(&["events", "export"]).env("DATABASE_URL", url));
    assert!(export.status.success() && export.stdout.len() > 1000, "{export:?}");
    assert_eq!(secrets_in(&export.stdout), Vec::<&str>::new(), "a fresh export");
    let tombstone = format!("{{\"customer_key\":{{\"customer_id\":\"{customer}\",\"key\":null}}}}");
    assert!(
        String::from_utf8_lossy(&export.stdout).lines().any(|l| l == tombstone),
        "the export carries no key for it, only its tombstone"
    );
    let checked = run(storekeeper(&["events", "verify"]).env("DATABASE_URL", url));
    assert!(checked.status.success(), "the hash chain still holds: {checked:?}");

    // The email is free again, and the forgotten customer takes no more changes.
    let other = uuid::Uuid::now_v7();
    let reused = post("/v1/customers".into(), &token_for(other), json!({"email": "zelda.quartermain@FORGET.example", "name": "Z."}));
    assert_eq!(reused.await.unwrap().status(), 201);
    let change = post(format!("/v1/customers/{customer}/email"), &own, json!({"email": "new@forget.example"})).await.unwrap();
    assert_eq!(change.status(), 409);
    pool.close().await;
    assert!(serve.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_from_before_sealing_moves_forward_by_export_and_an_import_that_reencrypts() {
    use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, StreamWrite};
    let (source, target) = (eventlog::testing::fresh_database_url().await, eventlog::testing::fresh_database_url().await);
    let old = sqlx::PgPool::connect(&source).await.unwrap();
    storekeeper::database::migrate(&old).await.unwrap();
    // What an older build wrote: personal data in the clear (v1), the
    // email claimed under its plaintext.
    let (customer, order, product) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let address = json!({"line1": "3 Plaintext Row", "city": "Oldtown", "postal_code": "10115", "country": "DE"});
    let event = |event_type: &str, data: serde_json::Value| NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: Metadata::system("legacy"),
        data,
    };
    let email = domain::Email::parse("Legacy.Person@old.example").unwrap();
    let stream = format!("customer-{customer}");
    let legacy_claim = domain::claim::legacy_email_claim_stream(&email);
    let raw = eventlog::PgEventLog::new(old.clone());
    let write = |stream_id: &str, events| StreamWrite { stream_id: stream_id.into(), expected: ExpectedVersion::NoStream, events };
    raw.append(vec![
        write(
            &stream,
            vec![event(
                "CustomerRegistered",
                json!({"customer_id": customer, "email": email.as_str(), "name": "Legacy Person", "shipping_address": address}),
            )],
        ),
        write(&legacy_claim, vec![event("UniqueValueClaimed", json!({"kind": "email", "value": email.key(), "owner_stream_id": stream}))]),
    ])
    .await
    .unwrap();
    let money = json!({"amount_minor": 700, "currency": "EUR"});
    let placed = json!({"order_id": order, "customer_id": customer, "total": money, "shipping_address": address,
                        "lines": [{"product_id": product, "quantity": 1, "unit_price": money, "line_total": money}]});
    raw.append(vec![write(&format!("order-{order}"), vec![event("OrderPlaced", placed)])]).await.unwrap();
    // Serving that log before moving it (migration 10009 found its plain
    // claims): the address is still taken, in any letter case.
    sqlx::query("UPDATE vault_settings SET value = true WHERE name = 'legacy_email_claims'").execute(&old).await.unwrap();
    let (log, vault) = eventlog::vault::postgres_log(&old);
    let twice = domain::customer::CustomerCommand::Register {
        customer_id: uuid::Uuid::now_v7(),
        email: domain::Email::parse("LEGACY.person@old.example").unwrap(),
        name: "Someone".into(),
        shipping_address: None,
    };
    let taken = commands::CommandService::new(log, vault).customer(uuid::Uuid::now_v7(), twice, None, &Metadata::system("test")).await;
    assert!(matches!(taken, Err(commands::ServiceError::Domain(domain::DomainError::EmailTaken))), "{taken:?}");
    old.close().await;

    let dir = temp_dir("reencrypt");
    let file = dir.join("old.jsonl");
    let exported = run(storekeeper(&["events", "export", "--output", file.to_str().unwrap()]).env("DATABASE_URL", &source));
    assert!(exported.status.success(), "{exported:?}");
    assert!(String::from_utf8_lossy(&std::fs::read(&file).unwrap()).contains("Legacy Person"), "the old export holds plaintext");
    let imported = run(storekeeper(&["events", "import", "--reencrypt", "--input", file.to_str().unwrap()]).env("DATABASE_URL", &target));
    let stderr = String::from_utf8_lossy(&imported.stderr);
    assert!(imported.status.success(), "{stderr}");
    assert!(stderr.contains("imported 3 events") && stderr.contains("sealed the personal data of 3 events"), "{stderr}");

    // The new log holds no plaintext, verifies, and reads as before.
    let pool = sqlx::PgPool::connect(&target).await.unwrap();
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT stream_id || ' ' || data::text FROM events ORDER BY global_position").fetch_all(&pool).await.unwrap();
    let stored = stored.join("\n");
    for plain in ["legacy.person@old.example", "Legacy Person", "3 Plaintext Row"] {
        assert!(!stored.to_lowercase().contains(&plain.to_lowercase()), "{plain} is still in the log:\n{stored}");
    }
    let checked = run(storekeeper(&["events", "verify"]).env("DATABASE_URL", &target));
    assert!(checked.status.success(), "{checked:?}");
    let (log, vault) = eventlog::vault::postgres_log(&pool);
    let read = log.read_stream(&stream, 0, 10).await.unwrap();
    assert_eq!((read[0].schema_version, read[0].data["name"].as_str()), (2, Some("Legacy Person")));
    let service = commands::CommandService::new(log.clone(), vault);
    let metadata = Metadata::system("test");
    let again = domain::customer::CustomerCommand::Register {
        customer_id: uuid::Uuid::now_v7(),
        email: domain::Email::parse("legacy.PERSON@old.example").unwrap(),
        name: "Someone else".into(),
        shipping_address: None,
    };
    let taken = service.customer(uuid::Uuid::now_v7(), again.clone(), None, &metadata).await;
    assert!(
        matches!(taken, Err(commands::ServiceError::Domain(domain::DomainError::EmailTaken))),
        "the claim moved with the log: {taken:?}"
    );

    // And it can now be forgotten: its order included.
    service.customer(customer, domain::customer::CustomerCommand::Forget, None, &metadata).await.unwrap();
    let order_read = log.read_stream(&format!("order-{order}"), 0, 10).await.unwrap();
    assert_eq!(order_read[0].data["shipping_address"]["line1"], "[redacted]");
    assert_eq!(order_read[0].data["total"]["amount_minor"], 700);
    assert_eq!(log.read_stream(&stream, 0, 10).await.unwrap()[0].data["email"], "[redacted]");
    let id = match &again {
        domain::customer::CustomerCommand::Register { customer_id, .. } => *customer_id,
        _ => unreachable!(),
    };
    assert!(service.customer(id, again, None, &metadata).await.is_ok(), "its email is free");
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
