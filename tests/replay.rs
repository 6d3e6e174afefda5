//! Replay and reposition against the emulators: two running workers reset
//! to the trim horizon, then (through the `leases` example) to a time in
//! the middle; a reset across a split; export and import.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{
    Checkpoint, ExtendedSequenceNumber, ResetTo, ShutdownHandle, reset_positions,
};

/// One record as a worker handed it on: shard, position, data.
type Delivered = (String, ExtendedSequenceNumber, String);

fn put(stream: &str, data: &[String]) {
    let entries: Vec<PutRecordsEntry> = data
        .iter()
        .enumerate()
        .map(|(i, d)| PutRecordsEntry {
            partition_key: format!("key-{}", i % 16),
            explicit_hash_key: None,
            data: d.clone().into_bytes(),
        })
        .collect();
    for part in entries.chunks(500) {
        for r in common::kinesis().put_records(stream, part).unwrap() {
            r.unwrap();
        }
    }
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

fn dynamodb() -> kinesis_consumer::aws::ClientConfig {
    common::config(&common::emulators().dynamodb_url)
}

fn checkpoints(app: &str) -> BTreeMap<String, Checkpoint> {
    kinesis_consumer::list_leases(&dynamodb(), app)
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.shard_id, l.checkpoint))
        .collect()
}

/// Where a checkpoint lies along its shard, to compare: a starting
/// position first, then records, then the end.
fn rank(c: &Checkpoint) -> (u8, Option<ExtendedSequenceNumber>) {
    match c {
        Checkpoint::At(p) => (1, Some(p.clone())),
        Checkpoint::ShardEnd => (2, None),
        _ => (0, None),
    }
}

/// Workers of one application in this process, all delivering into one
/// log, and a watcher of the lease table's checkpoints.
struct Fleet {
    log: Arc<Mutex<Vec<Delivered>>>,
    workers: Vec<(ShutdownHandle, JoinHandle<kinesis_consumer::Result<()>>)>,
    /// Every checkpoint seen, per shard, in the order seen, from when
    /// `watching` was set.
    seen: Arc<Mutex<BTreeMap<String, Vec<Checkpoint>>>>,
    watching: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    stop_watching: Arc<AtomicBool>,
}

