//! The wiring of storekeeper: which crate talks to which, built once from
//! configuration. `storekeeper serve`, each single-role command and the
//! tests (through `test-support`) all start the system with `App::start`,
//! so there is one way the parts are put together. `anyhow` is used here,
//! at the binary's edge, only.

pub mod app;
pub mod database;
pub mod events;
pub mod seed;

pub use app::{App, Config, EventLogConfig, KafkaConfig, Listeners, Roles};
