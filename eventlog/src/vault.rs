//! Crypto-shredding: personal data is stored sealed under a key per
//! customer, so deleting the key forgets it wherever the event went.
//!
//! The log, its hashes and seals, Kafka and exports only ever hold
//! ciphertext; readers see personal fields opened, or redacted once the key
//! is gone. `VaultedLog` puts this at the port: it seals what is appended
//! and opens what is read, so every reader that goes through it (aggregate
//! loads, projections, rebuilds, verify, history, time travel) gets the
//! same answer. What must see the stored bytes (the relay, the sealer,
//! export) takes the inner log instead. Which fields are personal is the
//! domain's to say (`domain::personal`).
//!
//! A sealed field is `{"$sealed": "<base64 of a 24-byte nonce and the
//! XChaCha20-Poly1305 ciphertext of its JSON>"}`, bound by associated data
//! to its owner and field name, so a ciphertext moved elsewhere does not
//! open. A forgotten owner's key row stays, empty, as a tombstone: no key
//! is ever made for it again, and even fields written in the clear (logs
//! from before sealing) read as redacted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use domain::personal::{PersonalFields, personal_fields};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;
use tokio::sync::{OnceCell, watch};
use uuid::Uuid;

use crate::{
    AppendResult, Batch, EventLog, EventLogError, EventSource, Receipt, RecordedEvent, Resume, Snapshot, SourceFactory, StreamWrite,
};

/// A customer's data key.
pub type DataKey = [u8; 32];

/// What the store holds for an owner.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyState {
    Live(DataKey),
    /// The key was deleted: the owner is forgotten, for good.
    Forgotten,
}

impl std::fmt::Debug for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyState::Live(_) => "Live(..)",
            KeyState::Forgotten => "Forgotten",
        })
    }
}

/// Where data keys are kept. Owners with no entry have never had a key.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    async fn keys(&self, owners: &[Uuid]) -> Result<HashMap<Uuid, KeyState>, EventLogError>;
    /// Inserts `fresh[i]` as the key of `owners[i]` where the owner has no
    /// entry yet (never where it is forgotten), then answers as `keys`.
    async fn create_keys(&self, owners: &[Uuid], fresh: &[DataKey]) -> Result<HashMap<Uuid, KeyState>, EventLogError>;
    /// Deletes the owner's key and leaves a tombstone. Idempotent.
    async fn forget(&self, owner: Uuid) -> Result<(), EventLogError>;
    /// The secret keyed hashes of unique personal values are made with.
    async fn hash_secret(&self) -> Result<Vec<u8>, EventLogError>;
    /// Whether the log holds email claims named after the plain address
    /// (made before claims were keyed), which claims must also respect.
    async fn legacy_email_claims(&self) -> Result<bool, EventLogError> {
        Ok(false)
    }
    /// Whether appending `CustomerForgotten` deletes the key by itself (in
    /// the append's transaction), so that nobody need ask.
    fn forgets_with_the_event(&self) -> bool {
        false
    }
}

/// Keys in the `customer_keys` table, beside the log; wrapped under a key
/// encryption key when one is given (`STOREKEEPER_VAULT_KEY`), so that a
/// deleted key left in the table's files or a backup is of no use without
/// it.
pub struct PgKeyStore {
    pool: PgPool,
    wrapping: Option<DataKey>,
    /// The log is in this database's `events`, whose trigger deletes a
    /// key with the event that forgets its owner.
    log_beside: bool,
}

/// The key encryption key from `STOREKEEPER_VAULT_KEY` (64 hex digits), if
/// set. A value that is set but malformed is refused, never ignored.
pub fn wrapping_key_from_env() -> Result<Option<DataKey>, String> {
    match std::env::var("STOREKEEPER_VAULT_KEY") {
        Err(_) => Ok(None),
        Ok(raw) if raw.trim().is_empty() => Ok(None),
        Ok(raw) => hex::decode(raw.trim())
            .ok()
            .and_then(|k| DataKey::try_from(k.as_slice()).ok())
            .map(Some)
            .ok_or_else(|| "STOREKEEPER_VAULT_KEY must be 64 hex digits (a 256-bit key)".to_owned()),
    }
}

