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
    let value: T = match serde_path_to_error::deserialize(&mut *de) {
        Ok(value) => {
            de.end().map_err(|_| EdgeError::malformed("", "trailing data after the JSON object"))?;
            value
        }
        // JSON has one number type: `2.0` is the integer 2 (as JSON Schema
        // says too). Only a body that has such a number pays for a second
        // parse, with those numbers written as integers.
        Err(e) if e.inner().to_string().starts_with("invalid type: floating point") => {
            // One value and nothing after it, or this fails.
            let mut tree: Value = serde_json::from_slice(bytes).map_err(|e| EdgeError::malformed("", describe(&e)))?;
            integral_floats_as_integers(&mut tree);
            serde_path_to_error::deserialize(tree).map_err(|e| {
                let path = e.path().to_string();
                EdgeError::malformed(if path == "." { String::new() } else { path }, e.into_inner().to_string())
            })?
        }
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            return Err(EdgeError::malformed(field, describe(&inner)));
        }
    };
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

/// Every number with no fraction (`3.0`, `1e3`) in `value` as the integer it
/// is, where an integer type holds it exactly.
fn integral_floats_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Up to 2^53 every integer is a float exactly; past it a float
            // may stand for several integers, so it is refused, not rounded.
            if f.fract() == 0.0 && f.abs() <= 2f64.powi(53) {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_as_integers),
        Value::Object(members) => members.values_mut().for_each(integral_floats_as_integers),
        _ => {}
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

    #[test]
    fn integral_numbers_are_integers_however_written() {
        #[derive(Debug, serde::Deserialize)]
        struct Counted {
            n: u32,
            m: i64,
        }
        let counted: Counted = parse(br#"{"n": 3.0, "m": -1e3}"#).expect("integral floats are integers");
        assert_eq!((counted.n, counted.m), (3, -1000));
        let Err(EdgeError::Malformed(errors)) = parse::<Counted>(br#"{"n": 3.5, "m": 1}"#) else { panic!("3.5 taken as an integer") };
        assert_eq!(errors[0].field, "n");
        assert!(parse::<Counted>(br#"{"n": 4294967296.0, "m": 1}"#).is_err(), "out of range for u32");
        assert!(parse::<Counted>(br#"{"n": 1, "m": 9007199254740993.0}"#).is_err(), "not rounded to a neighbour");
    }
}
