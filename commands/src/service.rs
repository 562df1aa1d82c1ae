//! Load, decide, append: the one path every command takes.
//!
//! A command's target stream is loaded and folded, the domain decides, and
//! the events are appended with the loaded version as the expected one.
//! When another writer got there first the whole cycle runs again on fresh
//! state, a bounded number of times, unless the client pinned a version with
//! `If-Match`, in which case it learns of the conflict.
//!
//! Folded states are cached per stream. A cached state is only trusted when
//! the decision appends, because the append's expected version proves it
//! current; a refusal, a no-op or an `If-Match` mismatch decided on cached
//! state is decided again on state read from the log. So the common command
//! costs one round trip to the database, and the cache can never make an
//! answer wrong, even with other processes writing to the same log.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{Aggregate, DomainError, StreamId, stream_id};
use eventlog::{AppendResult, EventLog, EventLogError, ExpectedVersion, FoldError, Metadata, NewEvent, Receipt, StreamWrite, Vault};
use tracing::Instrument;
use uuid::Uuid;

/// How often a decision is retried after losing a race without `If-Match`.
const MAX_ATTEMPTS: u32 = 20;
/// Commands on one stream within this process take turns on one of these,
/// so that they do not race each other through the log; races with other
/// processes are still settled by expected versions and retries.
const STRIPES: usize = 1024;
/// What folded states kept in memory may weigh, by their aggregates'
/// estimate (`Aggregate::weight`).
const CACHE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{stream_id} is at version {current:?}, not the expected {expected}")]
    VersionConflict { stream_id: String, expected: u64, current: Option<u64> },
    #[error("a stream holds an event this build cannot read: {0}")]
    Decode(#[source] FoldError),
    #[error("still conflicting after {MAX_ATTEMPTS} attempts")]
    Contention,
    #[error(transparent)]
    Log(#[from] EventLogError),
    /// The password store beside the log (`accounts`).
    #[error(transparent)]
    Password(#[from] crate::PasswordError),
}

impl From<FoldError> for ServiceError {
    fn from(e: FoldError) -> Self {
        match e {
            FoldError::Log(e) => ServiceError::Log(e),
            decode => ServiceError::Decode(decode),
        }
    }
}

/// The result of a command: where its stream stands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: Uuid,
    pub stream_id: String,
    /// The stream's version after the command.
    pub version: u64,
    /// The global position of the stream's latest event: reads that have
    /// caught up with it see the command's effect.
    pub position: u64,
    /// Whether anything was appended (false: the command was a no-op).
    pub appended: bool,
}

/// A stream loaded and folded.
pub struct Loaded<A: Aggregate> {
    pub state: A::State,
    pub version: Option<u64>,
    pub position: u64,
    /// Whether it came from the cache rather than the log.
    pub cached: bool,
}

impl<A: Aggregate> Loaded<A> {
    pub(crate) fn expected(&self) -> ExpectedVersion {
        self.version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

struct CacheEntry {
    state: Arc<dyn Any + Send + Sync>,
    version: Option<u64>,
    position: u64,
    weight: usize,
}

/// Folded states by stream, within `CACHE_BYTES`.
#[derive(Default)]
struct Cache {
    entries: HashMap<String, CacheEntry>,
    bytes: usize,
}

#[derive(Clone)]
pub struct CommandService {
    log: Arc<dyn EventLog>,
    vault: Arc<Vault>,
    stripes: Arc<[tokio::sync::Mutex<()>]>,
    cache: Arc<Mutex<Cache>>,
}

pub(crate) fn write<A: Aggregate>(stream_id: &str, loaded: &Loaded<A>, events: &[A::Event], metadata: &Metadata) -> StreamWrite {
    StreamWrite { stream_id: stream_id.to_owned(), expected: loaded.expected(), events: NewEvent::encode_all(events, metadata) }
}

/// A decision ready to append, about the stream the client asked about.
pub(crate) struct Decision {
    primary: String,
    writes: Vec<StreamWrite>,
    version: Option<u64>,
    position: u64,
    cached: bool,
    /// Once the writes are in (at the primary stream's new version and
    /// position): keeps the state they leave behind.
    settle: Settle,
}

/// Keeps a decision's resulting state, given the version and position the
/// append gave the primary stream.
type Settle = Box<dyn FnOnce(&CommandService, Option<u64>, u64) + Send>;

impl Decision {
    pub(crate) fn new<A: Aggregate>(stream: &str, loaded: Loaded<A>, events: &[A::Event], writes: Vec<StreamWrite>) -> Self {
        let before = loaded.version;
        let after = events.iter().fold(loaded.state, A::evolve);
        let primary = stream.to_owned();
        let settle = {
            let stream = primary.clone();
            Box::new(move |service: &CommandService, version: Option<u64>, position: u64| {
                service.snapshot_if_due::<A>(&stream, before, version, position, &after);
                service.remember::<A>(&stream, Arc::new(after), version, position);
            })
        };
        Decision { primary, writes, version: loaded.version, position: loaded.position, cached: loaded.cached, settle }
    }
}

impl CommandService {
    /// `log` is the vaulted log (`eventlog::VaultedLog`) over `vault`'s
    /// keys: decisions are made on opened personal data, and what they
    /// append is sealed.
    pub fn new(log: Arc<dyn EventLog>, vault: Arc<Vault>) -> Self {
        CommandService {
            log,
            vault,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    fn stripe(&self, stream_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        stream_id.hash(&mut hasher);
        &self.stripes[hasher.finish() as usize % STRIPES]
    }

    fn remember<A: Aggregate>(&self, stream_id: &str, state: Arc<A::State>, version: Option<u64>, position: u64) {
        let weight = stream_id.len() + std::mem::size_of::<CacheEntry>() + A::weight(&state);
        let mut cache = self.cache.lock().expect("cache poisoned");
        if let Some(old) = cache.entries.remove(stream_id) {
            cache.bytes -= old.weight;
        }
        // Make room: any victim will do, a miss costs one read of the
        // stream's newest events (or of its snapshot).
        while cache.bytes + weight > CACHE_BYTES {
            let Some(victim) = cache.entries.keys().next().cloned() else { break };
            if let Some(old) = cache.entries.remove(&victim) {
                cache.bytes -= old.weight;
            }
        }
        cache.bytes += weight;
        cache.entries.insert(stream_id.to_owned(), CacheEntry { state, version, position, weight });
    }

    fn cached<A: Aggregate>(&self, stream_id: &str) -> Option<Loaded<A>> {
        let cache = self.cache.lock().expect("cache poisoned");
        let entry = cache.entries.get(stream_id)?;
        let state = entry.state.downcast_ref::<A::State>()?;
        Some(Loaded { state: state.clone(), version: entry.version, position: entry.position, cached: true })
    }

    /// The stream's current state: what this process holds of it (or its
    /// snapshot) with the events since read from the log, so the cost does
    /// not grow with the stream's history.
    pub async fn load<A: Aggregate>(&self, stream_id: &str) -> Result<Loaded<A>, ServiceError> {
        let known = self.cached::<A>(stream_id).map(|c| eventlog::Folded { state: c.state, version: c.version, position: c.position });
        let folded = eventlog::load::<A>(&*self.log, stream_id, known).await?;
        self.remember::<A>(stream_id, Arc::new(folded.state.clone()), folded.version, folded.position);
        Ok(Loaded { state: folded.state, version: folded.version, position: folded.position, cached: false })
    }

    /// The cached state as it is when allowed and present, else the
    /// current one.
    pub(crate) async fn state<A: Aggregate>(&self, stream_id: &str, cached: bool) -> Result<Loaded<A>, ServiceError> {
        if cached && let Some(loaded) = self.cached::<A>(stream_id) {
            return Ok(loaded);
        }
        self.load::<A>(stream_id).await
    }

    /// After an append that crossed a multiple of `SNAPSHOT_EVERY`, the
    /// state is stored as a snapshot, in the background: a stream kept hot
    /// in this cache would otherwise be folded from its last snapshot, far
    /// back, after a restart.
    fn snapshot_if_due<A: Aggregate>(&self, stream_id: &str, before: Option<u64>, after: Option<u64>, position: u64, state: &A::State) {
        let every = eventlog::SNAPSHOT_EVERY;
        let (Some(version), before) = (after, before.map_or(0, |v| v + 1)) else { return };
        if (version + 1) / every == before / every {
            return;
        }
        let Ok(state) = serde_json::to_value(state) else { return };
        let snapshot =
            eventlog::Snapshot { stream_id: stream_id.to_owned(), snapshot_version: A::SNAPSHOT_VERSION, version, position, state };
        let log = self.log.clone();
        tokio::spawn(async move {
            if let Err(error) = log.save_snapshot(&snapshot).await {
                tracing::warn!(stream_id = %snapshot.stream_id, %error, "storing a snapshot failed");
            }
        });
    }

    /// Runs `decide` until its append wins, or the client's pinned version
    /// (`if_match`) no longer holds. `decide` is told whether it may use
    /// cached state.
    pub(crate) async fn run<F, Fut>(
        &self,
        id: Uuid,
        stream: &str,
        if_match: Option<u64>,
        metadata: &Metadata,
        mut decide: F,
    ) -> Result<Outcome, ServiceError>
    where
        F: FnMut(bool) -> Fut,
        Fut: Future<Output = Result<Decision, ServiceError>>,
    {
        let _turn = self.stripe(stream).lock().await;
        if let Some(outcome) = self.earlier(metadata).await? {
            return Ok(outcome);
        }
        let decided: Result<Outcome, ServiceError> = async {
            let mut use_cache = true;
            for attempt in 0..MAX_ATTEMPTS {
                let decision = match decide(use_cache).await {
                    // A refusal may come from stale cached state: decide again.
                    Err(ServiceError::Domain(_)) if use_cache => {
                        use_cache = false;
                        continue;
                    }
                    other => other?,
                };
                let appends = decision.writes.iter().any(|w| !w.events.is_empty());
                let pinned_elsewhere = if_match.is_some_and(|expected| decision.version != Some(expected));
                if decision.cached && (pinned_elsewhere || !appends) {
                    use_cache = false;
                    continue;
                }
                if let Some(expected) = if_match
                    && pinned_elsewhere
                {
                    return Err(ServiceError::VersionConflict { stream_id: decision.primary, expected, current: decision.version });
                }
                if !appends {
                    let version = decision.version.ok_or(DomainError::NotFound("stream"))?;
                    return Ok(Outcome { id, stream_id: decision.primary, version, position: decision.position, appended: false });
                }
                // Writes with no event stay: each checks that a stream the
                // decision read is still at the version read.
                let span = tracing::info_span!(target: telemetry::SPANS, "append", stream_id = %decision.primary, position = tracing::field::Empty);
                let appended = self.log.append_once(decision.writes, receipt(metadata)).instrument(span.clone()).await;
                if let Ok(result) = &appended {
                    span.record("position", result.streams.iter().filter_map(|s| s.position).max());
                }
                match appended {
                    Ok(result) if result.replayed => return Ok(replayed(&result)),
                    Ok(result) => {
                        let primary = result.streams.iter().find(|s| s.stream_id == decision.primary);
                        let version = primary.and_then(|s| s.version).or(decision.version);
                        let position = primary.and_then(|s| s.position).unwrap_or(decision.position);
                        (decision.settle)(self, version, position);
                        tracing::debug!(trace_id = %metadata.trace_id(), stream_id = %decision.primary, position, "appended");
                        return Ok(Outcome { id, stream_id: decision.primary, version: version.unwrap_or(0), position, appended: true });
                    }
                    // The customer was forgotten after the decision read it:
                    // decided again, its new state refuses.
                    Err(EventLogError::VersionConflict { .. } | EventLogError::Forgotten(_)) => {
                        metrics::counter!("storekeeper_command_conflicts_total").increment(1);
                        tracing::debug!(attempt, stream_id = %decision.primary, "lost a race; deciding again");
                        if !decision.cached {
                            tokio::time::sleep(backoff(attempt)).await;
                        }
                        use_cache = false;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(ServiceError::Contention)
        }
        .await;
        // Refused, a no-op or a lost race: if the request's first run
        // committed meanwhile (on another node, or after a takeover), its
        // outcome is the answer, not what this run made of the new state.
        match decided {
            Ok(outcome) if outcome.appended => Ok(outcome),
            Ok(_) | Err(ServiceError::Domain(_) | ServiceError::VersionConflict { .. } | ServiceError::Contention) => {
                match self.earlier(metadata).await? {
                    Some(first) => Ok(first),
                    None => decided,
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The outcome of the command already taken under the request's
    /// idempotency key, if there was one: it is answered again and nothing
    /// is decided (a retry after a crash must not apply twice, nor be
    /// refused because its first run changed the state).
    pub(crate) async fn earlier(&self, metadata: &Metadata) -> Result<Option<Outcome>, ServiceError> {
        let Some(receipt) = receipt(metadata) else { return Ok(None) };
        Ok(self.log.receipt(receipt).await?.map(|result| replayed(&result)))
    }

    /// Whether a command under `actor`'s idempotency `key` took effect
    /// (within the last 24 hours).
    pub async fn took_effect(&self, actor: &str, key: &str) -> Result<bool, ServiceError> {
        Ok(self.log.receipt(Receipt { actor, key }).await?.is_some())
    }

    /// A command on one aggregate.
    pub async fn execute<A: Aggregate>(
        &self,
        id: Uuid,
        command: A::Command,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError>
    where
        A::Command: Clone,
    {
        let stream = &stream_id::<A>(id);
        let command = &command;
        self.run(id, stream, if_match, metadata, |cached| async move {
            let loaded = self.state::<A>(stream, cached).await?;
            let events = A::decide(&loaded.state, command.clone())?;
            let writes = vec![write(stream, &loaded, &events, metadata)];
            Ok(Decision::new(stream, loaded, &events, writes))
        })
        .await
    }
}

/// What a command's append is recorded under: its idempotency key, scoped
/// to the actor, so that the record commits with the events.
fn receipt(metadata: &Metadata) -> Option<Receipt<'_>> {
    Some(Receipt { actor: &metadata.actor, key: metadata.idempotency_key.as_deref()? })
}

/// The outcome of an append made earlier under the same receipt: its first
/// write is the command's own stream.
fn replayed(result: &AppendResult) -> Outcome {
    let primary = result.streams.first();
    let stream_id = primary.map(|s| s.stream_id.clone()).unwrap_or_default();
    let id = StreamId::parse(&stream_id).map(|s| s.id).unwrap_or_default();
    Outcome {
        id,
        stream_id,
        version: primary.and_then(|s| s.version).unwrap_or(0),
        position: primary.and_then(|s| s.position).unwrap_or(result.position),
        appended: true,
    }
}

/// Exponential backoff with full jitter, so racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let cap_us = 500u64 << attempt.min(7);
    let random = u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().expect("8 bytes"));
    Duration::from_micros(random % cap_us)
}
