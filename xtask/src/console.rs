//! `cargo xtask console`, also a step of every unfiltered `cargo xtask
//! test`: the operator console in a real browser. Debian's Chromium,
//! driven through WebDriver (chromedriver, the W3C protocol spoken here
//! over HTTP), against a `serve` started for it: sign in as an operator,
//! see a live event arrive in the tail, find a product, open its stream
//! and its state at a version, follow an order's causation tree, see a
//! parked event and retry it, rebuild a read model and watch it finish,
//! verify one, forget a customer. Each step saves a screenshot under
//! `target/console/` for a person to look at.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::bench::server::{admin_token, start_binary};
use crate::{TestDatabase, run, workspace_root};

const OPERATOR: &str = "ops@example.com";
const PASSWORD: &str = "correct horse battery staple";
/// How long a step may take to show what it should.
const STEP: Duration = Duration::from_secs(20);

/// `cargo xtask console`: with its own database unless `DATABASE_URL` names one.
pub fn standalone() -> Result<()> {
    let db = TestDatabase::start(false, "console")?;
    let mut build = crate::cargo();
    build.args(["build", "--quiet", "--package", "storekeeper"]);
    run(build).context("build storekeeper")?;
    check(&db.url)
}

pub fn check(admin_url: &str) -> Result<()> {
    crate::ensure_packages(
        "the console's browser test",
        &[("chromium", "--version", "chromium"), ("chromedriver", "--version", "chromium-driver")],
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let binary = target.join("debug/storekeeper");
    let shots = workspace_root().join("target/console");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).context("create target/console")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let url = crate::bench::create_database(admin_url, "console").await?;
        let http = reqwest::Client::new();
        let server = start_binary(&binary, "serve", &url, &http, None).await?;
        let status = Command::new(&binary)
            .args(["operators", "add", OPERATOR])
            .env("DATABASE_URL", &url)
            .env("STOREKEEPER_OPERATOR_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .status()
            .context("storekeeper operators add")?;
        if !status.success() {
            bail!("storekeeper operators add failed");
        }
        let seeded = seed(&http, &server.command, &server.query, &url).await?;
        let driver = Driver::start(&shots).await?;
        let result = scenario(&driver, &http, &server.command, &server.query, &seeded).await;
        if let Err(e) = &result {
            let _ = driver.screenshot("failure").await;
            eprintln!("xtask: the console failed at: {e:#} (target/console/failure.png)");
        }
        driver.quit().await;
        drop(server);
        result?;
        eprintln!("xtask: the console passed in Chromium; screenshots in {}", shots.display());
        Ok(())
    })
}

struct Seeded {
    customer: String,
    order: String,
}