const WRAPPED_LEN: usize = 24 + 32 + 16;

/// Refuses to run on a database whose data keys are wrapped under another
/// key encryption key than `wrapping` (`STOREKEEPER_VAULT_KEY`), or under one when it is
/// not set (and the reverse): either way, keys written from then on would
/// be lost or stored in the clear. The first process run with a key
/// records its fingerprint.
pub async fn check_wrapping_key(pool: &PgPool, wrapping: Option<DataKey>) -> Result<(), String> {
    let recorded: Option<Vec<u8>> = sqlx::query_scalar("SELECT secret FROM vault_secrets WHERE name = 'key_encryption_key'")
        .fetch_optional(pool)
        .await
        .map_err(|e| format!("read the vault's settings: {e}"))?;
    let fingerprint = wrapping.map(|k| keyed_hash(&k, "storekeeper key encryption key").into_bytes());
    match (recorded, fingerprint) {
        (None, None) => Ok(()),
        (Some(recorded), Some(fingerprint)) if recorded == fingerprint => Ok(()),
        (Some(_), Some(_)) => Err("STOREKEEPER_VAULT_KEY is not the key this database's data keys are wrapped under".into()),
        (Some(_), None) => {
            Err("this database's data keys are wrapped: set STOREKEEPER_VAULT_KEY to the key they were wrapped under".into())
        }
        (None, Some(fingerprint)) => {
            let unwrapped: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM customer_keys WHERE length(key) = 32)")
                .fetch_one(pool)
                .await
                .map_err(|e| format!("read the customer keys: {e}"))?;
            if unwrapped {
                tracing::warn!("customer keys stored before STOREKEEPER_VAULT_KEY was set stay unwrapped; new ones are wrapped");
            }
            sqlx::query("INSERT INTO vault_secrets (name, secret) VALUES ('key_encryption_key', $1) ON CONFLICT (name) DO NOTHING")
                .bind(fingerprint)
                .execute(pool)
                .await
                .map_err(|e| format!("record the key encryption key's fingerprint: {e}"))?;
            Box::pin(check_wrapping_key(pool, wrapping)).await
        }
    }
}

impl PgKeyStore {
    pub fn new(pool: PgPool) -> Self {
        PgKeyStore { pool, wrapping: None, log_beside: true }
    }

    pub fn wrapped(pool: PgPool, wrapping: Option<DataKey>) -> Self {
        PgKeyStore { pool, wrapping, log_beside: true }
    }

    fn wrap(&self, owner: Uuid, key: &DataKey) -> Vec<u8> {
        stored_key(self.wrapping.as_ref(), owner, key)
    }

    fn unwrap_key(&self, owner: Uuid, stored: &[u8]) -> Result<DataKey, EventLogError> {
        key_from_storage(self.wrapping.as_ref(), owner, stored)
    }
}

