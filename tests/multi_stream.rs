//! Several streams in one consumer, on one lease table in the KCL 3's
//! multi-stream layout, on the emulators: two workers read three streams
//! (one resharded mid-run), a KCL 3 table is continued from, and a table
//! in the other layout is refused.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinesis_consumer::__test_support::AttributeValue;
use kinesis_consumer::{Consumer, Payload, StreamIdentifier};

/// What the handlers saw: (worker, lease key, data), in delivery order.
type Log = Arc<Mutex<Vec<(String, String, String)>>>;

fn multi_builder(
    app: &str,
    streams: &[String],
    worker: &str,
) -> kinesis_consumer::ConsumerBuilder<Payload> {
    // The single-stream builder's settings, then the list in its place.
    let e = common::emulators();
    common::init_log();
    let builder = Consumer::builder()
        .app_name(app)
        .streams(streams.iter().map(String::as_str))
        .region("us-east-1")
        .endpoint_url(&e.kinesis_url)
        .dynamodb_endpoint_url(&e.dynamodb_url)
        .cloudwatch_endpoint_url("http://127.0.0.1:9")
        .credentials(kinesis_consumer::aws::credentials::Credentials::new(
            "AKIDTEST", "secret",
        ))
        .initial_position(kinesis_consumer::InitialPosition::TrimHorizon)
        .batch_interval(Duration::from_millis(200))
        .idle_time_between_reads(Duration::from_millis(100))
        .failover_time(Duration::from_secs(3))
        .shard_sync_interval(Duration::from_secs(2))
        .worker_id(worker);
    match common::fan_out() {
        true => builder.enhanced_fan_out(app),
        false => builder,
    }
}

/// Runs a consumer on its own thread, logging what it is handed.
fn spawn(
    builder: kinesis_consumer::ConsumerBuilder<Payload>,
    worker: &str,
    log: &Log,
) -> (
    kinesis_consumer::ShutdownHandle,
    std::thread::JoinHandle<kinesis_consumer::Result<()>>,
) {
    spawn_consumer(builder.build().unwrap(), worker, log)
}

/// Runs a built consumer on its own thread, logging what it is handed.
fn spawn_consumer(
    consumer: Consumer<Payload>,
    worker: &str,
    log: &Log,
) -> (
    kinesis_consumer::ShutdownHandle,
    std::thread::JoinHandle<kinesis_consumer::Result<()>>,
) {
    let stop = consumer.shutdown_handle();
    let (log, worker) = (log.clone(), worker.to_owned());
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut log = log.lock().unwrap();
            for shard in batch.shards() {
                let stream = shard
                    .stream()
                    .expect("a multi-stream batch names its stream");
                for m in shard.messages() {
                    let record = m.record();
                    assert_eq!(record.stream().as_ref(), Some(&stream));
                    assert_eq!(
                        stream.lease_key(record.kinesis_shard_id()),
                        record.shard_id()
                    );
                    let data = String::from_utf8_lossy(record.data()).into_owned();
                    log.push((worker.clone(), record.shard_id().to_owned(), data));
                }
            }
            Ok(())
        })
    });
    (stop, thread)
}

/// Waits until every record in `expected` was delivered.
fn wait_for_all(log: &Log, expected: &HashSet<String>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen: HashSet<String> = log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, d)| d.clone())
            .collect();
        let missing: Vec<&String> = expected.difference(&seen).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} records never delivered, such as {:?}",
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The number after the last `-` of a produced record's data.
fn number(data: &str) -> u64 {
    data.rsplit('-').next().unwrap().parse().unwrap()
}

