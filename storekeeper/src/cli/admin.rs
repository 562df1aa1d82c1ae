//! The subcommands of the administrative commands (`operators`, `events`,
//! `projections`): what an operator does to a deployment, beside the
//! roles that run it.

use std::path::PathBuf;

use clap::Subcommand;

use super::{DatabaseArgs, VaultArgs};

#[derive(Subcommand)]
pub enum OperatorsAction {
    /// Adds an operator (argon2id hash outside the log).
    Add {
        email: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Removes an operator.
    Remove {
        email: String,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Every operator, with the subject its actions carry.
    List {
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(Subcommand)]
pub enum EventsAction {
    /// Checks every sealed event against its hash and its stream's hash
    /// chain, and every seal; exits 1 naming the first position that fails.
    Verify {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Writes every event, one envelope per line, in global order.
    Export {
        /// Where to write; `-` or absent: stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Appends an export's events to an empty log.
    Import {
        /// Where to read; `-` or absent: stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Encrypt personal data the file holds in the clear (a log from
        /// before encryption) under fresh per-customer keys; the new log is
        /// hashed and sealed afresh.
        #[arg(long)]
        reencrypt: bool,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        vault: VaultArgs,
    },
}

#[derive(Subcommand)]
pub enum ProjectionsAction {
    /// Every projection's version, position, lag, state and parked events.
    List {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Applies a projection's parked (dead-lettered) events again.
    Retry {
        name: String,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        vault: VaultArgs,
    },
    /// Rebuilds a projection from the log beside its live tables; the
    /// running workers build it and swap it in once it has caught up.
    Rebuild {
        name: String,
        /// Stay, with a progress bar, until the rebuild has taken over.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Folds the log afresh beside a projection's live tables (every
    /// PostgreSQL read model when no name is given), compares them row by
    /// row and prints the rows that differ; exits 1 on any difference.
    Verify {
        name: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        vault: VaultArgs,
    },
}
