//! `storekeeper`: one binary for every role. Parses the command line and
//! hands over to the library: `run` for the roles, `admin` and `seed` for
//! the operator's commands.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use storekeeper::Roles;
use storekeeper::cli::{Cli, Cmd};
use storekeeper::run::{RoleArgs, run};

/// mimalloc rather than glibc's allocator: the log's events are JSON
/// trees, allocated and freed by the thousand per batch by every
/// consumer, and glibc spent more of a catch-up's CPU in malloc and free
/// (a quarter of the machine, `perf record -a`) than in the code it served.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the async runtime");
    let result = runtime.block_on(dispatch(cli.command));
    // Whatever is still running (a stuck task) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storekeeper: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Cmd) -> Result<()> {
    let none = Roles::NONE;
    match command {
        Cmd::Serve { db, vault, append, command, query, jwt, webhook, kafka, limits, log } => {
            run(RoleArgs {
                embedded: true,
                limits: limits.limits(),
                command_addr: Some(command.command_addr),
                query_addr: Some(query.query_addr),
                console_command_url: query.console_command_url,
                jwt_secret: jwt.jwt_secret,
                webhook_secret: webhook.webhook_secret,
                kafka: Some(kafka),
                ..RoleArgs::new(Roles::ALL, db, log, vault, Some(append))
            })
            .await
        }
        Cmd::CommandApi { db, vault, append, command, jwt, webhook, limits, log } => {
            run(RoleArgs {
                limits: limits.limits(),
                command_addr: Some(command.command_addr),
                jwt_secret: jwt.jwt_secret,
                webhook_secret: webhook.webhook_secret,
                ..RoleArgs::new(Roles { command: true, ..none }, db, log, vault, Some(append))
            })
            .await
        }
        Cmd::QueryApi { db, vault, query, jwt, kafka, limits, log } => {
            run(RoleArgs {
                limits: limits.limits(),
                query_addr: Some(query.query_addr),
                console_command_url: query.console_command_url,
                jwt_secret: jwt.jwt_secret,
                kafka: Some(kafka),
                ..RoleArgs::new(Roles { query: true, ..none }, db, log, vault, None)
            })
            .await
        }
        Cmd::Relay { kafka, .. } if kafka.kafka_brokers.is_none() => bail!("KAFKA_BROKERS must be set for `storekeeper relay`"),
        Cmd::Relay { db, vault, kafka, log } => {
            run(RoleArgs { kafka: Some(kafka), ..RoleArgs::new(Roles { relay: true, ..none }, db, log, vault, None) }).await
        }
        Cmd::Projections { action: None, db, vault, append, kafka, log } => {
            let roles = Roles { workers: true, ..none };
            run(RoleArgs { kafka: Some(kafka), ..RoleArgs::new(roles, db, log, vault, Some(append)) }).await
        }
        Cmd::Projections { action: Some(action), .. } => storekeeper::admin::projections::run(action).await,
        Cmd::Events { action } => storekeeper::admin::events::run(action).await,
        Cmd::Seed { products, customers, orders, db, vault, append } => {
            storekeeper::seed::run(&db, &vault, &append, storekeeper::seed::Sizes { products, customers, orders }).await
        }
        Cmd::Token(args) => storekeeper::admin::token::mint(args),
        Cmd::Operators { action } => storekeeper::admin::operators::run(action).await,
    }
}
