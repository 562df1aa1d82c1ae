//! What an append does, decided against the index of the log stream:
//! pure, so every decision (receipts, expected versions, revisions and
//! positions, the answer the first event carries) is unit-tested without a
//! server.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use eventlog::{AppendResult, EventLogError, Metadata, StreamAppended, StreamWrite};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event as stored in the log stream; the KurrentDB event's id and type
/// are the event's own.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) stream_id: String,
    pub(crate) stream_version: u64,
    pub(crate) schema_version: u32,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) metadata: Metadata,
    pub(crate) data: serde_json::Value,
    /// On an append's first event: what the append answered, and under
    /// which receipt, so a repeat answers the same from any process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) append: Option<Answer>,
}

#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) receipt: Option<(String, String)>,
    /// (stream, version, position) per write, in the order given.
    pub(crate) streams: Vec<(String, Option<u64>, Option<u64>)>,
    pub(crate) position: u64,
}

impl Answer {
    pub(crate) fn result(&self, replayed: bool) -> AppendResult {
        AppendResult {
            streams: self
                .streams
                .iter()
                .map(|(stream_id, version, position)| StreamAppended {
                    stream_id: stream_id.clone(),
                    version: *version,
                    position: *position,
                })
                .collect(),
            position: self.position,
            replayed,
        }
    }
}

/// What the index needs of a stored event: catching up decodes no more.
#[derive(Deserialize)]
pub(crate) struct Indexed {
    pub(crate) stream_id: String,
    #[serde(default)]
    pub(crate) append: Option<Answer>,
}

/// What the log stream holds, up to `next`.
#[derive(Default)]
pub(crate) struct Index {
    /// Revisions below this are indexed.
    pub(crate) next: u64,
    /// Each stream's events' revisions, in version order.
    pub(crate) streams: HashMap<String, Vec<u64>>,
    pub(crate) event_ids: HashSet<Uuid>,
    pub(crate) receipts: HashMap<(String, String), Answer>,
}

impl Index {
    pub(crate) fn add(&mut self, revision: u64, event_id: Uuid, stream_id: &str, append: Option<&Answer>) {
        self.streams.entry(stream_id.to_owned()).or_default().push(revision);
        self.event_ids.insert(event_id);
        if let Some(answer) = append
            && let Some(receipt) = &answer.receipt
        {
            self.receipts.insert(receipt.clone(), answer.clone());
        }
        self.next = revision + 1;
    }

    pub(crate) fn version(&self, stream_id: &str) -> Option<u64> {
        self.streams.get(stream_id).map(|r| r.len() as u64 - 1)
    }
}

/// What an append does, decided against the index.
pub(crate) enum Plan {
    /// Nothing to write: a receipt's first answer, or checks alone (which
    /// held at the head just read).
    Answered(AppendResult),
    /// These events, at the revisions after the index's head, answering
    /// this; the first event carries the answer.
    Write(Vec<(Uuid, String, Stored)>, Answer),
}

pub(crate) fn plan(index: &Index, writes: &[StreamWrite], receipt: Option<&(String, String)>) -> Result<Plan, EventLogError> {
    if let Some(first) = receipt.and_then(|r| index.receipts.get(r)) {
        return Ok(Plan::Answered(first.result(true)));
    }
    for w in writes {
        let actual = index.version(&w.stream_id);
        if !w.expected.admits(actual) {
            return Err(EventLogError::VersionConflict { stream_id: w.stream_id.clone(), expected: w.expected, actual });
        }
    }
    let mut fresh = HashSet::new();
    if writes.iter().flat_map(|w| &w.events).any(|e| index.event_ids.contains(&e.event_id) || !fresh.insert(e.event_id)) {
        return Err(EventLogError::InvalidAppend("an event with this event_id is already stored".into()));
    }
    // Positions follow from the revision expected: the append lands there
    // or not at all.
    let mut revision = index.next;
    let mut stored = Vec::new();
    let mut answer = Answer { receipt: receipt.cloned(), streams: Vec::with_capacity(writes.len()), position: 0 };
    for w in writes {
        let mut version = index.version(&w.stream_id);
        let mut position = None;
        for e in &w.events {
            let next = version.map_or(0, |v| v + 1);
            stored.push((
                e.event_id,
                e.event_type.clone(),
                Stored {
                    stream_id: w.stream_id.clone(),
                    stream_version: next,
                    schema_version: e.schema_version,
                    occurred_at: e.occurred_at,
                    metadata: e.metadata.clone(),
                    data: e.data.clone(),
                    append: None,
                },
            ));
            version = Some(next);
            revision += 1;
            position = Some(revision);
            answer.position = revision;
        }
        answer.streams.push((w.stream_id.clone(), version, position));
    }
    match stored.first_mut() {
        None => Ok(Plan::Answered(answer.result(false))),
        Some(first) => {
            first.2.append = Some(answer.clone());
            Ok(Plan::Write(stored, answer))
        }
    }
}

