//! The consumer under injected faults: a proxy (tests/common/proxy.rs)
//! between the library and the emulators throttles, fails, cuts, delays and
//! garbles replies of one operation at a time. Each test puts a known set
//! of records before, during and after the fault and checks that every
//! record is delivered, the first delivery of each record keeps shard
//! order, no checkpoint ever passes a record the handler had not accepted,
//! checkpoints never move backwards, the library's request rate during the
//! fault stays bounded (backoff, no hot loop), and it recovers once the
//! fault clears. Each test prints one `FAULT |` line with its figures
//! (`cargo test --test faults -- --nocapture`); RELIABILITY.md collects them.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{Batch, ConsumerBuilder, Payload, SequenceNumber};

/// One record put: its data, shard and sequence number.
#[derive(Clone, Debug)]
struct Put {
    data: String,
    shard: String,
    seq: SequenceNumber,
}

/// One record the batch handler got.
#[derive(Clone, Debug)]
struct Got {
    data: String,
    shard: String,
    seq: SequenceNumber,
}

fn put(stream: &str, prefix: &str, count: usize, into: &Mutex<Vec<Put>>) {
    let k = common::kinesis();
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("key-{}", i % 16),
            explicit_hash_key: None,
            data: format!("{prefix}-{i}").into_bytes(),
        })
        .collect();
    let mut puts = Vec::new();
    for chunk in entries.chunks(500) {
        for (entry, result) in chunk.iter().zip(k.put_records(stream, chunk).unwrap()) {
            let out = result.unwrap();
            puts.push(Put {
                data: String::from_utf8(entry.data.clone()).unwrap(),
                shard: out.shard_id,
                seq: out.sequence_number,
            });
        }
    }
    into.lock().unwrap().extend(puts);
}

fn builder(proxy: &Proxy, stream: &str, app: &str) -> ConsumerBuilder<Payload> {
    common::consumer_builder_at(proxy.url(), proxy.url(), stream, app)
}

/// A running consumer with a thread that watches its checkpoints.
struct Run {
    stop: kinesis_consumer::ShutdownHandle,
    metrics: kinesis_consumer::MetricsHandle,
    thread: JoinHandle<kinesis_consumer::Result<()>>,
    got: Arc<Mutex<Vec<Got>>>,
    puts: Arc<Mutex<Vec<Put>>>,
    watching: Arc<AtomicBool>,
    watcher: JoinHandle<Vec<String>>,
}

/// Where a checkpoint stands, ordered: nothing < a record < the shard's end.
fn rank(checkpoint: &str) -> (u8, Option<SequenceNumber>) {
    match checkpoint {
        "TRIM_HORIZON" | "LATEST" | "AT_TIMESTAMP" => (0, None),
        "SHARD_END" => (2, None),
        seq => (1, SequenceNumber::parse(seq)),
    }
}

/// Polls the lease table: every checkpoint must cover only records the
/// handler already had, must never move backwards, and is never SHARD_END
/// (no test here reshards). Returns violations.
fn watch_checkpoints(
    app: String,
    got: Arc<Mutex<Vec<Got>>>,
    puts: Arc<Mutex<Vec<Put>>>,
    watching: Arc<AtomicBool>,
) -> Vec<String> {
    let dynamodb = common::dynamodb();
    let mut violations = Vec::new();
    let mut last: HashMap<String, (u8, Option<SequenceNumber>)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while watching.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(items) = dynamodb.scan(&app) else {
            continue;
        };
        // Read after the table: a record the handler had when the checkpoint
        // was written is in this snapshot.
        let delivered: HashSet<String> =
            got.lock().unwrap().iter().map(|g| g.data.clone()).collect();
        let puts = puts.lock().unwrap().clone();
        for item in items {
            let (Some(shard), Some(checkpoint)) = (
                item.get("leaseKey").and_then(|v| v.as_s()),
                item.get("checkpoint").and_then(|v| v.as_s()),
            ) else {
                continue;
            };
            let now = rank(checkpoint);
            if checkpoint == "SHARD_END" && last.get(shard) != Some(&now) {
                violations.push(format!("{shard}: SHARD_END written for an open shard"));
            }
            if let Some(before) = last.get(shard) {
                if now < *before {
                    violations.push(format!("{shard}: checkpoint moved back to {checkpoint}"));
                }
            }
            if let (1, Some(cp)) = &now {
                for p in puts.iter().filter(|p| p.shard == shard && p.seq <= *cp) {
                    if !delivered.contains(&p.data) {
                        violations.push(format!(
                            "{shard}: checkpoint {checkpoint} passes {} which the handler never had",
                            p.data
                        ));
                    }
                }
            }
            last.insert(shard.to_owned(), now);
        }
    }
    violations
}