/// A data key as `customer_keys` stores it: wrapped under `wrapping` when
/// there is one (bound to its owner), as is otherwise.
pub fn stored_key(wrapping: Option<&DataKey>, owner: Uuid, key: &DataKey) -> Vec<u8> {
    let Some(kek) = wrapping else { return key.to_vec() };
    let cipher = XChaCha20Poly1305::new(kek.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = cipher.encrypt(&nonce, Payload { msg: key, aad: owner.as_bytes() }).expect("encryption of a buffer does not fail");
    [nonce.as_slice(), &sealed].concat()
}

/// The data key `customer_keys` holds for `owner`.
pub fn key_from_storage(wrapping: Option<&DataKey>, owner: Uuid, stored: &[u8]) -> Result<DataKey, EventLogError> {
    let unusable = |why: &str| EventLogError::Backend(format!("the data key of customer {owner} {why}").into());
    match (stored.len(), wrapping) {
        (32, _) => Ok(DataKey::try_from(stored).expect("32 bytes")),
        (WRAPPED_LEN, Some(kek)) => {
            let (nonce, sealed) = stored.split_at(24);
            let plain = XChaCha20Poly1305::new(kek.into())
                .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: owner.as_bytes() })
                .map_err(|_| unusable("does not open with STOREKEEPER_VAULT_KEY (another key encryption key?)"))?;
            DataKey::try_from(plain.as_slice()).map_err(|_| unusable("is malformed"))
        }
        (WRAPPED_LEN, None) => Err(unusable("is wrapped, and STOREKEEPER_VAULT_KEY is not set")),
        _ => Err(unusable("is malformed")),
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn keys(&self, owners: &[Uuid]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        let rows: Vec<(Uuid, Option<Vec<u8>>)> = sqlx::query_as("SELECT customer_id, key FROM customer_keys WHERE customer_id = ANY($1)")
            .bind(owners)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(owner, key)| {
                let state = match key {
                    Some(stored) => KeyState::Live(self.unwrap_key(owner, &stored)?),
                    None => KeyState::Forgotten,
                };
                Ok((owner, state))
            })
            .collect()
    }

    async fn create_keys(&self, owners: &[Uuid], fresh: &[DataKey]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        let fresh: Vec<Vec<u8>> = owners.iter().zip(fresh).map(|(owner, k)| self.wrap(*owner, k)).collect();
        sqlx::query(
            "INSERT INTO customer_keys (customer_id, key) SELECT * FROM unnest($1::uuid[], $2::bytea[]) ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(owners)
        .bind(&fresh)
        .execute(&self.pool)
        .await?;
        self.keys(owners).await
    }

    async fn forget(&self, owner: Uuid) -> Result<(), EventLogError> {
        sqlx::query(
            "INSERT INTO customer_keys (customer_id, key, forgotten_at) VALUES ($1, NULL, now())
             ON CONFLICT (customer_id) DO UPDATE SET key = NULL, forgotten_at = coalesce(customer_keys.forgotten_at, now())",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn hash_secret(&self) -> Result<Vec<u8>, EventLogError> {
        Ok(sqlx::query_scalar("SELECT secret FROM vault_secrets WHERE name = 'unique_values'").fetch_one(&self.pool).await?)
    }

    /// A trigger on `events` (migration 10009).
    fn forgets_with_the_event(&self) -> bool {
        self.log_beside
    }

    async fn legacy_email_claims(&self) -> Result<bool, EventLogError> {
        let flag: Option<bool> =
            sqlx::query_scalar("SELECT value FROM vault_settings WHERE name = 'legacy_email_claims'").fetch_optional(&self.pool).await?;
        Ok(flag.unwrap_or(false))
    }
}

/// A key store whose configuration is wrong: every use says why.
struct Refusing(String);

#[async_trait]
impl KeyStore for Refusing {
    async fn keys(&self, _: &[Uuid]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        Err(EventLogError::Backend(self.0.clone().into()))
    }
    async fn create_keys(&self, _: &[Uuid], _: &[DataKey]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        Err(EventLogError::Backend(self.0.clone().into()))
    }
    async fn forget(&self, _: Uuid) -> Result<(), EventLogError> {
        Err(EventLogError::Backend(self.0.clone().into()))
    }
    async fn hash_secret(&self) -> Result<Vec<u8>, EventLogError> {
        Err(EventLogError::Backend(self.0.clone().into()))
    }
}

/// Keys in memory, for the in-memory log.
pub struct MemoryKeyStore {
    keys: Mutex<HashMap<Uuid, KeyState>>,
    secret: DataKey,
}

impl Default for MemoryKeyStore {
    fn default() -> Self {
        MemoryKeyStore { keys: Mutex::default(), secret: new_key() }
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn keys(&self, owners: &[Uuid]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        let keys = self.keys.lock().expect("key store poisoned");
        Ok(owners.iter().filter_map(|o| Some((*o, keys.get(o)?.clone()))).collect())
    }

    async fn create_keys(&self, owners: &[Uuid], fresh: &[DataKey]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        {
            let mut keys = self.keys.lock().expect("key store poisoned");
            for (owner, key) in owners.iter().zip(fresh) {
                keys.entry(*owner).or_insert(KeyState::Live(*key));
            }
        }
        self.keys(owners).await
    }

    async fn forget(&self, owner: Uuid) -> Result<(), EventLogError> {
        self.keys.lock().expect("key store poisoned").insert(owner, KeyState::Forgotten);
        Ok(())
    }

    async fn hash_secret(&self) -> Result<Vec<u8>, EventLogError> {
        Ok(self.secret.to_vec())
    }
}

/// Seals and opens personal fields with the store's keys.
pub struct Vault {
    store: Arc<dyn KeyStore>,
    secret: OnceCell<Vec<u8>>,
    legacy: OnceCell<bool>,
}

const SEALED: &str = "$sealed";

impl Vault {
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Vault { store, secret: OnceCell::new(), legacy: OnceCell::new() }
    }

    /// Keys in PostgreSQL, wrapped under `STOREKEEPER_VAULT_KEY` when it is
    /// set (a malformed value is refused at every use of the vault).
    pub fn postgres(pool: PgPool) -> Arc<Vault> {
        Self::postgres_keys(pool, true)
    }

    /// Keys in PostgreSQL, for a log that is not in that database.
    pub fn postgres_beside_another_log(pool: PgPool) -> Arc<Vault> {
        Self::postgres_keys(pool, false)
    }

    fn postgres_keys(pool: PgPool, log_beside: bool) -> Arc<Vault> {
        let store: Arc<dyn KeyStore> = match wrapping_key_from_env() {
            Ok(wrapping) => Arc::new(PgKeyStore { log_beside, ..PgKeyStore::wrapped(pool, wrapping) }),
            Err(why) => Arc::new(Refusing(why)),
        };
        Arc::new(Vault::new(store))
    }

    pub fn in_memory() -> Arc<Vault> {
        Arc::new(Vault::new(Arc::new(MemoryKeyStore::default())))
    }

    /// Deletes the customer's key: what was sealed with it is unreadable
    /// from now on, and nothing is sealed for it again.
    pub async fn forget(&self, owner: Uuid) -> Result<(), EventLogError> {
        self.store.forget(owner).await
    }

    /// The keyed hash a unique personal value (a normalised email) is
    /// claimed by, so that the claim holds no plaintext and cannot be
    /// guessed from the value without the secret.
    pub async fn keyed_hash(&self, normalised: &str) -> Result<String, EventLogError> {
        let secret = self.secret.get_or_try_init(|| self.store.hash_secret()).await?;
        Ok(keyed_hash(secret, normalised))
    }

    /// Whether email claims named after the plain address exist in this
    /// log (set when it was migrated or imported; it never changes while
    /// a process runs on it).
    pub async fn legacy_email_claims(&self) -> Result<bool, EventLogError> {
        self.legacy.get_or_try_init(|| self.store.legacy_email_claims()).await.copied()
    }

    /// Seals the personal fields of current-version events in `writes`,
    /// making a key for each owner that has none. Refuses to write personal
    /// data of a forgotten owner.
    pub async fn seal(&self, writes: &mut [StreamWrite]) -> Result<(), EventLogError> {
        let mut owners = HashSet::new();
        for write in writes.iter() {
            for event in &write.events {
                if let Some(owner) = sealable(&write.stream_id, &event.event_type, event.schema_version, &event.data) {
                    owners.insert(owner.1);
                }
            }
        }
        if owners.is_empty() {
            return Ok(());
        }
        let owners: Vec<Uuid> = owners.into_iter().collect();
        let mut keys = self.store.keys(&owners).await?;
        let missing: Vec<Uuid> = owners.iter().filter(|o| !keys.contains_key(o)).copied().collect();
        if !missing.is_empty() {
            let fresh: Vec<DataKey> = missing.iter().map(|_| new_key()).collect();
            keys.extend(self.store.create_keys(&missing, &fresh).await?);
        }
        for write in writes.iter_mut() {
            for event in &mut write.events {
                let Some((personal, owner)) = sealable(&write.stream_id, &event.event_type, event.schema_version, &event.data) else {
                    continue;
                };
                let Some(KeyState::Live(key)) = keys.get(&owner) else {
                    return Err(EventLogError::Forgotten(owner));
                };
                seal_fields(personal, owner, key, &mut event.data);
            }
        }
        Ok(())
    }

    /// Opens the personal fields of `events` in place: with the owner's key
    /// when it is live, as redacted when the owner is forgotten (or a
    /// sealed field cannot be opened). One read of the store per call.
    pub async fn open(&self, events: &mut [RecordedEvent]) -> Result<(), EventLogError> {
        let owners: HashSet<Uuid> = events.iter().filter_map(|e| personal_fields(&e.event_type)?.owner_of(&e.stream_id, &e.data)).collect();
        if owners.is_empty() {
            return Ok(());
        }
        let keys = self.store.keys(&owners.into_iter().collect::<Vec<_>>()).await?;
        for event in events.iter_mut() {
            let Some(personal) = personal_fields(&event.event_type) else { continue };
            let Some(owner) = personal.owner_of(&event.stream_id, &event.data) else { continue };
            open_fields(personal, owner, keys.get(&owner), &mut event.data);
        }
        Ok(())
    }
}

/// The personal fields and owner of an event the vault seals: current
/// versions only, so that what is stored as v1 stays in v1's shape.
fn sealable(stream_id: &str, event_type: &str, schema_version: u32, data: &Value) -> Option<(&'static PersonalFields, Uuid)> {
    let personal = personal_fields(event_type)?;
    if schema_version < 2 {
        return None;
    }
    Some((personal, personal.owner_of(stream_id, data)?))
}

/// A fresh random data key.
pub fn new_key() -> DataKey {
    XChaCha20Poly1305::generate_key(&mut OsRng).into()
}

/// `hmac-sha256:<hex>` of `normalised` under `secret`.
pub fn keyed_hash(secret: &[u8], normalised: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(normalised.as_bytes());
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

/// Seals the personal fields of one event's data under `key` (fields
/// absent, null or sealed already are left).
pub fn seal_fields(personal: &PersonalFields, owner: Uuid, key: &DataKey, data: &mut Value) {
    for (field, _) in personal.fields {
        if let Some(value) = data.get_mut(*field)
            && !value.is_null()
            && !is_sealed(value)
        {
            *value = seal_value(key, owner, field, value);
        }
    }
}

fn is_sealed(value: &Value) -> bool {
    value.as_object().is_some_and(|o| o.len() == 1 && o.get(SEALED).is_some_and(Value::is_string))
}

fn aad(owner: Uuid, field: &str) -> Vec<u8> {
    [owner.as_bytes().as_slice(), field.as_bytes()].concat()
}

fn seal_value(key: &DataKey, owner: Uuid, field: &str, value: &Value) -> Value {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let plain = serde_json::to_vec(value).expect("JSON values serialize");
    let sealed = cipher.encrypt(&nonce, Payload { msg: &plain, aad: &aad(owner, field) }).expect("encryption of a buffer does not fail");
    json!({ SEALED: BASE64.encode([nonce.as_slice(), &sealed].concat()) })
}

fn open_value(key: &DataKey, owner: Uuid, field: &str, value: &Value) -> Option<Value> {
    let raw = BASE64.decode(value.get(SEALED)?.as_str()?).ok()?;
    if raw.len() < 24 {
        return None;
    }
    let (nonce, sealed) = raw.split_at(24);
    let cipher = XChaCha20Poly1305::new(key.into());
    let plain = cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &aad(owner, field) }).ok()?;
    serde_json::from_slice(&plain).ok()
}