/// A few products, a customer with a confirmed order, and one event the
/// products read model cannot apply.
async fn seed(http: &reqwest::Client, command: &str, query: &str, url: &str) -> Result<Seeded> {
    let token = admin_token();
    let post = |path: String, body: Value| {
        let request = http.post(format!("{command}{path}")).bearer_auth(&token).json(&body);
        async move {
            let response = request.send().await?;
            if !response.status().is_success() {
                bail!("{path}: {} {}", response.status(), response.text().await.unwrap_or_default());
            }
            Ok::<Value, anyhow::Error>(response.json().await?)
        }
    };
    let mut desk = String::new();
    for (sku, name, category) in
        [("DESK-1", "Walnut desk", "furniture"), ("LAMP-1", "Brass lamp", "lighting"), ("CHAIR-1", "Walnut chair", "furniture")]
    {
        let body = json!({"sku": sku, "name": name, "description": format!("A {name}"), "category": category,
                          "price": {"amount_minor": 12900, "currency": "EUR"}, "initial_stock": 10});
        let added = post("/v1/products".into(), body).await?;
        if desk.is_empty() {
            desk = added["id"].as_str().context("product id")?.to_owned();
        }
    }
    let customer = post(
        "/v1/customers".into(),
        json!({"email": "ada@example.com", "name": "Ada Lovelace", "shipping_address": {"line1": "1 Analytical Row", "city": "London", "postal_code": "N1 1AA", "country": "GB"}}),
    )
    .await?;
    let customer = customer["id"].as_str().context("customer id")?.to_owned();
    let order = post(
        "/v1/orders".into(),
        json!({"customer_id": customer, "lines": [{"product_id": desk, "quantity": 2}],
               "shipping_address": {"line1": "1 Analytical Row", "city": "London", "postal_code": "N1 1AA", "country": "GB"}}),
    )
    .await?;
    let order = order["id"].as_str().context("order id")?.to_owned();
    let deadline = Instant::now() + STEP;
    loop {
        let read = http.get(format!("{query}/v1/orders/{order}")).bearer_auth(&token).send().await?;
        if read.status().is_success() && read.json::<Value>().await?["status"] == "confirmed" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the seeded order was not confirmed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A poison event, appended the way another writer could: the products
    // read model parks it.
    let pool = sqlx::PgPool::connect(url).await.context("connect to the console's database")?;
    let log = eventlog::PgEventLog::new(pool.clone());
    let stream = format!("product-{}", Uuid::now_v7());
    let poison = eventlog::NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ProductRestocked".into(),
        schema_version: 1,
        occurred_at: chrono::Utc::now(),
        metadata: eventlog::Metadata::system("console-test"),
        data: json!({"quantity": "a great many"}),
    };
    eventlog::EventLog::append(
        &log,
        vec![eventlog::StreamWrite { stream_id: stream, expected: eventlog::ExpectedVersion::NoStream, events: vec![poison] }],
    )
    .await
    .context("append the poison event")?;
    pool.close().await;
    Ok(Seeded { customer, order })
}

