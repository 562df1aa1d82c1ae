//! The relay and the Kafka event source against the real test broker
//! (`cargo xtask test` starts tansu and sets KAFKA_BROKERS).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use commands::CommandService;
use domain::product::{ProductAggregate, ProductCommand};
use domain::{Currency, Money, Sku};
use eventlog::{Batch, EventLog, EventSource, Metadata, Progress, RecordedEvent, Resume, SourceFactory};
use kafka::{Relay, ensure_topic};
use projections::Runner;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

mod redelivery;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").expect("KAFKA_BROKERS is not set: run the tests with `cargo xtask test`, which starts a test broker")
}

fn topic() -> String {
    format!("storekeeper-test-{}", Uuid::now_v7().simple())
}

async fn setup() -> (PgPool, Arc<dyn EventLog>, CommandService) {
    test_support::command_side().await
}

/// Adds `products` products and restocks each `rounds` times.
async fn write(service: &CommandService, products: usize, rounds: u32) -> Vec<Uuid> {
    let metadata = Metadata::system("test");
    let mut ids = Vec::new();
    for i in 0..products {
        let id = Uuid::now_v7();
        let add = ProductCommand::Add {
            product_id: id,
            sku: Sku::parse(&format!("SKU-{id}")[..40]).unwrap(),
            name: format!("Product {i}"),
            description: String::new(),
            category: "c".into(),
            price: Money::new(100, Currency::usd()),
            initial_stock: 1,
        };
        service.product(id, add, None, &metadata).await.unwrap();
        ids.push(id);
    }
    for _ in 0..rounds {
        for id in &ids {
            service.execute::<ProductAggregate>(*id, ProductCommand::Restock { quantity: 1 }, None, &metadata).await.unwrap();
        }
    }
    ids
}

/// Every event in the log, once the tail is no longer held back by other
/// transactions on the server.
async fn all_events(pool: &PgPool, log: &Arc<dyn EventLog>) -> Vec<RecordedEvent> {
    let last: Option<i64> = sqlx::query_scalar("SELECT max(global_position) FROM events").fetch_one(pool).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = log.read_all(0, usize::MAX).await.unwrap();
        if all.last().map(|e| e.global_position as i64) >= last {
            return all;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log's tail stayed held back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start_relay(log: &Arc<dyn EventLog>, pool: &PgPool, topic: &str) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let relay = Relay::new(log.clone(), pool.clone(), &brokers(), topic).unwrap();
    let (tx, rx) = watch::channel(false);
    (tx, tokio::spawn(async move { relay.run(rx).await.unwrap() }))
}

async fn stop((tx, handle): (watch::Sender<bool>, tokio::task::JoinHandle<()>)) {
    tx.send(true).unwrap();
    handle.await.unwrap();
}

/// Reads `count` events from the topic with a fresh consumer group.
async fn consume(topic: &str, count: usize) -> Vec<(String, RecordedEvent, HashMap<String, String>)> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("events keep arriving").unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let event: RecordedEvent = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let headers = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap())).collect())
            .unwrap_or_default();
        seen.push((key, event, headers));
    }
    seen
}

