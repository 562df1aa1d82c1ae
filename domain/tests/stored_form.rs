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

/// Every event type at every version this build reads has a frozen example
/// under `tests/fixtures`, written once and never changed: each must still
/// decode, and a current version must encode back to exactly what is
/// stored (a changed shape needs a new version and an upcaster, not an
/// edited fixture).
#[test]
fn every_stored_type_and_version_has_a_frozen_fixture_that_decodes() {
    let dir = root().join("domain/tests/fixtures");
    let mut expected = Vec::new();
    let mut problems = Vec::new();
    for schema in all_schemas() {
        let name = format!("{}.v{}.json", schema.event_type, schema.schema_version);
        expected.push(name.clone());
        let Ok(raw) = std::fs::read_to_string(dir.join(&name)) else {
            problems.push(format!("{name}: no fixture"));
            continue;
        };
        let data: serde_json::Value = serde_json::from_str(&raw).unwrap();
        match DomainEvent::decode(schema.event_type, schema.schema_version, &data) {
            Err(e) => problems.push(format!("{name}: {e}")),
            Ok(event) => {
                let encoded = encode(&event);
                if encoded.event_type != schema.event_type {
                    problems.push(format!("{name}: decoded as {}", encoded.event_type));
                } else if encoded.schema_version == schema.schema_version && encoded.data != data {
                    problems.push(format!("{name}: encodes differently now: {}", encoded.data));
                }
            }
        }
    }
    let stray: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !expected.contains(n))
        .collect();
    assert!(problems.is_empty() && stray.is_empty(), "{problems:#?}; fixtures for no known type: {stray:?}");
}

fn encode(event: &DomainEvent) -> domain::events::EncodedEvent {
    match event {
        DomainEvent::Customer(e) => e.encode(),
        DomainEvent::Product(e) => e.encode(),
        DomainEvent::Order(e) => e.encode(),
        DomainEvent::Claim(e) => e.encode(),
    }
}

#[test]
fn stored_values_that_todays_rules_refuse_still_decode() {
    // Recorded under older, looser rules: an intranet address, a SKU with a
    // space, a lower-case currency. History stays readable as it was.
    let registered = serde_json::json!({"customer_id": "0190f3c4-5e6f-7a00-8000-00000000c001", "email": "ops@localhost", "name": "Ops"});
    assert!(domain::Email::parse("ops@localhost").is_err());
    let decoded = DomainEvent::decode("CustomerRegistered", 1, &registered).unwrap();
    assert_eq!(encode(&decoded).data["email"], "ops@localhost");

    let added = serde_json::json!({"product_id": "0190f3c4-5e6f-7a00-8000-00000000a001", "sku": "OLD SKU", "name": "Old", "description": "",
        "category": "c", "price": {"amount_minor": 5, "currency": "usd"}, "initial_stock": 1});
    let decoded = DomainEvent::decode("ProductAdded", 2, &added).unwrap();
    assert_eq!(encode(&decoded).data, added);
}
