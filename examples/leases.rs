//! Prints an application's lease table: for each shard its owner, counter,
//! checkpoint, parents and children, hash range, and why it is not being
//! read when it is not (waiting for a parent, no worker, owner gone,
//! malformed row, expired from the stream).
//!
//! ```text
//! cargo run --example leases -- --app A [--stream S] [--observe-ms N (3500)]
//! cargo run --example leases -- --stream S --deregister-consumer NAME
//! ```
//!
//! It reads the table twice, `--observe-ms` apart: a lease whose owner's
//! heartbeat (in the workers row) did not move in between may have lost its
//! owner (workers write one every third of their failover time, 3.3 s by
//! default); for an owner that writes no heartbeat (the KCL), the lease's
//! own counter is watched instead, as the KCL renews each lease. With
//! `--stream`, it lists the stream's shards at both reads too: a row whose
//! shard neither listing has expired from the stream. Endpoint, region and
//! credentials come from the standard AWS environment.
//!
//! `--deregister-consumer NAME` removes the enhanced fan-out consumer NAME
//! from the stream instead (its subscriptions end). The library never does
//! this by itself: the consumer is shared by every worker of the
//! application, and one worker stopping or restarting must not cut off the
//! others; whether the application is gone for good is an operator's call.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::kinesis::KinesisClient;
use kinesis_consumer::{
    Checkpoint, LeaseStanding, Standing, inspect_leases, list_leases, worker_heartbeats,
};

const USAGE: &str = "usage: leases --app A [--stream S] [--observe-ms N (3500)]\n       leases --stream S --deregister-consumer NAME";

fn main() {
    let args = support::Args::parse(
        USAGE,
        &["app", "stream", "observe-ms", "deregister-consumer"],
        &[],
    );
    if let Some(name) = args.get("deregister-consumer") {
        deregister_consumer(&args.required(USAGE, "stream"), name);
        return;
    }
    let app = args.required(USAGE, "app");
    let observe = Duration::from_millis(args.number(USAGE, "observe-ms", 3500));
    let dynamodb = ClientConfig::new();
    let kinesis = args.get("stream").map(|stream| {
        (
            KinesisClient::new(&ClientConfig::new()).unwrap_or_else(fail),
            stream,
        )
    });
    let list_shards = || {
        kinesis
            .as_ref()
            .map(|(k, stream)| k.list_shards(stream, None).unwrap_or_else(fail))
    };
    let mut listings: Vec<_> = list_shards().into_iter().collect();
    let before: HashMap<String, u64> = list_leases(&dynamodb, &app)
        .unwrap_or_else(fail)
        .into_iter()
        .map(|l| (l.shard_id, l.counter))
        .collect();
    let beats_before = worker_heartbeats(&dynamodb, &app).unwrap_or_else(fail);
    std::thread::sleep(observe);
    listings.extend(list_shards());
    let mut rows = inspect_leases(&dynamodb, &app, &listings).unwrap_or_else(fail);
    rows.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let beats = worker_heartbeats(&dynamodb, &app).unwrap_or_else(fail);
    // A worker is alive when its heartbeat moved (with a heartbeat); an
    // owner without one (the KCL) when the counter of a lease it owns did.
    let alive = |owner: &str, shard_id: &str, counter: u64| match beats.get(owner) {
        Some(beat) => beats_before.get(owner) != Some(beat),
        None => before.get(shard_id) != Some(&counter),
    };
    let owners: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.lease.as_ref()?.owner.as_deref())
        .collect();
    let summary = format!(
        "lease table {app}: {} leases, {} owners {:?}; workers row: {:?}",
        rows.len(),
        owners.len(),
        owners,
        beats
            .keys()
            .map(|w| {
                let moved = beats_before.get(w) != beats.get(w);
                format!(
                    "{w} ({})",
                    if moved {
                        "alive"
                    } else {
                        "heartbeat stood still"
                    }
                )
            })
            .collect::<Vec<_>>()
    );
    println!("{}", support::printable(&summary));
    println!(
        "{:<24} {:<28} {:>8} {:<30} {:<24} {:<24} STATUS",
        "SHARD", "OWNER", "COUNTER", "CHECKPOINT", "PARENTS", "CHILDREN"
    );
    for row in &rows {
        let owner_alive = row.lease.as_ref().is_none_or(|l| {
            l.owner
                .as_deref()
                .is_none_or(|o| alive(o, &l.shard_id, l.counter))
        });
        let status = status(row, owner_alive, observe);
        // Every string from the table is printed through `printable`:
        // whoever can write the table must not reach the terminal.
        let Some(lease) = &row.lease else {
            let line = format!(
                "{:<24} {:<28} {:>8} {:<30} {:<24} {:<24} {}",
                row.shard_id, "?", "?", "?", "?", "?", status
            );
            println!("{}", support::printable(&line));
            continue;
        };
        let checkpoint = match &lease.checkpoint {
            Checkpoint::At(p) => format!(
                "{}/{}",
                short(p.sequence_number.as_str()),
                p.sub_sequence_number
            ),
            other => format!("{other:?}"),
        };
        let line = format!(
            "{:<24} {:<28} {:>8} {:<30} {:<24} {:<24} {}",
            lease.shard_id,
            lease.owner.as_deref().unwrap_or("-"),
            lease.counter,
            checkpoint,
            lease.parents.join(","),
            lease.children.join(","),
            status
        );
        println!("{}", support::printable(&line));
        if let Some((start, end)) = &lease.hash_range {
            let line = format!("{:<24} hash keys {start}..={end}", "");
            println!("{}", support::printable(&line));
        }
    }
}

