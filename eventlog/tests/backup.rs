//! Export and import of the PostgreSQL log (`eventlog::backup`): a round
//! trip gives the same bytes and a log that reads as the first one, and a
//! file that was altered, cut short or aimed at a log in use is refused
//! with nothing imported.

use chrono::Utc;
use domain::{Category, StreamId};
use eventlog::backup::{BackupError, Plaintext, export, import};
use eventlog::{ExpectedVersion, Metadata, NewEvent, StreamWrite};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn write(stream_id: String, event_type: &str, schema_version: u32, data: serde_json::Value) -> StreamWrite {
    StreamWrite {
        stream_id,
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            occurred_at: Utc::now(),
            metadata: Metadata::system("test"),
            data,
        }],
    }
}

/// A log with a customer (personal data sealed through the vault) and a
/// few other events; answers its pool and the customer's stream.
async fn a_log() -> (PgPool, String) {
    let pool = eventlog::testing::fresh_event_log_database().await;
    let (log, _) = eventlog::vault::postgres_log(&pool);
    let customer = Uuid::now_v7();
    let stream = StreamId { category: Category::Customer, id: customer }.to_string();
    let registered = json!({"customer_id": customer, "email": "ann@backup.example", "name": "Ann Backup"});
    log.append(vec![write(stream.clone(), "CustomerRegistered", 2, registered)]).await.unwrap();
    for i in 0..5 {
        let product = StreamId { category: Category::Product, id: Uuid::now_v7() }.to_string();
        log.append(vec![write(product, "ThingHappened", 1, json!({"n": i}))]).await.unwrap();
    }
    (pool, stream)
}

async fn exported(pool: &PgPool) -> Vec<u8> {
    let mut out = Vec::new();
    export(pool, &mut out).await.unwrap();
    out
}

async fn events_in(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_round_trip_gives_the_same_bytes_and_a_log_that_reads_as_the_first() {
    let (source, stream) = a_log().await;
    let first = exported(&source).await;
    let text = String::from_utf8(first.clone()).unwrap();
    assert!(!text.contains("Ann Backup"), "the export holds the stored form:\n{text}");
    let end = text.lines().last().unwrap();
    let (_, seal) = eventlog::seal::latest_seal(&source).await.unwrap().unwrap();
    assert!(end.starts_with("{\"end_of_export\":{\"events\":6,") && end.contains(&hex::encode(&seal)), "{end}");

    let target = eventlog::testing::fresh_event_log_database().await;
    let imported = import(&target, &first[..], Plaintext::Keep).await.unwrap();
    assert_eq!((imported.events, imported.seal.as_str(), imported.reencrypted), (6, hex::encode(&seal).as_str(), None));
    assert_eq!(exported(&target).await, first, "exported again, the restored log gives the same bytes");
    assert!(eventlog::seal::verify(&target).await.unwrap().problem.is_none());
    let (restored, _) = eventlog::vault::postgres_log(&target);
    let read = restored.read_stream(&stream, 0, 1).await.unwrap();
    assert_eq!(read[0].data["name"], "Ann Backup", "the customer's key came along");

    let again = import(&target, &first[..], Plaintext::Keep).await;
    assert!(matches!(again, Err(BackupError::NotEmpty)), "{again:?}");
}

#[tokio::test]
async fn an_altered_or_cut_file_is_refused_and_nothing_is_imported() {
    let (source, _) = a_log().await;
    let text = String::from_utf8(exported(&source).await).unwrap();
    let refused = |contents: String| async move {
        let target = eventlog::testing::fresh_event_log_database().await;
        let refused = import(&target, contents.as_bytes(), Plaintext::Keep).await.expect_err("refused");
        assert_eq!(events_in(&target).await, 0, "nothing of a refused file stays");
        let sequence: (i64, bool) =
            sqlx::query_as("SELECT last_value, is_called FROM events_position_seq").fetch_one(&target).await.unwrap();
        assert_eq!(sequence, (1, false), "not even the position sequence moves");
        refused
    };

    let victim = text.lines().position(|l| l.contains("\"n\":3")).unwrap();
    let altered: Vec<String> =
        text.lines().enumerate().map(|(i, l)| if i == victim { l.replace("\"n\":3", "\"n\":30") } else { l.to_owned() }).collect();
    let error = refused(altered.join("\n") + "\n").await;
    assert!(matches!(error, BackupError::Altered { line, .. } if line == victim + 1), "{error}");

    let events: Vec<&str> = text.lines().filter(|l| l.starts_with("{\"event_id\"") || l.contains("\"stream_hash\"")).collect();
    let error = refused(events.join("\n") + "\n").await;
    assert!(matches!(error, BackupError::NoEndLine), "{error}");

    let taken_out: Vec<&str> = text.lines().filter(|l| !l.contains("\"n\":4")).collect();
    let error = refused(taken_out.join("\n") + "\n").await;
    assert!(matches!(error, BackupError::DoesNotAddUp { events: 6, .. }), "{error}");

    let error = refused("{\"not\": \"an event\"}\n".into()).await;
    assert_eq!(error.to_string(), "line 1: not an event envelope");
}
