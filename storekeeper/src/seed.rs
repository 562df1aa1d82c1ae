//! `storekeeper seed`: demo and benchmark data, written through the same
//! command service as the API (every rule checked, uniqueness claimed), a
//! few commands at a time. Orders are placed; a running `serve` or
//! `projections` process reserves their stock as usual.

use anyhow::{Context, Result};
use commands::CommandService;
use domain::customer::CustomerCommand;
use domain::product::ProductCommand;
use domain::{Address, Currency, Email, Money, Sku};
use eventlog::Metadata;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

const CONCURRENCY: usize = 8;
const ADJECTIVES: [&str; 12] =
    ["Red", "Blue", "Steel", "Copper", "Wooden", "Compact", "Deluxe", "Classic", "Electric", "Folding", "Glass", "Cotton"];
const NOUNS: [&str; 12] = ["Kettle", "Mug", "Lamp", "Chair", "Shovel", "Hose", "Blanket", "Teapot", "Backpack", "Notebook", "Clock", "Pan"];
const CATEGORIES: [&str; 6] = ["kitchen", "garden", "home", "office", "outdoor", "textiles"];

/// A small deterministic generator, so a seed of the same size looks the same.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, {eta})").expect("a valid template").progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub struct Sizes {
    pub products: usize,
    pub customers: usize,
    pub orders: usize,
}

/// Writes the products, customers and orders; answers how many of each.
pub async fn seed(service: &CommandService, sizes: Sizes) -> Result<(usize, usize, usize)> {
    let run = Uuid::now_v7().simple().to_string();
    let run = &run[run.len() - 8..];
    let metadata = Metadata::system("seed");
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);

    let products: Vec<(Uuid, ProductCommand)> = (0..sizes.products)
        .map(|i| {
            let id = Uuid::now_v7();
            let (adjective, noun) = (ADJECTIVES[dice.below(12)], NOUNS[dice.below(12)]);
            let command = ProductCommand::Add {
                product_id: id,
                sku: Sku::parse(&format!("SEED-{run}-{i}")).expect("a valid SKU"),
                name: format!("{adjective} {noun}"),
                description: format!("A {} {} for every day", adjective.to_lowercase(), noun.to_lowercase()),
                category: CATEGORIES[dice.below(CATEGORIES.len())].to_owned(),
                price: Money::new(199 + dice.below(20_000) as i64, Currency::usd()),
                initial_stock: dice.below(500) as u32,
            };
            (id, command)
        })
        .collect();
    let product_ids: Vec<Uuid> = products.iter().map(|(id, _)| *id).collect();
    let progress = bar(products.len(), "products");
    let mut writes = futures::stream::iter(products)
        .map(|(id, command)| {
            let metadata = &metadata;
            async move { service.product(id, command, None, metadata).await }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = writes.next().await {
        result.context("add a product")?;
        progress.inc(1);
    }
    progress.finish();

    let address =
        Address { line1: "1 Main St".into(), line2: None, city: "Springfield".into(), postal_code: "12345".into(), country: "US".into() };
    let customer_ids: Vec<Uuid> = (0..sizes.customers).map(|_| Uuid::now_v7()).collect();
    let progress = bar(customer_ids.len(), "customers");
    let mut writes = futures::stream::iter(customer_ids.iter().enumerate())
        .map(|(i, id)| {
            let (metadata, address) = (&metadata, address.clone());
            async move {
                let command = CustomerCommand::Register {
                    customer_id: *id,
                    email: Email::parse(&format!("customer-{run}-{i}@example.com")).expect("a valid email"),
                    name: format!("Customer {i}"),
                    shipping_address: Some(address),
                };
                service.customer(*id, command, None, metadata).await
            }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = writes.next().await {
        result.context("register a customer")?;
        progress.inc(1);
    }
    progress.finish();

    let mut orders = Vec::new();
    if !customer_ids.is_empty() && !product_ids.is_empty() {
        for _ in 0..sizes.orders {
            let customer = customer_ids[dice.below(customer_ids.len())];
            let lines: Vec<(Uuid, u32)> =
                (0..1 + dice.below(3)).map(|_| (product_ids[dice.below(product_ids.len())], 1 + dice.below(3) as u32)).collect();
            orders.push((Uuid::now_v7(), customer, lines));
        }
    }
    let placed = orders.len();
    let progress = bar(orders.len(), "orders");
    let mut writes = futures::stream::iter(orders)
        .map(|(id, customer, mut lines)| {
            let (metadata, address) = (&metadata, address.clone());
            lines.sort();
            lines.dedup_by_key(|(product, _)| *product);
            async move { service.place_order(id, customer, lines, address, metadata).await }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = writes.next().await {
        result.context("place an order")?;
        progress.inc(1);
    }
    progress.finish();
    Ok((product_ids.len(), customer_ids.len(), placed))
}

/// `storekeeper seed`: seeds the database `db` names through its command
/// service and says how much.
pub async fn run(
    db: &crate::cli::DatabaseArgs,
    vault: &crate::cli::VaultArgs,
    append: &crate::cli::AppendArgs,
    sizes: Sizes,
) -> Result<()> {
    let (_cluster, pool) = db.open(false).await?;
    let (log, vault) = crate::app::vaulted_log(&pool, &crate::cli::event_log(db, vault, Some(append))).await?;
    let service = CommandService::new(log, vault);
    let (p, c, o) = seed(&service, sizes).await?;
    println!("seeded {p} products, {c} customers and {o} orders");
    Ok(())
}