#[test]
fn two_workers_read_three_streams_one_resharded_every_record_once_in_order() {
    let streams: Vec<String> = (0..3).map(|_| common::create_stream(2)).collect();
    let app = common::unique_name("multi");
    let log: Log = Arc::default();
    let producers: Vec<_> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| common::produce(s, &format!("s{i}")))
        .collect();
    let (stop_a, a) = spawn(multi_builder(&app, &streams, "worker-a"), "worker-a", &log);
    let (stop_b, b) = spawn(multi_builder(&app, &streams, "worker-b"), "worker-b", &log);
    std::thread::sleep(Duration::from_secs(4));
    let split = common::split_first_shard(&streams[0]);
    std::thread::sleep(Duration::from_secs(4));
    let put: HashSet<String> = producers.into_iter().flat_map(|p| p.finish()).collect();
    wait_for_all(&log, &put, Duration::from_secs(60));
    // Balanced by total shards: 3 streams of 2 shards, plus 2 children.
    let deadline = Instant::now() + Duration::from_secs(30);
    let owners = loop {
        let rows = common::lease_rows(&app).unwrap();
        let mut owners: HashMap<String, usize> = HashMap::new();
        let mut open = 0;
        for row in &rows {
            let checkpoint = row.get("checkpoint").and_then(AttributeValue::as_s);
            if checkpoint == Some("SHARD_END") {
                continue;
            }
            open += 1;
            if let Some(owner) = row.get("leaseOwner").and_then(AttributeValue::as_s) {
                *owners.entry(owner.to_owned()).or_default() += 1;
            }
        }
        let balanced =
            open == 7 && owners.values().all(|n| (3..=4).contains(n)) && owners.len() == 2;
        if balanced || Instant::now() > deadline {
            break owners;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop_a.shutdown();
    stop_b.shutdown();
    a.join().unwrap().unwrap();
    b.join().unwrap().unwrap();
    assert_eq!(owners.len(), 2, "both workers hold leases: {owners:?}");
    assert!(
        owners.values().all(|n| (3..=4).contains(n)),
        "7 open shards of 3 streams split 3/4: {owners:?}"
    );

    if common::fan_out() {
        // One registration per stream, under the application's name.
        let k = common::kinesis();
        for stream in &streams {
            let arn = k.describe_stream_summary(stream).unwrap().stream_arn;
            let consumer = k.describe_stream_consumer_by_name(&arn, &app).unwrap();
            assert_eq!(consumer.consumer_status, "ACTIVE", "{stream}");
        }
    }
    let log = log.lock().unwrap();
    // Every record once: no duplicates within one run.
    let mut seen = HashSet::new();
    for (_, _, data) in log.iter() {
        assert!(seen.insert(data.clone()), "{data} delivered twice");
    }
    // In order per shard, and every key names its stream.
    let mut by_shard: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, key, data) in log.iter() {
        let stream = StreamIdentifier::of_lease_key(key).expect("a multi-stream lease key");
        let index = streams.iter().position(|s| s == stream.name()).unwrap();
        assert!(
            data.starts_with(&format!("s{index}-")),
            "{data} read from {key}"
        );
        by_shard.entry(key).or_default().push(number(data));
    }
    for (key, numbers) in &by_shard {
        assert!(numbers.is_sorted(), "{key} out of order: {numbers:?}");
    }
    // The split shard's children were read, after it (its lease finished).
    let parent_key = by_shard
        .keys()
        .find(|k| k.ends_with(&format!(":{}", split.shard_id)) && k.contains(&streams[0]))
        .expect("the split shard was read");
    let parent_last = *by_shard[parent_key].last().unwrap();
    let children: Vec<&&str> = by_shard
        .keys()
        .filter(|k| {
            k.contains(&format!(":{}:", streams[0]))
                && !k.ends_with("shardId-000000000000")
                && !k.ends_with("shardId-000000000001")
        })
        .collect();
    assert_eq!(
        children.len(),
        2,
        "both children read: {:?}",
        by_shard.keys()
    );
    for child in children {
        assert!(
            by_shard[*child].iter().all(|n| *n > parent_last),
            "{child} read before its parent finished"
        );
    }
}

/// A lease row as a KCL 3 multi-stream application writes it.
fn kcl3_row(
    stream: &StreamIdentifier,
    shard: &kinesis_consumer::aws::kinesis::Shard,
    checkpoint: &str,
) -> kinesis_consumer::__test_support::Item {
    let mut item = common::kcl_lease_row(shard, Some("kcl-worker"), 5, checkpoint);
    let s = |v: String| AttributeValue::S(v);
    item.insert("leaseKey".into(), s(stream.lease_key(&shard.shard_id)));
    item.insert("streamName".into(), s(stream.to_string()));
    item.insert("shardId".into(), s(shard.shard_id.clone()));
    item
}

