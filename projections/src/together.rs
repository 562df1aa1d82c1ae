//! The live read models of a process, fed in process, applied together:
//! one reader, each event decoded once, and one transaction per batch for
//! all of them, with one statement that moves every checkpoint.
//!
//! Fed one by one, each read model paid a transaction of its own per batch
//! at the tail (begin, dead-letter look-up, checkpoint, commit), even for a
//! batch with none of its events: five of them cost the database more than
//! the commands they followed. Together, a batch costs one of each, plus
//! the statements of the models it concerns.
//!
//! Each model keeps its own checkpoint row (and generation) in that
//! transaction, so readers, rebuilds and `projections list` see what they
//! saw before. A batch that a model cannot apply whole (an event that
//! fails, a stream held back) is applied model by model instead, by the
//! same code that feeds a lone projection, which parks what fails.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::events::DomainEvent;
use eventlog::source::BoxError;
use eventlog::{Batch, Consumer, Progress, RecordedEvent, Resume};
use sqlx::PgPool;
use uuid::Uuid;

use crate::dead_letters::is_transient;
use crate::runner::{applied, apply_batch, resumed};
use crate::status::Rate;
use crate::target::{RunError, Target, prepare};
use crate::{ApplyError, Projection};

/// From this many events, a batch is applied model by model, side by
/// side: catching up, a transaction per model costs nothing beside its
/// rows, and the models' statements then run on as many connections (and
/// the database's cores) at once. Together, they took turns on one.
const SIDE_BY_SIDE_FROM: usize = 500;

/// Whether a live projection whose checkpoint row says `version` (none
/// yet: `None`) and `partitioned` is fed with the others: its tables are of
/// this version (an older one is rebuilt first; a newer one is for newer
/// workers) and its progress is one position (one that came from Kafka is
/// fed alone, passing over what each partition has applied).
fn fed_together(projection: &dyn Projection, version: Option<i32>, partitioned: bool) -> bool {
    version.is_none_or(|v| v == projection.version()) && !partitioned
}

/// What the runner decides by in a projection's checkpoint row.
pub(crate) struct CheckpointRow {
    pub(crate) version: i32,
    pub(crate) rebuild_requested: bool,
    /// Its progress came from Kafka's partitions.
    pub(crate) partitioned: bool,
    pub(crate) position: u64,
}

/// A projection's checkpoint row, if it has one yet.
pub(crate) async fn checkpoint_row(pool: &PgPool, name: &str) -> Result<Option<CheckpointRow>, sqlx::Error> {
    let row: Option<(i32, bool, bool, i64)> = sqlx::query_as(
        "SELECT version, rebuild_requested, EXISTS (SELECT 1 FROM consumer_partitions WHERE consumer = $1), position
           FROM projection_checkpoints WHERE projection = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(version, rebuild_requested, partitioned, position)| CheckpointRow {
        version,
        rebuild_requested,
        partitioned,
        position: position as u64,
    }))
}

/// Whether `projection`, with checkpoint `row`, is fed with the others.
pub(crate) fn fed_together_at(projection: &dyn Projection, row: Option<&CheckpointRow>) -> bool {
    fed_together(projection, row.map(|r| r.version), row.is_some_and(|r| r.partitioned))
}

/// A live read model this many events behind the most advanced of the
/// others catches up alone (`runner::catch_up`) before it joins them: fed
/// together, the others would wait for it, and so would their readers.
pub(crate) const LAGGING: u64 = 5_000;

pub(crate) struct Together {
    pool: PgPool,
    candidates: Vec<Arc<dyn Projection>>,
    members: Mutex<Vec<Member>>,
    /// Catching up alone meanwhile.
    apart: Mutex<HashSet<&'static str>>,
}

#[derive(Clone)]
struct Member {
    projection: Arc<dyn Projection>,
    target: Target,
    generation: Uuid,
    /// Applied up to here: events at or before it are passed over.
    position: u64,
    rate: Arc<Mutex<Rate>>,
}

impl Together {
    pub(crate) fn new(pool: PgPool, candidates: Vec<Arc<dyn Projection>>) -> Self {
        Together { pool, candidates, members: Mutex::new(Vec::new()), apart: Mutex::new(HashSet::new()) }
    }

