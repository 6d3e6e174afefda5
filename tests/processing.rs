//! The processing model against the emulators: checkpoints the application
//! controls, shard lifecycle events, per-shard processors and the error
//! policy.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::__test_support::{AttributeValue, Expression};
use kinesis_consumer::aws::kinesis::PutRecordsEntry;
use kinesis_consumer::{
    Checkpoint, Checkpointer, Checkpointing, Error, ErrorPolicy, HandlerResult, Payload, Record,
    ShardBatch, ShardEvent, ShardProcessor, ShutdownHandle,
};

/// Puts `count` records `{prefix}-{i}` over 16 partition keys.
fn put(stream: &str, prefix: &str, count: usize) {
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("key-{}", i % 16),
            explicit_hash_key: None,
            data: format!("{prefix}-{i}").into_bytes(),
        })
        .collect();
    for r in common::kinesis().put_records(stream, &entries).unwrap() {
        r.unwrap();
    }
}

/// Each shard's checkpoint in the lease table.
fn checkpoints(app: &str) -> BTreeMap<String, Checkpoint> {
    kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), app)
        .unwrap()
        .into_iter()
        .map(|l| (l.shard_id, l.checkpoint))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a batch-API consumer saw: records (kept whole) and events.
#[derive(Default)]
struct Seen {
    records: Vec<Record>,
    events: Vec<ShardEvent>,
    last_batches: usize,
}

struct Running {
    stop: ShutdownHandle,
    checkpointer: Checkpointer,
    seen: Arc<Mutex<Seen>>,
    thread: JoinHandle<kinesis_consumer::Result<()>>,
}

fn start_batches(builder: kinesis_consumer::ConsumerBuilder<Payload>) -> Running {
    let consumer = builder.build().unwrap();
    let stop = consumer.shutdown_handle();
    let checkpointer = consumer.checkpointer();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut seen = sink.lock().unwrap();
            seen.records
                .extend(batch.messages().map(|m| m.record().clone()));
            seen.events.extend(batch.events().iter().cloned());
            seen.last_batches += usize::from(batch.is_last());
            Ok(())
        })
    });
    Running {
        stop,
        checkpointer,
        seen,
        thread,
    }
}

impl Running {
    fn records(&self) -> usize {
        self.seen.lock().unwrap().records.len()
    }

    fn events(&self) -> Vec<ShardEvent> {
        self.seen.lock().unwrap().events.clone()
    }

    fn stop(self) -> Seen {
        self.stop.shutdown();
        self.thread.join().unwrap().unwrap();
        Arc::try_unwrap(self.seen)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

fn gained(shard_id: &str) -> ShardEvent {
    ShardEvent::Gained {
        shard_id: shard_id.into(),
        from: Checkpoint::TrimHorizon,
    }
}

#[test]
fn manual_checkpoints_are_written_only_when_asked_from_any_thread_and_checked() {
    let stream = common::create_stream(2);
    let app = common::unique_name("manual");
    put(&stream, "r", 40);
    let running =
        start_batches(common::consumer_builder(&stream, &app).checkpointing(Checkpointing::Manual));
    wait_for("every record", Duration::from_secs(30), || {
        running.records() == 40
    });
    // Several batches later: nothing was checkpointed by itself.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        checkpoints(&app)
            .values()
            .all(|c| *c == Checkpoint::TrimHorizon),
        "{:?}",
        checkpoints(&app)
    );
    let records = running.seen.lock().unwrap().records.clone();
    let mut by_shard: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_shard.entry(r.shard_id().to_owned()).or_default().push(r);
    }
    // From another thread, after the handler returned: the middle record
    // of each shard, then a position never handed on, then one behind.
    let checkpointer = running.checkpointer.clone();
    let shards = by_shard.clone();
    std::thread::spawn(move || {
        for records in shards.values() {
            let middle = &records[records.len() / 2];
            checkpointer.checkpoint_record(middle).unwrap();
            let mut ahead = records.last().unwrap().position().clone();
            ahead.sub_sequence_number += 1;
            let e = checkpointer
                .checkpoint_at(middle.shard_id(), &ahead)
                .unwrap_err();
            assert!(
                matches!(&e, Error::InvalidCheckpoint { reason, .. } if reason.contains("not handed on")),
                "{e}"
            );
            let e = checkpointer.checkpoint_record(&records[0]).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidCheckpoint { reason, .. } if reason.contains("behind")),
                "{e}"
            );
        }
    })
    .join()
    .unwrap();
    let written = checkpoints(&app);
    for (shard, records) in &by_shard {
        let middle = records[records.len() / 2].position().clone();
        assert_eq!(written[shard], Checkpoint::At(middle), "{shard}");
    }
    // At the last position handed on, by shard id.
    for shard in by_shard.keys() {
        running.checkpointer.checkpoint(shard).unwrap();
    }
    let written = checkpoints(&app);
    for (shard, records) in &by_shard {
        let last = records.last().unwrap().position().clone();
        assert_eq!(written[shard], Checkpoint::At(last), "{shard}");
    }
    let checkpointer = running.checkpointer.clone();
    let seen = running.stop();
    assert_eq!(seen.last_batches, 1, "one last batch at shutdown");
    // Leases released at shutdown: nothing can be checkpointed any more.
    let shard = by_shard.keys().next().unwrap();
    let e = checkpointer.checkpoint(shard).unwrap_err();
    assert!(
        matches!(&e, Error::LeaseLost { shard_id, .. } if shard_id == shard),
        "{e}"
    );
}

