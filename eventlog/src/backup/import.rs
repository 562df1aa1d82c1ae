//! Reading an export back in: into an empty log, in one transaction, every
//! line checked (its place in the log, its hash as the sealer computes it)
//! and the whole file against its end line before anything is committed.

use std::collections::HashMap;
use std::io::BufRead;

use sqlx::{PgConnection, PgPool};

use super::format::{CUSTOMER_KEY, END, End, EndLine, Line, VAULT};
use super::{BackupError, Context, Imported, PAGE, Plaintext, keys, reencrypt};
use crate::{RecordedEvent, seal};

/// Restores the export read from `input` into the empty log in `pool`.
pub async fn import(pool: &PgPool, input: impl BufRead, plaintext: Plaintext) -> Result<Imported, BackupError> {
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

async fn import_all(pool: &PgPool, input: impl BufRead, plaintext: Plaintext) -> Result<Imported, BackupError> {
    let mut tx = pool.begin().await.context("begin the import")?;
    // No append starts meanwhile (reads go on), and none is in the log.
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut *tx).await.context("lock the log")?;
    let occupied: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM events)").fetch_one(&mut *tx).await.context("inspect the log")?;
    if occupied {
        return Err(BackupError::NotEmpty);
    }
    let mut check = Check::default();
    let mut page: Vec<(usize, RecordedEvent, Vec<u8>)> = Vec::with_capacity(PAGE);
    let mut imported = Imported { events: 0, seal: String::new(), reencrypted: None };
    let mut end: Option<(usize, End)> = None;
    for (number, line) in input.lines().enumerate() {
        let number = number + 1;
        let line = line.context("read the input")?;
        if line.trim().is_empty() {
            continue;
        }
        if let Some((at, _)) = &end {
            return Err(BackupError::NotAnExport { line: number, why: format!("the file goes on after its end line (line {at})") });
        }
        let unreadable = |what| move |source| BackupError::Unreadable { line: number, what, source };
        if line.starts_with(VAULT) || line.starts_with(CUSTOMER_KEY) {
            keys::restore(&mut tx, number, &line).await?;
            continue;
        }
        if line.starts_with(END) {
            let parsed: EndLine = serde_json::from_str(&line).map_err(unreadable("not an end line"))?;
            end = Some((number, parsed.end_of_export));
            continue;
        }
        let parsed: Line = serde_json::from_str(&line).map_err(unreadable("not an event envelope"))?;
        check.next(number, &parsed.event)?;
        let hash = parsed.stream_hash.as_deref().and_then(|h| hex::decode(h).ok()).filter(|h| h.len() == 32);
        let Some(hash) = hash else {
            return Err(BackupError::NotAnExport { line: number, why: "no stream_hash (a SHA-256 in hex)".into() });
        };
        page.push((number, parsed.event, hash));
        if page.len() == PAGE {
            insert(&mut tx, std::mem::take(&mut page), &mut imported).await?;
        }
    }
    insert(&mut tx, page, &mut imported).await?;
    // The end line says what the whole file held: lines or streams taken
    // out, or a file cut short, no longer add up to it. Every hash in the
    // file is the sealer's, so the sealer's seal is the file's.
    let Some((_, end)) = end else { return Err(BackupError::NoEndLine) };
    let sealed = seal::latest_seal(&mut *tx).await.context("read the new seal")?.unwrap_or_default();
    if end.events != imported.events || end.up_to != check.position || end.seal != hex::encode(sealed.1) {
        return Err(BackupError::DoesNotAddUp { events: end.events, up_to: end.up_to });
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
        keys::set_legacy_email_claims(&mut tx, true).await?;
    }
    if let Plaintext::Reencrypt { wrapping } = plaintext {
        imported.reencrypted = Some(reencrypt::reencrypt(&mut tx, wrapping.as_ref()).await?);
        let sealed = seal::latest_seal(&mut *tx).await.context("read the new seal")?;
        imported.seal = sealed.map(|(_, seal)| hex::encode(seal)).unwrap_or_default();
    }
    tx.commit().await.context("commit the import")?;
    if imported.reencrypted.is_some() {
        // The rows as first inserted, in the clear, are dead but still in
        // the table's files until it is rewritten.
        sqlx::query("VACUUM FULL events").execute(pool).await.context("rewrite the events table without its plaintext row versions")?;
    }
    Ok(imported)
}

/// What the file must hold to be an export: positions rising, and each
/// stream's versions running on from 0 without a gap.
#[derive(Default)]
struct Check {
    position: u64,
    next_version: HashMap<String, u64>,
}

impl Check {
    fn next(&mut self, line: usize, e: &RecordedEvent) -> Result<(), BackupError> {
        let refuse = |why: String| Err(BackupError::NotAnExport { line, why });
        if e.global_position > i64::MAX as u64 || e.stream_version > i64::MAX as u64 || e.schema_version > i32::MAX as u32 {
            return refuse("a position, stream version or schema version out of range".into());
        }
        if e.global_position <= self.position {
            return refuse(format!("position {} does not follow {}", e.global_position, self.position));
        }
        self.position = e.global_position;
        if e.stream_id.is_empty() || e.stream_id.chars().any(char::is_control) || e.event_type.chars().any(char::is_control) {
            return refuse("an empty stream id, or a control character in the stream id or event type".into());
        }
        let expected = self.next_version.get(&e.stream_id).copied().unwrap_or(0);
        if e.stream_version != expected {
            return refuse(format!("stream {} jumps to version {} (expected {expected})", e.stream_id, e.stream_version));
        }
        self.next_version.insert(e.stream_id.clone(), expected + 1);
        Ok(())
    }
}

/// Inserts a page (line number, event, its hash in the file) as it is,
/// hashes it with the sealer and compares the hashes with the file's.
async fn insert(tx: &mut PgConnection, page: Vec<(usize, RecordedEvent, Vec<u8>)>, imported: &mut Imported) -> Result<(), BackupError> {
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
    .map_err(|source| BackupError::Database {
        what: format!("lines {} to {}: the database refused these events", page[0].0, page[page.len() - 1].0),
        source,
    })?;
    // New appends continue above the imported positions.
    sqlx::query("SELECT setval('events_position_seq', $1)")
        .bind(last as i64)
        .execute(&mut *tx)
        .await
        .context("move the position sequence")?;
    if !seal::seal_within(tx, page.len() as u64, 200).await.context("hash imported events")? {
        return Err(BackupError::SealerBusy);
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
        let line = page.iter().find(|(_, e, _)| e.global_position as i64 == position).map_or(0, |(n, _, _)| *n);
        return Err(BackupError::Altered { line, position: position as u64 });
    }
    imported.events += page.len() as u64;
    Ok(())
}
