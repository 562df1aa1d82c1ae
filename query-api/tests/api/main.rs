//! The query API over real HTTP, fed by the real write side, projections
//! and process manager on a fresh PostgreSQL database per test.

mod support;

mod consistency;
mod edge;
mod events;
mod operations;
mod reads;
mod schema;
mod search;
