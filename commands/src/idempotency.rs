//! The `Idempotency-Key` store: who has used which key for which request,
//! and the answer it got. The HTTP layer decides what a request and an
//! answer are; this module only keeps them, 24 hours, scoped to the caller.

use serde_json::Value;
use sqlx::PgPool;

/// What a key's owner may do with a request under that key.
#[derive(Debug)]
pub enum Begin {
    /// The key is new (or expired, or its first use died mid-way): run it.
    Proceed,
    /// The same request already ran: answer this again.
    Replay(Value),
    /// The key was used with a different request.
    Mismatch,
    /// The first request under this key is still running.
    InProgress,
}

#[derive(Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
}

impl IdempotencyStore {
    pub fn new(pool: PgPool) -> Self {
        IdempotencyStore { pool }
    }

    /// Claims `key` for the request whose fingerprint is `hash`.
    pub async fn begin(&self, principal: &str, key: &str, hash: &[u8]) -> Result<Begin, sqlx::Error> {
        // A new key, an expired one, or one whose first request died mid-way
        // (no response after ten seconds) starts afresh. Taking over a key
        // whose first request is in fact still running is safe: the event
        // log's receipt lets only one of them append.
        let claimed: Option<bool> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (principal, key, request_hash) VALUES ($1, $2, $3)
             ON CONFLICT (principal, key) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, response = NULL, created_at = now()
              WHERE idempotency_keys.created_at < now() - interval '24 hours'
                 OR (idempotency_keys.response IS NULL
                     AND idempotency_keys.request_hash = EXCLUDED.request_hash
                     AND idempotency_keys.created_at < now() - interval '10 seconds')
             RETURNING true",
        )
        .bind(principal)
        .bind(key)
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(Begin::Proceed);
        }
        let row: Option<(Vec<u8>, Option<Value>)> =
            sqlx::query_as("SELECT request_hash, response FROM idempotency_keys WHERE principal = $1 AND key = $2")
                .bind(principal)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => Begin::InProgress,
            Some((stored, _)) if stored != hash => Begin::Mismatch,
            Some((_, Some(response))) => Begin::Replay(response),
            Some((_, None)) => Begin::InProgress,
        })
    }

    /// Releases a key whose request failed: nothing was appended, so the
    /// client may fix the request and retry under the same key.
    pub async fn abandon(&self, principal: &str, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND response IS NULL")
            .bind(principal)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Remembers the answer of a request that took effect.
    pub async fn complete(&self, principal: &str, key: &str, response: &Value) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE principal = $1 AND key = $2")
            .bind(principal)
            .bind(key)
            .bind(response)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets keys older than 24 hours, and the log's receipts with them.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        let keys = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(&self.pool)
            .await?
            .rows_affected();
        eventlog::purge_receipts(&self.pool).await?;
        Ok(keys)
    }
}