/// Opens (or redacts) the personal fields of one event's data.
pub fn open_fields(personal: &PersonalFields, owner: Uuid, key: Option<&KeyState>, data: &mut Value) {
    for (field, shape) in personal.fields {
        let Some(value) = data.get_mut(*field) else { continue };
        if value.is_null() {
            continue;
        }
        let opened = match key {
            Some(KeyState::Forgotten) => None,
            Some(KeyState::Live(key)) if is_sealed(value) => {
                let opened = open_value(key, owner, field, value);
                if opened.is_none() {
                    tracing::warn!(%owner, field, "a sealed personal field does not open with its owner's key; read as redacted");
                }
                opened
            }
            // Stored in the clear, by a log from before sealing.
            _ if !is_sealed(value) => continue,
            None | Some(KeyState::Live(_)) => None,
        };
        *value = opened.unwrap_or_else(|| shape.redacted());
    }
}

/// The log with personal data sealed on the way in and opened on the way
/// out (see the module docs). Snapshots of customers and orders, which
/// would hold their state in the clear, are neither kept nor read.
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
/// and export sees it, and its vault.
pub fn postgres_log(pool: &PgPool) -> (Arc<dyn EventLog>, Arc<Vault>) {
    let vault = Vault::postgres(pool.clone());
    (Arc::new(VaultedLog::new(Arc::new(crate::PgEventLog::new(pool.clone())), vault.clone())), vault)
}

