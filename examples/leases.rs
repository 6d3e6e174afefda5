//! Prints an application's lease table: for each shard its owner, counter,
//! checkpoint, parents and children, hash range, load (as the owner's last
//! checkpoint left it), and why it is not being read when it is not
//! (waiting for a parent, no worker, owner gone, malformed row, expired
//! from the stream). In a multi-stream table (the
//! KCL 3's layout) each lease shows its bare shard id and, on the line
//! below, its stream.
//!
//! ```text
//! cargo run --example leases -- --app A [--stream S] [--observe-ms N (3500)]
//! cargo run --example leases -- --stream S --deregister-consumer NAME
//! cargo run --example leases -- --app A --stream S --reset POSITION [--shard ID ...] [--dry-run]
//! cargo run --example leases -- --app A --export FILE
//! cargo run --example leases -- --app A --import FILE [--dry-run]
//! ```
//!
//! It reads the table twice, `--observe-ms` apart: a lease whose owner's
//! heartbeat (in its worker item, or the workers row) did not move in between may have lost its
//! owner (workers write one every third of their failover time, 3.3 s by
//! default); for an owner that writes no heartbeat (the KCL), the lease's
//! own counter is watched instead, as the KCL renews each lease. With
//! `--stream`, it lists the stream's shards at both reads too: a row whose
//! shard neither listing has expired from the stream. In a multi-stream
//! table, `--stream` shows that stream's leases alone (those of a former
//! stream of the same name, deleted, among them), and `--reset` moves
//! that stream's leases alone (`kinesis_consumer::reset_stream_positions`). Endpoint, region and
//! credentials come from the standard AWS environment.
//!
//! `--deregister-consumer NAME` removes the enhanced fan-out consumer NAME
//! from the stream instead (its subscriptions end). The library never does
//! this by itself: the consumer is shared by every worker of the
//! application, and one worker stopping or restarting must not cut off the
//! others; whether the application is gone for good is an operator's call.
//!
//! `--reset` moves the application's position, also while its workers run
//! (`kinesis_consumer::reset_positions`): POSITION is `trim-horizon`,
//! `latest`, `at-timestamp <RFC 3339 time>` or `after-sequence N[/SUB]`
//! (with exactly one `--shard`). Every shard of the stream moves, or those
//! of `--shard` (repeatable). A worker holding a lease drops it and what it
//! read; no checkpoint of an older position can land over the reset. A
//! reset into the past re-creates the leases of parent shards still in the
//! stream (their children wait for them again) and names the shards past
//! retention. `--export FILE` writes every checkpoint as JSON;
//! `--import FILE` sets them (into this or another application's table).
//! `--dry-run` prints what `--reset` or `--import` would change.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kinesis_consumer::aws::ClientConfig;
use kinesis_consumer::aws::kinesis::KinesisClient;
use kinesis_consumer::{
    Checkpoint, LeaseStanding, ResetReport, ResetTo, Standing, StreamIdentifier,
    export_checkpoints, import_checkpoints, inspect_leases, list_leases, reset_positions,
    reset_stream_positions, worker_heartbeats,
};

const USAGE: &str = "usage: leases --app A [--stream S] [--observe-ms N (3500)]\n       leases --stream S --deregister-consumer NAME\n       leases --app A --stream S --reset (trim-horizon | latest | at-timestamp T | after-sequence N[/SUB]) [--shard ID ...] [--dry-run]\n       leases --app A --export FILE\n       leases --app A --import FILE [--dry-run]";

