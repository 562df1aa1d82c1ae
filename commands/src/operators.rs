//! Operators: the people who run storekeeper. Each signs in with an email
//! and a password (argon2id, in `operators`, outside the log) for an admin
//! token whose subject, `operator:<id>`, is the `actor` of every event
//! their commands append. Added, removed and listed from the command line.

use chrono::{DateTime, Utc};
use domain::Email;
use sqlx::PgPool;
use uuid::Uuid;

use crate::PasswordStore;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Invalid(String),
    #[error("an operator with this email exists already")]
    Exists,
    #[error(transparent)]
    Password(#[from] crate::PasswordError),
    #[error("operators: {0}")]
    Database(#[from] sqlx::Error),
}

/// One operator, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Operator {
    pub id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

impl Operator {
    /// The subject of its tokens, and so the actor of what it does.
    pub fn subject(id: Uuid) -> String {
        format!("operator:{id}")
    }
}

#[derive(Clone)]
pub struct Operators {
    pool: PgPool,
    passwords: PasswordStore,
}

impl Operators {
    pub fn new(pool: PgPool, passwords: PasswordStore) -> Self {
        Operators { pool, passwords }
    }

    /// Adds an operator; the password follows customers' rules (8 to 128
    /// characters, no control characters).
    pub async fn add(&self, email: &str, password: String) -> Result<Uuid, OperatorError> {
        let email = Email::parse(email).map_err(|e| OperatorError::Invalid(e.to_string()))?;
        let length = password.chars().count();
        if !(8..=128).contains(&length) || password.chars().any(char::is_control) {
            return Err(OperatorError::Invalid("the password must be 8 to 128 characters, none of them a control character".into()));
        }
        let phc = self.passwords.hash(password).await?;
        let id = Uuid::now_v7();
        let inserted =
            sqlx::query("INSERT INTO operators (id, email, email_key, phc) VALUES ($1, $2, $3, $4) ON CONFLICT (email_key) DO NOTHING")
                .bind(id)
                .bind(email.as_str())
                .bind(email.key())
                .bind(phc)
                .execute(&self.pool)
                .await?;
        if inserted.rows_affected() == 0 {
            return Err(OperatorError::Exists);
        }
        Ok(id)
    }

    /// Removes the operator with this email (its tokens already out run
    /// their 15 minutes); whether there was one.
    pub async fn remove(&self, email: &str) -> Result<bool, OperatorError> {
        let removed = sqlx::query("DELETE FROM operators WHERE email_key = $1").bind(email.to_lowercase()).execute(&self.pool).await?;
        Ok(removed.rows_affected() > 0)
    }

    pub async fn list(&self) -> Result<Vec<Operator>, OperatorError> {
        Ok(sqlx::query_as("SELECT id, email, created_at FROM operators ORDER BY email_key").fetch_all(&self.pool).await?)
    }

    /// The operator with this email, and whether the password is theirs.
    /// `None` when no operator has the email: the caller checks a
    /// customer's instead, so that both cost one password check.
    pub async fn sign_in(&self, email: &str, password: String) -> Result<Option<Option<Uuid>>, OperatorError> {
        let found: Option<(Uuid, String)> = sqlx::query_as("SELECT id, phc FROM operators WHERE email_key = $1")
            .bind(email.to_lowercase())
            .fetch_optional(&self.pool)
            .await?;
        let Some((id, phc)) = found else { return Ok(None) };
        Ok(Some(self.passwords.verify(Some(phc), password).await?.then_some(id)))
    }
}
