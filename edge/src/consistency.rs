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

/// What `decode` takes in one `X-Consistency-Token` header: 1 to 64
/// numbers, comma-separated, spaces around the commas allowed.
pub const TOKENS_PATTERN: &str = "^[0-9]{1,19}( *, *[0-9]{1,19}){0,63}$";
/// What `decode` takes in `X-Consistency-Timeout`.
pub const TIMEOUT_PATTERN: &str = "^[0-9]{1,19}$";

/// 1 to 19 decimal digits (always a u64), nothing else.
fn number(text: &str) -> Option<u64> {
    ((1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
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
        for part in text.split(',').map(|p| p.trim_matches(' ')) {
            positions.push(number(part).ok_or_else(bad)?);
            if positions.len() > MAX_TOKENS {
                return Err(EdgeError::malformed("X-Consistency-Token", format!("at most {MAX_TOKENS} tokens per request")));
            }
        }
    }
    // Checked even without a token: a malformed header is refused, used or not.
    let timeout = match headers.get(TIMEOUT_HEADER) {
        None => DEFAULT_WAIT,
        Some(v) => Duration::from_millis(
            v.to_str()
                .ok()
                .and_then(number)
                .ok_or_else(|| EdgeError::malformed("X-Consistency-Timeout", "must be a number of milliseconds (1 to 19 digits)"))?,
        )
        .min(MAX_WAIT),
    };
    if positions.is_empty() {
        return Ok(None);
    }
    positions.sort_unstable();
    positions.dedup();
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
