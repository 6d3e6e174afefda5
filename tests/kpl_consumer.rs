//! KPL aggregates through the emulator and the consumer: round trips of
//! every size, invalid aggregates delivered whole, and restarts in the
//! middle of an aggregate.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinesis_consumer::__test_support::{AttributeValue, Expression};
use kinesis_consumer::aws::kinesis::{KinesisClient, PutRecordsEntry};
use kinesis_consumer::kpl::{AggregatedRecord, Aggregator};
use kinesis_consumer::{Batch, ConsumerBuilder, Record};

/// What the batch handler saw of one user record.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    seq: String,
    sub: u64,
    aggregated: bool,
    pk: String,
    ehk: Option<String>,
    data: Vec<u8>,
}

fn builder(stream: &str, app: &str) -> ConsumerBuilder<(bool, Vec<u8>)> {
    common::consumer_builder(stream, app)
        .message_handler(|r: &Record| (r.is_aggregated(), r.data().to_vec()))
}

/// Runs a consumer until `expected` user records arrived and a little longer
/// (to catch extras), then stops it gracefully.
fn consume(stream: &str, app: &str, expected: usize) -> Vec<Seen> {
    let consumer = builder(stream, app).build().unwrap();
    let stop = consumer.shutdown_handle();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = seen.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch: Batch<(bool, Vec<u8>)>| {
            let mut sink = sink.lock().unwrap();
            for m in batch.messages() {
                sink.push(Seen {
                    seq: m.record().sequence_number().to_string(),
                    sub: m.record().sub_sequence_number(),
                    aggregated: m.value().0,
                    pk: m.record().partition_key().to_owned(),
                    ehk: m.record().explicit_hash_key().map(str::to_owned),
                    data: m.value().1.clone(),
                });
            }
            Ok(())
        })
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < expected {
        assert!(!thread.is_finished(), "the consumer stopped early");
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {expected} records",
            seen.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

fn put(k: &KinesisClient, stream: &str, aggregate: AggregatedRecord) {
    let entry = PutRecordsEntry {
        partition_key: aggregate.partition_key,
        explicit_hash_key: aggregate.explicit_hash_key,
        data: aggregate.data,
    };
    for r in k.put_records(stream, &[entry]).unwrap() {
        r.unwrap();
    }
}

/// User records as (partition key, explicit hash key, data).
type UserRecord = (String, Option<String>, Vec<u8>);

#[test]
fn aggregates_of_every_size_round_trip_with_their_keys() {
    let k = common::kinesis();
    let stream = common::create_stream(1);
    let mut expected: Vec<UserRecord> = Vec::new();
    let mut aggregator = Aggregator::new();
    let mut send = |records: Vec<UserRecord>, expected: &mut Vec<UserRecord>| {
        for (pk, ehk, data) in records {
            if let Some(full) = aggregator.add(&pk, ehk.as_deref(), &data).unwrap() {
                put(&k, &stream, full);
            }
            expected.push((pk, ehk, data));
        }
        put(&k, &stream, aggregator.flush().unwrap());
    };
    // One empty record; many small ones with shared and explicit keys;
    // records that fill an aggregate to nearly 1 MiB.
    send(vec![("empty".into(), None, Vec::new())], &mut expected);
    send(
        (0..300)
            .map(|i| {
                (
                    format!("key-{}", i % 7),
                    (i % 5 == 0).then(|| format!("{}", i * 1_000_003)),
                    format!("small-{i}").into_bytes(),
                )
            })
            .collect(),
        &mut expected,
    );
    send(
        (0..4)
            .map(|i| (format!("big-{i}"), None, vec![b'a' + i as u8; 250_000]))
            .collect(),
        &mut expected,
    );
    let seen = consume(&stream, &common::unique_name("app"), expected.len());
    let got: Vec<UserRecord> = seen
        .iter()
        .map(|s| (s.pk.clone(), s.ehk.clone(), s.data.clone()))
        .collect();
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "user records differ from what was aggregated"
    );
    assert!(seen.iter().all(|s| s.aggregated));
    // Sub-sequence numbers count from 0 within each aggregate.
    let mut next_sub: HashMap<&str, u64> = HashMap::new();
    for s in &seen {
        let n = next_sub.entry(&s.seq).or_insert(0);
        assert_eq!(s.sub, *n, "record {} sub-sequence", s.seq);
        *n += 1;
    }
}

