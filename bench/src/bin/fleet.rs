//! Fleet: N worker processes sharing one lease table on dynalite for L
//! leases (a canned idle stream of L shards), at the default failover time.
//! Reports DynamoDB request units per lease-minute as DynamoDB bills them
//! (dynalite's `ReturnConsumedCapacity`, see `capacity.rs`), by purpose,
//! next to a model of the KCL 2.x at the same settings; then kill -9 of one
//! worker: the time until its leases are all held by live workers
//! (takeover) and until the survivors hold an even share (balance); then a
//! new worker joining: the time until the share is even again.
//!
//! Each worker is a child process (this program with `--child`), so kill -9
//! is real. Lease ownership is watched by reading the table directly from
//! dynalite (not through the counting proxy) every `--poll` seconds.
//!
//! With `--simulated`, the fleets run in-process instead, on the lease
//! simulation's table (the real coordinator and held leases of each
//! worker, simulated time, no dynalite): a table that bills each item by
//! its size and throttles an item past 1,000 write units a second, as
//! DynamoDB does, so the workers row's hot-item cliff shows (see
//! `simulated`).
//!
//! Usage: fleet [--leases 100,1000] [--workers 2,20] [--seconds 60]
//!              [--failover 10] [--poll 0.5]
//!        fleet --simulated [--fleets 1000x20,2000x2000] [--seconds 30]
//!              [--bound 120]
//!        fleet --simulated --skewed [--fleets 1000x20] [--zipf 1.0]
//!              [--seed 1]
//!
//! `--skewed` runs the leader's plan over a table of leases with Zipf
//! loads (issue 27), by load and by count, and prints each round's
//! moves and spread (see `skewed`).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The crate's hidden test support: a plain DynamoDB client to read the
// table straight from dynalite (not a stable API; fine for a benchmark).
use kinesis_consumer::__test_support::{AttributeValue, DynamoDbClient, Item};
use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::capacity::{CapacityProxy, Tallies, difference};
use kinesis_consumer_bench::{arg, client_config, consumer, emulators, flag, secs, unique};

/// How long any one phase may take before the run gives up on it.
const PHASE_BOUND: Duration = Duration::from_secs(150);

fn main() {
    if flag("--child") {
        return child();
    }
    if flag("--simulated") && flag("--skewed") {
        return skewed();
    }
    if flag("--simulated") {
        return simulated();
    }
    let leases: String = arg("--leases", "100,1000".to_string());
    let workers: String = arg("--workers", "2,20".to_string());
    let seconds: f64 = arg("--seconds", 60.0);
    let failover: f64 = arg("--failover", 10.0);
    let poll: f64 = arg("--poll", 0.5);
    println!(
        "# fleet: idle canned stream, failover {failover} s (heartbeats every {:.2} s, the table read on changes or every 6 x failover, shard sync 60 s), {seconds} s measured once balanced; ownership polled every {poll} s",
        failover / 3.0
    );
    for l in leases.split(',').map(|s| s.parse::<usize>().unwrap()) {
        for n in workers.split(',').map(|s| s.parse::<usize>().unwrap()) {
            run(l, n, seconds, failover, poll);
        }
    }
}

/// One worker process.
struct Worker {
    id: String,
    child: Child,
}

fn spawn_worker(kinesis: &str, dynamodb: &str, app: &str, id: &str, failover: f64) -> Worker {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if flag("--debug") {
        command.arg("--debug");
    }
    let child = command
        .args(["--child", "--kinesis", kinesis, "--dynamodb", dynamodb])
        .args(["--app", app, "--worker", id, "--failover"])
        .arg(failover.to_string())
        // The child exits when its stdin closes: it never outlives us.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(if flag("--debug") {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start a worker");
    Worker {
        id: id.to_owned(),
        child,
    }
}