fn main() {
    let (rest, shards) = take_shards(std::env::args().skip(1).collect());
    let options = [
        "app",
        "stream",
        "observe-ms",
        "deregister-consumer",
        "reset",
        "export",
        "import",
    ];
    let args = match support::Args::parse_from(rest, &options, &["dry-run"]) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(message) => support::fail(USAGE, &message),
    };
    if let Some(name) = args.get("deregister-consumer") {
        deregister_consumer(&args.required(USAGE, "stream"), name);
        return;
    }
    if !shards.is_empty() && args.get("reset").is_none() {
        support::fail(USAGE, "--shard goes with --reset");
    }
    if let Some(position) = args.get("reset") {
        let to: ResetTo = position.parse().unwrap_or_else(fail);
        let (app, stream) = (args.required(USAGE, "app"), args.required(USAGE, "stream"));
        let kinesis = KinesisClient::new(&ClientConfig::new()).unwrap_or_else(fail);
        let listing = kinesis.list_shards(&stream, None).unwrap_or_else(fail);
        let dry_run = args.flag("dry-run");
        let config = ClientConfig::new();
        let report = match multi_stream_table(&app) {
            true => {
                let id = stream_identity(&kinesis, &stream);
                reset_stream_positions(&config, &app, &id, &listing, &to, &shards, dry_run)
            }
            false => reset_positions(&config, &app, &listing, &to, &shards, dry_run),
        }
        .unwrap_or_else(fail);
        print_report(&report);
        return;
    }
    if let Some(file) = args.get("export") {
        let json = export_checkpoints(&ClientConfig::new(), &args.required(USAGE, "app"))
            .unwrap_or_else(fail);
        if let Err(e) = std::fs::write(file, json + "\n") {
            support::fail(USAGE, &format!("cannot write {file}: {e}"));
        }
        return;
    }
    if let Some(file) = args.get("import") {
        let json = std::fs::read_to_string(file)
            .unwrap_or_else(|e| support::fail(USAGE, &format!("cannot read {file}: {e}")));
        let app = args.required(USAGE, "app");
        let report = import_checkpoints(&ClientConfig::new(), &app, &json, args.flag("dry-run"))
            .unwrap_or_else(fail);
        print_report(&report);
        return;
    }
    let app = args.required(USAGE, "app");
    let observe = Duration::from_millis(args.number(USAGE, "observe-ms", 3500));
    let dynamodb = ClientConfig::new();
    let before: HashMap<String, u64> = list_leases(&dynamodb, &app)
        .unwrap_or_else(fail)
        .into_iter()
        .map(|l| (l.shard_id, l.counter))
        .collect();
    let multi = before
        .keys()
        .any(|k| StreamIdentifier::of_lease_key(k).is_some());
    // In a multi-stream table, `--stream` shows that stream's leases
    // alone, judged against its listing keyed as they are.
    let kinesis = args.get("stream").map(|stream| {
        let k = KinesisClient::new(&ClientConfig::new()).unwrap_or_else(fail);
        let id = multi.then(|| stream_identity(&k, stream));
        (k, stream, id)
    });
    let list_shards = || {
        kinesis.as_ref().map(|(k, stream, id)| {
            let shards = k.list_shards(stream, None).unwrap_or_else(fail);
            match id {
                Some(id) => shards.into_iter().map(|s| id.key_shard(s)).collect(),
                None => shards,
            }
        })
    };
    let mut listings: Vec<_> = list_shards().into_iter().collect();
    let beats_before = worker_heartbeats(&dynamodb, &app).unwrap_or_else(fail);
    std::thread::sleep(observe);
    listings.extend(list_shards());
    let mut rows = inspect_leases(&dynamodb, &app, &listings).unwrap_or_else(fail);
    if let Some((_, _, Some(id))) = &kinesis {
        rows.retain(|r| {
            StreamIdentifier::of_lease_key(&r.shard_id).is_some_and(|s| s.name() == id.name())
        });
    }
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
        "lease table {app}: {} leases, {} owners {:?}; heartbeats: {:?}",
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
                bare(&row.shard_id),
                "?",
                "?",
                "?",
                "?",
                "?",
                status
            );
            println!("{}", support::printable(&line));
            print_stream(&row.shard_id);
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
            bare(&lease.shard_id),
            lease.owner.as_deref().unwrap_or("-"),
            lease.counter,
            checkpoint,
            lease
                .parents
                .iter()
                .map(|p| bare(p))
                .collect::<Vec<_>>()
                .join(","),
            lease
                .children
                .iter()
                .map(|c| bare(c))
                .collect::<Vec<_>>()
                .join(","),
            status
        );
        println!("{}", support::printable(&line));
        print_stream(&lease.shard_id);
        if let Some((start, end)) = &lease.hash_range {
            let line = format!("{:<24} hash keys {start}..={end}", "");
            println!("{}", support::printable(&line));
        }
        if let Some(load) = &lease.load {
            let line = format!(
                "{:<24} load {:.1} KB/s, {:.1} records/s, handler busy {:.0}% (at its last checkpoint)",
                "",
                load.bytes_per_second / 1024.0,
                load.records_per_second,
                load.busy_fraction * 100.0
            );
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

/// The arguments without the `--shard ID`s (returned apart, as `--shard`
/// may be repeated), with a two-word `--reset` value (`at-timestamp T`,
/// `after-sequence N`) joined into one.
fn take_shards(args: Vec<String>) -> (Vec<String>, Vec<String>) {
    let (mut rest, mut shards) = (Vec::new(), Vec::new());
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--shard" => match args.next() {
                Some(id) => shards.push(id),
                None => support::fail(USAGE, "--shard needs a value"),
            },
            "--reset" => {
                rest.push(arg);
                let Some(kind) = args.next() else {
                    support::fail(USAGE, "--reset needs a value");
                };
                match kind.as_str() {
                    "at-timestamp" | "after-sequence" => match args.next() {
                        Some(value) => rest.push(format!("{kind} {value}")),
                        None => support::fail(USAGE, &format!("--reset {kind} needs a value")),
                    },
                    _ => rest.push(kind),
                }
            }
            other => match other.strip_prefix("--shard=") {
                Some(id) => shards.push(id.to_owned()),
                None => rest.push(arg),
            },
        }
    }
    (rest, shards)
}