#[test]
fn shards_are_gained_lost_and_shut_down_as_the_leases_go() {
    let stream = common::create_stream(2);
    let app = common::unique_name("lifecycle");
    let running = start_batches(common::consumer_builder(&stream, &app));
    wait_for("both shards gained", Duration::from_secs(30), || {
        running.events().len() == 2
    });
    let mut events = running.events();
    events.sort_by(|a, b| a.shard_id().cmp(b.shard_id()));
    let shards: Vec<String> = events.iter().map(|e| e.shard_id().to_owned()).collect();
    assert_eq!(events, vec![gained(&shards[0]), gained(&shards[1])]);
    // Another worker takes the first lease behind this one's back.
    let d = common::dynamodb();
    let key = HashMap::from([("leaseKey".to_owned(), AttributeValue::S(shards[0].clone()))]);
    let mut row = d.get_item(&app, &key).unwrap().unwrap();
    row.insert("leaseOwner".into(), AttributeValue::S("thief".into()));
    row.insert("leaseCounter".into(), AttributeValue::N("999999".into()));
    d.put_item(&app, &row, None).unwrap();
    let lost = ShardEvent::Lost {
        shard_id: shards[0].clone(),
    };
    // Nothing of ours took it (a worker of ours never takes a live
    // worker's lease): with a leader, the leader's next survey sees it and
    // tells the owner (two heartbeat periods); with the workers row, the
    // owner sees it at its next full read of the table, every six failover
    // times (18 s here) at the latest.
    wait_for("the lease lost", Duration::from_secs(30), || {
        running.events().contains(&lost)
    });
    let e = running.checkpointer.checkpoint(&shards[0]).unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
    let seen = running.stop();
    let tail: Vec<ShardEvent> = seen.events[2..].to_vec();
    assert_eq!(
        tail,
        vec![
            lost,
            ShardEvent::ShutdownRequested {
                shard_id: shards[1].clone()
            }
        ]
    );
}

#[test]
fn a_split_shard_ends_and_with_manual_checkpoints_its_children_wait_for_its_end() {
    let stream = common::create_stream(1);
    let app = common::unique_name("ended");
    put(&stream, "before", 10);
    let running =
        start_batches(common::consumer_builder(&stream, &app).checkpointing(Checkpointing::Manual));
    wait_for("the records", Duration::from_secs(30), || {
        running.records() == 10
    });
    let parent = common::split_first_shard(&stream);
    put(&stream, "after", 20);
    let ended = ShardEvent::Ended {
        shard_id: parent.shard_id.clone(),
    };
    wait_for("the parent's end", Duration::from_secs(30), || {
        running.events().contains(&ended)
    });
    // Not checkpointed: the children are not read.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(running.events().len(), 2, "{:?}", running.events());
    assert_eq!(running.records(), 10);
    running.checkpointer.checkpoint(&parent.shard_id).unwrap();
    assert_eq!(checkpoints(&app)[&parent.shard_id], Checkpoint::ShardEnd);
    wait_for("the children's records", Duration::from_secs(30), || {
        running.records() == 30
    });
    let gained_children = running
        .events()
        .iter()
        .filter(
            |e| matches!(e, ShardEvent::Gained { shard_id, .. } if *shard_id != parent.shard_id),
        )
        .count();
    assert_eq!(gained_children, 2);
    // A merge of the two children ends both; the merged shard waits for
    // both ends to be checkpointed.
    let k = common::kinesis();
    let mut children: Vec<_> = k
        .list_shards(&stream, None)
        .unwrap()
        .into_iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(parent.shard_id.as_str()))
        .collect();
    children.sort_by_key(|s| s.starting_hash_key.parse::<u128>().unwrap());
    let (lower, upper) = (children[0].clone(), children[1].clone());
    k.merge_shards(&stream, &lower.shard_id, &upper.shard_id)
        .unwrap();
    k.wait_until_active(&stream, Duration::from_secs(30))
        .unwrap();
    put(&stream, "merged", 10);
    for child in [&upper, &lower] {
        let ended = ShardEvent::Ended {
            shard_id: child.shard_id.clone(),
        };
        wait_for("a child's end", Duration::from_secs(30), || {
            running.events().contains(&ended)
        });
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(running.records(), 30, "the merged shard waits");
    running.checkpointer.checkpoint(&upper.shard_id).unwrap();
    running.checkpointer.checkpoint(&lower.shard_id).unwrap();
    wait_for(
        "the merged shard's records",
        Duration::from_secs(30),
        || running.records() == 40,
    );
    running.stop();
}

