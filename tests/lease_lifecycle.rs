//! The lease lifecycle across reshards and failures (issue 12): a finished
//! ancestor is never leased again, an orphaned parent (its shard expired
//! from the stream) never blocks its children, a malformed parent row keeps
//! its children waiting, one slow DynamoDB call costs no other lease, a
//! capped worker never deadlocks on a parent it may not take, and a worker
//! stops handing on a lease's records before a peer could take it.
//!
//! Black-box: consumers run in threads against kinesis-local and dynalite
//! (some through the fault proxy); the tests write and read lease rows with
//! a plain DynamoDB client, as an operator or another worker would, and
//! assert on what the batch handler got and what the lease table shows.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy, Trigger};
use kinesis_consumer::__test_support::{AttributeValue, Item};
use kinesis_consumer::aws::kinesis::{PutRecordsEntry, Shard};
use kinesis_consumer::{ConsumerBuilder, Payload, SequenceNumber, ShutdownHandle};

/// The failover time of the tests' consumers (see `common::consumer_builder`).
const FAILOVER: Duration = Duration::from_secs(3);

/// Timing-sensitive tests run one at a time on a shared machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One record put: its data, shard and sequence number.
#[derive(Clone, Debug)]
struct Put {
    data: String,
    shard: String,
    seq: SequenceNumber,
}

/// Puts `count` records `{prefix}-{i}`, each with its own partition key so
/// that they spread over the hash key space.
fn put(stream: &str, prefix: &str, count: usize) -> Vec<Put> {
    let entries: Vec<PutRecordsEntry> = (0..count)
        .map(|i| PutRecordsEntry {
            partition_key: format!("{prefix}-key-{i}"),
            explicit_hash_key: None,
            data: format!("{prefix}-{i}").into_bytes(),
        })
        .collect();
    common::kinesis()
        .put_records(stream, &entries)
        .unwrap()
        .into_iter()
        .zip(&entries)
        .map(|(r, e)| {
            let r = r.unwrap();
            Put {
                data: String::from_utf8(e.data.clone()).unwrap(),
                shard: r.shard_id,
                seq: r.sequence_number,
            }
        })
        .collect()
}

/// The records of `puts` that went to `shard`.
fn of_shard<'a>(puts: &'a [Put], shard: &str) -> Vec<&'a Put> {
    puts.iter().filter(|p| p.shard == shard).collect()
}

/// One record the batch handler got, and when.
#[derive(Clone, Debug)]
struct Delivered {
    data: String,
    shard: String,
    at: Instant,
}

/// A consumer running in a thread. Dropping it (also when a test panics)
/// asks it to stop, so a failed test leaves no consumer behind for long.
struct Running {
    name: String,
    stop: ShutdownHandle,
    thread: Mutex<Option<JoinHandle<kinesis_consumer::Result<()>>>>,
    got: Arc<Mutex<Vec<Delivered>>>,
}

impl Running {
    fn start(name: &str, builder: ConsumerBuilder<Payload>) -> Running {
        let consumer = builder.build().unwrap();
        let stop = consumer.shutdown_handle();
        let got: Arc<Mutex<Vec<Delivered>>> = Arc::default();
        let sink = got.clone();
        let thread = std::thread::spawn(move || {
            consumer.run(move |batch| {
                let at = Instant::now();
                let mut sink = sink.lock().unwrap();
                for m in batch.messages() {
                    sink.push(Delivered {
                        data: String::from_utf8(m.value().to_vec()).unwrap(),
                        shard: m.record().shard_id().to_owned(),
                        at,
                    });
                }
                Ok(())
            })
        });
        Running {
            name: name.to_owned(),
            stop,
            thread: Mutex::new(Some(thread)),
            got,
        }
    }

    /// Panics, with what `run` returned, if the consumer stopped by itself.
    fn assert_running(&self) {
        let mut thread = self.thread.lock().unwrap();
        if thread.as_ref().is_some_and(|t| t.is_finished()) {
            let result = thread.take().unwrap().join();
            panic!(
                "consumer {} stopped by itself; run returned {result:?}",
                self.name
            );
        }
    }

    fn delivered(&self) -> Vec<Delivered> {
        self.got.lock().unwrap().clone()
    }

    fn delivered_set(&self) -> HashSet<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.data.clone())
            .collect()
    }

    /// How many of `puts` were delivered.
    fn count_delivered<'a>(&self, puts: impl IntoIterator<Item = &'a Put>) -> (usize, usize) {
        let seen = self.delivered_set();
        let (mut got, mut all) = (0, 0);
        for p in puts {
            all += 1;
            got += usize::from(seen.contains(&p.data));
        }
        (got, all)
    }

    /// Stops the consumer and waits (bounded) for `run` to return Ok.
    fn stop(self) {
        self.stop.shutdown();
        let thread = self
            .thread
            .lock()
            .unwrap()
            .take()
            .expect("the consumer is running");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "consumer {} did not stop within 30 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let result = thread.join().unwrap();
        assert!(result.is_ok(), "consumer {}: {result:?}", self.name);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.shutdown();
    }
}