/// Prints what a reset or an import changed (or would change).
fn print_report(report: &ResetReport) {
    let verb = if report.dry_run {
        "would move"
    } else {
        "moved"
    };
    if report.changes.is_empty() {
        println!("nothing to change");
    }
    for change in &report.changes {
        let line = match (&change.from, &change.owner) {
            (None, _) => format!(
                "{}: {} (lease created{})",
                change.shard_id,
                change.to,
                if report.dry_run { ", dry run" } else { "" }
            ),
            (Some(from), owner) => format!(
                "{}: {verb} from {from} to {}{}",
                change.shard_id,
                change.to,
                match owner {
                    Some(o) => format!(" (held by {o}: it drops the lease and what it read)"),
                    None => String::new(),
                }
            ),
        };
        println!("{}", support::printable(&line));
    }
    for shard_id in &report.past_retention {
        let line =
            format!("{shard_id}: past the stream's retention, its records are gone; left as it is");
        println!("{}", support::printable(&line));
    }
    if report.dry_run {
        println!("dry run: nothing written");
    }
}

/// Whether the application's lease table is in the multi-stream layout.
fn multi_stream_table(app: &str) -> bool {
    let leases = list_leases(&ClientConfig::new(), app).unwrap_or_else(fail);
    leases
        .iter()
        .any(|l| StreamIdentifier::of_lease_key(&l.shard_id).is_some())
}

/// The identity of `stream` (a name or an ARN) now, as multi-stream lease
/// keys name it.
fn stream_identity(kinesis: &KinesisClient, stream: &str) -> StreamIdentifier {
    let summary = kinesis.describe_stream_summary(stream).unwrap_or_else(fail);
    summary.stream_identifier().unwrap_or_else(fail)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn shards_are_taken_out_and_a_two_word_reset_is_joined() {
        let (rest, shards) = take_shards(strings(&[
            "--app",
            "A",
            "--shard",
            "shardId-1",
            "--reset",
            "at-timestamp",
            "2026-01-02T03:04:05Z",
            "--shard=shardId-2",
            "--dry-run",
        ]));
        assert_eq!(shards, ["shardId-1", "shardId-2"]);
        assert_eq!(
            rest,
            strings(&[
                "--app",
                "A",
                "--reset",
                "at-timestamp 2026-01-02T03:04:05Z",
                "--dry-run"
            ])
        );
        let (rest, _) = take_shards(strings(&["--reset", "latest", "--app", "A"]));
        assert_eq!(rest, strings(&["--reset", "latest", "--app", "A"]));
    }
}

/// The shard id of a lease key: the key itself in a single-stream table,
/// its last part in a multi-stream one (`account:stream:epoch:shardId`).
fn bare(key: &str) -> &str {
    match StreamIdentifier::of_lease_key(key) {
        Some(_) => key.rsplit(':').next().unwrap_or(key),
        None => key,
    }
}

/// Under a multi-stream lease, the line naming its stream.
fn print_stream(key: &str) {
    if let Some(stream) = StreamIdentifier::of_lease_key(key) {
        let line = format!(
            "{:<24} stream {} (account {}, created {})",
            "",
            stream.name(),
            stream.account(),
            stream.creation_epoch()
        );
        println!("{}", support::printable(&line));
    }
}
