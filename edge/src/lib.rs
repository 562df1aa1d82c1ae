//! The HTTP edge both APIs stand on: who the caller is, how every failure
//! is answered (problem+json, including the framework's own rejections),
//! the layer stack and server that hold against slow or hostile clients,
//! metrics, health (with the check the API gives it), the consistency-token
//! header codec and the pieces of both APIs' OpenAPI documents.
//!
//! Each API keeps its own `ApiError`; everything here that can fail
//! answers `EdgeError`, which both convert from.

pub mod auth;
pub mod body;
pub mod consistency;
mod cors;
pub mod health;
pub mod methods;
pub mod metrics;
pub mod openapi;
pub mod problem;
mod refusals;
pub mod request;
pub mod serve;
pub mod stack;

pub use auth::{Admin, Authenticated, JwtKeys, Principal, Role};
pub use body::JsonBody;
pub use problem::{EdgeError, FieldError, Internal, Problem};
pub use request::{Query, parse_id};
pub use serve::serve;
pub use stack::stack;

/// Request bodies above this are refused with 413, on every endpoint.
pub const BODY_LIMIT: usize = 64 * 1024;