impl Fleet {
    fn start(stream: &str, app: &str, workers: usize) -> Fleet {
        let log: Arc<Mutex<Vec<Delivered>>> = Arc::default();
        let workers = (0..workers)
            .map(|w| {
                let consumer = common::consumer_builder(stream, app)
                    .worker_id(format!("worker-{w}"))
                    .build()
                    .unwrap();
                let stop = consumer.shutdown_handle();
                let log = log.clone();
                let thread = std::thread::spawn(move || {
                    consumer.run(move |batch| {
                        let mut log = log.lock().unwrap();
                        for m in batch.messages() {
                            let r = m.record();
                            let data = String::from_utf8_lossy(r.data()).into_owned();
                            log.push((r.shard_id().to_owned(), r.position().clone(), data));
                        }
                        Ok(())
                    })
                });
                (stop, thread)
            })
            .collect();
        let seen: Arc<Mutex<BTreeMap<String, Vec<Checkpoint>>>> = Arc::default();
        let (watching, stop_watching) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let watcher = {
            let (app, seen, watching) = (app.to_owned(), seen.clone(), watching.clone());
            let stop: Arc<AtomicBool> = Arc::clone(&stop_watching);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if watching.load(Ordering::Relaxed) {
                        let mut seen = seen.lock().unwrap();
                        for (shard, c) in checkpoints(&app) {
                            let history = seen.entry(shard).or_default();
                            if history.last() != Some(&c) {
                                history.push(c);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Fleet {
            log,
            workers,
            seen,
            watching,
            watcher: Some(watcher),
            stop_watching,
        }
    }

    fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// What was delivered from `mark` on.
    fn since(&self, mark: usize) -> Vec<Delivered> {
        self.log.lock().unwrap()[mark..].to_vec()
    }

    /// Waits until the checkpoint of every shard with a lease is its last
    /// record delivered: the automatic checkpoint lags the handler.
    fn wait_checkpointed(&self, app: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let last: BTreeMap<String, ExtendedSequenceNumber> = self
                .since(0)
                .into_iter()
                .map(|(shard, at, _)| (shard, at))
                .collect();
            let now = checkpoints(app);
            let behind: Vec<_> = last
                .iter()
                .filter(|(shard, at)| {
                    now.get(*shard)
                        .is_some_and(|c| *c != Checkpoint::At((*at).clone()))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "checkpoints behind the records delivered: {behind:?}, table: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every record of `data` was delivered from `mark` on.
    fn wait_for(&self, mark: usize, data: &[String], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let since = self.since(mark);
            let missing = data
                .iter()
                .filter(|d| !since.iter().any(|(_, _, x)| x == *d))
                .count();
            if missing == 0 {
                return;
            }
            for (_, thread) in &self.workers {
                assert!(!thread.is_finished(), "a worker stopped");
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {missing} records never came"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts noting checkpoints afresh (after a reset landed).
    fn watch(&self) {
        self.seen.lock().unwrap().clear();
        self.watching.store(true, Ordering::Relaxed);
    }

    /// The checkpoints seen since [`watch`], per shard.
    fn seen(&self) -> BTreeMap<String, Vec<Checkpoint>> {
        self.watching.store(false, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        self.seen.lock().unwrap().clone()
    }

    fn stop(mut self) {
        for (stop, _) in &self.workers {
            stop.shutdown();
        }
        for (_, thread) in self.workers.drain(..) {
            thread.join().unwrap().unwrap();
        }
        self.stop_watching.store(true, Ordering::Relaxed);
        self.watcher.take().unwrap().join().unwrap();
    }
}

/// After a reset to `start` landed: each shard's checkpoints, as seen
/// since, begin at or after the reset position and never go back (a
/// stale worker writing its older, further position would show as a
/// jump ahead followed by the re-read's positions behind it).
fn assert_no_stale_checkpoint(seen: &BTreeMap<String, Vec<Checkpoint>>) {
    for (shard, history) in seen {
        for pair in history.windows(2) {
            assert!(
                rank(&pair[0]) <= rank(&pair[1]),
                "{shard}: the checkpoint went back from {:?} to {:?} after the reset: {history:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

/// Per shard, the records of `only` delivered in `delivered`, first
/// deliveries only, checked to be in sequence order. (A worker that held
/// a shard may still hand on a read from its old position at the tip
/// until it sees the reset: `only` leaves those records out.)
fn first_deliveries_in_order(
    delivered: &[Delivered],
    only: &[String],
) -> BTreeMap<String, Vec<String>> {
    let mut by_shard: BTreeMap<String, Vec<(ExtendedSequenceNumber, String)>> = BTreeMap::new();
    for (shard, position, data) in delivered.iter().filter(|(_, _, d)| only.contains(d)) {
        let records = by_shard.entry(shard.clone()).or_default();
        if !records.iter().any(|(_, d)| d == data) {
            records.push((position.clone(), data.clone()));
        }
    }
    by_shard
        .into_iter()
        .map(|(shard, records)| {
            assert!(
                records.windows(2).all(|w| w[0].0 < w[1].0),
                "{shard}: delivered out of order after the reset: {:?}",
                records
                    .iter()
                    .map(|(p, d)| format!("{d}@{p}"))
                    .collect::<Vec<_>>()
            );
            (shard, records.into_iter().map(|(_, d)| d).collect())
        })
        .collect()
}

#[test]
fn two_running_workers_replay_from_the_trim_horizon_then_from_a_time_in_the_middle() {
    let stream = common::create_stream(2);
    let app = common::unique_name("replay");
    let (early, late) = (names("a", 200), names("b", 200));
    put(&stream, &early);
    std::thread::sleep(Duration::from_millis(1500));
    let middle = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1500));
    put(&stream, &late);
    let all: Vec<String> = early.iter().chain(&late).cloned().collect();
    let fleet = Fleet::start(&stream, &app, 2);
    fleet.wait_for(0, &all, "the first read");

    // Records keep coming, so the workers are checkpointing when the
    // reset lands.
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (stream, producing) = (stream.clone(), producing.clone());
        std::thread::spawn(move || {
            let mut put_so_far = Vec::new();
            while producing.load(Ordering::Relaxed) {
                let batch = names(&format!("c{}", put_so_far.len()), 5);
                put(&stream, &batch);
                put_so_far.extend(batch);
                std::thread::sleep(Duration::from_millis(50));
            }
            put_so_far
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let mark = fleet.mark();
    let listing = common::kinesis().list_shards(&stream, None).unwrap();
    let report = reset_positions(
        &dynamodb(),
        &app,
        &listing,
        &ResetTo::TrimHorizon,
        &[],
        false,
    )
    .unwrap();
    fleet.watch();
    assert_eq!(report.changes.len(), 2, "{report:?}");
    assert!(
        report
            .changes
            .iter()
            .all(|c| c.to == Checkpoint::TrimHorizon)
    );
    assert!(
        report.changes.iter().all(|c| c.owner.is_some()),
        "both were held"
    );
    fleet.wait_for(mark, &all, "the replay from the trim horizon");
    std::thread::sleep(Duration::from_millis(1000));
    assert_no_stale_checkpoint(&fleet.seen());
    let replayed = first_deliveries_in_order(&fleet.since(mark), &all);
    // Each shard's records again, all of them, from its first.
    for (shard, records) in &replayed {
        let put: Vec<&String> = all
            .iter()
            .filter(|d| shard_of(&fleet, d) == *shard)
            .collect();
        assert_eq!(records.iter().collect::<Vec<_>>(), put, "{shard}");
    }
    assert_eq!(replayed.values().map(Vec::len).sum::<usize>(), all.len());

    // The same through the leases example, to a time between the two puts.
    let mark = fleet.mark();
    let time = kinesis_consumer::__test_support::format_rfc3339(middle);
    let output = common::aws_env(Command::new(common::example_binary("leases")))
        .args([
            "--app",
            &app,
            "--stream",
            &stream,
            "--reset",
            "at-timestamp",
            &time,
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed.matches(": moved from ").count(), 2, "{printed}");
    fleet.watch();
    fleet.wait_for(mark, &late, "the replay from the middle");
    std::thread::sleep(Duration::from_millis(1000));
    producing.store(false, Ordering::Relaxed);
    let produced = producer.join().unwrap();
    fleet.wait_for(mark, &produced, "the records put during the test");
    assert_no_stale_checkpoint(&fleet.seen());
    let replayed = first_deliveries_in_order(&fleet.since(mark), &late);
    for (shard, records) in &replayed {
        let late_put: Vec<&String> = late
            .iter()
            .filter(|d| shard_of(&fleet, d) == *shard)
            .collect();
        assert_eq!(records.iter().collect::<Vec<_>>(), late_put, "{shard}");
    }
    let replayed = first_deliveries_in_order(&fleet.since(mark), &all);
    let early_again: Vec<&String> = replayed
        .values()
        .flatten()
        .filter(|d| d.starts_with("a-"))
        .collect();
    assert!(
        early_again.is_empty(),
        "records before the time came again: {early_again:?}"
    );
    fleet.stop();
}

/// The shard a record was delivered from, by the log.
fn shard_of(fleet: &Fleet, data: &str) -> String {
    let log = fleet.log.lock().unwrap();
    log.iter()
        .find(|(_, _, d)| d == data)
        .map(|(s, _, _)| s.clone())
        .unwrap()
}

#[test]
fn a_reset_across_a_split_reads_the_parent_again_then_its_children() {
    let stream = common::create_stream(1);
    let app = common::unique_name("replay-split");
    let (before, after) = (names("p", 50), names("q", 50));
    put(&stream, &before);
    let parent = common::split_first_shard(&stream);
    put(&stream, &after);
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let fleet = Fleet::start(&stream, &app, 1);
    fleet.wait_for(0, &all, "the first read");
    // Until the parent's end is checkpointed and its lease deleted.
    let deadline = Instant::now() + Duration::from_secs(30);
    while checkpoints(&app).contains_key(&parent.shard_id) {
        assert!(
            Instant::now() < deadline,
            "the finished parent's lease stayed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The dry run and the reset must see the same checkpoints.
    fleet.wait_checkpointed(&app);

    let listing = common::kinesis().list_shards(&stream, None).unwrap();
    let dry = reset_positions(
        &dynamodb(),
        &app,
        &listing,
        &ResetTo::TrimHorizon,
        &[],
        true,
    )
    .unwrap();
    assert!(dry.dry_run);
    let first = &dry.changes[0];
    assert_eq!(
        (first.shard_id.as_str(), &first.from),
        (parent.shard_id.as_str(), &None)
    );
    assert_eq!(dry.changes.len(), 3, "{dry:?}");
    assert!(
        !checkpoints(&app).contains_key(&parent.shard_id),
        "a dry run writes nothing"
    );

    let mark = fleet.mark();
    let report = reset_positions(
        &dynamodb(),
        &app,
        &listing,
        &ResetTo::TrimHorizon,
        &[],
        false,
    )
    .unwrap();
    assert_eq!(report.changes, dry.changes);
    fleet.wait_for(mark, &all, "the replay");
    let since = fleet.since(mark);
    let last_parent = since
        .iter()
        .rposition(|(_, _, d)| d.starts_with("p-"))
        .unwrap();
    let first_child = since
        .iter()
        .position(|(_, _, d)| d.starts_with("q-"))
        .unwrap();
    assert!(
        last_parent < first_child,
        "children read before their parent's end"
    );
    let replayed = first_deliveries_in_order(&since, &all);
    assert_eq!(replayed[&parent.shard_id], before);
    fleet.stop();
}

#[test]
fn checkpoints_export_and_import_into_another_application() {
    let stream = common::create_stream(2);
    let app = common::unique_name("export");
    let data = names("e", 40);
    put(&stream, &data);
    let fleet = Fleet::start(&stream, &app, 1);
    fleet.wait_for(0, &data, "the read");
    fleet.stop();
    let exported = kinesis_consumer::export_checkpoints(&dynamodb(), &app).unwrap();
    let copy = common::unique_name("import");
    let dry = kinesis_consumer::import_checkpoints(&dynamodb(), &copy, &exported, true).unwrap();
    assert_eq!(dry.changes.len(), 2);
    let report =
        kinesis_consumer::import_checkpoints(&dynamodb(), &copy, &exported, false).unwrap();
    assert_eq!(report.changes, dry.changes);
    assert_eq!(checkpoints(&copy), checkpoints(&app));
    // The copy starts where the original stopped: nothing to read again.
    let more = names("f", 10);
    put(&stream, &more);
    let fleet = Fleet::start(&stream, &copy, 1);
    fleet.wait_for(0, &more, "the copy's read");
    std::thread::sleep(Duration::from_millis(500));
    let delivered = fleet.since(0);
    assert!(
        delivered.iter().all(|(_, _, d)| d.starts_with("f-")),
        "{delivered:?}"
    );
    fleet.stop();
    let broken =
        kinesis_consumer::import_checkpoints(&dynamodb(), &copy, "[{\"shard_id\": 3}]", false);
    let error = broken.unwrap_err().to_string();
    assert!(error.contains("not a checkpoint export"), "{error}");
}
