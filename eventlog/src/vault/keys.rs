//! Where customers' data keys live, apart from what is encrypted with
//! them: the vault asks a `KeyStore` for keys and never sees how they are
//! kept (in PostgreSQL, wrapped or not, or in memory for tests).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{KeyInit, OsRng};
use uuid::Uuid;

use crate::EventLogError;

/// A customer's data key.
pub type DataKey = [u8; 32];

/// A fresh random data key.
pub fn new_key() -> DataKey {
    XChaCha20Poly1305::generate_key(&mut OsRng).into()
}

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
    /// Deletes the owner's key and leaves a tombstone. Idempotent. Only the
    /// vault calls it, and only for a store that does not forget with the
    /// event (see `forgets_with_the_event`).
    async fn forget(&self, owner: Uuid) -> Result<(), EventLogError>;
    /// The secret keyed hashes of unique personal values are made with.
    async fn hash_secret(&self) -> Result<Vec<u8>, EventLogError>;
    /// Whether the log holds email claims named after the plain address
    /// (made before claims were keyed), which claims must also respect.
    async fn legacy_email_claims(&self) -> Result<bool, EventLogError> {
        Ok(false)
    }
    /// Whether appending the forget event deletes the key by itself (in
    /// the append's transaction), so that the vault need not.
    fn forgets_with_the_event(&self) -> bool {
        false
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
