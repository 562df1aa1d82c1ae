//! Path and query parameters, refused as problem+json with the field named.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::EdgeError;

/// An id in a path.
pub fn parse_id(raw: &str) -> Result<Uuid, EdgeError> {
    parse_uuid(raw).ok_or_else(|| EdgeError::malformed("id", "must be a UUID"))
}

/// A UUID in its one documented form (`format: uuid`, RFC 9562's
/// hyphenated 8-4-4-4-12 hex digits), not the braced, URN or bare forms
/// the parser also knows.
pub fn parse_uuid(raw: &str) -> Option<Uuid> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse(raw).ok()
}

/// A query string, parsed strictly (unknown parameters and wrong types are
/// 400 naming the parameter).
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = EdgeError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, EdgeError> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Query).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            EdgeError::malformed(field, e.into_inner().to_string())
        })
    }
}