/// The in-memory log, vaulted with keys in memory.
pub fn in_memory_log() -> (Arc<dyn EventLog>, Arc<Vault>) {
    let vault = Vault::in_memory();
    (Arc::new(VaultedLog::new(Arc::new(crate::InMemoryEventLog::new()), vault.clone())), vault)
}

/// Streams whose state holds personal data.
fn personal_stream(stream_id: &str) -> bool {
    stream_id.starts_with("customer-") || stream_id.starts_with("order-")
}

#[async_trait]
impl EventLog for VaultedLog {
    async fn append_once(&self, mut writes: Vec<StreamWrite>, receipt: Option<Receipt<'_>>) -> Result<AppendResult, EventLogError> {
        self.vault.seal(&mut writes).await?;
        if self.vault.store.forgets_with_the_event() {
            return self.inner.append_once(writes, receipt).await;
        }
        let forgotten: Vec<Uuid> = writes
            .iter()
            .filter(|w| w.events.iter().any(|e| e.event_type == "CustomerForgotten"))
            .filter_map(|w| Uuid::parse_str(w.stream_id.split_once('-')?.1).ok())
            .collect();
        let result = self.inner.append_once(writes, receipt).await?;
        for owner in forgotten {
            self.vault.forget(owner).await?;
        }
        Ok(result)
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let mut events = self.inner.read_stream(stream_id, from_version, limit).await?;
        self.vault.open(&mut events).await?;
        Ok(events)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>, EventLogError> {
        let mut events = self.inner.read_all(after, limit).await?;
        self.vault.open(&mut events).await?;
        Ok(events)
    }

    async fn receipt(&self, receipt: Receipt<'_>) -> Result<Option<AppendResult>, EventLogError> {
        self.inner.receipt(receipt).await
    }

    async fn snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>, EventLogError> {
        if personal_stream(stream_id) {
            return Ok(None);
        }
        self.inner.snapshot(stream_id).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), EventLogError> {
        if personal_stream(&snapshot.stream_id) {
            return Ok(());
        }
        self.inner.save_snapshot(snapshot).await
    }

    fn appends(&self) -> watch::Receiver<u64> {
        self.inner.appends()
    }
}

/// `sources` with every batch opened: for sources that hand out the stored
/// form (Kafka's topic, which holds only ciphertext).
pub fn opening(sources: SourceFactory, vault: Arc<Vault>) -> SourceFactory {
    Arc::new(move |resume: &Resume| {
        let inner = sources(resume)?;
        Ok(Box::new(Opened { inner, vault: vault.clone() }) as Box<dyn EventSource>)
    })
}

struct Opened {
    inner: Box<dyn EventSource>,
    vault: Arc<Vault>,
}

#[async_trait]
impl EventSource for Opened {
    async fn next_batch(&mut self) -> Result<Batch, EventLogError> {
        let mut batch = self.inner.next_batch().await?;
        self.vault.open(&mut batch.events).await?;
        Ok(batch)
    }

