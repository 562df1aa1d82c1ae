//! Bearer JWTs (HS256): who is calling, and in which role.
//!
//! `authenticate` runs on every request of both APIs: a token that is
//! present must be valid (401 otherwise, public endpoints included), and a
//! valid one leaves its `Principal` in the request. Handlers then say what
//! they need with an extractor: `Authenticated`, `Admin`; ownership is
//! `Principal::require_customer`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::EdgeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Customer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Customer => "customer",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub role: Role,
    /// When the token ends (seconds since the epoch, leeway included): what
    /// a request holds open (a subscription) ends then too.
    pub expires_at: i64,
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), EdgeError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Customer => Err(EdgeError::Forbidden("this needs the admin role")),
        }
    }

    /// Admins act on any customer; a customer only on itself.
    pub fn require_customer(&self, customer_id: Uuid) -> Result<(), EdgeError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Customer if self.sub == customer_id.to_string() => Ok(()),
            Role::Customer => Err(EdgeError::Forbidden("customers may act only on their own records")),
        }
    }
}

/// Longest token subject accepted.
pub const MAX_SUBJECT_BYTES: usize = 255;

/// The keys, shared by every request (cloning is a reference count).
#[derive(Clone)]
pub struct JwtKeys(Arc<Keys>);

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Tokens already verified, with their validity window: a client sends
    /// the same token with every request, and checking a signature costs
    /// more than the rest of a small command's handling.
    verified: Mutex<HashMap<String, Verified>>,
}

struct Verified {
    principal: Principal,
    exp: i64,
    nbf: Option<i64>,
}

/// Verified tokens remembered at most; past it the memory starts over.
const VERIFIED_TOKENS: usize = 4096;
/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY: i64 = 5;

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY as u64;
        JwtKeys(Arc::new(Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            verified: Mutex::new(HashMap::new()),
        }))
    }

    /// Mints a token valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, ttl: chrono::Duration) -> String {
        let claims = Claims { sub: sub.to_owned(), role, exp: (chrono::Utc::now() + ttl).timestamp(), nbf: None };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for not-yet-valid tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.0.encoding).expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Principal, EdgeError> {
        let invalid = || EdgeError::Unauthorized("the bearer token is invalid or expired");
        let now = chrono::Utc::now().timestamp();
        let in_window = |exp: i64, nbf: Option<i64>| exp >= now - LEEWAY && nbf.is_none_or(|nbf| nbf <= now + LEEWAY);
        if let Some(known) = self.0.verified.lock().expect("token memory poisoned").get(token) {
            return if in_window(known.exp, known.nbf) { Ok(known.principal.clone()) } else { Err(invalid()) };
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.0.decoding, &self.0.validation).map_err(|_| invalid())?.claims;
        // The subject becomes the actor of every event the caller writes.
        let sub = claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES || sub.chars().any(char::is_control) || !in_window(claims.exp, claims.nbf) {
            return Err(invalid());
        }
        let principal = Principal { sub, role: claims.role, expires_at: claims.exp + LEEWAY };
        let mut verified = self.0.verified.lock().expect("token memory poisoned");
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.to_owned(), Verified { principal: principal.clone(), exp: claims.exp, nbf: claims.nbf });
        Ok(principal)
    }
}

/// Verifies a bearer token when one is present; records the caller.
pub async fn authenticate(State(keys): State<JwtKeys>, mut request: Request, next: Next) -> Response {
    if request.headers().get_all(header::AUTHORIZATION).iter().nth(1).is_some() {
        return EdgeError::Unauthorized("send one Authorization header").into_response();
    }
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or(EdgeError::Unauthorized("the Authorization header must be Bearer <JWT>"));
        match token.and_then(|t| keys.verify(t.trim())) {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
            }
            Err(e) => return e.into_response(),
        }
    }
    next.run(request).await
}

/// Refuses requests without a valid bearer token, before anything else of
/// the route runs (so no anonymous request reaches, say, the idempotency
/// store).
pub async fn require_principal(request: Request, next: Next) -> Response {
    if request.extensions().get::<Principal>().is_none() {
        return missing().into_response();
    }
    next.run(request).await
}

fn missing() -> EdgeError {
    EdgeError::Unauthorized("an Authorization: Bearer <JWT> header is required")
}

/// A caller with a valid token.
pub struct Authenticated(pub Principal);

/// A caller with a valid admin token.
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = EdgeError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, EdgeError> {
        parts.extensions.get::<Principal>().cloned().map(Authenticated).ok_or_else(missing)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = EdgeError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, EdgeError> {
        let Authenticated(principal) = Authenticated::from_request_parts(parts, state).await?;
        principal.require_admin()?;
        Ok(Admin(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_token_is_refused_once_its_window_closes() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys.mint("someone", Role::Customer, chrono::Duration::minutes(5));
        let principal = keys.verify(&token).unwrap();
        assert_eq!((principal.sub.as_str(), principal.role), ("someone", Role::Customer));
        assert!(keys.0.verified.lock().unwrap().contains_key(&token), "a verified token is remembered");
        // The remembered token expires (as if time passed): refused.
        keys.0.verified.lock().unwrap().get_mut(&token).unwrap().exp = chrono::Utc::now().timestamp() - LEEWAY - 1;
        assert!(keys.verify(&token).is_err());
        // A token signed with another key is never taken for a known one.
        let forged = JwtKeys::new(b"another-secret-another-secret-ab").mint("someone", Role::Admin, chrono::Duration::minutes(5));
        assert!(keys.verify(&forged).is_err());
    }
}
