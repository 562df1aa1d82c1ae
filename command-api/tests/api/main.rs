//! The command API over real HTTP against a fresh PostgreSQL database per
//! test. One integration-test binary for the crate.

mod support;

mod auth;
mod commands;
mod concurrency;
mod errors;
mod idempotency;
mod orders;
mod schema;
