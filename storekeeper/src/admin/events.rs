//! `storekeeper events verify|export|import`: the log's tamper evidence and
//! backups (`eventlog::seal`, `eventlog::backup`), on a log in PostgreSQL.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use eventlog::backup::{self, Plaintext};
use sqlx::PgPool;

use crate::cli::EventsAction;

pub async fn run(action: EventsAction) -> Result<()> {
    let (EventsAction::Verify { db } | EventsAction::Export { db, .. } | EventsAction::Import { db, .. }) = &action;
    if db.kurrentdb_url().is_some() {
        bail!(
            "`storekeeper events` works on a log in PostgreSQL: with KURRENTDB_URL set the log is on KurrentDB, which has its own backups (and no hash chain of ours)"
        );
    }
    match action {
        EventsAction::Verify { db } => {
            let (_cluster, pool) = db.open(false).await?;
            verify(&pool).await
        }
        EventsAction::Export { output, db } => {
            let (_cluster, pool) = db.open(false).await?;
            let mut out: Box<dyn Write> = match output.filter(|p| p.as_os_str() != "-") {
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                Some(path) => {
                    Box::new(std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?))
                }
            };
            let written = backup::export(&pool, &mut out).await?;
            eprintln!("storekeeper: exported {written} events");
            Ok(())
        }
        EventsAction::Import { input, reencrypt, db, vault } => {
            let (_cluster, pool) = db.open(false).await?;
            import(&pool, input, reencrypt.then(|| vault.wrapping_key())).await
        }
    }
}

/// Checks the log against its hashes and seals; an altered log is an error
/// (exit 1) after the position is printed.
async fn verify(pool: &PgPool) -> Result<()> {
    let found = eventlog::seal::verify(pool).await.context("verify the log")?;
    let rate = found.checked as f64 / found.seconds.max(1e-3);
    if let Some((position, problem)) = found.problem {
        println!("the log fails verification at position {position}: {problem}");
        bail!("the log was altered at or before position {position}");
    }
    println!(
        "the log verifies: {} sealed events checked in {:.1} s ({rate:.0} events/s), {} newer ones not sealed yet",
        found.checked, found.seconds, found.unsealed
    );
    if let Some((up_to, seal)) = found.seal {
        println!("latest seal, up to position {up_to}: {seal} (keep it elsewhere to check against later)");
    }
    Ok(())
}

/// Restores an export from `input` (stdin when absent or `-`).
/// `reencrypt`: encrypt what the file holds in the clear, under fresh
/// keys wrapped under the key encryption key given, if any.
async fn import(pool: &PgPool, input: Option<PathBuf>, reencrypt: Option<Option<eventlog::vault::WrappingKey>>) -> Result<()> {
    let read: Box<dyn BufRead> = match input.filter(|p| p.as_os_str() != "-") {
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
        Some(path) => Box::new(std::io::BufReader::new(std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?)),
    };
    let plaintext = match reencrypt {
        Some(wrapping) => Plaintext::Reencrypt { wrapping },
        None => Plaintext::Keep,
    };
    let imported = backup::import(pool, read, plaintext).await?;
    eprintln!("storekeeper: imported {} events, each checked against its hash; seal {}", imported.events, imported.seal);
    if let Some(n) = imported.reencrypted {
        eprintln!(
            "storekeeper: sealed the personal data of {n} events held in the clear, under fresh keys per customer; the log was hashed and sealed afresh"
        );
    }
    Ok(())
}
