//! The contract every event log adapter passes. Each test runs once per
//! adapter: in memory, and on PostgreSQL (a fresh database per test).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventlog::{EventLog, EventLogError, ExpectedVersion, Metadata, NewEvent, Receipt, Snapshot, StreamWrite, Subscription};
use serde_json::json;
use uuid::Uuid;

fn stream() -> String {
    format!("thing-{}", Uuid::now_v7())
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ThingHappened".into(),
        schema_version: 1,
        occurred_at: Utc::now(),
        metadata: Metadata::system("contract-test"),
        data: json!({ "n": n }),
    }
}

fn write(stream_id: &str, expected: ExpectedVersion, count: u64) -> StreamWrite {
    StreamWrite { stream_id: stream_id.to_owned(), expected, events: (0..count).map(event).collect() }
}

async fn appends_get_gapless_versions_and_increasing_positions(log: Arc<dyn EventLog>) {
    let s = stream();
    let first = log.append(vec![write(&s, ExpectedVersion::NoStream, 3)]).await.unwrap();
    assert_eq!(first.streams[0].version, Some(2));
    let second = log.append(vec![write(&s, ExpectedVersion::Exact(2), 2)]).await.unwrap();
    assert_eq!(second.streams[0].version, Some(4));
    assert!(second.position > first.position);
    let events = log.read_stream(&s, 0, 100).await.unwrap();
    assert_eq!(events.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert!(events.windows(2).all(|w| w[0].global_position < w[1].global_position));
    assert_eq!(events.last().unwrap().global_position, second.position);
    assert_eq!(events[3].data, json!({ "n": 0 }));
    assert_eq!(events[0].metadata.actor, "system:contract-test");
    // The head, where the adapter says it, covers every position handed
    // out: a token from a write is never beyond it.
    if let Some(head) = log.head().await.unwrap() {
        assert!(head >= second.position, "head {head} is behind a written position {}", second.position);
    }
    // With no append under way, every written event is final.
    if let Some(frontier) = log.frontier().await.unwrap() {
        assert!(frontier >= second.position, "frontier {frontier} is behind a finished append's position {}", second.position);
    }
}

async fn a_stale_expected_version_is_a_conflict_and_appends_nothing(log: Arc<dyn EventLog>) {
    let s = stream();
    log.append(vec![write(&s, ExpectedVersion::NoStream, 2)]).await.unwrap();
    match log.append(vec![write(&s, ExpectedVersion::Exact(0), 1)]).await {
        Err(EventLogError::VersionConflict { actual: Some(1), expected: ExpectedVersion::Exact(0), .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    match log.append(vec![write(&s, ExpectedVersion::NoStream, 1)]).await {
        Err(EventLogError::VersionConflict { actual: Some(1), .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    match log.append(vec![write(&stream(), ExpectedVersion::Exact(0), 1)]).await {
        Err(EventLogError::VersionConflict { actual: None, .. }) => {}
        other => panic!("expected a conflict on a missing stream, got {other:?}"),
    }
    assert_eq!(log.read_stream(&s, 0, 100).await.unwrap().len(), 2);
    let any = log.append(vec![write(&s, ExpectedVersion::Any, 1)]).await.unwrap();
    assert_eq!(any.streams[0].version, Some(2));
}

async fn a_multi_stream_append_is_all_or_nothing(log: Arc<dyn EventLog>) {
    let (a, b) = (stream(), stream());
    log.append(vec![write(&b, ExpectedVersion::NoStream, 1)]).await.unwrap();
    let conflict = log.append(vec![write(&a, ExpectedVersion::NoStream, 2), write(&b, ExpectedVersion::NoStream, 1)]).await;
    assert!(matches!(conflict, Err(EventLogError::VersionConflict { ref stream_id, .. }) if *stream_id == b), "{conflict:?}");
    assert!(log.read_stream(&a, 0, 10).await.unwrap().is_empty(), "nothing of the failed append is stored");
    let both = log.append(vec![write(&a, ExpectedVersion::NoStream, 2), write(&b, ExpectedVersion::Exact(0), 1)]).await.unwrap();
    assert_eq!(both.streams.iter().map(|s| s.version).collect::<Vec<_>>(), vec![Some(1), Some(1)]);
    assert_eq!(both.position, both.streams.iter().filter_map(|s| s.position).max().unwrap());
}

async fn bad_appends_are_refused(log: Arc<dyn EventLog>) {
    for bad in ["nocategory", "thing-not-a-uuid", "-0190f3c4-0000-7000-8000-000000000000"] {
        assert!(matches!(log.append(vec![write(bad, ExpectedVersion::Any, 1)]).await, Err(EventLogError::InvalidAppend(_))));
    }
    let s = stream();
    let twice = vec![write(&s, ExpectedVersion::Any, 1), write(&s, ExpectedVersion::Any, 1)];
    assert!(matches!(log.append(twice).await, Err(EventLogError::InvalidAppend(_))));
    let e = event(1);
    log.append(vec![StreamWrite { stream_id: s.clone(), expected: ExpectedVersion::Any, events: vec![e.clone()] }]).await.unwrap();
    let again = log.append(vec![StreamWrite { stream_id: stream(), expected: ExpectedVersion::Any, events: vec![e] }]).await;
    assert!(matches!(again, Err(EventLogError::InvalidAppend(_))), "event ids are unique: {again:?}");
}

async fn read_stream_pages_by_version(log: Arc<dyn EventLog>) {
    let s = stream();
    log.append(vec![write(&s, ExpectedVersion::NoStream, 10)]).await.unwrap();
    let page = log.read_stream(&s, 4, 3).await.unwrap();
    assert_eq!(page.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert!(log.read_stream(&s, 10, 3).await.unwrap().is_empty());
    assert!(log.read_stream(&stream(), 0, 3).await.unwrap().is_empty());
}

async fn read_all_follows_the_global_order_from_a_position(log: Arc<dyn EventLog>) {
    let (a, b) = (stream(), stream());
    let first = log.append(vec![write(&a, ExpectedVersion::Any, 2)]).await.unwrap();
    log.append(vec![write(&b, ExpectedVersion::Any, 2), write(&a, ExpectedVersion::Any, 1)]).await.unwrap();
    // Other transactions on the server may hold the tail back for a moment.
    let all = read_all_until(&*log, 5).await;
    assert!(all.windows(2).all(|w| w[0].global_position < w[1].global_position));
    let rest = log.read_all(first.position, 1000).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(log.read_all(all[1].global_position, 2).await.unwrap(), all[2..4].to_vec());
}

async fn a_subscription_catches_up_then_goes_live(log: Arc<dyn EventLog>) {
    let s = stream();
    log.append(vec![write(&s, ExpectedVersion::NoStream, 5)]).await.unwrap();
    let mut sub = Subscription::new(log.clone(), 0).with_batch_size(2);
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(sub.next_batch().await.unwrap());
    }
    let writer = {
        let (log, s) = (log.clone(), s.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            log.append(vec![write(&s, ExpectedVersion::Exact(4), 1)]).await.unwrap()
        })
    };
    let live = tokio::time::timeout(Duration::from_secs(5), sub.next_batch()).await.expect("the live event arrives").unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].stream_version, 5);
    assert_eq!(sub.position(), writer.await.unwrap().position);
    // Resuming from a checkpoint hands out only what came after it.
    let mut resumed = Subscription::new(log.clone(), seen[2].global_position);
    let rest = resumed.next_batch().await.unwrap();
    assert_eq!(rest.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![3, 4, 5]);
}

/// 16 writers append 20,000 events over 200 streams, some in multi-stream
/// appends, while a subscriber tails the log: it must see every event
/// exactly once and each stream in version order.
async fn concurrent_writers_and_a_tailing_subscriber(log: Arc<dyn EventLog>) {
    const WRITERS: usize = 16;
    const EVENTS: usize = 20_000;
    const STREAMS: usize = 200;
    let streams: Arc<Vec<String>> = Arc::new((0..STREAMS).map(|_| stream()).collect());
    let start = log.read_all(0, usize::MAX).await.unwrap().last().map_or(0, |e| e.global_position);

    // Several subscribers, reading in batches of different sizes, as the
    // consumers of one process do (sharing one reader where the log is
    // wrapped in `SharedTail`).
    let subscribers: Vec<_> = [500, 137, 2000]
        .into_iter()
        .map(|batch_size| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut sub = Subscription::new(log, start).with_batch_size(batch_size);
                let mut seen = Vec::with_capacity(EVENTS);
                while seen.len() < EVENTS {
                    let batch =
                        tokio::time::timeout(Duration::from_secs(30), sub.next_batch()).await.expect("the subscriber stalled").unwrap();
                    seen.extend(batch);
                }
                seen
            })
        })
        .collect();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (log, streams) = (log.clone(), streams.clone());
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            let mut i = w;
            while written < EVENTS / WRITERS {
                let size = 1 + (i % 4).min(EVENTS / WRITERS - written - 1);
                let mut appends = vec![write(&streams[(i * 7) % STREAMS], ExpectedVersion::Any, size as u64)];
                if i % 5 == 0 && written + size < EVENTS / WRITERS {
                    appends.push(write(&streams[(i * 13 + 1) % STREAMS], ExpectedVersion::Any, 1));
                }
                if appends.len() == 2 && appends[0].stream_id == appends[1].stream_id {
                    appends.pop();
                }
                written += appends.iter().map(|a| a.events.len()).sum::<usize>();
                log.append(appends).await.unwrap();
                i += WRITERS;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for subscriber in subscribers {
        let seen = subscriber.await.unwrap();
        assert_eq!(seen.len(), EVENTS);
        let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
        assert_eq!(ids.len(), EVENTS, "no event is seen twice");
        assert!(seen.windows(2).all(|w| w[0].global_position < w[1].global_position), "global order");
        let mut next: HashMap<&str, u64> = HashMap::new();
        for e in &seen {
            let expected = next.entry(&e.stream_id).or_insert(0);
            assert_eq!(e.stream_version, *expected, "{} out of order", e.stream_id);
            *expected += 1;
        }
    }
    let stored: usize = {
        let mut n = 0;
        for s in streams.iter() {
            n += log.read_stream(s, 0, usize::MAX).await.unwrap().len();
        }
        n
    };
    assert_eq!(stored, EVENTS);
}

/// Reads the whole log once it holds `count` events.
async fn an_append_under_a_receipt_happens_once(log: Arc<dyn EventLog>) {
    let (a, b) = (stream(), stream());
    let receipt = Receipt { actor: "user-1", key: "key-1" };
    assert_eq!(log.receipt(receipt).await.unwrap(), None);
    let first =
        log.append_once(vec![write(&a, ExpectedVersion::NoStream, 2), write(&b, ExpectedVersion::Any, 1)], Some(receipt)).await.unwrap();
    assert!(!first.replayed);
    // The same receipt again, whatever it asks to write: nothing is
    // appended and the first result comes back.
    let again = log.append_once(vec![write(&a, ExpectedVersion::NoStream, 5)], Some(receipt)).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.streams.clone(), again.position), (first.streams.clone(), first.position));
    assert_eq!(log.receipt(receipt).await.unwrap().map(|r| (r.streams, r.position)), Some((first.streams, first.position)));
    assert_eq!(log.read_stream(&a, 0, 100).await.unwrap().len(), 2);
    // Scoped to the actor; a refused append records nothing.
    let other = Receipt { actor: "user-2", key: "key-1" };
    assert!(!log.append_once(vec![write(&a, ExpectedVersion::Exact(1), 1)], Some(other)).await.unwrap().replayed);
    let refused = Receipt { actor: "user-1", key: "key-2" };
    assert!(matches!(
        log.append_once(vec![write(&a, ExpectedVersion::Exact(0), 1)], Some(refused)).await,
        Err(EventLogError::VersionConflict { .. })
    ));
    assert_eq!(log.receipt(refused).await.unwrap(), None);
    assert!(!log.append_once(vec![write(&a, ExpectedVersion::Exact(2), 1)], Some(refused)).await.unwrap().replayed);
    assert_eq!(log.read_stream(&a, 0, 100).await.unwrap().len(), 4);
}