fn run(leases: usize, workers: usize, seconds: f64, failover: f64, poll: f64) {
    let dynamo = emulators::dynalite();
    let server = CannedServer::start(leases, 1, 10);
    server.set_empty(true);
    let proxy = CapacityProxy::start(dynamo.port);
    let app = unique("fleet");
    let direct = dynamo.url.as_str();
    println!();
    println!("## {leases} leases, {workers} workers");
    let started = Instant::now();
    let mut fleet: Vec<Worker> = (0..workers)
        .map(|i| spawn_worker(&server.url, &proxy.url, &app, &format!("w{i:02}"), failover))
        .collect();
    let live = |fleet: &[Worker]| fleet.iter().map(|w| w.id.clone()).collect::<Vec<_>>();
    let Some(balanced) = wait_for(direct, &app, poll, |owners| {
        even(owners, &live(&fleet), leases)
    }) else {
        println!("not balanced after {} s; giving up", PHASE_BOUND.as_secs());
        stop(fleet);
        return;
    };
    println!(
        "cold start: all {leases} leases held and evenly spread after {:.1} s",
        (balanced - started).as_secs_f64()
    );
    // Settle: the take round, then the new owners' first reads of their
    // rows (a leader-run fleet's followers read them at their next beat,
    // up to 4/3 of a period later while they align on the leader's
    // period), then measure.
    std::thread::sleep(secs(failover / 3.0 * 2.0));
    let before = proxy.tallies();
    let t0 = Instant::now();
    std::thread::sleep(secs(seconds));
    let window = difference(&proxy.tallies(), &before);
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let size = mean_item_size(direct, &app);
    report(&window, leases, workers, minutes, failover, size);

    // kill -9 one worker.
    let mut victim = fleet.remove(0);
    let before_kill = proxy.tallies();
    victim.child.kill().expect("kill -9 the worker");
    let killed = Instant::now();
    if flag("--debug") {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!("{:.3} killed {}", wall.as_secs_f64() % 1000.0, victim.id);
    }
    let _ = victim.child.wait();
    let victim_id = victim.id.clone();
    let survivors = live(&fleet);
    let takeover = wait_for(direct, &app, poll, |owners| {
        owners.values().all(|o| survivors.contains(o)) && owners.len() == leases
    });
    let ceiling = wait_for(direct, &app, poll, |owners| {
        spread(owners, &survivors, leases)
            .is_some_and(|(_, most)| most <= leases.div_ceil(survivors.len()))
    });
    let rebalance = wait_for(direct, &app, poll, |owners| {
        even(owners, &survivors, leases)
    });
    let phase = difference(&proxy.tallies(), &before_kill);
    println!(
        "kill -9 of {victim_id}: its leases all held by live workers after {}, none above ceil({leases}/{}) after {}, even (each at floor or ceil) after {} (failover {failover} s + one heartbeat period {:.2} s = {:.2} s)",
        since(takeover, killed),
        survivors.len(),
        since(ceiling, killed),
        since(rebalance, killed),
        failover / 3.0,
        failover * 4.0 / 3.0
    );
    println!("  spent meanwhile: {}", brief(&phase));

    // A new worker joins a settled fleet: once the survivors took the
    // victim out of the workers row (a joiner cannot tell a worker that
    // died a moment ago from a live one that holds nothing, so it would
    // count the victim in the even share).
    let forgotten = Instant::now() + PHASE_BOUND;
    while kinesis_consumer::worker_heartbeats(&client_config(direct), &app)
        .map_or(true, |beats| beats.contains_key(&victim_id))
        && Instant::now() < forgotten
    {
        std::thread::sleep(secs(poll));
    }
    println!(
        "  the victim left the workers row after {}",
        since(Some(Instant::now()), killed)
    );
    let before_join = proxy.tallies();
    fleet.push(spawn_worker(
        &server.url,
        &proxy.url,
        &app,
        "w-new",
        failover,
    ));
    let joined = Instant::now();
    let all = live(&fleet);
    let balance = wait_for(direct, &app, poll, |owners| even(owners, &all, leases));
    let phase = difference(&proxy.tallies(), &before_join);
    println!(
        "a new worker joins: even among {} after {} (one take round: {:.2} s)",
        all.len(),
        since(balance, joined),
        failover / 3.0
    );
    println!("  spent meanwhile: {}", brief(&phase));
    stop(fleet);
}

fn since(at: Option<Instant>, start: Instant) -> String {
    match at {
        Some(t) => format!("{:.1} s", (t - start).as_secs_f64()),
        None => format!("more than {} s", PHASE_BOUND.as_secs()),
    }
}