#[test]
fn a_kcl_3_multi_stream_table_is_continued_from_exactly_after_its_checkpoints() {
    let streams: Vec<String> = (0..2).map(|_| common::create_stream(1)).collect();
    let k = common::kinesis();
    let mut put: HashMap<String, Vec<String>> = HashMap::new();
    for (i, stream) in streams.iter().enumerate() {
        for n in 0..20 {
            let data = format!("s{i}-{n}");
            k.put_record(stream, "pk", None, data.as_bytes()).unwrap();
            put.entry(stream.clone()).or_default().push(data);
        }
    }
    let app = common::unique_name("kcl3");
    common::create_lease_table(&app);
    let d = common::dynamodb();
    for (i, stream) in streams.iter().enumerate() {
        let id = k
            .describe_stream_summary(stream)
            .unwrap()
            .stream_identifier()
            .unwrap();
        let shard = k.list_shards(stream, None).unwrap().remove(0);
        // The KCL checkpointed stream 0 after record 9 and stream 1 after record 14.
        let at = [9, 14][i];
        let position = common::position_of(stream, &shard.shard_id, &format!("s{i}-{at}"));
        let row = kcl3_row(&id, &shard, position.sequence_number.as_str());
        d.put_item(&app, &row, None).unwrap();
    }
    let log: Log = Arc::default();
    let (stop, thread) = spawn(multi_builder(&app, &streams, "worker-a"), "worker-a", &log);
    let expected: HashSet<String> = (10..20)
        .map(|n| format!("s0-{n}"))
        .chain((15..20).map(|n| format!("s1-{n}")))
        .collect();
    // The KCL's worker is gone: its leases expire after the failover time.
    wait_for_all(&log, &expected, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let delivered: HashSet<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, d)| d.clone())
        .collect();
    assert_eq!(
        delivered, expected,
        "exactly the records after the checkpoints"
    );
    // No lease in the other layout was added beside the KCL's.
    let keys: Vec<String> = common::lease_rows(&app)
        .unwrap()
        .iter()
        .map(|r| r["leaseKey"].as_s().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| StreamIdentifier::of_lease_key(k).is_some()),
        "{keys:?}"
    );
}