#[test]
fn leases_that_cannot_be_renewed_are_lost_then_gained_again() {
    let stream = common::create_stream(2);
    let app = common::unique_name("expiry");
    let proxy = Proxy::for_emulators();
    let running = start_batches(common::consumer_builder_at(
        proxy.url(),
        proxy.url(),
        &stream,
        &app,
    ));
    wait_for("both shards gained", Duration::from_secs(30), || {
        running.events().len() == 2
    });
    // DynamoDB refuses every lease write: the leases go unrenewed past the
    // fencing window (failover 3 s).
    let rule = proxy.add(
        "UpdateItem",
        Trigger::Always,
        Fault::aws(500, "InternalServerError"),
    );
    let lost = |e: &ShardEvent| matches!(e, ShardEvent::Lost { .. });
    wait_for("both leases lost", Duration::from_secs(15), || {
        running.events().iter().filter(|e| lost(e)).count() == 2
    });
    assert!(proxy.hits(rule) > 0);
    let shard = running.events()[0].shard_id().to_owned();
    let e = running.checkpointer.checkpoint(&shard).unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
    proxy.clear();
    wait_for("both shards gained again", Duration::from_secs(20), || {
        let events = running.events();
        events.len() >= 6
            && events[4..]
                .iter()
                .all(|e| matches!(e, ShardEvent::Gained { .. }))
    });
    running.stop();
}

#[test]
fn a_joining_worker_is_handed_leases_after_their_shutdown_is_announced() {
    let stream = common::create_stream(2);
    let app = common::unique_name("handoff");
    put(&stream, "before", 20);
    let first = start_batches(common::consumer_builder(&stream, &app).worker_id("first"));
    wait_for("the records", Duration::from_secs(30), || {
        first.records() == 20
    });
    let second = start_batches(common::consumer_builder(&stream, &app).worker_id("second"));
    wait_for("the second worker's lease", Duration::from_secs(30), || {
        second.events().len() == 1
    });
    let given = second.events()[0].shard_id().to_owned();
    let announced = ShardEvent::ShutdownRequested {
        shard_id: given.clone(),
    };
    assert!(first.events().contains(&announced), "{:?}", first.events());
    assert!(
        !first
            .events()
            .iter()
            .any(|e| matches!(e, ShardEvent::Lost { .. })),
        "handed over, not lost"
    );
    put(&stream, "after", 20);
    wait_for("the records put after", Duration::from_secs(30), || {
        first.records() + second.records() == 40
    });
    let (a, b) = (first.stop(), second.stop());
    let mut all: Vec<String> = a
        .records
        .iter()
        .chain(&b.records)
        .map(|r| String::from_utf8_lossy(r.data()).into_owned())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "nothing twice, nothing lost");
    assert_eq!(a.records.len() + b.records.len(), 40, "nothing twice");
}

/// Shared by the processors of one test: what each shard processed, in
/// order, and how many processors are inside `process` at once.
#[derive(Default)]
struct Board {
    processed: Mutex<BTreeMap<String, Vec<String>>>,
    inside: AtomicUsize,
    most_inside: AtomicUsize,
    calls: Mutex<Vec<String>>,
    /// While set, `process` calls wait (only those of `held_shard`, when
    /// set); how many are waiting.
    hold: AtomicBool,
    held_shard: Mutex<Option<String>>,
    waiting: AtomicUsize,
    /// `shutdown_requested` checkpoints the shard.
    checkpoint_at_shutdown: AtomicBool,
}

impl Board {
    fn holds(&self, shard_id: &str) -> bool {
        self.hold.load(Ordering::SeqCst)
            && self
                .held_shard
                .lock()
                .unwrap()
                .as_ref()
                .is_none_or(|s| s == shard_id)
    }
}

struct Sleepy {
    shard_id: String,
    board: Arc<Board>,
    per_record: Duration,
    /// Records whose processing fails (every time).
    poison: Option<String>,
    /// Calls to fail before succeeding, per call.
    failures_left: usize,
}

impl ShardProcessor<Payload> for Sleepy {
    fn initialize(&mut self, shard_id: &str, _from: &Checkpoint) -> HandlerResult {
        self.shard_id = shard_id.to_owned();
        self.board
            .calls
            .lock()
            .unwrap()
            .push(format!("initialize {shard_id}"));
        Ok(())
    }