async fn scenario(d: &Driver, http: &reqwest::Client, command: &str, query: &str, seeded: &Seeded) -> Result<()> {
    // Sign in: the form knows this serve's command API.
    d.go(&format!("{query}/console/")).await?;
    let email = d.wait_for("#email").await?;
    let command_url = d.wait_for("#command-url").await?;
    let shown = d.property(&command_url, "value").await?;
    if shown.trim_end_matches('/') != command {
        bail!("the sign-in form offers {shown} for the command API, not {command}");
    }
    d.type_into(&email, OPERATOR).await?;
    d.type_into(&d.find("#password").await?, PASSWORD).await?;
    d.click(&d.find("button[type=submit]").await?).await?;
    d.wait_until("the live tail shows the log", "document.querySelectorAll('#tail-rows tr[data-position]').length > 0").await?;
    d.wait_until("the tail is live", "document.getElementById('tail-state').textContent === 'live'").await?;
    d.screenshot("01-signed-in-log").await?;

    // A live event arrives in the tail.
    let body = json!({"sku": "SOFA-1", "name": "Velvet sofa", "description": "", "category": "furniture",
                      "price": {"amount_minor": 99900, "currency": "EUR"}, "initial_stock": 1});
    let added: Value = http.post(format!("{command}/v1/products")).bearer_auth(admin_token()).json(&body).send().await?.json().await?;
    let sofa = added["id"].as_str().context("the new product's id")?;
    d.wait_until(
        "the new product's event arrives in the tail",
        &format!("[...document.querySelectorAll('#tail-rows tr[data-type=ProductAdded] a')].some(a => a.textContent === 'product-{sofa}')"),
    )
    .await?;
    d.screenshot("02-live-event").await?;

    // Search with facets, then the product's stream and its state.
    d.click(&d.find("a[href='#/search']").await?).await?;
    let q = d.wait_for("#search-q").await?;
    d.type_into(&q, "walnut").await?;
    d.click(&d.find("form[role=search] button[type=submit]").await?).await?;
    d.wait_until("search finds both walnut products", "document.querySelectorAll('#search-results tbody tr').length === 2").await?;
    d.wait_until("a facet counts them", "[...document.querySelectorAll('.facets button')].some(b => b.textContent === 'furniture (2)')")
        .await?;
    d.screenshot("03-search").await?;
    d.click(&d.find_by_text("#search-results a", "Walnut desk").await?).await?;
    d.wait_until("the product's history", "document.querySelector('h1').textContent.startsWith('Stream product-')").await?;
    d.wait_until("its events", "document.querySelectorAll('#history tbody tr').length >= 2").await?;
    let version = d.wait_for("#at-version").await?;
    d.clear(&version).await?;
    d.type_into(&version, "0").await?;
    d.click(&d.find_by_text("button", "Show state").await?).await?;
    d.wait_until("the state at version 0", "(document.querySelector('#at-state pre') || {}).textContent?.includes('\"stock\": 10')")
        .await?;
    d.screenshot("04-stream-and-state").await?;

    // The order's correlation, as a causation tree across streams.
    d.go(&format!("{query}/console/#/stream/order-{}", seeded.order)).await?;
    d.wait_until("the order's history", &format!("document.querySelector('h1').textContent === 'Stream order-{}'", seeded.order)).await?;
    d.click(&d.wait_for("#history tbody tr a").await?).await?;
    d.wait_until(
        "the order's causation tree",
        "!!document.querySelector('#causation-tree li[data-type=OrderPlaced] li[data-type=StockReserved]') \
         && !!document.querySelector('#causation-tree li[data-type=OrderConfirmed]')",
    )
    .await?;
    d.screenshot("05-correlation").await?;

    // Projections: the parked event, retried (it fails again: it is poison).
    d.click(&d.find("a[href='#/projections']").await?).await?;
    d.wait_until("the products read model is degraded", "!!document.querySelector('#projection-rows tr[data-name=products] td.bad')")
        .await?;
    d.click(&d.find_by_text("button", "Parked of products").await?).await?;
    d.wait_until(
        "the parked event with its error",
        "[...document.querySelectorAll('#parked td')].some(td => td.textContent === 'ProductRestocked')",
    )
    .await?;
    d.click(&d.find("#retry-parked").await?).await?;
    d.wait_until("the retry's outcome", "document.getElementById('status').textContent.includes('1 still parked')").await?;
    d.screenshot("06-parked-and-retried").await?;

    // A rebuild, watched to its end, and a verification.
    d.click(&d.find_by_text("button", "Rebuild customers").await?).await?;
    d.wait_until_within(
        "the rebuild finishes",
        "document.getElementById('rebuild-state')?.textContent === 'Rebuilt and swapped in.'",
        Duration::from_secs(90),
    )
    .await?;
    d.screenshot("07-rebuilt").await?;
    d.click(&d.find_by_text("button", "Verify orders").await?).await?;
    d.wait_until("the verification", "document.getElementById('verify-result')?.textContent.startsWith('Matches the log')").await?;
    d.screenshot("08-verified").await?;

    // Forget a customer, confirmed in a dialog.
    d.go(&format!("{query}/console/#/customers/{}", seeded.customer)).await?;
    d.wait_until("the customer's page", "document.querySelector('h1').textContent === 'Customers'").await?;
    d.click(&d.wait_for("#forget").await?).await?;
    d.wait_until("the confirmation dialog", "document.getElementById('forget-dialog').open").await?;
    d.screenshot("09-forget-confirm").await?;
    d.click(&d.find("#forget-confirm").await?).await?;
    d.wait_until("the customer is forgotten", "document.getElementById('status').textContent === 'Forgotten.'").await?;
    d.wait_until("the page shows it at once", "document.getElementById('customer').textContent.includes('[redacted] · forgotten')").await?;
    let stream = http
        .get(format!("{query}/v1/streams/customer-{}/events", seeded.customer))
        .bearer_auth(admin_token())
        .send()
        .await?
        .json::<Value>()
        .await?;
    let last = stream["events"].as_array().and_then(|e| e.last()).context("the customer's history")?;
    if last["event_type"] != "CustomerForgotten" || last["metadata"]["actor"] != format!("operator:{}", operator_id(d).await?) {
        bail!("the forget was not recorded as the operator's: {last}");
    }
    d.screenshot("10-forgotten").await?;
    Ok(())
}

