//! Bad input and misuse: lease tables with foreign or malformed rows,
//! endpoints that are not Kinesis, records at the size limits. Each gets a
//! clear error or correct handling, never a panic or a hang. (Invalid
//! settings are unit-tested in src/config.rs; an unknown stream in
//! tests/consumer.rs.)

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::__test_support::{AttributeValue, Item};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{Consumer, ConsumerBuilder, Error, Payload, TransportKind};

fn builder(kinesis: &str, dynamodb: &str, stream: &str, app: &str) -> ConsumerBuilder<Payload> {
    common::consumer_builder_at(kinesis, dynamodb, stream, app)
}

fn emulator_builder(stream: &str, app: &str) -> ConsumerBuilder<Payload> {
    let e = common::emulators();
    builder(&e.kinesis_url, &e.dynamodb_url, stream, app)
}

/// What a consumer delivered: (shard, data).
type Delivered = Vec<(String, Vec<u8>)>;

/// Runs a consumer until `done` holds for what it delivered (or `timeout`),
/// then stops it; returns what it delivered as (shard, data).
fn consume(
    consumer: Consumer<Payload>,
    timeout: Duration,
    done: impl Fn(&[(String, Vec<u8>)]) -> bool,
) -> (kinesis_consumer::Result<()>, Delivered) {
    let stop = consumer.shutdown_handle();
    let got: Arc<Mutex<Delivered>> = Arc::default();
    let sink = got.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut sink = sink.lock().unwrap();
            for m in batch.messages() {
                sink.push((m.record().shard_id().to_owned(), m.value().to_vec()));
            }
            Ok(())
        })
    });
    let deadline = Instant::now() + timeout;
    while !done(&got.lock().unwrap()) && Instant::now() < deadline && !thread.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.shutdown();
    let result = thread.join().unwrap();
    let got = got.lock().unwrap().clone();
    (result, got)
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.to_owned())
}

