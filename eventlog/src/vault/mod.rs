//! Crypto-shredding: personal data is stored encrypted under a key per
//! customer, so deleting the key forgets it wherever the event went.
//!
//! The log, its hashes and seals, Kafka and exports only ever hold
//! ciphertext; readers see personal fields decrypted, or redacted once the
//! key is gone. `VaultedLog` puts this at the port: it encrypts what is
//! appended and decrypts what is read, so every reader that goes through
//! it (aggregate loads, projections, rebuilds, verify, history, time
//! travel) gets the same answer. What must see the stored bytes (the
//! relay, the sealer, export) takes the inner log instead. Which fields
//! are personal, whose they are and which event forgets a customer is the
//! domain's to say (`domain::personal`).
//!
//! Split by what changes apart: where keys are kept (`keys`, and
//! `postgres_keys` with the key encryption key), what is done with one
//! key to one event (`fields`), and the decorator on the port (`log`).
//! `Vault` ties a key store to the field encryption.
//!
//! A forgotten owner's key row stays, empty, as a tombstone: no key is
//! ever made for it again, and even fields written in the clear (logs
//! from before encryption) read as redacted. Exactly one place deletes a
//! key: for keys beside a log in PostgreSQL, the trigger on the forget
//! event, in the append's transaction; for any other store, this vault,
//! once the forget is appended, or when it reads a forget whose key is
//! still there (the appending process stopped in between).

mod fields;
mod keys;
mod log;
mod postgres_keys;

use std::collections::HashSet;
use std::sync::Arc;

use domain::personal::{PersonalFields, forgotten_customer, personal_fields};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::OnceCell;
use uuid::Uuid;

pub use fields::{decrypt_fields, encrypt_fields};
pub use keys::{DataKey, KeyState, KeyStore, MemoryKeyStore, new_key};
pub use log::{VaultedLog, in_memory_log, opening, postgres_log};
pub use postgres_keys::{
    MalformedWrappingKey, PgKeyStore, WrappingKey, WrappingKeyError, check_wrapping_key, key_from_storage, stored_key,
};

use crate::{EventLogError, RecordedEvent, StreamWrite};

/// Encrypts and decrypts personal fields with the store's keys.
pub struct Vault {
    store: Arc<dyn KeyStore>,
    secret: OnceCell<Vec<u8>>,
    legacy: OnceCell<bool>,
}

impl Vault {
    pub fn new(store: Arc<dyn KeyStore>) -> Self {
        Vault { store, secret: OnceCell::new(), legacy: OnceCell::new() }
    }

    /// Keys in PostgreSQL beside the log, wrapped under `wrapping` when it
    /// is given.
    pub fn postgres(pool: PgPool, wrapping: Option<WrappingKey>) -> Arc<Vault> {
        Arc::new(Vault::new(Arc::new(PgKeyStore::wrapped(pool, wrapping))))
    }

    /// Keys in PostgreSQL, for a log that is not in that database.
    pub fn postgres_beside_another_log(pool: PgPool, wrapping: Option<WrappingKey>) -> Arc<Vault> {
        Arc::new(Vault::new(Arc::new(PgKeyStore::wrapped(pool, wrapping).beside_another_log())))
    }

    pub fn in_memory() -> Arc<Vault> {
        Arc::new(Vault::new(Arc::new(MemoryKeyStore::default())))
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

    /// Encrypts the personal fields of current-version events in `writes`,
    /// making a key for each owner that has none. Refuses to write personal
    /// data of a forgotten owner.
    pub async fn encrypt(&self, writes: &mut [StreamWrite]) -> Result<(), EventLogError> {
        let mut owners = HashSet::new();
        for write in writes.iter() {
            for event in &write.events {
                if let Some((_, owner)) = encryptable(&write.stream_id, &event.event_type, event.schema_version, &event.data) {
                    owners.insert(owner);
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
                let Some((personal, owner)) = encryptable(&write.stream_id, &event.event_type, event.schema_version, &event.data) else {
                    continue;
                };
                let Some(KeyState::Live(key)) = keys.get(&owner) else {
                    return Err(EventLogError::Forgotten(owner));
                };
                encrypt_fields(personal, owner, key, &mut event.data);
            }
        }
        Ok(())
    }

    /// Decrypts the personal fields of `events` in place: with the owner's
    /// key when it is live, as redacted when the owner is forgotten (or an
    /// encrypted field does not decrypt). One read of the store per call.
    ///
    /// A forget among `events` whose key is still there (for a store that
    /// does not forget with the event, the appending process stopped
    /// before deleting it) has its key deleted now, before anything is
    /// decrypted with it.
    pub async fn decrypt(&self, events: &mut [RecordedEvent]) -> Result<(), EventLogError> {
        let forgets: HashSet<Uuid> = if self.store.forgets_with_the_event() {
            HashSet::new()
        } else {
            events.iter().filter_map(|e| forgotten_customer(&e.stream_id, &e.event_type)).collect()
        };
        let mut owners: HashSet<Uuid> =
            events.iter().filter_map(|e| personal_fields(&e.event_type)?.owner_of(&e.stream_id, &e.data)).collect();
        owners.extend(&forgets);
        if owners.is_empty() {
            return Ok(());
        }
        let mut keys = self.store.keys(&owners.into_iter().collect::<Vec<_>>()).await?;
        let left: Vec<Uuid> = forgets.into_iter().filter(|o| keys.get(o) != Some(&KeyState::Forgotten)).collect();
        if !left.is_empty() {
            tracing::warn!(customers = left.len(), "forgotten customers whose keys were left behind; deleting them now");
            self.delete_keys(&left).await?;
            keys.extend(left.into_iter().map(|o| (o, KeyState::Forgotten)));
        }
        for event in events.iter_mut() {
            let Some(personal) = personal_fields(&event.event_type) else { continue };
            let Some(owner) = personal.owner_of(&event.stream_id, &event.data) else { continue };
            decrypt_fields(personal, owner, keys.get(&owner), &mut event.data);
        }
        Ok(())
    }

    /// The customers whose forget is among `writes` and whose keys this
    /// vault deletes once they are appended: none when the store forgets
    /// with the event.
    fn forgotten_by(&self, writes: &[StreamWrite]) -> Vec<Uuid> {
        if self.store.forgets_with_the_event() {
            return Vec::new();
        }
        writes.iter().flat_map(|w| w.events.iter().filter_map(|e| forgotten_customer(&w.stream_id, &e.event_type))).collect()
    }

    /// Deletes the customers' keys: what was encrypted with them is
    /// unreadable from now on, and nothing is encrypted for them again.
    /// The one place a key is deleted for a store that does not forget
    /// with the event (see the module docs).
    async fn delete_keys(&self, owners: &[Uuid]) -> Result<(), EventLogError> {
        for owner in owners {
            self.store.forget(*owner).await?;
        }
        Ok(())
    }
}

/// The personal fields and owner of an event the vault encrypts: current
/// versions only, so that what is stored as v1 stays in v1's shape.
fn encryptable(stream_id: &str, event_type: &str, schema_version: u32, data: &Value) -> Option<(&'static PersonalFields, Uuid)> {
    let personal = personal_fields(event_type)?;
    if schema_version < 2 {
        return None;
    }
    Some((personal, personal.owner_of(stream_id, data)?))
}

/// `hmac-sha256:<hex>` of `normalised` under `secret`.
pub fn keyed_hash(secret: &[u8], normalised: &str) -> String {
    format!("hmac-sha256:{}", hex::encode(crate::hmac_sha256(secret, &[normalised.as_bytes()])))
}
