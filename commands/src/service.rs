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

use domain::claim::{ClaimAggregate, ClaimCommand, ClaimKind, email_claim_stream, legacy_email_claim_stream, sku_claim_stream};
use domain::customer::{CustomerAggregate, CustomerCommand, CustomerEvent};
use domain::order::{OrderAggregate, OrderCommand, PricedLine};
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Aggregate, DomainError, stream_id};
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
    fn expected(&self) -> ExpectedVersion {
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

fn write<A: Aggregate>(stream_id: &str, loaded: &Loaded<A>, events: &[A::Event], metadata: &Metadata) -> StreamWrite {
    StreamWrite { stream_id: stream_id.to_owned(), expected: loaded.expected(), events: NewEvent::encode_all(events, metadata) }
}

/// A decision ready to append, about the stream the client asked about.
struct Decision {
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
    fn new<A: Aggregate>(stream: &str, loaded: Loaded<A>, events: &[A::Event], writes: Vec<StreamWrite>) -> Self {
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
    async fn state<A: Aggregate>(&self, stream_id: &str, cached: bool) -> Result<Loaded<A>, ServiceError> {
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
    async fn run<F, Fut>(
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
    async fn earlier(&self, metadata: &Metadata) -> Result<Option<Outcome>, ServiceError> {
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

    /// Claims (or releases) a unique value alongside the owner's events.
    /// Claim streams are always read from the log.
    async fn claim(&self, command: ClaimCommand, stream: &str, metadata: &Metadata) -> Result<StreamWrite, ServiceError> {
        let loaded = self.load::<ClaimAggregate>(stream).await?;
        let events = ClaimAggregate::decide(&loaded.state, command)?;
        Ok(write(stream, &loaded, &events, metadata))
    }

    /// Customer commands: registering and changing the email claim the new
    /// address and release the old one in the same atomic append;
    /// forgetting releases it (the log deletes the key with the event).
    pub async fn customer(
        &self,
        id: Uuid,
        command: CustomerCommand,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        let stream = &stream_id::<CustomerAggregate>(id);
        let command = &command;
        self.run(id, stream, if_match, metadata, |cached| async move {
            let loaded = self.state::<CustomerAggregate>(stream, cached).await?;
            let events = CustomerAggregate::decide(&loaded.state, command.clone())?;
            let mut writes = vec![write(stream, &loaded, &events, metadata)];
            let current = loaded.state.as_ref().map(|c| &c.email);
            let legacy = self.vault.legacy_email_claims().await?;
            for event in &events {
                let (claim, release) = match event {
                    CustomerEvent::Registered(e) => (Some(&e.email), None),
                    // Only the letter case changed: the claim (case-insensitive)
                    // stays the customer's; releasing it would free it.
                    CustomerEvent::EmailChanged(e) if e.email.key() == e.previous_email.key() => (None, None),
                    CustomerEvent::EmailChanged(e) => (Some(&e.email), Some(&e.previous_email)),
                    // Forgetting frees the email for anyone to register.
                    CustomerEvent::Forgotten(_) => (None, current.filter(|e| !e.is_redacted())),
                    _ => (None, None),
                };
                if let Some(email) = claim {
                    let value = self.vault.keyed_hash(&email.key()).await?;
                    let claim_stream = email_claim_stream(&value);
                    if legacy {
                        // Held under its old name by someone else: taken. Either
                        // way its version is checked at the append.
                        let old = self.load::<ClaimAggregate>(&legacy_email_claim_stream(email)).await?;
                        if old.state.owner_stream_id.as_ref().is_some_and(|owner| owner != stream) {
                            return Err(DomainError::EmailTaken.into());
                        }
                        writes.push(StreamWrite {
                            stream_id: legacy_email_claim_stream(email),
                            expected: old.expected(),
                            events: Vec::new(),
                        });
                    }
                    let command = ClaimCommand::Claim { kind: ClaimKind::Email, value, owner_stream_id: stream.clone() };
                    writes.push(self.claim(command, &claim_stream, metadata).await?);
                }
                if let Some(email) = release {
                    let value = self.vault.keyed_hash(&email.key()).await?;
                    let claim_stream = email_claim_stream(&value);
                    if legacy {
                        let command =
                            ClaimCommand::Release { kind: ClaimKind::Email, value: value.clone(), owner_stream_id: stream.clone() };
                        writes.push(self.claim(command, &legacy_email_claim_stream(email), metadata).await?);
                    }
                    let command = ClaimCommand::Release { kind: ClaimKind::Email, value, owner_stream_id: stream.clone() };
                    writes.push(self.claim(command, &claim_stream, metadata).await?);
                }
            }
            Ok(Decision::new(stream, loaded, &events, writes))
        })
        .await
    }

    /// The active customer who holds `email`'s claim, if any: how a
    /// customer is found by email without any store of emails in the clear.
    pub async fn active_customer_by_email(&self, email: &domain::Email) -> Result<Option<Uuid>, ServiceError> {
        let value = self.vault.keyed_hash(&email.key()).await?;
        let mut owner = self.load::<ClaimAggregate>(&email_claim_stream(&value)).await?.state.owner_stream_id;
        if owner.is_none() && self.vault.legacy_email_claims().await? {
            owner = self.load::<ClaimAggregate>(&legacy_email_claim_stream(email)).await?.state.owner_stream_id;
        }
        let Some(id) = owner.and_then(|o| Uuid::parse_str(o.strip_prefix("customer-")?).ok()) else { return Ok(None) };
        let customer = self.load::<CustomerAggregate>(&stream_id::<CustomerAggregate>(id)).await?;
        Ok(customer.state.filter(|c| c.active && !c.forgotten).map(|c| c.id))
    }

    /// Product commands: adding a product claims its SKU.
    pub async fn product(
        &self,
        id: Uuid,
        command: ProductCommand,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        let ProductCommand::Add { sku, .. } = &command else {
            return self.execute::<ProductAggregate>(id, command, if_match, metadata).await;
        };
        let stream = &stream_id::<ProductAggregate>(id);
        let claim_stream = &sku_claim_stream(sku);
        let sku_key = &sku.key();
        let command = &command;
        self.run(id, stream, if_match, metadata, |cached| async move {
            let loaded = self.state::<ProductAggregate>(stream, cached).await?;
            let events = ProductAggregate::decide(&loaded.state, command.clone())?;
            let claim = ClaimCommand::Claim { kind: ClaimKind::Sku, value: sku_key.clone(), owner_stream_id: stream.clone() };
            let writes = vec![write(stream, &loaded, &events, metadata), self.claim(claim, claim_stream, metadata).await?];
            Ok(Decision::new(stream, loaded, &events, writes))
        })
        .await
    }

    /// Places an order: looks up the customer and each product's current
    /// price first, then lets the order decide.
    pub async fn place_order(
        &self,
        order_id: Uuid,
        customer_id: Uuid,
        lines: Vec<(Uuid, u32)>,
        shipping_address: domain::Address,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        if let Some(outcome) = self.earlier(metadata).await? {
            return Ok(outcome);
        }
        let mut priced = Vec::with_capacity(lines.len());
        for (i, (product_id, quantity)) in lines.into_iter().enumerate() {
            let product = self.load::<ProductAggregate>(&stream_id::<ProductAggregate>(product_id)).await?;
            let Some(product) = product.state else {
                return Err(DomainError::invalid(format!("lines[{i}].product_id"), "no such product").into());
            };
            priced.push(PricedLine { product_id, quantity, unit_price: product.price });
        }
        let stream = &stream_id::<OrderAggregate>(order_id);
        let customer_stream = &stream_id::<CustomerAggregate>(customer_id);
        let (priced, shipping_address) = (&priced, &shipping_address);
        self.run(order_id, stream, None, metadata, |cached| async move {
            let customer = self.load::<CustomerAggregate>(customer_stream).await?;
            let customer_active = match &customer.state {
                Some(c) => c.active,
                None => return Err(DomainError::invalid("customer_id", "no such customer").into()),
            };
            let loaded = self.state::<OrderAggregate>(stream, cached).await?;
            let command = OrderCommand::Place {
                order_id,
                customer_id,
                customer_active,
                lines: priced.clone(),
                shipping_address: shipping_address.clone(),
            };
            let events = OrderAggregate::decide(&loaded.state, command)?;
            // The order stands on the customer as read: appended with no
            // event but that version expected, a customer deactivated or
            // forgotten meanwhile makes it conflict and be decided again.
            let as_read = StreamWrite { stream_id: customer_stream.clone(), expected: customer.expected(), events: Vec::new() };
            let writes = vec![write(stream, &loaded, &events, metadata), as_read];
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
    let id = stream_id.split_once('-').and_then(|(_, id)| Uuid::parse_str(id).ok()).unwrap_or_default();
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
