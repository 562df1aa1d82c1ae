//! Request bodies: exactly one JSON object, parsed strictly, with no
//! control characters in any string. Parsing errors name the field.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{EdgeError, FieldError};

/// A JSON request body: one object, at most `BODY_LIMIT` bytes.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = EdgeError;

    async fn from_request(request: Request, state: &S) -> Result<Self, EdgeError> {
        let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let json = content_type.is_empty() || {
            let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        };
        if !json {
            return Err(EdgeError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                EdgeError::PayloadTooLarge
            } else {
                EdgeError::malformed("", "the request body could not be read")
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses one JSON object, naming the field at fault. Trailing data, a
/// top-level value other than an object, and control characters in
/// strings (other than tab, line feed and carriage return) are refused.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EdgeError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => return Err(EdgeError::malformed("", "the body must be one JSON object")),
        None => return Err(EdgeError::malformed("", "the body is empty; it must be one JSON object")),
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let inner = e.into_inner();
        EdgeError::malformed(field, describe(&inner))
    })?;
    de.end().map_err(|_| EdgeError::malformed("", "trailing data after the JSON object"))?;
    // Raw control characters are a syntax error already; escaped ones
    // (`\u0000`) are only possible where the body has a `\u` escape.
    if bytes.windows(2).any(|w| w == b"\\u") {
        let tree: Value = serde_json::from_slice(bytes).map_err(|e| EdgeError::malformed("", describe(&e)))?;
        if let Some(field) = control_character_at(&tree, String::new()) {
            return Err(EdgeError::Malformed(vec![FieldError {
                field,
                message: "must not contain control characters (NUL and the like)".to_owned(),
            }]));
        }
    }
    Ok(value)
}

fn describe(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof | serde_json::error::Category::Syntax => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
        _ => {
            let message = e.to_string();
            message.split(" at line ").next().unwrap_or(&message).to_owned()
        }
    }
}

/// Text that no field of ours may hold.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

fn control_character_at(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(s) if s.chars().any(is_forbidden_char) => Some(path),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| control_character_at(v, format!("{path}[{i}]"))),
        Value::Object(members) => members.iter().find_map(|(k, v)| {
            if k.chars().any(is_forbidden_char) {
                return Some(path.clone());
            }
            control_character_at(v, if path.is_empty() { k.clone() } else { format!("{path}.{k}") })
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        tags: Option<Vec<String>>,
    }

    #[test]
    fn one_object_and_nothing_else() {
        assert!(parse::<Body>(br#" {"name":"a"} "#).is_ok());
        assert!(parse::<Body>(br#"{"name":"a"} {"name":"b"}"#).is_err());
        assert!(parse::<Body>(br#"{"name":"a"}garbage"#).is_err());
        assert!(parse::<Body>(br#"["a"]"#).is_err());
        assert!(parse::<Body>(b"").is_err());
        assert!(parse::<Body>(br#""a""#).is_err());
    }

    #[test]
    fn control_characters_are_refused_with_their_field() {
        let Err(EdgeError::Malformed(errors)) = parse::<Body>(br#"{"name":"a\u0000b"}"#) else { panic!("NUL accepted") };
        assert_eq!(errors[0].field, "name");
        let Err(EdgeError::Malformed(errors)) = parse::<Body>(br#"{"name":"a","tags":["x","\u001b"]}"#) else { panic!("ESC accepted") };
        assert_eq!(errors[0].field, "tags[1]");
        assert!(parse::<Body>(br#"{"name":"line\nbreak \u00e9"}"#).is_ok());
    }
}
