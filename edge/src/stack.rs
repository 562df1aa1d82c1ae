//! The layer stack both APIs share, outermost first: request id, tracing
//! span, metrics, CORS (`cors`, the command API's), problem+json for
//! whatever the framework answers on its own, methods a path does not have
//! (405), limits on the request line and headers, control characters in
//! the path and query, body size and read timeout, and the caller's token.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::{JwtKeys, authenticate};
use crate::problem::PROBLEM_JSON;
use crate::{BODY_LIMIT, EdgeError, Problem};

/// Longest request target (path and query) accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A request body must have arrived whole within this of its headers.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `X-Request-Id` taken from a client (longer ones are replaced).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Wraps an API's routes in the shared stack. `api` labels its metrics;
/// `openapi` is the document it serves, which says which methods each path
/// has.
pub fn stack(router: Router, api: &'static str, jwt: JwtKeys, openapi: &serde_json::Value) -> Router {
    crate::metrics::prometheus();
    crate::metrics::export_from_start(api);
    let router = router
        .fallback(|| async { EdgeError::NotFound("route") })
        .layer(middleware::from_fn_with_state(jwt, authenticate))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(buffer_body))
        .layer(middleware::from_fn(guard))
        .layer(middleware::from_fn_with_state(crate::methods::Methods::from_openapi(openapi), crate::methods::refuse_undeclared))
        .layer(middleware::from_fn(problemify));
    // Browsers on other origins call the command API (the console signs in
    // and sends commands there); the query API serves the console itself.
    let router = if api == "command" { router.layer(middleware::from_fn(crate::cors::cors)) } else { router };
    router
        .layer(middleware::from_fn(move |request, next| crate::metrics::track_requests(api, request, next)))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            // Probes are not traced: a scrape every few seconds would be a
            // trace every few seconds.
            if matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics") {
                return tracing::Span::none();
            }
            let span = tracing::info_span!(target: telemetry::SPANS, "request", method = %request.method(), uri = %request.uri().path(), request_id, correlation_id = tracing::field::Empty, trace_id = tracing::field::Empty);
            telemetry::follow(&span, request.headers().get("traceparent").and_then(|v| v.to_str().ok()));
            span
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::from_fn(drop_odd_request_id))
}

/// `router` alone, with every error answered as problem+json (an unknown
/// route, a wrong method): for listeners without the API's stack, such as
/// the metrics one.
pub fn problems_only(router: Router) -> Router {
    router.fallback(|| async { EdgeError::NotFound("route") }).layer(middleware::from_fn(problemify))
}

/// Reads every request's body whole, before any handler, within one
/// deadline and the size limit: a client trickling a body (one byte a
/// second, fixed length or chunked) is answered 408 at the deadline, and
/// an oversized body is 413 on every endpoint, also where the handler
/// would never read it.
async fn buffer_body(request: Request, next: Next) -> Response {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return EdgeError::PayloadTooLarge.into_response();
    }
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, BODY_LIMIT);
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => return EdgeError::RequestTimeout(BODY_READ_TIMEOUT.as_secs()).into_response(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return EdgeError::PayloadTooLarge.into_response(),
        Ok(Err(_)) => return EdgeError::malformed("", "the request body could not be read").into_response(),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

/// A client's `X-Request-Id` is kept (and echoed) only when it is short
/// visible ASCII; otherwise one is made for it.
async fn drop_odd_request_id(mut request: Request, next: Next) -> Response {
    let odd = request
        .headers()
        .get_all("x-request-id")
        .iter()
        .enumerate()
        .any(|(i, v)| i > 0 || v.len() > MAX_REQUEST_ID_BYTES || !v.as_bytes().iter().all(|b| b.is_ascii_graphic()));
    if odd {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

/// Refuses what no endpoint can take: oversized request lines and headers,
/// and control characters in the path or query (NUL reaches no database).
async fn guard(request: Request, next: Next) -> Response {
    let uri = request.uri();
    if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > MAX_URI_BYTES {
        return EdgeError::UriTooLong.into_response();
    }
    let header_bytes: usize = request.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return EdgeError::HeadersTooLarge.into_response();
    }
    if has_control_characters(uri.path()) {
        return EdgeError::malformed("path", "must not contain control characters").into_response();
    }
    if uri.query().is_some_and(has_control_characters) {
        return EdgeError::malformed("query", "must not contain control characters").into_response();
    }
    next.run(request).await
}

/// Percent-decodes `raw` and looks for control characters: any C0 or C1
/// control, tab and line breaks included (no path or parameter of ours
/// holds one, unlike free text in a body).
fn has_control_characters(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        {
            decoded.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&decoded).chars().any(char::is_control)
}

/// Turns every error answer that is not problem+json yet (the framework's
/// 405, 413 and extractor rejections, layers' timeouts) into one.
async fn problemify(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The framework's rejection texts say what was wrong with the request;
    // they are kept for 4xx, never for 5xx.
    let detail = match tokio::time::timeout(Duration::from_secs(1), body.collect()).await {
        Ok(Ok(collected)) if status.is_client_error() => {
            let text = String::from_utf8_lossy(&collected.to_bytes()).chars().take(300).collect::<String>();
            Some(text.trim().to_owned())
        }
        _ => None,
    };
    let mut problem = Problem::for_status(status, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = parts.headers.get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    if let Some(id) = parts.headers.get("x-request-id") {
        problem.headers_mut().insert("x-request-id", id.clone());
    }
    problem.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    problem
}

#[cfg(test)]
mod tests {
    use super::has_control_characters;

    #[test]
    fn control_characters_in_paths_and_queries() {
        assert!(has_control_characters("/v1/streams/a%00b/events"));
        assert!(has_control_characters("category=%1F"));
        assert!(has_control_characters("category=%7f"));
        assert!(!has_control_characters("/v1/products/0190f3c4-0000-7000-8000-00000000a001"));
        assert!(!has_control_characters("q=caf%C3%A9+noir&limit=5"));
        assert!(!has_control_characters("q=100%"));
    }
}
