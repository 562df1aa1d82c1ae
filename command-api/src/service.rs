//! Load, decide, append: the one path every command takes.
//!
//! A command's target stream is loaded and folded, the domain decides, and
//! the events are appended with the loaded version as the expected one.
//! When another writer got there first the whole cycle runs again on fresh
//! state, a bounded number of times, unless the client pinned a version with
//! `If-Match`, in which case it learns of the conflict.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::claim::{ClaimAggregate, ClaimCommand, ClaimKind, email_claim_stream, sku_claim_stream};
use domain::customer::{CustomerAggregate, CustomerCommand};
use domain::events::{DecodeError, EventCodec};
use domain::order::{OrderAggregate, OrderCommand, PricedLine};
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Aggregate, DomainError, stream_id};
use eventlog::{EventLog, EventLogError, ExpectedVersion, Metadata, NewEvent, StreamWrite};
use uuid::Uuid;

/// How often a decision is retried after losing a race without `If-Match`.
const MAX_ATTEMPTS: u32 = 20;
/// Commands on one stream within this process take turns on one of these,
/// so that they do not race each other through the log; races with other
/// processes are still settled by expected versions and retries.
const STRIPES: usize = 1024;
/// Streams longer than this are read in pages.
const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{stream_id} is at version {current:?}, not the expected {expected}")]
    VersionConflict { stream_id: String, expected: u64, current: Option<u64> },
    #[error("stream {stream_id} holds an event this build cannot read: {source}")]
    Decode {
        stream_id: String,
        #[source]
        source: DecodeError,
    },
    #[error("still conflicting after {MAX_ATTEMPTS} attempts")]
    Contention,
    #[error(transparent)]
    Log(#[from] EventLogError),
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
}

impl<A: Aggregate> Loaded<A> {
    fn expected(&self) -> ExpectedVersion {
        self.version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }
}

#[derive(Clone)]
pub struct CommandService {
    log: Arc<dyn EventLog>,
    stripes: Arc<[tokio::sync::Mutex<()>]>,
}

fn encode<E: EventCodec>(events: &[E], metadata: &Metadata) -> Vec<NewEvent> {
    let occurred_at = Utc::now();
    events
        .iter()
        .map(|event| {
            let encoded = event.encode();
            NewEvent {
                event_id: Uuid::now_v7(),
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                occurred_at,
                metadata: metadata.clone(),
                data: encoded.data,
            }
        })
        .collect()
}

fn write<A: Aggregate>(stream_id: &str, loaded: &Loaded<A>, events: &[A::Event], metadata: &Metadata) -> StreamWrite {
    StreamWrite { stream_id: stream_id.to_owned(), expected: loaded.expected(), events: encode(events, metadata) }
}

/// A decision ready to append, with the stream the client asked about.
struct Decision {
    primary: String,
    writes: Vec<StreamWrite>,
    loaded_version: Option<u64>,
    loaded_position: u64,
}

