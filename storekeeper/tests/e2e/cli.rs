//! The `storekeeper` binary as a newcomer runs it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{admin_token, free_port, run, storekeeper, temp_dir};

pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) query: String,
}

impl Serve {
    pub(crate) fn start(data_dir: &Path) -> Serve {
        Serve::start_logging(data_dir, Stdio::null())
    }

    /// With its log (standard output) going to `log`.
    pub(crate) fn start_logging(data_dir: &Path, log: impl Into<Stdio>) -> Serve {
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

    pub(crate) async fn wait_ready(&mut self) {
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
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
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
