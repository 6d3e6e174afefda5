//! Metrics end to end: a consumer on the emulators publishes to moto's
//! CloudWatch, and the tests read back what arrived (names, dimensions per
//! level, values for a known workload); and a CloudWatch that never answers
//! neither slows consumption nor loses track of what it dropped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use kinesis_consumer::__test_support::{CloudWatchClient, Dimension, MetricDescription};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{
    ConsumerBuilder, MetricSample, MetricsDimension, MetricsHandle, MetricsLevel, Payload,
    ShutdownHandle,
};

fn builder(stream: &str, app: &str, cloudwatch_url: &str) -> ConsumerBuilder<Payload> {
    common::consumer_builder(stream, app)
        .cloudwatch_endpoint_url(cloudwatch_url)
        .metrics_period(Duration::from_millis(500))
}

/// Puts `count` records of `size` bytes (data) over 16 partition keys.
fn put(stream: &str, count: usize, size: usize) -> u64 {
    let k = common::kinesis();
    let mut bytes = 0;
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| {
            let partition_key = format!("key-{}", i % 16);
            let data = format!("{i:0size$}").into_bytes();
            bytes += (partition_key.len() + data.len()) as u64;
            PutRecordsEntry {
                partition_key,
                explicit_hash_key: None,
                data,
            }
        })
        .collect();
    for chunk in entries.chunks(500) {
        for r in k.put_records(stream, chunk).unwrap() {
            r.unwrap();
        }
    }
    bytes
}

struct Running {
    stop: ShutdownHandle,
    thread: JoinHandle<kinesis_consumer::Result<()>>,
    seen: Arc<AtomicUsize>,
    metrics: MetricsHandle,
    worker_id: String,
}

fn start(builder: ConsumerBuilder<Payload>) -> Running {
    let consumer = builder.build().unwrap();
    let stop = consumer.shutdown_handle();
    let metrics = consumer.metrics();
    let worker_id = consumer.worker_id().to_owned();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            counter.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        })
    });
    Running {
        stop,
        thread,
        seen,
        metrics,
        worker_id,
    }
}