#[test]
fn a_table_in_the_other_layout_is_refused_saying_how_to_migrate() {
    let stream = common::create_stream(1);
    let app = common::unique_name("layout");
    // A single-stream consumer leaves bare shard ids.
    let log: Log = Arc::default();
    let single = common::consumer_builder(&stream, &app).build().unwrap();
    let stop = single.shutdown_handle();
    let thread = std::thread::spawn(move || single.run(|_| Ok(())));
    let deadline = Instant::now() + Duration::from_secs(30);
    while common::lease_rows(&app).map_or(true, |rows| rows.is_empty()) {
        assert!(Instant::now() < deadline, "no lease created");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let multi = multi_builder(&app, std::slice::from_ref(&stream), "worker-m")
        .build()
        .unwrap();
    let error = multi.run(|_| Ok(())).unwrap_err().to_string();
    assert!(error.contains("single-stream leases"), "{error}");
    assert!(error.contains("lease_table_name"), "{error}");
    assert!(log.lock().unwrap().is_empty());
}

/// A processor that notes the stream `initialize_with` is told, and its records.
struct Noting {
    key: String,
    stream: Option<StreamIdentifier>,
    log: Log,
}

impl kinesis_consumer::ShardProcessor<Payload> for Noting {
    fn initialize_with(
        &mut self,
        input: &kinesis_consumer::InitializationInput,
    ) -> kinesis_consumer::HandlerResult {
        assert_eq!(input.shard_id(), self.key);
        assert_eq!(
            input
                .stream()
                .map(|s| s.lease_key(input.kinesis_shard_id())),
            Some(self.key.clone())
        );
        self.stream = input.stream();
        Ok(())
    }

    fn process(
        &mut self,
        records: kinesis_consumer::ShardBatch<Payload>,
        _checkpointer: &kinesis_consumer::Checkpointer,
    ) -> kinesis_consumer::HandlerResult {
        let stream = self.stream.clone().expect("initialize named the stream");
        assert_eq!(records.stream().as_ref(), Some(&stream));
        let mut log = self.log.lock().unwrap();
        for m in records.messages() {
            let data = String::from_utf8_lossy(m.record().data()).into_owned();
            log.push((stream.name().to_owned(), self.key.clone(), data));
        }
        Ok(())
    }
}

#[test]
fn processors_read_several_streams_each_initialized_with_its_stream() {
    let streams: Vec<String> = (0..2).map(|_| common::create_stream(2)).collect();
    let expected = put_spread(&streams, 10, "pk");
    let app = common::unique_name("multi-p");
    let log: Log = Arc::default();
    let consumer = multi_builder(&app, &streams, "worker-p").build().unwrap();
    let stop = consumer.shutdown_handle();
    let sink = log.clone();
    let thread = std::thread::spawn(move || {
        consumer.run_processors(move |key: &str| Noting {
            key: key.to_owned(),
            stream: None,
            log: sink.clone(),
        })
    });
    wait_for_all(&log, &expected, Duration::from_secs(60));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    for (stream, key, data) in log.lock().unwrap().iter() {
        let index = streams.iter().position(|s| s == stream).unwrap();
        assert!(
            data.starts_with(&format!("s{index}-")),
            "{data} from {stream}"
        );
        assert!(key.contains(&format!(":{stream}:")), "{key}");
    }
    // Checkpointed in the multi-stream layout, with the KCL's attributes.
    let rows = common::lease_rows(&app).unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        let key = row["leaseKey"].as_s().unwrap();
        let (stream, shard) = (
            row["streamName"].as_s().unwrap(),
            row["shardId"].as_s().unwrap(),
        );
        assert_eq!(key, format!("{stream}:{shard}"));
        assert!(
            row["checkpoint"]
                .as_s()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_digit()),
            "{row:?}"
        );
    }
}

/// Puts `data` records on a one-shard stream.
fn put_all(stream: &str, data: impl IntoIterator<Item = String>) -> HashSet<String> {
    let k = common::kinesis();
    let mut put = HashSet::new();
    for d in data {
        k.put_record(stream, "pk", None, d.as_bytes()).unwrap();
        put.insert(d);
    }
    put
}

/// Puts `count` records into each stream, `s<stream index>-<n>` under
/// partition key `<key>-<n>` (spread over the shards); returns their data.
fn put_spread(streams: &[String], count: usize, key: &str) -> HashSet<String> {
    let k = common::kinesis();
    let mut put = HashSet::new();
    for (i, stream) in streams.iter().enumerate() {
        for n in 0..count {
            let data = format!("s{i}-{n}");
            k.put_record(stream, &format!("{key}-{n}"), None, data.as_bytes())
                .unwrap();
            put.insert(data);
        }
    }
    put
}

/// The lease rows of a stream's shards in an application's table.
fn rows_of(app: &str, stream: &str) -> Vec<kinesis_consumer::__test_support::Item> {
    common::lease_rows(app)
        .unwrap()
        .into_iter()
        .filter(|r| {
            r["leaseKey"]
                .as_s()
                .unwrap()
                .contains(&format!(":{stream}:"))
        })
        .collect()
}

/// Per-shard metrics, broken down by stream, kept in the process.
fn with_stream_metrics(
    builder: kinesis_consumer::ConsumerBuilder<Payload>,
) -> kinesis_consumer::ConsumerBuilder<Payload> {
    use kinesis_consumer::{MetricsDimension, MetricsLevel};
    builder
        .metrics_level(MetricsLevel::Detailed)
        .metrics_dimensions(&[MetricsDimension::StreamName, MetricsDimension::ShardId])
        .publish_metrics(false)
}

