//! The W3C `traceparent` header as text:
//! `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
//!
//! One codec for everything that carries a trace along: the request edge,
//! the metadata stored with each event, the Kafka headers and the
//! exporter. Pure text, so it costs nothing when spans are not exported.

use uuid::Uuid;

/// `raw` when it is a valid `traceparent` (trimmed), else `None`.
pub fn parse(raw: &str) -> Option<String> {
    let parts: Vec<&str> = raw.trim().split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let valid = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2);
    valid.then(|| parts.join("-"))
}

/// A `traceparent` naming the span `span_id` of the trace `trace_id`.
pub fn format(trace_id: impl std::fmt::Display, span_id: impl std::fmt::Display, flags: u8) -> String {
    format!("00-{trace_id}-{span_id}-{flags:02x}")
}

/// A new span under the trace `trace_id` (32 hex).
pub fn child(trace_id: &str, sampled: bool) -> String {
    format(trace_id, &Uuid::new_v4().simple().to_string()[..16], u8::from(sampled))
}

/// A new span under the (valid) `traceparent`'s span, keeping its trace
/// and whether it is sampled.
pub fn child_of(traceparent: &str) -> String {
    let mut parts = traceparent.split('-').skip(1);
    let trace_id = parts.next().unwrap_or_default();
    let flags = u8::from_str_radix(parts.nth(1).unwrap_or("01"), 16).unwrap_or(1);
    child(trace_id, flags & 1 == 1)
}

/// The trace id of a `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_only_valid_traceparents() {
        assert_eq!(parse(&format!(" {GIVEN} ")).as_deref(), Some(GIVEN));
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_sampled_flag() {
        let child = child_of(GIVEN);
        assert_eq!(parse(&child).as_deref(), Some(child.as_str()));
        assert_eq!(trace_id(&child), trace_id(GIVEN));
        assert!(child.ends_with("-01") && child != GIVEN);
        assert!(child_of(&GIVEN.replace("-01", "-00")).ends_with("-00"));
    }
}
