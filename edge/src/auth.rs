//! Bearer JWTs (HS256): who is calling, and in which role.
//!
//! `authenticate` runs on every request of both APIs: a token that is
//! present must be valid (401 otherwise, public endpoints included), and a
//! valid one leaves its `Principal` in the request. Handlers then say what
//! they need with an extractor: `Caller` (anyone), `Authenticated`,
//! `Admin`; ownership is `Principal::require_customer`.

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

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        JwtKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Mints a token valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, ttl: chrono::Duration) -> String {
        let claims = Claims { sub: sub.to_owned(), role, exp: (chrono::Utc::now() + ttl).timestamp(), nbf: None };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for not-yet-valid tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Principal, EdgeError> {
        let invalid = || EdgeError::Unauthorized("the bearer token is invalid or expired");
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|_| invalid())?;
        // The subject becomes the actor of every event the caller writes.
        let sub = data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_BYTES || sub.chars().any(char::is_control) {
            return Err(invalid());
        }
        Ok(Principal { sub, role: data.claims.role })
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

/// The caller, if the request carries a (valid) token.
pub struct Caller(pub Option<Principal>);

/// A caller with a valid token.
pub struct Authenticated(pub Principal);

/// A caller with a valid admin token.
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = EdgeError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, EdgeError> {
        Ok(Caller(parts.extensions.get::<Principal>().cloned()))
    }
}

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