    fn process(&mut self, records: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult {
        if self.board.holds(&self.shard_id) {
            self.board.waiting.fetch_add(1, Ordering::SeqCst);
            while self.board.holds(&self.shard_id) {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.board.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        let now = self.board.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.board.most_inside.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.per_record * records.messages().len() as u32);
        self.board.inside.fetch_sub(1, Ordering::SeqCst);
        let values: Vec<String> = records
            .messages()
            .iter()
            .map(|m| String::from_utf8(m.value().to_vec()).unwrap())
            .collect();
        if self.poison.as_ref().is_some_and(|p| values.contains(p)) {
            return Err("poison record".into());
        }
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err("failing for a while".into());
        }
        self.board
            .processed
            .lock()
            .unwrap()
            .entry(self.shard_id.clone())
            .or_default()
            .extend(values);
        Ok(())
    }

    fn lease_lost(&mut self) {
        let call = format!("lease_lost {}", self.shard_id);
        self.board.calls.lock().unwrap().push(call);
    }

    fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        let call = format!("shutdown_requested {}", self.shard_id);
        self.board.calls.lock().unwrap().push(call);
        if self.board.checkpoint_at_shutdown.load(Ordering::SeqCst) {
            // As a processor ported from the KCL does.
            checkpointer.checkpoint(&self.shard_id)?;
        }
        Ok(())
    }
}

fn run_processors(
    builder: kinesis_consumer::ConsumerBuilder<Payload>,
    board: &Arc<Board>,
    per_record: Duration,
    poison: Option<&str>,
    failures: usize,
) -> (ShutdownHandle, JoinHandle<kinesis_consumer::Result<()>>) {
    let consumer = builder.build().unwrap();
    let stop = consumer.shutdown_handle();
    let board = board.clone();
    let poison = poison.map(str::to_owned);
    let thread = std::thread::spawn(move || {
        consumer.run_processors(move |_shard| Sleepy {
            shard_id: String::new(),
            board: board.clone(),
            per_record,
            poison: poison.clone(),
            failures_left: failures,
        })
    });
    (stop, thread)
}

/// The values put to each shard, in order, from the stream itself.
fn put_in_order(stream: &str) -> BTreeMap<String, Vec<String>> {
    let k = common::kinesis();
    let mut by_shard = BTreeMap::new();
    for shard in k.list_shards(stream, None).unwrap() {
        let records = common::read_shard(stream, &shard.shard_id);
        by_shard.insert(shard.shard_id, records);
    }
    by_shard
}

#[test]
fn processors_run_shards_in_parallel_in_order_and_shut_down() {
    let stream = common::create_stream(4);
    let app = common::unique_name("processors");
    put(&stream, "r", 80);
    let board: Arc<Board> = Arc::default();
    let (stop, thread) = run_processors(
        common::consumer_builder(&stream, &app),
        &board,
        Duration::from_millis(20),
        None,
        0,
    );
    let expected = put_in_order(&stream);
    wait_for("every record processed", Duration::from_secs(60), || {
        board
            .processed
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 80
    });
    assert_eq!(
        *board.processed.lock().unwrap(),
        expected,
        "per-shard order"
    );
    assert!(
        board.most_inside.load(Ordering::SeqCst) >= 2,
        "processors ran one at a time"
    );
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let calls = board.calls.lock().unwrap().clone();
    for shard in expected.keys() {
        assert!(calls.contains(&format!("initialize {shard}")), "{calls:?}");
        assert!(
            calls.contains(&format!("shutdown_requested {shard}")),
            "{calls:?}"
        );
    }
    // Automatic checkpoints: each shard at its last record.
    let written = checkpoints(&app);
    assert!(
        written.values().all(|c| matches!(c, Checkpoint::At(_))),
        "{written:?}"
    );
}

