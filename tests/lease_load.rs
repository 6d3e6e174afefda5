//! Per-lease load on the emulators, read through the Prometheus endpoint:
//! two shards written at rates 5 to 1 show bytes read per second, and the
//! handler's busy time (the batch handler's split by records, or each
//! processor's own), in that ratio; the worker's load is their sum. The
//! lease rows carry the same loads, left there by the checkpoints.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{
    Checkpointer, HandlerResult, Lease, MetricsLevel, Payload, ShardBatch, ShardProcessor,
};

/// How many times faster the hot shard is written than the cold one.
const RATIO: f64 = 5.0;

/// How far the measured ratios may be from `RATIO`: both shards are read
/// at the same moments and smoothed alike, so what is left is the batches
/// that caught one shard's records and not yet the other's.
const TOLERANCE: f64 = 0.15;

/// One GET over HTTP/1.1: the body.
fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The samples of one gauge, by their `shard` label ("" for none).
fn gauge(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            let shard = labels
                .split_once("shard=\"")
                .map_or("", |(_, rest)| rest.split('"').next().unwrap());
            (shard.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// A record of 1 KB (and a 4-byte partition key) to the shard holding
/// `hash_key`.
fn entry(hash_key: &str) -> PutRecordsEntry {
    PutRecordsEntry {
        partition_key: "load".into(),
        explicit_hash_key: Some(hash_key.to_owned()),
        data: vec![b'x'; 1000],
    }
}

/// About 2 ms of work per record, so that the handler's time shows.
const WORK_PER_RECORD: Duration = Duration::from_millis(2);

/// A shard processor doing that work.
struct Working;

impl ShardProcessor<Payload> for Working {
    fn process(&mut self, records: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult {
        std::thread::sleep(WORK_PER_RECORD * records.messages().len() as u32);
        Ok(())
    }
}

#[test]
fn two_shards_written_at_two_rates_show_that_ratio_in_bytes_and_handler_time() {
    measure_at_two_rates(false);
}

#[test]
fn with_processors_each_shard_shows_its_own_processor_time() {
    measure_at_two_rates(true);
}

#[test]
fn the_lease_rows_carry_the_loads_in_that_ratio() {
    let run = run_at_two_rates(false);
    let load_of = |shard: &str| {
        let lease = run.leases.iter().find(|l| l.shard_id == shard).unwrap();
        lease.load.unwrap_or_else(|| panic!("no load on {lease:?}"))
    };
    let (hot, cold) = (load_of(&run.hot), load_of(&run.cold));
    println!("rows: hot {hot:?}, cold {cold:?}");
    for (what, h, c) in [
        ("bytes", hot.bytes_per_second, cold.bytes_per_second),
        ("records", hot.records_per_second, cold.records_per_second),
        ("busy", hot.busy_fraction, cold.busy_fraction),
    ] {
        let ratio = h / c;
        assert!(
            (ratio / RATIO - 1.0).abs() <= TOLERANCE,
            "{what} on the rows: hot/cold {ratio:.2}, not {RATIO} ± {TOLERANCE}"
        );
    }
    // The rows' bytes are what the worker measured (each as of its last
    // checkpoint, up to a batch interval before the /metrics read).
    let shown = gauge(&run.metrics, "kinesis_consumer_lease_load_bytes_per_second");
    let row_sum = hot.bytes_per_second + cold.bytes_per_second;
    let shown_sum = shown[&run.hot] + shown[&run.cold];
    assert!(
        (row_sum / shown_sum - 1.0).abs() <= TOLERANCE,
        "rows {row_sum:.0} B/s, /metrics {shown_sum:.0} B/s"
    );
    // The leases example shows them.
    let text = common::leases_example(&["--app", &run.app, "--observe-ms", "0"]);
    let loads = text
        .lines()
        .filter(|l| l.contains(" load ") && l.contains(" KB/s"))
        .count();
    assert_eq!(loads, 2, "{text}");
}

/// What a run at two rates left: `/metrics` read during it, and the lease
/// rows read right after that, the writes still going.
struct Run {
    metrics: String,
    leases: Vec<Lease>,
    put_per_second: f64,
    app: String,
    hot: String,
    cold: String,
}

/// Writes two shards at rates 5 to 1 for 20 s under a consumer (batch
/// handler, or `processors`) and checks the loads its `/metrics` shows.
fn measure_at_two_rates(processors: bool) {
    let Run {
        metrics: text,
        put_per_second,
        hot,
        cold,
        ..
    } = run_at_two_rates(processors);
    let (h, c) = (hot.as_str(), cold.as_str());
    let bytes = gauge(&text, "kinesis_consumer_lease_load_bytes_per_second");
    let busy = gauge(&text, "kinesis_consumer_lease_load_busy_ratio");
    let records = gauge(&text, "kinesis_consumer_lease_load_records_per_second");
    println!(
        "bytes/s {bytes:?}, busy {busy:?}, records/s {records:?}, put {put_per_second:.0} B/s"
    );
    for (what, figures) in [("bytes", &bytes), ("busy", &busy), ("records", &records)] {
        let ratio = figures[h] / figures[c];
        assert!(
            (ratio / RATIO - 1.0).abs() <= TOLERANCE,
            "{what}: hot/cold {ratio:.2}, not {RATIO} ± {TOLERANCE}: {figures:?}"
        );
    }
    // What was read is what was put: within the smoothing's lag behind a
    // start a few seconds before the writes (a broad band, not a ratio).
    let read_per_second = bytes[h] + bytes[c];
    assert!(
        read_per_second > 0.6 * put_per_second && read_per_second < 1.2 * put_per_second,
        "read {read_per_second:.0} B/s, put {put_per_second:.0} B/s"
    );
    let worker = gauge(&text, "kinesis_consumer_worker_load_bytes_per_second")[""];
    assert!((worker - read_per_second).abs() < 1e-6 * worker, "{text}");
}

/// Writes two shards at rates 5 to 1 for 20 s under a consumer (batch
/// handler, or `processors`), and reads its `/metrics` and the lease rows
/// at the end, the writes still going.
fn run_at_two_rates(processors: bool) -> Run {
    let stream = common::create_stream(2);
    let app = common::unique_name("load");
    let shards = common::kinesis().list_shards(&stream, None).unwrap();
    let (hot, cold) = (&shards[0], &shards[1]);
    let consumer = common::consumer_builder(&stream, &app)
        .metrics_level(MetricsLevel::Detailed)
        .publish_metrics(false)
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let metrics = consumer.metrics();
    let endpoint = metrics.serve("0").unwrap();
    let running = std::thread::spawn(move || match processors {
        true => consumer.run_processors(|_shard| Working),
        false => consumer.run(|batch: kinesis_consumer::Batch<Payload>| {
            std::thread::sleep(WORK_PER_RECORD * batch.len() as u32);
            Ok(())
        }),
    });
    // Both leases held (and their meters started) before writing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics
        .status()
        .shards
        .iter()
        .filter(|s| s.held_here)
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:?}", metrics.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let producing = Arc::new(AtomicBool::new(true));
    let flag = producing.clone();
    let (hot_key, cold_key) = (
        hot.starting_hash_key.clone(),
        cold.starting_hash_key.clone(),
    );
    let producer = std::thread::spawn(move || {
        let kinesis = common::kinesis();
        let started = Instant::now();
        let mut bytes = 0usize;
        while flag.load(Ordering::Relaxed) {
            let mut entries: Vec<PutRecordsEntry> =
                (0..RATIO as usize).map(|_| entry(&hot_key)).collect();
            entries.push(entry(&cold_key));
            for result in kinesis.put_records(&stream, &entries).unwrap() {
                result.unwrap();
            }
            bytes += entries.len() * 1004;
            std::thread::sleep(Duration::from_millis(100));
        }
        bytes as f64 / started.elapsed().as_secs_f64()
    });
    // A half-life of reading at steady rates.
    std::thread::sleep(Duration::from_secs(20));
    let text = get(endpoint.local_addr(), "/metrics");
    let dynamodb = common::config(&common::emulators().dynamodb_url);
    let leases = kinesis_consumer::list_leases(&dynamodb, &app).unwrap();
    producing.store(false, Ordering::Relaxed);
    let put_per_second = producer.join().unwrap();
    stop.shutdown();
    running.join().unwrap().unwrap();
    Run {
        metrics: text,
        leases,
        put_per_second,
        app,
        hot: hot.shard_id.clone(),
        cold: cold.shard_id.clone(),
    }
}