/// Sixteen tasks race one receipt: exactly one appends.
async fn racing_appends_under_one_receipt_append_once(log: Arc<dyn EventLog>) {
    let receipt_key = format!("key-{}", Uuid::now_v7());
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (log, key) = (log.clone(), receipt_key.clone());
        // Each racer writes its own new stream, as a retried create would.
        tasks.push(tokio::spawn(async move {
            log.append_once(vec![write(&stream(), ExpectedVersion::NoStream, 1)], Some(Receipt { actor: "user", key: &key })).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1);
    assert!(results.iter().all(|r| r.streams == results[0].streams));
    assert_eq!(read_all_until(&*log, 1).await.len(), 1);
}

/// Appends in flight at once (which the PostgreSQL log writes in groups)
/// each get their own answer, as if written one after another: a conflict,
/// a duplicate event id or a repeated receipt touches no other append.
async fn appends_in_flight_together_each_get_their_own_answer(log: Arc<dyn EventLog>) {
    let hot = stream();
    log.append(vec![write(&hot, ExpectedVersion::NoStream, 1)]).await.unwrap();
    let stored = event(0);
    log.append(vec![StreamWrite { stream_id: stream(), expected: ExpectedVersion::NoStream, events: vec![stored.clone()] }]).await.unwrap();
    let key = format!("key-{}", Uuid::now_v7());
    enum Kind {
        Fresh(String, u64),
        Hot,
        DuplicateId(String),
        Receipt(String),
    }
    let mut kinds = Vec::new();
    for i in 0..40u64 {
        kinds.push(Kind::Fresh(stream(), 1 + i % 3));
        kinds.push(Kind::Hot);
        if i % 2 == 0 {
            kinds.push(Kind::DuplicateId(stream()));
            kinds.push(Kind::Receipt(stream()));
        }
    }
    let answers = futures::future::join_all(kinds.iter().map(|kind| {
        let (log, stored, key, hot) = (log.clone(), stored.clone(), key.clone(), &hot);
        async move {
            match kind {
                Kind::Fresh(s, n) => log.append(vec![write(s, ExpectedVersion::NoStream, *n)]).await,
                Kind::Hot => log.append(vec![write(hot, ExpectedVersion::Exact(0), 1)]).await,
                Kind::DuplicateId(s) => {
                    let events = vec![event(1), stored];
                    log.append(vec![
                        write(s, ExpectedVersion::NoStream, 1),
                        StreamWrite { stream_id: stream(), expected: ExpectedVersion::Any, events },
                    ])
                    .await
                }
                Kind::Receipt(s) => {
                    log.append_once(vec![write(s, ExpectedVersion::NoStream, 1)], Some(Receipt { actor: "user", key: &key })).await
                }
            }
        }
    }))
    .await;
    let mut expected_events = 2;
    let (mut hot_won, mut receipt_first) = (0, Vec::new());
    for (kind, answer) in kinds.iter().zip(&answers) {
        match (kind, answer) {
            (Kind::Fresh(s, n), Ok(result)) => {
                assert_eq!(result.streams[0].version, Some(n - 1));
                let events = log.read_stream(s, 0, 10).await.unwrap();
                assert_eq!(events.len() as u64, *n);
                assert_eq!(events.last().unwrap().global_position, result.position);
                expected_events += n;
            }
            (Kind::Hot, Ok(result)) => {
                assert_eq!(result.streams[0].version, Some(1));
                hot_won += 1;
                expected_events += 1;
            }
            (Kind::Hot, Err(EventLogError::VersionConflict { actual: Some(1), .. })) => {}
            (Kind::DuplicateId(s), Err(EventLogError::InvalidAppend(_))) => {
                assert!(log.read_stream(s, 0, 10).await.unwrap().is_empty(), "nothing of a refused append is stored");
            }
            (Kind::Receipt(s), Ok(result)) => {
                if !result.replayed {
                    receipt_first.push(result.clone());
                    expected_events += 1;
                } else {
                    assert!(log.read_stream(s, 0, 10).await.unwrap().is_empty(), "a replayed append writes nothing");
                }
            }
            (_, other) => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(hot_won, 1, "exactly one append at version 0 wins");
    assert_eq!(receipt_first.len(), 1, "exactly one append under the receipt is written");
    for (kind, answer) in kinds.iter().zip(&answers) {
        if let (Kind::Receipt(_), Ok(result)) = (kind, answer) {
            assert_eq!(result.streams, receipt_first[0].streams);
        }
    }
    let all = read_all_until(&*log, expected_events as usize).await;
    assert_eq!(all.len() as u64, expected_events);
    assert!(all.windows(2).all(|w| w[0].global_position < w[1].global_position));
}

async fn snapshots_keep_the_newest_of_the_current_shape(log: Arc<dyn EventLog>) {
    let id = stream();
    assert_eq!(log.snapshot(&id).await.unwrap(), None);
    let snapshot = |shape: u32, version: u64| Snapshot {
        stream_id: id.clone(),
        snapshot_version: shape,
        version,
        position: version + 10,
        state: json!({"v": version}),
    };
    log.save_snapshot(&snapshot(1, 50)).await.unwrap();
    log.save_snapshot(&snapshot(1, 40)).await.unwrap();
    assert_eq!(log.snapshot(&id).await.unwrap(), Some(snapshot(1, 50)), "an older one does not replace a newer one");
    log.save_snapshot(&snapshot(2, 30)).await.unwrap();
    assert_eq!(log.snapshot(&id).await.unwrap(), Some(snapshot(2, 30)), "a new shape replaces the old whatever its version");
}

/// A new product's stream id and its first event, for tests of long
/// streams; `restocks` and `encode` make the rest.
fn long_product(sku: &str) -> (String, domain::product::ProductEvent) {
    use domain::product::{ProductAdded, ProductAggregate, ProductEvent};
    let product = Uuid::now_v7();
    let added = ProductEvent::Added(ProductAdded {
        product_id: product,
        sku: domain::Sku::parse(sku).unwrap(),
        name: "Long".into(),
        description: String::new(),
        category: "c".into(),
        price: domain::Money::new(100, domain::Currency::usd()),
        initial_stock: 0,
    });
    (domain::stream_id::<ProductAggregate>(product), added)
}

/// Restocks to `from`..=`to` units, one at a time.
fn restocks(from: u32, to: u32) -> Vec<domain::product::ProductEvent> {
    use domain::product::{ProductEvent, ProductRestocked};
    (from..=to).map(|n| ProductEvent::Restocked(ProductRestocked { quantity: 1, stock_after: n })).collect()
}

fn encode(events: &[domain::product::ProductEvent]) -> Vec<NewEvent> {
    NewEvent::encode_all(events, &Metadata::system("contract-test"))
}

/// Loading through snapshots gives exactly the state of a fold from the
/// start, whatever is stored beside the log.
async fn loading_through_snapshots_equals_folding_from_the_start(log: Arc<dyn EventLog>) {
    use domain::Aggregate;
    use domain::product::ProductAggregate;
    let (id, added) = long_product("SNAP-1");
    let mut history = vec![added];
    history.extend(restocks(1, 600));
    let events = encode(&history);
    log.append(vec![StreamWrite { stream_id: id.clone(), expected: ExpectedVersion::NoStream, events }]).await.unwrap();
    let full = eventlog::fold_stream::<ProductAggregate>(&*log, &id, |_| true).await.unwrap();

    let loaded = eventlog::load::<ProductAggregate>(&*log, &id, None).await.unwrap();
    assert_eq!((&loaded.state, loaded.version, loaded.position), (&full.state, full.version, full.position));
    let taken = log.snapshot(&id).await.unwrap().expect("a long fold stores a snapshot");
    assert_eq!((taken.snapshot_version, taken.version), (ProductAggregate::SNAPSHOT_VERSION, 600));

    // Onward from the snapshot: the events after it are folded in.
    let more = encode(&restocks(601, 603));
    log.append(vec![StreamWrite { stream_id: id.clone(), expected: ExpectedVersion::Exact(600), events: more }]).await.unwrap();
    let onward = eventlog::load::<ProductAggregate>(&*log, &id, None).await.unwrap();
    assert_eq!(onward.state.as_ref().unwrap().stock, 603);
    assert_eq!(onward.version, Some(603));

    // A snapshot of another shape, one that does not decode, or one the
    // log does not bear out (ahead of the stream, or at another position)
    // is ignored.
    let good = serde_json::to_value(&onward.state).unwrap();
    let shape = ProductAggregate::SNAPSHOT_VERSION;
    for (snapshot_version, version, position, state) in [
        (shape + 1, 603, onward.position, json!({"stock": 1})),
        (shape, 603, onward.position, json!("garbage")),
        (shape, 9999, onward.position, good.clone()),
        (shape, 603, onward.position + 1, good.clone()),
    ] {
        let odd = Snapshot { stream_id: id.clone(), snapshot_version, version, position, state };
        // Another shape first, so that `odd` replaces whatever is stored.
        log.save_snapshot(&Snapshot { snapshot_version: u32::MAX, ..odd.clone() }).await.unwrap();
        log.save_snapshot(&odd).await.unwrap();
        let loaded = eventlog::load::<ProductAggregate>(&*log, &id, None).await.unwrap();
        assert_eq!((loaded.state.as_ref().unwrap().stock, loaded.version), (603, Some(603)), "{odd:?}");
    }
}

async fn read_all_until(log: &dyn EventLog, count: usize) -> Vec<eventlog::RecordedEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all = log.read_all(0, usize::MAX).await.unwrap();
        if all.len() >= count || tokio::time::Instant::now() > deadline {
            assert_eq!(all.len(), count);
            return all;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A look into the past gives exactly the state of a fold up to that
/// point, starts from the nearest snapshot at or before it, leaves
/// snapshots on a long way, and stops at its budget.
async fn looking_into_the_past_equals_folding_up_to_that_point(log: Arc<dyn EventLog>) {
    use domain::product::ProductAggregate;
    use eventlog::{FoldError, Until, fold_until};
    let (id, added) = long_product("PAST-1");
    // Three appends some time apart, so that times fall between them.
    let mut first = vec![added];
    first.extend(restocks(1, 2000));
    for (expected, events) in [
        (ExpectedVersion::NoStream, first),
        (ExpectedVersion::Exact(2000), restocks(2001, 4000)),
        (ExpectedVersion::Exact(4000), restocks(4001, 10000)),
    ] {
        log.append(vec![StreamWrite { stream_id: id.clone(), expected, events: encode(&events) }]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let upto = |version: u64| {
        let (log, id) = (log.clone(), id.clone());
        async move { eventlog::fold_stream::<ProductAggregate>(&*log, &id, |e| e.stream_version <= version).await.unwrap() }
    };
    let fold = |until: Until, budget: u64| {
        let (log, id) = (log.clone(), id.clone());
        async move { fold_until::<ProductAggregate>(&*log, &id, until, budget).await }
    };

    // A budget too small: it stops, and leaves a snapshot where it stopped.
    let stopped = fold(Until::Version(3000), 1000).await;
    assert!(matches!(stopped, Err(FoldError::TooLong { budget: 1000, .. })), "{stopped:?}");
    assert_eq!(log.snapshot_at_most(&id, 3000).await.unwrap().map(|s| s.version), Some(999));
    assert_eq!(log.snapshot_at_most(&id, 998).await.unwrap(), None);
    // Asked again, it goes on from there; the long way leaves snapshots on
    // it, one per block of versions.
    let whole = fold(Until::Version(10000), eventlog::PAST_FOLD_BUDGET).await.unwrap();
    assert_eq!(whole.version, Some(10000));
    let block = eventlog::SNAPSHOT_BLOCK;
    for (at_most, nearest) in [(3000, 999), (999 + block, 999 + block), (9000, 999 + block), (10000, 999 + 2 * block)] {
        assert_eq!(log.snapshot_at_most(&id, at_most).await.unwrap().map(|s| s.version), Some(nearest), "at most {at_most}");
    }
    // From wherever it starts, the state is the fold up to that point.
    for version in [0, 1, 999, 1000, 2000, 3000, 4095, 4500, 5000, 9191, 10000, 12000] {
        let past = fold(Until::Version(version), eventlog::PAST_FOLD_BUDGET).await.unwrap();
        let expected = upto(version).await;
        assert_eq!((&past.state, past.version, past.position), (&expected.state, expected.version, expected.position), "at {version}");
    }
    // Loads keep the newest snapshot of each block, not every one.
    for n in 1..=3u32 {
        let more = encode(&restocks(10000 + n * 300 - 299, 10000 + n * 300));
        let expected = ExpectedVersion::Exact(u64::from(10000 + n * 300 - 300));
        log.append(vec![StreamWrite { stream_id: id.clone(), expected, events: more }]).await.unwrap();
        eventlog::load::<ProductAggregate>(&*log, &id, None).await.unwrap();
    }
    let newest = log.snapshot(&id).await.unwrap().map(|s| s.version);
    assert_eq!(newest, Some(10900));
    let before_it = log.snapshot_at_most(&id, 10899).await.unwrap().map(|s| s.version);
    assert_eq!(before_it, Some(999 + block), "the block's older snapshots are gone, the one of the block before stays");

    // By time: the events recorded by then.
    let all = log.read_stream(&id, 0, 20000).await.unwrap();
    for version in [0, 2000, 4000, 5000] {
        let time = all[version as usize].recorded_at;
        let past = fold(Until::Time(time), eventlog::PAST_FOLD_BUDGET).await.unwrap();
        let expected = eventlog::fold_stream::<ProductAggregate>(&*log, &id, |e| e.recorded_at <= time).await.unwrap();
        assert_eq!((&past.state, past.version), (&expected.state, expected.version), "by the time of {version}");
    }
    let before = all[0].recorded_at - chrono::Duration::seconds(1);
    let none = fold(Until::Time(before), eventlog::PAST_FOLD_BUDGET).await.unwrap();
    assert_eq!((none.state, none.version), (None, None), "before the stream began");
}

/// One test per contract function, each under the test attribute it
/// needs, plus the adapter's own attributes (an `ignore` without a server).
macro_rules! contract_tests {
    ($make:expr, [$($attr:meta),*];) => {};
    ($make:expr, [$($attr:meta),*]; $test:meta => $name:ident $(, $($rest:tt)*)?) => {
        #[$test]
        $(#[$attr])*
        async fn $name() {
            super::$name($make).await;
        }
        contract_tests!($make, [$($attr),*]; $($($rest)*)?);
    };
}

macro_rules! contract {
    ($adapter:ident, $make:expr $(, #[$attr:meta])?) => {
        mod $adapter {
            use super::*;

            contract_tests!(
                $make,
                [$($attr),*];
                tokio::test => appends_get_gapless_versions_and_increasing_positions,
                tokio::test => a_stale_expected_version_is_a_conflict_and_appends_nothing,
                tokio::test => a_multi_stream_append_is_all_or_nothing,
                tokio::test => bad_appends_are_refused,
                tokio::test => read_stream_pages_by_version,
                tokio::test => read_all_follows_the_global_order_from_a_position,
                tokio::test => a_subscription_catches_up_then_goes_live,
                tokio::test => an_append_under_a_receipt_happens_once,
                tokio::test(flavor = "multi_thread", worker_threads = 4) => racing_appends_under_one_receipt_append_once,
                tokio::test(flavor = "multi_thread", worker_threads = 4) => appends_in_flight_together_each_get_their_own_answer,
                tokio::test => snapshots_keep_the_newest_of_the_current_shape,
                tokio::test => loading_through_snapshots_equals_folding_from_the_start,
                tokio::test => looking_into_the_past_equals_folding_up_to_that_point,
                tokio::test(flavor = "multi_thread", worker_threads = 4) => concurrent_writers_and_a_tailing_subscriber
            );
        }
    };
}

contract!(in_memory, Arc::new(eventlog::InMemoryEventLog::new()) as Arc<dyn EventLog>);
contract!(postgres, Arc::new(eventlog::PgEventLog::new(eventlog::testing::fresh_event_log_database().await)) as Arc<dyn EventLog>);
// The shared reader in front of each adapter keeps every promise of the log.
contract!(shared_in_memory, Arc::new(eventlog::SharedTail::new(Arc::new(eventlog::InMemoryEventLog::new()))) as Arc<dyn EventLog>);
contract!(
    shared_postgres,
    Arc::new(eventlog::SharedTail::new(Arc::new(eventlog::PgEventLog::new(eventlog::testing::fresh_event_log_database().await))))
        as Arc<dyn EventLog>
);
// So does the vault in front of the log as `serve` runs it.
contract!(vaulted_in_memory, eventlog::vault::in_memory_log().0 as Arc<dyn EventLog>);
contract!(vaulted_postgres, eventlog::vault::postgres_log(&eventlog::testing::fresh_event_log_database().await).0 as Arc<dyn EventLog>);
// KurrentDB, where a server is given (none runs where this is developed):
// `cargo xtask test` runs these when KURRENTDB_URL is set. Each test has a
// log stream of its own.
contract!(kurrentdb, kurrentdb_log().await, #[ignore = "needs a KurrentDB server: set KURRENTDB_URL and run `cargo xtask test`"]);

async fn kurrentdb_log() -> Arc<dyn EventLog> {
    let url = std::env::var("KURRENTDB_URL").expect("KURRENTDB_URL is set for the KurrentDB contract tests");
    let stream = format!("storekeeper-log-{}", Uuid::now_v7().simple());
    Arc::new(kurrent::KurrentEventLog::connect(&url, &stream).await.expect("connect to KurrentDB"))
}