fn row(pairs: &[(&str, AttributeValue)]) -> Item {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[test]
fn foreign_and_malformed_lease_rows_are_ignored_and_never_taken() {
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let k = common::kinesis();
    let shards = k.list_shards(&stream, None).unwrap();
    let (bad_shard, good_shard) = (&shards[0].shard_id, &shards[1].shard_id);
    let d = common::dynamodb();
    d.create_table(&app, "leaseKey").unwrap();
    d.wait_until_active(&app, Duration::from_secs(10)).unwrap();
    let rows = [
        // A real shard whose checkpoint is garbage: not a lease we can use.
        row(&[
            ("leaseKey", s(bad_shard)),
            ("leaseCounter", n("4")),
            ("checkpoint", s("not-a-sequence-number")),
        ]),
        // Another application's kind of row (KCL 3 keeps such rows).
        row(&[
            ("leaseKey", s("WorkerMetricStats-1")),
            ("entityType", s("WORKER_METRICS")),
            ("leaseCounter", n("1")),
        ]),
        // Counters that are not counters.
        row(&[
            ("leaseKey", s("shardId-bad-counter-1")),
            ("leaseCounter", s("7")),
        ]),
        row(&[
            ("leaseKey", s("shardId-bad-counter-2")),
            ("leaseCounter", n("-3")),
        ]),
        row(&[
            ("leaseKey", s("shardId-bad-counter-3")),
            ("leaseCounter", n("1.5")),
        ]),
        row(&[
            ("leaseKey", s("shardId-bad-counter-4")),
            ("leaseCounter", n("18446744073709551615")),
        ]),
        row(&[
            ("leaseKey", s("shardId-bad-counter-5")),
            ("leaseCounter", n("99999999999999999999999999")),
        ]),
        // Checkpoints of the wrong type or shape.
        row(&[
            ("leaseKey", s("shardId-bad-checkpoint-1")),
            ("leaseCounter", n("1")),
            ("checkpoint", n("12")),
        ]),
        row(&[
            ("leaseKey", s("shardId-bad-checkpoint-2")),
            ("leaseCounter", n("1")),
            ("checkpoint", s("-12")),
        ]),
        row(&[
            ("leaseKey", s("shardId-bad-checkpoint-3")),
            ("leaseCounter", n("1")),
            ("checkpoint", s("12")),
            ("checkpointSubSequenceNumber", s("x")),
        ]),
        // A well-formed lease of a shard this stream does not have.
        row(&[
            ("leaseKey", s("shardId-000000099999")),
            ("leaseCounter", n("0")),
            ("checkpoint", s("TRIM_HORIZON")),
        ]),
    ];
    for r in &rows {
        d.put_item(&app, r, None).unwrap();
    }
    let before: HashMap<String, Item> = d
        .scan(&app)
        .unwrap()
        .into_iter()
        .map(|i| (i["leaseKey"].as_s().unwrap().to_owned(), i))
        .collect();

    let entries: Vec<PutRecordsEntry> = (0..40)
        .map(|i| PutRecordsEntry {
            partition_key: format!("k{i}"),
            explicit_hash_key: None,
            data: format!("r-{i}").into_bytes(),
        })
        .collect();
    let put = k.put_records(&stream, &entries).unwrap();
    let on_good = put
        .iter()
        .filter(|r| r.as_ref().unwrap().shard_id == *good_shard)
        .count();
    assert!(on_good > 0 && on_good < 40, "records on both shards");
    let consumer = emulator_builder(&stream, &app).build().unwrap();
    let (result, got) = consume(consumer, Duration::from_secs(20), |g| g.len() >= on_good);
    std::thread::sleep(Duration::from_millis(300));
    result.expect("the consumer runs despite the bad rows");
    assert_eq!(got.len(), on_good, "the good shard is read once");
    assert!(got.iter().all(|(shard, _)| shard == good_shard));

    // Every bad row is exactly as it was: not taken, not renewed, not deleted.
    let after: HashMap<String, Item> = d
        .scan(&app)
        .unwrap()
        .into_iter()
        .map(|i| (i["leaseKey"].as_s().unwrap().to_owned(), i))
        .collect();
    for (key, item) in &before {
        assert_eq!(after.get(key), Some(item), "row {key} was touched");
    }
    println!(
        "BAD INPUT | lease table with {} foreign or malformed rows | foreign_and_malformed_lease_rows_are_ignored_and_never_taken | put 40 | delivered {} of the {on_good} on the good shard | rows untouched",
        rows.len(),
        got.len()
    );
}

#[test]
fn a_stream_deleted_under_a_running_consumer_stops_it_with_the_services_words() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let consumer = emulator_builder(&stream, &app)
        .shard_sync_interval(Duration::from_secs(1))
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let thread = std::thread::spawn(move || consumer.run(|_| Ok(())));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!thread.is_finished(), "the consumer runs");
    common::kinesis().delete_stream(&stream).unwrap();
    let deleted = Instant::now();
    while !thread.is_finished() && deleted.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = thread.is_finished();
    stop.shutdown();
    let result = thread.join().unwrap();
    assert!(finished, "still running 30 s after its stream was deleted");
    let error = result
        .expect_err("a deleted stream is an error")
        .to_string();
    // ListShards finds it gone, or a read lands while the emulator still
    // shows it DELETING: either way `run` stops with the service's words.
    assert!(
        error.contains("ResourceNotFound") || error.contains("ResourceInUse"),
        "{error}"
    );
    println!(
        "BAD INPUT | stream deleted under a running consumer | run returned {:.1} s later: {error}",
        deleted.elapsed().as_secs_f64()
    );
}

