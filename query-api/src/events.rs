//! `GET /v1/events`: the log as Server-Sent Events, for admins. From a
//! position, then live; each event's `id:` is its position, so a client
//! that reconnects with `Last-Event-ID` goes on just after the last event
//! it received, with nothing missed or repeated (the log hands out final
//! events only, in position order). `until=head` makes it a finite read.
//!
//! Every subscriber reads the log through this process's shared reader
//! (`eventlog::SharedTail`): at the tail, one read of the database serves
//! all of them. The answer is pulled, never pushed: the next events are
//! read only when the client has taken the last ones, so the server holds
//! at most one batch per subscriber, a client that falls behind is served
//! from the log at its own pace, and one that stops reading is cut off
//! once its connection's buffers are full (`edge::serve::WRITE_STALL_TIMEOUT`).
//! Nothing a subscriber does makes the server or another subscriber wait.
//!
//! On a query API node fed from Kafka the subscription still reads the
//! log: positions are its order, which the topic keeps per partition only.
//! There no append of the process wakes it, and it looks every 20 ms.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use domain::stream::{Category, StreamId};
use edge::{Admin, EdgeError, Query};
use eventlog::{RecordedEvent, Subscription};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::{ApiError, AppState};

/// Subscriptions open at once on one node; one more is answered 503
/// `overloaded`.
pub const MAX_SUBSCRIBERS: usize = 256;
/// Events read from the log at once for one subscriber.
const BATCH: usize = 500;
/// A comment is sent when nothing was for this long, so that proxies and
/// clients keep an idle subscription open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID: &str = "last-event-id";
/// Its syntax: a position.
pub const POSITION_PATTERN: &str = "^[0-9]{1,19}$";

const CATEGORIES: &str = "(customer|product|order|claim)";

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The first position to send: a position (`0` and `1` are the start
    /// of the log) or `head` (only events appended from now on). Default:
    /// the start. A `Last-Event-ID` header, as a reconnecting client sends
    /// it, takes precedence: the subscription goes on just after it.
    #[schemars(regex(pattern = "^([0-9]{1,19}|head)$"))]
    from: Option<String>,
    /// `head`: stop at the log's head as it was when the request came
    /// (the last position below which every event was final; a finite
    /// read, ended by an `end` event) instead of following it.
    until: Option<Until>,
    /// Only streams of these categories, comma-separated. `claim` streams
    /// are the write side's bookkeeping of unique emails and SKUs.
    #[schemars(regex(pattern = "^(customer|product|order|claim)(,(customer|product|order|claim)){0,3}$"))]
    category: Option<String>,
    /// Only this stream (`<category>-<uuid>`).
    #[schemars(regex(pattern = "^(customer|product|order|claim)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"))]
    stream_id: Option<String>,
    /// Only these event types, comma-separated (the names of `schemas/events/`).
    #[schemars(schema_with = "event_type_list")]
    event_type: Option<String>,
}

/// A comma-separated list of event types, as a pattern naming each.
fn event_type_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut names: Vec<&str> = event_types().into_iter().collect();
    names.sort_unstable();
    let one = format!("({})", names.join("|"));
    schemars::json_schema!({ "type": "string", "pattern": format!("^{one}(,{one}){{0,{}}}$", names.len() - 1) })
}

/// A subscription's events as the OpenAPI document gives them: the
/// fields of each Server-Sent Event, its `data` holding JSON.
pub fn sent_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let (event, end) = (generator.subschema_for::<crate::responses::Envelope>(), generator.subschema_for::<End>());
    schemars::json_schema!({
        "oneOf": [
            {
                "description": "An event of the log: `id` is its position, `data` the event as JSON",
                "type": "object",
                "required": ["id", "data"],
                "properties": {
                    "id": { "type": "string", "pattern": POSITION_PATTERN },
                    "event": { "const": "message" },
                    "data": { "type": "string", "contentMediaType": "application/json", "contentSchema": event }
                }
            },
            {
                "description": "The end of a finite read (`until=head`)",
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": { "const": "end" },
                    "data": { "type": "string", "contentMediaType": "application/json", "contentSchema": end }
                }
            }
        ]
    })
}

/// The data of the `end` event that closes a finite read.
#[derive(JsonSchema)]
#[allow(dead_code)]
pub struct End {
    /// The log's head when the read began: the last position it covers.
    head: u64,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Until {
    Head,
}

/// Which events a subscriber asked for.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    categories: Option<HashSet<Category>>,
    stream_id: Option<String>,
    event_types: Option<HashSet<String>>,
}

