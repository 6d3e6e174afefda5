//! Soak test: a bounded run against the local emulators with faults
//! injected at random and workers restarted now and then; it ends by
//! checking that every record put was delivered. Not part of `cargo test`.
//!
//! ```sh
//! cargo run --release --example soak -- [--minutes 10] [--shards 4] [--workers 2] [--rate 200]
//! ```
//!
//! It starts kinesis-local and dynalite on free 127.0.0.1 ports (installing
//! them with npm if missing, as the tests do) and the tests' fault proxy in
//! front of them. A producer puts `--rate` records per second; `--workers`
//! consumers share the stream through the proxy; every few seconds a random
//! fault is scripted on a random operation (throttling, 5xx with HTML or
//! empty bodies, resets, slow replies, expired iterators, truncated or
//! garbled JSON, refused or throttled lease writes); every ~40 s a worker is
//! stopped (gracefully, or by its handler failing a batch) and restarted.
//! At the end the faults are cleared and it waits for every record. Prints
//! one `SOAK |` summary line and exits with status 1 if anything was lost
//! or delivered out of order.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{Consumer, InitialPosition, SequenceNumber};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const USAGE: &str =
    "usage: soak [--minutes N (10)] [--shards N (4)] [--workers N (2)] [--rate N (200)]";

/// What the handlers saw: (data, shard, sequence number) in delivery order.
type Delivered = Arc<Mutex<Vec<(String, String, SequenceNumber)>>>;