fn assert_per_stream_order(events: &[(String, RecordedEvent, HashMap<String, String>)]) {
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (key, event, _) in events {
        assert_eq!(key, &event.stream_id, "the key is the stream id");
        let expected = next.entry(&event.stream_id).or_insert(0);
        assert_eq!(event.stream_version, *expected, "{} out of order", event.stream_id);
        *expected += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_in_stream_order_with_headers() {
    let (pool, log, service) = setup().await;
    let topic = topic();
    ensure_topic(&brokers(), &topic, 4).await.unwrap();
    ensure_topic(&brokers(), &topic, 4).await.unwrap();
    write(&service, 10, 3).await;
    let total = all_events(&pool, &log).await.len();
    let relay = start_relay(&log, &pool, &topic);
    let seen = consume(&topic, total).await;
    stop(relay).await;
    assert_per_stream_order(&seen);
    let ids: HashSet<Uuid> = seen.iter().map(|(_, e, _)| e.event_id).collect();
    assert_eq!(ids.len(), total, "every event, once");
    let (_, event, headers) = &seen[0];
    assert_eq!(headers["event_type"], event.event_type);
    assert_eq!(headers["schema_version"], event.schema_version.to_string());
    assert_eq!(headers["global_position"], event.global_position.to_string());
    assert!(headers["traceparent"].starts_with("00-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_puts_each_stream_in_the_partition_readers_compute() {
    let (pool, log, service) = setup().await;
    let topic = topic();
    ensure_topic(&brokers(), &topic, 4).await.unwrap();
    write(&service, 12, 0).await;
    let total = all_events(&pool, &log).await.len();
    let relay = start_relay(&log, &pool, &topic);
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut partitions = HashSet::new();
    for _ in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("events keep arriving").unwrap();
        let event: RecordedEvent = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(message.partition(), eventlog::partition_for(&event.stream_id, 4), "{}", event.stream_id);
        partitions.insert(message.partition());
    }
    stop(relay).await;
    assert!(partitions.len() > 1, "streams spread over partitions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_resumes_from_its_checkpoint_without_losing_an_event() {
    let (pool, log, service) = setup().await;
    let topic = topic();
    ensure_topic(&brokers(), &topic, 2).await.unwrap();
    write(&service, 5, 1).await;
    let relay = start_relay(&log, &pool, &topic);
    let first = all_events(&pool, &log).await;
    consume(&topic, first.len()).await;
    stop(relay).await;
    let checkpoint: i64 = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(format!("relay:{topic}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(checkpoint as u64, first.last().unwrap().global_position);

    write(&service, 5, 1).await;
    let relay = start_relay(&log, &pool, &topic);
    let all = all_events(&pool, &log).await;
    let seen = consume(&topic, all.len()).await;
    stop(relay).await;
    let ids: HashSet<Uuid> = seen.iter().map(|(_, e, _)| e.event_id).collect();
    assert_eq!(ids, all.iter().map(|e| e.event_id).collect::<HashSet<_>>());
    assert_per_stream_order(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projections_fed_through_kafka_by_two_workers_in_one_group_match_the_log() {
    let (pool, log, service) = setup().await;
    let topic = topic();
    ensure_topic(&brokers(), &topic, 4).await.unwrap();
    let ids = write(&service, 12, 4).await;
    let relay = start_relay(&log, &pool, &topic);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let runner = Runner::with_sources(
            pool.clone(),
            vec![Arc::new(projections::ProductsProjection)],
            kafka::sources(&brokers(), &topic, log.clone()),
        );
        let stop = stop_rx.clone();
        workers.push(tokio::spawn(async move { runner.run(stop).await }));
    }
    // More writes while the workers run.
    let metadata = Metadata::system("test");
    for id in &ids {
        service.execute::<ProductAggregate>(*id, ProductCommand::Restock { quantity: 2 }, None, &metadata).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut matching = 0;
        for id in &ids {
            let expected = service.load::<ProductAggregate>(&domain::stream_id::<ProductAggregate>(*id)).await.unwrap();
            let row: Option<(i64, i64)> =
                sqlx::query_as("SELECT stock, version FROM rm_products WHERE id = $1").bind(id).fetch_optional(&pool).await.unwrap();
            if row == Some((i64::from(expected.state.unwrap().stock), expected.version.unwrap() as i64)) {
                matching += 1;
            }
        }
        if matching == ids.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {matching} of {} products caught up through Kafka", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    stop(relay).await;
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&pool).await.unwrap();
    assert_eq!(parked, 0);
}

/// The event source contract, run against the in-process source and the
/// Kafka source: every event once in per-stream order, resuming from a
/// consumer's progress, and a crash before the progress was stored being
/// harmless.
mod source_contract {
    use super::*;

    pub struct Fixture {
        pub pool: PgPool,
        pub log: Arc<dyn EventLog>,
        pub service: CommandService,
        pub sources: SourceFactory,
        topic: String,
        _relay: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    }

    pub async fn in_process() -> Fixture {
        let (pool, log, service) = setup().await;
        let sources = eventlog::in_process(log.clone(), 7);
        Fixture { pool, log, service, sources, topic: String::new(), _relay: None }
    }

    async fn kafka_fixture(catch_up: bool) -> Fixture {
        let (pool, log, service) = setup().await;
        let topic = topic();
        ensure_topic(&brokers(), &topic, 3).await.unwrap();
        let relay = start_relay(&log, &pool, &topic);
        let sources = if catch_up { kafka::sources(&brokers(), &topic, log.clone()) } else { topic_sources(&brokers(), &topic) };
        Fixture { pool, log, service, sources, topic, _relay: Some(relay) }
    }

    /// Only the topic.
    pub async fn through_kafka() -> Fixture {
        kafka_fixture(false).await
    }

    /// A consumer new to the topic: the log up to its head, then the topic.
    pub async fn catching_up_from_the_log() -> Fixture {
        kafka_fixture(true).await
    }

    fn topic_of(f: &Fixture) -> String {
        f.topic.clone()
    }

    fn resume(generation: &str, progress: &Progress) -> Resume {
        Resume { consumer: "contract".into(), generation: generation.into(), progress: progress.clone() }
    }

    /// Takes batches until `count` events came (or fails after 30 s).
    async fn take(source: &mut Box<dyn EventSource>, count: usize) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut seen = 0;
        while seen < count {
            let batch = tokio::time::timeout(Duration::from_secs(30), source.next_batch())
                .await
                .unwrap_or_else(|_| panic!("only {seen} of {count} events arrived"))
                .unwrap();
            seen += batch.events.len();
            batches.push(batch);
        }
        batches
    }

    fn events(batches: &[Batch]) -> Vec<RecordedEvent> {
        batches.iter().flat_map(|b| b.events.iter().cloned()).collect()
    }

    fn assert_covers(progress: &Progress, log: &[RecordedEvent]) {
        for event in log {
            assert!(progress.covers(event.global_position, std::slice::from_ref(&event.stream_id)), "progress covers every event");
        }
    }

    fn assert_once_in_stream_order(applied: &[RecordedEvent], log: &[RecordedEvent]) {
        let ids: Vec<Uuid> = applied.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "no event twice");
        assert_eq!(ids.iter().collect::<HashSet<_>>(), log.iter().map(|e| &e.event_id).collect::<HashSet<_>>(), "every event");
        let mut next: HashMap<&str, u64> = HashMap::new();
        for event in applied {
            let expected = next.entry(&event.stream_id).or_insert(0);
            assert_eq!(event.stream_version, *expected, "{} out of order", event.stream_id);
            *expected += 1;
        }
    }

    pub async fn delivers_every_event_once_in_stream_order(f: Fixture) {
        write(&f.service, 8, 3).await;
        let log = all_events(&f.pool, &f.log).await;
        let mut source = (f.sources)(&resume(&Uuid::now_v7().to_string(), &Progress::default())).unwrap();
        let batches = take(&mut source, log.len()).await;
        assert_once_in_stream_order(&events(&batches), &log);
        let mut progress = Progress::default();
        batches.iter().for_each(|b| progress.advance(b));
        assert_covers(&progress, &log);
    }

    pub async fn resumes_from_the_consumers_progress(f: Fixture) {
        write(&f.service, 6, 2).await;
        let first = all_events(&f.pool, &f.log).await;
        let generation = Uuid::now_v7().to_string();
        let mut progress = Progress::default();
        let mut source = (f.sources)(&resume(&generation, &progress)).unwrap();
        let before = take(&mut source, first.len()).await;
        before.iter().for_each(|b| progress.advance(b));
        source.ack().await.unwrap();
        drop(source);

        write(&f.service, 6, 2).await;
        let all = all_events(&f.pool, &f.log).await;
        let mut source = (f.sources)(&resume(&generation, &progress)).unwrap();
        let after = take(&mut source, all.len() - first.len()).await;
        let mut applied = events(&before);
        applied.extend(events(&after));
        assert_once_in_stream_order(&applied, &all);
    }

    pub async fn keeps_delivering_what_is_written_after_it_caught_up(f: Fixture) {
        write(&f.service, 5, 1).await;
        let first = all_events(&f.pool, &f.log).await;
        let mut source = (f.sources)(&resume(&Uuid::now_v7().to_string(), &Progress::default())).unwrap();
        let mut batches = take(&mut source, first.len()).await;
        source.ack().await.unwrap();
        write(&f.service, 5, 1).await;
        let all = all_events(&f.pool, &f.log).await;
        batches.extend(take(&mut source, all.len() - first.len()).await);
        assert_once_in_stream_order(&events(&batches), &all);
        let mut progress = Progress::default();
        batches.iter().for_each(|b| progress.advance(b));
        for event in &all {
            assert!(progress.covers(event.global_position, std::slice::from_ref(&event.stream_id)), "progress covers every event");
        }
    }

    /// A deployment moved from Kafka to the in-process feed with some
    /// partitions ahead of others, written to, and moved back: every event
    /// applied once, in stream order, and the progress covers them all.
    pub async fn switching_feeds_never_skips_in_either_direction() {
        let f = kafka_fixture(false).await;
        write(&f.service, 9, 3).await;
        let log = all_events(&f.pool, &f.log).await;
        let generation = Uuid::now_v7().to_string();
        // Where a Kafka consumer may stand: partition 0 all applied,
        // partition 1 half, partition 2 nothing yet.
        let mut progress = Progress { partition_count: 3, ..Progress::default() };
        let mut applied = Vec::new();
        for partition in 0..3 {
            let events: Vec<&RecordedEvent> = log.iter().filter(|e| eventlog::partition_for(&e.stream_id, 3) == partition).collect();
            let cut = match partition {
                0 => events.len(),
                1 => events.len() / 2,
                _ => 0,
            };
            if let Some(last) = events[..cut].last() {
                progress.partitions.insert(partition, last.global_position);
                progress.position = progress.position.max(last.global_position);
            }
            applied.extend(events[..cut].iter().map(|e| (*e).clone()));
        }
        applied.sort_by_key(|e| e.global_position);
        assert!(!applied.is_empty() && applied.len() < log.len());

        let in_process = eventlog::in_process(f.log.clone(), 4);
        let mut source = in_process(&resume(&generation, &progress)).unwrap();
        let rest = take(&mut source, log.len() - applied.len()).await;
        rest.iter().for_each(|b| progress.advance(b));
        applied.extend(events(&rest));
        assert_once_in_stream_order(&applied, &log);
        drop(source);

        write(&f.service, 4, 2).await;
        let all = all_events(&f.pool, &f.log).await;
        let back = kafka::sources(&brokers(), &topic_of(&f), f.log.clone());
        let mut source = back(&resume(&generation, &progress)).unwrap();
        let newer = take(&mut source, all.len() - log.len()).await;
        newer.iter().for_each(|b| progress.advance(b));
        applied.extend(events(&newer));
        assert_once_in_stream_order(&applied, &all);
        assert_covers(&progress, &all);
    }

    pub async fn a_crash_before_the_progress_is_stored_redelivers_without_gaps(f: Fixture) {
        write(&f.service, 6, 3).await;
        let log = all_events(&f.pool, &f.log).await;
        let generation = Uuid::now_v7().to_string();
        // Applies (and durably records) the first batch, then crashes: the
        // batches after it were handed out but never applied.
        let mut source = (f.sources)(&resume(&generation, &Progress::default())).unwrap();
        let handed_out = take(&mut source, log.len()).await;
        let mut progress = Progress::default();
        progress.advance(&handed_out[0]);
        let mut applied = handed_out[0].events.clone();
        drop(source);

        let mut source = (f.sources)(&resume(&generation, &progress)).unwrap();
        let rest = take(&mut source, log.len() - applied.len()).await;
        applied.extend(events(&rest));
        assert_once_in_stream_order(&applied, &log);
    }
}

macro_rules! source_contract {
    ($($adapter:ident),*) => {$(
        mod $adapter {
            use super::source_contract as contract;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delivers_every_event_once_in_stream_order() {
                contract::delivers_every_event_once_in_stream_order(contract::$adapter().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resumes_from_the_consumers_progress() {
                contract::resumes_from_the_consumers_progress(contract::$adapter().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn keeps_delivering_what_is_written_after_it_caught_up() {
                contract::keeps_delivering_what_is_written_after_it_caught_up(contract::$adapter().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_crash_before_the_progress_is_stored_redelivers_without_gaps() {
                contract::a_crash_before_the_progress_is_stored_redelivers_without_gaps(contract::$adapter().await).await
            }
        }
    )*};
}

source_contract!(in_process, through_kafka, catching_up_from_the_log);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_feeds_never_skips_in_either_direction() {
    source_contract::switching_feeds_never_skips_in_either_direction().await
}

/// Event sources that read only the topic, each consumer in its own group.
fn topic_sources(brokers: &str, topic: &str) -> eventlog::SourceFactory {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    std::sync::Arc::new(move |resume: &eventlog::Resume| {
        kafka::KafkaSource::new(&brokers, &topic, resume)
            .map(|source| Box::new(source) as Box<dyn eventlog::EventSource>)
            .map_err(|e| eventlog::EventLogError::Backend(Box::new(e)))
    })
}

/// The AsyncAPI document is generated from the event schemas; the copy
/// checked in under `schemas/asyncapi/` must match it.
#[test]
fn the_checked_in_asyncapi_document_matches_the_code() {
    test_support::assert_checked_in("schemas/asyncapi/events.json", &kafka::asyncapi::document());
}
