//! The projection runner against a real PostgreSQL: checkpoints, restarts,
//! rebuilds and poison events, and the read models it feeds.

mod read_models;
mod rebuilds;
mod running;
mod support;