impl Running {
    fn wait_for_records(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.seen.load(Ordering::SeqCst) < count {
            assert!(!self.thread.is_finished(), "the consumer stopped early");
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {count} records seen",
                self.seen.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the consumer; how long `run` took to return.
    fn stop(self) -> Duration {
        let asked = Instant::now();
        self.stop.shutdown();
        self.thread.join().unwrap().unwrap();
        asked.elapsed()
    }
}

fn cloudwatch(url: &str) -> CloudWatchClient {
    CloudWatchClient::new(&common::config(url)).unwrap()
}

/// The sum of a metric over every data point of the last ten minutes.
fn published_sum(
    cw: &CloudWatchClient,
    namespace: &str,
    name: &str,
    dimensions: &[Dimension],
) -> f64 {
    let now = SystemTime::now();
    cw.get_metric_statistics(
        namespace,
        name,
        dimensions,
        now - Duration::from_secs(600),
        now + Duration::from_secs(600),
        Duration::from_secs(60),
    )
    .unwrap()
    .iter()
    .map(|d| d.sum.unwrap_or(0.0))
    .sum()
}

/// The distinct metrics of a namespace (moto lists a metric once per put).
fn list_metrics(cw: &CloudWatchClient, namespace: &str) -> Vec<MetricDescription> {
    let mut distinct: Vec<MetricDescription> = Vec::new();
    for m in cw.list_metrics(namespace, None).unwrap() {
        if !distinct.contains(&m) {
            distinct.push(m);
        }
    }
    distinct
}

fn dimension_names(m: &MetricDescription) -> Vec<&str> {
    m.dimensions.iter().map(|d| d.name.as_str()).collect()
}

fn dims(sample: &MetricSample) -> Vec<Dimension> {
    sample
        .dimensions
        .iter()
        .map(|(n, v)| Dimension::new(*n, v.clone()))
        .collect()
}

fn snapshot_sum(metrics: &MetricsHandle, name: &str) -> f64 {
    metrics
        .snapshot()
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.statistics.sum)
        .sum()
}

const SUMMARY_METRICS: &[&str] = &[
    "RecordsProcessed",
    "DataBytesProcessed",
    "MillisBehindLatest",
    "ProcessTask.Time",
    "BatchSize",
    "GetRecords.Success",
    "Checkpoint.Success",
    "LeasesHeld",
    "LeasesLost",
    "LeasesTaken",
    "LeasesStolen",
    "Workers",
];
const DETAILED_ONLY_METRICS: &[&str] = &[
    "GetRecords.Time",
    "RecordsDeaggregated",
    "Checkpoint.Time",
    "ShardsBlockedOnParent",
];

#[test]
fn summary_level_publishes_totals_without_shard_detail() {
    let moto = common::moto();
    let stream = common::create_stream(2);
    let app = common::unique_name("metrics-summary");
    let namespace = common::unique_name("ns");
    let records = 300;
    let bytes = put(&stream, records, 100);
    let running = start(
        builder(&stream, &app, moto)
            .metrics_level(MetricsLevel::Summary)
            .metrics_namespace(&namespace)
            .metrics_dimensions(&[
                MetricsDimension::Operation,
                MetricsDimension::ShardId,
                MetricsDimension::WorkerIdentifier,
                MetricsDimension::StreamName,
            ]),
    );
    let metrics = running.metrics.clone();
    let worker_id = running.worker_id.clone();
    running.wait_for_records(records, Duration::from_secs(20));
    // Let a renewal and a take round be measured too.
    std::thread::sleep(Duration::from_millis(1200));
    let stopped_in = running.stop();

    // The in-process view: exact values for the known workload.
    assert_eq!(snapshot_sum(&metrics, "RecordsProcessed"), records as f64);
    assert_eq!(snapshot_sum(&metrics, "DataBytesProcessed"), bytes as f64);
    let stats = metrics.publish_stats();
    assert_eq!(stats.datums_dropped, 0, "{stats:?}");
    assert_eq!(stats.failed_requests, 0, "{stats:?}");
    assert!(stats.requests >= 1, "{stats:?}");

    // What CloudWatch got.
    let cw = cloudwatch(moto);
    let listed = list_metrics(&cw, &namespace);
    let names: BTreeSet<&str> = listed.iter().map(|m| m.metric_name.as_str()).collect();
    for name in SUMMARY_METRICS {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    for name in DETAILED_ONLY_METRICS {
        assert!(!names.contains(name), "{name} published at SUMMARY");
    }
    assert_eq!(
        listed.len(),
        names.len(),
        "one series per metric: {listed:?}"
    );
    for m in &listed {
        assert_eq!(
            dimension_names(m),
            vec!["Operation", "WorkerIdentifier", "StreamName"],
            "{m:?}"
        );
        assert!(
            m.dimensions
                .contains(&Dimension::new("WorkerIdentifier", &worker_id))
        );
        assert!(
            m.dimensions
                .contains(&Dimension::new("StreamName", &stream))
        );
    }
    let processed = listed
        .iter()
        .find(|m| m.metric_name == "RecordsProcessed")
        .unwrap();
    assert!(
        processed
            .dimensions
            .contains(&Dimension::new("Operation", "ProcessTask"))
    );
    assert_eq!(
        published_sum(&cw, &namespace, "RecordsProcessed", &processed.dimensions),
        records as f64
    );
    let data_bytes = listed
        .iter()
        .find(|m| m.metric_name == "DataBytesProcessed")
        .unwrap();
    assert_eq!(
        published_sum(
            &cw,
            &namespace,
            "DataBytesProcessed",
            &data_bytes.dimensions
        ),
        bytes as f64
    );
    // Every statistic set that was sent matches the in-process totals.
    for sample in metrics.snapshot() {
        let sent = published_sum(&cw, &namespace, sample.name, &dims(&sample));
        assert!(
            (sent - sample.statistics.sum).abs() < 1e-6,
            "{}: published {sent}, recorded {}",
            sample.name,
            sample.statistics.sum
        );
    }
    eprintln!(
        "summary: {records} records, {bytes} bytes; {} series; {} PutMetricData requests, {} data sent, {} dropped; run returned {stopped_in:?} after shutdown",
        listed.len(),
        stats.requests,
        stats.datums_sent,
        stats.datums_dropped
    );
}

#[test]
fn detailed_level_breaks_down_by_shard() {
    let moto = common::moto();
    let stream = common::create_stream(2);
    let app = common::unique_name("metrics-detailed");
    let namespace = common::unique_name("ns");
    let records = 200;
    put(&stream, records, 20);
    let running = start(
        builder(&stream, &app, moto)
            .metrics_level(MetricsLevel::Detailed)
            .metrics_namespace(&namespace),
    );
    let metrics = running.metrics.clone();
    running.wait_for_records(records, Duration::from_secs(20));
    // Let a renewal and a take round be measured too.
    std::thread::sleep(Duration::from_millis(1200));
    running.stop();

    let shards: BTreeSet<String> = common::kinesis()
        .list_shards(&stream, None)
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    let cw = cloudwatch(moto);
    let listed = list_metrics(&cw, &namespace);
    // Metric name → the ShardId values it was published with.
    let mut by_name: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
    for m in &listed {
        let names = dimension_names(m);
        assert!(
            names == ["Operation", "ShardId"] || names == ["Operation"],
            "default dimensions are Operation and ShardId: {m:?}"
        );
        let shard = m
            .dimensions
            .iter()
            .find(|d| d.name == "ShardId")
            .map(|d| d.value.as_str());
        by_name.entry(&m.metric_name).or_default().insert(shard);
    }
    let all_shards: BTreeSet<Option<&str>> = shards.iter().map(|s| Some(s.as_str())).collect();
    for per_shard in [
        "RecordsProcessed",
        "DataBytesProcessed",
        "GetRecords.Success",
        "GetRecords.Time",
        "RecordsDeaggregated",
        "Checkpoint.Success",
        "Checkpoint.Time",
    ] {
        assert_eq!(by_name.get(per_shard), Some(&all_shards), "{per_shard}");
    }
    for worker_wide in ["ProcessTask.Time", "BatchSize", "LeasesHeld", "Workers"] {
        assert_eq!(
            by_name.get(worker_wide),
            Some(&BTreeSet::from([None])),
            "{worker_wide}"
        );
    }
    assert!(by_name.contains_key("ShardsBlockedOnParent"));
    let mut total = 0.0;
    for shard in &shards {
        let per_shard = published_sum(
            &cw,
            &namespace,
            "RecordsProcessed",
            &[
                Dimension::new("Operation", "ProcessTask"),
                Dimension::new("ShardId", shard),
            ],
        );
        assert!(per_shard > 0.0, "{shard} processed nothing");
        total += per_shard;
    }
    assert_eq!(total, records as f64);
    assert_eq!(snapshot_sum(&metrics, "RecordsProcessed"), records as f64);
    // Plain records: nothing was de-aggregated.
    assert_eq!(snapshot_sum(&metrics, "RecordsDeaggregated"), 0.0);
    let stats = metrics.publish_stats();
    assert_eq!(stats.datums_dropped, 0, "{stats:?}");
    eprintln!(
        "detailed: {records} records; {} series; {} PutMetricData requests, {} data sent",
        listed.len(),
        stats.requests,
        stats.datums_sent
    );
}

/// Accepts connections and never answers: the slowest CloudWatch there is.
fn blackhole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held = Mutex::new(Vec::new());
        for stream in listener.incoming().flatten() {
            held.lock().unwrap().push(stream);
        }
    });
    url
}

