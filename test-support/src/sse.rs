//! A Server-Sent Events reader for tests, as a browser's `EventSource`
//! reads an answer: events end at a blank line, comments (`:`) are
//! skipped, `data:` lines join with newlines.

use std::time::Duration;

use reqwest::Response;

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `None` for the default type, `message`.
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {}", self.data))
    }

    /// The id as a log position.
    pub fn position(&self) -> u64 {
        self.id.as_deref().and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("event without a position: {self:?}"))
    }
}

pub struct Sse {
    response: Response,
    buffer: String,
}

impl Sse {
    pub fn new(response: Response) -> Self {
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(response.status(), 200, "not a subscription");
        assert!(content_type.starts_with("text/event-stream"), "content type {content_type}");
        Sse { response, buffer: String::new() }
    }

    /// The next event; `None` once the server has ended the answer.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return Some(event);
                }
            }
            let chunk = self.response.chunk().await.expect("the subscription's answer failed")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }

    /// The next event within `wait`, panicking otherwise.
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        tokio::time::timeout(wait, self.next()).await.unwrap_or_else(|_| panic!("no event within {wait:?}"))
    }

    /// Every event up to the end of the answer.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

fn parse(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    (id.is_some() || event.is_some() || !data.is_empty()).then(|| SseEvent { id, event, data: data.join("\n") })
}
