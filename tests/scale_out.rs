//! Many workers as separate processes (the `tail` example, each with its own
//! worker id) sharing one lease table: failover after kill -9, a worker
//! joining, graceful handoff on SIGTERM, resharding, and two applications.
//! Assertions are on the union of what the workers printed.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

/// The library defaults the `tail` workers run with.
const FAILOVER: Duration = Duration::from_secs(10);
const RENEW_INTERVAL: Duration = Duration::from_millis(3333);
const TAKE_INTERVAL: Duration = Duration::from_millis(3333);
const BATCH_INTERVAL: Duration = Duration::from_millis(500);
const IDLE_TIME: Duration = Duration::from_secs(1);

/// Timing-sensitive tests run one at a time, so they do not slow each other.
static SERIAL: Mutex<()> = Mutex::new(());

/// One record as a worker printed it.
#[derive(Clone, Debug)]
struct Delivered {
    worker: String,
    shard: String,
    pk: String,
    data: String,
    at: Instant,
}

struct Worker {
    id: String,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn spawn_worker(stream: &str, app: &str, id: &str, log: &Arc<Mutex<Vec<Delivered>>>) -> Worker {
    let mut child = common::aws_env(Command::new(common::example_binary("tail")))
        .args([
            "--stream",
            stream,
            "--app",
            app,
            "--position",
            "trim-horizon",
        ])
        .args([
            "--batch-interval-ms",
            &BATCH_INTERVAL.as_millis().to_string(),
            "--worker-id",
            id,
        ])
        .args(match common::fan_out() {
            true => vec!["--enhanced-fan-out", app],
            false => vec![],
        })
        .args(common::coordination_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (sink, worker) = (log.clone(), id.to_owned());
    std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).expect("tail prints JSON lines");
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data_base64"].as_str().unwrap())
                .unwrap();
            sink.lock().unwrap().push(Delivered {
                worker: worker.clone(),
                shard: v["shard_id"].as_str().unwrap().to_owned(),
                pk: v["partition_key"].as_str().unwrap().to_owned(),
                data: String::from_utf8(data).unwrap(),
                at: Instant::now(),
            });
        }
    });
    let stderr_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (sink, stderr) = (
        stderr_lines.clone(),
        BufReader::new(child.stderr.take().unwrap()),
    );
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(|l| l.ok()) {
            sink.lock().unwrap().push(line);
        }
    });
    Worker {
        id: id.to_owned(),
        child,
        stderr: stderr_lines,
    }
}

impl Worker {
    fn sigterm(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "worker {} exited with {status}: {}",
                    self.id,
                    self.log_tail()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not stop: {}",
                self.id,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        self.sigterm();
        self.wait_exit();
    }

    fn log_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// Lease owners from the table: owner → shards.
fn owners(app: &str) -> HashMap<String, Vec<String>> {
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    let rows = match common::lease_rows(app) {
        Err(e) if e.code() == Some("ResourceNotFoundException") => return owners, // not created yet
        rows => rows.unwrap(),
    };
    for item in rows {
        if item.get("checkpoint").and_then(|c| c.as_s()) == Some("SHARD_END") {
            continue;
        }
        let owner = item
            .get("leaseOwner")
            .and_then(|o| o.as_s())
            .unwrap_or("(none)")
            .to_owned();
        owners
            .entry(owner)
            .or_default()
            .push(item["leaseKey"].as_s().unwrap().to_owned());
    }
    owners
}

fn wait_until(
    what: &str,
    timeout: Duration,
    workers: &[&Worker],
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > timeout {
            let logs: Vec<String> = workers
                .iter()
                .map(|w| format!("--- {}:\n{}", w.id, w.log_tail()))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn delivered_set(log: &Mutex<Vec<Delivered>>) -> HashSet<String> {
    log.lock().unwrap().iter().map(|d| d.data.clone()).collect()
}

fn wait_all_delivered(log: &Mutex<Vec<Delivered>>, put: &[String], workers: &[&Worker]) {
    wait_until(
        "every record to be delivered",
        Duration::from_secs(60),
        workers,
        || {
            let seen = delivered_set(log);
            put.iter().all(|p| seen.contains(p))
        },
    );
}

/// Records delivered more than once, with the workers that delivered them.
fn duplicates(log: &Mutex<Vec<Delivered>>) -> HashMap<String, Vec<String>> {
    let mut by_data: HashMap<String, Vec<String>> = HashMap::new();
    for d in log.lock().unwrap().iter() {
        by_data
            .entry(d.data.clone())
            .or_default()
            .push(d.worker.clone());
    }
    by_data.retain(|_, w| w.len() > 1);
    by_data
}

fn setup(shards: u32) -> (String, String, Arc<Mutex<Vec<Delivered>>>) {
    common::init_log();
    (
        common::create_stream(shards),
        common::unique_name("app"),
        Arc::default(),
    )
}

#[test]
fn kill_9_one_of_three_workers_its_shards_resume_elsewhere() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, app, log) = setup(8);
    let producer = common::produce(&stream, "k");
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| spawn_worker(&stream, &app, id, &log))
        .collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    wait_until(
        "8 leases spread over 3 workers",
        Duration::from_secs(30),
        &refs,
        || {
            let o = owners(&app);
            ["w1", "w2", "w3"]
                .iter()
                .all(|w| o.get(*w).is_some_and(|s| (2..=3).contains(&s.len())))
        },
    );
    std::thread::sleep(Duration::from_secs(2));

