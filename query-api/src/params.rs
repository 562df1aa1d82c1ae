//! Query parameters every list shares, and their bounds.

use uuid::Uuid;

use crate::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::malformed("limit", format!("must be between 1 and {MAX_LIMIT}"))),
    }
}

/// A keyset cursor over ids, as handed out in `next_cursor`.
pub fn cursor_id(cursor: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    cursor
        .map(|c| edge::request::parse_uuid(c).ok_or_else(|| ApiError::malformed("cursor", "is not a cursor from an earlier page")))
        .transpose()
}

/// Dates a filter may name: the four-digit years RFC 3339 writes
/// (PostgreSQL's range is wider, chrono's wider still).
pub fn check_year(field: &str, year: Option<i32>) -> Result<(), ApiError> {
    match year {
        Some(y) if !(0..=9999).contains(&y) => Err(ApiError::malformed(field, "must be a date between the years 0 and 9999")),
        _ => Ok(()),
    }
}

/// Ids in paths, refused as the edge refuses them.
pub use edge::parse_id;
