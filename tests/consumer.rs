//! The consumer end to end against the emulators: delivery from each
//! initial position, order, restarts, handler failures, shutdown and
//! resharding.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{Batch, ConsumerBuilder, Error, InitialPosition, Payload};

/// One delivered record: shard, sequence number, partition key, data.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Seen {
    shard: String,
    seq: String,
    pk: String,
    data: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn builder(stream: &str, app: &str) -> ConsumerBuilder<Payload> {
    common::consumer_builder(stream, app)
}

fn record(log: &Log, batch: &Batch<Payload>) {
    let mut log = log.lock().unwrap();
    for m in batch.messages() {
        log.push(Seen {
            shard: m.record().shard_id().to_owned(),
            seq: m.record().sequence_number().to_string(),
            pk: m.record().partition_key().to_owned(),
            data: String::from_utf8(m.value().to_vec()).unwrap(),
        });
    }
}

struct Running {
    stop: kinesis_consumer::ShutdownHandle,
    thread: JoinHandle<kinesis_consumer::Result<()>>,
    log: Log,
}

fn start(builder: ConsumerBuilder<Payload>) -> Running {
    let consumer = builder.build().unwrap();
    let stop = consumer.shutdown_handle();
    let log: Log = Arc::default();
    let sink = log.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            record(&sink, &batch);
            Ok(())
        })
    });
    Running { stop, thread, log }
}

