//! The PostgreSQL log's tail, made deterministic: an append that took its
//! position first commits last, one rolls back, an unrelated transaction
//! stays open. A reader must not skip past the first, must pass the second,
//! and must not wait for the third. And the tamper evidence the sealer
//! keeps behind that tail: hashes only of final events, and a check that
//! names the first altered or removed one.

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

/// A reader that has read before finds the frontier by probing only the
/// appends after where it is (a few positions on) or, far behind, by the
/// scan of every append in flight: either way it stops below the one still
/// in flight.
#[tokio::test]
async fn a_reader_at_the_tail_or_far_behind_stops_below_an_append_in_flight() {
    for behind in [3usize, 600] {
        let pool = eventlog::testing::fresh_event_log_database().await;
        let log = Arc::new(PgEventLog::new(pool.clone()));
        let first = log.append(vec![write(&format!("thing-{}", Uuid::now_v7()))]).await.unwrap();
        assert_eq!(log.read_all(0, 100).await.unwrap().len(), 1);
        let mut many = write(&format!("thing-{}", Uuid::now_v7()));
        many.events = (0..behind).map(|_| write("x").events.remove(0)).collect();
        log.append(vec![many]).await.unwrap();

        let mut slow = pool.begin().await.unwrap();
        let slow_position = append_in(&mut slow, &format!("thing-{}", Uuid::now_v7())).await as u64;
        let fast = log.append(vec![write(&format!("thing-{}", Uuid::now_v7()))]).await.unwrap();
        assert!(fast.position > slow_position);
        let read = log.read_all(first.position, 1000).await.unwrap();
        assert_eq!(read.len(), behind, "{behind} behind: only what is below the append in flight");
        assert!(read.iter().all(|e| e.global_position < slow_position));
        assert!(log.read_all(read.last().unwrap().global_position, 10).await.unwrap().is_empty(), "{behind} behind, then at the tail");

        slow.commit().await.unwrap();
        let rest = log.read_all(read.last().unwrap().global_position, 10).await.unwrap();
        assert_eq!(rest.iter().map(|e| e.global_position).collect::<Vec<_>>(), vec![slow_position, fast.position]);
    }
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

/// Committers configured per log (the binary's `--append-committers`)
/// write groups side by side, each append still answered on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_several_committers_answers_every_append_once() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::with_committers(pool.clone(), 3));
    let streams: Vec<String> = (0..200).map(|_| format!("thing-{}", Uuid::now_v7())).collect();
    let results = futures::future::join_all(streams.iter().map(|s| log.append(vec![write(s)]))).await;
    let mut positions: Vec<u64> = results.into_iter().map(|r| r.unwrap().position).collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 200, "every append has its own position");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 200);
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

/// Changes the log behind its append-only guard, as someone with the
/// database's keys could.
async fn tamper(pool: &sqlx::PgPool, statements: &[&str]) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_no_update").execute(&mut *tx).await.unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_no_update").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

async fn first_problem(pool: &sqlx::PgPool) -> Option<(u64, String)> {
    eventlog::seal::verify(pool).await.unwrap().problem
}

