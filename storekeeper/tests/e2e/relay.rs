//! `storekeeper relay` as its own process, killed with SIGKILL mid-stream
//! and restarted: every event still reaches Kafka, each stream in order.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use eventlog::{EventLog, ExpectedVersion, Metadata, NewEvent, PgEventLog, RecordedEvent, StreamWrite};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use uuid::Uuid;

use crate::{brokers, storekeeper};

fn relay(url: &str, topic: &str) -> Child {
    storekeeper(&["relay"])
        .env("DATABASE_URL", url)
        .env("KAFKA_BROKERS", brokers())
        .env("STOREKEEPER_KAFKA_TOPIC", topic)
        .env("STOREKEEPER_KAFKA_PARTITIONS", "3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn append(log: &Arc<dyn EventLog>, streams: &[String], rounds: usize) {
    for _ in 0..rounds {
        let writes = streams
            .iter()
            .map(|s| StreamWrite {
                stream_id: s.clone(),
                expected: ExpectedVersion::Any,
                events: (0..5)
                    .map(|n| NewEvent {
                        event_id: Uuid::now_v7(),
                        event_type: "ThingHappened".into(),
                        schema_version: 1,
                        occurred_at: chrono::Utc::now(),
                        metadata: Metadata::system("test"),
                        data: serde_json::json!({ "n": n }),
                    })
                    .collect(),
            })
            .collect();
        log.append(writes).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_resumes_without_losing_an_event() {
    let url = eventlog::testing::fresh_database_url().await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(5).connect(&url).await.unwrap();
    eventlog::migrate(&pool).await.unwrap();
    let log: Arc<dyn EventLog> = Arc::new(PgEventLog::new(pool.clone()));
    let streams: Vec<String> = (0..20).map(|_| format!("thing-{}", Uuid::now_v7())).collect();
    append(&log, &streams, 40).await; // 4,000 events
    // And a customer, whose personal data Kafka must only ever carry sealed.
    let (vaulted, vault) = eventlog::vault::postgres_log(&pool);
    let customer = Uuid::now_v7();
    let register = domain::customer::CustomerCommand::Register {
        customer_id: customer,
        email: domain::Email::parse("kafka.person@relay.example").unwrap(),
        name: "Kafka Person".into(),
        shipping_address: None,
    };
    commands::CommandService::new(vaulted, vault.clone()).customer(customer, register, None, &Metadata::system("test")).await.unwrap();

    let topic = format!("storekeeper-relay-{}", Uuid::now_v7().simple());
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .unwrap();

    let mut first = relay(&url, &topic);
    // Kill it as soon as it has published something.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let published: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
            .bind(format!("relay:{topic}"))
            .fetch_optional(&pool)
            .await
            .unwrap_or(None);
        if published.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the relay published nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    append(&log, &streams, 10).await; // 1,000 more while it is down
    let mut second = relay(&url, &topic);
    consumer.subscribe(&[topic.as_str()]).unwrap();
    let all: Vec<RecordedEvent> = log.read_all(0, usize::MAX).await.unwrap();
    assert_eq!(all.len(), 5002);
    let wanted: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut next: HashMap<String, u64> = HashMap::new();
    while seen.len() < wanted.len() {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.expect("events keep arriving").unwrap();
        let payload = String::from_utf8_lossy(message.payload().unwrap()).into_owned();
        assert!(!payload.contains("Kafka Person") && !payload.contains("kafka.person"), "plaintext on the topic: {payload}");
        let event: RecordedEvent = serde_json::from_str(&payload).unwrap();
        if event.stream_id == format!("customer-{customer}") {
            let mut opened = [event.clone()];
            vault.decrypt(&mut opened).await.unwrap();
            assert_eq!(opened[0].data["name"], "Kafka Person", "a consumer with the key opens it");
        }
        // Duplicates after the crash are allowed; gaps and reordering are not.
        let expected = next.entry(event.stream_id.clone()).or_insert(0);
        assert!(event.stream_version <= *expected, "{} skipped to {} before {}", event.stream_id, event.stream_version, expected);
        if event.stream_version == *expected {
            *expected += 1;
        }
        seen.insert(event.event_id);
    }
    assert_eq!(seen, wanted);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn the_relay_needs_kafka_brokers() {
    let out = storekeeper(&["relay"]).env("DATABASE_URL", "postgres://x@127.0.0.1:1/x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KAFKA_BROKERS must be set"));
}
