//! DynamoDB writes per lease per minute at the default settings (failover
//! 10 s, batch and checkpoint interval 1 s), counted by a pass-through
//! proxy in front of dynalite, on a busy stream (a checkpoint is due every
//! batch) and an idle one (nothing to checkpoint). The KCL renews every
//! lease every failover/3 (3.3 s: 18 renewals per minute) and checkpoints
//! when its application asks to.
//!
//! Usage: leases [--seconds S] [--shards N]

use std::time::Duration;

use kinesis_consumer_bench::canned::CannedServer;
use kinesis_consumer_bench::proxy::CountingProxy;
use kinesis_consumer_bench::{arg, consumer, emulators, secs, spawn_consumer};

fn main() {
    let seconds: f64 = arg("--seconds", 40.0);
    let shards: usize = arg("--shards", 10);
    let dynamo = emulators::dynalite();
    println!(
        "# DynamoDB writes per lease-minute: {shards} shards, default settings (failover 10 s, batch = checkpoint interval 1 s), {seconds} s measured after 10 s"
    );
    for busy in [true, false] {
        let proxy = CountingProxy::start(dynamo.port);
        let server = CannedServer::start(shards, 100, 100);
        server.set_empty(!busy);
        let built = consumer(&server.url, &proxy.url, "bench").build().unwrap();
        let (stop, thread) = spawn_consumer(built, |_batch| {});
        std::thread::sleep(Duration::from_secs(10));
        let before = proxy.counts();
        std::thread::sleep(secs(seconds));
        let after = proxy.counts();
        stop.shutdown();
        thread.join().unwrap().unwrap();
        let mut by_op = Vec::new();
        let mut writes = 0u64;
        for (op, n) in &after {
            let d = n - before.get(op).copied().unwrap_or(0);
            if d > 0 {
                by_op.push(format!("{op} {d}"));
            }
            if matches!(op.as_str(), "UpdateItem" | "PutItem" | "DeleteItem") {
                writes += d;
            }
        }
        let per_lease_minute = writes as f64 / shards as f64 / (seconds / 60.0);
        let kcl = if busy { 18.0 + 60.0 } else { 18.0 };
        println!(
            "{} stream: {per_lease_minute:.1} writes per lease-minute (requests: {}); KCL at failover 10 s: {kcl:.0} ({})",
            if busy { "busy" } else { "idle" },
            by_op.join(", "),
            if busy {
                "18 renewals + 60 checkpoints at a 1 s checkpoint interval"
            } else {
                "18 renewals"
            }
        );
    }
}
