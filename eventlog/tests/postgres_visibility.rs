//! The PostgreSQL log's tail, made deterministic: an append that took its
//! position first commits last, one rolls back, an unrelated transaction
//! stays open. A reader must not skip past the first, must pass the second,
//! and must not wait for the third.

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

/// Appends one event inside `tx`, so the append stays in flight until the
/// test commits or rolls it back.
async fn append_in(tx: &mut sqlx::PgConnection, stream_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT out_position FROM append_batch(ARRAY[NULL], ARRAY[NULL], ARRAY[1], ARRAY[$1], ARRAY[-1]::bigint[], ARRAY[1],
                ARRAY[$2]::uuid[], ARRAY['ThingHappened'], ARRAY[1], ARRAY[now()], ARRAY[$3::jsonb], ARRAY['{}'::jsonb])",
    )
    .bind(stream_id)
    .bind(Uuid::now_v7())
    .bind(serde_json::to_value(Metadata::system("test")).unwrap())
    .fetch_one(&mut *tx)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_reader_never_skips_an_event_committed_late_with_a_lower_position() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let (slow_stream, fast_stream) = (format!("thing-{}", Uuid::now_v7()), format!("thing-{}", Uuid::now_v7()));

    // The slow writer takes its position first...
    let mut slow = pool.begin().await.unwrap();
    let slow_position = append_in(&mut slow, &slow_stream).await;
    // ...then a fast writer appends and commits.
    let fast = log.append(vec![write(&fast_stream)]).await.unwrap();
    assert!(fast.position > slow_position as u64);
    assert!(log.read_all(0, 100).await.unwrap().is_empty(), "nothing is handed out while a lower position may still commit");

    slow.commit().await.unwrap();
    let all = log.read_all(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(), vec![slow_stream.as_str(), fast_stream.as_str()]);
}

#[tokio::test]
async fn an_append_rolled_back_leaves_a_gap_that_readers_pass() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let mut abandoned = pool.begin().await.unwrap();
    append_in(&mut abandoned, &format!("thing-{}", Uuid::now_v7())).await;
    let kept = format!("thing-{}", Uuid::now_v7());
    log.append(vec![write(&kept)]).await.unwrap();
    assert!(log.read_all(0, 100).await.unwrap().is_empty());
    abandoned.rollback().await.unwrap();
    let all = log.read_all(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.stream_id.as_str()).collect::<Vec<_>>(), vec![kept.as_str()]);
}

/// Only appends hold the tail back: an unrelated transaction that wrote a
/// row and stays open (a projection's long batch, a migration, another
/// application's session) delays nothing, in this database or another.
#[tokio::test]
async fn an_unrelated_open_transaction_does_not_hold_readers_back() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let other_database = eventlog::testing::fresh_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));

    let mut unrelated = pool.begin().await.unwrap();
    sqlx::query("CREATE TABLE unrelated (n int)").execute(&mut *unrelated).await.unwrap();
    sqlx::query("INSERT INTO unrelated VALUES (1)").execute(&mut *unrelated).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(42), pg_advisory_xact_lock(7, 7)").execute(&mut *unrelated).await.unwrap();
    let mut elsewhere = other_database.begin().await.unwrap();
    sqlx::query("CREATE TABLE t (n int)").execute(&mut *elsewhere).await.unwrap();
    // An append in flight in another database is no business of this log.
    sqlx::query(&format!("SELECT pg_advisory_xact_lock({}, 0)", 1 << 30)).execute(&mut *elsewhere).await.unwrap();

    let stream = format!("thing-{}", Uuid::now_v7());
    let appended = log.append(vec![write(&stream)]).await.unwrap();
    let all = log.read_all(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|e| e.global_position).collect::<Vec<_>>(), vec![appended.position]);
    unrelated.rollback().await.unwrap();
    elsewhere.rollback().await.unwrap();
}

/// A token's streams are those of its append, however its positions fall.
#[tokio::test]
async fn a_token_names_the_streams_of_its_append() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let (a, b, c) = (format!("thing-{}", Uuid::now_v7()), format!("thing-{}", Uuid::now_v7()), format!("thing-{}", Uuid::now_v7()));
    log.append(vec![write(&c)]).await.unwrap();
    let both = log.append(vec![write(&a), write(&b)]).await.unwrap();
    log.append(vec![write(&c)]).await.unwrap();
    let mut streams = eventlog::progress::streams_of_append(&pool, both.position).await.unwrap();
    streams.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(streams, expected);
    assert!(eventlog::progress::streams_of_append(&pool, both.position + 1_000_000).await.unwrap().is_empty());
}

/// Appends in flight together share one transaction (group commit), and
/// each still gets its own contiguous range of positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_flight_together_are_written_in_shared_transactions() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let streams: Vec<String> = (0..200).map(|_| format!("thing-{}", Uuid::now_v7())).collect();
    let results = futures::future::join_all(streams.iter().map(|s| log.append(vec![write(s)]))).await;
    let positions: Vec<u64> = results.into_iter().map(|r| r.unwrap().position).collect();
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM events").fetch_one(&pool).await.unwrap();
    assert!(transactions < 100, "200 appends in flight at once took {transactions} transactions");
    let mut sorted = positions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "every append has its own position");
}

/// A value the database refuses (here a NUL in JSON text) fails only the
/// append that holds it, not the others written in the same group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_value_fails_only_its_own_append() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let writes: Vec<StreamWrite> = (0..60)
        .map(|i| {
            let mut w = write(&format!("thing-{}", Uuid::now_v7()));
            if i == 30 {
                w.events[0].data = json!({ "text": "a\u{0}b" });
            }
            w
        })
        .collect();
    let results = futures::future::join_all(writes.into_iter().map(|w| log.append(vec![w]))).await;
    assert!(results[30].is_err(), "PostgreSQL refuses NUL in jsonb");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 59, "{results:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 59);
}