    async fn ack(&mut self) -> Result<(), EventLogError> {
        self.inner.ack().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(owner: Uuid) -> (String, Value) {
        let data = json!({"customer_id": owner, "email": "ada@example.com", "name": "Ada", "shipping_address": null});
        (format!("customer-{owner}"), data)
    }

    #[test]
    fn a_sealed_field_opens_only_with_its_key_owner_and_field() {
        let (owner, other) = (Uuid::new_v4(), Uuid::new_v4());
        let key = new_key();
        let sealed = seal_value(&key, owner, "email", &json!("ada@example.com"));
        assert!(is_sealed(&sealed) && !sealed.to_string().contains("ada@example.com"));
        assert_eq!(open_value(&key, owner, "email", &sealed), Some(json!("ada@example.com")));
        assert_eq!(open_value(&key, other, "email", &sealed), None, "bound to its owner");
        assert_eq!(open_value(&key, owner, "name", &sealed), None, "bound to its field");
        let wrong = new_key();
        assert_eq!(open_value(&wrong, owner, "email", &sealed), None);
    }

    #[tokio::test]
    async fn the_vaulted_log_stores_ciphertext_opens_it_and_redacts_once_the_key_is_gone() {
        use crate::{ExpectedVersion, Metadata, NewEvent, Snapshot};
        let inner: Arc<dyn EventLog> = Arc::new(crate::InMemoryEventLog::new());
        let vault = Vault::in_memory();
        let log = VaultedLog::new(inner.clone(), vault.clone());
        let owner = Uuid::new_v4();
        let (stream, data) = registered(owner);
        let event = |data: Value| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "CustomerRegistered".into(),
            schema_version: 2,
            occurred_at: chrono::Utc::now(),
            metadata: Metadata::system("test"),
            data,
        };
        let write =
            |data: Value| vec![StreamWrite { stream_id: stream.clone(), expected: ExpectedVersion::Any, events: vec![event(data)] }];
        log.append(write(data.clone())).await.unwrap();
        let stored = inner.read_all(0, 10).await.unwrap();
        // (Not a search for "ada" in the whole row: the random customer id,
        // or the ciphertext, may hold those letters.)
        let stored_text = stored[0].data.to_string();
        assert!(!stored_text.contains("ada@example.com") && !stored_text.contains("\"Ada\""), "{stored_text}");
        assert!(is_sealed(&stored[0].data["email"]) && is_sealed(&stored[0].data["name"]), "{stored_text}");
        assert_eq!(stored[0].data["customer_id"], json!(owner), "what is not personal stays readable");
        assert_eq!(log.read_stream(&stream, 0, 10).await.unwrap()[0].data, data, "read through the vault, it opens");

        vault.forget(owner).await.unwrap();
        let read = log.read_all(0, 10).await.unwrap();
        assert_eq!((read[0].data["email"].as_str(), read[0].data["name"].as_str()), (Some("[redacted]"), Some("[redacted]")));
        assert!(matches!(log.append(write(data)).await, Err(EventLogError::Forgotten(o)) if o == owner), "no new key for the forgotten");
        let snapshot = Snapshot { stream_id: stream.clone(), snapshot_version: 1, version: 0, position: 1, state: json!({"name": "Ada"}) };
        log.save_snapshot(&snapshot).await.unwrap();
        assert_eq!(inner.snapshot(&stream).await.unwrap(), None, "no snapshot of a customer is kept");
    }

    #[test]
    fn a_forgotten_owner_reads_as_redacted_sealed_or_not() {
        let owner = Uuid::new_v4();
        let (stream, mut data) = registered(owner);
        let personal = personal_fields("CustomerRegistered").unwrap();
        assert_eq!(personal.owner_of(&stream, &data), Some(owner));
        open_fields(personal, owner, None, &mut data);
        assert_eq!(data["email"], "ada@example.com", "a plaintext field of an owner with no key is left as written");
        open_fields(personal, owner, Some(&KeyState::Forgotten), &mut data);
        assert_eq!(data["email"], "[redacted]");
        assert_eq!(data["name"], "[redacted]");
        assert!(data["shipping_address"].is_null(), "an absent address stays absent");
    }
}