    // A worker that does not lead: a leader's death adds the successor's
    // claim (up to a period after the failover time) before anything
    // moves, which `sigterm`'s and the simulation's figures cover.
    let leader = kinesis_consumer::__test_support::MemberItems::new(common::dynamodb(), &app)
        .leader()
        .unwrap()
        .map(|(id, ..)| id);
    let at = workers
        .iter()
        .position(|w| Some(w.id.as_str()) != leader.as_deref())
        .unwrap();
    let mut victim = workers.remove(at);
    let victim_id = victim.id.clone();
    let orphaned = owners(&app).remove(victim_id.as_str()).unwrap();
    let killed_at = Instant::now();
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let survivors: Vec<&Worker> = workers.iter().collect();
    // With the workers row a survivor takes a lease at its first round
    // after the failover time; with a leader, the leader takes it at its
    // round and the new owner starts it at its heartbeat half a period
    // later (docs/many-workers.md). Either way within the failover time
    // and a period of the victim's last heartbeat.
    let takeover = FAILOVER + RENEW_INTERVAL;
    let budget = takeover + BATCH_INTERVAL + IDLE_TIME + Duration::from_secs(2);
    wait_until(
        "the killed worker's shards to be read elsewhere",
        budget,
        &survivors,
        || {
            let log = log.lock().unwrap();
            orphaned.iter().all(|s| {
                log.iter()
                    .any(|d| &d.shard == s && d.worker != victim_id && d.at > killed_at)
            })
        },
    );
    let resumed: Vec<Duration> = orphaned
        .iter()
        .map(|s| {
            let log = log.lock().unwrap();
            log.iter()
                .find(|d| &d.shard == s && d.worker != victim_id && d.at > killed_at)
                .unwrap()
                .at
                - killed_at
        })
        .collect();
    let slowest = resumed.iter().max().unwrap();
    println!(
        "failover after kill -9: {} shards resumed elsewhere in {:.2} s at most (per shard: {:?}); bound {:.2} s",
        orphaned.len(),
        slowest.as_secs_f64(),
        resumed
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        takeover.as_secs_f64()
    );
    // Delivery also waits for a batch and a read: allow those on top.
    assert!(*slowest <= takeover + BATCH_INTERVAL + IDLE_TIME + Duration::from_secs(1));

    std::thread::sleep(Duration::from_secs(1));
    let put = producer.finish();
    wait_all_delivered(&log, &put, &survivors);
    let dups = duplicates(&log);
    assert!(
        dups.values().all(|w| w.contains(&victim_id)),
        "only the killed worker's uncheckpointed records may come twice: {dups:?}"
    );
    println!(
        "kill -9: {} records put, all delivered, {} delivered twice (all first by {victim_id})",
        put.len(),
        dups.len()
    );
    for w in workers {
        w.stop();
    }
}

