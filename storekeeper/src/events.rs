//! `storekeeper events export|import`: the log as JSON Lines, one envelope
//! per line in global order, for backups and moving to another database.
//!
//! Export seals what is final first and writes the sealed events, each
//! with its stream hash (`eventlog::seal`), then an end line: how many
//! events, up to which position, and the seal over their hashes (the log's
//! own seal there). Import restores into an empty log only, in one
//! transaction: every event exactly as exported (position and recording
//! time included, so exporting again gives the same bytes), hashed afresh
//! on the way in and compared with the file's hashes, and the whole file
//! compared with its end line. A line whose hash does not match, a line or
//! stream taken out, a file cut short, a gap in a stream or positions out
//! of order, and nothing is imported. Someone who rewrites hashes and end
//! line together is only caught by a seal kept elsewhere.
//!
//! Before the end line come the vault's lines: the secret that emails are
//! claimed under, and each customer's data key (a forgotten customer's as
//! a tombstone, with no key), without which the sealed personal fields of
//! the restored log would never open again. They are not covered by the
//! seal; an export holds every live customer's key, so keep it as you
//! would keep the database.
//!
//! `import --reencrypt` is how a log written before personal data was
//! sealed moves forward: export the old log, import into a new empty one
//! with the flag, and the personal fields arrive sealed under fresh keys.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use eventlog::{EventLog, RecordedEvent};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// Events per read while exporting, and per insert while importing.
const PAGE: usize = 2000;

/// One line of an export.
#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    event: RecordedEvent,
    /// Hex of the event's stream hash; absent when it had none (exported
    /// before hashes existed, or newer than the sealer had reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_hash: Option<String>,
}

/// The last line of an export: how many events it holds, up to which
/// position, and the seal over their hashes in order (the log's own seal
/// at that position, worth comparing with one kept elsewhere).
#[derive(Serialize, Deserialize)]
struct End {
    events: u64,
    up_to: u64,
    seal: String,
}

#[derive(Serialize, Deserialize)]
struct EndLine {
    end_of_export: End,
}

/// The vault's secret, for keyed hashes of unique values: without it, an
/// imported log would claim emails under other names and let one be taken
/// twice.
#[derive(Serialize, Deserialize)]
struct VaultLine {
    vault: VaultSecret,
}

#[derive(Serialize, Deserialize)]
struct VaultSecret {
    unique_values_secret: String,
    /// Whether the log holds email claims named after the plain address.
    #[serde(default)]
    legacy_email_claims: bool,
}

/// A customer's data key (hex), or `null` for a forgotten customer: the
/// log's sealed fields mean nothing without them. A forgotten customer's
/// key is in no export made after the forget.
#[derive(Serialize, Deserialize)]
struct KeyLine {
    customer_key: CustomerKey,
}

#[derive(Serialize, Deserialize)]
struct CustomerKey {
    customer_id: uuid::Uuid,
    key: Option<String>,
}

async fn set_legacy_email_claims(tx: &mut sqlx::PgConnection, value: bool) -> Result<()> {
    sqlx::query("UPDATE vault_settings SET value = $1 WHERE name = 'legacy_email_claims'")
        .bind(value)
        .execute(tx)
        .await
        .context("record whether the log holds email claims by plain address")?;
    Ok(())
}