impl CommandService {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        CommandService { log, stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    fn stripe(&self, stream_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        stream_id.hash(&mut hasher);
        &self.stripes[hasher.finish() as usize % STRIPES]
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Reads and folds a whole stream.
    pub async fn load<A: Aggregate>(&self, stream_id: &str) -> Result<Loaded<A>, ServiceError> {
        let mut loaded = Loaded::<A> { state: A::State::default(), version: None, position: 0 };
        loop {
            let from = loaded.version.map_or(0, |v| v + 1);
            let page = self.log.read_stream(stream_id, from, PAGE).await?;
            for recorded in &page {
                let event = A::Event::decode(&recorded.event_type, recorded.schema_version, recorded.data.clone())
                    .map_err(|source| ServiceError::Decode { stream_id: stream_id.to_owned(), source })?;
                loaded.state = A::evolve(loaded.state, &event);
                loaded.version = Some(recorded.stream_version);
                loaded.position = recorded.global_position;
            }
            if page.len() < PAGE {
                return Ok(loaded);
            }
        }
    }

    /// Runs `decide` on fresh state until its append wins, or the client's
    /// pinned version (`if_match`) no longer holds.
    async fn run<F, Fut>(&self, id: Uuid, stream: &str, if_match: Option<u64>, mut decide: F) -> Result<Outcome, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Decision, ServiceError>>,
    {
        let _turn = self.stripe(stream).lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let decision = decide().await?;
            if let Some(expected) = if_match
                && decision.loaded_version != Some(expected)
            {
                return Err(ServiceError::VersionConflict { stream_id: decision.primary, expected, current: decision.loaded_version });
            }
            let appends = decision.writes.iter().any(|w| !w.events.is_empty());
            if !appends {
                let version = decision.loaded_version.ok_or(DomainError::NotFound("stream"))?;
                return Ok(Outcome { id, stream_id: decision.primary, version, position: decision.loaded_position, appended: false });
            }
            let writes: Vec<StreamWrite> = decision.writes.into_iter().filter(|w| !w.events.is_empty()).collect();
            match self.log.append(writes).await {
                Ok(result) => {
                    let primary = result.streams.iter().find(|s| s.stream_id == decision.primary);
                    return Ok(Outcome {
                        id,
                        stream_id: decision.primary.clone(),
                        version: primary.and_then(|s| s.version).or(decision.loaded_version).unwrap_or(0),
                        position: primary.and_then(|s| s.position).unwrap_or(decision.loaded_position),
                        appended: true,
                    });
                }
                Err(EventLogError::VersionConflict { .. }) => {
                    metrics::counter!("storekeeper_command_conflicts_total").increment(1);
                    tracing::debug!(attempt, stream_id = %decision.primary, "lost a race; deciding again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contention)
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
        self.run(id, stream, if_match, || async move {
            let loaded = self.load::<A>(stream).await?;
            let events = A::decide(&loaded.state, command.clone())?;
            Ok(Decision {
                writes: vec![write(stream, &loaded, &events, metadata)],
                primary: stream.clone(),
                loaded_version: loaded.version,
                loaded_position: loaded.position,
            })
        })
        .await
    }

    /// Claims (or releases) a unique value alongside the owner's events.
    async fn claim(&self, command: ClaimCommand, stream: &str, metadata: &Metadata) -> Result<StreamWrite, ServiceError> {
        let loaded = self.load::<ClaimAggregate>(stream).await?;
        let events = ClaimAggregate::decide(&loaded.state, command)?;
        Ok(write(stream, &loaded, &events, metadata))
    }

    /// Customer commands: registering and changing the email claim the new
    /// address and release the old one in the same atomic append.
    pub async fn customer(
        &self,
        id: Uuid,
        command: CustomerCommand,
        if_match: Option<u64>,
        metadata: &Metadata,
    ) -> Result<Outcome, ServiceError> {
        let stream = &stream_id::<CustomerAggregate>(id);
        let command = &command;
        self.run(id, stream, if_match, || async move {
            let loaded = self.load::<CustomerAggregate>(stream).await?;
            let events = CustomerAggregate::decide(&loaded.state, command.clone())?;
            let mut writes = vec![write(stream, &loaded, &events, metadata)];
            for event in &events {
                use domain::customer::CustomerEvent as E;
                let (claim, release) = match event {
                    E::Registered(e) => (Some(&e.email), None),
                    E::EmailChanged(e) => (Some(&e.email), Some(&e.previous_email)),
                    _ => (None, None),
                };
                if let Some(email) = claim {
                    let command = ClaimCommand::Claim { kind: ClaimKind::Email, value: email.key(), owner_stream_id: stream.clone() };
                    writes.push(self.claim(command, &email_claim_stream(email), metadata).await?);
                }
                if let Some(email) = release {
                    let command = ClaimCommand::Release { kind: ClaimKind::Email, value: email.key(), owner_stream_id: stream.clone() };
                    writes.push(self.claim(command, &email_claim_stream(email), metadata).await?);
                }
            }
            Ok(Decision { writes, primary: stream.clone(), loaded_version: loaded.version, loaded_position: loaded.position })
        })
        .await
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
        self.run(id, stream, if_match, || async move {
            let loaded = self.load::<ProductAggregate>(stream).await?;
            let events = ProductAggregate::decide(&loaded.state, command.clone())?;
            let claim = ClaimCommand::Claim { kind: ClaimKind::Sku, value: sku_key.clone(), owner_stream_id: stream.clone() };
            let writes = vec![write(stream, &loaded, &events, metadata), self.claim(claim, claim_stream, metadata).await?];
            Ok(Decision { writes, primary: stream.clone(), loaded_version: loaded.version, loaded_position: loaded.position })
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
        let customer = self.load::<CustomerAggregate>(&stream_id::<CustomerAggregate>(customer_id)).await?;
        let customer_active = match customer.state {
            Some(c) => c.active,
            None => return Err(DomainError::invalid("customer_id", "no such customer").into()),
        };
        let mut priced = Vec::with_capacity(lines.len());
        for (i, (product_id, quantity)) in lines.into_iter().enumerate() {
            let product = self.load::<ProductAggregate>(&stream_id::<ProductAggregate>(product_id)).await?;
            let Some(product) = product.state else {
                return Err(DomainError::invalid(format!("lines[{i}].product_id"), "no such product").into());
            };
            priced.push(PricedLine { product_id, quantity, unit_price: product.price });
        }
        let command = OrderCommand::Place { order_id, customer_id, customer_active, lines: priced, shipping_address };
        self.execute::<OrderAggregate>(order_id, command, None, metadata).await
    }
}

/// Exponential backoff with full jitter, so racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let cap_us = 500u64 << attempt.min(7);
    let random = u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().expect("8 bytes"));
    Duration::from_micros(random % cap_us.max(1))
}
