//! Enhanced fan-out against kinesis-local, on its cleartext port (h2c) and
//! its TLS port (h2 via ALPN, its self-signed certificate pinned by the
//! test): register a consumer, wait for ACTIVE, subscribe, receive records
//! in order with continuation sequence numbers, resubscribe after the
//! continuation without duplicates, and see ChildShards after a split.

mod common;

use std::time::{Duration, Instant};

use kinesis_consumer::aws::fan_out::{Polled, StreamConsumer, Subscription};
use kinesis_consumer::aws::kinesis::{IteratorPosition, KinesisClient};
use kinesis_consumer::{Error, SequenceNumber};

fn client_at(url: &str) -> KinesisClient {
    let certificate = common::pinned_tls::kinesis_local_certificate(&common::emulators_dir());
    KinesisClient::new(
        &common::config(url).fan_out_tls(common::pinned_tls::trusting_only(certificate)),
    )
    .unwrap()
}

/// A stream with `shards` shards and an ACTIVE consumer on it.
fn stream_with_consumer(shards: u32) -> (String, String, StreamConsumer) {
    let stream = common::create_stream(shards);
    let k = common::kinesis();
    let arn = k.describe_stream_summary(&stream).unwrap().stream_arn;
    let consumer = k
        .ensure_stream_consumer(&arn, "fan-out-test", Duration::from_secs(30))
        .unwrap();
    assert_eq!(consumer.consumer_status, "ACTIVE");
    (stream, arn, consumer)
}

/// Reads events until `count` records arrived (or 20 s passed): the data
/// of the records, and every event's continuation sequence number.
fn collect(sub: &mut Subscription, count: usize) -> (Vec<Vec<u8>>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut data, mut continuations) = (Vec::new(), Vec::new());
    let mut last_seq = None;
    while data.len() < count && Instant::now() < deadline {
        match sub.poll(Duration::from_millis(500)).unwrap() {
            Polled::Event(event) => {
                for r in &event.records {
                    assert_eq!(r.shard_id(), sub.shard_id());
                    if let Some(prev) = &last_seq {
                        assert!(r.sequence_number() > prev, "records in order");
                    }
                    last_seq = Some(r.sequence_number().clone());
                    data.push(r.data().to_vec());
                }
                let c = event.continuation_sequence_number.expect("a continuation");
                if let Some(last) = &last_seq {
                    assert!(&c >= last, "continuation {c} before record {last}");
                }
                continuations.push(c.as_str().to_owned());
            }
            Polled::Idle => {}
            Polled::Ended => panic!("the subscription ended early"),
        }
    }
    (data, continuations)
}

/// Subscribes to shard 0, again and again while the service still holds
/// the previous subscription (`ResourceInUseException`, as an exception
/// event on kinesis-local) for up to 60 s; the subscription and the
/// number of attempts it took.
fn subscribe_when_free(
    fan_out: &KinesisClient,
    consumer_arn: &str,
    position: &IteratorPosition,
) -> (Subscription, u32) {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let attempt = fan_out
            .subscribe_to_shard(consumer_arn, "shardId-000000000000", position)
            .and_then(|mut sub| {
                // The refusal comes as the first message, within a second.
                let first = sub.poll(Duration::from_secs(3))?;
                Ok((sub, first))
            });
        match attempt {
            Ok((sub, Polled::Idle)) => return (sub, attempts),
            Ok((sub, Polled::Event(e))) if e.records.is_empty() => return (sub, attempts),
            Ok((_, other)) => {
                panic!("a record before any was put after the continuation: {other:?}")
            }
            Err(e) if e.code() == Some("ResourceInUseException") => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "still in use after 60 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("resubscribe: {e}"),
        }
    }
}

fn put(k: &KinesisClient, stream: &str, range: std::ops::Range<u32>) {
    for i in range {
        k.put_record(stream, "key", None, format!("record-{i}").as_bytes())
            .unwrap();
    }
}