fn main() {
    let args = support::Args::parse(USAGE, &["minutes", "shards", "workers", "rate"], &[]);
    let minutes = args.number(USAGE, "minutes", 10);
    let shards = args.number(USAGE, "shards", 4) as u32;
    let workers = args.number(USAGE, "workers", 2);
    let rate = args.number(USAGE, "rate", 200);
    common::init_log();
    let started = Instant::now();
    let run_for = Duration::from_secs(minutes * 60);
    let stream = common::create_stream(shards);
    let app = common::unique_name("soak");
    let proxy = Arc::new(Proxy::for_emulators());
    let delivered: Delivered = Arc::default();
    let put_count = Arc::new(AtomicU64::new(0));
    let put_seqs: Arc<Mutex<HashMap<String, (String, SequenceNumber)>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let running = Arc::new(AtomicBool::new(true));

    // Producer: `rate` records per second in batches every 100 ms.
    let producer = {
        let (stream, put_count, put_seqs, producing) = (
            stream.clone(),
            put_count.clone(),
            put_seqs.clone(),
            producing.clone(),
        );
        std::thread::spawn(move || {
            let k = common::kinesis();
            let per_tick = (rate / 10).max(1);
            let mut next = Instant::now();
            while producing.load(Ordering::Relaxed) {
                let base = put_count.load(Ordering::Relaxed);
                let entries: Vec<PutRecordsEntry> = (0..per_tick)
                    .map(|i| PutRecordsEntry {
                        partition_key: format!("pk-{}", (base + i) % 64),
                        explicit_hash_key: None,
                        data: format!("soak-{}", base + i).into_bytes(),
                    })
                    .collect();
                match k.put_records(&stream, &entries) {
                    Ok(results) => {
                        let mut seqs = put_seqs.lock().unwrap();
                        for (e, r) in entries.iter().zip(results) {
                            if let Ok(out) = r {
                                seqs.insert(
                                    String::from_utf8(e.data.clone()).unwrap(),
                                    (out.shard_id, out.sequence_number),
                                );
                            }
                        }
                        put_count.fetch_add(per_tick, Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("soak: put failed (will go on): {e}"),
                }
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };

    // Workers, each restarted by its supervisor until the run ends.
    let restarts = Arc::new(AtomicU64::new(0));
    let failed_batches = Arc::new(AtomicU64::new(0));
    let worker_errors = Arc::new(AtomicU64::new(0));
    let stop_requests: Arc<Mutex<Vec<Option<kinesis_consumer::ShutdownHandle>>>> =
        Arc::new(Mutex::new(vec![None; workers as usize]));
    let fail_next: Arc<Vec<AtomicBool>> =
        Arc::new((0..workers).map(|_| AtomicBool::new(false)).collect());
    let supervisors: Vec<_> = (0..workers as usize)
        .map(|w| {
            let (stream, app, proxy, delivered, running) = (
                stream.clone(),
                app.clone(),
                proxy.clone(),
                delivered.clone(),
                running.clone(),
            );
            let (restarts, failed_batches, worker_errors, stop_requests, fail_next) = (
                restarts.clone(),
                failed_batches.clone(),
                worker_errors.clone(),
                stop_requests.clone(),
                fail_next.clone(),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let consumer = Consumer::builder()
                        .app_name(&app)
                        .stream_name(&stream)
                        .region("us-east-1")
                        .endpoint_url(proxy.url())
                        .dynamodb_endpoint_url(proxy.url())
                        .cloudwatch_endpoint_url("http://127.0.0.1:9")
                        .credentials(kinesis_consumer::aws::credentials::Credentials::new(
                            "AKIDSOAK",
                            "soak-secret",
                        ))
                        .worker_id(format!("soak-worker-{w}"))
                        .initial_position(InitialPosition::TrimHorizon)
                        .batch_interval(Duration::from_millis(500))
                        .idle_time_between_reads(Duration::from_millis(200))
                        .failover_time(Duration::from_secs(3))
                        .shard_sync_interval(Duration::from_secs(10))
                        .read_timeout(Duration::from_secs(2))
                        .build()
                        .expect("valid settings");
                    stop_requests.lock().unwrap()[w] = Some(consumer.shutdown_handle());
                    let (delivered, fail_next, failed_batches) =
                        (delivered.clone(), fail_next.clone(), failed_batches.clone());
                    let result = consumer.run(move |batch| {
                        if !batch.is_empty() && fail_next[w].swap(false, Ordering::Relaxed) {
                            failed_batches.fetch_add(1, Ordering::Relaxed);
                            return Err(
                                std::io::Error::other("soak: injected handler failure").into()
                            );
                        }
                        let mut d = delivered.lock().unwrap();
                        for m in batch.messages() {
                            d.push((
                                String::from_utf8_lossy(m.value()).into_owned(),
                                m.record().shard_id().to_owned(),
                                m.record().sequence_number().clone(),
                            ));
                        }
                        Ok(())
                    });
                    match result {
                        Ok(()) => {}
                        Err(kinesis_consumer::Error::Handler(_)) => {}
                        Err(e) => {
                            worker_errors.fetch_add(1, Ordering::Relaxed);
                            eprintln!("soak: worker {w} stopped with an error (restarting): {e}");
                        }
                    }
                    if running.load(Ordering::Relaxed) {
                        restarts.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(500 + (w as u64 * 700)));
                    }
                }
            })
        })
        .collect();

    // Chaos: a random fault every few seconds, a worker restart every ~40 s.
    let mut rng = Rng(0x5EED_1234_ABCD_0001 ^ started.elapsed().as_nanos() as u64);
    let mut faults_by_kind: HashMap<String, u64> = HashMap::new();
    let mut last_restart = Instant::now();
    let kinds = |rng: &mut Rng| -> (&'static str, Option<&'static str>, Fault) {
        match rng.below(12) {
            0 => ("GetRecords", None, Fault::throughput_exceeded()),
            1 => ("GetRecords", None, Fault::html(500)),
            2 => ("GetRecords", None, Fault::empty(503)),
            3 => ("GetRecords", None, Fault::ResetAfterForward),
            4 => ("GetRecords", None, Fault::Delay(Duration::from_secs(3))),
            5 => (
                "GetRecords",
                None,
                Fault::aws(400, "ExpiredIteratorException"),
            ),
            6 => ("GetRecords", None, Fault::TruncatedJson),
            7 => (
                "ListShards",
                None,
                Fault::aws(400, "LimitExceededException"),
            ),
            8 => (
                "UpdateItem",
                Some("#checkpoint"),
                Fault::aws(400, "ThrottlingException"),
            ),
            9 => (
                "UpdateItem",
                Some("#checkpoint"),
                Fault::aws(400, "ConditionalCheckFailedException"),
            ),
            10 => ("UpdateItem", None, Fault::ResetAfterForward),
            _ => ("Scan", None, Fault::Body("<html>garbled</html>")),
        }
    };
    while started.elapsed() < run_for {
        proxy.clear();
        let (op, needle, fault) = kinds(&mut rng);
        let trigger = match rng.below(3) {
            0 => Trigger::Next(1 + rng.below(5) as u32),
            1 => Trigger::For(Duration::from_millis(500 + rng.below(3000))),
            _ => Trigger::Chance(0.2),
        };
        *faults_by_kind
            .entry(format!("{op} {}", fault.name()))
            .or_default() += 1;
        proxy.add_matching(op, needle, trigger, fault);
        if last_restart.elapsed() > Duration::from_secs(40) {
            last_restart = Instant::now();
            let w = rng.below(workers) as usize;
            if rng.below(2) == 0 {
                fail_next[w].store(true, Ordering::Relaxed);
            } else if let Some(h) = &stop_requests.lock().unwrap()[w] {
                h.shutdown();
            }
        }
        std::thread::sleep(Duration::from_millis(3000 + rng.below(3000)));
    }

    // Drain: no more faults or puts; wait for every record.
    proxy.clear();
    producing.store(false, Ordering::Relaxed);
    producer.join().unwrap();
    let expected: HashSet<String> = put_seqs.lock().unwrap().keys().cloned().collect();
    let drain_started = Instant::now();
    loop {
        let have: HashSet<String> = delivered
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.0.clone())
            .collect();
        if expected.is_subset(&have) || drain_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    running.store(false, Ordering::Relaxed);
    for h in stop_requests.lock().unwrap().iter().flatten() {
        h.shutdown();
    }
    for s in supervisors {
        s.join().unwrap();
    }

    let delivered = delivered.lock().unwrap().clone();
    let distinct: HashSet<&str> = delivered.iter().map(|d| d.0.as_str()).collect();
    let lost = expected
        .iter()
        .filter(|d| !distinct.contains(d.as_str()))
        .count();
    let duplicated = delivered.len() - distinct.len();
    // Where the lost records lie: at a shard's tail (a reader that stopped)
    // or between delivered ones (records skipped).
    let put = put_seqs.lock().unwrap().clone();
    let mut lost_by_shard: HashMap<&str, Vec<&SequenceNumber>> = HashMap::new();
    for d in expected.iter().filter(|d| !distinct.contains(d.as_str())) {
        if let Some((shard, seq)) = put.get(d) {
            lost_by_shard.entry(shard.as_str()).or_default().push(seq);
        }
    }
    for (shard, mut seqs) in lost_by_shard {
        seqs.sort();
        let last_delivered = delivered
            .iter()
            .filter(|d| d.1 == shard)
            .map(|d| &d.2)
            .max();
        eprintln!(
            "soak: {shard}: {} lost, sequence numbers {} to {}; last delivered {:?}",
            seqs.len(),
            seqs[0],
            seqs[seqs.len() - 1],
            last_delivered
        );
    }
    // First deliveries in sequence order per shard.
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, &SequenceNumber> = HashMap::new();
    let mut out_of_order = 0;
    for (data, shard, seq) in &delivered {
        if !seen.insert(data.as_str()) {
            continue;
        }
        if last.get(shard.as_str()).is_some_and(|prev| seq <= *prev) {
            out_of_order += 1;
        }
        last.insert(shard, seq);
    }
    let mut kinds: Vec<_> = faults_by_kind.into_iter().collect();
    kinds.sort();
    let requests = proxy.all_requests();
    let mut ops: Vec<_> = requests.iter().collect();
    ops.sort();
    eprintln!("soak: faults scripted: {kinds:?}");
    eprintln!("soak: requests through the proxy: {ops:?}");
    let faulted: u64 = requests.keys().map(|op| proxy.faults(op)).sum();
    println!(
        "SOAK | {:.1} min | {shards} shards, {workers} workers | put {} | delivered {} | lost {lost} | duplicated {duplicated} | out of order {out_of_order} | {} faults scripted, {faulted} requests faulted of {} | {} worker restarts ({} by a failed batch, {} after an error) | drained in {:.1} s",
        started.elapsed().as_secs_f64() / 60.0,
        expected.len(),
        distinct.len(),
        kinds.iter().map(|k| k.1).sum::<u64>(),
        requests.values().sum::<u64>(),
        restarts.load(Ordering::Relaxed),
        failed_batches.load(Ordering::Relaxed),
        worker_errors.load(Ordering::Relaxed),
        drain_started.elapsed().as_secs_f64(),
    );
    if lost > 0 || out_of_order > 0 {
        std::process::exit(1);
    }
}
