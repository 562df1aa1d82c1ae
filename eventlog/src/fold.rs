//! Reading one stream and folding it into its aggregate's state: the one
//! way every part of the system does it (the command service, time travel,
//! the search indexer), with one policy: an event that cannot be decoded is
//! an error, never skipped, because a skipped event is a wrong state.

use domain::Aggregate;
use domain::events::{DecodeError, EventCodec};

use crate::{EventLog, EventLogError, RecordedEvent, Snapshot};

/// Events read per round trip.
const PAGE: usize = 1000;

/// A stream's state after its events, and where it stands.
#[derive(Debug, Clone)]
pub struct Folded<S> {
    pub state: S,
    /// The last folded event's version; `None` when none was.
    pub version: Option<u64>,
    /// The last folded event's global position (0 when none was).
    pub position: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error(transparent)]
    Log(#[from] EventLogError),
    #[error("stream {stream_id}, version {version}: {source}")]
    Decode {
        stream_id: String,
        version: u64,
        #[source]
        source: DecodeError,
    },
}

/// Folds `stream_id` from its start for as long as `keep` holds (pass
/// `|_| true` for the whole stream).
pub async fn fold_stream<A: Aggregate>(
    log: &dyn EventLog,
    stream_id: &str,
    keep: impl FnMut(&RecordedEvent) -> bool,
) -> Result<Folded<A::State>, FoldError> {
    fold_onward::<A>(log, stream_id, Folded { state: A::State::default(), version: None, position: 0 }, keep).await
}

/// A new snapshot is taken once a load folds this many events past the
/// last one (or the start).
pub const SNAPSHOT_EVERY: u64 = 256;

/// The current state of `stream_id`: from `known` (a state the caller
/// holds, at its version) or else the stored snapshot, folded onward with
/// the events after it. The cost is the events since, not the history. A
/// snapshot of another `SNAPSHOT_VERSION`, one that no longer decodes, or
/// one the log does not bear out (no event at its version and position),
/// is ignored; when many events were folded, a fresh one is stored (best
/// effort: failing to store it only costs the next load).
pub async fn load<A: Aggregate>(
    log: &dyn EventLog,
    stream_id: &str,
    known: Option<Folded<A::State>>,
) -> Result<Folded<A::State>, FoldError> {
    let start = match known {
        Some(known) => known,
        None => from_snapshot::<A>(log, stream_id).await?.unwrap_or(Folded { state: A::State::default(), version: None, position: 0 }),
    };
    let from = start.version;
    let folded = fold_onward::<A>(log, stream_id, start, |_| true).await?;
    let folded_now = folded.version.map_or(0, |v| v + 1) - from.map_or(0, |v| v + 1);
    if folded_now >= SNAPSHOT_EVERY
        && let Some(version) = folded.version
    {
        match serde_json::to_value(&folded.state) {
            Ok(state) => {
                let snapshot = Snapshot {
                    stream_id: stream_id.to_owned(),
                    snapshot_version: A::SNAPSHOT_VERSION,
                    version,
                    position: folded.position,
                    state,
                };
                if let Err(error) = log.save_snapshot(&snapshot).await {
                    tracing::warn!(stream_id, %error, "storing a snapshot failed");
                }
            }
            Err(error) => tracing::warn!(stream_id, %error, "a state does not encode as a snapshot"),
        }
    }
    Ok(folded)
}

/// The stored snapshot as a starting point, if it can be one: of the
/// aggregate's current shape, decodable, and matching the log (the event
/// at its version is there, at its position).
async fn from_snapshot<A: Aggregate>(log: &dyn EventLog, stream_id: &str) -> Result<Option<Folded<A::State>>, FoldError> {
    let Some(snapshot) = log.snapshot(stream_id).await? else { return Ok(None) };
    if snapshot.snapshot_version != A::SNAPSHOT_VERSION {
        return Ok(None);
    }
    let at = log.read_stream(stream_id, snapshot.version, 1).await?;
    if !at.first().is_some_and(|e| e.stream_version == snapshot.version && e.global_position == snapshot.position) {
        tracing::warn!(stream_id, version = snapshot.version, "a stored snapshot does not match the log; folding from the start");
        return Ok(None);
    }
    match serde_json::from_value::<A::State>(snapshot.state) {
        Ok(state) => Ok(Some(Folded { state, version: Some(snapshot.version), position: snapshot.position })),
        Err(error) => {
            tracing::warn!(stream_id, %error, "a stored snapshot does not decode; folding from the start");
            Ok(None)
        }
    }
}

/// Folds the events after `folded` into it, for as long as `keep` holds.
async fn fold_onward<A: Aggregate>(
    log: &dyn EventLog,
    stream_id: &str,
    mut folded: Folded<A::State>,
    mut keep: impl FnMut(&RecordedEvent) -> bool,
) -> Result<Folded<A::State>, FoldError> {
    loop {
        let from = folded.version.map_or(0, |v| v + 1);
        let page = log.read_stream(stream_id, from, PAGE).await?;
        for recorded in &page {
            if !keep(recorded) {
                return Ok(folded);
            }
            let event = A::Event::decode(&recorded.event_type, recorded.schema_version, &recorded.data)
                .map_err(|source| FoldError::Decode { stream_id: stream_id.to_owned(), version: recorded.stream_version, source })?;
            folded.state = A::evolve(folded.state, &event);
            folded.version = Some(recorded.stream_version);
            folded.position = recorded.global_position;
        }
        if page.len() < PAGE {
            return Ok(folded);
        }
    }
}