#[test]
fn a_failing_shard_is_given_up_alone_and_never_checkpointed_past_its_failure() {
    let stream = common::create_stream(2);
    let app = common::unique_name("poison");
    put(&stream, "r", 40);
    let expected = put_in_order(&stream);
    let (poisoned, healthy) = {
        let mut shards = expected.iter();
        let a = shards.next().unwrap();
        let b = shards.next().unwrap();
        (a, b)
    };
    let poison = poisoned.1[poisoned.1.len() / 2].clone();
    let board: Arc<Board> = Arc::default();
    let policy = ErrorPolicy::RetryThenReleaseShard {
        retries: 1,
        backoff: Duration::from_millis(10),
    };
    let (stop, thread) = run_processors(
        common::consumer_builder(&stream, &app)
            .error_policy(policy)
            .max_records_per_read(1),
        &board,
        Duration::ZERO,
        Some(&poison),
        0,
    );
    wait_for("the healthy shard", Duration::from_secs(60), || {
        board.processed.lock().unwrap().get(healthy.0) == Some(healthy.1)
    });
    wait_for(
        "the poisoned shard given up",
        Duration::from_secs(30),
        || {
            board
                .calls
                .lock()
                .unwrap()
                .contains(&format!("lease_lost {}", poisoned.0))
        },
    );
    assert!(!thread.is_finished(), "the consumer goes on");
    // Up to the record before the poison, never past it.
    let processed = board
        .processed
        .lock()
        .unwrap()
        .get(poisoned.0)
        .cloned()
        .unwrap_or_default();
    let before: Vec<String> = poisoned
        .1
        .iter()
        .take_while(|v| **v != poison)
        .cloned()
        .collect();
    // Records before the poison only, in order. Polled one at a time, all
    // of them; through fan-out, the poison's event holds earlier records too.
    assert!(before.starts_with(&processed), "{processed:?}");
    if !common::fan_out() {
        assert_eq!(processed, before);
    }
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let written = checkpoints(&app);
    let poison_position = common::position_of(&stream, poisoned.0, &poison);
    match &written[poisoned.0] {
        Checkpoint::At(p) => assert!(*p < poison_position, "{p:?}"),
        Checkpoint::TrimHorizon => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_processor_retried_until_it_succeeds_loses_and_repeats_nothing() {
    let stream = common::create_stream(1);
    let app = common::unique_name("retry");
    put(&stream, "r", 10);
    let expected = put_in_order(&stream);
    let board: Arc<Board> = Arc::default();
    let policy = ErrorPolicy::Retry {
        retries: 3,
        backoff: Duration::from_millis(10),
    };
    let (stop, thread) = run_processors(
        common::consumer_builder(&stream, &app).error_policy(policy),
        &board,
        Duration::ZERO,
        None,
        2,
    );
    wait_for("every record", Duration::from_secs(30), || {
        board
            .processed
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 10
    });
    stop.shutdown();
    thread.join().unwrap().unwrap();
    assert_eq!(*board.processed.lock().unwrap(), expected);
}

#[test]
fn a_processor_hands_its_shard_over_to_a_joining_worker_without_repeats() {
    let stream = common::create_stream(2);
    let app = common::unique_name("processor-handoff");
    put(&stream, "before", 20);
    let (first_board, second_board): (Arc<Board>, Arc<Board>) = Default::default();
    let total = |b: &Board| {
        b.processed
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    let first = run_processors(
        common::consumer_builder(&stream, &app).worker_id("first"),
        &first_board,
        Duration::ZERO,
        None,
        0,
    );
    wait_for("the records", Duration::from_secs(30), || {
        total(&first_board) == 20
    });
    let second = run_processors(
        common::consumer_builder(&stream, &app).worker_id("second"),
        &second_board,
        Duration::ZERO,
        None,
        0,
    );
    wait_for("a shard handed over", Duration::from_secs(30), || {
        !second_board.calls.lock().unwrap().is_empty()
    });
    let taken = second_board.calls.lock().unwrap()[0].clone();
    let shard = taken.strip_prefix("initialize ").unwrap().to_owned();
    let calls = first_board.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&format!("shutdown_requested {shard}")),
        "{calls:?}"
    );
    put(&stream, "after", 20);
    wait_for("every record", Duration::from_secs(30), || {
        total(&first_board) + total(&second_board) == 40
    });
    for (stop, thread) in [first, second] {
        stop.shutdown();
        thread.join().unwrap().unwrap();
    }
    assert_eq!(
        total(&first_board) + total(&second_board),
        40,
        "nothing twice"
    );
}

/// A consumer whose checkpoint writes DynamoDB refuses from the start:
/// `run` (or `run_processors`) fails at shutdown naming the shard, after
/// trying the last checkpoint again, and the lease is not released as if
/// saved: it keeps its owner (and expires), its checkpoint untouched.
fn a_refused_last_checkpoint_fails_run(processors: bool) {
    let stream = common::create_stream(1);
    let app = common::unique_name(if processors { "unsaved-p" } else { "unsaved" });
    let proxy = Proxy::for_emulators();
    let builder =
        common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app).worker_id("refused");
    let rule = proxy.add_matching(
        "UpdateItem",
        Some(":checkpoint\""),
        Trigger::Always,
        Fault::aws(500, "InternalServerError"),
    );
    put(&stream, "r", 10);
    let board: Arc<Board> = Arc::default();
    type Delivered = Box<dyn Fn() -> usize>;
    let (stop, thread, delivered): (_, _, Delivered) = if processors {
        let (stop, thread) = run_processors(builder, &board, Duration::ZERO, None, 0);
        let total = move || board.processed.lock().unwrap().values().map(Vec::len).sum();
        (stop, thread, Box::new(total))
    } else {
        let running = start_batches(builder);
        let seen = running.seen.clone();
        let total = move || seen.lock().unwrap().records.len();
        (running.stop, running.thread, Box::new(total))
    };
    wait_for("every record", Duration::from_secs(30), || {
        delivered() == 10
    });
    wait_for("a refused checkpoint", Duration::from_secs(10), || {
        proxy.hits(rule) > 0
    });
    let refused_before = proxy.hits(rule);
    stop.shutdown();
    let result = thread.join().unwrap();
    let shard = checkpoints(&app).into_keys().next().unwrap();
    match &result {
        Err(Error::CheckpointsNotSaved { shard_ids, .. }) => {
            assert_eq!(shard_ids, std::slice::from_ref(&shard))
        }
        other => panic!("{other:?}"),
    }
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains(&shard) && message.contains("checkpoint"),
        "{message}"
    );
    assert!(proxy.hits(rule) > refused_before, "tried again at shutdown");
    let lease =
        kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), &app)
            .unwrap()
            .remove(0);
    assert_eq!(lease.owner.as_deref(), Some("refused"), "not released");
    assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon);
}

