//! Balance by load in a leader-run fleet, on the emulators (issue 27): 8
//! shards, 2 of them written 20 times faster than the others; one worker
//! takes every lease and measures them, then two more join. The leader
//! (the first worker) moves leases by load: once the owners stand still,
//! the two hot shards are on different workers, each worker's bytes/s is
//! within 1.25 x what any assignment can promise it, and every record is
//! delivered exactly once across the moves (a record being its shard and
//! sequence number). The same scenario runs with the batch API and with
//! record processors; scripts/test.sh runs both again through enhanced
//! fan-out (`KINESIS_TEST_RETRIEVAL=fan-out`).
//!
//! Why not within 1.25 x the mean: the hot shards carry 40 of the 46
//! units, so a worker holding one carries 20, 1.30 x the mean of 15.3,
//! whatever the assignment. A shard cannot be split: each worker's
//! target is the fair share of the rest once the shards heavier than it
//! have a worker each, or the heaviest shard it holds when that is more
//! (the balancer's rule, docs/many-workers.md).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{
    BalanceBy, Batch, Checkpoint, Checkpointer, Consumer, Coordination, HandlerResult, Payload,
    Record, ShardBatch, ShardProcessor,
};

/// How many times faster the hot shards are written.
const HOT: usize = 20;
const RECORD_BYTES: usize = 300;
/// Owners unchanged this long: the leader has stopped moving (8 of its
/// rounds at the tests' 3 s failover time, more than the 5-round cooldown).
const STILL: Duration = Duration::from_secs(8);
/// What is measured once still.
const WINDOW: Duration = Duration::from_secs(10);

/// One record as a worker's handler saw it.
struct Delivered {
    worker: String,
    shard: String,
    sequence: String,
    data: String,
    at: Instant,
}

impl Delivered {
    /// The record's identity: its shard and sequence number.
    fn key(&self) -> (&str, &str) {
        (&self.shard, &self.sequence)
    }
}

/// What the workers' handlers saw: records, and lease events (gained,
/// lost, asked for) with when, to explain a record seen twice.
#[derive(Default)]
struct Log {
    records: Mutex<Vec<Delivered>>,
    events: Mutex<Vec<(Instant, String)>>,
}

impl Log {
    fn note_records(&self, worker: &str, records: &[&Record], at: Instant) {
        self.records
            .lock()
            .unwrap()
            .extend(records.iter().map(|r| Delivered {
                worker: worker.to_owned(),
                shard: r.shard_id().to_owned(),
                sequence: r.sequence_number().as_str().to_owned(),
                data: String::from_utf8_lossy(r.data()).into_owned(),
                at,
            }));
    }

    fn note_event(&self, worker: &str, shard: &str, what: &str) {
        let line = format!("{worker} {shard}: {what}");
        self.events.lock().unwrap().push((Instant::now(), line));
    }
}

/// How a worker hands its records to the application: one of the two
/// processing models.
type Run = fn(Consumer<Payload>, String, Arc<Log>) -> kinesis_consumer::Result<()>;

/// The batch API: one handler for every shard held.
fn run_batches(
    consumer: Consumer<Payload>,
    id: String,
    log: Arc<Log>,
) -> kinesis_consumer::Result<()> {
    consumer.run(move |batch: Batch<Payload>| {
        let at = Instant::now();
        for event in batch.events() {
            log.note_event(&id, event.shard_id(), &format!("{event:?}"));
        }
        let records: Vec<&Record> = batch.messages().map(|m| m.record()).collect();
        log.note_records(&id, &records, at);
        Ok(())
    })
}

/// A record processor per shard, logging what it is told.
struct Logging {
    worker: String,
    shard: String,
    log: Arc<Log>,
}

impl ShardProcessor<Payload> for Logging {
    fn initialize(&mut self, shard_id: &str, from: &Checkpoint) -> HandlerResult {
        self.shard = shard_id.to_owned();
        let what = format!("initialize from {from:?}");
        self.log.note_event(&self.worker, &self.shard, &what);
        Ok(())
    }

