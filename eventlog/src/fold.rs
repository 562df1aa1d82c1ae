//! Reading one stream and folding it into its aggregate's state: the one
//! way every part of the system does it (the command service, time travel,
//! the search indexer), with one policy: an event that cannot be decoded is
//! an error, never skipped, because a skipped event is a wrong state.

use domain::Aggregate;
use domain::events::{DecodeError, EventCodec};

use crate::{EventLog, EventLogError, RecordedEvent};

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
    mut keep: impl FnMut(&RecordedEvent) -> bool,
) -> Result<Folded<A::State>, FoldError> {
    let mut folded = Folded { state: A::State::default(), version: None, position: 0 };
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