impl Running {
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&[Seen]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(&self.log.lock().unwrap()) {
            assert!(
                !self.thread.is_finished(),
                "the consumer stopped while waiting for {what}"
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} records seen",
                self.log.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(self) -> Vec<Seen> {
        self.stop.shutdown();
        self.thread.join().unwrap().unwrap();
        Arc::try_unwrap(self.log).unwrap().into_inner().unwrap()
    }
}

/// Puts `count` records named `{prefix}-{i}` over `keys` partition keys.
fn put(stream: &str, prefix: &str, count: usize, keys: usize) -> Vec<String> {
    let k = common::kinesis();
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in names.chunks(500).enumerate() {
        let entries: Vec<PutRecordsEntry> = chunk
            .1
            .iter()
            .enumerate()
            .map(|(i, name)| PutRecordsEntry {
                partition_key: format!("key-{}", (chunk.0 * 500 + i) % keys),
                explicit_hash_key: None,
                data: name.clone().into_bytes(),
            })
            .collect();
        for r in k.put_records(stream, &entries).unwrap() {
            r.unwrap();
        }
    }
    names
}

fn data_set(seen: &[Seen]) -> HashSet<String> {
    seen.iter().map(|s| s.data.clone()).collect()
}

/// Sequence numbers grow within each shard.
fn assert_ordered_per_shard(seen: &[Seen]) {
    let mut last: HashMap<&str, kinesis_consumer::SequenceNumber> = HashMap::new();
    for s in seen {
        let seq = kinesis_consumer::SequenceNumber::parse(&s.seq).unwrap();
        if let Some(prev) = last.get(s.shard.as_str()) {
            if seq <= *prev {
                let trail: Vec<_> = seen
                    .iter()
                    .filter(|x| x.shard == s.shard)
                    .map(|x| (&x.seq[40..], &x.data))
                    .collect();
                panic!("shard {} went from {prev} to {seq}: {trail:?}", s.shard);
            }
        }
        last.insert(&s.shard, seq);
    }
}

/// The table's checkpoint for each shard.
fn checkpoints(app: &str) -> BTreeMap<String, String> {
    common::lease_rows(app)
        .unwrap()
        .into_iter()
        .map(|item| {
            (
                item["leaseKey"].as_s().unwrap().to_owned(),
                item["checkpoint"].as_s().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn trim_horizon_delivers_every_record_in_order_and_restarts_after_checkpoint() {
    let stream = common::create_stream(3);
    let app = common::unique_name("app");
    let first = put(&stream, "a", 300, 20);
    let consumer = start(builder(&stream, &app));
    consumer.wait_for("the first 300 records", Duration::from_secs(30), |s| {
        s.len() >= 300
    });
    let seen = consumer.stop();
    assert_eq!(seen.len(), 300, "no duplicates within one run");
    assert_eq!(data_set(&seen), first.iter().cloned().collect());
    assert_ordered_per_shard(&seen);
    assert_eq!(
        seen.iter().map(|s| &s.shard).collect::<HashSet<_>>().len(),
        3,
        "all shards read"
    );

    // Graceful shutdown left each shard's checkpoint at its last delivered record.
    let table = checkpoints(&app);
    for shard in seen.iter().map(|s| &s.shard).collect::<HashSet<_>>() {
        let last = seen.iter().rfind(|s| &s.shard == shard).unwrap();
        assert_eq!(table[shard], last.seq, "checkpoint of {shard}");
    }

    // A restart resumes after the checkpoint: only new records, none lost.
    let second = put(&stream, "b", 100, 20);
    let consumer = start(builder(&stream, &app));
    consumer.wait_for("the next 100 records", Duration::from_secs(30), |s| {
        s.len() >= 100
    });
    std::thread::sleep(Duration::from_millis(600));
    let seen = consumer.stop();
    assert_eq!(
        data_set(&seen),
        second.iter().cloned().collect(),
        "exactly the new records"
    );
    assert_eq!(
        seen.len(),
        100,
        "nothing delivered twice after a graceful restart"
    );
}

#[test]
fn latest_skips_old_records_and_at_timestamp_skips_earlier_ones() {
    let stream = common::create_stream(2);
    put(&stream, "old", 50, 5);
    std::thread::sleep(Duration::from_millis(1100));
    let start_time = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1100));
    let newer = put(&stream, "newer", 40, 5);

    let at = start(
        builder(&stream, &common::unique_name("app"))
            .initial_position(InitialPosition::AtTimestamp(start_time)),
    );
    at.wait_for(
        "records after the start time",
        Duration::from_secs(30),
        |s| s.len() >= 40,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        data_set(&at.stop()),
        newer.iter().cloned().collect(),
        "AtTimestamp: nothing before the start time"
    );

    let latest = start(
        builder(&stream, &common::unique_name("app")).initial_position(InitialPosition::Latest),
    );
    // Give the readers time to get their LATEST iterators before putting.
    std::thread::sleep(Duration::from_secs(2));
    let newest = put(&stream, "newest", 30, 5);
    latest.wait_for("records put after start", Duration::from_secs(30), |s| {
        s.len() >= 30
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        data_set(&latest.stop()),
        newest.iter().cloned().collect(),
        "Latest: nothing old"
    );
}

#[test]
fn handler_error_or_panic_moves_no_checkpoint() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    put(&stream, "x", 20, 3);
    // Deliver and checkpoint the first 20.
    let consumer = start(builder(&stream, &app));
    consumer.wait_for("20 records", Duration::from_secs(30), |s| s.len() >= 20);
    consumer.stop();
    let before = checkpoints(&app);

    put(&stream, "y", 10, 3);
    for fail in ["error", "panic"] {
        let consumer = builder(&stream, &app).build().unwrap();
        let calls = Arc::new(Mutex::new(0usize));
        let counter = calls.clone();
        let result = consumer.run(move |batch| {
            if batch.is_empty() {
                return Ok(());
            }
            *counter.lock().unwrap() += 1;
            if fail == "panic" {
                panic!("boom");
            }
            Err(std::io::Error::other("handler refused the batch").into())
        });
        match (fail, result) {
            ("error", Err(Error::Handler(e))) => assert!(e.to_string().contains("refused")),
            ("panic", Err(Error::HandlerPanicked(m))) => assert!(m.contains("boom"), "{m}"),
            (_, other) => panic!("{fail}: unexpected result {other:?}"),
        }
        assert_eq!(*calls.lock().unwrap(), 1);
        assert_eq!(
            checkpoints(&app),
            before,
            "a failed batch ({fail}) moves no checkpoint"
        );
    }

    // The refused records come again, and nothing else.
    let consumer = start(builder(&stream, &app));
    consumer.wait_for("the 10 refused records", Duration::from_secs(30), |s| {
        s.len() >= 10
    });
    std::thread::sleep(Duration::from_millis(500));
    let seen = consumer.stop();
    assert_eq!(data_set(&seen), (0..10).map(|i| format!("y-{i}")).collect());
}

#[test]
fn message_handler_panic_stops_the_consumer_with_an_error() {
    let stream = common::create_stream(1);
    put(&stream, "p", 5, 1);
    let consumer = builder(&stream, &common::unique_name("app"))
        .message_handler(|r| {
            if r.data() == b"p-3" {
                panic!("bad record")
            } else {
                r.data().len()
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let result = consumer.run(|_batch: Batch<usize>| Ok(()));
    assert!(
        matches!(&result, Err(Error::HandlerPanicked(m)) if m.contains("bad record")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn unknown_stream_fails_fast_with_a_clear_error() {
    let consumer = builder(&common::unique_name("missing"), &common::unique_name("app"))
        .build()
        .unwrap();
    let err = consumer.run(|_b| Ok(())).unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err}");
}

#[test]
fn split_and_merge_during_consumption_lose_nothing_and_keep_parent_before_child() {
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let consumer = start(builder(&stream, &app));
    let mut all = put(&stream, "before", 200, 16);

    let first = common::split_first_shard(&stream);
    all.extend(put(&stream, "split", 200, 16));
    common::merge_upper_child(&stream, &first);
    all.extend(put(&stream, "merged", 200, 16));

    consumer.wait_for("all 600 records", Duration::from_secs(60), |s| {
        data_set(s).len() >= 600
    });
    let seen = consumer.stop();
    assert_eq!(
        data_set(&seen),
        all.iter().cloned().collect(),
        "nothing lost across split and merge"
    );
    assert_ordered_per_shard(&seen);
    // Per partition key, records come in the order they were put.
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &seen {
        by_key.entry(&s.pk).or_default().push(&s.data);
    }
    let put_order: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    for (key, data) in by_key {
        let order: Vec<usize> = data.iter().map(|d| put_order[d]).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "partition key {key} out of order: {data:?}"
        );
    }
}

#[test]
fn two_consumers_in_one_process_work_side_by_side() {
    let (s1, s2) = (common::create_stream(2), common::create_stream(1));
    let (one, two) = (put(&s1, "one", 60, 6), put(&s2, "two", 40, 4));
    // Different streams, and a second application on the first stream.
    let a = start(builder(&s1, &common::unique_name("app")));
    let b = start(builder(&s2, &common::unique_name("app")));
    let c = start(builder(&s1, &common::unique_name("app")));
    for (consumer, count) in [(&a, 60), (&b, 40), (&c, 60)] {
        consumer.wait_for("every record", Duration::from_secs(30), |s| {
            s.len() >= count
        });
    }
    assert_eq!(data_set(&a.stop()), one.iter().cloned().collect());
    assert_eq!(data_set(&b.stop()), two.iter().cloned().collect());
    assert_eq!(data_set(&c.stop()), one.iter().cloned().collect());
}

#[test]
fn latest_is_pinned_when_the_application_first_starts() {
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    put(&stream, "before", 20, 4);
    // The pin is the service's clock rounded down to the second (erring
    // earlier, never later): start well after the second of these puts.
    std::thread::sleep(Duration::from_millis(2100));
    let latest = || builder(&stream, &app).initial_position(InitialPosition::Latest);
    let first = start(latest());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(first.stop().is_empty(), "nothing from before the start");
    // Put while no consumer runs and no checkpoint was written: a restart
    // (or another worker taking the lease) must not skip these.
    let between = put(&stream, "between", 30, 4);
    let second = start(latest());
    second.wait_for(
        "the records put between runs",
        Duration::from_secs(30),
        |s| s.len() >= 30,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(data_set(&second.stop()), between.iter().cloned().collect());
}