#[test]
fn a_refused_last_checkpoint_fails_run_naming_the_shard() {
    a_refused_last_checkpoint_fails_run(false);
}

#[test]
fn a_refused_last_checkpoint_fails_run_processors_naming_the_shard() {
    a_refused_last_checkpoint_fails_run(true);
}

#[test]
fn a_blocked_child_asked_for_by_a_peer_is_handed_over_by_processors() {
    let stream = common::create_stream(1);
    let app = common::unique_name("blocked-ask");
    put(&stream, "before", 10);
    let board: Arc<Board> = Arc::default();
    // Only a workers-row fleet holds the leases of blocked children (a
    // leader assigns a child once its parents finished).
    let (stop, thread) = run_processors(
        common::consumer_builder(&stream, &app)
            .worker_id("owner")
            .coordination(kinesis_consumer::Coordination::WorkersRow),
        &board,
        Duration::ZERO,
        None,
        0,
    );
    let total = || {
        board
            .processed
            .lock()
            .unwrap()
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    wait_for("the first records", Duration::from_secs(30), || {
        total() == 10
    });
    // The parent's processor is kept inside `process` with its last
    // records: the parent cannot end, its children stay blocked.
    board.hold.store(true, Ordering::SeqCst);
    put(&stream, "late", 5);
    wait_for("the late records' call", Duration::from_secs(30), || {
        board.waiting.load(Ordering::SeqCst) == 1
    });
    let parent = common::split_first_shard(&stream);
    let config = common::config(&common::emulators().dynamodb_url);
    let leases = || kinesis_consumer::list_leases(&config, &app).unwrap();
    wait_for("the children taken", Duration::from_secs(30), || {
        let leases = leases();
        leases.len() == 3 && leases.iter().all(|l| l.owner.as_deref() == Some("owner"))
    });
    let child = leases()
        .into_iter()
        .find(|l| l.shard_id != parent.shard_id)
        .unwrap()
        .shard_id;
    // A peer asks for the blocked child, as the planner does: it marks
    // the lease and bumps the owner's inbox.
    let d = common::dynamodb();
    let key = |k: &str| HashMap::from([("leaseKey".to_owned(), AttributeValue::S(k.into()))]);
    let ask = Expression::new("SET handoffTo = :to").value(":to", AttributeValue::S("peer".into()));
    d.update_item(&app, &key(&child), &ask, None).unwrap();
    let bump = Expression::new("ADD #inbox :one")
        .name("#inbox", "inbox:owner")
        .value(":one", AttributeValue::N("1".into()));
    d.update_item(&app, &key("kinesis-consumer:workers"), &bump, None)
        .unwrap();
    wait_for("the child handed over", Duration::from_secs(10), || {
        leases()
            .iter()
            .any(|l| l.shard_id == child && l.owner.as_deref() == Some("peer"))
    });
    board.hold.store(false, Ordering::SeqCst);
    stop.shutdown();
    thread.join().unwrap().unwrap();
}

#[test]
fn a_slow_processor_holds_back_only_its_own_shard() {
    let stream = common::create_stream(4);
    let app = common::unique_name("slow-one");
    // 40 records of 2 KB on each shard, chosen by hash key.
    let k = common::kinesis();
    let shards = k.list_shards(&stream, None).unwrap();
    let entries: Vec<PutRecordsEntry> = (0..160)
        .map(|i| PutRecordsEntry {
            partition_key: format!("key-{i}"),
            explicit_hash_key: Some(shards[i % 4].starting_hash_key.clone()),
            data: format!("r-{i}-{}", "x".repeat(2000)).into_bytes(),
        })
        .collect();
    for r in k.put_records(&stream, &entries).unwrap() {
        r.unwrap();
    }
    let expected = put_in_order(&stream);
    let slow = shards[0].shard_id.clone();
    let board: Arc<Board> = Arc::default();
    *board.held_shard.lock().unwrap() = Some(slow.clone());
    board.hold.store(true, Ordering::SeqCst);
    // A buffer of about four reads: the slow shard's queue alone (four
    // reads, one in its processor, one more read) would fill it. Polling
    // only: one fan-out event carries a shard's whole backlog (80 KB here,
    // past the 48 KB buffer), so the slow shard's first event takes all the
    // room until events are split to the shard's share (issue 24, memory).
    let e = common::emulators();
    let (stop, thread) = run_processors(
        common::consumer_builder_at(&e.kinesis_url, &e.dynamodb_url, &stream, &app)
            .max_records_per_read(5)
            .buffer_bytes(48 * 1024),
        &board,
        Duration::ZERO,
        None,
        0,
    );
    wait_for("the fast shards' records", Duration::from_secs(60), || {
        let processed = board.processed.lock().unwrap();
        expected
            .iter()
            .filter(|(shard, _)| **shard != slow)
            .all(|(shard, records)| processed.get(shard) == Some(records))
    });
    assert_eq!(
        board.waiting.load(Ordering::SeqCst),
        1,
        "the slow one waits"
    );
    assert!(!board.processed.lock().unwrap().contains_key(&slow));
    board.hold.store(false, Ordering::SeqCst);
    wait_for("the slow shard's records", Duration::from_secs(60), || {
        board.processed.lock().unwrap().get(&slow) == expected.get(&slow)
    });
    stop.shutdown();
    thread.join().unwrap().unwrap();
}

/// The `tail` example, started on `stream` (its Kinesis from the
/// emulators, its DynamoDB at `dynamodb_url`), with `extra` arguments;
/// returns it with its stdout lines and stderr lines as they come.
struct Tail {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Its stderr, read to the end.
    stderr: JoinHandle<Vec<String>>,
}

impl Tail {
    fn start(stream: &str, app: &str, dynamodb_url: &str, extra: &[&str]) -> Tail {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = common::aws_env(std::process::Command::new(common::example_binary("tail")))
            .env("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_url)
            .args([
                "--stream",
                stream,
                "--app",
                app,
                "--position",
                "trim-horizon",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(|l| l.ok()) {
                let v = serde_json::from_str(&line).expect("tail prints JSON lines");
                sink.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            std::io::BufReader::new(err)
                .lines()
                .map_while(|l| l.ok())
                .collect()
        });
        Tail {
            child,
            lines,
            stderr,
        }
    }

    /// Each shard's records printed, as text, in the order printed.
    fn by_shard(&self) -> BTreeMap<String, Vec<String>> {
        use base64::Engine;
        let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in self.lines.lock().unwrap().iter() {
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data_base64"].as_str().unwrap())
                .unwrap();
            by_shard
                .entry(v["shard_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(String::from_utf8(data).unwrap());
        }
        by_shard
    }

    /// Stops it with SIGTERM; its exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "tail did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self.stderr.join().unwrap().join("\n");
        (status, stderr)
    }
}

#[test]
fn tail_with_processors_prints_every_shard_in_order_and_checkpoints() {
    let stream = common::create_stream(2);
    let app = common::unique_name("tail-processors");
    put(&stream, "r", 30);
    let expected = put_in_order(&stream);
    let dynamodb = common::emulators().dynamodb_url.clone();
    let tail = Tail::start(&stream, &app, &dynamodb, &["--processors"]);
    wait_for("every record printed", Duration::from_secs(30), || {
        tail.lines.lock().unwrap().len() == 30
    });
    assert_eq!(tail.by_shard(), expected);
    let (status, stderr) = tail.stop();
    assert!(status.success(), "{status}: {stderr}");
    // Each shard checkpointed at its last record, its lease released.
    let leases = kinesis_consumer::list_leases(&common::config(&dynamodb), &app).unwrap();
    for lease in leases {
        let last = expected[&lease.shard_id].last().unwrap();
        let position = common::position_of(&stream, &lease.shard_id, last);
        assert_eq!(lease.checkpoint, Checkpoint::At(position));
        assert_eq!(lease.owner, None, "released");
    }
}

/// `tail` (batch handler or processors) whose last checkpoint DynamoDB
/// refuses exits non-zero, naming the checkpoint and the shard.
fn tail_with_a_refused_last_checkpoint_exits_non_zero(extra: &[&str]) {
    let stream = common::create_stream(1);
    let app = common::unique_name("tail-refused");
    let proxy = Proxy::for_emulators();
    proxy.add_matching(
        "UpdateItem",
        Some(":checkpoint\""),
        Trigger::Always,
        Fault::aws(500, "InternalServerError"),
    );
    put(&stream, "r", 10);
    let tail = Tail::start(&stream, &app, proxy.url(), extra);
    wait_for("every record printed", Duration::from_secs(30), || {
        tail.lines.lock().unwrap().len() == 10
    });
    let (status, stderr) = tail.stop();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let shard = checkpoints(&app).into_keys().next().unwrap();
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains("last checkpoint") && error.contains(&shard),
        "{error}"
    );
}

#[test]
fn tail_with_a_refused_last_checkpoint_exits_non_zero_naming_it() {
    tail_with_a_refused_last_checkpoint_exits_non_zero(&[]);
}

#[test]
fn tail_with_processors_and_a_refused_last_checkpoint_exits_non_zero_naming_it() {
    tail_with_a_refused_last_checkpoint_exits_non_zero(&["--processors"]);
}

#[test]
fn a_failed_read_is_not_checkpointed_by_a_shutdown_requested_that_checkpoints() {
    let stream = common::create_stream(1);
    let app = common::unique_name("poison-shutdown");
    put(&stream, "r", 20);
    let expected = put_in_order(&stream);
    let (shard, values) = expected.iter().next().unwrap();
    let poison = values[values.len() / 2].clone();
    let board: Arc<Board> = Arc::default();
    board.checkpoint_at_shutdown.store(true, Ordering::SeqCst);
    // Manual checkpoints, the default policy: the poison stops the
    // consumer, and its processor's `shutdown_requested` checkpoints.
    let (_stop, thread) = run_processors(
        common::consumer_builder(&stream, &app)
            .checkpointing(Checkpointing::Manual)
            .max_records_per_read(1),
        &board,
        Duration::ZERO,
        Some(&poison),
        0,
    );
    let result = thread.join().unwrap();
    assert!(
        matches!(&result, Err(Error::Handler(e)) if e.to_string() == "poison record"),
        "{result:?}"
    );
    let calls = board.calls.lock().unwrap().clone();
    assert!(
        calls.contains(&format!("shutdown_requested {shard}")),
        "{calls:?}"
    );
    let poison_position = common::position_of(&stream, shard, &poison);
    match &checkpoints(&app)[shard] {
        Checkpoint::At(p) => {
            assert!(*p < poison_position, "{p:?}");
            if !common::fan_out() {
                let before = &values[values.len() / 2 - 1];
                assert_eq!(*p, common::position_of(&stream, shard, before));
            }
        }
        // Through fan-out, the poison's event may hold every record.
        Checkpoint::TrimHorizon if common::fan_out() => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_flusher_thread_never_checkpoints_past_a_failing_batch() {
    let stream = common::create_stream(1);
    let app = common::unique_name("flusher");
    let policy = ErrorPolicy::Retry {
        retries: 100,
        backoff: Duration::from_millis(100),
    };
    let consumer = common::consumer_builder(&stream, &app)
        .checkpointing(Checkpointing::Manual)
        .error_policy(policy)
        .build()
        .unwrap();
    let (stop, checkpointer) = (consumer.shutdown_handle(), consumer.checkpointer());
    let accepted = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let (seen_ok, seen_failed) = (accepted.clone(), failures.clone());
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let values: Vec<String> = batch
                .messages()
                .map(|m| String::from_utf8_lossy(m.record().data()).into_owned())
                .collect();
            if values.iter().any(|v| v.starts_with("poison")) {
                seen_failed.fetch_add(1, Ordering::SeqCst);
                return Err("poison".into());
            }
            seen_ok.fetch_add(values.len(), Ordering::SeqCst);
            Ok(())
        })
    });
    put(&stream, "good", 5);
    wait_for("the good records", Duration::from_secs(30), || {
        accepted.load(Ordering::SeqCst) == 5
    });
    put(&stream, "poison", 5);
    // A flusher thread checkpoints the shard every 200 ms while the batch
    // with the poison fails and is retried; the table is read each time.
    let shard = checkpoints(&app).into_keys().next().unwrap();
    let flushing = Arc::new(AtomicBool::new(true));
    let flusher = {
        let (flushing, shard, app) = (flushing.clone(), shard.clone(), app.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while flushing.load(Ordering::SeqCst) {
                checkpointer.checkpoint(&shard).unwrap();
                seen.push(checkpoints(&app)[&shard].clone());
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        })
    };
    wait_for("the failing batch retried", Duration::from_secs(30), || {
        failures.load(Ordering::SeqCst) >= 4
    });
    flushing.store(false, Ordering::SeqCst);
    let seen = flusher.join().unwrap();
    // A shutdown during the retries ends them: `run` returns Ok.
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let values = put_in_order(&stream).remove(&shard).unwrap();
    let last_good = common::position_of(&stream, &shard, &values[4]);
    assert!(!seen.is_empty());
    for checkpoint in seen.iter().chain([&checkpoints(&app)[&shard]]) {
        assert_eq!(*checkpoint, Checkpoint::At(last_good.clone()), "{seen:?}");
    }
}
