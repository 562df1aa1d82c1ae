//! The vault on PostgreSQL: where a key is deleted (the trigger beside the
//! log, the vault beside any other log), and keys wrapped under the key
//! encryption key the process is given.

use std::sync::Arc;

use chrono::Utc;
use domain::personal::FORGOTTEN;
use domain::{Category, StreamId};
use eventlog::vault::{Vault, VaultedLog, WrappingKey};
use eventlog::{EventLog, ExpectedVersion, InMemoryEventLog, Metadata, NewEvent, PgEventLog, StreamWrite};
use serde_json::json;
use uuid::Uuid;

fn event(event_type: &str, version: u32, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        schema_version: version,
        occurred_at: Utc::now(),
        metadata: Metadata::system("test"),
        data,
    }
}

async fn stored_key(pool: &sqlx::PgPool, customer: Uuid) -> Option<Vec<u8>> {
    sqlx::query_scalar("SELECT key FROM customer_keys WHERE customer_id = $1").bind(customer).fetch_one(pool).await.unwrap()
}

/// Whoever appends `CustomerForgotten`, even past the vault, the key goes
/// in the same transaction: no crash can leave the event with a live key.
#[tokio::test]
async fn appending_customer_forgotten_deletes_the_key_in_the_same_transaction() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let (vaulted, _) = eventlog::vault::postgres_log(&pool);
    let customer = Uuid::now_v7();
    let stream = StreamId::new(Category::Customer, customer).to_string();
    let registered = json!({"customer_id": customer, "email": "gone@example.com", "name": "Gone", "shipping_address": null});
    let write = |events| vec![StreamWrite { stream_id: stream.clone(), expected: ExpectedVersion::Any, events }];
    vaulted.append(write(vec![event("CustomerRegistered", 2, registered)])).await.unwrap();
    assert_eq!(vaulted.read_stream(&stream, 0, 1).await.unwrap()[0].data["name"], "Gone");
    // Straight into the log, as an import or another build would.
    let raw = PgEventLog::new(pool.clone());
    raw.append(write(vec![event(FORGOTTEN, 1, json!({}))])).await.unwrap();
    assert_eq!(stored_key(&pool, customer).await, None);
    assert_eq!(vaulted.read_stream(&stream, 0, 1).await.unwrap()[0].data["name"], "[redacted]");
}

/// Under a key encryption key, the table holds only wrapped keys: bound to
/// their owner, and of no use without that key.
#[tokio::test]
async fn data_keys_are_stored_wrapped_under_the_key_encryption_key() {
    use eventlog::vault::{KeyState, KeyStore, PgKeyStore, new_key};
    let pool = eventlog::testing::fresh_event_log_database().await;
    let (kek, other) = (WrappingKey::generate(), WrappingKey::generate());
    let store = PgKeyStore::wrapped(pool.clone(), Some(kek));
    let (owner, key) = (Uuid::now_v7(), new_key());
    let made = store.create_keys(&[owner], &[key]).await.unwrap();
    assert_eq!(made.get(&owner), Some(&KeyState::Live(key)));
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT key FROM customer_keys WHERE customer_id = $1").bind(owner).fetch_one(&pool).await.unwrap();
    assert_eq!(stored.len(), 72);
    assert!(!stored.windows(32).any(|w| w == key), "the key itself is not in the row");
    assert!(PgKeyStore::wrapped(pool.clone(), Some(other)).keys(&[owner]).await.is_err(), "another key encryption key");
    assert!(PgKeyStore::new(pool.clone()).keys(&[owner]).await.is_err(), "none at all");
    assert!(eventlog::vault::key_from_storage(Some(&kek), Uuid::now_v7(), &stored).is_err(), "bound to its owner");
}

/// A process with another key encryption key, or none, on a database whose
/// keys are wrapped is refused before it writes a key it would lose.
#[tokio::test]
async fn a_database_is_held_to_the_key_encryption_key_it_started_with() {
    use eventlog::vault::check_wrapping_key;
    let pool = eventlog::testing::fresh_event_log_database().await;
    let (kek, other) = (WrappingKey::generate(), WrappingKey::generate());
    check_wrapping_key(&pool, Some(kek)).await.unwrap();
    check_wrapping_key(&pool, Some(kek)).await.unwrap();
    assert!(check_wrapping_key(&pool, Some(other)).await.unwrap_err().to_string().contains("not the key"));
    assert!(check_wrapping_key(&pool, None).await.unwrap_err().to_string().contains("set STOREKEEPER_VAULT_KEY"));
    let plain = eventlog::testing::fresh_event_log_database().await;
    check_wrapping_key(&plain, None).await.unwrap();
}

/// Keys in PostgreSQL beside a log kept elsewhere (KurrentDB): no trigger
/// sees the forget, so the vaulted log deletes the key once it is
/// appended. Keys are wrapped under the key the vault was given.
#[tokio::test]
async fn beside_another_log_the_vault_deletes_the_key_once_the_forget_is_appended() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let vault = Vault::postgres_beside_another_log(pool.clone(), Some(WrappingKey::generate()));
    let log = VaultedLog::new(Arc::new(InMemoryEventLog::new()), vault);
    let customer = Uuid::now_v7();
    let stream = StreamId::new(Category::Customer, customer).to_string();
    let write = |events| vec![StreamWrite { stream_id: stream.clone(), expected: ExpectedVersion::Any, events }];
    let registered = json!({"customer_id": customer, "email": "kept@example.com", "name": "Kept", "shipping_address": null});
    log.append(write(vec![event("CustomerRegistered", 2, registered)])).await.unwrap();
    assert_eq!(stored_key(&pool, customer).await.map(|k| k.len()), Some(72), "wrapped");
    assert_eq!(log.read_stream(&stream, 0, 1).await.unwrap()[0].data["name"], "Kept");
    log.append(write(vec![event(FORGOTTEN, 1, json!({}))])).await.unwrap();
    assert_eq!(stored_key(&pool, customer).await, None);
    assert_eq!(log.read_stream(&stream, 0, 1).await.unwrap()[0].data["name"], "[redacted]");
}
