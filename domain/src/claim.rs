//! Claims on unique values (customer emails, product SKUs).
//!
//! Uniqueness is decided on the write side by a claim stream per value,
//! `claim-<uuid v5 of kind and normalised value>`. The owner's event and the
//! claim are appended in one atomic multi-stream append with an expected
//! version on the claim stream, so of two concurrent claimants exactly one
//! wins, whatever the event-log backend, and no read model is involved.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::event_enum;
use crate::{Aggregate, DomainError, Email, Sku};

/// What kind of value is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    Email,
    Sku,
}

impl ClaimKind {
    fn name(self) -> &'static str {
        match self {
            ClaimKind::Email => "email",
            ClaimKind::Sku => "sku",
        }
    }
    fn taken(self) -> DomainError {
        match self {
            ClaimKind::Email => DomainError::EmailTaken,
            ClaimKind::Sku => DomainError::SkuTaken,
        }
    }
}

const CLAIM_NAMESPACE: Uuid = Uuid::from_u128(0x5f0d_7c1e_8a43_4b7e_9d2c_6e1f_3a9b_0c11);

/// The claim stream of a normalised value.
pub fn claim_stream(kind: ClaimKind, normalised: &str) -> String {
    let id = Uuid::new_v5(&CLAIM_NAMESPACE, format!("{}:{}", kind.name(), normalised).as_bytes());
    crate::StreamId::of::<ClaimAggregate>(id).to_string()
}

/// The claim stream of an email, given its keyed hash (never the email
/// itself, which would be guessable from the stream id).
pub fn email_claim_stream(keyed_hash: &str) -> String {
    claim_stream(ClaimKind::Email, keyed_hash)
}

/// The claim stream an email had before claims were keyed (plaintext
/// logs): only the migration that re-encrypts such a log needs it.
pub fn legacy_email_claim_stream(email: &Email) -> String {
    claim_stream(ClaimKind::Email, &email.key())
}

pub fn sku_claim_stream(sku: &Sku) -> String {
    claim_stream(ClaimKind::Sku, &sku.key())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValueClaimed {
    pub kind: ClaimKind,
    /// The normalised value; for an email, its keyed hash
    /// (`hmac-sha256:<hex>`), never the email itself.
    pub value: String,
    pub owner_stream_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValueReleased {
    pub kind: ClaimKind,
    /// As in `ValueClaimed`.
    pub value: String,
    pub owner_stream_id: String,
}

event_enum! {
    pub enum ClaimEvent {
        Claimed(ValueClaimed) = ("UniqueValueClaimed", 1),
        Released(ValueReleased) = ("UniqueValueReleased", 1),
    }
}

/// Who holds the value now, if anyone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimState {
    pub owner_stream_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCommand {
    Claim { kind: ClaimKind, value: String, owner_stream_id: String },
    Release { kind: ClaimKind, value: String, owner_stream_id: String },
}

pub struct ClaimAggregate;

impl Aggregate for ClaimAggregate {
    const CATEGORY: crate::Category = crate::Category::Claim;
    const SNAPSHOT_VERSION: u32 = 1;
    type State = ClaimState;
    type Command = ClaimCommand;
    type Event = ClaimEvent;

    fn decide(state: &ClaimState, command: ClaimCommand) -> Result<Vec<ClaimEvent>, DomainError> {
        match command {
            ClaimCommand::Claim { kind, value, owner_stream_id } => match &state.owner_stream_id {
                Some(owner) if *owner == owner_stream_id => Ok(vec![]),
                Some(_) => Err(kind.taken()),
                None => Ok(vec![ClaimEvent::Claimed(ValueClaimed { kind, value, owner_stream_id })]),
            },
            ClaimCommand::Release { kind, value, owner_stream_id } => match &state.owner_stream_id {
                Some(owner) if *owner == owner_stream_id => Ok(vec![ClaimEvent::Released(ValueReleased { kind, value, owner_stream_id })]),
                _ => Ok(vec![]),
            },
        }
    }

    fn evolve(_state: ClaimState, event: &ClaimEvent) -> ClaimState {
        match event {
            ClaimEvent::Claimed(e) => ClaimState { owner_stream_id: Some(e.owner_stream_id.clone()) },
            ClaimEvent::Released(_) => ClaimState { owner_stream_id: None },
        }
    }
}