fn stop(fleet: Vec<Worker>) {
    for mut w in fleet {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

/// Lease owners by shard, read straight from dynalite.
fn owners(direct: &str, app: &str) -> BTreeMap<String, String> {
    kinesis_consumer::list_leases(&client_config(direct), app)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|l| Some((l.shard_id, l.owner?)))
        .collect()
}

/// Polls until `done` holds for the owners; the time it first did.
fn wait_for(
    direct: &str,
    app: &str,
    poll: f64,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + PHASE_BOUND;
    let mut last = BTreeMap::new();
    while Instant::now() < deadline {
        let asked = Instant::now();
        last = owners(direct, app);
        if done(&last) {
            return Some(asked);
        }
        std::thread::sleep(secs(poll));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for o in last.values() {
        *counts.entry(o.as_str()).or_default() += 1;
    }
    println!(
        "  (gave up waiting; {} leases with an owner; leases per owner: {counts:?})",
        last.len()
    );
    None
}

/// When every lease is held by one of `workers`: the fewest and the most
/// leases a worker holds.
fn spread(
    owners: &BTreeMap<String, String>,
    workers: &[String],
    leases: usize,
) -> Option<(usize, usize)> {
    if owners.len() != leases || owners.values().any(|o| !workers.contains(o)) {
        return None;
    }
    let mut counts: BTreeMap<&str, usize> = workers.iter().map(|w| (w.as_str(), 0)).collect();
    for o in owners.values() {
        *counts.get_mut(o.as_str()).unwrap() += 1;
    }
    Some((
        counts.values().copied().min().unwrap_or(0),
        counts.values().copied().max().unwrap_or(0),
    ))
}

/// Every lease held by one of `workers`, each holding floor or ceil of
/// leases / workers.
fn even(owners: &BTreeMap<String, String>, workers: &[String], leases: usize) -> bool {
    let (low, high) = (leases / workers.len(), leases.div_ceil(workers.len()));
    spread(owners, workers, leases).is_some_and(|(fewest, most)| fewest >= low && most <= high)
}

/// The mean size of the table's items as DynamoDB sizes them: each
/// attribute's name plus its value (strings by their UTF-8 bytes, numbers
/// about one byte per two digits plus one, sets the sum of their members).
fn mean_item_size(direct: &str, app: &str) -> f64 {
    let client = DynamoDbClient::new(&client_config(direct)).unwrap();
    let items = client.scan(app).unwrap_or_default();
    let total: usize = items.iter().map(item_size).sum();
    total as f64 / items.len().max(1) as f64
}

fn item_size(item: &Item) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::B(s) => s.len(),
            AttributeValue::N(n) => n.trim_start_matches('-').len().div_ceil(2) + 1,
            AttributeValue::SS(v) => v.iter().map(String::len).sum(),
            AttributeValue::NS(v) => v.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
            AttributeValue::BOOL(_) | AttributeValue::NULL(_) => 1,
            AttributeValue::L(v) => 3 + v.iter().map(|x| 1 + value(x)).sum::<usize>(),
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, x)| 1 + k.len() + value(x)).sum::<usize>()
            }
            _ => 0,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// One line: units by purpose.
