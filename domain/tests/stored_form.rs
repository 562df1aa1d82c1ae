//! The stored form of events: old versions load through upcasters, and the
//! checked-in JSON Schemas match the Rust types.

use std::path::PathBuf;

use domain::events::{DecodeError, DomainEvent, EventCodec, all_schemas};
use domain::product::{ProductAdded, ProductEvent};
use domain::{Currency, Money};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn a_stored_product_added_v1_loads_through_the_upcaster() {
    let raw = std::fs::read_to_string(root().join("domain/tests/fixtures/ProductAdded.v1.json")).unwrap();
    let data: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let event = ProductEvent::decode("ProductAdded", 1, &data).unwrap();
    let ProductEvent::Added(ProductAdded { price, initial_stock, sku, .. }) = event else { panic!("{event:?}") };
    assert_eq!(price, Money::new(1999, Currency::usd()));
    assert_eq!(initial_stock, 12);
    assert_eq!(sku.as_str(), "KET-1");
    // The same through the catch-all decoder consumers use.
    let data: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert!(matches!(DomainEvent::decode("ProductAdded", 1, &data), Ok(DomainEvent::Product(ProductEvent::Added(_)))));
}

#[test]
fn current_events_round_trip_and_unknown_or_future_versions_are_refused() {
    let raw = std::fs::read_to_string(root().join("domain/tests/fixtures/ProductAdded.v1.json")).unwrap();
    let event = ProductEvent::decode("ProductAdded", 1, &serde_json::from_str(&raw).unwrap()).unwrap();
    let encoded = event.encode();
    assert_eq!((encoded.event_type, encoded.schema_version), ("ProductAdded", 2));
    assert_eq!(ProductEvent::decode("ProductAdded", 2, &encoded.data).unwrap(), event);
    assert!(matches!(ProductEvent::decode("ProductAdded", 3, &encoded.data), Err(DecodeError::FutureVersion { .. })));
    assert!(matches!(ProductEvent::decode("ProductRenamed", 1, &serde_json::json!({})), Err(DecodeError::UnknownType(_))));
}

#[test]
fn the_checked_in_event_schemas_match_the_types() {
    let dir = root().join("schemas/events");
    let mut expected: Vec<String> = Vec::new();
    let mut drift = Vec::new();
    for schema in all_schemas() {
        let name = format!("{}.v{}.json", schema.event_type, schema.schema_version);
        let generated = serde_json::to_string_pretty(&schema.schema).unwrap() + "\n";
        if std::fs::read_to_string(dir.join(&name)).ok().as_deref() != Some(generated.as_str()) {
            drift.push(name.clone());
        }
        expected.push(name);
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".json")).collect())
        .unwrap_or_default();
    on_disk.sort();
    expected.sort();
    let stale: Vec<&String> = on_disk.iter().filter(|n| !expected.contains(n)).collect();
    assert!(
        drift.is_empty() && stale.is_empty(),
        "schemas/events drifted (changed: {drift:?}, stale: {stale:?}): run `cargo xtask schemas`"
    );
}

#[test]
fn every_event_type_name_is_unique() {
    let mut names: Vec<(&str, u32)> = all_schemas().iter().map(|s| (s.event_type, s.schema_version)).collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total);
}