    fn process(&mut self, records: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult {
        let at = Instant::now();
        let records: Vec<&Record> = records.messages().iter().map(|m| m.record()).collect();
        self.log.note_records(&self.worker, &records, at);
        Ok(())
    }

    fn lease_lost(&mut self) {
        self.log.note_event(&self.worker, &self.shard, "lease_lost");
    }

    fn shutdown_requested(&mut self, _: &Checkpointer) -> HandlerResult {
        self.log
            .note_event(&self.worker, &self.shard, "shutdown_requested");
        Ok(())
    }
}

/// The record-processor model: one [`Logging`] per shard held.
fn run_processors(
    consumer: Consumer<Payload>,
    id: String,
    log: Arc<Log>,
) -> kinesis_consumer::Result<()> {
    consumer.run_processors(move |_shard| Logging {
        worker: id.clone(),
        shard: String::new(),
        log: log.clone(),
    })
}

/// A consumer in a leader-run fleet balancing by load, handing its
/// records on through `run`.
fn start_worker(
    stream: &str,
    app: &str,
    id: &str,
    log: &Arc<Log>,
    run: Run,
) -> (
    kinesis_consumer::ShutdownHandle,
    std::thread::JoinHandle<kinesis_consumer::Result<()>>,
) {
    let consumer = common::consumer_builder(stream, app)
        .coordination(Coordination::Leader)
        .balance_by(BalanceBy::Load)
        .worker_id(id)
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let (log, id) = (log.clone(), id.to_owned());
    (stop, std::thread::spawn(move || run(consumer, id, log)))
}

/// Lease owners and loads from the table: shard → (owner, handoff asked,
/// load known).
fn leases(app: &str) -> BTreeMap<String, (Option<String>, bool, bool)> {
    let dynamodb = common::config(&common::emulators().dynamodb_url);
    kinesis_consumer::list_leases(&dynamodb, app)
        .map(|leases| {
            leases
                .into_iter()
                .map(|l| {
                    let state = (l.owner, l.handoff_to.is_some(), l.load.is_some());
                    (l.shard_id, state)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < bound, "no {what} within {bound:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// Each worker's target: shards heavier than the mean of the rest over
/// the workers left get a worker each; the share is the mean of the rest;
/// a worker holding a heavier shard than that has it for target.
fn targets(
    rates: &BTreeMap<String, f64>,
    owner: &BTreeMap<String, String>,
) -> HashMap<String, f64> {
    let mut sorted: Vec<f64> = rates.values().copied().collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let workers: Vec<&String> = {
        let mut w: Vec<&String> = owner.values().collect();
        w.sort();
        w.dedup();
        w
    };
    let (mut total, mut left) = (sorted.iter().sum::<f64>(), 3usize);
    for rate in sorted {
        if left > 1 && rate > total / left as f64 {
            total -= rate;
            left -= 1;
        } else {
            break;
        }
    }
    let fair = total / left as f64;
    workers
        .into_iter()
        .map(|w| {
            let heaviest = owner
                .iter()
                .filter(|(_, o)| *o == w)
                .map(|(s, _)| rates[s])
                .fold(0.0, f64::max);
            (w.clone(), fair.max(heaviest))
        })
        .collect()
}

#[test]
fn batch_api_hot_shards_end_on_different_workers_and_loads_even_out_without_loss() {
    hot_shards_end_on_different_workers_and_loads_even_out_without_loss(run_batches);
}

#[test]
fn processors_hot_shards_end_on_different_workers_and_loads_even_out_without_loss() {
    hot_shards_end_on_different_workers_and_loads_even_out_without_loss(run_processors);
}

/// The scenario of this file, the workers handing records on through `run`.
fn hot_shards_end_on_different_workers_and_loads_even_out_without_loss(run: Run) {
    let stream = common::create_stream(8);
    let app = common::unique_name("balance");
    let shards = common::kinesis().list_shards(&stream, None).unwrap();
    let hot = [shards[0].shard_id.clone(), shards[1].shard_id.clone()];
    let log: Arc<Log> = Arc::default();

    // Writes every 100 ms: HOT records to each hot shard, one to each cold.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (flag, stream) = (producing.clone(), stream.clone());
        let keys: Vec<(usize, String)> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| (if i < 2 { HOT } else { 1 }, s.starting_hash_key.clone()))
            .collect();
        std::thread::spawn(move || {
            let kinesis = common::kinesis();
            let mut put = Vec::new();
            while flag.load(Ordering::Relaxed) {
                let mut entries = Vec::new();
                for (n, key) in &keys {
                    for _ in 0..*n {
                        let data = format!(
                            "{:<width$}",
                            put.len() + entries.len(),
                            width = RECORD_BYTES
                        );
                        entries.push(PutRecordsEntry {
                            partition_key: "p".into(),
                            explicit_hash_key: Some(key.clone()),
                            data: data.into_bytes(),
                        });
                    }
                }
                // A record is its shard and sequence number, not its data:
                // PutRecords retried after a lost reply writes the same
                // data twice, under two numbers, and that is no delivery
                // twice.
                for result in kinesis.put_records(&stream, &entries).unwrap() {
                    let written = result.unwrap();
                    put.push((
                        written.shard_id,
                        written.sequence_number.as_str().to_owned(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            put
        })
    };

    // One worker takes every lease and measures it first.
    let first = start_worker(&stream, &app, "w1", &log, run);
    wait_until(
        "8 leases held with loads on w1",
        Duration::from_secs(60),
        || {
            let l = leases(&app);
            l.len() == 8
                && l.values()
                    .all(|(o, _, load)| o.as_deref() == Some("w1") && *load)
        },
    );
    let others = [
        start_worker(&stream, &app, "w2", &log, run),
        start_worker(&stream, &app, "w3", &log, run),
    ];
    let joined = Instant::now();

    // Still: the same owners, all three of them, nothing asked, for STILL.
    let mut last: Option<(BTreeMap<String, String>, Instant)> = None;
    let settled = wait_until("owners standing still", Duration::from_secs(120), || {
        let l = leases(&app);
        let owners: BTreeMap<String, String> = l
            .iter()
            .filter_map(|(s, (o, asked, _))| o.clone().filter(|_| !asked).map(|o| (s.clone(), o)))
            .collect();
        let spread = owners
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3;
        if owners.len() < 8 || !spread {
            last = None;
            return false;
        }
        match &last {
            Some((seen, since)) if *seen == owners => since.elapsed() >= STILL,
            _ => {
                last = Some((owners, Instant::now()));
                false
            }
        }
    });
    let owner = last.unwrap().0;
    println!(
        "owners still {:.1} s after the join: {owner:?}",
        (joined.elapsed() - STILL).as_secs_f64()
    );
    let _ = settled;

    // Measure each worker's bytes/s over WINDOW, the owners unchanged.
    let from = Instant::now();
    std::thread::sleep(WINDOW);
    let to = Instant::now();
    assert_eq!(
        leases(&app)
            .into_iter()
            .filter_map(|(s, (o, _, _))| o.map(|o| (s, o)))
            .collect::<BTreeMap<_, _>>(),
        owner,
        "owners moved while measured"
    );
    let secs = (to - from).as_secs_f64();
    let (mut by_worker, mut by_shard) = (
        HashMap::<String, f64>::new(),
        BTreeMap::<String, f64>::new(),
    );
    for d in log
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.at >= from && d.at < to)
    {
        *by_worker.entry(d.worker.clone()).or_default() += d.data.len() as f64 / secs;
        *by_shard.entry(d.shard.clone()).or_default() += d.data.len() as f64 / secs;
    }
    let targets = targets(&by_shard, &owner);
    let mean = by_worker.values().sum::<f64>() / 3.0;
    println!(
        "bytes/s by worker {by_worker:?}, targets {targets:?}, max/mean {:.3}",
        by_worker.values().fold(0.0, |a: f64, b| a.max(*b)) / mean
    );
    assert_ne!(
        owner[&hot[0]], owner[&hot[1]],
        "both hot shards on one worker: {owner:?}"
    );
    for (worker, target) in &targets {
        let rate = by_worker.get(worker).copied().unwrap_or(0.0);
        assert!(
            rate <= 1.25 * target,
            "{worker} reads {rate:.0} B/s, over 1.25 x its target {target:.0}: {by_worker:?}"
        );
    }

    // Nothing lost or repeated across the moves.
    producing.store(false, Ordering::Relaxed);
    let put = producer.join().unwrap();
    wait_until("every record delivered", Duration::from_secs(60), || {
        let log = log.records.lock().unwrap();
        let seen: std::collections::HashSet<(&str, &str)> =
            log.iter().map(Delivered::key).collect();
        put.iter()
            .all(|(shard, sequence)| seen.contains(&(shard.as_str(), sequence.as_str())))
    });
    let mut times: HashMap<(&str, &str), usize> = HashMap::new();
    let log_guard = log.records.lock().unwrap();
    for d in log_guard.iter() {
        *times.entry(d.key()).or_default() += 1;
    }
    let repeated: Vec<String> = log_guard
        .iter()
        .filter(|d| times[&d.key()] > 1)
        .take(10)
        .map(|d| {
            let at = d.at.saturating_duration_since(joined).as_secs_f64();
            format!(
                "{} (sequence {}) on {} by {} at {at:.2} s",
                d.data.trim(),
                d.sequence,
                d.shard,
                d.worker
            )
        })
        .collect();
    if !repeated.is_empty() {
        let events: Vec<String> = log
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|(at, e)| {
                let at = at.saturating_duration_since(joined).as_secs_f64();
                format!("{at:.2} s {e}")
            })
            .collect();
        panic!("delivered twice: {repeated:#?}\nlease events: {events:#?}");
    }
    let moved = log_guard
        .iter()
        .filter(|d| d.worker != "w1")
        .map(|d| d.shard.as_str())
        .collect::<std::collections::HashSet<_>>();
    assert!(
        moved.len() >= 5,
        "leases handed over to the joiners: {moved:?}"
    );
    println!("{} records put, each delivered once", put.len());
    drop(log_guard);
    for (stop, running) in std::iter::once(first).chain(others) {
        stop.shutdown();
        running.join().unwrap().unwrap();
    }
}
