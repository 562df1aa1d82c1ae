//! `storekeeper events export|import`: the log as JSON Lines, one envelope
//! per line in global order, for backups and moving to another database.
//!
//! Import restores into an empty log only, appending the file's events in
//! its order with their ids, types, schema versions, times of occurrence,
//! metadata and data unchanged; the new log assigns its own global
//! positions and recording times. Each stream's versions must run on
//! without a gap, as they do in an export.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use eventlog::{EventLog, ExpectedVersion, NewEvent, RecordedEvent, StreamWrite};
use sqlx::PgPool;

/// Events per read while exporting, and per atomic append while importing.
const PAGE: usize = 2000;

/// Writes every event to `out`; answers how many.
pub async fn export(log: &dyn EventLog, out: &mut dyn Write) -> Result<u64> {
    let mut after = 0;
    let mut written = 0;
    loop {
        let page = log.read_all(after, PAGE).await.context("read the log")?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        for event in &page {
            serde_json::to_writer(&mut *out, event).context("write an event")?;
            out.write_all(b"\n").context("write an event")?;
        }
        written += page.len() as u64;
    }
    out.flush().context("flush the export")?;
    Ok(written)
}

/// Appends the events of `input` to an empty log; answers how many.
pub async fn import(log: &dyn EventLog, pool: &PgPool, input: impl BufRead) -> Result<u64> {
    let occupied: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM events)").fetch_one(pool).await.context("inspect the log")?;
    if occupied {
        bail!("the event log is not empty: import restores into an empty database only");
    }
    let mut batch: Vec<RecordedEvent> = Vec::with_capacity(PAGE);
    let mut imported = 0;
    for (number, line) in input.lines().enumerate() {
        let line = line.context("read the input")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: RecordedEvent = serde_json::from_str(&line).with_context(|| format!("line {}: not an event envelope", number + 1))?;
        batch.push(event);
        if batch.len() == PAGE {
            imported += append(log, std::mem::take(&mut batch)).await?;
        }
    }
    imported += append(log, batch).await?;
    Ok(imported)
}

/// Appends a page of the file in its order: each stream's run of events is
/// one write expecting the version just before its first event, and a
/// stream that comes back later in the page starts the next append, so the
/// new log keeps the file's order.
async fn append(log: &dyn EventLog, events: Vec<RecordedEvent>) -> Result<u64> {
    let count = events.len() as u64;
    let mut writes: Vec<StreamWrite> = Vec::new();
    let mut next_version: HashMap<String, u64> = HashMap::new();
    for e in events {
        if let Some(&expected) = next_version.get(&e.stream_id)
            && expected != e.stream_version
        {
            bail!("stream {} jumps to version {} (expected {expected}): the input is not an export", e.stream_id, e.stream_version);
        }
        let continues = writes.last().is_some_and(|w| w.stream_id == e.stream_id);
        if !continues && writes.iter().any(|w| w.stream_id == e.stream_id) {
            log.append(std::mem::take(&mut writes)).await.context("append imported events")?;
        }
        next_version.insert(e.stream_id.clone(), e.stream_version + 1);
        if writes.last().is_none_or(|w| w.stream_id != e.stream_id) {
            let expected = if e.stream_version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(e.stream_version - 1) };
            writes.push(StreamWrite { stream_id: e.stream_id.clone(), expected, events: Vec::new() });
        }
        writes.last_mut().expect("just pushed").events.push(NewEvent {
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            occurred_at: e.occurred_at,
            metadata: e.metadata,
            data: e.data,
        });
    }
    if !writes.is_empty() {
        log.append(writes).await.context("append imported events")?;
    }
    Ok(count)
}