/// Under `KINESIS_TEST_RETRIEVAL=fan-out`: `stream` has the application's
/// registration, ACTIVE, and its shards were read through it, never
/// polled (the per-shard metrics of `with_stream_metrics`).
fn check_read_through_fan_out(metrics: &kinesis_consumer::MetricsHandle, app: &str, stream: &str) {
    if !common::fan_out() {
        return;
    }
    let k = common::kinesis();
    let arn = k.describe_stream_summary(stream).unwrap().stream_arn;
    let consumer = k.describe_stream_consumer_by_name(&arn, app).unwrap();
    assert_eq!(consumer.consumer_status, "ACTIVE", "{stream}");
    let samples = metrics.snapshot();
    let of_stream = |name: &str| {
        samples
            .iter()
            .filter(|s| s.name == name && s.dimension("StreamName") == Some(stream))
            .count()
    };
    assert!(
        of_stream("SubscribeToShard.Success") > 0,
        "{stream} was not read through fan-out"
    );
    assert_eq!(of_stream("GetRecords.Success"), 0, "{stream} was polled");
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn streams_added_and_removed_while_running_resume_where_they_stopped() {
    let (a, b) = (common::create_stream(1), common::create_stream(1));
    let app = common::unique_name("multi-change");
    let log: Log = Arc::default();
    let consumer = with_stream_metrics(multi_builder(&app, std::slice::from_ref(&a), "worker-c"))
        .former_stream_retention(Duration::from_secs(3600))
        .build()
        .unwrap();
    let metrics = consumer.metrics();
    let handle = consumer.streams_handle();
    let stop = consumer.shutdown_handle();
    let sink = log.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut log = sink.lock().unwrap();
            for m in batch.messages() {
                let r = m.record();
                let data = String::from_utf8_lossy(r.data()).into_owned();
                log.push((String::new(), r.shard_id().to_owned(), data));
            }
            Ok(())
        })
    });
    let first_a = put_all(&a, (0..5).map(|n| format!("a-{n}")));
    let first_b = put_all(&b, (0..5).map(|n| format!("b-{n}")));
    wait_for_all(&log, &first_a, Duration::from_secs(30));
    assert!(
        handle.add("no-such-stream").is_err(),
        "an unknown stream is refused"
    );
    handle.add(b.as_str()).unwrap();
    wait_for_all(&log, &first_b, Duration::from_secs(30));
    handle.remove(&a);
    // Released after its last checkpoint, kept (the retention is an hour).
    wait_until(
        "the removed stream's lease released",
        Duration::from_secs(30),
        || {
            let rows = rows_of(&app, &a);
            rows.len() == 1 && !rows[0].contains_key("leaseOwner")
        },
    );
    let row = &rows_of(&app, &a)[0];
    let last_a = common::position_of(
        &a,
        &common::kinesis().list_shards(&a, None).unwrap()[0].shard_id,
        "a-4",
    );
    assert_eq!(
        row["checkpoint"].as_s(),
        Some(last_a.sequence_number.as_str()),
        "checkpointed before release"
    );
    let later_a = put_all(&a, (5..10).map(|n| format!("a-{n}")));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !log.lock()
            .unwrap()
            .iter()
            .any(|(_, _, d)| later_a.contains(d)),
        "a removed stream is not read"
    );
    // Added back: it resumes after its checkpoint.
    handle.add(a.as_str()).unwrap();
    wait_for_all(&log, &later_a, Duration::from_secs(30));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    // The stream added while running was read through fan-out too.
    check_read_through_fan_out(&metrics, &app, &b);
    let log = log.lock().unwrap();
    let mut seen = HashSet::new();
    for (_, _, d) in log.iter() {
        assert!(seen.insert(d.clone()), "{d} delivered twice");
    }
}