impl Filter {
    fn parse(q: &EventsQuery) -> Result<Filter, ApiError> {
        let categories = q
            .category
            .as_deref()
            .map(|list| {
                list.split(',')
                    .map(|c| {
                        Category::parse(c)
                            .ok_or_else(|| ApiError::malformed("category", format!("must be among {CATEGORIES}, comma-separated")))
                    })
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()?;
        let stream_id = q
            .stream_id
            .as_deref()
            .map(|s| {
                s.parse::<StreamId>()
                    .ok()
                    .filter(|id| id.to_string() == s)
                    .map(|_| s.to_owned())
                    .ok_or_else(|| ApiError::malformed("stream_id", "must be a stream id, <category>-<uuid>"))
            })
            .transpose()?;
        let event_types = q
            .event_type
            .as_deref()
            .map(|list| {
                let known = event_types();
                let listed: Vec<&str> = list.split(',').collect();
                if listed.len() > known.len() {
                    return Err(ApiError::malformed("event_type", "names more types than there are"));
                }
                listed
                    .into_iter()
                    .map(|t| {
                        known
                            .contains(t)
                            .then(|| t.to_owned())
                            .ok_or_else(|| ApiError::malformed("event_type", format!("{t:.64} is not an event type")))
                    })
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()?;
        Ok(Filter { categories, stream_id, event_types })
    }

    fn admits(&self, event: &RecordedEvent) -> bool {
        let category = || event.stream_id.split_once('-').and_then(|(c, _)| Category::parse(c));
        self.stream_id.as_ref().is_none_or(|s| *s == event.stream_id)
            && self.event_types.as_ref().is_none_or(|t| t.contains(&event.event_type))
            && self.categories.as_ref().is_none_or(|cs| category().is_some_and(|c| cs.contains(&c)))
    }
}

/// Every event type the log may hold.
fn event_types() -> HashSet<&'static str> {
    domain::events::all_schemas().into_iter().map(|s| s.event_type).collect()
}

/// Where to start: just after this position. `frontier` is the log's
/// last position below which every event is final (`from=head` starts
/// there: an append still under way is sent once it commits), `head` the
/// last position taken (nothing may start beyond it).
fn start(q: &EventsQuery, headers: &HeaderMap, frontier: u64, head: u64) -> Result<u64, ApiError> {
    let resumed = headers.contains_key(LAST_EVENT_ID);
    let after = if let Some(value) = headers.get(LAST_EVENT_ID) {
        let text = value.to_str().ok().filter(|t| !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()));
        text.and_then(|t| t.parse().ok())
            .ok_or_else(|| ApiError::malformed("Last-Event-ID", "must be the id of an event sent before: its position"))?
    } else {
        match q.from.as_deref() {
            None => 0,
            Some("head") => frontier,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|_| text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
                .map(|from| from.saturating_sub(1))
                .ok_or_else(|| ApiError::malformed("from", "must be a position or head"))?,
        }
    };
    if after > head {
        // No event of this log was sent with that id: a log restored from
        // an older backup, or a made-up position.
        let field = if resumed { "Last-Event-ID" } else { "from" };
        return Err(ApiError::BeyondTheHead(field, head));
    }
    Ok(after)
}

pub async fn subscribe(
    State(state): State<AppState>,
    Admin(caller): Admin,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(&q)?;
    let (Some(frontier), Some(head)) = (state.log.frontier().await?, state.log.head().await?) else {
        // Every adapter of this build says both.
        return Err(ApiError::Edge(EdgeError::Unavailable));
    };
    let after = start(&q, &headers, frontier, head.max(frontier))?;
    let permit = state.subscribers.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!("storekeeper_http_shed_total", "reason" => "subscribers").increment(1);
        ApiError::Edge(EdgeError::Overloaded)
    })?;
    let reader = match q.until {
        None => Reader::Live(Subscription::new(state.log.clone(), after).with_batch_size(BATCH)),
        Some(Until::Head) => Reader::ToHead { log: state.log.clone(), position: after, until: frontier },
    };
    // A subscription lasts no longer than the token it was opened with:
    // the client reconnects with a fresh one and its Last-Event-ID.
    let lasts = u64::try_from(caller.expires_at - chrono::Utc::now().timestamp()).unwrap_or(0);
    let feed = Feed {
        reader,
        pending: VecDeque::new(),
        filter,
        ended: false,
        stop: state.stop.clone(),
        expires: tokio::time::Instant::now() + Duration::from_secs(lasts),
        _open: Open::new(permit),
    };
    let events = futures::stream::unfold(feed, |mut feed| async move { feed.next().await.map(|event| (Ok::<_, Infallible>(event), feed)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

/// How a subscription reads the log.
enum Reader {
    /// From a position, then following the log as it grows.
    Live(Subscription),
    /// Up to the frontier as it was when the request came: every event up
    /// to it is final, so a read that finds none left (or only later
    /// ones) is the end, even where the last positions were never used.
    ToHead { log: std::sync::Arc<dyn eventlog::EventLog>, position: u64, until: u64 },
}

/// One subscriber's place in the log.
struct Feed {
    reader: Reader,
    /// Read, not yet sent or passed over.
    pending: VecDeque<RecordedEvent>,
    filter: Filter,
    ended: bool,
    stop: watch::Receiver<bool>,
    /// When the caller's token ends.
    expires: tokio::time::Instant,
    _open: Open,
}

impl Feed {
    /// The next event to send; `None` ends the answer (the read is done,
    /// the server is stopping, the token has expired, or the log failed:
    /// the client resumes with `Last-Event-ID`).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.ended || tokio::time::Instant::now() >= self.expires {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                if self.filter.admits(&event) {
                    return Some(frame(&event));
                }
                continue;
            }
            let read = match &mut self.reader {
                Reader::Live(subscription) => tokio::select! {
                    read = subscription.next_batch() => read,
                    _ = stopped(&mut self.stop) => return None,
                    _ = tokio::time::sleep_until(self.expires) => return None,
                },
                Reader::ToHead { log, position, until } => {
                    if *position >= *until {
                        return Some(self.end());
                    }
                    let read = tokio::select! {
                        read = log.read_all(*position, BATCH) => read,
                        _ = stopped(&mut self.stop) => return None,
                    };
                    read.map(|batch| {
                        let within: Vec<RecordedEvent> = batch.into_iter().take_while(|e| e.global_position <= *until).collect();
                        // Nothing left at or below the frontier: done.
                        *position = within.last().map_or(*until, |e| e.global_position);
                        within
                    })
                }
            };
            match read {
                Ok(batch) => self.pending.extend(batch),
                Err(e) => {
                    tracing::warn!(error = %e, "a subscription could not read the log; ending it");
                    return None;
                }
            }
        }
    }