fn start(builder: ConsumerBuilder<Payload>, app: &str, puts: Arc<Mutex<Vec<Put>>>) -> Run {
    // In-process metrics only (CloudWatch is on a closed port): they count
    // the leases lost.
    let consumer = builder
        .metrics_level(kinesis_consumer::MetricsLevel::Summary)
        .publish_metrics(false)
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let metrics = consumer.metrics();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let sink = got.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut sink = sink.lock().unwrap();
            for m in batch.messages() {
                sink.push(Got {
                    data: String::from_utf8(m.value().to_vec()).unwrap(),
                    shard: m.record().shard_id().to_owned(),
                    seq: m.record().sequence_number().clone(),
                });
            }
            Ok(())
        })
    });
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (app, got, puts, watching) =
            (app.to_owned(), got.clone(), puts.clone(), watching.clone());
        std::thread::spawn(move || watch_checkpoints(app, got, puts, watching))
    };
    Run {
        stop,
        metrics,
        thread,
        got,
        puts,
        watching,
        watcher,
    }
}

impl Run {
    fn distinct(&self) -> usize {
        let got = self.got.lock().unwrap();
        got.iter().map(|g| &g.data).collect::<HashSet<_>>().len()
    }

    /// Waits until every record put so far was delivered; the time it took.
    fn wait_all(&self, what: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let want = self.puts.lock().unwrap().len();
        while self.distinct() < want {
            assert!(
                !self.thread.is_finished(),
                "the consumer stopped while waiting for {what}"
            );
            assert!(
                started.elapsed() < timeout,
                "timed out waiting for {what}: {} of {want} records delivered",
                self.distinct()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// Leases this consumer found lost (renewal or checkpoint refused) so far.
    fn leases_lost(&self) -> f64 {
        self.metrics
            .snapshot()
            .iter()
            .filter(|s| s.name == "LeasesLost")
            .map(|s| s.statistics.sum)
            .sum()
    }

    /// Stops the consumer gracefully and checks everything; returns
    /// (records put, distinct delivered, lost, duplicated).
    fn finish(self, app: &str) -> (usize, usize, usize, usize) {
        // Let deliveries settle: a lease lost to an injected fault is taken
        // back and re-read from its checkpoint, and the last record of each
        // shard must be delivered again before the final checkpoint can
        // name it.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = usize::MAX;
        while Instant::now() < deadline {
            let now = self.got.lock().unwrap().len();
            if now == seen {
                break;
            }
            seen = now;
            std::thread::sleep(Duration::from_millis(1000));
        }
        self.stop.shutdown();
        self.thread
            .join()
            .unwrap()
            .expect("the consumer ends without an error");
        self.watching.store(false, Ordering::Relaxed);
        let violations = self.watcher.join().unwrap();
        assert!(
            violations.is_empty(),
            "checkpoint violations: {violations:#?}"
        );
        let got = self.got.lock().unwrap().clone();
        let puts = self.puts.lock().unwrap().clone();
        let delivered: HashSet<&str> = got.iter().map(|g| g.data.as_str()).collect();
        let lost: Vec<&str> = puts
            .iter()
            .map(|p| p.data.as_str())
            .filter(|d| !delivered.contains(d))
            .collect();
        assert!(lost.is_empty(), "lost {} records: {lost:?}", lost.len());
        // First deliveries keep shard order; later copies are redeliveries.
        let mut seen = HashSet::new();
        let mut last: HashMap<&str, &SequenceNumber> = HashMap::new();
        for g in &got {
            if !seen.insert(g.data.as_str()) {
                continue;
            }
            if let Some(prev) = last.get(g.shard.as_str()) {
                assert!(
                    g.seq > **prev,
                    "shard {} delivered {} ({}) after {prev}",
                    g.shard,
                    g.data,
                    g.seq
                );
            }
            last.insert(&g.shard, &g.seq);
        }
        // A graceful stop leaves each shard checkpointed at its last record.
        let table: HashMap<String, String> = common::lease_rows(app)
            .unwrap()
            .into_iter()
            .map(|i| {
                (
                    i["leaseKey"].as_s().unwrap().to_owned(),
                    i["checkpoint"].as_s().unwrap().to_owned(),
                )
            })
            .collect();
        for (shard, seq) in &last {
            assert_eq!(
                table.get(*shard).map(String::as_str),
                Some(seq.as_str()),
                "final checkpoint of {shard}"
            );
        }
        (
            puts.len(),
            delivered.len(),
            lost.len(),
            got.len() - delivered.len(),
        )
    }
}

/// One fault scenario: a fault on one operation, and what must hold while
/// it lasts besides what every scenario checks (see the file's comment).
struct Scenario {
    shards: u32,
    operation: &'static str,
    body_contains: Option<&'static str>,
    trigger: Trigger,
    fault: Fault,
    read_timeout: Option<Duration>,
    /// Rules added just after the main one (to set the fault up).
    also: Vec<(&'static str, Trigger, Fault)>,
    /// Most requests of `operation` allowed while the fault lasts.
    max_requests: u64,
    /// The fault must not cost the consumer a lease.
    keeps_leases: bool,
    /// Put the records "during" the fault in 20 groups this far apart
    /// (all at once when `None`).
    put_during_every: Option<Duration>,
}

impl Scenario {
    /// `fault` on the requests of `operation` that `trigger` picks, on a
    /// stream of one shard.
    fn new(operation: &'static str, trigger: Trigger, fault: Fault) -> Scenario {
        Scenario {
            shards: 1,
            operation,
            body_contains: None,
            trigger,
            fault,
            read_timeout: None,
            also: Vec::new(),
            max_requests: u64::MAX,
            keeps_leases: false,
            put_during_every: None,
        }
    }

    fn shards(mut self, shards: u32) -> Scenario {
        self.shards = shards;
        self
    }

    /// Only requests whose body contains `needle`.
    fn matching(mut self, needle: &'static str) -> Scenario {
        self.body_contains = Some(needle);
        self
    }

    fn read_timeout(mut self, timeout: Duration) -> Scenario {
        self.read_timeout = Some(timeout);
        self
    }

    fn also(mut self, operation: &'static str, trigger: Trigger, fault: Fault) -> Scenario {
        self.also.push((operation, trigger, fault));
        self
    }

    fn put_during_every(mut self, every: Duration) -> Scenario {
        self.put_during_every = Some(every);
        self
    }

    /// Expected: at most `requests` of the operation while the fault lasts.
    fn at_most(mut self, requests: u64) -> Scenario {
        self.max_requests = requests;
        self
    }

    /// Expected: no lease lost.
    fn keeps_leases(mut self) -> Scenario {
        self.keeps_leases = true;
        self
    }
}

fn run(test: &str, s: Scenario) {
    let stream = common::create_stream(s.shards);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    put(&stream, "before", 60, &puts);
    let mut b = builder(&proxy, &stream, &app);
    if let Some(t) = s.read_timeout {
        b = b.read_timeout(t);
    }
    let consumer = start(b, &app, puts.clone());
    consumer.wait_all("the records put before the fault", Duration::from_secs(30));

    // Requests of the faulted kind only (a matching scenario's bound is on
    // its own writes, not on the heartbeats and lock writes beside them).
    let counted = proxy.add_matching(
        s.operation,
        s.body_contains,
        Trigger::Next(0),
        Fault::aws(500, "never fired"),
    );
    let fault_started = Instant::now();
    let rule = proxy.add_matching(
        s.operation,
        s.body_contains,
        s.trigger.clone(),
        s.fault.clone(),
    );
    for (operation, trigger, fault) in &s.also {
        proxy.add(operation, trigger.clone(), fault.clone());
    }
    match s.put_during_every {
        Some(every) => {
            for group in 0..20 {
                put(&stream, &format!("during{group}"), 3, &puts);
                std::thread::sleep(every);
            }
        }
        None => put(&stream, "during", 60, &puts),
    }
    let fault_deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.finished(rule) {
        assert!(
            Instant::now() < fault_deadline,
            "{test}: the fault never ran its course ({} hits)",
            proxy.hits(rule)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let fault_time = fault_started.elapsed();
    let during = proxy.seen(counted);
    let hits = proxy.hits(rule);
    put(&stream, "after", 60, &puts);
    let recovery = consumer.wait_all("every record after the fault", Duration::from_secs(40));
    let leases_lost = consumer.leases_lost();
    let (total, delivered, lost, duplicated) = consumer.finish(&app);
    println!(
        "FAULT | {} | {} | {} | {} | {} | {} | {} | {} {} requests in {:.1} s ({} faulted) | recovered {:.1} s after",
        s.fault.name(),
        s.operation,
        test,
        total,
        delivered,
        lost,
        duplicated,
        during,
        s.operation,
        fault_time.as_secs_f64(),
        hits,
        recovery.as_secs_f64()
    );
    assert!(hits > 0, "{test}: the fault never fired");
    if s.keeps_leases {
        assert_eq!(leases_lost, 0.0, "{test}: leases lost");
    }
    assert!(
        during <= s.max_requests,
        "{test}: {during} {} requests while the fault lasted {fault_time:?}: no backoff?",
        s.operation
    );
}

const CHECKPOINT: &str = "#checkpoint";
const CONDITION_FAILED: &str = "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException";
const DYNAMODB_THROTTLED: &str =
    "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException";
const MALFORMED: &str = r#"{"Records":7,"NextShardIterator":{}}"#;

/// Every matching request for `secs` seconds from the first one hit.
fn for_secs(secs: u64) -> Trigger {
    Trigger::For(Duration::from_secs(secs))
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// One test per row, named by it: `name: scenario;`.
macro_rules! fault_table {
    ($($name:ident: $scenario:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name), $scenario);
            }
        )*
    };
}

// Unthrottled, a reader calls GetRecords at most 5 times a second; each
// bound below allows that rate over the fault (plus its retries), far below
// a hot loop's thousands. The ticker writes each shard's checkpoint once
// per batch (200 ms here) and tries each write up to 3 times: the bounds on
// checkpoint writes are that, not a hot loop.
fault_table! {
    get_records_throughput_exceeded_for_2s:
        Scenario::new("GetRecords", for_secs(2), Fault::throughput_exceeded())
            .shards(2)
            .at_most(40);
    get_records_throughput_exceeded_next_6:
        Scenario::new("GetRecords", Trigger::Next(6), Fault::throughput_exceeded()).at_most(12);
    list_shards_limit_exceeded_for_2s:
        Scenario::new("ListShards", for_secs(2), Fault::aws(400, "LimitExceededException"))
            .shards(2)
            .at_most(12);
    get_records_500_html_for_2s:
        Scenario::new("GetRecords", for_secs(2), Fault::html(500)).at_most(20);
    get_records_503_empty_for_2s:
        Scenario::new("GetRecords", for_secs(2), Fault::empty(503)).at_most(20);
    get_records_reset_after_forward_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::ResetAfterForward).at_most(8);
    get_records_reset_before_forward_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::ResetBeforeForward).at_most(8);
    get_records_slower_than_read_timeout_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::Delay(ms(1500)))
            .read_timeout(ms(500))
            .at_most(8);
    get_records_expired_iterator_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::aws(400, "ExpiredIteratorException"))
            .at_most(8);
    get_records_truncated_json_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::TruncatedJson).at_most(8);
    get_records_malformed_json_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::Body(MALFORMED)).at_most(8);
    // A 200 reply without NextShardIterator (and without ChildShards) on an
    // open shard is malformed, not the shard's end: no SHARD_END checkpoint
    // (the checkpoint watcher flags one), and the shard is read on.
    get_records_empty_reply_next_3:
        Scenario::new("GetRecords", Trigger::Next(3), Fault::Body("{}")).at_most(8);
    // Expire the iterator once, then throttle the calls for a new one.
    get_shard_iterator_throttled_next_4:
        Scenario::new("GetShardIterator", Trigger::Next(4), Fault::throughput_exceeded())
            .also("GetRecords", Trigger::Next(1), Fault::aws(400, "ExpiredIteratorException"))
            .at_most(10);
    scan_of_lease_table_garbled_for_2s:
        Scenario::new("Scan", for_secs(2), Fault::Body("<html>not json</html>"))
            .shards(2)
            .at_most(12);
    checkpoint_throttled_for_2s:
        Scenario::new(
            "UpdateItem",
            for_secs(2),
            Fault::aws(400, "com.amazonaws.dynamodb.v20120810#ThrottlingException"),
        )
        .matching(CHECKPOINT)
        .shards(2)
        .at_most(2 * 3 * 12);
    checkpoint_condition_failed_next_1:
        Scenario::new("UpdateItem", Trigger::Next(1), Fault::aws(400, CONDITION_FAILED))
            .matching(CHECKPOINT)
            .at_most(3);
    // A write that landed but whose reply was lost: the client's retry fails
    // its condition (the counter moved on), and the table layer must see that
    // the row shows its own write, not a lost lease.
    checkpoint_reply_lost_next_1:
        Scenario::new("UpdateItem", Trigger::Next(1), Fault::ResetAfterForward)
            .matching(CHECKPOINT)
            .at_most(4)
            .keeps_leases();
    // Every lease-table write's reply lost for as long as the failover time
    // (3 s here), records arriving throughout: the writes land but the
    // worker hears nothing, its heartbeat lapses, and the ticker drops what
    // is read meanwhile. When a heartbeat then lands, those records must not
    // be skipped: a lapsed lease is given up as soon as its records are
    // dropped, and read again from its checkpoint.
    every_lease_write_reply_lost_for_the_failover_time:
        Scenario::new("UpdateItem", for_secs(3), Fault::ResetAfterForward)
            .shards(2)
            .put_during_every(ms(200))
            .at_most(2 * 3 * 5 * 4 + 2 * 3 * 4);
    // One heartbeat's reply lost: the next one lands within the fencing
    // window, so no lease is dropped.
    heartbeat_reply_lost_next_1:
        Scenario::new("UpdateItem", Trigger::Next(1), Fault::ResetAfterForward)
            .matching(common::HEARTBEAT)
            .at_most(4)
            .keeps_leases();
    // Heartbeats throttled for 2 s: one write per worker per round,
    // whatever the number of leases, and its retries.
    heartbeat_throttled_for_2s:
        Scenario::new("UpdateItem", for_secs(2), Fault::aws(400, DYNAMODB_THROTTLED))
            .matching(common::HEARTBEAT)
            .shards(2)
            .at_most(3 * 4);
}

