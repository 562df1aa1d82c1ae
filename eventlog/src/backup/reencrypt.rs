//! Bringing a log from before field encryption forward, inside the import's
//! transaction: its personal data encrypted under fresh keys, its email claims
//! keyed, and, since its bytes changed, its hashes and seals made afresh.

use std::collections::HashMap;

use domain::personal::{PERSONAL, personal_fields};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{BackupError, Context, PAGE, keys};
use crate::seal;
// The vault's field encryption and key storage: the only calls into it.
use crate::vault::{DataKey, KeyState, WrappingKey, decrypt_fields, encrypt_fields, key_from_storage, keyed_hash, new_key, stored_key};

/// A rewritten event: position, stream, schema version, data.
type Rewritten = (i64, String, i32, serde_json::Value);

/// Encrypts, once the file has checked out against its hashes, every personal
/// field the file held in the clear (v1 of the personal event types) under
/// a fresh key per customer (wrapped under `wrapping` when given), as v2;
/// moves email claims to values named by the keyed hash; then hashes and
/// seals the log afresh. Answers how many events it rewrote.
pub(super) async fn reencrypt(tx: &mut PgConnection, wrapping: Option<&WrappingKey>) -> Result<u64, BackupError> {
    let secret = keys::unique_values_secret(&mut *tx).await?;
    let rows: Vec<(i64, String, String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT global_position, stream_id, event_type, schema_version, data FROM events
          WHERE (event_type = ANY($1) AND schema_version < 2)
             OR (event_type IN ('UniqueValueClaimed', 'UniqueValueReleased') AND data->>'kind' = 'email'
                 AND data->>'value' NOT LIKE 'hmac-sha256:%')
          ORDER BY global_position",
    )
    .bind(PERSONAL.iter().map(|p| p.event_type).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .context("find personal data in the clear")?;
    // Keys the file brought (a log sealed in part) are kept.
    let known: Vec<(Uuid, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT customer_id, key FROM customer_keys").fetch_all(&mut *tx).await.context("read the customer keys")?;
    let known: HashMap<Uuid, KeyState> = known
        .into_iter()
        .map(|(id, key)| match key {
            Some(stored) => Ok((id, KeyState::Live(key_from_storage(wrapping, id, &stored)?))),
            None => Ok((id, KeyState::Forgotten)),
        })
        .collect::<Result<_, crate::EventLogError>>()
        .context("read the customer keys the file brought")?;
    let mut fresh: HashMap<Uuid, DataKey> = HashMap::new();
    let mut rewritten: Vec<Rewritten> = Vec::with_capacity(rows.len());
    let mut claims_moved = false;
    for (position, stream_id, event_type, version, mut data) in rows {
        if let Some(personal) = personal_fields(&event_type) {
            let owner = personal.owner_of(&stream_id, &data).ok_or(BackupError::NoOwner(position as u64))?;
            match known.get(&owner) {
                Some(KeyState::Forgotten) => decrypt_fields(personal, owner, known.get(&owner), &mut data),
                Some(KeyState::Live(key)) => encrypt_fields(personal, owner, key, &mut data),
                None => encrypt_fields(personal, owner, fresh.entry(owner).or_insert_with(new_key), &mut data),
            }
            rewritten.push((position, stream_id, 2, data));
        } else {
            // The claim keeps its stream (named after the address, which a
            // claim is also checked against from now on: see
            // `legacy_email_claims`), but no longer holds the address.
            let normalised = data["value"].as_str().unwrap_or_default().to_lowercase();
            data["value"] = serde_json::Value::String(keyed_hash(&secret, &normalised));
            rewritten.push((position, stream_id, version, data));
            claims_moved = true;
        }
    }
    rewrite(tx, &rewritten).await?;
    if claims_moved {
        keys::set_legacy_email_claims(tx, true).await?;
    }
    let owners: Vec<Uuid> = fresh.keys().copied().collect();
    let stored: Vec<Vec<u8>> = owners.iter().map(|o| stored_key(wrapping, *o, &fresh[o])).collect();
    sqlx::query("INSERT INTO customer_keys (customer_id, key) SELECT * FROM unnest($1::uuid[], $2::bytea[])")
        .bind(&owners)
        .bind(&stored)
        .execute(&mut *tx)
        .await
        .context("store the new keys")?;
    // The bytes changed: hash and seal them again.
    sqlx::query("DELETE FROM log_seals").execute(&mut *tx).await.context("drop the old seals")?;
    sqlx::query("DELETE FROM event_hashes").execute(&mut *tx).await.context("drop the old hashes")?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut *tx).await.context("count the events")?;
    if !seal::seal_within(tx, events as u64, 400).await.context("hash the rewritten log")? {
        return Err(BackupError::SealerBusy);
    }
    Ok(rewritten.len() as u64)
}

/// Writes the rewritten events over the imported ones. The log's
/// no-update rule is lifted for this transaction only (the change is
/// undone with it if anything fails): the one place events ever change.
async fn rewrite(tx: &mut PgConnection, rewritten: &[Rewritten]) -> Result<(), BackupError> {
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_no_update").execute(&mut *tx).await.context("lift the no-update rule")?;
    for chunk in rewritten.chunks(PAGE) {
        sqlx::query(
            "UPDATE events e SET stream_id = x.s, schema_version = x.v, data = x.d
               FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::jsonb[]) AS x(p, s, v, d)
              WHERE e.global_position = x.p",
        )
        .bind(chunk.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.2).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .context("rewrite events with their personal data sealed")?;
    }
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_no_update").execute(&mut *tx).await.context("restore the no-update rule")?;
    Ok(())
}
