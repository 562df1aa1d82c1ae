//! Bearer JWTs (HS256): who is calling, and in which role.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;

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
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub role: Role,
}

impl Principal {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Customer => Err(ApiError::Forbidden("this action needs the admin role")),
        }
    }

    /// Admins act on any customer; a customer only on itself.
    pub fn require_customer(&self, customer_id: Uuid) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Customer if self.sub == customer_id.to_string() => Ok(()),
            Role::Customer => Err(ApiError::Forbidden("customers may act only on their own records")),
        }
    }
}

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
        validation.leeway = 5;
        JwtKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// Mints a token valid for `ttl`.
    pub fn mint(&self, sub: &str, role: Role, ttl: chrono::Duration) -> String {
        let claims = Claims { sub: sub.to_owned(), role, exp: (chrono::Utc::now() + ttl).timestamp() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).expect("HS256 signing cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| ApiError::Unauthorized("the bearer token is invalid or expired"))?;
        Ok(Principal { sub: data.claims.sub, role: data.claims.role })
    }
}

/// Rejects requests without a valid bearer token and records the caller.
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or(ApiError::Unauthorized("an Authorization: Bearer <JWT> header is required"))?;
    let principal = state.jwt.verify(token.trim())?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// The `X-Signature` header a payment provider sends with `body`:
/// `sha256=<hex of the HMAC-SHA256 of the raw body>`. The webhook checks
/// it in constant time.
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