#[test]
fn random_faults_on_every_operation_for_3s() {
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    put(&stream, "before", 60, &puts);
    let consumer = start(builder(&proxy, &stream, &app), &app, puts.clone());
    consumer.wait_all("the records put before the faults", Duration::from_secs(30));
    let before = proxy.all_requests().values().sum::<u64>();
    let started = Instant::now();
    let faults = [
        Fault::throughput_exceeded(),
        Fault::html(503),
        Fault::ResetAfterForward,
        Fault::TruncatedJson,
        Fault::aws(400, "ThrottlingException"),
    ];
    let rules: Vec<_> = faults
        .iter()
        .map(|f| proxy.add("*", Trigger::Chance(0.08), f.clone()))
        .collect();
    put(&stream, "during", 60, &puts);
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.clear();
    let during = proxy.all_requests().values().sum::<u64>() - before;
    let hits: u64 = rules.iter().map(|r| proxy.hits(*r)).sum();
    put(&stream, "after", 60, &puts);
    let recovery = consumer.wait_all("every record after the faults", Duration::from_secs(40));
    let (total, delivered, lost, duplicated) = consumer.finish(&app);
    println!(
        "FAULT | random mix, p = 0.08 each | every operation | random_faults_on_every_operation_for_3s | {total} | {delivered} | {lost} | {duplicated} | {during} requests in 3.0 s ({hits} faulted) | recovered {:.1} s after",
        recovery.as_secs_f64()
    );
    assert!(hits > 0);
    assert!(during <= 150, "{during} requests in 3 s");
}