/// Polls `done` every 100 ms for up to `timeout`, checking meanwhile that
/// every consumer in `running` keeps running; the time it took.
fn wait_until(
    what: &str,
    timeout: Duration,
    running: &[&Running],
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        for r in running {
            r.assert_running();
        }
        if done() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `run` delivered every record of `puts`.
fn wait_delivered(what: &str, timeout: Duration, run: &Running, puts: &[&Put]) -> Duration {
    let started = Instant::now();
    loop {
        run.assert_running();
        let (got, all) = run.count_delivered(puts.iter().copied());
        if got == all {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {got} of {all} delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (60 s at most) until every record of `put` was delivered by `a`
/// or `b`.
fn wait_delivered_by_either(put: &[Put], a: &Running, b: &Running) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = a
            .delivered_set()
            .union(&b.delivered_set())
            .cloned()
            .collect();
        let missing = put.iter().filter(|p| !seen.contains(&p.data)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} records never delivered",
            put.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Records delivered more than once, with how often.
fn duplicates(delivered: &[Delivered]) -> Vec<(String, usize)> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for d in delivered {
        *count.entry(&d.data).or_default() += 1;
    }
    let mut twice: Vec<(String, usize)> = count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(d, n)| (d.to_owned(), n))
        .collect();
    twice.sort();
    twice
}

// ---- the lease table, as another worker or an operator sees it ----

/// Every row of an application's lease table, by lease key (none before
/// the table exists).
fn rows(app: &str) -> HashMap<String, Item> {
    let items = match common::lease_rows(app) {
        Err(e) if e.code() == Some("ResourceNotFoundException") => return HashMap::new(),
        items => items.unwrap(),
    };
    items
        .into_iter()
        .map(|i| (i["leaseKey"].as_s().unwrap().to_owned(), i))
        .collect()
}

fn owner_of(row: &Item) -> Option<&str> {
    row.get("leaseOwner").and_then(AttributeValue::as_s)
}

fn checkpoint_of(row: &Item) -> Option<&str> {
    row.get("checkpoint").and_then(AttributeValue::as_s)
}

fn write_row(app: &str, item: &Item) {
    common::dynamodb().put_item(app, item, None).unwrap();
}

// ---- the stream ----

fn shards(stream: &str) -> Vec<Shard> {
    common::kinesis().list_shards(stream, None).unwrap()
}

/// The children of `parent`, lower hash keys first.
fn children_of(stream: &str, parent: &str) -> Vec<Shard> {
    let mut children: Vec<Shard> = shards(stream)
        .into_iter()
        .filter(|s| s.parents().any(|p| p == parent))
        .collect();
    children.sort_by_key(|s| s.starting_hash_key.parse::<u128>().unwrap());
    children
}

/// Merges the two children of a split `parent` back into one shard and
/// waits until the stream is active; returns the merged shard.
fn merge_children(stream: &str, parent: &str) -> Shard {
    let children = children_of(stream, parent);
    assert_eq!(children.len(), 2, "{parent} was split in two");
    let k = common::kinesis();
    k.merge_shards(stream, &children[0].shard_id, &children[1].shard_id)
        .unwrap();
    k.wait_until_active(stream, Duration::from_secs(30))
        .unwrap();
    shards(stream)
        .into_iter()
        .find(|s| s.parent_shard_id.as_deref() == Some(children[0].shard_id.as_str()))
        .expect("the merged shard")
}

/// Makes the proxy answer as Kinesis does once `shard` has expired from
/// the stream (it was closed by a reshard longer than the retention period
/// ago): shard listings (ListShards, DescribeStream) leave it out, its
/// children still name it as their parent, and GetShardIterator for it is
/// answered with ResourceNotFoundException. The first `listed` listings
/// still show it (a listing taken just before it expired). kinesis-local
/// cannot expire shards, so the proxy plays this part.
fn expire_shard(proxy: &Proxy, stream: &str, shard: &str, listed: u32) {
    let hidden = shard.to_owned();
    let hide = move |body: &[u8]| -> Vec<u8> {
        let Ok(mut reply) = serde_json::from_slice::<serde_json::Value>(body) else {
            return body.to_vec();
        };
        for path in ["/Shards", "/StreamDescription/Shards"] {
            if let Some(list) = reply.pointer_mut(path).and_then(|l| l.as_array_mut()) {
                list.retain(|s| s["ShardId"].as_str() != Some(hidden.as_str()));
            }
        }
        serde_json::to_vec(&reply).unwrap()
    };
    let hide = Arc::new(hide);
    for operation in ["ListShards", "DescribeStream"] {
        let hide = hide.clone();
        proxy.add(
            operation,
            Trigger::After(listed),
            Fault::rewrite(move |body| hide(body)),
        );
    }
    let not_found = Fault::Reply {
        status: 400,
        content_type: "application/x-amz-json-1.1",
        body: format!(
            r#"{{"__type":"ResourceNotFoundException","message":"Shard {shard} in stream {stream} under account 000000000000 does not exist"}}"#
        ),
    };
    proxy.add_matching(
        "GetShardIterator",
        Some(&format!("\"{shard}\"")),
        Trigger::Always,
        not_found,
    );
}

// ---- 1. A finished ancestor never comes back ----

/// Split a shard, let its lease be cleaned up once both children started,
/// then merge the two children and let their leases be cleaned up too. The
/// grandparent is still listed by the stream (retention) but nothing in the
/// lease table refers to it any more: the next shard syncs must not lease
/// it again, so a TrimHorizon consumer never delivers its records twice.
#[test]
fn a_finished_ancestor_is_never_leased_again() {
    let _serial = serial();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let sync = Duration::from_secs(1);
    let run = Running::start(
        "worker",
        common::consumer_builder(&stream, &app).shard_sync_interval(sync),
    );
    let grandparent = put(&stream, "grandparent", 30);
    let gp_id = grandparent[0].shard.clone();
    wait_delivered(
        "the grandparent's records",
        Duration::from_secs(30),
        &run,
        &grandparent.iter().collect::<Vec<_>>(),
    );

    common::split_first_shard(&stream);
    let children = children_of(&stream, &gp_id);
    let split = put(&stream, "child", 40);
    for c in &children {
        assert!(
            !of_shard(&split, &c.shard_id).is_empty(),
            "precondition: every child gets records"
        );
    }
    wait_delivered(
        "the children's records",
        Duration::from_secs(30),
        &run,
        &split.iter().collect::<Vec<_>>(),
    );
    wait_until(
        "the grandparent's lease to be deleted once both children started (precondition: finished leases are cleaned up)",
        Duration::from_secs(30),
        &[&run],
        || !rows(&app).contains_key(&gp_id),
    );

    // From now on, the grandparent's lease row must never come back.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (app, gp_id, watching) = (app.clone(), gp_id.clone(), watching.clone());
        let since = Instant::now();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while watching.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(row) = rows(&app).get(&gp_id) {
                    return Some(format!(
                        "{:.1} s after it was deleted: {row:?}",
                        since.elapsed().as_secs_f64()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        })
    };

    let merged = merge_children(&stream, &gp_id);
    let after_merge = put(&stream, "merged", 20);
    assert!(after_merge.iter().all(|p| p.shard == merged.shard_id));
    wait_delivered(
        "the merged shard's records",
        Duration::from_secs(30),
        &run,
        &after_merge.iter().collect::<Vec<_>>(),
    );
    // Once the children's leases are cleaned up too, no lease row refers
    // to the grandparent (as parent or otherwise).
    let child_ids: Vec<String> = children.iter().map(|c| c.shard_id.clone()).collect();
    wait_until(
        "the children's leases to be deleted once the merged shard started (precondition: finished leases are cleaned up)",
        Duration::from_secs(30),
        &[&run],
        || {
            let rows = rows(&app);
            child_ids.iter().all(|c| !rows.contains_key(c))
        },
    );
    // Several shard syncs and lease rounds go by.
    let settle = Instant::now();
    wait_until(
        "six shard sync intervals",
        Duration::from_secs(30),
        &[&run],
        || settle.elapsed() >= sync * 6,
    );
    watching.store(false, Ordering::Relaxed);
    let recreated = watcher.join().unwrap();

    let delivered = run.delivered();
    let twice = duplicates(&delivered);
    let gp_twice = twice
        .iter()
        .filter(|(d, _)| d.starts_with("grandparent-"))
        .count();
    assert!(
        twice.is_empty(),
        "records delivered more than once ({} of them the grandparent's {}): {twice:?}",
        gp_twice,
        grandparent.len()
    );
    assert!(
        recreated.is_none(),
        "the grandparent {gp_id}'s lease was created again {}",
        recreated.unwrap_or_default()
    );
    run.stop();
}

// ---- 2. An orphaned parent never blocks its children ----

/// The application was down past the retention period across a reshard:
/// its lease table still has the parent's lease, checkpointed short of
/// SHARD_END, but the service no longer knows the parent; only its
/// children are listed (still naming it as their parent). The children's
/// records must be delivered, the consumer must keep running, and the
/// orphaned lease must be deleted.
#[test]
fn an_orphaned_parent_never_blocks_its_children() {
    let _serial = serial();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let expired = put(&stream, "expired", 10);
    let parent = common::split_first_shard(&stream);
    let fresh = put(&stream, "child", 40);
    for c in children_of(&stream, &parent.shard_id) {
        assert!(
            !of_shard(&fresh, &c.shard_id).is_empty(),
            "precondition: every child gets records"
        );
    }
    let proxy = Proxy::for_emulators();
    expire_shard(&proxy, &stream, &parent.shard_id, 0);
    common::create_lease_table(&app);
    // The last owner crashed half way through the parent.
    let checkpoint = expired[4].seq.as_str().to_owned();
    write_row(
        &app,
        &common::kcl_lease_row(&parent, Some("worker-of-last-month"), 12, &checkpoint),
    );

    let e = common::emulators();
    let run = Running::start(
        "worker",
        common::consumer_builder_at(proxy.url(), &e.dynamodb_url, &stream, &app),
    );
    let took = wait_delivered(
        "the children's records (their parent expired from the stream)",
        Duration::from_secs(30),
        &run,
        &fresh.iter().collect::<Vec<_>>(),
    );
    let deleted = wait_until(
        "the orphaned parent's lease to be deleted",
        Duration::from_secs(30),
        &[&run],
        || !rows(&app).contains_key(&parent.shard_id),
    );
    println!(
        "orphaned parent: children's {} records delivered after {:.1} s, its lease deleted {:.1} s later",
        fresh.len(),
        took.as_secs_f64(),
        deleted.as_secs_f64()
    );
    run.stop();
}

/// Same story, but the consumer's first shard listing still shows the
/// parent (it expired just after): the consumer takes its lease, and its
/// reader is told the shard does not exist. That must not stop the
/// consumer; the lease is finished, the children are read.
#[test]
fn a_reader_told_its_shard_is_gone_does_not_stop_the_consumer() {
    let _serial = serial();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let expired = put(&stream, "expired", 10);
    let parent = common::split_first_shard(&stream);
    let fresh = put(&stream, "child", 40);
    let proxy = Proxy::for_emulators();
    expire_shard(&proxy, &stream, &parent.shard_id, 1);
    common::create_lease_table(&app);
    // Released by a graceful shutdown half way through the parent.
    let checkpoint = expired[4].seq.as_str().to_owned();
    write_row(&app, &common::kcl_lease_row(&parent, None, 12, &checkpoint));

    let e = common::emulators();
    let run = Running::start(
        "worker",
        common::consumer_builder_at(proxy.url(), &e.dynamodb_url, &stream, &app),
    );
    wait_delivered(
        "the children's records (their parent expired from the stream)",
        Duration::from_secs(30),
        &run,
        &fresh.iter().collect::<Vec<_>>(),
    );
    wait_until(
        "the orphaned parent's lease to be deleted",
        Duration::from_secs(30),
        &[&run],
        || !rows(&app).contains_key(&parent.shard_id),
    );
    println!(
        "expired just after the first listing: GetShardIterator for {} refused {} time(s); children read, lease deleted",
        parent.shard_id,
        proxy.faults("GetShardIterator")
    );
    run.stop();
}

// ---- 3. A malformed parent row keeps its children waiting ----

/// The parent's lease row is malformed (its checkpoint is no position and
/// no sequence number): nobody can tell whether the parent was finished,
/// so its children must not be read, while the rest of the stream is.
#[test]
fn a_malformed_parent_row_keeps_its_children_waiting() {
    let _serial = serial();
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let parent = common::split_first_shard(&stream);
    let records = put(&stream, "r", 60);
    let children: Vec<String> = children_of(&stream, &parent.shard_id)
        .into_iter()
        .map(|c| c.shard_id)
        .collect();
    let of_children: Vec<&Put> = records
        .iter()
        .filter(|p| children.contains(&p.shard))
        .collect();
    let of_others: Vec<&Put> = records
        .iter()
        .filter(|p| !children.contains(&p.shard))
        .collect();
    assert!(
        !of_children.is_empty() && !of_others.is_empty(),
        "precondition: records in the children and elsewhere"
    );
    common::create_lease_table(&app);
    write_row(&app, &common::kcl_lease_row(&parent, None, 3, "nonsense"));

    let run = Running::start(
        "worker",
        common::consumer_builder(&stream, &app).shard_sync_interval(Duration::from_secs(1)),
    );
    // The rest of the stream is read: the consumer works.
    wait_delivered(
        "the records of the shard that is no child",
        Duration::from_secs(30),
        &run,
        &of_others,
    );
    // The children stay blocked for many lease rounds and shard syncs.
    let window = Duration::from_secs(12);
    let started = Instant::now();
    let child_set: HashSet<&str> = of_children.iter().map(|p| p.data.as_str()).collect();
    while started.elapsed() < window {
        run.assert_running();
        let early: Vec<Delivered> = run
            .delivered()
            .into_iter()
            .filter(|d| child_set.contains(d.data.as_str()))
            .collect();
        assert!(
            early.is_empty(),
            "{} records of the children {children:?} were delivered although their parent's lease row is malformed (first from {})",
            early.len(),
            early[0].shard
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run.stop();
}

/// The `leases` example explains both cases: a row for a shard that has
/// expired from the stream, and a malformed row (which `list_leases` alone
/// would leave out). It can only know a shard expired by asking the stream,
/// so it is given `--stream`; endpoints come from the standard environment.
#[test]
fn the_leases_example_explains_expired_and_malformed_rows() {
    let _serial = serial();
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let expired = put(&stream, "expired", 20);
    let parent = common::split_first_shard(&stream);
    let other = shards(&stream)
        .into_iter()
        .find(|s| s.shard_id != parent.shard_id && s.parent_shard_id.is_none())
        .unwrap();
    let proxy = Proxy::for_emulators();
    expire_shard(&proxy, &stream, &parent.shard_id, 0);
    common::create_lease_table(&app);
    let checkpoint = of_shard(&expired, &parent.shard_id)[0]
        .seq
        .as_str()
        .to_owned();
    write_row(
        &app,
        &common::kcl_lease_row(&parent, Some("old-worker"), 12, &checkpoint),
    );
    write_row(&app, &common::kcl_lease_row(&other, None, 3, "nonsense"));

    let e = common::emulators();
    let out = Command::new(common::example_binary("leases"))
        .args(["--app", &app, "--stream", &stream, "--observe-ms", "300"])
        .env("AWS_ENDPOINT_URL_KINESIS", proxy.url())
        .env("AWS_ENDPOINT_URL_DYNAMODB", &e.dynamodb_url)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let line_of = |shard: &str| text.lines().find(|l| l.contains(shard));
    let mut problems = Vec::new();
    match line_of(&parent.shard_id) {
        Some(l) if l.contains("expired from the stream") => {}
        l => problems.push(format!(
            "{} (gone from the stream) is not shown as \"expired from the stream\": {l:?}",
            parent.shard_id
        )),
    }
    match line_of(&other.shard_id) {
        Some(l) if l.to_lowercase().contains("malformed") => {}
        l => problems.push(format!(
            "{} (checkpoint \"nonsense\") is not shown as malformed: {l:?}",
            other.shard_id
        )),
    }
    assert!(problems.is_empty(), "{problems:#?}\n{text}\n{stderr}");
}

// ---- 4. One slow DynamoDB call never costs unrelated leases ----

/// Puts `batch` records every 200 ms until stopped; what it put.
struct Producer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Put>>,
}

fn produce(stream: &str, prefix: &str, batch: usize) -> Producer {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, stream, prefix) = (stop.clone(), stream.to_owned(), prefix.to_owned());
    let thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut round = 0;
        while !flag.load(Ordering::Relaxed) {
            all.extend(put(&stream, &format!("{prefix}{round}"), batch));
            round += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        all
    });
    Producer { stop, thread }
}

impl Producer {
    fn finish(self) -> Vec<Put> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Shards owned by `owner` in the table (open leases only).
fn owned_by(app: &str, owner: &str) -> Vec<String> {
    let mut owned: Vec<String> = rows(app)
        .into_iter()
        .filter(|(_, r)| owner_of(r) == Some(owner) && checkpoint_of(r) != Some("SHARD_END"))
        .map(|(k, _)| k)
        .collect();
    owned.sort();
    owned
}

/// Worker A holds four of eight leases, worker B the other four. One of
/// A's lease-table writes hangs (every UpdateItem of one lease gets its
/// reply 15 s late, for 12 s; failover is 3 s). Only that lease may be at
/// risk: A's heartbeat keeps its other three, so B never takes them.
#[test]
fn one_hung_lease_write_costs_no_other_lease() {
    let _serial = serial();
    let stream = common::create_stream(8);
    let app = common::unique_name("app");
    let producer = produce(&stream, "p", 16);
    let proxy = Proxy::for_emulators();
    let a = Running::start(
        "worker-A",
        common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app).worker_id("worker-A"),
    );
    wait_until(
        "worker A to hold all 8 leases",
        Duration::from_secs(30),
        &[&a],
        || owned_by(&app, "worker-A").len() == 8,
    );
    let b = Running::start(
        "worker-B",
        common::consumer_builder(&stream, &app).worker_id("worker-B"),
    );
    wait_until("4 leases each", Duration::from_secs(30), &[&a, &b], || {
        owned_by(&app, "worker-A").len() == 4 && owned_by(&app, "worker-B").len() == 4
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut a_leases = owned_by(&app, "worker-A");
    assert_eq!(a_leases.len(), 4, "precondition: a stable 4 + 4 split");
    let hung = a_leases.remove(0);
    let others = a_leases;

    let fault = proxy.add_matching(
        "UpdateItem",
        Some(&format!("\"{hung}\"")),
        Trigger::For(Duration::from_secs(12)),
        Fault::Delay(Duration::from_secs(15)),
    );
    let installed = Instant::now();
    // Watch the table as B does, every 100 ms, for the fault and a few
    // failover times after it.
    let mut max_gap: HashMap<String, (u64, Instant, Duration)> = HashMap::new();
    while installed.elapsed() < Duration::from_secs(18) {
        a.assert_running();
        b.assert_running();
        let rows = rows(&app);
        let now = Instant::now();
        for shard in &others {
            let row = &rows[shard];
            assert_eq!(
                owner_of(row),
                Some("worker-A"),
                "lease {shard} (not the one whose write hung, {hung}) went from worker A to {:?} {:.1} s after one UpdateItem of {hung} began to hang (fault fired {} times)",
                owner_of(row),
                installed.elapsed().as_secs_f64(),
                proxy.hits(fault)
            );
            let counter: u64 = row["leaseCounter"].as_n().unwrap().parse().unwrap();
            let entry = max_gap
                .entry(shard.clone())
                .or_insert((counter, now, Duration::ZERO));
            if entry.0 != counter {
                entry.0 = counter;
                entry.1 = now;
            }
            entry.2 = entry.2.max(now - entry.1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        proxy.hits(fault) > 0,
        "precondition: a write of {hung} hung"
    );
    let gaps: Vec<String> = others
        .iter()
        .map(|s| format!("{s}: {:.1} s", max_gap[s].2.as_secs_f64()))
        .collect();
    println!(
        "hung write on {hung}: {} UpdateItems delayed; the other leases kept worker A, longest time without a write to each seen: {gaps:?} (failover {FAILOVER:?})",
        proxy.hits(fault)
    );
    proxy.clear();
    let put = producer.finish();
    wait_delivered_by_either(&put, &a, &b);
    a.stop();
    b.stop();
}

/// Every heartbeat worker A sends for 8 s (with a leader, and every write
/// of the lock A holds) is held 8 s before it reaches the table (a slow
/// network, a paused sender): each lands long after A gave up on it
/// (lease-table requests time out at a tenth of the failover time, 300 ms
/// here) and after B, having seen A's beat stand still for the failover
/// time (3 s), took A's lease (with a leader: claimed the lock, then took
/// it). Neither those late beats nor A's
/// first heartbeat to land again may make the lease A's again: A hands on
/// no record of the shard while B holds it, and nothing put is lost.
#[test]
fn a_heartbeat_landing_after_a_peers_take_revives_no_lease() {
    let _serial = serial();
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let producer = produce(&stream, "p", 8);
    let proxy = Proxy::for_emulators();
    let a = Running::start(
        "worker-A",
        common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app).worker_id("worker-A"),
    );
    wait_until(
        "worker A to hold both leases",
        Duration::from_secs(30),
        &[&a],
        || owned_by(&app, "worker-A").len() == 2,
    );
    let b = Running::start(
        "worker-B",
        common::consumer_builder(&stream, &app).worker_id("worker-B"),
    );
    wait_until("one lease each", Duration::from_secs(30), &[&a, &b], || {
        owned_by(&app, "worker-A").len() == 1 && owned_by(&app, "worker-B").len() == 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let shard = match owned_by(&app, "worker-A").as_slice() {
        [shard] => shard.clone(),
        other => panic!("precondition: a stable 1 + 1 split, worker A holds {other:?}"),
    };

    let held = proxy.add_matching(
        "UpdateItem",
        Some(common::HEARTBEAT),
        Trigger::For(Duration::from_secs(8)),
        Fault::Hold(Duration::from_secs(8)),
    );
    // With a leader, A (the first to start) leads: its lock renewals are
    // held as well, or it would go on judging itself alive.
    proxy.add_matching(
        "UpdateItem",
        Some(common::LOCK_WRITE),
        Trigger::For(Duration::from_secs(8)),
        Fault::Hold(Duration::from_secs(8)),
    );
    let installed = Instant::now();
    // When B held the shard's lease: from the first to the last of the
    // looks (every 100 ms) that saw it B's, so within B's true holding.
    let mut b_held: Vec<(Instant, Instant)> = Vec::new();
    let mut seen: Option<(Instant, Instant)> = None;
    while installed.elapsed() < Duration::from_secs(20) {
        a.assert_running();
        b.assert_running();
        let is_b = owner_of(&rows(&app)[&shard]) == Some("worker-B");
        let now = Instant::now();
        match (is_b, &mut seen) {
            (true, Some((_, last))) => *last = now,
            (true, None) => seen = Some((now, now)),
            (false, Some(_)) => b_held.extend(seen.take()),
            (false, None) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    b_held.extend(seen);
    assert!(
        proxy.hits(held) >= 3,
        "precondition: A's heartbeats were held ({} held)",
        proxy.hits(held)
    );
    assert!(
        !b_held.is_empty(),
        "precondition: B took {shard} while A's heartbeat was held"
    );
    let revived: Vec<Duration> = a
        .delivered()
        .iter()
        .filter(|d| d.shard == shard)
        .filter(|d| b_held.iter().any(|(from, to)| *from < d.at && d.at < *to))
        .map(|d| d.at - installed)
        .collect();
    assert!(
        revived.is_empty(),
        "worker A handed on records of {shard} while B held its lease, at {revived:?} after the hold began; B held it {:?}",
        b_held
            .iter()
            .map(|(f, t)| (*f - installed, *t - installed))
            .collect::<Vec<_>>()
    );
    println!(
        "held heartbeats: {} held 8 s; B held {shard} {:?} after the hold began; A handed on nothing of it meanwhile",
        proxy.hits(held),
        b_held
            .iter()
            .map(|(f, t)| (*f - installed, *t - installed))
            .collect::<Vec<_>>()
    );
    let put = producer.finish();
    wait_delivered_by_either(&put, &a, &b);
    a.stop();
    b.stop();
}

/// Two workers settled on two leases each; an operator deletes what holds
/// their heartbeats under them, twice: the workers row, or with a leader
/// every worker item and the lock. A worker whose heartbeat vanished is
/// unknown, not dead: no lease moves and none is lost, the heartbeats come
/// back for both workers, and nothing recreated reads as a lease.
#[test]
fn the_heartbeats_deleted_under_a_settled_fleet_move_no_lease() {
    let _serial = serial();
    let stream = common::create_stream(4);
    let app = common::unique_name("app");
    let producer = produce(&stream, "p", 8);
    let a = Running::start(
        "worker-A",
        common::consumer_builder(&stream, &app).worker_id("worker-A"),
    );
    let b = Running::start(
        "worker-B",
        common::consumer_builder(&stream, &app).worker_id("worker-B"),
    );
    wait_until(
        "two leases each",
        Duration::from_secs(30),
        &[&a, &b],
        || owned_by(&app, "worker-A").len() == 2 && owned_by(&app, "worker-B").len() == 2,
    );
    std::thread::sleep(FAILOVER);
    let settled = (owned_by(&app, "worker-A"), owned_by(&app, "worker-B"));
    assert_eq!(settled.0.len(), 2, "precondition: a stable 2 + 2 split");
    let leader_run = common::coordination() == kinesis_consumer::Coordination::Leader;
    let heartbeat_keys: Vec<&str> = if leader_run {
        vec![
            "kinesis-consumer:worker:worker-A",
            "kinesis-consumer:worker:worker-B",
            "kinesis-consumer:leader",
        ]
    } else {
        vec!["kinesis-consumer:workers"]
    };
    let d = common::dynamodb();
    let deleted = Instant::now();
    let mut deletions = 0;
    while deleted.elapsed() < FAILOVER * 4 {
        // Once at the start, once a failover time and a half in.
        if deletions < 2 && deleted.elapsed() >= FAILOVER * 3 / 2 * deletions {
            for heartbeats in &heartbeat_keys {
                let key = HashMap::from([(
                    "leaseKey".to_owned(),
                    AttributeValue::S((*heartbeats).into()),
                )]);
                d.delete_item(&app, &key, None).unwrap();
            }
            deletions += 1;
        }
        a.assert_running();
        b.assert_running();
        assert_eq!(
            (owned_by(&app, "worker-A"), owned_by(&app, "worker-B")),
            settled,
            "a lease moved {:.1} s after the heartbeats were first deleted",
            deleted.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let items = d.scan(&app).unwrap();
    let has = |key: &str| items.iter().any(|i| i["leaseKey"].as_s() == Some(key));
    if leader_run {
        assert!(
            has("kinesis-consumer:worker:worker-A") && has("kinesis-consumer:worker:worker-B"),
            "both workers beat in their items again: {items:?}"
        );
        assert!(has("kinesis-consumer:leader"), "a leader again: {items:?}");
    } else {
        let workers = items
            .iter()
            .find(|i| i["leaseKey"].as_s() == Some("kinesis-consumer:workers"))
            .expect("the workers row is written again");
        assert!(
            workers.contains_key("beat:worker-A") && workers.contains_key("beat:worker-B"),
            "both workers beat in the row again: {workers:?}"
        );
    }
    let leases =
        kinesis_consumer::list_leases(&common::config(&common::emulators().dynamodb_url), &app)
            .unwrap();
    assert_eq!(
        leases.len(),
        4,
        "a recreated heartbeat reads as a lease: {leases:?}"
    );
    let put = producer.finish();
    wait_delivered_by_either(&put, &a, &b);
    let all: Vec<Delivered> = a.delivered().into_iter().chain(b.delivered()).collect();
    assert_eq!(duplicates(&all), vec![], "records handed on twice");
    a.stop();
    b.stop();
}

// ---- 5. Capped workers never deadlock ----

/// Puts 20 records into the stream's one shard X, leaves X's lease with a
/// worker that is gone (kill -9), splits X and puts 40 records into its
/// children: X's records, X, the children's records.
fn dead_owner_then_split(stream: &str, app: &str) -> (Vec<Put>, Shard, Vec<Put>) {
    let of_parent = put(stream, "parent", 20);
    let x = shards(stream).remove(0);
    common::create_lease_table(app);
    write_row(
        app,
        &common::kcl_lease_row(&x, Some("dead-worker"), 7, "TRIM_HORIZON"),
    );
    common::split_first_shard(stream);
    (of_parent, x, put(stream, "child", 40))
}

/// A worker holding shard X was killed (kill -9: its lease row still names
/// it), then X was split. A worker capped at one lease starts: it must end
/// up reading X (once its lease expired) and then a child, rather than
/// hold a child that waits for X forever. X's records come before any
/// child's.
#[test]
fn a_capped_worker_reads_the_parent_before_its_children() {
    let _serial = serial();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let (of_parent, x, of_children) = dead_owner_then_split(&stream, &app);
    let children = children_of(&stream, &x.shard_id);

    let run = Running::start(
        "capped",
        common::consumer_builder(&stream, &app)
            .max_leases_per_worker(1)
            .shard_sync_interval(Duration::from_secs(1)),
    );
    let took = wait_delivered(
        "the parent's records (its owner was killed)",
        Duration::from_secs(30),
        &run,
        &of_parent.iter().collect::<Vec<_>>(),
    );
    let delivered = run.delivered();
    let parent_set: HashSet<&str> = of_parent.iter().map(|p| p.data.as_str()).collect();
    let last_parent = delivered
        .iter()
        .filter(|d| parent_set.contains(d.data.as_str()))
        .map(|d| d.at)
        .max()
        .unwrap();
    let early: Vec<&Delivered> = delivered
        .iter()
        .filter(|d| !parent_set.contains(d.data.as_str()) && d.at < last_parent)
        .collect();
    assert!(
        early.is_empty(),
        "{} child records delivered before the parent's last one",
        early.len()
    );
    // Then the child it takes next is read to the tip (at one lease, the
    // other child waits for a second worker).
    let then = wait_until(
        "every record of one child",
        Duration::from_secs(30),
        &[&run],
        || {
            children.iter().any(|c| {
                let of_child = of_shard(&of_children, &c.shard_id);
                let (got, all) = run.count_delivered(of_child.iter().copied());
                got == all
            })
        },
    );
    println!(
        "capped worker: parent read after {:.1} s, a child {:.1} s later",
        took.as_secs_f64(),
        then.as_secs_f64()
    );
    run.stop();
}

/// The same with two workers capped at one lease each: the dead worker's
/// shard X and its two children are three leases for two slots. Each
/// worker may first take a child; one must give it up for X, so that
/// every record is delivered, X's before its children's.
#[test]
fn two_capped_workers_read_every_record() {
    let _serial = serial();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let (of_parent, _, of_children) = dead_owner_then_split(&stream, &app);
    let capped = |id: &str| {
        common::consumer_builder(&stream, &app)
            .worker_id(id)
            .max_leases_per_worker(1)
            .shard_sync_interval(Duration::from_secs(1))
    };
    let w1 = Running::start("capped-1", capped("capped-1"));
    wait_until(
        "the first worker to take a lease",
        Duration::from_secs(30),
        &[&w1],
        || !owned_by(&app, "capped-1").is_empty(),
    );
    let w2 = Running::start("capped-2", capped("capped-2"));
    let all: Vec<&Put> = of_parent.iter().chain(&of_children).collect();
    let started = Instant::now();
    loop {
        w1.assert_running();
        w2.assert_running();
        let seen: HashSet<String> = w1
            .delivered_set()
            .union(&w2.delivered_set())
            .cloned()
            .collect();
        let count = |puts: &[Put]| puts.iter().filter(|p| seen.contains(&p.data)).count();
        let (parent, children) = (count(&of_parent), count(&of_children));
        if parent + children == all.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "timed out after 45 s waiting for every record: {parent} of the parent's {} and {children} of the children's {} delivered; leases: {:?}",
            of_parent.len(),
            of_children.len(),
            rows(&app)
                .iter()
                .map(|(k, r)| format!("{k} owned by {:?}", owner_of(r)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed();
    let mut delivered = w1.delivered();
    delivered.extend(w2.delivered());
    let parent_set: HashSet<&str> = of_parent.iter().map(|p| p.data.as_str()).collect();
    let last_parent = delivered
        .iter()
        .filter(|d| parent_set.contains(d.data.as_str()))
        .map(|d| d.at)
        .max()
        .unwrap();
    let early = delivered
        .iter()
        .filter(|d| !parent_set.contains(d.data.as_str()) && d.at < last_parent)
        .count();
    assert_eq!(
        early, 0,
        "child records delivered before the parent's last one"
    );
    println!(
        "two capped workers: all {} records delivered after {:.1} s",
        all.len(),
        took.as_secs_f64()
    );
    w1.stop();
    w2.stop();
}

// ---- 10. Fencing margin ----

/// Worker A holds one lease. One of its heartbeats lands in the table but
/// its reply comes 2.5 s late, and no later write gets through. A peer
/// sees A's heartbeat last move when that write landed, and may take the
/// lease one failover time later. A must not hand records of that shard to
/// its handler after that moment (nor after it could know it).
#[test]
fn records_stop_before_a_peer_could_take_the_lease() {
    let _serial = serial();
    let stream = common::create_stream(1);
    let app = common::unique_name("app");
    let producer = produce(&stream, "f", 5);
    let proxy = Proxy::for_emulators();
    let e = common::emulators();
    let a = Running::start(
        "worker-A",
        common::consumer_builder_at(&e.kinesis_url, proxy.url(), &stream, &app)
            .worker_id("worker-A")
            // No checkpoint is due while this runs, so no failing
            // checkpoint write holds up the batches (that would hide what is
            // measured).
            .checkpoint_interval(Duration::from_secs(60)),
    );
    wait_until(
        "worker A to deliver records",
        Duration::from_secs(30),
        &[&a],
        || !a.delivered().is_empty(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let late = proxy.add_matching(
        "UpdateItem",
        Some(common::HEARTBEAT),
        Trigger::Next(1),
        Fault::Delay(Duration::from_millis(2500)),
    );
    proxy.add(
        "UpdateItem",
        Trigger::Always,
        Fault::aws(500, "InternalServerError"),
    );
    wait_until(
        "a lease write of worker A",
        Duration::from_secs(10),
        &[&a],
        || proxy.first_hit(late).is_some(),
    );
    // The write was forwarded (it landed) right when the rule fired.
    let landed = proxy.first_hit(late).unwrap();
    let peer_may_take = landed + FAILOVER;
    std::thread::sleep(
        (peer_may_take + Duration::from_secs(5)).saturating_duration_since(Instant::now()),
    );
    a.assert_running();
    let delivered = a.delivered();
    let secs = |at: Instant| {
        if at >= landed {
            (at - landed).as_secs_f64()
        } else {
            -(landed - at).as_secs_f64()
        }
    };
    let late: Vec<f64> = delivered
        .iter()
        .filter(|d| d.at > peer_may_take)
        .map(|d| secs(d.at))
        .collect();
    let last_in_time = delivered
        .iter()
        .filter(|d| d.at <= peer_may_take)
        .map(|d| secs(d.at))
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        late.is_empty(),
        "worker A handed {} records of its shard to the handler after a peer could take the lease ({FAILOVER:?} after A's last write landed): from +{:.2} s to +{:.2} s after that write (last one in time: {last_in_time:+.2} s)",
        late.len(),
        late.iter().copied().fold(f64::INFINITY, f64::min),
        late.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    println!(
        "fencing: last record handed on {last_in_time:+.2} s after the last write landed (a peer may take the lease at +{:.2} s)",
        FAILOVER.as_secs_f64()
    );
    proxy.clear();
    producer.finish();
    a.stop();
}

/// Kinesis answering the shard listing slowly (a busy endpoint, or
/// throttling waited out) must not hold up the heartbeat: a worker that
/// waited for its listing before beating let its own leases lapse and
/// took them back, again and again (seen in
/// `bad_input::records_of_one_mebibyte_*` on a loaded machine: ListShards
/// took 3.5-5.3 s behind megabyte GetRecords replies, failover 3 s).
/// Nor may the beats written while it waited be doubled by the round right
/// after it (one write more for nothing, and under throttling one retry
/// chain more: `faults::heartbeat_throttled_for_2s` went over its bound).
#[test]
fn a_slow_shard_listing_does_not_let_the_leases_lapse() {
    let _serial = serial();
    let stream = common::create_stream(2);
    let app = common::unique_name("app");
    let proxy = Proxy::for_emulators();
    proxy.record("UpdateItem");
    let consumer = common::consumer_builder_at(proxy.url(), proxy.url(), &stream, &app)
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = events.clone();
    let thread = std::thread::spawn(move || {
        consumer.run(move |batch| {
            let mut sink = sink.lock().unwrap();
            sink.extend(batch.events().iter().map(|e| format!("{e:?}")));
            Ok(())
        })
    });
    wait_until_true("both shards gained", Duration::from_secs(30), || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.starts_with("Gained"))
            .count()
            == 2
    });
    // Each listing answered after 4 s: longer than the fencing window (2.6 s).
    let slow = proxy.add(
        "ListShards",
        Trigger::Next(3),
        Fault::Delay(Duration::from_secs(4)),
    );
    wait_until_true("three slow listings", Duration::from_secs(40), || {
        proxy.hits(slow) >= 3
    });
    std::thread::sleep(Duration::from_secs(5));
    stop.shutdown();
    thread.join().unwrap().unwrap();
    let events = events.lock().unwrap().clone();
    let lost: Vec<&String> = events.iter().filter(|e| e.starts_with("Lost")).collect();
    assert!(
        lost.is_empty(),
        "leases lost while the listing was slow: {lost:?} (all events: {events:?})"
    );
    // Beats come a heartbeat period (1 s) apart; half of one at the least.
    let beats: Vec<Instant> = proxy
        .recorded_at("UpdateItem")
        .into_iter()
        .filter(|(_, body)| body.contains(common::HEARTBEAT))
        .map(|(at, _)| at)
        .collect();
    let gaps: Vec<Duration> = beats.windows(2).map(|w| w[1] - w[0]).collect();
    let shortest = gaps.iter().min().copied().unwrap_or_default();
    assert!(
        shortest >= Duration::from_millis(450),
        "two heartbeats {shortest:?} apart; gaps: {gaps:?}"
    );
}

fn wait_until_true(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
