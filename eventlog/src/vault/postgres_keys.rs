//! Data keys in PostgreSQL (`customer_keys`, migration 10009), wrapped
//! under a key encryption key when one is configured, so that a deleted
//! key left in the table's files or a backup is of no use without it.
//!
//! The key encryption key is configuration (`STOREKEEPER_VAULT_KEY`, parsed
//! by the binary) handed in as a `WrappingKey`; nothing here reads the
//! environment.

use std::collections::HashMap;
use std::str::FromStr;

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sqlx::PgPool;
use uuid::Uuid;

use super::keys::{DataKey, KeyState, KeyStore, new_key};
use crate::EventLogError;

/// The key encryption key every data key is wrapped under.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WrappingKey(DataKey);

impl WrappingKey {
    pub fn new(key: DataKey) -> Self {
        WrappingKey(key)
    }

    /// A fresh random one (tests).
    pub fn generate() -> Self {
        WrappingKey(new_key())
    }

    /// What the first process run with this key records, to hold the
    /// database to it.
    fn fingerprint(&self) -> Vec<u8> {
        super::keyed_hash(&self.0, "storekeeper key encryption key").into_bytes()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }
}

/// Never prints the key.
impl std::fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrappingKey(..)")
    }
}

/// A key encryption key that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key encryption key is 64 hex digits (a 256-bit key)")]
pub struct MalformedWrappingKey;

/// 64 hex digits, surrounding blanks ignored.
impl FromStr for WrappingKey {
    type Err = MalformedWrappingKey;
    fn from_str(hex_digits: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(hex_digits.trim()).map_err(|_| MalformedWrappingKey)?;
        DataKey::try_from(bytes.as_slice()).map(WrappingKey).map_err(|_| MalformedWrappingKey)
    }
}

/// Why a process may not use a database's keys with the key encryption
/// key it was given.
#[derive(Debug, thiserror::Error)]
pub enum WrappingKeyError {
    #[error("STOREKEEPER_VAULT_KEY is not the key this database's data keys are wrapped under")]
    NotTheKey,
    #[error("this database's data keys are wrapped: set STOREKEEPER_VAULT_KEY to the key they were wrapped under")]
    Missing,
    #[error("{doing}")]
    Database {
        doing: &'static str,
        #[source]
        error: sqlx::Error,
    },
}

fn database(doing: &'static str) -> impl FnOnce(sqlx::Error) -> WrappingKeyError {
    move |error| WrappingKeyError::Database { doing, error }
}

const WRAPPED_LEN: usize = 24 + 32 + 16;

/// Refuses to run on a database whose data keys are wrapped under another
/// key encryption key than `wrapping`, or under one when none is given
/// (and the reverse): either way, keys written from then on would be lost
/// or stored in the clear. The first process run with a key records its
/// fingerprint.
pub async fn check_wrapping_key(pool: &PgPool, wrapping: Option<WrappingKey>) -> Result<(), WrappingKeyError> {
    let recorded: Option<Vec<u8>> = sqlx::query_scalar("SELECT secret FROM vault_secrets WHERE name = 'key_encryption_key'")
        .fetch_optional(pool)
        .await
        .map_err(database("read the vault's settings"))?;
    match (recorded, wrapping.map(|k| k.fingerprint())) {
        (None, None) => Ok(()),
        (Some(recorded), Some(fingerprint)) if recorded == fingerprint => Ok(()),
        (Some(_), Some(_)) => Err(WrappingKeyError::NotTheKey),
        (Some(_), None) => Err(WrappingKeyError::Missing),
        (None, Some(fingerprint)) => {
            let unwrapped: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM customer_keys WHERE length(key) = 32)")
                .fetch_one(pool)
                .await
                .map_err(database("read the customer keys"))?;
            if unwrapped {
                tracing::warn!("customer keys stored before STOREKEEPER_VAULT_KEY was set stay unwrapped; new ones are wrapped");
            }
            sqlx::query("INSERT INTO vault_secrets (name, secret) VALUES ('key_encryption_key', $1) ON CONFLICT (name) DO NOTHING")
                .bind(fingerprint)
                .execute(pool)
                .await
                .map_err(database("record the key encryption key's fingerprint"))?;
            Box::pin(check_wrapping_key(pool, wrapping)).await
        }
    }
}