// Throttled for longer than the client's own retries last: startup waits
// it out (the stream is known to exist by then) instead of failing `run`.
#[test]
fn startup_waits_out_a_list_shards_throttled_for_2s() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    proxy.add(
        "ListShards",
        Trigger::For(Duration::from_secs(2)),
        Fault::aws(400, "LimitExceededException"),
    );
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    put(&stream, "x", 30, &puts);
    let consumer = start(builder(&proxy, &stream, &app), &app, puts.clone());
    let took = consumer.wait_all("every record", Duration::from_secs(30));
    let (total, delivered, lost, duplicated) = consumer.finish(&app);
    println!(
        "FAULT | 400 LimitExceededException for 2 s at startup | ListShards | startup_waits_out_a_list_shards_throttled_for_2s | {total} | {delivered} | {lost} | {duplicated} | {} ListShards requests ({} faulted) | delivered {:.1} s after start",
        proxy.requests("ListShards"),
        proxy.faults("ListShards"),
        took.as_secs_f64()
    );
}

#[test]
fn startup_survives_a_few_throttled_and_failed_calls() {
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    proxy.add("DescribeStreamSummary", Trigger::Next(1), Fault::html(503));
    proxy.add(
        "ListShards",
        Trigger::Next(2),
        Fault::aws(400, "LimitExceededException"),
    );
    proxy.add("DescribeTable", Trigger::Next(1), Fault::ResetBeforeForward);
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    put(&stream, "x", 30, &puts);
    let consumer = start(builder(&proxy, &stream, &app), &app, puts.clone());
    let took = consumer.wait_all("every record", Duration::from_secs(30));
    let (total, delivered, lost, duplicated) = consumer.finish(&app);
    println!(
        "FAULT | 503 + LimitExceeded + reset at startup | DescribeStreamSummary, ListShards, DescribeTable | startup_survives_a_few_throttled_and_failed_calls | {total} | {delivered} | {lost} | {duplicated} | {} startup requests (4 faulted) | delivered {:.1} s after start",
        proxy.requests("DescribeStreamSummary")
            + proxy.requests("ListShards")
            + proxy.requests("DescribeTable"),
        took.as_secs_f64()
    );
}

