//! The vault at the port: `VaultedLog` for readers and writers of the log,
//! `opening` for sources that hand out the stored form.

use std::sync::Arc;

use async_trait::async_trait;
use domain::personal::holds_personal_data;
use sqlx::PgPool;
use tokio::sync::watch;

use super::Vault;
use crate::{
    AppendResult, Batch, EventLog, EventLogError, EventSource, Receipt, RecordedEvent, Resume, Snapshot, SourceFactory, StreamWrite,
};

/// The log with personal data encrypted on the way in and decrypted on
/// the way out (see the module docs). Snapshots of streams that hold
/// personal data, which would hold their state in the clear, are neither
/// kept nor read.
pub struct VaultedLog {
    inner: Arc<dyn EventLog>,
    vault: Arc<Vault>,
}

impl VaultedLog {
    pub fn new(inner: Arc<dyn EventLog>, vault: Arc<Vault>) -> Self {
        VaultedLog { inner, vault }
    }
}

/// The PostgreSQL log as every reader and writer but the relay, the sealer
/// and export sees it, and its vault, as tests and benchmarks use them:
/// keys unwrapped, one committer. The binary builds its own from its
/// configuration (`storekeeper::app`).
pub fn postgres_log(pool: &PgPool) -> (Arc<dyn EventLog>, Arc<Vault>) {
    let vault = Vault::postgres(pool.clone(), None);
    (Arc::new(VaultedLog::new(Arc::new(crate::PgEventLog::new(pool.clone())), vault.clone())), vault)
}

/// The in-memory log, vaulted with keys in memory.
pub fn in_memory_log() -> (Arc<dyn EventLog>, Arc<Vault>) {
    let vault = Vault::in_memory();
    (Arc::new(VaultedLog::new(Arc::new(crate::InMemoryEventLog::new()), vault.clone())), vault)
}

#[async_trait]
impl EventLog for VaultedLog {
    async fn append_once(&self, mut writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        self.vault.encrypt(&mut writes).await?;
        let forgotten = self.vault.forgotten_by(&writes);
        let result = self.inner.append_once(writes, receipt).await?;
        self.vault.delete_keys(&forgotten).await?;
        Ok(result)
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let mut events = self.inner.read_stream(stream_id, from_version, limit).await?;
        self.vault.decrypt(&mut events).await?;
        Ok(events)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let mut events = self.inner.read_all(after, limit).await?;
        self.vault.decrypt(&mut events).await?;
        Ok(events)
    }

    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        self.inner.receipt(receipt).await
    }

    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        if holds_personal_data(stream_id) {
            return Ok(None);
        }
        self.inner.snapshot(stream_id).await
    }

    async fn snapshot_at_most(&self, stream_id: &str, version: u64) -> Result<Option<Snapshot>, EventLogError> {
        if holds_personal_data(stream_id) {
            return Ok(None);
        }
        self.inner.snapshot_at_most(stream_id, version).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        if holds_personal_data(&snapshot.stream_id) {
            return Ok(());
        }
        self.inner.save_snapshot(snapshot).await
    }

    fn appends(&self) -> watch::Receiver<u64> {
        self.inner.appends()
    }

    async fn head(&self) -> Result<Option<u64>, EventLogError> {
        self.inner.head().await
    }

    async fn frontier(&self) -> Result<Option<u64>, EventLogError> {
        self.inner.frontier().await
    }
}

/// `sources` with every batch decrypted: for sources that hand out the
/// stored form (Kafka's topic, which holds only ciphertext).
pub fn opening(sources: SourceFactory, vault: Arc<Vault>) -> SourceFactory {
    Arc::new(move |resume: &Resume| {
        let inner = sources(resume)?;
        Ok(Box::new(Decrypted { inner, vault: vault.clone() }) as Box<dyn EventSource>)
    })
}

struct Decrypted {
    inner: Box<dyn EventSource>,
    vault: Arc<Vault>,
}

#[async_trait]
impl EventSource for Decrypted {
    async fn next_batch(&mut self) -> Result<Batch, EventLogError> {
        let mut batch = self.inner.next_batch().await?;
        self.vault.decrypt(&mut batch.events).await?;
        Ok(batch)
    }

    async fn ack(&mut self) -> Result<(), EventLogError> {
        self.inner.ack().await
    }
}

#[cfg(test)]
mod tests {
    use domain::personal::FORGOTTEN;
    use domain::{Category, StreamId};
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::*;
    use crate::vault::fields::is_encrypted_for_tests as is_encrypted;
    use crate::vault::{KeyState, KeyStore, MemoryKeyStore};
    use crate::{ExpectedVersion, Metadata, NewEvent};

