//! Writing the log out: every sealed event as stored (ciphertext and all),
//! with its stream hash, then the vault's lines, then the end line.

use std::collections::HashMap;
use std::io::Write;

use sqlx::PgPool;

use super::format::{End, EndLine, Line, write_line};
use super::{BackupError, Context, PAGE, keys};
use crate::{EventLog, PgEventLog, seal};

/// Writes every sealed event of the log in `pool` to `out`, then the
/// vault's lines and the end line; answers how many events. Events newer
/// than the seal it makes first are left out.
pub async fn export(pool: &PgPool, out: &mut dyn Write) -> Result<u64, BackupError> {
    // Another process's sealer holding on leaves the newest events out.
    seal::seal_to_frontier(pool).await.context("seal the log")?;
    let (sealed_to, seal) = seal::latest_seal(pool).await.context("read the log's seals")?.unwrap_or_default();
    // The stored form: what the hashes cover, and no key needed.
    let log = PgEventLog::new(pool.clone());
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
                return Err(BackupError::Unhashed(event.global_position));
            };
            write_line(out, &Line { event, stream_hash: Some(hex::encode(hash)) }, "write an event")?;
        }
        written += positions.len() as u64;
    }
    keys::write(pool, out).await?;
    let end = End { events: written, up_to: after, seal: hex::encode(seal) };
    write_line(out, &EndLine { end_of_export: end }, "write the end line")?;
    out.flush().context("flush the export")?;
    Ok(written)
}