fn brief(t: &Tallies) -> String {
    t.iter()
        .filter(|(_, t)| t.requests > 0)
        .map(|(p, t)| {
            format!(
                "{p} {} req ({:.1} RCU, {:.1} WCU{})",
                t.requests,
                t.read_units,
                t.write_units,
                if t.failed_conditions > 0 {
                    format!(", {} failed conditions", t.failed_conditions)
                } else {
                    String::new()
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn report(window: &Tallies, leases: usize, workers: usize, minutes: f64, failover: f64, size: f64) {
    let per = |units: f64| units / leases as f64 / minutes;
    println!(
        "steady state, {:.2} min measured; request units per lease-minute (RCU = read units, WCU = write units):",
        minutes
    );
    println!("| purpose | requests/min | RCU per lease-min | WCU per lease-min |");
    println!("|---|---|---|---|");
    let (mut reads, mut writes, mut coordination) = (0.0, 0.0, 0.0);
    for purpose in [
        "heartbeat",
        "notify",
        "forget worker",
        "scan",
        "take",
        "take (ask)",
        "checkpoint",
        "release",
        "read-back",
        "shard sync",
        "cleanup",
        "setup",
        "other",
    ] {
        let t = window.get(purpose).copied().unwrap_or_default();
        if t.requests == 0 && !matches!(purpose, "heartbeat" | "scan" | "take" | "checkpoint") {
            continue;
        }
        println!(
            "| {purpose} | {:.0} | {:.3} | {:.3} |",
            t.requests as f64 / minutes,
            per(t.read_units),
            per(t.write_units)
        );
        reads += t.read_units;
        writes += t.write_units;
        // What keeps and moves leases (our heartbeat stands for the KCL's
        // renewals).
        if matches!(
            purpose,
            "heartbeat" | "notify" | "forget worker" | "scan" | "take" | "take (ask)"
        ) {
            coordination += t.read_units + t.write_units;
        }
    }
    println!("| all | | {:.3} | {:.3} |", per(reads), per(writes));
    let (renew, scan) = kcl_model(failover, workers, leases, size);
    println!(
        "ours, heartbeat + notify + scan + take: {:.3} request units per lease-minute = {:.2}x the KCL model's {:.3}",
        per(coordination),
        per(coordination) / (renew + scan),
        renew + scan
    );
}

/// The KCL 2.x model at the same settings, printed with its formula:
/// request units per lease-minute for renewals and for scans.
fn kcl_model(failover: f64, workers: usize, leases: usize, size: f64) -> (f64, f64) {
    let (n, l) = (workers as f64, leases as f64);
    let renew = 60.0 / (failover / 3.0) * (size / 1024.0).ceil();
    let scan_units = (l * size / 4096.0).ceil() * 0.5;
    let scan = n * 60.0 / (2.0 * failover) * scan_units / l;
    println!(
        "KCL 2.x model: renewal WCU/lease-min = 60 / (F/3) x ceil(S/1KB) = {renew:.3}; scan RCU/lease-min = N x 60 / (2F) x ceil(L x S / 4KB) x 0.5 / L = {scan:.3}; takes 0 when steady; total {:.3}  (F = {failover} s, N = {workers}, L = {leases}, S = {size:.0} B mean item size measured in this table)",
        renew + scan
    );
    (renew, scan)
}

/// `--simulated`: each fleet in-process on the simulated table, on
/// simulated time (figures in simulated seconds; the wall time is shown
/// too). No injected faults; every lease exists and is free at the start,
/// all workers start within 3 s; steady state is measured for `--seconds`
/// once the share is even (or the bound passed), then one worker is
/// killed and, once it left the workers row, one joins.
///
/// 20,000 leases x 2,000 workers does not fit: each worker's coordinator
/// keeps its own copy of the table, so memory and time grow with leases x
/// workers (3.8 GB and about 2 CPU-minutes at 2,000 x 2,000; 20,000 x 200
/// was past 5.4 GB and 6 CPU-minutes, unfinished, when stopped). The
/// hot item grows with the workers, so 2,000 x 2,000 shows its cliff.
fn simulated() {
    let fleets: String = arg("--fleets", "1000x20,2000x2000".to_string());
    let seconds: f64 = arg("--seconds", 30.0);
    let bound: f64 = arg("--bound", 120.0);
    println!(
        "# fleet --simulated: the lease simulation's table (per-item billing, 1,000 WCU/s per item, 400 KB items), in-process workers, simulated time; idle stream, failover 10 s, shard sync 60 s, {seconds} s measured, each phase bounded at {bound} s"
    );
    for fleet in fleets.split(',') {
        let (l, n) = fleet.split_once('x').expect("--fleets LxN,...");
        let (leases, workers) = (l.parse().unwrap(), n.parse().unwrap());
        let f = kinesis_consumer::__test_support::simulate_fleet(
            leases,
            workers,
            secs(seconds),
            secs(bound),
        );
        let at = |t: Option<Duration>| match t {
            Some(t) => format!("{:.1} s", t.as_secs_f64()),
            None => format!("not within {bound} s"),
        };
        println!();
        println!("## simulated table: {leases} leases, {workers} workers");
        println!("| figure | value |");
        println!("|---|---|");
        println!("| cold start (all held, even) | {} |", at(f.cold_start));
        println!(
            "| per-item peak WCU/s served | {:.0} ({}) |",
            f.peak_item_wcu.1, f.peak_item_wcu.0
        );
        println!(
            "| per-item peak WCU/s asked (throttled included) | {:.0} ({}) |",
            f.peak_item_wcu_asked.1, f.peak_item_wcu_asked.0
        );
        println!(
            "| largest item | {} B ({}) |",
            f.largest_item.1, f.largest_item.0
        );
        println!(
            "| writes throttled / leases lost while measured | {} / {} |",
            f.throttled_writes, f.lost_leases
        );
        let ours = f.read_units_per_lease_minute + f.write_units_per_lease_minute;
        println!(
            "| request units per lease-minute | {ours:.3} ({:.3} RCU + {:.3} WCU) |",
            f.read_units_per_lease_minute, f.write_units_per_lease_minute
        );
        let failover = f.failover.as_secs_f64();
        let (renew, scan) = kcl_model(failover, workers, leases, f.mean_lease_bytes);
        println!(
            "| against the KCL 2.x model ({:.3}) | {:.2}x |",
            renew + scan,
            ours / (renew + scan)
        );
        println!(
            "| takeover after a kill (failover + one heartbeat = {:.2} s) | {} |",
            failover * 4.0 / 3.0,
            at(f.takeover)
        );
        println!("| join (even again) | {} |", at(f.join));
        println!("| wall time | {:.1} s |", f.wall.as_secs_f64());
    }
}

/// `--simulated --skewed`: the leader's plan (`plan_fleet`, its move
/// memory kept across rounds) over a table of leases with Zipf loads,
/// dealt round-robin; rounds until the moves stop, then every load drawn
/// again (the hot keys moved) and rounds until they stop again. Each ask
/// is handed over before the next round. Spread: the most loaded
/// worker's load over the mean; over target: the most any worker is over
/// the least any assignment can promise it (a lease heavier than the fair
/// share needs a worker of its own, so with Zipf 1 the max over the mean
/// cannot come near 1).
fn skewed() {
    let fleets: String = arg("--fleets", "1000x20".to_string());
    let zipf: f64 = arg("--zipf", 1.0);
    let seed: u64 = arg("--seed", 1);
    println!(
        "# fleet --simulated --skewed: the leader's plan over Zipf loads (exponent {zipf}, seed {seed}), dealt round-robin; each ask handed over before the next round; bounded at 60 rounds a phase"
    );
    for fleet in fleets.split(',') {
        let (l, n) = fleet.split_once('x').expect("--fleets LxN,...");
        let (leases, workers) = (l.parse().unwrap(), n.parse().unwrap());
        for by in [
            kinesis_consumer::BalanceBy::Load,
            kinesis_consumer::BalanceBy::LeaseCount,
        ] {
            let wall = Instant::now();
            let rounds = kinesis_consumer::__test_support::simulate_skewed_fleet(
                leases, workers, zipf, by, seed, 60,
            );
            println!();
            println!("## {leases} leases, {workers} workers, by {by:?}");
            println!("| phase | round | moves | spread (max/mean) | max over target | count gap |");
            println!("|---|---|---|---|---|---|");
            for r in &rounds {
                println!(
                    "| {} | {} | {} | {:.3} | {:.3} | {} |",
                    r.phase, r.round, r.moves, r.spread, r.spread_over_target, r.count_gap
                );
            }
            let moves: usize = rounds.iter().map(|r| r.moves).sum();
            println!(
                "\nmoves in all: {moves}; wall time {:.2} s",
                wall.elapsed().as_secs_f64()
            );
        }
    }
}

fn child() {
    let kinesis: String = arg("--kinesis", String::new());
    let dynamodb: String = arg("--dynamodb", String::new());
    let app: String = arg("--app", String::new());
    let id: String = arg("--worker", String::new());
    let failover: f64 = arg("--failover", 10.0);
    if flag("--debug") {
        log_as(&id);
    }
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let built = consumer(&kinesis, &dynamodb, "bench")
        .app_name(app)
        .worker_id(id)
        .failover_time(secs(failover))
        .build()
        .unwrap();
    let result = built.run(|_batch| Ok(()));
    if let Err(e) = result {
        eprintln!("worker stopped: {e}");
        std::process::exit(1);
    }
}

/// Logs the library's info and above to stderr, each line with the worker
/// and the seconds since it started.
fn log_as(id: &str) {
    struct Stderr(String, Instant);
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            eprintln!(
                "{:.3} {:7.2} {} {} {}",
                wall.as_secs_f64() % 1000.0,
                self.1.elapsed().as_secs_f64(),
                self.0,
                record.level(),
                record.args()
            );
        }
        fn flush(&self) {}
    }
    let _ = log::set_logger(Box::leak(Box::new(Stderr(id.to_owned(), Instant::now()))));
    log::set_max_level(log::LevelFilter::Info);
}