fn subscribe_receive_and_resume(url: &str) {
    let (stream, arn, consumer) = stream_with_consumer(1);
    let k = common::kinesis();
    let listed = k.list_stream_consumers(&arn).unwrap();
    assert!(
        listed
            .iter()
            .any(|c| c.consumer_arn == consumer.consumer_arn)
    );
    let fan_out = client_at(url);
    put(&k, &stream, 0..10);
    let mut sub = fan_out
        .subscribe_to_shard(
            &consumer.consumer_arn,
            "shardId-000000000000",
            &IteratorPosition::TrimHorizon,
        )
        .unwrap();
    let (first, _) = collect(&mut sub, 5);
    put(&k, &stream, 10..20);
    let (rest, continuations) = collect(&mut sub, 20 - first.len());
    let all: Vec<Vec<u8>> = first.into_iter().chain(rest).collect();
    let expected: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("record-{i}").into_bytes())
        .collect();
    assert_eq!(all, expected);
    assert!(!continuations.is_empty());
    let resume = sub.continuation_sequence_number().unwrap().clone();
    drop(sub);

    // After the continuation: only what is put from now on, no duplicate.
    let (mut again, attempts) = subscribe_when_free(
        &fan_out,
        &consumer.consumer_arn,
        &IteratorPosition::AfterSequenceNumber(resume),
    );
    println!("FANOUT | resubscribe after dropping a subscription | accepted at attempt {attempts}");
    put(&k, &stream, 20..23);
    let (resumed, _) = collect(&mut again, 3);
    let expected: Vec<Vec<u8>> = (20..23)
        .map(|i| format!("record-{i}").into_bytes())
        .collect();
    assert_eq!(resumed, expected);
    drop(again);

    k.deregister_stream_consumer(&consumer.consumer_arn)
        .unwrap();
    let gone = Instant::now() + Duration::from_secs(10);
    while k
        .list_stream_consumers(&arn)
        .unwrap()
        .iter()
        .any(|c| c.consumer_arn == consumer.consumer_arn && c.consumer_status == "ACTIVE")
    {
        assert!(Instant::now() < gone, "the consumer was not deregistered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn subscribe_over_h2c_receives_records_in_order_and_resumes() {
    subscribe_receive_and_resume(&common::emulators().kinesis_url);
}

#[test]
fn subscribe_over_tls_with_alpn_h2_receives_records_in_order_and_resumes() {
    subscribe_receive_and_resume(&common::emulators().kinesis_tls_url);
}

#[test]
fn tls_without_trusting_the_emulator_certificate_is_refused() {
    let (_stream, _arn, consumer) = stream_with_consumer(1);
    let plain = KinesisClient::new(&common::config(&common::emulators().kinesis_tls_url)).unwrap();
    let err = plain
        .subscribe_to_shard(
            &consumer.consumer_arn,
            "shardId-000000000000",
            &IteratorPosition::Latest,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// kinesis-local never fills ChildShards in a SubscribeToShardEvent (its
/// encoder always writes null; the scripted server in
/// src/aws/fan_out_tests.rs covers ChildShards). Here: after a split, the
/// parent's subscription ends with no record past the split, and a child
/// shard's subscription gets the records put to its hash range.
#[test]
fn after_a_split_the_parent_stops_and_a_child_subscription_reads() {
    let (stream, _arn, consumer) = stream_with_consumer(1);
    let k = common::kinesis();
    let fan_out = client_at(&common::emulators().kinesis_url);
    put(&k, &stream, 0..3);
    let mut sub = fan_out
        .subscribe_to_shard(
            &consumer.consumer_arn,
            "shardId-000000000000",
            &IteratorPosition::TrimHorizon,
        )
        .unwrap();
    let (before, _) = collect(&mut sub, 3);
    assert_eq!(before.len(), 3);
    let parent = common::split_first_shard(&stream);
    let child = k
        .list_shards(&stream, None)
        .unwrap()
        .into_iter()
        .find(|s| s.parent_shard_id.as_deref() == Some(parent.shard_id.as_str()))
        .unwrap();
    let mut child_sub = fan_out
        .subscribe_to_shard(
            &consumer.consumer_arn,
            &child.shard_id,
            &IteratorPosition::TrimHorizon,
        )
        .unwrap();
    for i in 0..3 {
        k.put_record(
            &stream,
            "key",
            Some(&child.starting_hash_key),
            format!("child-{i}").as_bytes(),
        )
        .unwrap();
    }
    let (in_child, _) = collect(&mut child_sub, 3);
    let expected: Vec<Vec<u8>> = (0..3).map(|i| format!("child-{i}").into_bytes()).collect();
    assert_eq!(in_child, expected);
    // The parent delivered nothing more.
    let quiet = Instant::now() + Duration::from_secs(2);
    while Instant::now() < quiet {
        match sub.poll(Duration::from_millis(200)).unwrap() {
            Polled::Event(e) => assert!(e.records.is_empty(), "a record in the closed parent"),
            Polled::Idle | Polled::Ended => {}
        }
    }
}

/// Figures for the choice of one HTTP/2 connection per subscription (see
/// src/aws/fan_out.rs): what a subscription costs to open, h2c and TLS,
/// and what of it a shared connection would save (TCP connect + TLS
/// handshake). Prints figures; asserts only that everything worked.
#[test]
fn measure_subscription_setup() {
    use std::net::TcpStream;
    use std::sync::Arc;

    use kinesis_consumer::aws::rustls;

    const SHARDS: u32 = 10;
    let (_stream, _arn, consumer) = stream_with_consumer(SHARDS);
    let e = common::emulators();
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    for (label, url) in [("h2c", &e.kinesis_url), ("TLS", &e.kinesis_tls_url)] {
        let fan_out = client_at(url);
        let mut times = Vec::new();
        let mut open = Vec::new();
        for shard in 0..SHARDS {
            let started = Instant::now();
            let sub = fan_out
                .subscribe_to_shard(
                    &consumer.consumer_arn,
                    &format!("shardId-{shard:012}"),
                    &IteratorPosition::Latest,
                )
                .unwrap();
            times.push(started.elapsed());
            open.push(sub);
        }
        assert_eq!(open.len(), SHARDS as usize);
        println!(
            "FANOUT | subscribe_to_shard over {label} (new connection, to response headers) | median {:?}, max {:?} over {SHARDS} shards",
            median(times.clone()),
            times.iter().max().unwrap()
        );
        // Let the emulator forget these subscriptions before the next run.
        drop(open);
        std::thread::sleep(Duration::from_secs(1));
    }
    // Put -> event latency on one subscription (h2c), one record at a time.
    let (stream, _arn, consumer) = stream_with_consumer(1);
    let k = common::kinesis();
    let fan_out = client_at(&e.kinesis_url);
    let mut sub = fan_out
        .subscribe_to_shard(
            &consumer.consumer_arn,
            "shardId-000000000000",
            &IteratorPosition::Latest,
        )
        .unwrap();
    let mut latencies = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        put(&k, &stream, i..i + 1);
        let (got, _) = collect(&mut sub, 1);
        assert_eq!(got, [format!("record-{i}").into_bytes()]);
        latencies.push(started.elapsed());
    }
    let max = *latencies.iter().max().unwrap();
    println!(
        "FANOUT | put -> SubscribeToShardEvent on kinesis-local (h2c, debug build) | median {:?}, max {max:?} over 20 records",
        median(latencies)
    );
    drop(sub);
    // The part a shared connection would save: TCP connect + TLS handshake.
    let certificate = common::pinned_tls::kinesis_local_certificate(&common::emulators_dir());
    let mut config = (*common::pinned_tls::trusting_only(certificate)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let address = e.kinesis_tls_url.trim_start_matches("https://").to_owned();
    let mut handshakes = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let mut socket = TcpStream::connect(&address).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut session = rustls::ClientConnection::new(config.clone(), name).unwrap();
        while session.is_handshaking() {
            session.complete_io(&mut socket).unwrap();
        }
        handshakes.push(started.elapsed());
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    }
    println!(
        "FANOUT | TCP connect + TLS handshake (ALPN h2) to kinesis-local | median {:?} over 20",
        median(handshakes)
    );
}

#[test]
fn the_leases_example_deregisters_a_consumer_on_request() {
    let (stream, arn, consumer) = stream_with_consumer(1);
    let e = common::emulators();
    let out = std::process::Command::new(common::example_binary("leases"))
        .args(["--stream", &stream, "--deregister-consumer", "fan-out-test"])
        .env("AWS_ENDPOINT_URL_KINESIS", &e.kinesis_url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&consumer.consumer_arn), "{stdout}");
    let k = common::kinesis();
    let gone = Instant::now() + Duration::from_secs(10);
    while k
        .list_stream_consumers(&arn)
        .unwrap()
        .iter()
        .any(|c| c.consumer_arn == consumer.consumer_arn && c.consumer_status == "ACTIVE")
    {
        assert!(Instant::now() < gone, "the consumer is still ACTIVE");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Asking again names what is missing.
    let again = std::process::Command::new(common::example_binary("leases"))
        .args([
            "--stream",
            &stream,
            "--deregister-consumer",
            "no-such-consumer",
        ])
        .env("AWS_ENDPOINT_URL_KINESIS", &e.kinesis_url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("ResourceNotFoundException"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A record the consumer handed on: shard, sequence number, data.
type Seen = (String, SequenceNumber, Vec<u8>);

/// The consumer reading through enhanced fan-out (h2c): every record once,
/// in order per shard, checkpointed so that a restart repeats nothing, and
/// `SubscribeToShard` metrics recorded. (scripts/test.sh also runs the
/// consumer, scale-out and processing tests with
/// `KINESIS_TEST_RETRIEVAL=fan-out`.)
#[test]
fn a_consumer_reads_through_enhanced_fan_out_and_resumes_after_its_checkpoint() {
    use std::sync::{Arc, Mutex};

    let stream = common::create_stream(2);
    let app = common::unique_name("efo-consumer");
    let k = common::kinesis();
    put(&k, &stream, 0..20);
    let run = |expected: usize| {
        let consumer = common::consumer_builder(&stream, &app)
            .enhanced_fan_out(&app)
            .metrics_level(kinesis_consumer::MetricsLevel::Summary)
            .publish_metrics(false)
            .build()
            .unwrap();
        let (stop, metrics) = (consumer.shutdown_handle(), consumer.metrics());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let sink = seen.clone();
        let thread = std::thread::spawn(move || {
            consumer.run(move |batch| {
                let mut seen = sink.lock().unwrap();
                for m in batch.messages() {
                    let r = m.record();
                    let seq = r.sequence_number().clone();
                    seen.push((r.shard_id().to_owned(), seq, r.data().to_vec()));
                }
                Ok(())
            })
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().len() < expected {
            assert!(
                Instant::now() < deadline,
                "timed out: {:?}",
                seen.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Long enough for a duplicate to show up.
        std::thread::sleep(Duration::from_millis(500));
        stop.shutdown();
        thread.join().unwrap().unwrap();
        let subscribed: f64 = metrics
            .snapshot()
            .iter()
            .filter(|s| s.name == "SubscribeToShard.Success")
            .map(|s| s.statistics.sum)
            .sum();
        assert!(subscribed >= 2.0, "one subscription per shard at least");
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    };
    let first = run(20);
    assert_eq!(first.len(), 20, "every record once");
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let seqs: Vec<&SequenceNumber> = first
            .iter()
            .filter(|s| s.0 == shard)
            .map(|s| &s.1)
            .collect();
        assert!(seqs.is_sorted(), "in order in {shard}");
    }
    put(&k, &stream, 20..30);
    let second = run(10);
    assert_eq!(
        second.len(),
        10,
        "only the records put after the checkpoint"
    );
}