    /// The candidates fed together next that are `LAGGING` behind the
    /// most advanced of them, now set apart (to be fed alone until they
    /// are near the head; `rejoin` then).
    pub(crate) async fn set_apart_laggards(&self) -> Result<Vec<Arc<dyn Projection>>, sqlx::Error> {
        let mut positions = Vec::new();
        for projection in &self.candidates {
            if self.apart.lock().expect("apart poisoned").contains(projection.name()) {
                continue;
            }
            let row = checkpoint_row(&self.pool, projection.name()).await?;
            if fed_together_at(&**projection, row.as_ref()) {
                positions.push((projection.clone(), row.map_or(0, |r| r.position)));
            }
        }
        let ahead = positions.iter().map(|(_, p)| *p).max().unwrap_or(0);
        let laggards: Vec<Arc<dyn Projection>> =
            positions.into_iter().filter(|(_, p)| ahead - p > LAGGING).map(|(projection, _)| projection).collect();
        self.apart.lock().expect("apart poisoned").extend(laggards.iter().map(|p| p.name()));
        Ok(laggards)
    }

    /// `name` has caught up alone: fed with the others from their next
    /// resume.
    pub(crate) fn rejoin(&self, name: &str) {
        self.apart.lock().expect("apart poisoned").remove(name);
    }

    fn members(&self) -> Vec<Member> {
        self.members.lock().expect("members poisoned").clone()
    }

