//! The lines of an export. Their shapes are the file format: old exports
//! must still import and a round trip must give the same bytes, so fields
//! are only ever added, optional.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::{BackupError, Context};
use crate::RecordedEvent;

/// One event.
#[derive(Serialize, Deserialize)]
pub(super) struct Line {
    #[serde(flatten)]
    pub event: RecordedEvent,
    /// Hex of the event's stream hash; absent when it had none (exported
    /// before hashes existed, or newer than the sealer had reached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_hash: Option<String>,
}

/// The last line of an export: how many events it holds, up to which
/// position, and the seal over their hashes in order (the log's own seal
/// at that position, worth comparing with one kept elsewhere).
#[derive(Serialize, Deserialize)]
pub(super) struct End {
    pub events: u64,
    pub up_to: u64,
    pub seal: String,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EndLine {
    pub end_of_export: End,
}

/// The vault's secret, for keyed hashes of unique values: without it, an
/// imported log would claim emails under other names and let one be taken
/// twice.
#[derive(Serialize, Deserialize)]
pub(super) struct VaultLine {
    pub vault: VaultSecret,
}

#[derive(Serialize, Deserialize)]
pub(super) struct VaultSecret {
    pub unique_values_secret: String,
    /// Whether the log holds email claims named after the plain address.
    #[serde(default)]
    pub legacy_email_claims: bool,
}

/// A customer's data key (hex), or `null` for a forgotten customer: the
/// log's sealed fields mean nothing without them. A forgotten customer's
/// key is in no export made after the forget.
#[derive(Serialize, Deserialize)]
pub(super) struct KeyLine {
    pub customer_key: CustomerKey,
}

#[derive(Serialize, Deserialize)]
pub(super) struct CustomerKey {
    pub customer_id: uuid::Uuid,
    pub key: Option<String>,
}

/// How each kind of line starts: enough to tell them apart without
/// parsing.
pub(super) const VAULT: &str = "{\"vault\"";
pub(super) const CUSTOMER_KEY: &str = "{\"customer_key\"";
pub(super) const END: &str = "{\"end_of_export\"";

/// Writes `line` as one line of JSON.
pub(super) fn write_line(out: &mut dyn Write, line: &impl Serialize, what: &'static str) -> Result<(), BackupError> {
    serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from).context(what)?;
    out.write_all(b"\n").context(what)
}
