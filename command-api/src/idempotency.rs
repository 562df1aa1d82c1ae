//! `Idempotency-Key`: the same key with the same request within 24 hours
//! answers the first response again and appends nothing; the same key with
//! a different request is refused. Keys are scoped to the caller.
//!
//! Only successful responses are kept: after an error nothing was appended,
//! so the client may fix the request and retry under the same key.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
const BODY_LIMIT: usize = 64 * 1024;
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

enum Begin {
    Proceed,
    Replay(StoredResponse),
    Mismatch,
    InProgress,
}

async fn begin(pool: &PgPool, principal: &str, key: &str, hash: &[u8]) -> Result<Begin, sqlx::Error> {
    // A new key, an expired one, or one whose first request died mid-way
    // (no response after a minute) starts afresh.
    let claimed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (principal, key, request_hash) VALUES ($1, $2, $3)
         ON CONFLICT (principal, key) DO UPDATE
            SET request_hash = EXCLUDED.request_hash, response = NULL, created_at = now()
          WHERE idempotency_keys.created_at < now() - interval '24 hours'
             OR (idempotency_keys.response IS NULL
                 AND idempotency_keys.request_hash = EXCLUDED.request_hash
                 AND idempotency_keys.created_at < now() - interval '60 seconds')
         RETURNING true",
    )
    .bind(principal)
    .bind(key)
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    if claimed.is_some() {
        return Ok(Begin::Proceed);
    }
    let row: Option<(Vec<u8>, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT request_hash, response FROM idempotency_keys WHERE principal = $1 AND key = $2")
            .bind(principal)
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        None => Begin::InProgress,
        Some((stored, _)) if stored != hash => Begin::Mismatch,
        Some((_, Some(response))) => match serde_json::from_value(response) {
            Ok(response) => Begin::Replay(response),
            Err(_) => Begin::InProgress,
        },
        Some((_, None)) => Begin::InProgress,
    })
}

pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let Some(key) = request.headers().get(HEADER) else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| ApiError::malformed("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))?
        .to_owned();
    let principal = request.extensions().get::<Principal>().map_or_else(|| "anonymous".to_owned(), |p| p.sub.clone());
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, BODY_LIMIT).await.map_err(|_| ApiError::PayloadTooLarge)?;
    let hash = Sha256::new()
        .chain_update(parts.method.as_str())
        .chain_update([0])
        .chain_update(parts.uri.path())
        .chain_update([0])
        .chain_update(&bytes)
        .finalize();

    match begin(&state.pool, &principal, &key, &hash).await.map_err(ApiError::internal)? {
        Begin::Proceed => {}
        Begin::Replay(stored) => return Ok(stored.into_response()),
        Begin::Mismatch => return Err(ApiError::IdempotencyKeyReused),
        Begin::InProgress => return Err(ApiError::IdempotencyInProgress),
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if !response.status().is_success() {
        sqlx::query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND response IS NULL")
            .bind(&principal)
            .bind(&key)
            .execute(&state.pool)
            .await
            .map_err(ApiError::internal)?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(|e| ApiError::Internal(Box::new(e)))?;
    let stored = StoredResponse {
        status: parts.status.as_u16(),
        headers: kept_headers(&parts.headers),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    // The command has taken effect: failing to remember its answer must not
    // turn it into an error (a retry after a minute re-runs it instead).
    let saved = sqlx::query("UPDATE idempotency_keys SET response = $3 WHERE principal = $1 AND key = $2")
        .bind(&principal)
        .bind(&key)
        .bind(serde_json::to_value(&stored).unwrap_or_default())
        .execute(&state.pool)
        .await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "could not store the response of an idempotent request");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn kept_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    KEPT_HEADERS.iter().filter_map(|name| Some((name.to_string(), headers.get(*name)?.to_str().ok()?.to_owned()))).collect()
}

/// Forgets keys older than 24 hours.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'").execute(pool).await?.rows_affected())
}
