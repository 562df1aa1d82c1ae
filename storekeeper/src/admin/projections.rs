//! `storekeeper projections list|retry|rebuild|verify`: the read models'
//! states, their parked events, rebuilds (with a progress bar until one
//! takes over) and verification against the log, printed for an operator.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::PgPool;

use crate::app::vaulted_log;
use crate::cli::ProjectionsAction;

pub async fn run(action: ProjectionsAction) -> Result<()> {
    match action {
        ProjectionsAction::List { db } => {
            let (_cluster, pool) = db.open(false).await?;
            list(&pool).await
        }
        ProjectionsAction::Retry { name, db, vault } => {
            let (_cluster, pool) = db.open(false).await?;
            let projection = projections::all().into_iter().find(|p| p.name() == name);
            if projection.is_none() && name != projections::names::SEARCH && name != projections::names::ORDER_PROCESS {
                bail!("no projection is called {name}");
            }
            let (log, vault) = vaulted_log(&pool, &crate::cli::event_log(&db, &vault, None)).await?;
            let retried = match projection {
                Some(projection) => projections::retry_parked(&pool, &*log, &*projection).await,
                None if name == projections::names::SEARCH => projections::search::retry_parked(&pool, &*log).await,
                None => retry_process(&pool, log, vault).await,
            }
            .context("retry parked events")?;
            println!(
                "{} parked event(s) of {name} applied, {} still parked, {} dropped (not events of the log)",
                retried.applied, retried.still_parked, retried.discarded
            );
            if name == projections::names::SEARCH && retried.applied > 0 {
                println!("each query node's index reads the released products again from the log with its next batch");
            }
            if retried.still_parked > 0 {
                bail!("{} event(s) of {name} are still parked: see `storekeeper projections list`", retried.still_parked);
            }
            Ok(())
        }
        ProjectionsAction::Rebuild { name, wait, db } => {
            let (_cluster, pool) = db.open(false).await?;
            if !projections::request_rebuild(&pool, &name).await.context("request the rebuild")? {
                bail!("no projection called {name} has run against this database");
            }
            println!(
                "rebuild of {name} requested: the running workers build it beside the live tables and swap it in (watch `storekeeper projections list`)"
            );
            if wait {
                watch_rebuild(&pool, &name).await?;
            }
            Ok(())
        }
        ProjectionsAction::Verify { name, db, vault } => {
            let (_cluster, pool) = db.open(false).await?;
            let chosen: Vec<_> = projections::all().into_iter().filter(|p| name.as_deref().is_none_or(|n| n == p.name())).collect();
            if chosen.is_empty() {
                let name = name.unwrap_or_default();
                if name == projections::names::SEARCH {
                    bail!(
                        "the search index cannot be verified yet; rebuild it with `storekeeper projections rebuild` on the query API's node"
                    );
                }
                bail!("no projection is called {name}");
            }
            let (log, _) = vaulted_log(&pool, &crate::cli::event_log(&db, &vault, None)).await?;
            let mut differ = Vec::new();
            for projection in chosen {
                let found =
                    projections::verify(&pool, &*log, &*projection).await.with_context(|| format!("verify {}", projection.name()))?;
                print_verification(&found);
                if !found.matches() {
                    differ.push(found.projection);
                }
            }
            if !differ.is_empty() {
                bail!("{} differ from the log: mend with `storekeeper projections rebuild NAME`", differ.join(", "));
            }
            Ok(())
        }
    }
}

/// Takes the order process's parked steps again, in log order; each
/// step is idempotent, so only what is missing happens.
async fn retry_process(
    pool: &PgPool,
    log: std::sync::Arc<dyn eventlog::EventLog>,
    vault: std::sync::Arc<eventlog::Vault>,
) -> Result<projections::Retried, projections::RetryError> {
    let manager = commands::ProcessManager::new(commands::CommandService::new(log.clone(), vault), pool.clone());
    let mut conn = pool.acquire().await?;
    let mut retried = projections::Retried { applied: 0, still_parked: 0, discarded: 0 };
    for entry in projections::parked_in_order(&mut conn, &*log, projections::names::ORDER_PROCESS).await? {
        match entry {
            projections::ParkedEntry::Event(event) => {
                match manager.retry(&event).await.map_err(|e| projections::RetryError::Step(e.to_string()))? {
                    None => {
                        projections::forget_parked(&mut conn, projections::names::ORDER_PROCESS, event.global_position as i64).await?;
                        retried.applied += 1;
                    }
                    Some(error) => {
                        eventlog::progress::park(&mut conn, projections::names::ORDER_PROCESS, (&*event).into(), &error, 1).await?;
                        retried.still_parked += 1;
                    }
                }
            }
            projections::ParkedEntry::NotInTheLog(position) => {
                projections::forget_parked(&mut conn, projections::names::ORDER_PROCESS, position).await?;
                retried.discarded += 1;
            }
        }
    }
    Ok(retried)
}

/// One line per projection that has run against this database.
async fn list(pool: &PgPool) -> Result<()> {
    println!(
        "{:<18} {:>7} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "NAME", "VERSION", "POSITION", "LAG", "LAG (s)", "EVENTS/S", "LEFT (s)", "STATE", "PARKED"
    );
    for p in projections::status(pool).await.context("read projection states")? {
        let left = p.eta_seconds.map_or("-".to_owned(), |s| format!("{s:.1}"));
        println!(
            "{:<18} {:>7} {:>12} {:>10} {:>10.1} {:>10.0} {:>10} {:>10} {:>7}",
            p.name, p.version, p.position, p.lag_events, p.lag_seconds, p.events_per_second, left, p.state, p.parked
        );
        if let Some(error) = p.last_error {
            println!("             last error: {error}");
        }
    }
    Ok(())
}

/// A progress bar for a requested rebuild until it has taken over.
async fn watch_rebuild(pool: &PgPool, name: &str) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let waiting = Instant::now();
    loop {
        let progress = projections::rebuild_progress(pool, name).await.context("read the rebuild's progress")?;
        if !progress.requested {
            bar.finish_and_clear();
            println!("{name} rebuilt from the log and swapped in after {:.1} s", waiting.elapsed().as_secs_f64());
            return Ok(());
        }
        bar.set_length(progress.head);
        bar.set_position(progress.position.unwrap_or(0));
        bar.set_message(match progress.position {
            Some(_) => format!("rebuilding {name}"),
            None if waiting.elapsed() > Duration::from_secs(5) => {
                format!("{name}: no worker has started the rebuild yet (is `storekeeper serve` or `storekeeper projections` running?)")
            }
            None => format!("{name}: waiting for a worker"),
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_verification(found: &projections::Verification) {
    let name = &found.projection;
    let folded = format!("{} events folded in {:.1} s, {:.0} events/s", found.events, found.seconds, found.events_per_second);
    if found.matches() {
        println!("{name}: matches the log at position {} ({folded})", found.position);
        return;
    }
    println!("{name}: {} row(s) differ from the log at position {} ({folded})", found.differing_rows, found.position);
    for d in &found.differences {
        let side = if d.only_in == "live" { "only in the live view" } else { "only in a fold of the log" };
        println!("  {} {side}: {}", d.table, d.row);
    }
    if (found.differences.len() as u64) < found.differing_rows {
        println!("  ... and {} more", found.differing_rows - found.differences.len() as u64);
    }
    for u in &found.unapplied {
        println!("  event {} of {} cannot be applied: {}", u.position, u.stream_id, u.error);
    }
    if found.parked > 0 {
        println!(
            "  {} event(s) are parked as dead letters and hold back their streams (`storekeeper projections retry {name}`)",
            found.parked
        );
    }
}
