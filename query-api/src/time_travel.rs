//! `/{products|customers|orders}/{id}/at`: an entity folded from its
//! events up to a version or a time, straight from the log.

use chrono::{DateTime, Utc};
use domain::Aggregate;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{ApiError, AppState};

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AtQuery {
    /// Fold up to and including this stream version.
    pub version: Option<u64>,
    /// Fold the events recorded up to this time (RFC 3339).
    pub time: Option<DateTime<Utc>>,
}

/// Folds a stream up to a version or a time: the state and its version.
pub async fn fold_until<A: Aggregate>(state: &AppState, stream: &str, at: &AtQuery) -> Result<(A::State, u64), ApiError> {
    if at.version.is_some() == at.time.is_some() {
        return Err(ApiError::malformed("version", "give exactly one of version or time"));
    }
    let folded = eventlog::fold_stream::<A>(&*state.log, stream, |recorded| {
        let past = at.version.is_some_and(|v| recorded.stream_version > v) || at.time.is_some_and(|t| recorded.recorded_at > t);
        !past
    })
    .await
    .map_err(ApiError::internal)?;
    folded.version.map(|v| (folded.state, v)).ok_or(ApiError::NotFound("entity at that point"))
}