#[test]
fn silent_cloudwatch_neither_slows_nor_stops_consumption() {
    let stream = common::create_stream(2);
    let records = 500;
    put(&stream, records, 50);
    // The same workload, with metrics off and with a CloudWatch that
    // accepts connections but never answers.
    let mut times = Vec::new();
    let mut handles = Vec::new();
    for level in [MetricsLevel::None, MetricsLevel::Detailed] {
        let app = common::unique_name("metrics-blackhole");
        let started = Instant::now();
        let running = start(
            builder(&stream, &app, &blackhole())
                .metrics_level(level)
                .metrics_period(Duration::from_millis(100)),
        );
        let metrics = running.metrics.clone();
        running.wait_for_records(records, Duration::from_secs(15));
        let delivered_in = started.elapsed();
        // Publishing periods keep passing with nobody answering.
        std::thread::sleep(Duration::from_millis(1500));
        let stopped_in = running.stop();
        times.push((level, delivered_in, stopped_in));
        handles.push(metrics);
    }
    eprintln!("silent CloudWatch: {times:?}");
    let (off, on) = (times[0], times[1]);
    assert!(
        on.1 < off.1 + Duration::from_secs(3),
        "metrics slowed delivery: {on:?} against {off:?}"
    );
    // Shutdown waits for CloudWatch at most its grace time (3 s).
    assert!(on.2 < Duration::from_secs(6), "{on:?}");
    let metrics = &handles[1];
    assert_eq!(snapshot_sum(metrics, "RecordsProcessed"), records as f64);
    let stats = metrics.publish_stats();
    eprintln!("silent CloudWatch: {stats:?}");
    assert_eq!(stats.requests, 0);
    assert_eq!(stats.datums_sent, 0);
    assert!(stats.datums_dropped > 0, "{stats:?}");
    assert!(handles[0].snapshot().is_empty());
    assert_eq!(handles[0].publish_stats().datums_dropped, 0);
}

#[test]
fn refused_cloudwatch_counts_failed_requests() {
    let stream = common::create_stream(1);
    let app = common::unique_name("metrics-refused");
    // Nothing listens on a port just freed.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    put(&stream, 50, 10);
    let running = start(
        builder(&stream, &app, &closed)
            .metrics_level(MetricsLevel::Summary)
            .retry_wait(Duration::from_millis(10)),
    );
    let metrics = running.metrics.clone();
    running.wait_for_records(50, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    running.stop();
    let stats = metrics.publish_stats();
    eprintln!("refused CloudWatch: {stats:?}");
    assert!(stats.failed_requests >= 1, "{stats:?}");
    assert!(stats.datums_dropped > 0, "{stats:?}");
    assert_eq!(stats.requests, 0);
    assert_eq!(snapshot_sum(&metrics, "RecordsProcessed"), 50.0);
}

#[test]
fn publish_metrics_off_keeps_only_the_in_process_view() {
    let moto = common::moto();
    let stream = common::create_stream(1);
    let app = common::unique_name("metrics-local");
    let namespace = common::unique_name("ns");
    put(&stream, 40, 10);
    let running = start(
        builder(&stream, &app, moto)
            .metrics_level(MetricsLevel::Summary)
            .metrics_namespace(&namespace)
            .publish_metrics(false),
    );
    let metrics = running.metrics.clone();
    running.wait_for_records(40, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(700));
    running.stop();
    assert_eq!(snapshot_sum(&metrics, "RecordsProcessed"), 40.0);
    assert_eq!(
        metrics.publish_stats(),
        kinesis_consumer::PublishStats::default()
    );
    assert!(
        cloudwatch(moto)
            .list_metrics(&namespace, None)
            .unwrap()
            .is_empty()
    );
}
