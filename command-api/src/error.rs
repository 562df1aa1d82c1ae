//! Every way a command can fail, as `application/problem+json`.
//! Internal details are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commands::ServiceError;
use domain::DomainError;
use edge::{EdgeError, FieldError, Internal, Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused at the edge: unreadable request, no or bad token, limits.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// Well-formed, but a value breaks a rule.
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("the stream is at version {}, not the expected {expected}", current.map_or_else(|| "none (it does not exist)".to_owned(), |v| v.to_string()))]
    VersionConflict { expected: u64, current: Option<u64> },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being handled")]
    IdempotencyInProgress,
    #[error("{0}")]
    Domain(DomainError),
    #[error("too many concurrent changes to this entity; retry")]
    Contention,
    #[error("the email or the password is wrong")]
    InvalidCredentials,
    #[error(transparent)]
    Internal(#[from] Internal),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Internal::new(e).into()
    }

    pub fn malformed(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Edge(EdgeError::malformed(field, message))
    }

    pub fn unauthorized(why: &'static str) -> Self {
        ApiError::Edge(EdgeError::Unauthorized(why))
    }

    pub fn forbidden(why: &'static str) -> Self {
        ApiError::Edge(EdgeError::Forbidden(why))
    }

    fn problem(&self) -> Problem {
        let (status, code) = match self {
            ApiError::Edge(e) => return e.problem(),
            ApiError::Internal(e) => return e.problem(),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"),
            ApiError::VersionConflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            ApiError::IdempotencyInProgress => (StatusCode::CONFLICT, "idempotency_in_progress"),
            ApiError::Domain(e) => match e {
                DomainError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                DomainError::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
                DomainError::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
                DomainError::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
                DomainError::SkuTaken => (StatusCode::CONFLICT, "sku_taken"),
                DomainError::CustomerInactive => (StatusCode::CONFLICT, "customer_inactive"),
                DomainError::PaymentMismatch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "payment_mismatch"),
                DomainError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            },
            ApiError::Contention => (StatusCode::SERVICE_UNAVAILABLE, "contention"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
        };
        let problem = Problem::new(status, code, self.to_string());
        match self {
            ApiError::Invalid(errors) => problem.with("errors", errors),
            ApiError::VersionConflict { expected, current } => problem.with("expected_version", expected).with("current_version", current),
            _ => problem,
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Invalid { field, message } => ApiError::Invalid(vec![FieldError { field, message }]),
            other => ApiError::Domain(other),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Domain(e) => e.into(),
            ServiceError::VersionConflict { expected, current, .. } => ApiError::VersionConflict { expected, current },
            ServiceError::Contention => ApiError::Contention,
            ServiceError::Password(commands::PasswordError::Busy) => ApiError::Edge(EdgeError::Unavailable),
            ServiceError::Log(eventlog::EventLogError::Overloaded) => ApiError::Edge(EdgeError::Overloaded),
            // Forgotten between the decision and the append.
            ServiceError::Log(eventlog::EventLogError::Forgotten(_)) => DomainError::state("the customer is forgotten").into(),
            ServiceError::Log(eventlog::EventLogError::Backend(source))
                if source.downcast_ref::<sqlx::Error>().is_some_and(eventlog::database::unavailable) =>
            {
                tracing::warn!(error = %source, "the database is not available");
                ApiError::Edge(EdgeError::Unavailable)
            }
            other => ApiError::internal(other),
        }
    }
}

/// The codes of the refusals a dashboard watches, each counted from
/// start-up (at 0), so that a rate of errors reads 0 on a healthy system
/// rather than "no data".
const WATCHED_CODES: &[&str] =
    &["validation_failed", "version_conflict", "not_found", "invalid_state", "contention", "overloaded", "unavailable", "internal"];

pub(crate) fn export_error_counters() {
    for code in WATCHED_CODES {
        metrics::counter!("storekeeper_command_errors_total", "code" => *code).increment(0);
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        metrics::counter!("storekeeper_command_errors_total", "code" => problem.code).increment(1);
        problem.into_response()
    }
}
