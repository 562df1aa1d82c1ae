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
    /// A look into the past that would fold more than its budget.
    #[error("stream {stream_id}: reaching version {version} would fold more than {budget} events")]
    TooLong { stream_id: String, version: u64, budget: u64 },
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
    from_snapshot_at_most::<A>(log, stream_id, u64::MAX).await
}

/// The newest stored snapshot at or before `version` as a starting point,
/// if it can be one (see `from_snapshot`); one that cannot is passed over
/// for the one before it, a few times, so that one bad snapshot never
/// sends every look near it back to the start.
async fn from_snapshot_at_most<A: Aggregate>(
    log: &dyn EventLog,
    stream_id: &str,
    mut version: u64,
) -> Result<Option<Folded<A::State>>, FoldError> {
    for _ in 0..4 {
        let Some(snapshot) = log.snapshot_at_most(stream_id, version).await? else { return Ok(None) };
        let Some(earlier) = snapshot.version.checked_sub(1) else { return usable::<A>(log, snapshot).await };
        if let Some(start) = usable::<A>(log, snapshot).await? {
            return Ok(Some(start));
        }
        version = earlier;
    }
    Ok(None)
}

/// `snapshot` as a starting point, if it is of the aggregate's current
/// shape, decodes, and the log bears it out.
async fn usable<A: Aggregate>(log: &dyn EventLog, snapshot: Snapshot) -> Result<Option<Folded<A::State>>, FoldError> {
    let stream_id = snapshot.stream_id.as_str();
    if snapshot.snapshot_version != A::SNAPSHOT_VERSION {
        return Ok(None);
    }
    let at = log.read_stream(stream_id, snapshot.version, 1).await?;
    if !at.first().is_some_and(|e| e.stream_version == snapshot.version && e.global_position == snapshot.position) {
        tracing::warn!(stream_id, version = snapshot.version, "a stored snapshot does not match the log; passing it over");
        return Ok(None);
    }
    match serde_json::from_value::<A::State>(snapshot.state) {
        Ok(state) => Ok(Some(Folded { state, version: Some(snapshot.version), position: snapshot.position })),
        Err(error) => {
            tracing::warn!(stream_id, %error, "a stored snapshot does not decode; passing it over");
            Ok(None)
        }
    }
}

/// Where a look into a stream's past stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// After the event at this stream version.
    Version(u64),
    /// After the last event recorded at or before this time.
    Time(chrono::DateTime<chrono::Utc>),
    /// Whichever of the two comes first.
    Both(u64, chrono::DateTime<chrono::Utc>),
}

/// Events a look into the past folds at most, from where it starts.
pub const PAST_FOLD_BUDGET: u64 = 100_000;

/// A look into the past that folds this many events takes a snapshot on
/// the way, so that the next look near there starts from it. Adapters
/// that keep snapshots along a stream's history keep the newest of each
/// run of this many versions (`SNAPSHOT_BLOCK`), so a look never folds
/// more than about two of them from its start.
const SNAPSHOT_ON_THE_WAY: u64 = SNAPSHOT_BLOCK;

/// Snapshots kept along a stream's history: the newest of each run of
/// this many versions (version / SNAPSHOT_BLOCK), so they stay few
/// however often a stream is loaded.
pub const SNAPSHOT_BLOCK: u64 = SNAPSHOT_EVERY * 16;

/// `stream_id` as it was at `until` (time travel): folded from the nearest
/// stored snapshot at or before that point, so that its cost is the events
/// since that snapshot, not the stream's history. A time is found by
/// bisecting the stream (its events are recorded in version order), a few
/// reads however long it is. Long folds leave snapshots on the way; one
/// that would fold more than `budget` events (`PAST_FOLD_BUDGET` for a
/// request) fails with `FoldError::TooLong`, having left them for the next
/// look.
pub async fn fold_until<A: Aggregate>(
    log: &dyn EventLog,
    stream_id: &str,
    until: Until,
    budget: u64,
) -> Result<Folded<A::State>, FoldError> {
    let empty = || Folded { state: A::State::default(), version: None, position: 0 };
    let version = match until {
        Until::Version(version) => Some(version),
        Until::Time(time) => version_at(log, stream_id, time).await?,
        Until::Both(version, time) => version_at(log, stream_id, time).await?.map(|at| at.min(version)),
    };
    let Some(version) = version else { return Ok(empty()) };
    let mut folded = from_snapshot_at_most::<A>(log, stream_id, version).await?.unwrap_or_else(empty);
    let start = folded.version.map_or(0, |v| v + 1);
    loop {
        let from = folded.version.map_or(0, |v| v + 1);
        if from > version {
            return Ok(folded);
        }
        if from - start >= budget {
            return Err(FoldError::TooLong { stream_id: stream_id.to_owned(), version, budget });
        }
        let leg = version.min(from + SNAPSHOT_ON_THE_WAY - 1).min(start + budget - 1);
        folded = fold_onward::<A>(log, stream_id, folded, |e| e.stream_version <= leg).await?;
        if folded.version < Some(leg) {
            return Ok(folded); // the stream ends before `version`
        }
        if leg < version
            && let Ok(state) = serde_json::to_value(&folded.state)
        {
            let snapshot = Snapshot {
                stream_id: stream_id.to_owned(),
                snapshot_version: A::SNAPSHOT_VERSION,
                version: leg,
                position: folded.position,
                state,
            };
            if let Err(error) = log.save_snapshot(&snapshot).await {
                tracing::warn!(stream_id, %error, "storing a snapshot on the way into the past failed");
            }
        }
    }
}

/// The version of the last event of `stream_id` recorded at or before
/// `time` (`None`: none was), by bisection: events of one stream are
/// recorded one after another, in version order.
async fn version_at(log: &dyn EventLog, stream_id: &str, time: chrono::DateTime<chrono::Utc>) -> Result<Option<u64>, FoldError> {
    let recorded_by = |version: u64| async move {
        let event = log.read_stream(stream_id, version, 1).await?;
        Ok::<_, FoldError>(event.first().is_some_and(|e| e.stream_version == version && e.recorded_at <= time))
    };
    if !recorded_by(0).await? {
        return Ok(None);
    }
    // The first power of two that is past it, then halves between.
    let (mut known, mut past) = (0u64, 1u64);
    while recorded_by(past).await? {
        known = past;
        past = past.saturating_mul(2);
    }
    while past - known > 1 {
        let middle = known + (past - known) / 2;
        if recorded_by(middle).await? {
            known = middle;
        } else {
            past = middle;
        }
    }
    Ok(Some(known))
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
