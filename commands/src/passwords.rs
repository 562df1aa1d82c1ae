//! Sign-in passwords: argon2id hashes in `customer_passwords`, outside the
//! event log so that forgetting a customer can delete them. Hashing runs on
//! the blocking pool: each takes tens of milliseconds and 19 MiB by design.
//!
//! With the log in this database, its triggers keep the table in step with
//! the log, in the append's transaction: a password staged for a
//! registration moves in with the `CustomerRegistered` event it is staged
//! under, and `CustomerForgotten` deletes it. With the log kept elsewhere
//! no transaction spans both, and `accounts` does each after the append.

use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("password hashing: {0}")]
    Hashing(String),
    /// Every hashing turn was taken for longer than a client should wait.
    #[error("too many sign-ins at once")]
    Busy,
    /// The customer was forgotten while its password was being hashed.
    #[error("the customer is forgotten")]
    Forgotten,
}

/// How long a request waits for a hashing turn before it is turned away.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone)]
pub struct PasswordStore {
    pool: PgPool,
    /// The log is in this database's `events`, whose triggers register and
    /// forget passwords with the events.
    log_beside: bool,
    /// Hashes running at once, at most one per core: a flood of sign-ins
    /// queues here (for `TURN_WAIT` at most, then 503) instead of taking
    /// every core and 19 MiB apiece.
    hashing: Arc<Semaphore>,
}

/// A hash of no one's password, checked when there is no hash to check,
/// so that an unknown customer takes as long as a wrong password.
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| hash("a password nobody has").expect("hashing a fixed password"))
}

fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| PasswordError::Hashing(e.to_string()))
}

fn matches(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

impl PasswordStore {
    /// Passwords beside a log in the same database.
    pub fn new(pool: PgPool) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PasswordStore { pool, log_beside: true, hashing: Arc::new(Semaphore::new(cores)) }
    }

    /// Passwords in PostgreSQL, for a log that is not in that database.
    pub fn beside_another_log(pool: PgPool) -> Self {
        PasswordStore { log_beside: false, ..Self::new(pool) }
    }

    /// Whether the log's own transaction registers and forgets passwords
    /// (see the module docs).
    pub fn moves_with_the_log(&self) -> bool {
        self.log_beside
    }

    /// The PHC string of `password`, hashed on the blocking pool.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.blocking(move || hash(&password)).await?
    }

    /// Stages `phc` as the password of `customer`'s registration whose
    /// `CustomerRegistered` event will have the id `event_id`: it becomes
    /// the customer's password when that event is appended, and never
    /// otherwise. Stagings older than an hour (their append failed) are
    /// swept by `purge_expired_stagings`, hourly.
    pub async fn stage(&self, event_id: Uuid, customer: Uuid, phc: &str) -> Result<(), PasswordError> {
        sqlx::query("INSERT INTO staged_passwords (event_id, customer_id, phc) VALUES ($1, $2, $3)")
            .bind(event_id)
            .bind(customer)
            .bind(phc)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// For a log kept elsewhere, after the registration's event is
    /// appended: what the trigger does with a log in this database.
    /// A forget that landed since the append wins: the staging is dropped
    /// and nothing is stored (the key row, locked as in `set`, says so).
    pub async fn register_staged(&self, event_id: Uuid, customer: Uuid) -> Result<(), PasswordError> {
        let mut tx = self.pool.begin().await?;
        if forgotten(&mut tx, customer).await? {
            sqlx::query("DELETE FROM staged_passwords WHERE event_id = $1").bind(event_id).execute(&mut *tx).await?;
        } else {
            sqlx::query(
                "WITH staged AS (DELETE FROM staged_passwords WHERE event_id = $1 RETURNING customer_id, phc)
                 INSERT INTO customer_passwords (customer_id, phc) SELECT customer_id, phc FROM staged
                 ON CONFLICT (customer_id) DO UPDATE SET phc = EXCLUDED.phc, updated_at = now()",
            )
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes stagings older than an hour: registrations that never took
    /// effect (their event can no longer be appended by this build).
    pub async fn purge_expired_stagings(&self) -> Result<u64, PasswordError> {
        let deleted = sqlx::query("DELETE FROM staged_passwords WHERE staged_at < now() - interval '1 hour'").execute(&self.pool).await?;
        Ok(deleted.rows_affected())
    }

    /// Drops a staging whose registration failed.
    pub async fn discard_staged(&self, event_id: Uuid) -> Result<(), PasswordError> {
        sqlx::query("DELETE FROM staged_passwords WHERE event_id = $1").bind(event_id).execute(&self.pool).await?;
        Ok(())
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, PasswordError> {
        let _turn = tokio::time::timeout(TURN_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|e| PasswordError::Hashing(e.to_string()))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| PasswordError::Hashing(e.to_string()))
    }

    /// Sets (or replaces) the customer's password.
    pub async fn set(&self, customer: Uuid, password: String) -> Result<(), PasswordError> {
        let phc = self.hash(password).await?;
        // A forget may have landed during the hashing. The customer's key
        // row, locked here, is what a forget marks first: either it is
        // marked already and nothing is stored, or the forget waits for
        // this and then deletes what was stored.
        let mut tx = self.pool.begin().await?;
        if forgotten(&mut tx, customer).await? {
            return Err(PasswordError::Forgotten);
        }
        sqlx::query(
            "INSERT INTO customer_passwords (customer_id, phc) VALUES ($1, $2)
             ON CONFLICT (customer_id) DO UPDATE SET phc = EXCLUDED.phc, updated_at = now()",
        )
        .bind(customer)
        .bind(phc)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the customer's password, if it has one: for a log kept
    /// elsewhere (the trigger does it with a log in this database).
    pub async fn forget(&self, customer: Uuid) -> Result<(), PasswordError> {
        sqlx::query(
            "WITH staged AS (DELETE FROM staged_passwords WHERE customer_id = $1)
             DELETE FROM customer_passwords WHERE customer_id = $1",
        )
        .bind(customer)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether `password` is the customer's; `None` (no such customer)
    /// costs the same as a wrong password.
    pub async fn check(&self, customer: Option<Uuid>, password: String) -> Result<bool, PasswordError> {
        let stored: Option<String> = match customer {
            Some(id) => {
                sqlx::query_scalar("SELECT phc FROM customer_passwords WHERE customer_id = $1").bind(id).fetch_optional(&self.pool).await?
            }
            None => None,
        };
        self.verify(stored, password).await
    }

    /// Whether `password` is the one `stored` is the hash of; no hash
    /// costs the same as a wrong password.
    pub async fn verify(&self, stored: Option<String>, password: String) -> Result<bool, PasswordError> {
        self.blocking(move || match stored {
            Some(phc) => matches(&phc, &password),
            None => {
                let _ = matches(decoy(), &password);
                false
            }
        })
        .await
    }
}

/// Whether `customer` is forgotten, its key row locked until `tx` ends: the
/// row a forget marks first, so a password stored under this lock is either
/// refused or deleted by the forget that follows.
async fn forgotten(tx: &mut sqlx::PgConnection, customer: Uuid) -> Result<bool, sqlx::Error> {
    let forgotten: Option<bool> = sqlx::query_scalar("SELECT forgotten_at IS NOT NULL FROM customer_keys WHERE customer_id = $1 FOR SHARE")
        .bind(customer)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(forgotten == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_matches_its_password_only() {
        let phc = hash("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(matches(&phc, "correct horse battery"));
        assert!(!matches(&phc, "correct horse battery "));
        assert!(!matches(decoy(), "correct horse battery"));
    }
}
