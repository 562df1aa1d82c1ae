//! `application/problem+json` (RFC 9457) with a machine-readable `code`.
//! Every error either API sends is built here, so the shape is one.
//!
//! Each API's `ApiError` is its own cases (its domain's mapping) beside two
//! shared here: `EdgeError` (what the edge refuses) and `Internal` (a
//! failure, logged where it is answered and never sent).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// One problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// More members of the body (`errors`, `current_version`, ...).
    pub extra: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem { status, code, detail: detail.into(), extra: Map::new() }
    }

    pub fn with(mut self, member: &str, value: impl Serialize) -> Self {
        self.extra.insert(member.to_owned(), serde_json::to_value(value).unwrap_or(Value::Null));
        self
    }

    /// The problem for a bare status, as the framework or a layer produced
    /// it without a body of ours.
    pub fn for_status(status: StatusCode, detail: Option<String>) -> Self {
        let code = code_for_status(status);
        let detail = match detail.filter(|d| !d.is_empty() && status.is_client_error()) {
            Some(detail) => detail,
            None => status.canonical_reason().unwrap_or("error").to_owned(),
        };
        Problem::new(status, code, detail)
    }
}

/// The code a status stands for when nothing more precise is known.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "validation_failed",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        409 => "conflict",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "unavailable",
        504 => "timeout",
        s if s >= 500 => "internal",
        _ => "bad_request",
    }
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The JSON Schema of a problem answer, for both APIs' OpenAPI documents.
pub fn openapi_schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": { "type": "string" },
            "title": { "type": "string" },
            "status": { "type": "integer" },
            "detail": { "type": "string" },
            "code": { "type": "string" },
            "errors": {
                "description": "What was wrong, field by field (validation_failed)",
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": { "field": { "type": "string" }, "message": { "type": "string" } }
                }
            },
            "expected_version": { "description": "The version If-Match named (version_conflict)", "type": "integer", "minimum": 0 },
            "current_version": { "description": "The stream's version, null if it does not exist (version_conflict)", "type": ["integer", "null"], "minimum": 0 }
        }
    })
}

impl Problem {
    /// The answer's body.
    pub fn body(self) -> Value {
        let mut body = json!({
            "type": format!("https://storekeeper.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Value::Object(members) = &mut body {
            members.extend(self.extra);
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// What the edge itself refuses, before or around an API's handlers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EdgeError {
    /// The request could not be read: malformed JSON, unknown fields,
    /// wrong types, bad ids, headers or parameters, control characters.
    #[error("the request is malformed")]
    Malformed(Vec<FieldError>),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the request body exceeds 64 KiB")]
    PayloadTooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request URI is too long")]
    UriTooLong,
    #[error("the request headers are too large")]
    HeadersTooLarge,
    #[error("the request body did not arrive within {0} seconds")]
    RequestTimeout(u64),
    #[error("the service is not available")]
    Unavailable,
    /// Shed: more requests (or connections, or waits) than the server
    /// takes at once. Answered at once, with `Retry-After`.
    #[error("the server is at capacity; retry after a moment")]
    Overloaded,
}

impl EdgeError {
    pub fn malformed(field: impl Into<String>, message: impl Into<String>) -> Self {
        EdgeError::Malformed(vec![FieldError { field: field.into(), message: message.into() }])
    }

    pub fn problem(&self) -> Problem {
        let (status, code) = match self {
            EdgeError::Malformed(_) => (StatusCode::BAD_REQUEST, "validation_failed"),
            EdgeError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            EdgeError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            EdgeError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            EdgeError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            EdgeError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            EdgeError::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            EdgeError::HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
            EdgeError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            EdgeError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            EdgeError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        };
        let problem = Problem::new(status, code, self.to_string());
        match self {
            EdgeError::Malformed(errors) => problem.with("errors", errors),
            _ => problem,
        }
    }
}

/// A failure behind a 500: its text is logged with the request's span
/// when it is answered, and never reaches the client.
#[derive(Debug, thiserror::Error)]
#[error("internal error")]
pub struct Internal(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl Internal {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Internal(Box::new(e))
    }

    /// The problem it is answered with, logging what it hides.
    pub fn problem(&self) -> Problem {
        tracing::error!(error = %self.0, source = ?self.0.source(), "internal error");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", self.to_string())
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}
