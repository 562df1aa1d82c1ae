//! The `storekeeper` binary as its users run it: one process, or every
//! role as its own process against PostgreSQL and the test broker.

mod cli;
mod deploy;
mod deployment;
mod lifecycle;
mod operations;
mod operators;
mod poison;
mod relay;
mod shutdown;
mod traces;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_storekeeper");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The binary with a clean configuration environment.
pub fn storekeeper(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .env_remove("STOREKEEPER_JWT_SECRET")
        .env_remove("STOREKEEPER_WEBHOOK_SECRET")
        // These tests run on PostgreSQL's log and export no spans, whatever
        // the shell running them has set (KURRENTDB_URL runs the KurrentDB
        // contract tests).
        .env_remove("KURRENTDB_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("RUST_LOG", "warn");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// A development token from `storekeeper token`, as a user makes one.
pub fn token(role: &str, sub: &str) -> String {
    let out = run(&mut storekeeper(&["token", "--role", role, "--sub", sub]));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn admin_token() -> String {
    token("admin", "alice")
}

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS is not set: run the tests with `cargo xtask test`")
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("storekeeper-e2e-{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
