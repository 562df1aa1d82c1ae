//! Backups of the PostgreSQL log: `export` writes it as JSON Lines, one
//! envelope per line in global order, and `import` restores such a file
//! into an empty log. They live beside the log because they are its own
//! knowledge: its tables, its hash chain and seals (`crate::seal`, the one
//! computation of both), and the vault's keys.
//!
//! Export seals what is final first and writes the sealed events, each
//! with its stream hash, then an end line: how many events, up to which
//! position, and the log's own seal there (the chain over their hashes).
//! Import restores into an empty log only, in one transaction: every event
//! exactly as exported (position and recording time included, so
//! exporting again gives the same bytes), hashed afresh by the sealer's
//! function on the way in and compared with the file's hashes, and the
//! whole file compared with its end line. A line whose hash does not
//! match, a line or stream taken out, a file cut short, a gap in a stream
//! or positions out of order, and nothing is imported. Someone who
//! rewrites hashes and end line together is only caught by a seal kept
//! elsewhere.
//!
//! Before the end line come the vault's lines: the secret that emails are
//! claimed under, and each customer's data key (a forgotten customer's as
//! a tombstone, with no key), without which the sealed personal fields of
//! the restored log would never open again. They are not covered by the
//! seal; an export holds every live customer's key, so keep it as you
//! would keep the database.
//!
//! `Plaintext::Reencrypt` is how a log written before personal data was
//! sealed moves forward: export the old log, import into a new empty one
//! re-encrypting, and the personal fields arrive sealed under fresh keys.

mod export;
mod format;
mod import;
mod keys;
mod reencrypt;

pub use export::export;
pub use import::import;

use crate::EventLogError;

/// Events per read while exporting, and per insert while importing.
const PAGE: usize = 2000;

/// What import does with personal data written in the clear (by a log
/// from before sealing).
#[derive(Clone, Copy)]
pub enum Plaintext {
    /// Keep every event as exported, byte for byte.
    Keep,
    /// Encrypt it under fresh keys per customer (wrapped under `wrapping`,
    /// the key encryption key, when there is one) and claim emails by
    /// keyed hash: the supported way to bring such a log forward.
    Reencrypt { wrapping: Option<crate::vault::WrappingKey> },
}

/// What an import brought in.
#[derive(Debug)]
pub struct Imported {
    /// Each checked against its hash.
    pub events: u64,
    /// The seal over them, from the file's end line (or, re-encrypted, the
    /// new log's own).
    pub seal: String,
    /// Events whose personal data was sealed on the way in.
    pub reencrypted: Option<u64>,
}

/// Why an export or an import failed. An import that fails leaves the log
/// as it was: empty.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the event log is not empty: import restores into an empty database only")]
    NotEmpty,
    /// A line that cannot be what an export holds.
    #[error("line {line}: {why}: the input is not an export")]
    NotAnExport { line: usize, why: String },
    /// A vault line whose secret or key is not one.
    #[error("line {line}: {why}")]
    BadKey { line: usize, why: &'static str },
    #[error("line {line}: {what}")]
    Unreadable {
        line: usize,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "line {line}: the event at position {position} does not match its stream_hash: the file was altered or is not an export (nothing was imported)"
    )]
    Altered { line: usize, position: u64 },
    #[error("the file has no end line: it was cut short, or is not an export (nothing was imported)")]
    NoEndLine,
    #[error(
        "the file's events do not add up to its end line ({events} events up to position {up_to}): lines were taken out or changed (nothing was imported)"
    )]
    DoesNotAddUp { events: u64, up_to: u64 },
    #[error("the event at position {0} is sealed but has no hash: run `storekeeper events verify`")]
    Unhashed(u64),
    #[error("the event at position {0} names no customer: its personal data cannot be sealed")]
    NoOwner(u64),
    #[error("another process keeps sealing this database's log: stop every storekeeper process on it and import again")]
    SealerBusy,
    #[error("{what}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{what}")]
    Log {
        what: &'static str,
        #[source]
        source: EventLogError,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// `.context(...)` for the errors of the database, the log and the IO at
/// the edges of a backup.
trait Context<T> {
    fn context(self, what: &'static str) -> Result<T, BackupError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn context(self, what: &'static str) -> Result<T, BackupError> {
        self.map_err(|source| BackupError::Database { what: what.to_owned(), source })
    }
}

impl<T> Context<T> for Result<T, EventLogError> {
    fn context(self, what: &'static str) -> Result<T, BackupError> {
        self.map_err(|source| BackupError::Log { what, source })
    }
}

impl<T> Context<T> for Result<T, std::io::Error> {
    fn context(self, what: &'static str) -> Result<T, BackupError> {
        self.map_err(|source| BackupError::Io { what, source })
    }
}
