//! Product search over the tantivy index.

use serde_json::{Value, json};

use crate::support::*;

async fn catalogue(app: &TestApp) -> String {
    let mut token = String::new();
    for (sku, name, description, category, price, stock) in [
        ("KET-1", "Electric kettle", "Boils water in two minutes", "kitchen", 2999, 5),
        ("KET-2", "Stovetop kettle", "Whistles when the water boils", "kitchen", 1999, 0),
        ("MUG-1", "Coffee mug", "Holds coffee or tea", "kitchen", 899, 20),
        ("HOS-1", "Garden hose", "Waters the garden", "garden", 3499, 3),
        ("SHV-1", "Garden shovel", "Digs holes", "garden", 2499, 7),
    ] {
        token = app
            .write(
                "/v1/products",
                json!({"sku": sku, "name": name, "description": description, "category": category,
                       "price": {"amount_minor": price, "currency": "USD"}, "initial_stock": stock}),
            )
            .await
            .1;
    }
    token
}

fn skus(results: &Value) -> Vec<&str> {
    results["hits"].as_array().unwrap().iter().map(|h| h["sku"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn search_is_typo_tolerant_with_facets_filters_and_sorting() {
    let app = spawn_app().await;
    let token = catalogue(&app).await;

    let kettles = app.get_json("/v1/search/products?q=kettle", None, Some(&token)).await;
    assert_eq!(kettles["total"], 2);
    assert_eq!(kettles["facets"], json!({"category": {"kitchen": 2}}));
    let hit = &kettles["hits"][0];
    for field in ["id", "sku", "name", "category", "price", "in_stock", "score"] {
        assert!(hit.get(field).is_some(), "{field} missing from {hit}");
    }

    let typo = app.get_json("/v1/search/products?q=kettel", None, None).await;
    assert_eq!(typo["total"], 2, "one typo still finds the kettles");
    // Every word must match (by its stem, or with one typo).
    let two_words = app.get_json("/v1/search/products?q=electric+kettles", None, None).await;
    assert_eq!(skus(&two_words), ["KET-1"]);
    let two_words_one_typo = app.get_json("/v1/search/products?q=garden+shovle", None, None).await;
    assert_eq!(skus(&two_words_one_typo), ["SHV-1"]);
    let by_sku = app.get_json("/v1/search/products?q=MUG-1", None, None).await;
    assert_eq!(skus(&by_sku)[0], "MUG-1");
    let by_description = app.get_json("/v1/search/products?q=water", None, None).await;
    assert_eq!(by_description["total"], 3);
    assert_eq!(by_description["facets"]["category"], json!({"kitchen": 2, "garden": 1}));

    let in_stock = app.get_json("/v1/search/products?q=kettle&in_stock=true", None, None).await;
    assert_eq!(skus(&in_stock), ["KET-1"]);
    assert_eq!(in_stock["hits"][0]["in_stock"], true);
    let garden = app.get_json("/v1/search/products?category=garden&sort=price_asc", None, None).await;
    assert_eq!(skus(&garden), ["SHV-1", "HOS-1"]);
    let priced = app.get_json("/v1/search/products?min_price=1000&max_price=3000&sort=price_desc", None, None).await;
    assert_eq!(skus(&priced), ["KET-1", "SHV-1", "KET-2"]);
    let paged = app.get_json("/v1/search/products?sort=price_asc&limit=2&offset=2", None, None).await;
    assert_eq!((skus(&paged), paged["total"].as_u64()), (vec!["SHV-1", "KET-1"], Some(5)));
    assert_eq!(app.get("/v1/search/products?sort=cheapest", None, None).await.status(), 400);
}

#[tokio::test]
async fn updates_replace_documents_and_discontinued_products_leave_the_results() {
    let app = spawn_app().await;
    let (id, _) = app.add_product("KET-1", "kitchen", 2999, 0).await;
    let (_, token) = app.write(&format!("/v1/products/{id}/details"), json!({"name": "Copper kettle"})).await;
    let found = app.get_json("/v1/search/products?q=copper&in_stock=false", None, Some(&token)).await;
    assert_eq!(found["total"], 1);
    let (_, token) = app.write(&format!("/v1/products/{id}/restock"), json!({"quantity": 3})).await;
    let found = app.get_json("/v1/search/products?q=copper", None, Some(&token)).await;
    assert_eq!((found["total"].as_u64(), found["hits"][0]["in_stock"].as_bool()), (Some(1), Some(true)), "replaced, not duplicated");
    let (_, token) = app.write(&format!("/v1/products/{id}/discontinue"), json!({})).await;
    let gone = app.get_json("/v1/search/products?q=copper", None, Some(&token)).await;
    assert_eq!(gone["total"], 0);
}

/// A log in a fresh database, and the command service on it.
async fn fresh_log() -> (Fed, commands::CommandService) {
    let pool = test_support::migrated_database().await;
    let (log, vault) = eventlog::vault::postgres_log(&pool);
    ((pool, log.clone()), commands::CommandService::new(log, vault))
}

/// A database and its log, for an indexer to follow.
type Fed = (sqlx::PgPool, std::sync::Arc<dyn eventlog::EventLog>);

/// Adds a product through `service`; answers its position in the log.
async fn add(service: &commands::CommandService, sku: &str, name: &str) -> u64 {
    let id = uuid::Uuid::now_v7();
    let add = domain::product::ProductCommand::Add {
        product_id: id,
        sku: domain::Sku::parse(sku).unwrap(),
        name: name.into(),
        description: String::new(),
        category: "kitchen".into(),
        price: domain::Money::new(100, domain::Currency::usd()),
        initial_stock: 1,
    };
    service.product(id, add, None, &eventlog::Metadata::system("test")).await.unwrap().position
}

/// Runs the index's indexer on `log` until it has applied `position`.
async fn index_until(index: &std::sync::Arc<projections::search::SearchIndex>, (pool, log): &Fed, position: u64) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let indexer = tokio::spawn(index.clone().run(pool.clone(), log.clone(), eventlog::in_process(log.clone(), 100), stop));
    let mut positions = index.progress();
    tokio::time::timeout(std::time::Duration::from_secs(10), positions.wait_for(|p| p.position >= position)).await.unwrap().unwrap();
    stop_tx.send(true).unwrap();
    indexer.await.unwrap();
}

fn query(q: &str) -> projections::search::SearchRequest {
    projections::search::SearchRequest {
        q: q.into(),
        category: None,
        in_stock: None,
        min_price: None,
        max_price: None,
        sort: projections::search::Sort::Relevance,
        limit: 10,
        offset: 0,
    }
}

#[tokio::test]
async fn the_index_keeps_its_position_in_its_commits() {
    let dir = std::env::temp_dir().join(format!("storekeeper-index-reopen-{}", uuid::Uuid::now_v7().simple()));
    let index = projections::search::SearchIndex::open(&dir).unwrap();
    assert_eq!(index.position(), 0);
    let (log, service) = fresh_log().await;
    let written = add(&service, "KET-1", "Kettle").await;
    index_until(&index, &log, written).await;
    let position = index.position();
    drop(index);
    let reopened = projections::search::SearchIndex::open(&dir).unwrap();
    assert_eq!(reopened.position(), position, "the position comes back from the commit payload");
    assert_eq!(reopened.search(&query("kettle")).unwrap().total, 1);
    drop(reopened);
    let same = projections::search::SearchIndex::open_for(&dir, &*log.1).await.unwrap();
    assert_eq!((same.position(), same.search(&query("kettle")).unwrap().total), (position, 1), "kept for the log it was built from");
    drop(same);

    // Beside another log (a fresh or restored database), the directory's
    // index is dropped and built from that log.
    let (other_log, other_service) = fresh_log().await;
    let written = add(&other_service, "TEA-1", "Teapot").await;
    let fresh = projections::search::SearchIndex::open_for(&dir, &*other_log.1).await.unwrap();
    assert_eq!((fresh.position(), fresh.search(&query("kettle")).unwrap().total), (0, 0), "the other log's index starts over");
    index_until(&fresh, &other_log, written).await;
    assert_eq!(fresh.search(&query("teapot")).unwrap().total, 1);
    drop(fresh);

    // An index whose files were not all written whole (a machine crash:
    // they are written without waiting for the disk) fails its checksums
    // and is built again rather than served.
    let largest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x != "json" && x != "lock"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&largest).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&largest, bytes).unwrap();
    let checked = projections::search::SearchIndex::open_for(&dir, &*other_log.1).await.unwrap();
    assert_eq!(checked.position(), 0, "a damaged index starts over");
    index_until(&checked, &other_log, written).await;
    assert_eq!(checked.search(&query("teapot")).unwrap().total, 1);
    drop(checked);

    // An index whose segment files are lost (its meta.json left) is built
    // again rather than stopping the node.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n != "meta.json" && n != ".managed.json") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let rebuilt = projections::search::SearchIndex::open_for(&dir, &*other_log.1).await.unwrap();
    assert_eq!(rebuilt.position(), 0);
    index_until(&rebuilt, &other_log, written).await;
    assert_eq!(rebuilt.search(&query("teapot")).unwrap().total, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