/// Why a shard is or is not being read.
fn status(row: &LeaseStanding, owner_alive: bool, observe: Duration) -> String {
    let Some(lease) = &row.lease else {
        let Standing::Malformed(why) = &row.standing else {
            return format!("{:?}", row.standing);
        };
        return format!(
            "malformed row: {why}; never taken, its children wait until it is repaired or deleted"
        );
    };
    let mut status = match &row.standing {
        Standing::Finished => return "finished (read to its end)".into(),
        Standing::Expired => {
            return "expired from the stream: its unread records are lost; counts as finished"
                .into();
        }
        Standing::NotListed => "not listed by the stream".to_owned(),
        Standing::Malformed(why) => format!("malformed row: {why}"),
        _ if lease.owner.is_none() => {
            "no worker: unowned, the next lease check takes it".to_owned()
        }
        _ if !owner_alive && !observe.is_zero() => format!(
            "expired? its owner showed no sign of life in {:.1} s: it may be gone",
            observe.as_secs_f64()
        ),
        Standing::Blocked(waiting) => format!("blocked: waiting for parent {}", waiting.join(", ")),
        _ => "reading".to_owned(),
    };
    if let Some(to) = &lease.handoff_to {
        status.push_str(&format!("; being handed over to {to}"));
    }
    status
}

/// Deregisters the fan-out consumer `name` of `stream` (a name or an ARN).
fn deregister_consumer(stream: &str, name: &str) {
    let kinesis = KinesisClient::new(&ClientConfig::new()).unwrap_or_else(fail);
    let stream_arn = if stream.starts_with("arn:") {
        stream.to_owned()
    } else {
        kinesis
            .describe_stream_summary(stream)
            .unwrap_or_else(fail)
            .stream_arn
    };
    let consumer = kinesis
        .describe_stream_consumer_by_name(&stream_arn, name)
        .unwrap_or_else(fail);
    kinesis
        .deregister_stream_consumer(&consumer.consumer_arn)
        .unwrap_or_else(fail);
    let done = format!(
        "deregistered consumer {name} ({}) of {stream_arn}",
        consumer.consumer_arn
    );
    println!("{}", support::printable(&done));
}

fn fail<T>(e: kinesis_consumer::Error) -> T {
    support::fail(USAGE, &e.to_string())
}

fn short(seq: &str) -> String {
    if seq.len() > 20 {
        format!("…{}", &seq[seq.len() - 19..])
    } else {
        seq.to_owned()
    }
}
