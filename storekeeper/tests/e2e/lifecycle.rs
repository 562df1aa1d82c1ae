//! The data's life cycle from the command line: views verified and
//! rebuilt, a customer forgotten everywhere, an old log brought forward.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::cli::Serve;
use crate::{admin_token, run, storekeeper, temp_dir, token};

#[tokio::test(flavor = "multi_thread")]
async fn verify_catches_a_tampered_read_model_and_a_rebuild_mends_it() {
    let dir = temp_dir("verify");
    let token = admin_token();
    let http = reqwest::Client::new();
    let mut serve = Serve::start(&dir);
    serve.wait_ready().await;
    // What dashboards and alert rules read is there from the first scrape
    // of a fresh server, before any command: at 0, or where it resumed.
    let wanted = [
        "storekeeper_command_errors_total{code=\"version_conflict\"} 0",
        "storekeeper_http_requests_total{",
        "storekeeper_http_shed_total{reason=\"in_flight\"} 0",
        "storekeeper_append_group_appends_count",
        "storekeeper_log_head_position",
        "storekeeper_projection_position{projection=\"products\"}",
        "storekeeper_projection_position{projection=\"audit\"}",
        "storekeeper_projection_parked_total{projection=\"orders\"} 0",
        "storekeeper_search_commit_seconds_count",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let scraped = http.get(format!("{}/metrics", serve.base)).send().await.unwrap().text().await.unwrap();
        let missing: Vec<&str> = wanted.iter().copied().filter(|w| !scraped.lines().any(|l| l.starts_with(w))).collect();
        if missing.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "missing from the scrape of a fresh server: {missing:?}\n{scraped}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
