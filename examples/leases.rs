//! Prints an application's lease table: for each shard its owner, counter,
//! checkpoint, parents and children, hash range, and why it is not being
//! read when it is not (waiting for a parent, no worker, owner gone).
//!
//! ```text
//! cargo run --example leases -- --app A [--observe-ms N (3500)]
//! ```
//!
//! It reads the table twice, `--observe-ms` apart: a lease whose counter did
//! not move in between was not renewed, so its owner may be gone (workers
//! renew every third of their failover time, 3.3 s by default). Endpoint,
//! region and credentials come from the standard AWS environment.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::dynamodb::DynamoDbClient;
use kinesis_consumer::{Checkpoint, Lease, list_leases};

const USAGE: &str = "usage: leases --app A [--observe-ms N (3500)]";

fn main() {
    let args = support::Args::parse(USAGE, &[]);
    let app = args.required(USAGE, "app");
    let observe = Duration::from_millis(args.number(USAGE, "observe-ms", 3500));
    let dynamodb = DynamoDbClient::new(&ClientConfig::new())
        .unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
    let read =
        || list_leases(&dynamodb, &app).unwrap_or_else(|e| support::fail(USAGE, &e.to_string()));
    let before: HashMap<String, u64> = read()
        .into_iter()
        .map(|l| (l.shard_id, l.counter))
        .collect();
    std::thread::sleep(observe);
    let mut leases = read();
    leases.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let workers: std::collections::BTreeSet<&str> =
        leases.iter().filter_map(|l| l.owner.as_deref()).collect();
    println!(
        "lease table {app}: {} leases, {} workers {:?}",
        leases.len(),
        workers.len(),
        workers
    );
    println!(
        "{:<24} {:<28} {:>8} {:<30} {:<24} {:<24} STATUS",
        "SHARD", "OWNER", "COUNTER", "CHECKPOINT", "PARENTS", "CHILDREN"
    );
    for lease in &leases {
        let checkpoint = match &lease.checkpoint {
            Checkpoint::At(p) => format!(
                "{}/{}",
                short(p.sequence_number.as_str()),
                p.sub_sequence_number
            ),
            other => format!("{other:?}"),
        };
        let status = status(
            lease,
            &leases,
            before.get(&lease.shard_id).copied(),
            observe,
        );
        println!(
            "{:<24} {:<28} {:>8} {:<30} {:<24} {:<24} {}",
            lease.shard_id,
            lease.owner.as_deref().unwrap_or("-"),
            lease.counter,
            checkpoint,
            lease.parents.join(","),
            lease.children.join(","),
            status
        );
        if let Some((start, end)) = &lease.hash_range {
            println!("{:<24} hash keys {start}..={end}", "");
        }
    }
}

/// Why a shard is or is not being read.
fn status(
    lease: &Lease,
    leases: &[Lease],
    counter_before: Option<u64>,
    observe: Duration,
) -> String {
    if lease.checkpoint == Checkpoint::ShardEnd {
        return "finished (read to its end)".into();
    }
    let waiting = lease.unfinished_parents(leases);
    let mut status = match &lease.owner {
        None => "no worker: unowned, the next lease check takes it".to_owned(),
        Some(_) if counter_before == Some(lease.counter) && !observe.is_zero() => {
            format!(
                "expired? not renewed in {:.1} s: its owner may be gone",
                observe.as_secs_f64()
            )
        }
        Some(_) if !waiting.is_empty() => {
            format!("blocked: waiting for parent {}", waiting.join(", "))
        }
        Some(_) => "reading".to_owned(),
    };
    if let Some(to) = &lease.handoff_to {
        status.push_str(&format!("; being handed over to {to}"));
    }
    status
}

fn short(seq: &str) -> String {
    if seq.len() > 20 {
        format!("…{}", &seq[seq.len() - 19..])
    } else {
        seq.to_owned()
    }
}