#[tokio::test]
async fn the_sealer_hashes_only_final_events_and_verify_names_the_first_altered_or_removed_one() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = PgEventLog::new(pool.clone());
    let streams: Vec<String> = (0..3).map(|_| format!("thing-{}", Uuid::now_v7())).collect();
    for _ in 0..3 {
        log.append(streams.iter().map(|s| write(s)).collect()).await.unwrap();
    }
    // An append in flight holds the sealer back at the frontier, even past
    // a later one that committed first.
    let mut slow = pool.begin().await.unwrap();
    let in_flight = append_in(&mut slow, &streams[0]).await;
    let fast = log.append(vec![write(&streams[2])]).await.unwrap().position as i64;
    assert!(fast > in_flight);
    assert_eq!(eventlog::seal::seal(&pool, 1000).await.unwrap(), 9);
    let sealed_to: i64 = sqlx::query_scalar("SELECT max(up_to) FROM log_seals").fetch_one(&pool).await.unwrap();
    assert!(sealed_to < in_flight);
    slow.commit().await.unwrap();
    assert_eq!(eventlog::seal::seal(&pool, 1000).await.unwrap(), 2);
    assert_eq!(eventlog::seal::seal(&pool, 1000).await.unwrap(), 0, "nothing is sealed twice");
    let clean = eventlog::seal::verify(&pool).await.unwrap();
    assert_eq!((clean.problem, clean.checked, clean.unsealed), (None, 11, 0));
    assert_eq!(clean.seal.as_ref().map(|s| s.0 as i64), Some(fast));
    // Newer events wait for the sealer, unchecked but counted.
    log.append(vec![write(&streams[1])]).await.unwrap();
    assert_eq!(eventlog::seal::verify(&pool).await.unwrap().unsealed, 1);
    eventlog::seal::seal(&pool, 1000).await.unwrap();

    let positions = |stream: &str| {
        let (pool, stream) = (pool.clone(), stream.to_owned());
        async move {
            sqlx::query_scalar::<_, i64>("SELECT global_position FROM events WHERE stream_id = $1 ORDER BY stream_version")
                .bind(stream)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let middle = positions(&streams[1]).await[1];
    sqlx::query("CREATE TABLE kept AS SELECT * FROM events").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE kept_hashes AS SELECT * FROM event_hashes").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE kept_seals AS SELECT * FROM log_seals").execute(&pool).await.unwrap();
    let restore = [
        "DELETE FROM events",
        "INSERT INTO events SELECT * FROM kept",
        "DELETE FROM event_hashes",
        "INSERT INTO event_hashes SELECT * FROM kept_hashes",
        "DELETE FROM log_seals",
        "INSERT INTO log_seals SELECT * FROM kept_seals",
    ];

    // An altered event: its own hash fails.
    tamper(&pool, &[&format!("UPDATE events SET data = '{{\"forged\": true}}' WHERE global_position = {middle}")]).await;
    let (at, why) = first_problem(&pool).await.unwrap();
    assert_eq!(at as i64, middle);
    assert!(why.contains("altered"), "{why}");
    tamper(&pool, &restore).await;
    assert_eq!(first_problem(&pool).await, None, "restored");

    // A removed event: its hash is left without it.
    tamper(&pool, &[&format!("DELETE FROM events WHERE global_position = {middle}")]).await;
    assert_eq!(first_problem(&pool).await.map(|p| p.0 as i64), Some(middle));
    tamper(&pool, &restore).await;

    // Removed with its hash: the next event of its stream names the gap.
    tamper(
        &pool,
        &[
            &format!("DELETE FROM events WHERE global_position = {middle}"),
            &format!("DELETE FROM event_hashes WHERE global_position = {middle}"),
        ],
    )
    .await;
    let (at, why) = first_problem(&pool).await.unwrap();
    assert_eq!(at as i64, positions(&streams[1]).await[1], "the event after the gap");
    assert!(why.contains("was removed"), "{why}");
    tamper(&pool, &restore).await;

    // A whole stream removed, hashes and all: the seals no longer match.
    let gone = positions(&streams[2]).await;
    tamper(
        &pool,
        &[
            &format!(
                "DELETE FROM event_hashes WHERE global_position IN (SELECT global_position FROM events WHERE stream_id = '{}')",
                streams[2]
            ),
            &format!("DELETE FROM events WHERE stream_id = '{}'", streams[2]),
        ],
    )
    .await;
    let (at, why) = first_problem(&pool).await.unwrap();
    assert!(at as i64 >= gone[0], "named at or after the first removed event: {at} vs {gone:?}");
    assert!(why.contains("seal"), "{why}");
    tamper(&pool, &restore).await;
    assert_eq!(first_problem(&pool).await, None);

    // Seals removed, so that what they covered looks unsealed: the hashes
    // left above the last seal give it away, altered event or not.
    tamper(&pool, &["DELETE FROM log_seals"]).await;
    let (at, why) = first_problem(&pool).await.unwrap();
    assert_eq!(at as i64, positions(&streams[0]).await[0], "{why}");
    assert!(why.contains("seals were removed"), "{why}");
    tamper(&pool, &restore).await;
    let last = positions(&streams[1]).await.last().copied().unwrap();
    tamper(
        &pool,
        &[
            "DELETE FROM log_seals WHERE up_to = (SELECT max(up_to) FROM log_seals)",
            &format!("UPDATE events SET data = '{{}}' WHERE global_position = {last}"),
        ],
    )
    .await;
    assert!(first_problem(&pool).await.is_some_and(|(_, why)| why.contains("seals were removed")));
    tamper(&pool, &restore).await;
    assert_eq!(first_problem(&pool).await, None);
}

#[tokio::test]
async fn a_log_written_before_hashes_existed_is_hashed_and_sealed_by_the_migration() {
    let url = eventlog::testing::fresh_database_url().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // The migrations as they were before hashes.
    let before = std::env::temp_dir().join(format!("sk-migrations-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&before).unwrap();
    for file in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        if name.as_str() < "10008" {
            std::fs::copy(file.path(), before.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.as_path()).await.unwrap().run(&pool).await.unwrap();
    std::fs::remove_dir_all(&before).ok();
    for i in 0..50 {
        append_in(&mut pool.acquire().await.unwrap(), &format!("thing-{}", i % 7)).await;
    }
    eventlog::migrate(&pool).await.unwrap();
    let found = eventlog::seal::verify(&pool).await.unwrap();
    assert_eq!((found.problem, found.checked, found.unsealed), (None, 50, 0));
}

/// The queue of appends waiting for a group is bounded: with the
/// committer held up (its group waits for a stream lock), appends past the
/// bound are refused at once with `Overloaded`, nothing of them written,
/// and the others are written once it moves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_bounded_append_queue_an_append_is_refused_at_once() {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let log = Arc::new(PgEventLog::new(pool.clone()));
    let stream = format!("thing-{}", Uuid::now_v7());
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))").bind(&stream).execute(&mut *holder).await.unwrap();

    let total = eventlog::APPEND_QUEUE + 1000;
    let appends: Vec<_> = (0..total)
        .map(|_| {
            let (log, stream) = (log.clone(), stream.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                (log.append(vec![write(&stream)]).await, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    holder.rollback().await.unwrap();
    let (mut written, mut refused) = (0, 0);
    for append in appends {
        match append.await.unwrap() {
            (Ok(_), _) => written += 1,
            (Err(eventlog::EventLogError::Overloaded), took) => {
                refused += 1;
                assert!(took < std::time::Duration::from_millis(500), "refused at once, not after {took:?}");
            }
            (Err(e), _) => panic!("{e}"),
        }
    }
    // Waiting or being written, the bound counts them all.
    assert_eq!(refused, 1000);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = $1").bind(&stream).fetch_one(&pool).await.unwrap();
    assert_eq!(stored, written);
    assert_eq!(written + refused, total as i64);
}