#[test]
fn a_stream_deleted_and_recreated_under_its_name_is_a_new_stream() {
    let name = common::create_stream(1);
    let app = common::unique_name("multi-recreate");
    let log: Log = Arc::default();
    let consumer =
        with_stream_metrics(multi_builder(&app, std::slice::from_ref(&name), "worker-r"))
            .former_stream_retention(Duration::from_secs(1))
            .build()
            .unwrap();
    let metrics = consumer.metrics();
    let (stop, thread) = spawn_consumer(consumer, "worker-r", &log);
    let old = put_all(&name, (0..5).map(|n| format!("old-{n}")));
    wait_for_all(&log, &old, Duration::from_secs(30));
    let k = common::kinesis();
    let old_id = k
        .describe_stream_summary(&name)
        .unwrap()
        .stream_identifier()
        .unwrap();
    k.delete_stream(&name).unwrap();
    wait_until("the stream deleted", Duration::from_secs(30), || {
        k.describe_stream_summary(&name).is_err()
    });
    // A creation time in another second than the first stream's.
    std::thread::sleep(Duration::from_millis(1100));
    k.create_stream(&name, 1).unwrap();
    k.wait_until_active(&name, Duration::from_secs(30)).unwrap();
    let new_id = k
        .describe_stream_summary(&name)
        .unwrap()
        .stream_identifier()
        .unwrap();
    assert_ne!(old_id, new_id);
    let new = put_all(&name, (0..5).map(|n| format!("new-{n}")));
    wait_for_all(&log, &new, Duration::from_secs(60));
    // The old stream's leases are cleaned up after the retention period.
    wait_until("the old leases deleted", Duration::from_secs(30), || {
        let keys: Vec<String> = common::lease_rows(&app)
            .unwrap()
            .iter()
            .map(|r| r["leaseKey"].as_s().unwrap().to_owned())
            .collect();
        !keys.is_empty() && keys.iter().all(|k| k.starts_with(&format!("{new_id}:")))
    });
    stop.shutdown();
    thread.join().unwrap().unwrap();
    // The recreated stream has a registration of its own, read through.
    check_read_through_fan_out(&metrics, &app, &name);
    let log = log.lock().unwrap();
    for (_, key, data) in log.iter() {
        let expected = if data.starts_with("old-") {
            &old_id
        } else {
            &new_id
        };
        assert!(
            key.starts_with(&format!("{expected}:")),
            "{data} read as {key}"
        );
    }
    assert_eq!(log.len(), 10, "every record once");
}

#[test]
fn tail_reads_streams_given_more_than_once_and_leases_shows_each_stream() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (a, b) = (common::create_stream(1), common::create_stream(1));
    let app = common::unique_name("multi-tail");
    let mut expected = put_all(&a, (0..3).map(|n| format!("a-{n}")));
    expected.extend(put_all(&b, (0..3).map(|n| format!("b-{n}"))));
    let mut child = common::aws_env(Command::new(common::example_binary("tail")))
        .args(["--stream", &a, "--stream", &b, "--app", &app])
        .args(["--position", "trim-horizon", "--batch-interval-ms", "200"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = HashMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let data = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["data_base64"].as_str().unwrap(),
        )
        .unwrap();
        let data = String::from_utf8(data).unwrap();
        assert_eq!(v["shard_id"], "shardId-000000000000", "{v}");
        seen.insert(data, v["stream"].as_str().unwrap().to_owned());
        if seen.len() == expected.len() {
            break;
        }
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    for (data, stream) in &seen {
        let want = if data.starts_with("a-") { &a } else { &b };
        assert_eq!(stream, want, "{data}");
    }
    let text = common::leases_example(&["--app", &app, "--observe-ms", "100"]);
    for stream in [&a, &b] {
        assert!(
            text.contains(&format!("stream {stream} (account")),
            "{text}"
        );
    }
}