/// Writes the vault's lines: its secret, then every customer key in order.
async fn write_vault(pool: &PgPool, out: &mut dyn Write) -> Result<()> {
    let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM vault_secrets WHERE name = 'unique_values'")
        .fetch_one(pool)
        .await
        .context("read the vault's secret")?;
    let legacy_email_claims: bool = sqlx::query_scalar("SELECT value FROM vault_settings WHERE name = 'legacy_email_claims'")
        .fetch_one(pool)
        .await
        .context("read the vault's settings")?;
    serde_json::to_writer(&mut *out, &VaultLine { vault: VaultSecret { unique_values_secret: hex::encode(secret), legacy_email_claims } })
        .context("write the vault")?;
    out.write_all(b"\n").context("write the vault")?;
    let mut rows =
        sqlx::query_as::<_, (uuid::Uuid, Option<Vec<u8>>)>("SELECT customer_id, key FROM customer_keys ORDER BY customer_id").fetch(pool);
    while let Some((customer_id, key)) = futures::TryStreamExt::try_next(&mut rows).await.context("read the customer keys")? {
        serde_json::to_writer(&mut *out, &KeyLine { customer_key: CustomerKey { customer_id, key: key.map(hex::encode) } })
            .context("write a customer key")?;
        out.write_all(b"\n").context("write a customer key")?;
    }
    Ok(())
}

