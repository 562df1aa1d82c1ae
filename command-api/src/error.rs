//! Every way a command can fail, as `application/problem+json`.
//! Internal details are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::DomainError;
use serde::Serialize;
use serde_json::json;

use crate::service::ServiceError;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be read: malformed JSON, unknown fields, wrong
    /// types, bad ids or headers.
    #[error("the request is malformed")]
    Malformed(Vec<FieldError>),
    /// Well-formed, but a value breaks a rule.
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the request body exceeds 64 KiB")]
    PayloadTooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
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
    #[error("the service is not available")]
    Unavailable,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }
    pub fn malformed(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Malformed(vec![FieldError { field: field.into(), message: message.into() }])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::VersionConflict { .. } | ApiError::IdempotencyInProgress => StatusCode::CONFLICT,
            ApiError::Domain(e) => match e {
                DomainError::NotFound(_) => StatusCode::NOT_FOUND,
                DomainError::AlreadyExists(_) | DomainError::InvalidState(_) | DomainError::EmailTaken | DomainError::SkuTaken => {
                    StatusCode::CONFLICT
                }
                DomainError::CustomerInactive | DomainError::PaymentMismatch(_) | DomainError::Invalid { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
            },
            ApiError::Contention | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) | ApiError::Invalid(_) => "validation_failed",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::VersionConflict { .. } => "version_conflict",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyInProgress => "idempotency_in_progress",
            ApiError::Domain(e) => match e {
                DomainError::NotFound(_) => "not_found",
                DomainError::AlreadyExists(_) => "already_exists",
                DomainError::InvalidState(_) => "invalid_state",
                DomainError::EmailTaken => "email_taken",
                DomainError::SkuTaken => "sku_taken",
                DomainError::CustomerInactive => "customer_inactive",
                DomainError::PaymentMismatch(_) => "payment_mismatch",
                DomainError::Invalid { .. } => "validation_failed",
            },
            ApiError::Contention => "contention",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "Bad request",
            StatusCode::UNPROCESSABLE_ENTITY => "Unprocessable request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "Payload too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "Unsupported media type",
            StatusCode::SERVICE_UNAVAILABLE => "Service unavailable",
            _ => "Internal server error",
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
            other => ApiError::internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, source = ?e.source(), "internal error");
        }
        let mut body = json!({
            "type": format!("https://storekeeper.dev/problems/{}", self.code()),
            "title": self.title(),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "code": self.code(),
        });
        match &self {
            ApiError::Malformed(errors) | ApiError::Invalid(errors) => body["errors"] = json!(errors),
            ApiError::VersionConflict { expected, current } => {
                body["expected_version"] = json!(expected);
                body["current_version"] = json!(current);
            }
            _ => {}
        }
        metrics::counter!("storekeeper_command_errors_total", "code" => self.code()).increment(1);
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