/// The checkpoint column of each lease row of `app`, by lease key.
fn checkpoints(app: &str) -> BTreeMap<String, String> {
    common::lease_rows(app)
        .unwrap()
        .iter()
        .map(|r| {
            let key = r["leaseKey"].as_s().unwrap().to_owned();
            (key, r["checkpoint"].as_s().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn leases_shows_resets_exports_and_imports_one_stream_of_a_multi_stream_table() {
    let (a, b) = (common::create_stream(1), common::create_stream(1));
    let app = common::unique_name("multi-leases");
    let mut put = put_all(&a, (0..3).map(|n| format!("a-{n}")));
    put.extend(put_all(&b, (0..3).map(|n| format!("b-{n}"))));
    let log: Log = Arc::default();
    let builder = multi_builder(&app, &[a.clone(), b.clone()], "worker-l");
    let (stop, thread) = spawn(builder, "worker-l", &log);
    wait_for_all(&log, &put, Duration::from_secs(60));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let before = checkpoints(&app);
    assert_eq!(before.len(), 2);

    // --stream shows that stream's lease alone, judged against its listing.
    let text = common::leases_example(&["--app", &app, "--stream", &a, "--observe-ms", "100"]);
    assert!(text.contains(&format!("stream {a} (account")), "{text}");
    assert!(!text.contains(&format!("stream {b} (account")), "{text}");
    assert!(text.contains("shardId-000000000000"), "{text}");
    for wrong in ["expired from the stream", "not listed"] {
        assert!(!text.contains(wrong), "{text}");
    }

    // --reset moves that stream's lease alone, and writes no bare key.
    let text = common::leases_example(&["--app", &app, "--stream", &a, "--reset", "trim-horizon"]);
    let after = checkpoints(&app);
    assert_eq!(after.len(), 2, "no lease added: {after:?}\n{text}");
    for (key, checkpoint) in &after {
        let stream = StreamIdentifier::of_lease_key(key).expect("a multi-stream key");
        if stream.name() == a {
            assert_eq!(checkpoint, "TRIM_HORIZON", "{text}");
        } else {
            assert_eq!(Some(checkpoint), before.get(key), "{key} moved: {text}");
        }
    }

    // An export imports into another application's table as it was.
    let file = std::env::temp_dir().join(format!("{app}.json"));
    let file_arg = file.to_str().unwrap();
    common::leases_example(&["--app", &app, "--export", file_arg]);
    let copy = common::unique_name("multi-leases-copy");
    common::leases_example(&["--app", &copy, "--import", file_arg]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(checkpoints(&copy), after);
    for row in common::lease_rows(&copy).unwrap() {
        let key = row["leaseKey"].as_s().unwrap();
        let (stream, shard) = (
            row["streamName"].as_s().unwrap(),
            row["shardId"].as_s().unwrap(),
        );
        assert_eq!(key, format!("{stream}:{shard}"));
    }
}

/// Two processes of one application reading different stream lists (a
/// rolling change of the list): the leader "worker-a" reads both streams,
/// "worker-b" only the first, of one shard. To even the counts b is owed
/// a lease of the second stream; it frees it and says in its worker item
/// that it does not read that stream, and the leader gives it none of
/// that stream's leases again. Every record of both streams is read
/// (before, the leader gave the freed lease back to b each round, for
/// ever).
#[test]
fn workers_reading_different_stream_lists_read_every_record() {
    let streams = [common::create_stream(1), common::create_stream(3)];
    let app = common::unique_name("multi");
    let log: Log = Arc::default();
    let (stop_a, a) = spawn(multi_builder(&app, &streams, "worker-a"), "worker-a", &log);
    let members = kinesis_consumer::__test_support::MemberItems::new(common::dynamodb(), &app);
    wait_until("worker-a to lead", Duration::from_secs(20), || {
        members
            .leader()
            .ok()
            .flatten()
            .is_some_and(|(leader, ..)| leader == "worker-a")
    });
    let (stop_b, b) = spawn(
        multi_builder(&app, &streams[..1], "worker-b"),
        "worker-b",
        &log,
    );
    std::thread::sleep(Duration::from_secs(4));
    // Keys spread over every shard (40 keys over 3 shards: each gets some).
    let put = put_spread(&streams, 40, "key");
    wait_for_all(&log, &put, Duration::from_secs(30));
    let misread: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(worker, key, _)| {
            worker == "worker-b" && key.contains(&format!(":{}:", streams[1]))
        })
        .map(|(_, key, _)| key.clone())
        .collect();
    assert!(misread.is_empty(), "worker-b read {misread:?}");
    stop_a.shutdown();
    stop_b.shutdown();
    a.join().unwrap().unwrap();
    b.join().unwrap().unwrap();
}
