//! Cross-origin requests from browsers to the command API's `/v1/`
//! resources: the console, served by the query API, signs in and sends
//! commands to the command API on another port.
//!
//! Any origin may call, without credentials: a token travels in the
//! `Authorization` header, never in a cookie, so a page on another site
//! can act only with a token its user handed it, and a cross-site request
//! carries none. A preflight (`OPTIONS` with `Access-Control-Request-Method`)
//! is answered here, before the method check and authentication, which it
//! never carries credentials for; any other request goes on as it came and
//! its answer says which headers a script may read.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Request headers a script may send.
const ALLOWED_HEADERS: &str =
    "authorization, content-type, idempotency-key, if-match, last-event-id, x-consistency-token, x-consistency-timeout, x-request-id";
/// Answer headers a script may read beside the simple ones.
const EXPOSED_HEADERS: &str = "x-consistency-token, etag, location, retry-after, x-request-id";
/// How long a browser may keep a preflight's answer.
const MAX_AGE_SECONDS: &str = "600";

pub(crate) async fn cors(request: Request, next: Next) -> Response {
    // The API's own resources only: not the metrics or the probes.
    if !request.headers().contains_key(header::ORIGIN) || !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    if request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE_SECONDS));
        return response;
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED_HEADERS));
    response
}
