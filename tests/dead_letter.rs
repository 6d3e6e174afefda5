//! Poison records against the emulators (`ErrorPolicy::RetryThenDeadLetter`):
//! 2 records of 1,000 on one shard that the handler always rejects, in
//! both processing models, as plain records and as KPL sub-records, with
//! a dead-letter handler that takes them and with one that fails.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::kpl::Aggregator;
use kinesis_consumer::{
    Checkpoint, Checkpointer, ErrorPolicy, ExtendedSequenceNumber, HandlerResult, MetricsLevel,
    Payload, Record, ShardBatch, ShardProcessor,
};

/// Records put to the poisoned shard, `r-0` to `r-999`.
const ON_POISONED: usize = 1000;
/// Records put to the other shard, `o-0` to `o-99`.
const ON_OTHER: usize = 100;
/// The records every handler call rejects.
const POISON: [&str; 2] = ["r-137", "r-802"];
/// The explicit hash keys of the first and the last of two shards.
const FIRST_SHARD: &str = "0";
const LAST_SHARD: &str = "340282366920938463463374607431768211455";

#[derive(Clone, Copy, PartialEq)]
enum Model {
    Batches,
    Processors,
}

/// A record as the tests see it: its position and data.
type Seen = (ExtendedSequenceNumber, String);

/// What one run saw.
#[derive(Default)]
struct Board {
    /// Records the handler accepted, per shard, in the order accepted.
    accepted: Mutex<BTreeMap<String, Vec<Seen>>>,
    /// Each record given to the dead-letter handler, with the shard's
    /// checkpoint in the table at that moment.
    dead: Mutex<Vec<(Seen, Checkpoint)>>,
}

fn data(record: &Record) -> String {
    String::from_utf8_lossy(record.data()).into_owned()
}

fn seen(record: &Record) -> Seen {
    (record.position().clone(), data(record))
}

impl Board {
    /// The handler: rejects records holding a poison record, else notes them.
    fn handle(&self, records: Vec<&Record>) -> HandlerResult {
        if records.iter().any(|r| POISON.contains(&data(r).as_str())) {
            return Err("poison".into());
        }
        let mut accepted = self.accepted.lock().unwrap();
        for r in records {
            accepted
                .entry(r.shard_id().to_owned())
                .or_default()
                .push(seen(r));
        }
        Ok(())
    }

    fn accepted_data(&self, prefix: &str) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .values()
            .flatten()
            .filter(|(_, d)| d.starts_with(prefix))
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// The position of the accepted record `data`.
    fn position(&self, wanted: &str) -> Option<ExtendedSequenceNumber> {
        let accepted = self.accepted.lock().unwrap();
        let found = accepted.values().flatten().find(|(_, d)| d == wanted);
        found.map(|(p, _)| p.clone())
    }

    fn dead_data(&self) -> Vec<String> {
        let dead = self.dead.lock().unwrap();
        dead.iter().map(|((_, d), _)| d.clone()).collect()
    }
}

struct Processor {
    board: Arc<Board>,
}

impl ShardProcessor<Payload> for Processor {
    fn process(&mut self, records: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult {
        self.board
            .handle(records.messages().iter().map(|m| m.record()).collect())
    }
}

/// Each shard's checkpoint in the lease table (none before the consumer
/// made the table).
fn checkpoints(app: &str) -> BTreeMap<String, Checkpoint> {
    kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), app)
        .unwrap_or_default()
        .into_iter()
        .map(|l| (l.shard_id, l.checkpoint))
        .collect()
}

fn put_plain(stream: &str, prefix: &str, count: usize, hash_key: &str) {
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("key-{}", i % 16),
            explicit_hash_key: Some(hash_key.into()),
            data: format!("{prefix}-{i}").into_bytes(),
        })
        .collect();
    for part in entries.chunks(500) {
        for r in common::kinesis().put_records(stream, part).unwrap() {
            r.unwrap();
        }
    }
}

/// `r-0` to `r-999` as 10 KPL aggregates of 100 user records each.
fn put_aggregated(stream: &str) {
    let mut aggregator = Aggregator::new();
    for i in 0..ON_POISONED {
        let added = aggregator.add("pk", None, format!("r-{i}").as_bytes());
        assert!(added.unwrap().is_none(), "an aggregate holds 100");
        if i % 100 == 99 {
            let aggregate = aggregator.flush().unwrap();
            let entry = PutRecordsEntry {
                partition_key: aggregate.partition_key,
                explicit_hash_key: Some(FIRST_SHARD.into()),
                data: aggregate.data,
            };
            for r in common::kinesis().put_records(stream, &[entry]).unwrap() {
                r.unwrap();
            }
        }
    }
}