#[test]
fn a_second_worker_joins_and_gets_half_the_leases_without_duplicates() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, app, log) = setup(8);
    let producer = common::produce(&stream, "j");
    let first = spawn_worker(&stream, &app, "first", &log);
    wait_until(
        "the first worker to hold all 8 leases",
        Duration::from_secs(30),
        &[&first],
        || owners(&app).get("first").is_some_and(|s| s.len() == 8),
    );
    std::thread::sleep(Duration::from_secs(1));
    let second = spawn_worker(&stream, &app, "second", &log);
    let took = wait_until(
        "4 leases each",
        Duration::from_secs(30),
        &[&first, &second],
        || {
            let o = owners(&app);
            o.get("first").is_some_and(|s| s.len() == 4)
                && o.get("second").is_some_and(|s| s.len() == 4)
        },
    );
    println!(
        "rebalance: the joining worker held 4 of 8 leases after {:.2} s (two take intervals: {:.2} s)",
        took.as_secs_f64(),
        (TAKE_INTERVAL * 2).as_secs_f64()
    );
    assert!(
        took <= TAKE_INTERVAL * 2 + Duration::from_secs(1),
        "{took:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let put = producer.finish();
    wait_all_delivered(&log, &put, &[&first, &second]);
    let dups = duplicates(&log);
    assert!(
        dups.is_empty(),
        "a handoff delivers nothing twice: {dups:?}"
    );
    assert!(log.lock().unwrap().iter().any(|d| d.worker == "second"));
    println!("join: {} records put, all delivered once", put.len());
    first.stop();
    second.stop();
}

#[test]
fn sigterm_hands_the_leases_over_at_once_and_nothing_twice() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, app, log) = setup(8);
    let producer = common::produce(&stream, "t");
    let mut a = spawn_worker(&stream, &app, "a", &log);
    let b = spawn_worker(&stream, &app, "b", &log);
    wait_until("4 leases each", Duration::from_secs(30), &[&a, &b], || {
        let o = owners(&app);
        o.get("a").is_some_and(|s| s.len() == 4) && o.get("b").is_some_and(|s| s.len() == 4)
    });
    std::thread::sleep(Duration::from_secs(2));
    let stopped_at = Instant::now();
    a.sigterm();
    a.wait_exit();
    let took = wait_until(
        "b to hold all 8 leases",
        Duration::from_secs(30),
        &[&b],
        || owners(&app).get("b").is_some_and(|s| s.len() == 8),
    );
    println!(
        "SIGTERM: a stopped in {:.2} s; b held all 8 leases {:.2} s after the signal (take interval {:.2} s, failover {:.0} s)",
        (stopped_at.elapsed() - took).as_secs_f64(),
        stopped_at.elapsed().as_secs_f64(),
        TAKE_INTERVAL.as_secs_f64(),
        FAILOVER.as_secs_f64()
    );
    assert!(
        stopped_at.elapsed() <= TAKE_INTERVAL + Duration::from_secs(3),
        "no waiting for expiry\n--- a:\n{}\n--- b:\n{}",
        a.log_tail(),
        b.log_tail()
    );
    std::thread::sleep(Duration::from_secs(1));
    let put = producer.finish();
    wait_all_delivered(&log, &put, &[&b]);
    let dups = duplicates(&log);
    assert!(dups.is_empty(), "nothing delivered twice: {dups:?}");
    println!("SIGTERM: {} records put, all delivered once", put.len());
    b.stop();
}

#[test]
fn split_and_merge_with_two_workers() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, app, log) = setup(2);
    let producer = common::produce(&stream, "r");
    let a = spawn_worker(&stream, &app, "a", &log);
    let b = spawn_worker(&stream, &app, "b", &log);
    std::thread::sleep(Duration::from_secs(3));
    let first = common::split_first_shard(&stream);
    std::thread::sleep(Duration::from_secs(3));
    let (upper, neighbour) = common::merge_upper_child(&stream, &first);
    std::thread::sleep(Duration::from_secs(3));
    let put = producer.finish();
    wait_all_delivered(&log, &put, &[&a, &b]);

    // Per partition key, the first delivery of each record follows put order.
    let log_snapshot = log.lock().unwrap().clone();
    let mut first_seen: HashMap<&str, &Delivered> = HashMap::new();
    for d in &log_snapshot {
        first_seen.entry(&d.data).or_insert(d);
    }
    let mut by_key: HashMap<&str, Vec<&Delivered>> = HashMap::new();
    for d in first_seen.values() {
        by_key.entry(&d.pk).or_default().push(d);
    }
    let index = |d: &Delivered| d.data.rsplit('-').next().unwrap().parse::<usize>().unwrap();
    for (key, mut records) in by_key {
        records.sort_by_key(|d| d.at);
        let order: Vec<usize> = records.iter().map(|d| index(d)).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "partition key {key}: delivered out of order {order:?}"
        );
    }
    // The closed parents' leases are cleaned up once their children started.
    let parents = [
        first.shard_id.clone(),
        upper.shard_id.clone(),
        neighbour.shard_id.clone(),
    ];
    // Deleted at a worker's next read of the table after their children
    // started: a child's first checkpoint tells every worker to read it.
    let cleaned = wait_until(
        "finished leases to be deleted",
        Duration::from_secs(20),
        &[&a, &b],
        || {
            let rows = common::dynamodb().scan(&app).unwrap();
            rows.iter()
                .all(|r| !parents.contains(&r["leaseKey"].as_s().unwrap().to_owned()))
        },
    );
    println!(
        "split + merge with 2 workers: {} records put, all delivered, {} twice; finished leases gone {:.2} s after the last check",
        put.len(),
        duplicates(&log).len(),
        cleaned.as_secs_f64()
    );
    a.stop();
    b.stop();
}