    /// Applies `batch` model by model, side by side, each in its own
    /// transaction (which parks what fails); a failure that is not the
    /// events' fails the batch once the others are done.
    async fn each_alone(&self, members: &mut [Member], batch: &Batch) -> Result<(), RunError> {
        let applied = members.iter().map(|member| async move {
            let events: Vec<RecordedEvent> = batch.events.iter().filter(|e| e.global_position > member.position).cloned().collect();
            let Some(last) = events.iter().map(|e| e.global_position).max() else { return Ok(None) };
            let mine = Batch { events, ..Batch::default() };
            let run = (member.generation, member.position);
            apply_batch(&self.pool, &*member.projection, &member.target, run, &mine, &member.rate).await.map(|()| Some(last))
        });
        let results = futures::future::join_all(applied).await;
        let mut failed = None;
        for (member, result) in members.iter_mut().zip(results) {
            match result {
                Ok(Some(last)) => member.position = last,
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

#[async_trait]
impl Consumer for Together {
    fn name(&self) -> &str {
        "read_models"
    }

    async fn resume(&self) -> Result<Resume, BoxError> {
        let mut members = Vec::new();
        for projection in &self.candidates {
            if self.apart.lock().expect("apart poisoned").contains(projection.name()) {
                continue;
            }
            let row = checkpoint_row(&self.pool, projection.name()).await?;
            if !fed_together_at(&**projection, row.as_ref()) {
                continue;
            }
            let target = Target::live(&**projection).committed_asynchronously(true);
            let (resume, generation) = prepare(&self.pool, &**projection, &target).await?;
            let rate = Arc::new(Mutex::new(Rate::default()));
            rate.lock().expect("rate lock").start();
            resumed(&**projection, resume.progress.position);
            members.push(Member { projection: projection.clone(), target, generation, position: resume.progress.position, rate });
        }
        // None (each is fed alone for now): nothing to read.
        let position = members.iter().map(|m| m.position).min().unwrap_or(u64::MAX);
        *self.members.lock().expect("members poisoned") = members;
        Ok(Resume { consumer: self.name().into(), generation: String::new(), progress: Progress { position, ..Progress::default() } })
    }

    async fn handle(&self, batch: &Batch) -> Result<(), BoxError> {
        if !batch.unreadable.is_empty() {
            // Only the log in this process feeds the models together, and
            // everything it hands out is an event of the log.
            return Err("an unreadable message reached the read models fed together in process".into());
        }
        let mut members = self.members();
        if members.is_empty() {
            return Ok(());
        }
        let Some(last) = batch.events.iter().max_by_key(|e| e.global_position) else { return Ok(()) };
        // Each event once, for every model that wants it; an event that
        // cannot be decoded goes the slow way, where it is parked.
        let wanted = |e: &RecordedEvent| members.iter().any(|m| e.global_position > m.position && m.projection.handles(&e.event_type));
        let decoded = || -> Option<Vec<(&RecordedEvent, DomainEvent)>> {
            batch
                .events
                .iter()
                .filter(|e| wanted(e))
                .map(|e| DomainEvent::decode(&e.event_type, e.schema_version, &e.data).ok().map(|d| (e, d)))
                .collect()
        };
        let together = match (batch.events.len() < SIDE_BY_SIDE_FROM).then(decoded).flatten() {
            Some(decoded) => self.apply_together(&members, batch, &decoded, last).await?,
            None => false,
        };
        if together {
            for member in &mut members {
                member.position = member.position.max(last.global_position);
            }
        } else {
            self.each_alone(&mut members, batch).await?;
        }
        *self.members.lock().expect("members poisoned") = members;
        Ok(())
    }
}

impl Together {
    /// The batch for every member in one transaction; false when it is to
    /// be applied model by model instead (nothing of it is kept then).
    async fn apply_together(
        &self,
        members: &[Member],
        batch: &Batch,
        decoded: &[(&RecordedEvent, DomainEvent)],
        last: &RecordedEvent,
    ) -> Result<bool, RunError> {
        let targets: Vec<Target> = members.iter().map(|m| m.target.clone()).collect();
        let mut tx = Target::begin_for(&self.pool, &targets).await?;
        let checkpoints: Vec<&str> = members.iter().map(|m| m.target.checkpoint.as_str()).collect();
        // A model holding streams back is fed alone, which knows which.
        let holding: Vec<String> = sqlx::query_scalar("SELECT DISTINCT projection FROM dead_letters WHERE projection = ANY($1)")
            .bind(&checkpoints)
            .fetch_all(&mut *tx)
            .await?;
        let mut rates = Vec::with_capacity(members.len());
        for member in members {
            let mine: Vec<(&RecordedEvent, &DomainEvent)> = decoded
                .iter()
                .filter(|(e, _)| e.global_position > member.position && member.projection.handles(&e.event_type))
                .map(|(e, d)| (*e, d))
                .collect();
            if !mine.is_empty() {
                if holding.contains(&member.target.checkpoint) {
                    return Ok(false);
                }
                match member.projection.apply_all(&mut tx, &mine).await {
                    Ok(()) => {}
                    Err(ApplyError::Database(e)) if is_transient(&e) => return Err(e.into()),
                    Err(_) => return Ok(false),
                }
            }
            rates.push(member.rate.lock().expect("rate lock").observe(batch.events.len()));
        }
        let generations: Vec<Uuid> = members.iter().map(|m| m.generation).collect();
        let committed: Vec<i64> = members.iter().map(|m| m.position.min(i64::MAX as u64) as i64).collect();
        // Every checkpoint, and readers waiting on a token told, at once;
        // only while each is still this run's (a rebuild that took over
        // owns the tables now) and where this run left it (a checkpoint
        // behind it lost commits in a crash of the database: the events
        // since are read again).
        let moved: Vec<(String,)> = sqlx::query_as(
            "UPDATE projection_checkpoints c
                SET position = GREATEST(c.position, $2), updated_at = now(), events_per_second = u.rate
               FROM unnest($1::text[], $3::uuid[], $4::float8[], $6::bigint[]) AS u(projection, generation, rate, committed)
              WHERE c.projection = u.projection AND c.generation = u.generation AND c.position >= u.committed
             RETURNING c.projection, pg_notify($5, c.projection)",
        )
        .bind(&checkpoints)
        .bind(last.global_position as i64)
        .bind(&generations)
        .bind(&rates)
        .bind(eventlog::progress::PROGRESS_CHANNEL)
        .bind(&committed)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(gone) = members.iter().find(|m| !moved.iter().any(|(c,)| *c == m.target.checkpoint)) {
            return Err(RunError::Superseded(gone.target.checkpoint.clone()));
        }
        tx.commit().await?;
        for member in members {
            applied(&*member.projection, batch.events.iter().filter(|e| e.global_position > member.position), last);
        }
        Ok(true)
    }
}