#[test]
fn an_endpoint_that_is_not_kinesis_gives_a_clear_error() {
    let proxy = Proxy::for_emulators();
    let cases: [(&str, Fault, &str); 4] = [
        (
            "HTML 200",
            Fault::Reply {
                status: 200,
                content_type: "text/html",
                body: "<html><body>Welcome to nginx!</body></html>".into(),
            },
            "<html>",
        ),
        ("HTML 404", Fault::html(404), "HTTP 404"),
        ("empty 200", Fault::Body(""), "DescribeStreamSummary"),
        (
            "JSON of another API",
            Fault::Body(r#"{"ok":true}"#),
            "StreamDescriptionSummary",
        ),
    ];
    for (what, fault, expected) in cases {
        proxy.clear();
        proxy.add("*", Trigger::Always, fault);
        let consumer = builder(proxy.url(), proxy.url(), "some-stream", "some-app")
            .build()
            .unwrap();
        let started = Instant::now();
        let err = consumer.run(|_b| Ok(())).expect_err(what);
        let shown = err.to_string();
        println!(
            "BAD INPUT | endpoint answering {what} | an_endpoint_that_is_not_kinesis_gives_a_clear_error | error after {:.1} s: {shown}",
            started.elapsed().as_secs_f64()
        );
        assert!(shown.contains(expected), "{what}: {shown}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: too slow"
        );
    }
    proxy.clear();
}

/// Startup follows one rule for every service: what cannot pass (nothing
/// listening at a configured endpoint) fails at once, naming the endpoint;
/// what may pass (an endpoint that accepts and never answers) is waited
/// out, and `shutdown()` ends the wait within the request in flight.
#[test]
fn startup_fails_fast_on_what_cannot_pass_and_stops_promptly_on_what_may() {
    let e = common::emulators();
    let stream = common::create_stream(1);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for (service, kinesis, dynamodb) in [
        ("Kinesis", refused_url.as_str(), e.dynamodb_url.as_str()),
        ("DynamoDB", e.kinesis_url.as_str(), refused_url.as_str()),
    ] {
        let consumer = builder(kinesis, dynamodb, &stream, &common::unique_name("app"))
            .build()
            .unwrap();
        let started = Instant::now();
        let err = consumer.run(|_b| Ok(())).unwrap_err();
        let shown = err.to_string();
        println!(
            "BAD INPUT | nothing listening at the {service} endpoint | error after {:.1} s: {shown}",
            started.elapsed().as_secs_f64()
        );
        assert!(
            matches!(
                &err,
                Error::Transport {
                    kind: TransportKind::ConnectionRefused,
                    ..
                }
            ),
            "{service}: {err:?}"
        );
        assert!(
            shown.contains(&refused_url),
            "{service}: names the URL: {shown}"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "{service}: keeps the cause"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{service}: a refused connection cannot pass: fail at once"
        );
    }
    // An endpoint that accepts and never answers, for each service.
    let proxy = Proxy::for_emulators();
    proxy.add("*", Trigger::Always, Fault::Delay(Duration::from_secs(20)));
    for (service, kinesis, dynamodb) in [
        ("Kinesis", proxy.url(), e.dynamodb_url.as_str()),
        ("DynamoDB", e.kinesis_url.as_str(), proxy.url()),
    ] {
        let consumer = builder(kinesis, dynamodb, &stream, &common::unique_name("app"))
            .read_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let stop = consumer.shutdown_handle();
        let thread = std::thread::spawn(move || consumer.run(|_b| Ok(())));
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !thread.is_finished(),
            "{service}: a timeout may pass: waited out"
        );
        stop.shutdown();
        let asked = Instant::now();
        while !thread.is_finished() && asked.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = asked.elapsed();
        let result = thread.join().unwrap();
        println!(
            "BAD INPUT | {service} endpoint that never answers (read timeout 0.3 s) | run returned {:.2} s after shutdown(): {result:?}",
            took.as_secs_f64()
        );
        assert!(
            result.is_ok(),
            "{service}: a requested stop is not an error: {result:?}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{service}: within the request in flight, not its retries: {took:?}"
        );
    }
}

#[test]
fn records_of_one_mebibyte_and_empty_records_are_delivered_intact() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let k = common::kinesis();
    const MIB: usize = 1024 * 1024;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    for i in 0..4u8 {
        let key = format!("big-{i}");
        let data: Vec<u8> = (0..MIB - key.len()).map(|j| (j as u8) ^ i).collect();
        k.put_record(&stream, &key, None, &data).unwrap();
        sent.push(data);
        k.put_record(&stream, "empty", None, b"").unwrap();
        sent.push(Vec::new());
    }
    // One byte over the limit: AWS refuses it; kinesis-local may not. Either way
    // nothing breaks.
    let too_big = vec![7u8; MIB];
    let refused = k.put_record(&stream, "x", None, &too_big);
    println!(
        "BAD INPUT | put of 1 MiB + 1 byte (data + key) | records_of_one_mebibyte_and_empty_records_are_delivered_intact | {}",
        match &refused {
            Ok(_) => "accepted by kinesis-local (AWS refuses it)".to_owned(),
            Err(e) => format!("refused: {e}"),
        }
    );

    // A buffer smaller than one record: each read is admitted alone.
    let consumer = emulator_builder(&stream, &app)
        .buffer_bytes(256 * 1024)
        .build()
        .unwrap();
    let expected = sent.len() + usize::from(refused.is_ok());
    let (result, got) = consume(consumer, Duration::from_secs(30), |g| g.len() >= expected);
    result.unwrap();
    assert_eq!(got.len(), expected, "every record once");
    let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d).collect();
    assert_eq!(&got[..sent.len()], &sent[..], "data intact and in order");
    println!(
        "BAD INPUT | 4 records of 1 MiB (data + key) and 4 empty records | records_of_one_mebibyte_and_empty_records_are_delivered_intact | put {} | delivered {} | lost 0",
        expected,
        got.len()
    );
    let sizes: HashSet<usize> = got.iter().map(Vec::len).collect();
    assert!(sizes.contains(&0));
}