/// Restores one vault line into the import's transaction.
async fn import_vault_line(tx: &mut sqlx::PgConnection, number: usize, line: &str) -> Result<()> {
    if line.starts_with("{\"vault\"") {
        let parsed: VaultLine = serde_json::from_str(line).with_context(|| format!("line {number}: not a vault line"))?;
        let secret = hex::decode(&parsed.vault.unique_values_secret)
            .ok()
            .filter(|s| s.len() >= 32)
            .with_context(|| format!("line {number}: the vault's secret is not 32 bytes or more in hex"))?;
        sqlx::query("UPDATE vault_secrets SET secret = $1 WHERE name = 'unique_values'")
            .bind(secret)
            .execute(&mut *tx)
            .await
            .context("restore the vault's secret")?;
        set_legacy_email_claims(tx, parsed.vault.legacy_email_claims).await?;
        return Ok(());
    }
    let parsed: KeyLine = serde_json::from_str(line).with_context(|| format!("line {number}: not a customer key line"))?;
    let key = match parsed.customer_key.key {
        Some(hex_key) => Some(
            hex::decode(hex_key)
                .ok()
                .filter(|k| k.len() == 32 || k.len() == 72)
                .with_context(|| format!("line {number}: a customer key is not 32 bytes (or 72, wrapped) in hex"))?,
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
    .with_context(|| format!("line {number}: the customer key was refused"))?;
    Ok(())
}

/// The chain of hashes a seal is: `sha256(previous || hash)` in order.
#[derive(Default)]
struct Chain(Vec<u8>);

impl Chain {
    fn add(&mut self, hash: &[u8]) {
        use sha2::Digest;
        let mut next = sha2::Sha256::new();
        next.update(&self.0);
        next.update(hash);
        self.0 = next.finalize().to_vec();
    }
}

/// What an import brought in.
pub struct Imported {
    /// Each checked against its hash.
    pub events: u64,
    /// The seal over them, from the file's end line (or, re-encrypted, the
    /// new log's own).
    pub seal: String,
    /// Events whose personal data was sealed on the way in.
    pub reencrypted: Option<u64>,
}

/// Writes every sealed event to `out`, then the end line; answers how
/// many events. Events newer than the seal it makes first are left out.
pub async fn export(log: &dyn EventLog, pool: &PgPool, out: &mut dyn Write) -> Result<u64> {
    seal_what_is_final(pool).await?;
    let sealed_to: i64 =
        sqlx::query_scalar("SELECT coalesce(max(up_to), 0) FROM log_seals").fetch_one(pool).await.context("read the log's seals")?;
    let sealed_to = sealed_to as u64;
    let mut chain = Chain::default();
    let mut after = 0;
    let mut written = 0;
    while after < sealed_to {
        let mut page = log.read_all(after, PAGE).await.context("read the log")?;
        page.retain(|e| e.global_position <= sealed_to);
        let Some(last) = page.last() else { break };
        after = last.global_position;
        let positions: Vec<i64> = page.iter().map(|e| e.global_position as i64).collect();
        let hashes: HashMap<i64, Vec<u8>> =
            sqlx::query_as("SELECT global_position, stream_hash FROM event_hashes WHERE global_position = ANY($1)")
                .bind(&positions)
                .fetch_all(pool)
                .await
                .context("read the log's hashes")?
                .into_iter()
                .collect();
        for event in page {
            let Some(hash) = hashes.get(&(event.global_position as i64)) else {
                bail!("the event at position {} is sealed but has no hash: run `storekeeper events verify`", event.global_position);
            };
            chain.add(hash);
            serde_json::to_writer(&mut *out, &Line { event, stream_hash: Some(hex::encode(hash)) }).context("write an event")?;
            out.write_all(b"\n").context("write an event")?;
        }
        written += positions.len() as u64;
    }
    write_vault(pool, out).await?;
    let end = End { events: written, up_to: after, seal: hex::encode(&chain.0) };
    serde_json::to_writer(&mut *out, &EndLine { end_of_export: end }).context("write the end line")?;
    out.write_all(b"\n").context("write the end line")?;
    out.flush().context("flush the export")?;
    Ok(written)
}

/// Seals the log up to its frontier, waiting a little for a sealer of
/// another process that is at it already.
async fn seal_what_is_final(pool: &PgPool) -> Result<()> {
    for _ in 0..100 {
        eventlog::seal::seal(pool, i32::MAX).await.context("seal the log")?;
        let done: bool = sqlx::query_scalar("SELECT coalesce((SELECT max(up_to) FROM log_seals), 0) >= events_frontier()")
            .fetch_one(pool)
            .await
            .context("read the log's seals")?;
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another sealer holds on: the newest events go without their hashes.
    Ok(())
}

/// What import does with personal data written in the clear (by a log
/// from before sealing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// Keep every event as exported, byte for byte.
    Keep,
    /// Encrypt it under fresh keys per customer (stored wrapped under the
    /// key encryption key when one is given) and claim emails by keyed
    /// hash (see `reencrypt`): the supported way to bring such a log
    /// forward.
    Reencrypt(Option<eventlog::vault::WrappingKey>),
}

/// Restores the events of `input` into an empty log.
pub async fn import(pool: &PgPool, input: impl BufRead, plaintext: Plaintext) -> Result<Imported> {
    let imported = import_all(pool, input, plaintext).await;
    if imported.is_err() {
        // The position sequence ignores the rollback: put it back for the
        // log that stayed empty.
        sqlx::query("SELECT setval('events_position_seq', 1, false) WHERE NOT EXISTS (SELECT FROM events)")
            .execute(pool)
            .await
            .context("reset the position sequence after the refused import")?;
    }
    imported
}

async fn import_all(pool: &PgPool, input: impl BufRead, plaintext: Plaintext) -> Result<Imported> {
    let mut tx = pool.begin().await.context("begin the import")?;
    // No append starts meanwhile (reads go on), and none is in the log.
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut *tx).await.context("lock the log")?;
    let occupied: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM events)").fetch_one(&mut *tx).await.context("inspect the log")?;
    if occupied {
        bail!("the event log is not empty: import restores into an empty database only");
    }
    let mut check = Check::default();
    let mut page: Vec<(usize, RecordedEvent, Vec<u8>)> = Vec::with_capacity(PAGE);
    let mut imported = Imported { events: 0, seal: String::new(), reencrypted: None };
    let mut chain = Chain::default();
    let mut end: Option<(usize, End)> = None;
    for (number, line) in input.lines().enumerate() {
        let number = number + 1;
        let line = line.context("read the input")?;
        if line.trim().is_empty() {
            continue;
        }
        if let Some((at, _)) = &end {
            bail!("line {number}: the file goes on after its end line (line {at}): the input is not an export");
        }
        if line.starts_with("{\"vault\"") || line.starts_with("{\"customer_key\"") {
            import_vault_line(&mut tx, number, &line).await?;
            continue;
        }
        if line.starts_with("{\"end_of_export\"") {
            let parsed: EndLine = serde_json::from_str(&line).with_context(|| format!("line {number}: not an end line"))?;
            end = Some((number, parsed.end_of_export));
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).with_context(|| format!("line {number}: not an event envelope"))?;
        check.next(number, &parsed.event)?;
        let hash = parsed.stream_hash.as_deref().and_then(|h| hex::decode(h).ok()).filter(|h| h.len() == 32);
        let Some(hash) = hash else { bail!("line {number}: no stream_hash (a SHA-256 in hex): the input is not an export") };
        chain.add(&hash);
        page.push((number, parsed.event, hash));
        if page.len() == PAGE {
            insert(&mut tx, std::mem::take(&mut page), &mut imported).await?;
        }
    }
    insert(&mut tx, page, &mut imported).await?;
    // The end line says what the whole file held: lines or streams taken
    // out, or a file cut short, no longer add up to it.
    let Some((_, end)) = end else { bail!("the file has no end line: it was cut short, or is not an export (nothing was imported)") };
    if end.events != imported.events || end.up_to != check.position || end.seal != hex::encode(&chain.0) {
        bail!(
            "the file's events do not add up to its end line ({} events up to position {}): lines were taken out or changed (nothing was imported)",
            end.events,
            end.up_to
        );
    }
    imported.seal = end.seal;
    // An export from before claims were keyed carries no vault line to say so.
    let plain_claims: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM events WHERE event_type = 'UniqueValueClaimed' AND data->>'kind' = 'email'
                                              AND data->>'value' NOT LIKE 'hmac-sha256:%')",
    )
    .fetch_one(&mut *tx)
    .await
    .context("look for email claims by plain address")?;
    if plain_claims {
        set_legacy_email_claims(&mut tx, true).await?;
    }
    if let Plaintext::Reencrypt(wrapping) = plaintext {
        imported.reencrypted = Some(reencrypt(&mut tx, wrapping).await?);
        imported.seal = sqlx::query_scalar("SELECT encode(seal, 'hex') FROM log_seals ORDER BY up_to DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .context("read the new seal")?
            .unwrap_or_default();
    }
    tx.commit().await.context("commit the import")?;
    if imported.reencrypted.is_some() {
        // The rows as first inserted, in the clear, are dead but still in
        // the table's files until it is rewritten.
        sqlx::query("VACUUM FULL events").execute(pool).await.context("rewrite the events table without its plaintext row versions")?;
    }
    Ok(imported)
}