    fn event(event_type: &str, schema_version: u32, data: Value) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            occurred_at: chrono::Utc::now(),
            metadata: Metadata::system("test"),
            data,
        }
    }

    fn write(stream: &str, events: Vec<NewEvent>) -> Vec<StreamWrite> {
        vec![StreamWrite { stream_id: stream.to_owned(), expected: ExpectedVersion::Any, events }]
    }

    fn registered(owner: Uuid) -> (String, Value) {
        let data = json!({"customer_id": owner, "email": "ada@example.com", "name": "Ada", "shipping_address": null});
        (StreamId::new(Category::Customer, owner).to_string(), data)
    }

    /// A log in memory, vaulted with keys in `store`.
    fn vaulted(store: Arc<MemoryKeyStore>) -> (Arc<dyn EventLog>, VaultedLog) {
        let inner: Arc<dyn EventLog> = Arc::new(crate::InMemoryEventLog::new());
        (inner.clone(), VaultedLog::new(inner, Arc::new(Vault::new(store))))
    }

    /// A customer registered through a vaulted log in memory: its key
    /// store, the inner log, the vaulted log, the customer and its stream.
    async fn a_registered_customer() -> (Arc<MemoryKeyStore>, Arc<dyn EventLog>, VaultedLog, Uuid, String) {
        let store = Arc::new(MemoryKeyStore::default());
        let (inner, log) = vaulted(store.clone());
        let owner = Uuid::new_v4();
        let (stream, data) = registered(owner);
        log.append(write(&stream, vec![event("CustomerRegistered", 2, data)])).await.unwrap();
        (store, inner, log, owner, stream)
    }

    #[tokio::test]
    async fn the_vaulted_log_stores_ciphertext_decrypts_it_and_redacts_once_the_key_is_gone() {
        let (inner, log) = vaulted(Arc::default());
        let owner = Uuid::new_v4();
        let (stream, data) = registered(owner);
        log.append(write(&stream, vec![event("CustomerRegistered", 2, data.clone())])).await.unwrap();
        let stored = inner.read_all(0, 10).await.unwrap();
        // (Not a search for "ada" in the whole row: the random customer id,
        // or the ciphertext, may hold those letters.)
        let stored_text = stored[0].data.to_string();
        assert!(!stored_text.contains("ada@example.com") && !stored_text.contains("\"Ada\""), "{stored_text}");
        assert!(is_encrypted(&stored[0].data["email"]) && is_encrypted(&stored[0].data["name"]), "{stored_text}");
        assert_eq!(stored[0].data["customer_id"], json!(owner), "what is not personal stays readable");
        assert_eq!(log.read_stream(&stream, 0, 10).await.unwrap()[0].data, data, "read through the vault, it decrypts");

        log.vault.delete_keys(&[owner]).await.unwrap();
        let read = log.read_all(0, 10).await.unwrap();
        assert_eq!((read[0].data["email"].as_str(), read[0].data["name"].as_str()), (Some("[redacted]"), Some("[redacted]")));
        let again = log.append(write(&stream, vec![event("CustomerRegistered", 2, data)])).await;
        assert!(matches!(again, Err(EventLogError::Forgotten(o)) if o == owner), "no new key for the forgotten");
        let snapshot = Snapshot { stream_id: stream.clone(), snapshot_version: 1, version: 0, position: 1, state: json!({"name": "Ada"}) };
        log.save_snapshot(&snapshot).await.unwrap();
        assert_eq!(inner.snapshot(&stream).await.unwrap(), None, "no snapshot of a customer is kept");
    }

    /// A store that does not forget with the event: the vaulted log
    /// deletes the key once the forget is appended.
    #[tokio::test]
    async fn appending_the_forget_deletes_the_key_of_a_store_that_does_not_forget_with_the_event() {
        let (store, _, log, owner, stream) = a_registered_customer().await;
        assert!(matches!(store.keys(&[owner]).await.unwrap().get(&owner), Some(KeyState::Live(_))));
        log.append(write(&stream, vec![event(FORGOTTEN, 1, json!({}))])).await.unwrap();
        assert_eq!(store.keys(&[owner]).await.unwrap().get(&owner), Some(&KeyState::Forgotten));
        assert_eq!(log.read_stream(&stream, 0, 10).await.unwrap()[0].data["email"], "[redacted]");
    }

    /// The forget reached the log but its process stopped before deleting
    /// the key: the first read of the forget through the vault deletes it,
    /// and nothing read with it is decrypted.
    #[tokio::test]
    async fn a_forget_whose_key_was_left_behind_deletes_it_when_read() {
        let (store, inner, log, owner, stream) = a_registered_customer().await;
        inner.append(write(&stream, vec![event(FORGOTTEN, 1, json!({}))])).await.unwrap();
        assert!(matches!(store.keys(&[owner]).await.unwrap().get(&owner), Some(KeyState::Live(_))), "left behind");
        let read = log.read_stream(&stream, 0, 10).await.unwrap();
        assert_eq!((read[0].data["email"].as_str(), read[1].event_type.as_str()), (Some("[redacted]"), FORGOTTEN));
        assert_eq!(store.keys(&[owner]).await.unwrap().get(&owner), Some(&KeyState::Forgotten));
        let again = log.append(write(&stream, vec![event("CustomerShippingAddressUpdated", 2, json!({"shipping_address": {}}))])).await;
        assert!(matches!(again, Err(EventLogError::Forgotten(o)) if o == owner));
    }
}
