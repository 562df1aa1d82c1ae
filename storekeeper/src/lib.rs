//! The wiring of storekeeper: which crate talks to which, built once from
//! configuration. `storekeeper serve`, each single-role command and the
//! tests (through `test-support`) all start the system with `App::start`,
//! so there is one way the parts are put together. The command line
//! (`cli`), running roles from it (`run`) and the operator's commands
//! (`admin`, `seed`) live here too, so that the binary only parses and
//! dispatches, and the e2e tests hold them. `anyhow` is used here, at the
//! binary's edge, only.

pub mod admin;
pub mod app;
pub mod cli;
pub mod database;
pub mod run;
pub mod seed;

pub use app::{App, Config, EventLogConfig, KafkaConfig, Listeners, Roles};
