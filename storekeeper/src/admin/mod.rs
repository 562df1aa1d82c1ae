//! The operator's commands that are not roles: each takes its parsed
//! arguments, does its work through the crate that owns the data, and
//! prints what the operator reads (the text and exit codes the e2e tests
//! hold still), so `main` only parses and dispatches.

pub mod events;
pub mod operators;
pub mod projections;
pub mod token;
