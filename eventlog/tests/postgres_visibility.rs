//! The hard case, made deterministic: a transaction that took its position
//! first commits last. A reader must not skip past it in the meantime.

use std::sync::Arc;

use chrono::Utc;
use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, PgEventLog, StreamWrite};
use serde_json::json;
use uuid::Uuid;

fn write(stream_id: &str) -> StreamWrite {
    StreamWrite {
        stream_id: stream_id.into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "ThingHappened".into(),
            schema_version: 1,
            occurred_at: Utc::now(),
            metadata: Metadata::system("test"),
            data: json!({}),
        }],
    }
}

#[tokio::test]
async fn a_reader_never_skips_an_event_committed_late_with_a_lower_position() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let (slow_stream, fast_stream) = (format!("thing-{}", Uuid::now_v7()), format!("thing-{}", Uuid::now_v7()));

    // The slow writer takes its transaction id (and so its position) first...
    let mut slow = pool.begin().await.unwrap();
    let slow_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint").fetch_one(&mut *slow).await.unwrap();
    // ...then a fast writer appends and commits.
    let fast = log.append(vec![write(&fast_stream)]).await.unwrap();
    assert!(fast.position > (slow_xid as u64) << 20);
    assert!(log.read_all(0, 100).await.unwrap().is_empty(), "nothing is handed out while a lower position may still commit");

    // The slow writer commits an event below the fast one.
    sqlx::query(
        "INSERT INTO events (global_position, stream_id, stream_version, event_id, event_type, schema_version, occurred_at, metadata, data)
         VALUES (pg_current_xact_id()::text::bigint << 20, $1, 0, $2, 'ThingHappened', 1, now(), $3, '{}')",
    )
    .bind(&slow_stream)
    .bind(Uuid::now_v7())
    .bind(serde_json::to_value(Metadata::system("test")).unwrap())
    .execute(&mut *slow)
    .await
    .unwrap();
    slow.commit().await.unwrap();

    // Other tests' transactions on the same server may hold the tail back
    // for a moment; once released, both come, the late one first.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let all = loop {
        let all = log.read_all(0, 100).await.unwrap();
        if all.len() >= 2 || tokio::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(all.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(), vec![slow_stream.as_str(), fast_stream.as_str()]);
}
