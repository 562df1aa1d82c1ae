//! Consistency tokens on the wire: a write answers one in
//! `X-Consistency-Token`; a read may carry several (one or more headers,
//! comma-separated) and `X-Consistency-Timeout` in ms.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use crate::EdgeError;

pub const TOKEN_HEADER: &str = "x-consistency-token";
pub const TIMEOUT_HEADER: &str = "x-consistency-timeout";
pub const DEFAULT_WAIT: Duration = Duration::from_millis(2000);
/// Larger timeouts are taken as this (SPEC: 10,000 ms).
pub const MAX_WAIT: Duration = Duration::from_millis(10_000);
/// More tokens than this in one request is refused.
pub const MAX_TOKENS: usize = 64;

/// The token for a write whose last event is at `position`.
pub fn encode(position: u64) -> String {
    position.to_string()
}

pub fn header_value(position: u64) -> HeaderValue {
    HeaderValue::from_str(&encode(position)).expect("a number is a valid header")
}

/// What a read asked to see before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Sorted, without duplicates, never empty.
    pub positions: Vec<u64>,
    pub timeout: Duration,
}

/// The tokens a request carries, if any.
pub fn decode(headers: &HeaderMap) -> Result<Option<Wanted>, EdgeError> {
    let bad = || EdgeError::malformed("X-Consistency-Token", "must be a token from a write");
    let mut positions = Vec::new();
    for value in headers.get_all(TOKEN_HEADER) {
        let text = value.to_str().map_err(|_| bad())?;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            positions.push(part.parse::<u64>().map_err(|_| bad())?);
            if positions.len() > MAX_TOKENS {
                return Err(EdgeError::malformed("X-Consistency-Token", format!("at most {MAX_TOKENS} tokens per request")));
            }
        }
    }
    if positions.is_empty() {
        return Ok(None);
    }
    positions.sort_unstable();
    positions.dedup();
    let timeout = match headers.get(TIMEOUT_HEADER) {
        None => DEFAULT_WAIT,
        Some(v) => Duration::from_millis(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| EdgeError::malformed("X-Consistency-Timeout", "must be a number of milliseconds"))?,
        )
        .min(MAX_WAIT),
    };
    Ok(Some(Wanted { positions, timeout }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_several_headers() {
        let mut headers = HeaderMap::new();
        headers.append(TOKEN_HEADER, HeaderValue::from_static("7, 3"));
        headers.append(TOKEN_HEADER, HeaderValue::from_static("3"));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("99999999"));
        let wanted = decode(&headers).unwrap().unwrap();
        assert_eq!(wanted.positions, vec![3, 7]);
        assert_eq!(wanted.timeout, MAX_WAIT);
        assert_eq!(decode(&HeaderMap::new()).unwrap(), None);
        headers.insert(TOKEN_HEADER, HeaderValue::from_static("x"));
        assert!(decode(&headers).is_err());
    }
}