/// A data key as `customer_keys` stores it: wrapped under `wrapping` when
/// there is one (bound to its owner), as is otherwise.
pub fn stored_key(wrapping: Option<&WrappingKey>, owner: Uuid, key: &DataKey) -> Vec<u8> {
    let Some(kek) = wrapping else { return key.to_vec() };
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let wrapped = kek.cipher().encrypt(&nonce, Payload { msg: key, aad: owner.as_bytes() }).expect("encryption of a buffer does not fail");
    [nonce.as_slice(), &wrapped].concat()
}

/// The data key `customer_keys` holds for `owner`.
pub fn key_from_storage(wrapping: Option<&WrappingKey>, owner: Uuid, stored: &[u8]) -> Result<DataKey, EventLogError> {
    let unusable = |why: &str| EventLogError::Backend(format!("the data key of customer {owner} {why}").into());
    match (stored.len(), wrapping) {
        (32, _) => Ok(DataKey::try_from(stored).expect("32 bytes")),
        (WRAPPED_LEN, Some(kek)) => {
            let (nonce, wrapped) = stored.split_at(24);
            let plain = kek
                .cipher()
                .decrypt(XNonce::from_slice(nonce), Payload { msg: wrapped, aad: owner.as_bytes() })
                .map_err(|_| unusable("does not open with STOREKEEPER_VAULT_KEY (another key encryption key?)"))?;
            DataKey::try_from(plain.as_slice()).map_err(|_| unusable("is malformed"))
        }
        (WRAPPED_LEN, None) => Err(unusable("is wrapped, and STOREKEEPER_VAULT_KEY is not set")),
        _ => Err(unusable("is malformed")),
    }
}

/// Keys in the `customer_keys` table, beside the log.
pub struct PgKeyStore {
    pool: PgPool,
    wrapping: Option<WrappingKey>,
    /// The log is in this database's `events`, whose trigger deletes a
    /// key with the event that forgets its owner.
    log_beside: bool,
}

impl PgKeyStore {
    /// Keys stored as they are, beside a log in the same database.
    pub fn new(pool: PgPool) -> Self {
        Self::wrapped(pool, None)
    }

    /// Keys wrapped under `wrapping` when it is given, beside a log in the
    /// same database.
    pub fn wrapped(pool: PgPool, wrapping: Option<WrappingKey>) -> Self {
        PgKeyStore { pool, wrapping, log_beside: true }
    }

    /// For a log that is not in this database: no trigger forgets with
    /// the event, so the vault deletes the key itself.
    pub fn beside_another_log(self) -> Self {
        PgKeyStore { log_beside: false, ..self }
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
                    Some(stored) => KeyState::Live(key_from_storage(self.wrapping.as_ref(), owner, &stored)?),
                    None => KeyState::Forgotten,
                };
                Ok((owner, state))
            })
            .collect()
    }

    async fn create_keys(&self, owners: &[Uuid], fresh: &[DataKey]) -> Result<HashMap<Uuid, KeyState>, EventLogError> {
        let fresh: Vec<Vec<u8>> = owners.iter().zip(fresh).map(|(owner, k)| stored_key(self.wrapping.as_ref(), *owner, k)).collect();
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

    async fn legacy_email_claims(&self) -> Result<bool, EventLogError> {
        let flag: Option<bool> =
            sqlx::query_scalar("SELECT value FROM vault_settings WHERE name = 'legacy_email_claims'").fetch_optional(&self.pool).await?;
        Ok(flag.unwrap_or(false))
    }

    /// A trigger on `events` (migration 10009).
    fn forgets_with_the_event(&self) -> bool {
        self.log_beside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapping_key_is_64_hex_digits_and_never_printed() {
        let hex_digits = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key: WrappingKey = format!(" {hex_digits}\n").parse().unwrap();
        assert_eq!(format!("{key:?}"), "WrappingKey(..)");
        for malformed in ["not-hex", "0011", &format!("{hex_digits}00"), ""] {
            assert_eq!(malformed.parse::<WrappingKey>(), Err(MalformedWrappingKey), "{malformed:?}");
        }
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_wrapping_key_and_owner() {
        let (kek, owner, key) = (WrappingKey::generate(), Uuid::now_v7(), new_key());
        let stored = stored_key(Some(&kek), owner, &key);
        assert_eq!(stored.len(), WRAPPED_LEN);
        assert_eq!(key_from_storage(Some(&kek), owner, &stored).unwrap(), key);
        assert!(key_from_storage(Some(&WrappingKey::generate()), owner, &stored).is_err());
        assert!(key_from_storage(Some(&kek), Uuid::now_v7(), &stored).is_err());
        assert!(key_from_storage(None, owner, &stored).is_err());
        assert_eq!(key_from_storage(None, owner, &stored_key(None, owner, &key)).unwrap(), key);
    }
}