#[test]
fn a_second_process_with_the_same_worker_id_refuses_to_start_and_a_restart_takes_over() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, app, log) = setup(2);
    let producer = common::produce(&stream, "t");
    let mut first = spawn_worker(&stream, &app, "twin", &log);
    wait_until(
        "the first process to hold both leases",
        Duration::from_secs(30),
        &[&first],
        || owners(&app).get("twin").is_some_and(|s| s.len() == 2),
    );
    // A copy with the same worker id: it watches the heartbeat under its
    // id keep moving and refuses to start within the failover time.
    let mut copy = spawn_worker(&stream, &app, "twin", &log);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = copy.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < FAILOVER + Duration::from_secs(5),
            "the copy did not stop: {}",
            copy.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let refused = started.elapsed();
    assert!(!status.success(), "{status}");
    let said = copy.log_tail();
    assert!(
        said.contains("worker_id") && said.contains("\"twin\""),
        "the error names the setting and the id: {said}"
    );
    assert!(
        log.lock().unwrap().iter().all(|d| d.worker == "twin"),
        "only the first process delivered"
    );
    // The first dies; a restart under its id waits out one heartbeat
    // period with no beat, then takes its leases as its own.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = Instant::now();
    let restart = spawn_worker(&stream, &app, "twin", &log);
    let put = producer.finish();
    wait_all_delivered(&log, &put, &[&restart]);
    println!(
        "same worker id: the copy refused after {:.2} s; after kill -9 the restart delivered every record within {:.2} s",
        refused.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    restart.stop();
}

#[test]
fn two_applications_on_one_stream_each_see_every_record() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (stream, app, log_a) = setup(4);
    let other_app = common::unique_name("other");
    let log_b: Arc<Mutex<Vec<Delivered>>> = Arc::default();
    let producer = common::produce(&stream, "m");
    let a = spawn_worker(&stream, &app, "worker-1", &log_a);
    let b = spawn_worker(&stream, &other_app, "worker-1", &log_b);
    std::thread::sleep(Duration::from_secs(3));
    let put = producer.finish();
    wait_all_delivered(&log_a, &put, &[&a]);
    wait_all_delivered(&log_b, &put, &[&b]);
    assert_eq!(owners(&app).get("worker-1").map(Vec::len), Some(4));
    assert_eq!(
        owners(&other_app).get("worker-1").map(Vec::len),
        Some(4),
        "separate tables"
    );
    println!(
        "two applications: {} records put, each application saw all",
        put.len()
    );
    a.stop();
    b.stop();
}

