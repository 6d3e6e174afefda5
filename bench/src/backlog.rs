//! A fake Kinesis stream with per-shard backlogs, for the burst benchmark:
//! plain std threads on 127.0.0.1, one per connection. GetRecords reads the
//! way Kinesis does: from the iterator's position, at most `Limit` records,
//! 10,000 records and 10 MiB of data, with a NextShardIterator and
//! MillisBehindLatest. Shards start empty; [`BacklogServer::fill`] makes
//! records available in every shard at once. Records are made when asked
//! for (all with the same data), so a large backlog costs the server no
//! memory until it is read.

use std::borrow::Cow;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::canned::list_shards_body;
use crate::http::{serve_operations, spawn_server};

/// Kinesis's bounds on one GetRecords reply.
const MAX_RECORDS_PER_READ: u64 = 10_000;
const MAX_BYTES_PER_READ: u64 = 10 * 1024 * 1024;

/// The state of the fake stream.
pub struct Backlog {
    shards: usize,
    record_bytes: usize,
    data_base64: String,
    /// Records available in every shard.
    available: AtomicU64,
    /// GetRecords calls per shard.
    polls: Vec<AtomicU64>,
    /// Bytes of GetRecords reply bodies sent.
    pub bytes_sent: AtomicU64,
}

/// A running fake stream.
pub struct BacklogServer {
    pub url: String,
    pub backlog: Arc<Backlog>,
}

impl BacklogServer {
    /// Serves `shards` empty shards whose records will have `record_bytes`
    /// bytes of data each.
    pub fn start(shards: usize, record_bytes: usize) -> BacklogServer {
        let data: Vec<u8> = (0..record_bytes).map(|i| b'a' + (i % 26) as u8).collect();
        let backlog = Arc::new(Backlog {
            shards,
            record_bytes,
            data_base64: BASE64.encode(&data),
            available: AtomicU64::new(0),
            polls: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            bytes_sent: AtomicU64::new(0),
        });
        let url = spawn_server("backlog", backlog.clone(), serve);
        BacklogServer { url, backlog }
    }

    /// Makes `records` records available in every shard, at once.
    pub fn fill(&self, records: u64) {
        self.backlog.available.store(records, Ordering::SeqCst);
    }

    /// The fewest GetRecords calls any shard has had.
    pub fn least_polls(&self) -> u64 {
        let polls = self.backlog.polls.iter();
        polls.map(|p| p.load(Ordering::Relaxed)).min().unwrap_or(0)
    }
}

fn serve(stream: TcpStream, backlog: &Backlog) {
    serve_operations(stream, |operation, body| {
        let input = String::from_utf8_lossy(body);
        let body: Vec<u8> = match operation {
            "GetRecords" => get_records(backlog, &input),
            "GetShardIterator" => get_shard_iterator(backlog, &input),
            "ListShards" => list_shards_body(backlog.shards),
            "DescribeStreamSummary" => format!(
                r#"{{"StreamDescriptionSummary":{{"StreamName":"bench","StreamARN":"arn:aws:kinesis:us-east-1:000000000000:stream/bench","StreamStatus":"ACTIVE","OpenShardCount":{},"RetentionPeriodHours":24}}}}"#,
                backlog.shards
            )
            .into_bytes(),
            _ => return None,
        };
        Some(Cow::Owned(body))
    })
}

/// The value of the string field `name` in a flat JSON object.
fn string_field<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":");
    let rest = json[json.find(&key)? + key.len()..].trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(&rest[..rest.find('"')?])
}

/// The value of the number field `name` in a flat JSON object.
fn number_field(json: &str, name: &str) -> Option<u64> {
    let key = format!("\"{name}\":");
    let rest = json[json.find(&key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Shard `shard`'s record `index`: 56 digits, increasing with the index.
fn sequence_number(shard: usize, index: u64) -> String {
    format!("4959033827149025660855969253836157109592{shard:04}{index:012}")
}

fn index_of(sequence_number: &str) -> u64 {
    let digits = &sequence_number[sequence_number.len().saturating_sub(12)..];
    digits.parse().unwrap_or(0)
}

fn iterator(shard: usize, index: u64) -> String {
    format!("bench-{shard}-{index}")
}

fn get_shard_iterator(backlog: &Backlog, input: &str) -> Vec<u8> {
    let shard: usize = string_field(input, "ShardId")
        .and_then(|id| id.strip_prefix("shardId-")?.parse().ok())
        .unwrap_or(0);
    let sequence = string_field(input, "StartingSequenceNumber").unwrap_or("0");
    let index = match string_field(input, "ShardIteratorType").unwrap_or("") {
        "LATEST" => backlog.available.load(Ordering::SeqCst),
        "AT_SEQUENCE_NUMBER" => index_of(sequence),
        "AFTER_SEQUENCE_NUMBER" => index_of(sequence) + 1,
        _ => 0,
    };
    format!(r#"{{"ShardIterator":"{}"}}"#, iterator(shard, index)).into_bytes()
}

fn get_records(backlog: &Backlog, input: &str) -> Vec<u8> {
    let (shard, index) = string_field(input, "ShardIterator")
        .and_then(|it| {
            let mut parts = it.strip_prefix("bench-")?.split('-');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .unwrap_or((0usize, 0u64));
    if let Some(polls) = backlog.polls.get(shard) {
        polls.fetch_add(1, Ordering::Relaxed);
    }
    let limit = number_field(input, "Limit").unwrap_or(MAX_RECORDS_PER_READ);
    let available = backlog.available.load(Ordering::SeqCst);
    let by_size = (MAX_BYTES_PER_READ / backlog.record_bytes.max(1) as u64).max(1);
    let count = available
        .saturating_sub(index)
        .min(limit)
        .min(MAX_RECORDS_PER_READ)
        .min(by_size);
    let mut out = String::with_capacity(count as usize * (backlog.data_base64.len() + 160) + 200);
    out.push_str(r#"{"Records":["#);
    for i in index..index + count {
        if i > index {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"SequenceNumber":"{}","ApproximateArrivalTimestamp":1.700000000123E9,"Data":"{}","PartitionKey":"pk-{:06}"}}"#,
            sequence_number(shard, i),
            backlog.data_base64,
            i % 1000
        ));
    }
    let behind = if index + count < available { 1000 } else { 0 };
    out.push_str(&format!(
        r#"],"NextShardIterator":"{}","MillisBehindLatest":{behind}}}"#,
        iterator(shard, index + count)
    ));
    backlog
        .bytes_sent
        .fetch_add(out.len() as u64, Ordering::Relaxed);
    out.into_bytes()
}