/// The signed-in operator's subject, from the token the console holds.
async fn operator_id(d: &Driver) -> Result<String> {
    let token = d.execute("return sessionStorage.getItem('storekeeper.token')").await?;
    let token = token.as_str().context("no token in the session")?;
    let payload = token.split('.').nth(1).context("a JWT")?;
    let claims: Value = serde_json::from_slice(&base64url(payload)?)?;
    let subject = claims["sub"].as_str().context("a subject")?;
    Ok(subject.trim_start_matches("operator:").to_owned())
}

fn base64url(text: &str) -> Result<Vec<u8>> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = alphabet.iter().position(|a| *a == byte).ok_or_else(|| anyhow!("not base64url"))? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

/// A W3C WebDriver session on chromedriver and headless Chromium.
struct Driver {
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
    _chromedriver: KillOnDrop,
    _profile: crate::bench::server::tempdir::Dir,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The key of an element reference in the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Driver {
    async fn start(shots: &Path) -> Result<Driver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let chromedriver = KillOnDrop(child);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + STEP;
        while http.get(format!("{base}/status")).send().await.is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not start");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile =
            crate::bench::server::tempdir::Dir(std::env::temp_dir().join(format!("storekeeper-chromium-{}", Uuid::now_v7().simple())));
        // As root in a sandbox, and with the network closed but for loopback:
        // no sandbox, no GPU, nothing fetched in the background.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", profile.0.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let created: Value = http.post(format!("{base}/session")).json(&capabilities).send().await?.json().await?;
        let session = created["value"]["sessionId"].as_str().with_context(|| format!("no WebDriver session: {created}"))?;
        Ok(Driver {
            http,
            session: format!("{base}/session/{session}"),
            shots: shots.to_owned(),
            _chromedriver: chromedriver,
            _profile: profile,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            bail!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    async fn go(&self, url: &str) -> Result<()> {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await.map(drop)
    }

    async fn find(&self, css: &str) -> Result<String> {
        let found = self.command(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await?;
        found[ELEMENT].as_str().map(str::to_owned).with_context(|| format!("no element {css}"))
    }

    /// The first element matching `css` whose text is `text`.
    async fn find_by_text(&self, css: &str, text: &str) -> Result<String> {
        self.wait_until(
            &format!("{css} reading {text:?}"),
            &format!("[...document.querySelectorAll({css:?})].some(e => e.textContent.trim() === {text:?})"),
        )
        .await?;
        let found = self
            .command(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"script": "return [...document.querySelectorAll(arguments[0])].find(e => e.textContent.trim() === arguments[1])", "args": [css, text]})),
            )
            .await?;
        found[ELEMENT].as_str().map(str::to_owned).with_context(|| format!("no {css} reading {text:?}"))
    }

    async fn wait_for(&self, css: &str) -> Result<String> {
        self.wait_until(&format!("an element {css}"), &format!("!!document.querySelector({css:?})")).await?;
        self.find(css).await
    }

    async fn click(&self, element: &str) -> Result<()> {
        self.command(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await.map(drop)
    }

    async fn clear(&self, element: &str) -> Result<()> {
        self.command(reqwest::Method::POST, &format!("/element/{element}/clear"), Some(json!({}))).await.map(drop)
    }

    async fn type_into(&self, element: &str, text: &str) -> Result<()> {
        self.command(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await.map(drop)
    }

    async fn property(&self, element: &str, name: &str) -> Result<String> {
        let value = self.command(reqwest::Method::GET, &format!("/element/{element}/property/{name}"), None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    async fn execute(&self, script: &str) -> Result<Value> {
        self.command(reqwest::Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    async fn wait_until(&self, what: &str, condition: &str) -> Result<()> {
        self.wait_until_within(what, condition, STEP).await
    }

    async fn wait_until_within(&self, what: &str, condition: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.execute(&format!("return Boolean({condition})")).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{what}: not seen within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> Result<()> {
        let png = self.command(reqwest::Method::GET, "/screenshot", None).await?;
        let bytes = base64(png.as_str().context("a screenshot")?)?;
        std::fs::write(self.shots.join(format!("{name}.png")), bytes).with_context(|| format!("write {name}.png"))
    }

    async fn quit(&self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

fn base64(text: &str) -> Result<Vec<u8>> {
    base64url(&text.replace('+', "-").replace('/', "_"))
}