#[test]
fn the_leases_example_explains_every_shard() {
    use kinesis_consumer::__test_support::{AttributeValue, Item};
    let app = common::unique_name("app");
    let d = common::dynamodb();
    d.create_table(&app, "leaseKey").unwrap();
    d.wait_until_active(&app, Duration::from_secs(10)).unwrap();
    let row = |shard: &str, owner: Option<&str>, checkpoint: &str, parents: &[&str]| {
        let mut item: Item = HashMap::from([
            ("leaseKey".to_owned(), AttributeValue::S(shard.into())),
            ("leaseCounter".to_owned(), AttributeValue::N("5".into())),
            (
                "checkpoint".to_owned(),
                AttributeValue::S(checkpoint.into()),
            ),
        ]);
        if let Some(o) = owner {
            item.insert("leaseOwner".into(), AttributeValue::S(o.into()));
        }
        if !parents.is_empty() {
            item.insert(
                "parentShardId".into(),
                AttributeValue::SS(parents.iter().map(|p| p.to_string()).collect()),
            );
        }
        d.put_item(&app, &item, None).unwrap();
    };
    row("shard-finished", None, "SHARD_END", &[]);
    row("shard-parent", Some("w1"), "TRIM_HORIZON", &[]);
    row("shard-child", Some("w2"), "TRIM_HORIZON", &["shard-parent"]);
    row("shard-unowned", None, "LATEST", &[]);
    // Renewed while the example watches: "reading", or waiting for a parent.
    row("shard-live", Some("w1"), "TRIM_HORIZON", &[]);
    row("shard-malformed", Some("w1"), "not-a-position", &[]);
    row(
        "shard-waiting",
        Some("w1"),
        "TRIM_HORIZON",
        &["shard-malformed"],
    );
    // Workers of ours: "w3" writes heartbeats while the example watches,
    // "w4" wrote one once; neither touches its lease's counter.
    row("shard-beating", Some("w3"), "TRIM_HORIZON", &[]);
    row("shard-stopped", Some("w4"), "TRIM_HORIZON", &[]);
    fn beat(d: &kinesis_consumer::__test_support::DynamoDbClient, app: &str, worker: &str, n: u64) {
        let key = HashMap::from([(
            "leaseKey".to_owned(),
            AttributeValue::S("kinesis-consumer:workers".into()),
        )]);
        let set =
            kinesis_consumer::__test_support::Expression::new("SET #beat = :n, entityType = :type")
                .name("#beat", &format!("beat:{worker}"))
                .value(":n", AttributeValue::N(n.to_string()))
                .value(":type", AttributeValue::S("WORKERS".into()));
        d.update_item(app, &key, &set, None).unwrap();
    }
    beat(&d, &app, "w4", 1);
    let leases = common::example_binary("leases");
    let done = Arc::new(AtomicBool::new(false));
    let renewer = std::thread::spawn({
        let (d, app, done) = (d.clone(), app.clone(), done.clone());
        move || {
            let mut n = 6;
            while !done.load(Ordering::Relaxed) {
                for shard in ["shard-live", "shard-waiting"] {
                    let key =
                        HashMap::from([("leaseKey".to_owned(), AttributeValue::S(shard.into()))]);
                    let bump =
                        kinesis_consumer::__test_support::Expression::new("SET leaseCounter = :n")
                            .value(":n", AttributeValue::N(n.to_string()));
                    d.update_item(&app, &key, &bump, None).unwrap();
                }
                beat(&d, &app, "w3", n);
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let out = common::aws_env(Command::new(&leases))
        .args(["--app", &app, "--observe-ms", "400"])
        .output()
        .unwrap();
    done.store(true, Ordering::Relaxed);
    renewer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |shard: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{shard} ")))
            .unwrap_or_else(|| panic!("{shard} missing:\n{text}"))
    };
    assert!(line("shard-finished").contains("finished"), "{text}");
    assert!(line("shard-unowned").contains("no worker"), "{text}");
    assert!(line("shard-parent").contains("expired?"), "{text}");
    assert!(
        line("shard-child").contains("expired?"),
        "not renewed either: {text}"
    );
    assert!(line("shard-live").contains("reading"), "{text}");
    assert!(line("shard-beating").contains("reading"), "{text}");
    assert!(line("shard-stopped").contains("expired?"), "{text}");
    assert!(
        line("shard-malformed").contains("malformed row")
            && line("shard-malformed").contains("not-a-position"),
        "{text}"
    );
    assert!(
        line("shard-waiting").contains("waiting for parent shard-malformed"),
        "a malformed parent holds its child: {text}"
    );
    assert!(text.contains("4 owners"), "{text}");
    assert!(
        text.contains("w3 (alive)") && text.contains("w4 (heartbeat stood still)"),
        "{text}"
    );
    // Against a stream: a row whose shard both listings leave out has
    // expired from the stream (the application was down past retention).
    let stream = common::create_stream(1);
    let out = common::aws_env(Command::new(&leases))
        .args(["--app", &app, "--stream", &stream, "--observe-ms", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for shard in ["shard-parent", "shard-child"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{shard} "))
                    && l.contains("expired from the stream")),
            "{shard}: {text}"
        );
    }
}
