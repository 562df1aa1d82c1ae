//! 405 before anything else looks at a request: a method a path does not
//! have is answered `method_not_allowed` with `Allow`, whatever its headers,
//! token or body, from the same OpenAPI document the API serves (a test
//! holds the document to the routes). Without it, checks that run inside a
//! route (idempotency keys, principals) would answer first.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::Problem;

/// The keys of an OpenAPI path item that are operations.
const VERBS: [Method; 8] =
    [Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::OPTIONS, Method::HEAD, Method::PATCH, Method::TRACE];

/// Each documented path template and the methods it has.
#[derive(Clone)]
pub struct Methods(Arc<Vec<(Vec<Segment>, Vec<Method>)>>);

#[derive(PartialEq)]
enum Segment {
    Literal(String),
    Parameter,
}

impl Methods {
    /// From an OpenAPI document's `paths`.
    pub fn from_openapi(document: &Value) -> Self {
        let paths = document["paths"].as_object().into_iter().flatten();
        let routes = paths
            .map(|(template, operations)| {
                let segments = template
                    .split('/')
                    .map(|s| if s.starts_with('{') { Segment::Parameter } else { Segment::Literal(s.to_owned()) })
                    .collect();
                let mut methods: Vec<Method> = operations
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(name, _)| VERBS.iter().find(|verb| verb.as_str().eq_ignore_ascii_case(name)).cloned())
                    .collect();
                // The framework answers HEAD wherever there is a GET.
                if methods.contains(&Method::GET) {
                    methods.push(Method::HEAD);
                }
                (segments, methods)
            })
            .collect();
        Methods(Arc::new(routes))
    }

    /// The methods of the documented path `path` matches, if it matches one.
    fn of(&self, path: &str) -> Option<&[Method]> {
        let parts: Vec<&str> = path.split('/').collect();
        self.0
            .iter()
            .find(|(segments, _)| {
                segments.len() == parts.len()
                    && segments.iter().zip(&parts).all(|(segment, part)| match segment {
                        Segment::Parameter => !part.is_empty(),
                        Segment::Literal(literal) => literal == part,
                    })
            })
            .map(|(_, methods)| methods.as_slice())
    }
}

pub(crate) async fn refuse_undeclared(State(methods): State<Methods>, request: Request, next: Next) -> Response {
    if let Some(allowed) = methods.of(request.uri().path())
        && !allowed.contains(request.method())
    {
        let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let mut response = Problem::for_status(StatusCode::METHOD_NOT_ALLOWED, Some(format!("this path answers {allow}"))).into_response();
        if let Ok(value) = HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments() {
        let methods = Methods::from_openapi(&serde_json::json!({ "paths": {
            "/v1/orders": { "get": {}, "post": {} },
            "/v1/orders/{id}/cancel": { "post": {} }
        }}));
        assert_eq!(methods.of("/v1/orders"), Some(&[Method::GET, Method::POST, Method::HEAD][..]));
        assert_eq!(methods.of("/v1/orders/42/cancel"), Some(&[Method::POST][..]));
        assert_eq!(methods.of("/v1/orders//cancel"), None);
        assert_eq!(methods.of("/v1/orders/42"), None);
        assert_eq!(methods.of("/v1/orders/42/cancel/more"), None);
    }
}
