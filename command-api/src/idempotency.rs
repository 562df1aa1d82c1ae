//! `Idempotency-Key`: the same key with the same request within 24 hours
//! answers the first response again and appends nothing; the same key with
//! a different request is refused. Keys are scoped to the caller.
//!
//! Only successful responses are kept: after an error nothing was appended,
//! so the client may fix the request and retry under the same key.
//!
//! This table only remembers answers. What makes a key exact is the event
//! log's receipt, which commits in the same transaction as the command's
//! events: a retry after a crash between the append and storing the answer
//! finds the receipt and answers the first outcome, never applying twice.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use commands::Begin;
use edge::{BODY_LIMIT, EdgeError, Principal};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Response headers worth replaying.
const KEPT_HEADERS: [&str; 4] = ["content-type", "etag", "x-consistency-token", "location"];

#[derive(Debug, Serialize, Deserialize)]
struct StoredResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                response.headers_mut().insert(name, value);
            }
        }
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        response
    }
}

pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let Some(key) = request.headers().get(HEADER) else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::malformed("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))?
        .to_owned();
    let principal = request.extensions().get::<Principal>().map_or_else(|| "anonymous".to_owned(), |p| p.sub.clone());
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, BODY_LIMIT).await.map_err(|_| EdgeError::PayloadTooLarge)?;
    // Keyed by a server secret that is not in the database: a body may
    // hold a password or personal data, and a plain digest kept 24 hours
    // would let whoever reads the table test guesses against it.
    let request = [parts.method.as_str().as_bytes(), &[0], parts.uri.path().as_bytes(), &[0], &bytes];
    let hash = eventlog::hmac_sha256(state.webhook_secret.as_bytes(), &request);

    match state.idempotency.begin(&principal, &key, &hash).await.map_err(ApiError::internal)? {
        Begin::Proceed => {}
        Begin::Replay(stored) => match serde_json::from_value::<StoredResponse>(stored) {
            Ok(stored) => return Ok(stored.into_response()),
            Err(_) => return Err(ApiError::IdempotencyInProgress),
        },
        Begin::Mismatch => return Err(ApiError::IdempotencyKeyReused),
        // The first request's events may be in (its receipt commits with
        // them) while its answer is not stored yet, or never will be: it
        // crashed in between. Running it again answers the first outcome.
        Begin::InProgress if state.service.took_effect(&principal, &key).await.map_err(ApiError::internal)? => {}
        Begin::InProgress => return Err(ApiError::IdempotencyInProgress),
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if !response.status().is_success() {
        state.idempotency.abandon(&principal, &key).await.map_err(ApiError::internal)?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(ApiError::internal)?;
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: kept_headers(&parts.headers),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    // The command has taken effect: failing to remember its answer must not
    // turn it into an error (a retry after a minute re-runs it instead).
    let saved = state.idempotency.complete(&principal, &key, &serde_json::to_value(&stored).unwrap_or_default()).await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not store the response of an idempotent request");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS.iter().filter_map(|name| Some((name.to_string(), headers.get(*name)?.to_str().ok()?.to_owned()))).collect()
}