/// Runs a consumer over a fresh two-shard stream holding the poisoned
/// records on its first shard until `done` says so (or 60 s pass: a
/// failure), then stops it; returns what it saw, its metrics
/// (`RecordsDeadLettered`, `HandlerRetries`) and the checkpoints.
fn run(
    model: Model,
    aggregated: bool,
    dead_letter_fails: bool,
    done: impl Fn(&Board, &BTreeMap<String, Checkpoint>) -> bool,
) -> (Arc<Board>, f64, f64, BTreeMap<String, Checkpoint>) {
    let stream = common::create_stream(2);
    let app = common::unique_name("dead-letter");
    match aggregated {
        true => put_aggregated(&stream),
        false => put_plain(&stream, "r", ON_POISONED, FIRST_SHARD),
    }
    put_plain(&stream, "o", ON_OTHER, LAST_SHARD);
    let board: Arc<Board> = Arc::default();
    let dead_board = board.clone();
    let dead_app = app.clone();
    let consumer = common::consumer_builder(&stream, &app)
        .metrics_level(MetricsLevel::Summary)
        .publish_metrics(false)
        .error_policy(ErrorPolicy::RetryThenDeadLetter {
            retries: 1,
            backoff: Duration::from_millis(10),
        })
        .dead_letter(move |records: &[Record], _error| {
            for r in records {
                let then = checkpoints(&dead_app)[r.shard_id()].clone();
                dead_board.dead.lock().unwrap().push((seen(r), then));
            }
            match dead_letter_fails {
                true => Err("the dead-letter queue is down".into()),
                false => Ok(()),
            }
        })
        .build()
        .unwrap();
    let metrics = consumer.metrics();
    let stop = consumer.shutdown_handle();
    let handler_board = board.clone();
    let thread = std::thread::spawn(move || match model {
        Model::Batches => consumer
            .run(move |batch| handler_board.handle(batch.messages().map(|m| m.record()).collect())),
        Model::Processors => consumer.run_processors(move |_| Processor {
            board: handler_board.clone(),
        }),
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&board, &checkpoints(&app)) {
        if thread.is_finished() {
            panic!("the consumer stopped: {:?}", thread.join().unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "timed out; accepted {} + {}, dead-lettered {:?}, checkpoints {:?}",
            board.accepted_data("r-").len(),
            board.accepted_data("o-").len(),
            board.dead_data(),
            checkpoints(&app)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A little longer: nothing more may come.
    std::thread::sleep(Duration::from_millis(1500));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let sum = |name: &str| -> f64 {
        let samples = metrics.snapshot();
        let named = samples.iter().filter(|s| s.name == name);
        named.map(|s| s.statistics.sum).sum()
    };
    let (dead_lettered, retries) = (sum("RecordsDeadLettered"), sum("HandlerRetries"));
    (board, dead_lettered, retries, checkpoints(&app))
}

/// `prefix-0` to `prefix-{count - 1}` but `except`.
fn expected(prefix: &str, count: usize, except: &[&str]) -> Vec<String> {
    (0..count)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|d| !except.contains(&d.as_str()))
        .collect()
}

fn at(position: Option<ExtendedSequenceNumber>) -> Option<Checkpoint> {
    position.map(Checkpoint::At)
}

/// Every record reached its end: both shards checkpointed at their last
/// record, both poison records dead-lettered.
fn all_done(board: &Board, checkpoints: &BTreeMap<String, Checkpoint>) -> bool {
    let last = |d: &str| at(board.position(d));
    let written: Vec<Option<Checkpoint>> = checkpoints.values().cloned().map(Some).collect();
    board.dead_data().len() == 2
        && [last("r-999"), last("o-99")]
            .iter()
            .all(|c| c.is_some() && written.contains(c))
}

/// The poison records went to the dead-letter handler, each once and only
/// while the checkpoint was still before it; the others were accepted
/// once each, in order; both shards are checkpointed at their end.
fn assert_isolated(model: Model, aggregated: bool) {
    let (board, dead_lettered, retries, checkpoints) = run(model, aggregated, false, all_done);
    assert_eq!(board.dead_data(), POISON);
    assert_eq!(
        board.accepted_data("r-"),
        expected("r", ON_POISONED, &POISON)
    );
    assert_eq!(board.accepted_data("o-"), expected("o", ON_OTHER, &[]));
    for ((position, data), checkpoint_then) in board.dead.lock().unwrap().iter() {
        let before = match checkpoint_then {
            Checkpoint::At(c) => c < position,
            Checkpoint::TrimHorizon => true,
            _ => false,
        };
        assert!(
            before,
            "{data} dead-lettered with the checkpoint at {checkpoint_then:?}"
        );
    }
    for records in board.accepted.lock().unwrap().values() {
        assert!(records.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    }
    if aggregated {
        // Sub-records 37 and 2 of their aggregates, their siblings delivered.
        let dead = board.dead.lock().unwrap();
        let subs: Vec<u64> = dead
            .iter()
            .map(|((p, _), _)| p.sub_sequence_number)
            .collect();
        assert_eq!(subs, [37, 2]);
    }
    let ends = [at(board.position("r-999")), at(board.position("o-99"))];
    let written: Vec<Option<Checkpoint>> = checkpoints.into_values().map(Some).collect();
    assert_eq!(written.len(), 2);
    assert!(ends.iter().all(|e| written.contains(e)), "{written:?}");
    assert_eq!(dead_lettered, 2.0);
    assert!(retries >= 2.0, "each poison record was retried: {retries}");
}

/// With a dead-letter handler that fails: the poisoned shard stops just
/// before its first poison record (checkpointed there, nothing after it
/// accepted), while the other shard is read to its end.
fn assert_stops_before_the_poison(model: Model, aggregated: bool) {
    let stopped = |board: &Board, checkpoints: &BTreeMap<String, Checkpoint>| {
        let written: Vec<Option<Checkpoint>> = checkpoints.values().cloned().map(Some).collect();
        !board.dead.lock().unwrap().is_empty()
            && [at(board.position("r-136")), at(board.position("o-99"))]
                .iter()
                .all(|c| c.is_some() && written.contains(c))
    };
    let (board, dead_lettered, _, checkpoints) = run(model, aggregated, true, stopped);
    assert_eq!(board.accepted_data("r-"), expected("r", 137, &[]));
    assert_eq!(board.accepted_data("o-"), expected("o", ON_OTHER, &[]));
    let dead = board.dead_data();
    assert!(dead.iter().all(|d| d == "r-137"), "{dead:?}");
    assert_eq!(dead_lettered, 0.0, "nothing counted as dead-lettered");
    let before_poison = at(board.position("r-136"));
    let written: Vec<Option<Checkpoint>> = checkpoints.into_values().map(Some).collect();
    assert!(written.contains(&before_poison), "{written:?}");
    if aggregated {
        let dead = board.dead.lock().unwrap();
        assert_eq!(dead[0].0.0.sub_sequence_number, 37);
    }
}

#[test]
fn batches_isolate_two_poison_records_of_a_thousand() {
    assert_isolated(Model::Batches, false);
}

#[test]
fn batches_stop_the_shard_before_the_poison_when_the_dead_letter_handler_fails() {
    assert_stops_before_the_poison(Model::Batches, false);
}

#[test]
fn processors_isolate_two_poison_records_of_a_thousand() {
    assert_isolated(Model::Processors, false);
}

#[test]
fn processors_stop_the_shard_before_the_poison_when_the_dead_letter_handler_fails() {
    assert_stops_before_the_poison(Model::Processors, false);
}

#[test]
fn poison_kpl_sub_records_are_isolated_and_their_siblings_delivered() {
    assert_isolated(Model::Batches, true);
}

#[test]
fn a_failing_dead_letter_handler_stops_inside_a_kpl_aggregate() {
    assert_stops_before_the_poison(Model::Processors, true);
}

#[test]
fn the_dead_letter_settings_go_together() {
    let builder = || common::consumer_builder("s", "app-name");
    let policy = ErrorPolicy::RetryThenDeadLetter {
        retries: 0,
        backoff: Duration::ZERO,
    };
    let setting = |result: kinesis_consumer::Result<_>| match result {
        Err(kinesis_consumer::Error::Config { setting, .. }) => setting,
        other => panic!(
            "{:?}",
            other.map(|_: kinesis_consumer::Consumer<Payload>| ())
        ),
    };
    assert_eq!(
        setting(builder().error_policy(policy).build()),
        "error_policy"
    );
    let only_handler = builder().dead_letter(|_, _| Ok(()));
    assert_eq!(setting(only_handler.build()), "dead_letter");
    let both = builder().error_policy(policy).dead_letter(|_, _| Ok(()));
    assert!(both.build().is_ok());
}