#[cfg(test)]
mod tests {
    //! The decisions an append makes against the index, without a server:
    //! what the log stream would get, and what the caller is answered.

    use eventlog::{ExpectedVersion, NewEvent};

    use super::*;

    fn stream() -> String {
        format!("thing-{}", Uuid::now_v7())
    }

    fn write(stream_id: &str, expected: ExpectedVersion, count: usize) -> StreamWrite {
        let event = |_| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "ThingHappened".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: Metadata::system("test"),
            data: serde_json::json!({}),
        };
        StreamWrite { stream_id: stream_id.to_owned(), expected, events: (0..count).map(event).collect() }
    }

    /// Plans `writes` and, when they write, indexes them as catching up
    /// from the log stream would: through their stored JSON.
    fn append(index: &mut Index, writes: &[StreamWrite], receipt: Option<&(String, String)>) -> Result<AppendResult, EventLogError> {
        match plan(index, writes, receipt)? {
            Plan::Answered(result) => Ok(result),
            Plan::Write(stored, answer) => {
                let start = index.next;
                for (i, (id, _, s)) in stored.iter().enumerate() {
                    let read: Indexed = serde_json::from_slice(&serde_json::to_vec(s).unwrap()).unwrap();
                    index.add(start + i as u64, *id, &read.stream_id, read.append.as_ref());
                }
                Ok(answer.result(false))
            }
        }
    }

    #[test]
    fn positions_are_revisions_plus_one_and_versions_are_gapless_per_stream() {
        let mut index = Index::default();
        let (a, b) = (stream(), stream());
        let first = append(&mut index, &[write(&a, ExpectedVersion::NoStream, 3)], None).unwrap();
        assert_eq!((first.streams[0].version, first.streams[0].position, first.position), (Some(2), Some(3), 3));
        let both = append(&mut index, &[write(&b, ExpectedVersion::NoStream, 1), write(&a, ExpectedVersion::Exact(2), 2)], None).unwrap();
        let got: Vec<_> = both.streams.iter().map(|s| (s.version, s.position)).collect();
        assert_eq!((got, both.position), (vec![(Some(0), Some(4)), (Some(4), Some(6))], 6));
        assert_eq!(index.streams[&a], vec![0, 1, 2, 4, 5], "revisions of the stream's events, in version order");
        assert_eq!(index.next, 6);
    }

    #[test]
    fn stale_versions_conflict_and_checks_alone_write_nothing() {
        let mut index = Index::default();
        let a = stream();
        append(&mut index, &[write(&a, ExpectedVersion::NoStream, 2)], None).unwrap();
        for (expected, stream_id, actual) in [
            (ExpectedVersion::Exact(0), a.clone(), Some(1)),
            (ExpectedVersion::NoStream, a.clone(), Some(1)),
            (ExpectedVersion::Exact(0), stream(), None),
        ] {
            match plan(&index, &[write(&stream_id, expected, 1)], None) {
                Err(EventLogError::VersionConflict { actual: found, .. }) => assert_eq!(found, actual),
                other => panic!("expected a conflict, got {:?}", other.map(|_| ())),
            }
        }
        // A write with no event checks its stream and appends nothing.
        let checked = append(&mut index, &[write(&a, ExpectedVersion::Exact(1), 0)], None).unwrap();
        assert_eq!((checked.streams[0].version, checked.streams[0].position, checked.position), (Some(1), None, 0));
        assert_eq!(index.next, 2);
    }

    #[test]
    fn a_receipt_answers_its_first_append_from_the_log_and_event_ids_are_unique() {
        let mut index = Index::default();
        let (a, b) = (stream(), stream());
        let receipt = ("alice".to_owned(), "key-1".to_owned());
        let first = append(&mut index, &[write(&a, ExpectedVersion::NoStream, 2)], Some(&receipt)).unwrap();
        let again = append(&mut index, &[write(&b, ExpectedVersion::Any, 5)], Some(&receipt)).unwrap();
        assert_eq!(again, AppendResult { replayed: true, ..first });
        assert_eq!(index.next, 2, "nothing written the second time");
        let taken = write(&a, ExpectedVersion::Any, 1);
        append(&mut index, std::slice::from_ref(&taken), None).unwrap();
        assert!(matches!(plan(&index, &[StreamWrite { stream_id: b, ..taken }], None), Err(EventLogError::InvalidAppend(_))));
    }
}
