//! The vault's lines of an export: the secret emails are claimed under and
//! every customer's data key, written as stored (wrapped keys stay
//! wrapped) and restored as they were.

use std::io::Write;

use futures::TryStreamExt;
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::format::{CustomerKey, KeyLine, VAULT, VaultLine, VaultSecret, write_line};
use super::{BackupError, Context};

/// Records whether the log holds email claims named after the plain
/// address.
pub(super) async fn set_legacy_email_claims(tx: &mut PgConnection, value: bool) -> Result<(), BackupError> {
    sqlx::query("UPDATE vault_settings SET value = $1 WHERE name = 'legacy_email_claims'")
        .bind(value)
        .execute(tx)
        .await
        .context("record whether the log holds email claims by plain address")?;
    Ok(())
}

/// The secret unique values are claimed under.
pub(super) async fn unique_values_secret(conn: impl PgExecutor<'_>) -> Result<Vec<u8>, BackupError> {
    sqlx::query_scalar("SELECT secret FROM vault_secrets WHERE name = 'unique_values'")
        .fetch_one(conn)
        .await
        .context("read the vault's secret")
}

/// Writes the vault's lines: its secret, then every customer key in order.
pub(super) async fn write(pool: &PgPool, out: &mut dyn Write) -> Result<(), BackupError> {
    let secret = unique_values_secret(pool).await?;
    let legacy_email_claims: bool = sqlx::query_scalar("SELECT value FROM vault_settings WHERE name = 'legacy_email_claims'")
        .fetch_one(pool)
        .await
        .context("read the vault's settings")?;
    let vault = VaultLine { vault: VaultSecret { unique_values_secret: hex::encode(secret), legacy_email_claims } };
    write_line(out, &vault, "write the vault")?;
    let mut rows =
        sqlx::query_as::<_, (uuid::Uuid, Option<Vec<u8>>)>("SELECT customer_id, key FROM customer_keys ORDER BY customer_id").fetch(pool);
    while let Some((customer_id, key)) = rows.try_next().await.context("read the customer keys")? {
        write_line(out, &KeyLine { customer_key: CustomerKey { customer_id, key: key.map(hex::encode) } }, "write a customer key")?;
    }
    Ok(())
}

/// Restores one vault line (`line`, line `number` of the file) into the
/// import's transaction.
pub(super) async fn restore(tx: &mut PgConnection, number: usize, line: &str) -> Result<(), BackupError> {
    let unreadable = |what| move |source| BackupError::Unreadable { line: number, what, source };
    if line.starts_with(VAULT) {
        let parsed: VaultLine = serde_json::from_str(line).map_err(unreadable("not a vault line"))?;
        let secret = hex::decode(&parsed.vault.unique_values_secret)
            .ok()
            .filter(|s| s.len() >= 32)
            .ok_or(BackupError::BadKey { line: number, why: "the vault's secret is not 32 bytes or more in hex" })?;
        sqlx::query("UPDATE vault_secrets SET secret = $1 WHERE name = 'unique_values'")
            .bind(secret)
            .execute(&mut *tx)
            .await
            .context("restore the vault's secret")?;
        return set_legacy_email_claims(tx, parsed.vault.legacy_email_claims).await;
    }
    let parsed: KeyLine = serde_json::from_str(line).map_err(unreadable("not a customer key line"))?;
    let key = match parsed.customer_key.key {
        Some(hex_key) => Some(
            hex::decode(hex_key)
                .ok()
                .filter(|k| k.len() == 32 || k.len() == 72)
                .ok_or(BackupError::BadKey { line: number, why: "a customer key is not 32 bytes (or 72, wrapped) in hex" })?,
        ),
        None => None,
    };
    // A tombstone already there (its `CustomerForgotten` was imported
    // above) stays one.
    sqlx::query(
        "INSERT INTO customer_keys (customer_id, key, forgotten_at) VALUES ($1, $2, CASE WHEN $2 IS NULL THEN now() END)
         ON CONFLICT (customer_id) DO NOTHING",
    )
    .bind(parsed.customer_key.customer_id)
    .bind(key)
    .execute(&mut *tx)
    .await
    .map_err(|source| BackupError::Database { what: format!("line {number}: the customer key was refused"), source })?;
    Ok(())
}