#[test]
fn invalid_aggregates_are_delivered_whole() {
    let k = common::kinesis();
    let stream = common::create_stream(1);
    let mut aggregator = Aggregator::new();
    aggregator.add("pk", None, b"one").unwrap();
    aggregator.add("pk", None, b"two").unwrap();
    let mut bad = aggregator.flush().unwrap();
    let last = bad.data.len() - 1;
    bad.data[last] ^= 0xff; // break the MD5 digest
    let broken = bad.data.clone();
    put(&k, &stream, bad);
    let truncated = [0xF3, 0x89, 0x9A, 0xC2, 0x0A, 0x05].to_vec();
    let entry = PutRecordsEntry {
        partition_key: "t".into(),
        explicit_hash_key: None,
        data: truncated.clone(),
    };
    k.put_records(&stream, &[entry])
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    let seen = consume(&stream, &common::unique_name("app"), 2);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].aggregated, &seen[0].data, seen[0].sub),
        (false, &broken, 0)
    );
    assert_eq!(
        (seen[1].aggregated, &seen[1].data, seen[1].pk.as_str()),
        (false, &truncated, "t")
    );
}

#[test]
fn restart_in_the_middle_of_an_aggregate_resumes_with_the_next_user_record() {
    let k = common::kinesis();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let mut aggregator = Aggregator::new();
    for i in 0..10 {
        assert!(
            aggregator
                .add("pk", None, format!("first-{i}").as_bytes())
                .unwrap()
                .is_none()
        );
    }
    put(&k, &stream, aggregator.flush().unwrap());
    let seen = consume(&stream, &app, 10);
    assert_eq!(seen.len(), 10);

    // Move the checkpoint back into the aggregate, after user record 3, as a
    // consumer that stopped there (or a KCL one) would have left it.
    let d = common::dynamodb();
    let shard = common::lease_rows(&app).unwrap()[0]["leaseKey"]
        .as_s()
        .unwrap()
        .to_owned();
    let key = HashMap::from([("leaseKey".to_owned(), AttributeValue::S(shard))]);
    let update = Expression::new("SET checkpoint = :seq, checkpointSubSequenceNumber = :sub")
        .value(":seq", AttributeValue::S(seen[0].seq.clone()))
        .value(":sub", AttributeValue::N("3".into()));
    d.update_item(&app, &key, &update, None).unwrap();

    for i in 0..3 {
        aggregator
            .add("pk", None, format!("second-{i}").as_bytes())
            .unwrap();
    }
    put(&k, &stream, aggregator.flush().unwrap());
    let resumed = consume(&stream, &app, 9);
    let data: Vec<String> = resumed
        .iter()
        .map(|s| String::from_utf8(s.data.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (4..10)
        .map(|i| format!("first-{i}"))
        .chain((0..3).map(|i| format!("second-{i}")))
        .collect();
    assert_eq!(data, expected, "no user record lost or repeated");
    assert_eq!(resumed[0].sub, 4);

    // And a restart at the end of the aggregate repeats nothing.
    assert!(consume_nothing(&stream, &app));
}

/// Runs a consumer for a moment and reports whether it delivered nothing.
fn consume_nothing(stream: &str, app: &str) -> bool {
    let consumer = builder(stream, app).build().unwrap();
    let stop = consumer.shutdown_handle();
    let count = Arc::new(Mutex::new(0));
    let sink = count.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |b: Batch<(bool, Vec<u8>)>| {
            *sink.lock().unwrap() += b.len();
            Ok(())
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    *count.lock().unwrap() == 0
}