/// Seals, inside the import's transaction and once the file has checked
/// out against its hashes, every personal field the file held in the
/// clear (v1 of the personal event types) under a fresh key per customer,
/// as v2; moves email claims to streams named by the keyed hash; then
/// hashes and seals the log afresh, since its bytes changed. Answers how
/// many events it rewrote. The log's no-update rule is lifted for this
/// transaction only (the change is undone with it if anything fails).
async fn reencrypt(tx: &mut sqlx::PgConnection, wrapping: Option<eventlog::vault::WrappingKey>) -> Result<u64> {
    use domain::personal::personal_fields;
    use eventlog::vault::{encrypt_fields, keyed_hash, new_key};

    let secret: Vec<u8> = sqlx::query_scalar("SELECT secret FROM vault_secrets WHERE name = 'unique_values'")
        .fetch_one(&mut *tx)
        .await
        .context("read the vault's secret")?;
    let rows: Vec<(i64, String, String, i32, serde_json::Value)> = sqlx::query_as(
        "SELECT global_position, stream_id, event_type, schema_version, data FROM events
          WHERE (event_type = ANY($1) AND schema_version < 2)
             OR (event_type IN ('UniqueValueClaimed', 'UniqueValueReleased') AND data->>'kind' = 'email'
                 AND data->>'value' NOT LIKE 'hmac-sha256:%')
          ORDER BY global_position",
    )
    .bind(domain::personal::PERSONAL.iter().map(|p| p.event_type).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await
    .context("find personal data in the clear")?;
    // Keys the file brought (a log sealed in part) are kept.
    let known: Vec<(uuid::Uuid, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT customer_id, key FROM customer_keys").fetch_all(&mut *tx).await.context("read the customer keys")?;
    let known: HashMap<uuid::Uuid, eventlog::vault::KeyState> = known
        .into_iter()
        .map(|(id, key)| match key {
            Some(stored) => Ok((id, eventlog::vault::KeyState::Live(eventlog::vault::key_from_storage(wrapping.as_ref(), id, &stored)?))),
            None => Ok((id, eventlog::vault::KeyState::Forgotten)),
        })
        .collect::<Result<_, eventlog::EventLogError>>()
        .context("read the customer keys the file brought")?;
    let mut keys: HashMap<uuid::Uuid, eventlog::vault::DataKey> = HashMap::new();
    let mut rewritten: Vec<(i64, String, i32, serde_json::Value)> = Vec::with_capacity(rows.len());
    for (position, stream_id, event_type, version, mut data) in rows {
        if let Some(personal) = personal_fields(&event_type) {
            let Some(owner) = personal.owner_of(&stream_id, &data) else {
                bail!("the event at position {position} names no customer: its personal data cannot be sealed");
            };
            match known.get(&owner) {
                Some(eventlog::vault::KeyState::Forgotten) => {
                    eventlog::vault::decrypt_fields(personal, owner, known.get(&owner), &mut data)
                }
                Some(eventlog::vault::KeyState::Live(key)) => encrypt_fields(personal, owner, key, &mut data),
                None => encrypt_fields(personal, owner, keys.entry(owner).or_insert_with(new_key), &mut data),
            }
            rewritten.push((position, stream_id, 2, data));
        } else {
            // The claim keeps its stream (named after the address, which a
            // claim is also checked against from now on: see
            // `legacy_email_claims`), but no longer holds the address.
            let normalised = data["value"].as_str().unwrap_or_default().to_lowercase();
            data["value"] = serde_json::Value::String(keyed_hash(&secret, &normalised));
            rewritten.push((position, stream_id, version, data));
        }
    }
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
    if rewritten.iter().any(|r| r.1.starts_with("claim-")) {
        set_legacy_email_claims(&mut *tx, true).await?;
    }
    let owners: Vec<uuid::Uuid> = keys.keys().copied().collect();
    let fresh: Vec<Vec<u8>> = owners.iter().map(|o| eventlog::vault::stored_key(wrapping.as_ref(), *o, &keys[o])).collect();
    sqlx::query("INSERT INTO customer_keys (customer_id, key) SELECT * FROM unnest($1::uuid[], $2::bytea[])")
        .bind(&owners)
        .bind(&fresh)
        .execute(&mut *tx)
        .await
        .context("store the new keys")?;
    // The bytes changed: hash and seal them again.
    sqlx::query("DELETE FROM log_seals").execute(&mut *tx).await.context("drop the old seals")?;
    sqlx::query("DELETE FROM event_hashes").execute(&mut *tx).await.context("drop the old hashes")?;
    for _ in 0..400 {
        let n: i64 = sqlx::query_scalar("SELECT seal_log(NULL)").fetch_one(&mut *tx).await.context("hash the rewritten log")?;
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM events e WHERE NOT EXISTS (SELECT FROM event_hashes h WHERE h.global_position = e.global_position))")
            .fetch_one(&mut *tx)
            .await
            .context("check the hashes")?;
        if !left {
            return Ok(rewritten.len() as u64);
        }
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    bail!("another process keeps sealing this database's log: stop every storekeeper process on it and import again")
}

/// What the file must hold to be an export: positions rising, and each
/// stream's versions running on from 0 without a gap.
#[derive(Default)]
struct Check {
    position: u64,
    next_version: HashMap<String, u64>,
}

impl Check {
    fn next(&mut self, number: usize, e: &RecordedEvent) -> Result<()> {
        if e.global_position > i64::MAX as u64 || e.stream_version > i64::MAX as u64 || e.schema_version > i32::MAX as u32 {
            bail!("line {number}: a position, stream version or schema version out of range: the input is not an export");
        }
        if e.global_position <= self.position {
            bail!("line {number}: position {} does not follow {}: the input is not an export", e.global_position, self.position);
        }
        self.position = e.global_position;
        if e.stream_id.is_empty() || e.stream_id.chars().any(char::is_control) || e.event_type.chars().any(char::is_control) {
            bail!("line {number}: an empty stream id, or a control character in the stream id or event type: the input is not an export");
        }
        let expected = self.next_version.get(&e.stream_id).copied().unwrap_or(0);
        if e.stream_version != expected {
            bail!(
                "line {number}: stream {} jumps to version {} (expected {expected}): the input is not an export",
                e.stream_id,
                e.stream_version
            );
        }
        self.next_version.insert(e.stream_id.clone(), expected + 1);
        Ok(())
    }
}

/// Inserts a page (line number, event, its hash in the file) as it is,
/// hashes it as the sealer would and compares the hashes with the file's.
async fn insert(tx: &mut sqlx::PgConnection, page: Vec<(usize, RecordedEvent, Vec<u8>)>, imported: &mut Imported) -> Result<()> {
    let Some(last) = page.last().map(|(_, e, _)| e.global_position) else { return Ok(()) };
    let events: Vec<&RecordedEvent> = page.iter().map(|(_, e, _)| e).collect();
    sqlx::query(
        "INSERT INTO events (global_position, first_in_append, stream_id, stream_version, event_id, event_type, schema_version,
                             occurred_at, recorded_at, metadata, data)
         SELECT p, p, s, v, i, t, sv, o, r, m, d
           FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::integer[], $7::timestamptz[],
                       $8::timestamptz[], $9::jsonb[], $10::jsonb[]) AS x(p, s, v, i, t, sv, o, r, m, d)",
    )
    .bind(events.iter().map(|e| e.global_position as i64).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.stream_version as i64).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.schema_version as i32).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.recorded_at).collect::<Vec<_>>())
    .bind(events.iter().map(|e| serde_json::to_value(&e.metadata).unwrap_or_default()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .with_context(|| format!("lines {} to {}: the database refused these events", page[0].0, page[page.len() - 1].0))?;
    // New appends continue above the imported positions.
    sqlx::query("SELECT setval('events_position_seq', $1)")
        .bind(last as i64)
        .execute(&mut *tx)
        .await
        .context("move the position sequence")?;
    let mut sealed = 0;
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar("SELECT seal_log(NULL)").fetch_one(&mut *tx).await.context("hash imported events")?;
        sealed += n as usize;
        if sealed >= page.len() {
            break;
        }
        // Another process's sealer holds the lock for a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if sealed < page.len() {
        bail!("another process keeps sealing this database's log: stop every storekeeper process on it and import again");
    }
    let positions: Vec<i64> = events.iter().map(|e| e.global_position as i64).collect();
    let wanted: Vec<&[u8]> = page.iter().map(|(_, _, h)| h.as_slice()).collect();
    let differs: Option<i64> = sqlx::query_scalar(
        "SELECT f.p FROM unnest($1::bigint[], $2::bytea[]) AS f(p, h) LEFT JOIN event_hashes e ON e.global_position = f.p
          WHERE e.stream_hash IS DISTINCT FROM f.h ORDER BY f.p LIMIT 1",
    )
    .bind(&positions)
    .bind(&wanted)
    .fetch_optional(&mut *tx)
    .await
    .context("compare the hashes")?;
    if let Some(position) = differs {
        let number = page.iter().find(|(_, e, _)| e.global_position as i64 == position).map_or(0, |(n, _, _)| *n);
        bail!(
            "line {number}: the event at position {position} does not match its stream_hash: the file was altered or is not an export (nothing was imported)"
        );
    }
    imported.events += page.len() as u64;
    Ok(())
}
