//! Every way a read can fail, as `application/problem+json`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use edge::{EdgeError, Internal, Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused at the edge: unreadable request, no or bad token, limits.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the consistency token {0} is beyond the head of the log: no write has produced it")]
    InvalidConsistencyToken(u64),
    #[error("the read models have not caught up with the given consistency token within {0} ms")]
    NotYetConsistent(u64),
    #[error("the {0} read model cannot show this write: one of its events is parked as a dead letter (see /v1/projections)")]
    ProjectionDegraded(String),
    #[error("projection {0} is being verified already; try again when that is done")]
    VerifyInProgress(String),
    /// Time travel that would fold more than its budget from the nearest
    /// snapshot; it took snapshots on the way, so asking again goes on.
    #[error("reaching that point folds more than {0} events from the nearest snapshot; snapshots were taken on the way: ask again")]
    HistoryTooLong(u64),
    /// A subscription asked to start after a position no append has taken:
    /// a `Last-Event-ID` from another (or an older, restored) log.
    #[error("{0} is beyond the head of the log ({1}): no event of this log has that position")]
    BeyondTheHead(&'static str, u64),
    #[error("the order process's parked steps send commands: retry them with `storekeeper projections retry order-process`")]
    RetriedByTheCommandSide,
    #[error(transparent)]
    Internal(#[from] Internal),
}

impl ApiError {
    pub fn malformed(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Edge(EdgeError::malformed(field, message))
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Internal::new(e).into()
    }

    fn problem(&self) -> Problem {
        let (status, code) = match self {
            ApiError::Edge(e) => return e.problem(),
            ApiError::Internal(e) => return e.problem(),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::InvalidConsistencyToken(_) => (StatusCode::BAD_REQUEST, "invalid_consistency_token"),
            ApiError::NotYetConsistent(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_yet_consistent"),
            ApiError::ProjectionDegraded(_) => (StatusCode::SERVICE_UNAVAILABLE, "projection_degraded"),
            ApiError::VerifyInProgress(_) => (StatusCode::CONFLICT, "verify_in_progress"),
            ApiError::BeyondTheHead(..) => (StatusCode::CONFLICT, "beyond_the_head"),
            ApiError::RetriedByTheCommandSide => (StatusCode::CONFLICT, "retried_by_the_command_side"),
            ApiError::HistoryTooLong(_) => (StatusCode::SERVICE_UNAVAILABLE, "history_too_long"),
        };
        Problem::new(status, code, self.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if eventlog::database::unavailable(&e) {
            tracing::warn!(error = %e, "the database is not available");
            return ApiError::Edge(EdgeError::Unavailable);
        }
        ApiError::internal(e)
    }
}

impl From<eventlog::EventLogError> for ApiError {
    fn from(e: eventlog::EventLogError) -> Self {
        match e {
            eventlog::EventLogError::Backend(source) => match source.downcast::<sqlx::Error>() {
                Ok(e) => (*e).into(),
                Err(other) => Internal(other).into(),
            },
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}
