//! Idle cost of reading 10 streams of 10 shards: one multi-stream consumer
//! (`streams([...])`, one lease table) against 10 consumers of one stream
//! each (10 tables), in one process either way, at the default settings
//! (failover 10 s, shard sync 60 s). Kinesis is a canned server whose
//! streams are idle; DynamoDB is dynalite behind a proxy that tallies
//! capacity units. Figures: resident memory and threads of the consumer
//! process, and DynamoDB read and write units per lease-minute.
//!
//! Usage: multi_stream [--streams N] [--shards N] [--seconds S]
//! (it runs itself with `--child one|ten` for each side)

use std::process::Command;
use std::time::Duration;

use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::capacity::{CapacityProxy, difference};
use kinesis_consumer_bench::{arg, emulators, proc, secs, unique};

/// How long a consumer runs before it is measured (startup: leases made
/// and taken).
const WARM_UP: Duration = Duration::from_secs(20);

fn main() {
    let streams: usize = arg("--streams", 10);
    let shards: usize = arg("--shards", 10);
    let seconds: f64 = arg("--seconds", 60.0);
    if let Some(mode) = std::env::args().skip_while(|a| a != "--child").nth(1) {
        child(&mode, streams, shards, seconds);
        return;
    }
    let dynamo = emulators::dynalite();
    let kinesis = CannedServer::start(shards, 0, 0);
    kinesis.set_empty(true);
    println!(
        "# idle cost of {streams} streams x {shards} shards: one multi-stream consumer against {streams} single-stream consumers (default settings, {seconds} s measured after {} s)",
        WARM_UP.as_secs()
    );
    for mode in ["one", "ten"] {
        let proxy = CapacityProxy::start(dynamo.port);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", mode, "--streams", &streams.to_string()])
            .args([
                "--shards",
                &shards.to_string(),
                "--seconds",
                &seconds.to_string(),
            ])
            .args(["--kinesis", &kinesis.url, "--dynamodb", &proxy.url])
            .spawn()
            .unwrap();
        std::thread::sleep(WARM_UP);
        let before = proxy.tallies();
        std::thread::sleep(secs(seconds));
        let used = difference(&proxy.tallies(), &before);
        child.wait().unwrap();
        let (reads, writes) = used.values().fold((0.0, 0.0), |(r, w), t| {
            (r + t.read_units, w + t.write_units)
        });
        let lease_minutes = (streams * shards) as f64 * seconds / 60.0;
        let requests: Vec<String> = used
            .iter()
            .filter(|(_, t)| t.requests > 0)
            .map(|(p, t)| format!("{p} {}", t.requests))
            .collect();
        println!(
            "  DynamoDB: {:.2} RCU and {:.2} WCU per lease-minute (requests: {})",
            reads / lease_minutes,
            writes / lease_minutes,
            requests.join(", ")
        );
    }
}

/// Runs the consumers of one side and prints its memory and threads.
fn child(mode: &str, streams: usize, shards: usize, seconds: f64) {
    let kinesis: String = arg("--kinesis", String::new());
    let dynamodb: String = arg("--dynamodb", String::new());
    let names: Vec<String> = (0..streams).map(|i| format!("stream-{i}")).collect();
    let builder = |app: String| {
        kinesis_consumer::Consumer::builder()
            .app_name(app)
            .region("us-east-1")
            .endpoint_url(&kinesis)
            .dynamodb_endpoint_url(&dynamodb)
            .publish_metrics(false)
            .credentials(kinesis_consumer::aws::credentials::Credentials::new(
                "AKIDBENCH",
                "bench-secret",
            ))
            .initial_position(kinesis_consumer::InitialPosition::TrimHorizon)
    };
    let consumers: Vec<_> = match mode {
        "one" => vec![builder(unique("multi")).streams(names.iter().map(String::as_str))],
        _ => names
            .iter()
            .map(|n| builder(unique("single")).stream_name(n))
            .collect(),
    };
    let running: Vec<_> = consumers
        .into_iter()
        .map(|b| {
            let consumer = b.build().unwrap();
            let stop = consumer.shutdown_handle();
            (stop, std::thread::spawn(move || consumer.run(|_| Ok(()))))
        })
        .collect();
    std::thread::sleep(WARM_UP + secs(seconds / 2.0));
    let label = match mode {
        "one" => "1 consumer on all streams",
        _ => "1 consumer per stream",
    };
    println!(
        "{label} ({} leases): RSS {:.1} MiB, {} threads",
        streams * shards,
        proc::rss_mib(),
        proc::threads()
    );
    std::thread::sleep(secs(seconds / 2.0));
    for (stop, thread) in running {
        stop.shutdown();
        thread.join().unwrap().unwrap();
    }
}