    /// The last event of a finite read.
    fn end(&mut self) -> Event {
        self.ended = true;
        let head = match &self.reader {
            Reader::ToHead { until, .. } => *until,
            Reader::Live(_) => 0,
        };
        Event::default().event("end").data(serde_json::json!({ "head": head }).to_string())
    }
}

fn frame(event: &RecordedEvent) -> Event {
    let data = serde_json::to_string(event).expect("a recorded event always serializes");
    Event::default().id(event.global_position.to_string()).data(data)
}

/// Resolves once the server is stopping; never, if no one will say so.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// An open subscription, counted while it lasts.
struct Open(#[allow(dead_code)] OwnedSemaphorePermit);

impl Open {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("storekeeper_subscriptions_open").increment(1.0);
        Open(permit)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("storekeeper_subscriptions_open").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &str) -> EventsQuery {
        serde_urlencoded::from_str(pairs).unwrap()
    }

    fn event(stream_id: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: stream_id.into(),
            stream_version: 0,
            global_position: 1,
            event_type: event_type.into(),
            schema_version: 1,
            occurred_at: chrono::Utc::now(),
            recorded_at: chrono::Utc::now(),
            metadata: eventlog::Metadata::system("test"),
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn filters_combine_and_refuse_what_no_event_could_match() {
        let product = "product-0190d6a4-2b0c-7c3e-8a1f-3f5b8e9d2c10";
        let filter =
            Filter::parse(&query(&format!("category=order,product&event_type=ProductAdded,OrderPlaced&stream_id={product}"))).unwrap();
        assert!(filter.admits(&event(product, "ProductAdded")));
        assert!(!filter.admits(&event(product, "ProductRestocked")));
        assert!(!filter.admits(&event("product-0190d6a4-2b0c-7c3e-8a1f-3f5b8e9d2c11", "ProductAdded")));
        let orders = Filter::parse(&query("category=order")).unwrap();
        assert!(orders.admits(&event("order-0190d6a4-2b0c-7c3e-8a1f-3f5b8e9d2c10", "OrderPlaced")));
        assert!(!orders.admits(&event(product, "ProductAdded")));
        assert!(Filter::parse(&query("")).unwrap().admits(&event(product, "Anything")));
        for bad in
            ["category=orders", "event_type=ProductMade", "stream_id=product-1", "stream_id=PRODUCT-0190d6a4-2b0c-7c3e-8a1f-3f5b8e9d2c10"]
        {
            assert!(Filter::parse(&query(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn last_event_id_goes_before_from_and_from_counts_its_own_position() {
        let mut headers = HeaderMap::new();
        assert_eq!(start(&query(""), &headers, 8, 9).unwrap(), 0);
        assert_eq!(start(&query("from=0"), &headers, 8, 9).unwrap(), 0);
        assert_eq!(start(&query("from=5"), &headers, 8, 9).unwrap(), 4);
        assert_eq!(start(&query("from=head"), &headers, 8, 9).unwrap(), 8, "after what is final, not what is taken");
        assert_eq!(start(&query("from=10"), &headers, 8, 9).unwrap(), 9, "the next position");
        assert!(start(&query("from=11"), &headers, 8, 9).is_err(), "beyond the head");
        assert!(start(&query("from=-1"), &headers, 8, 9).is_err());
        headers.insert(LAST_EVENT_ID, "7".parse().unwrap());
        assert_eq!(start(&query("from=2"), &headers, 8, 9).unwrap(), 7);
        headers.insert(LAST_EVENT_ID, "10".parse().unwrap());
        assert!(start(&query(""), &headers, 8, 9).is_err(), "an id this log never sent");
        headers.insert(LAST_EVENT_ID, "7x".parse().unwrap());
        assert!(start(&query(""), &headers, 8, 9).is_err());
    }
}