// A reader stopped while inside a slow GetRecords (its lease was lost and
// taken back under a new reader) must never call the message handler with
// that call's reply: not while `run` stops, and not after it returned.
#[test]
fn no_message_handler_call_from_a_stopped_reader_or_after_run_returns() {
    const DELAY: Duration = Duration::from_secs(5);
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    let puts: Arc<Mutex<Vec<Put>>> = Arc::default();
    put(&stream, "before", 10, &puts);
    let returned = Arc::new(AtomicBool::new(false));
    let late_calls = Arc::new(AtomicUsize::new(0));
    // Which reader thread mapped each record.
    let mapped: Arc<Mutex<Vec<(String, ThreadId)>>> = Arc::default();
    let handler = {
        let (returned, late_calls, mapped) = (returned.clone(), late_calls.clone(), mapped.clone());
        move |r: &kinesis_consumer::Record| {
            if returned.load(Ordering::SeqCst) {
                late_calls.fetch_add(1, Ordering::SeqCst);
            }
            let data = String::from_utf8_lossy(r.data()).into_owned();
            mapped
                .lock()
                .unwrap()
                .push((data.clone(), std::thread::current().id()));
            data
        }
    };
    let consumer = builder(&proxy, &stream, &app)
        .message_handler(handler)
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let delivered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sink = delivered.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch: Batch<String>| {
            let mut sink = sink.lock().unwrap();
            sink.extend(batch.messages().map(|m| m.value().clone()));
            Ok(())
        })
    });
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                !thread.is_finished(),
                "the consumer stopped waiting for {what}"
            );
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the records put before", &|| {
        delivered.lock().unwrap().len() == 10
    });
    // The reader's next two calls are forwarded at once, their replies held
    // back; the second is sent after the late records are put, so its
    // reply holds them.
    let slow = proxy.add("GetRecords", Trigger::Next(2), Fault::Delay(DELAY));
    wait_for("a held-back GetRecords", &|| proxy.hits(slow) >= 1);
    put(&stream, "late", 10, &puts);
    wait_for("a second held-back GetRecords", &|| proxy.hits(slow) >= 2);
    let held_back_at = Instant::now();
    // Lose the lease (no heartbeat lands for the failover time): its reader
    // is stopped inside that call, and the lease is taken back under a new
    // reader, which reads the late records.
    proxy.add_matching(
        "UpdateItem",
        Some(common::HEARTBEAT),
        for_secs(3),
        Fault::aws(500, "InternalServerError"),
    );
    wait_for("the late records, from a new reader", &|| {
        delivered.lock().unwrap().len() == 20
    });
    stop.shutdown();
    let result = thread.join().unwrap();
    returned.store(true, Ordering::SeqCst);
    let run_returned_after = held_back_at.elapsed();
    result.expect("the consumer ends without an error");
    // Let the held-back reply reach the stopped reader, if it has not yet.
    std::thread::sleep((DELAY + Duration::from_secs(1)).saturating_sub(held_back_at.elapsed()));
    let mapped = mapped.lock().unwrap().clone();
    let old_readers: HashSet<ThreadId> = mapped
        .iter()
        .filter(|(data, _)| data.starts_with("before"))
        .map(|(_, thread)| *thread)
        .collect();
    let late_by_old_readers = mapped
        .iter()
        .filter(|(data, thread)| data.starts_with("late") && old_readers.contains(thread))
        .count();
    println!(
        "FAULT | GetRecords reply held back {DELAY:?}, lease lost meanwhile, then shutdown | GetRecords, UpdateItem | no_message_handler_call_from_a_stopped_reader_or_after_run_returns | {} | {} | 0 | - | run returned {:.1} s after the reply was held back | {late_by_old_readers} late records mapped by stopped readers, {} message handler calls after run returned",
        puts.lock().unwrap().len(),
        delivered.lock().unwrap().len(),
        run_returned_after.as_secs_f64(),
        late_calls.load(Ordering::SeqCst)
    );
    assert_eq!(
        late_calls.load(Ordering::SeqCst),
        0,
        "message handler calls after run returned"
    );
    assert_eq!(
        late_by_old_readers, 0,
        "late records mapped by a reader stopped before they arrived"
    );
}
