//! A canned Kinesis server for benchmarks: plain std threads on 127.0.0.1,
//! one per connection. It answers ListShards, DescribeStreamSummary,
//! GetShardIterator and GetRecords for any number of shards, endlessly:
//! GetRecords always returns the same prebuilt body (or an empty one while
//! `set_empty(true)`), with a NextShardIterator. Started with
//! [`CannedServer::start_fan_out`], it also serves enhanced fan-out on the
//! same port: DescribeStreamConsumer (one ACTIVE consumer) and, on
//! connections that open with the HTTP/2 preface, SubscribeToShard
//! streams of the same records as endless `SubscribeToShardEvent`s
//! (see [`crate::canned_h2`]).

use std::borrow::Cow;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kinesis_consumer::__test_support::event_stream_crc32;

use crate::canned_h2::{self, Events};
use crate::http::{serve_operations, spawn_server};

/// The ARN of the one stream consumer the canned server knows.
pub const CONSUMER_ARN: &str =
    "arn:aws:kinesis:us-east-1:000000000000:stream/bench/consumer/bench-efo:1700000000";

/// The canned reply bodies and what was asked of them.
pub struct Canned {
    get_records: Vec<u8>,
    empty_records: Vec<u8>,
    list_shards: Vec<u8>,
    describe: Vec<u8>,
    empty: AtomicBool,
    /// GetRecords calls answered.
    pub get_records_calls: AtomicU64,
    /// What SubscribeToShard streams, when fan-out is served.
    fan_out: Option<Arc<Events>>,
}

/// A running canned server.
pub struct CannedServer {
    pub url: String,
    pub canned: Arc<Canned>,
}

impl CannedServer {
    /// Serves `shards` shards whose every GetRecords returns `records`
    /// records of `size` bytes each.
    pub fn start(shards: usize, records: usize, size: usize) -> CannedServer {
        Self::serve_canned(shards, records, size, false)
    }

    /// As [`start`](Self::start), and enhanced fan-out too: every
    /// subscription streams the GetRecords reply's records as one
    /// `SubscribeToShardEvent` after another, as fast as the client's
    /// HTTP/2 flow control lets it.
    pub fn start_fan_out(shards: usize, records: usize, size: usize) -> CannedServer {
        Self::serve_canned(shards, records, size, true)
    }

    fn serve_canned(shards: usize, records: usize, size: usize, fan_out: bool) -> CannedServer {
        let get_records = get_records_body(records, size);
        let fan_out = fan_out.then(|| Arc::new(Events::new(subscribe_event(&get_records))));
        let canned = Arc::new(Canned {
            get_records,
            empty_records: get_records_body(0, 0),
            list_shards: list_shards_body(shards),
            describe: describe_body("bench", shards),
            empty: AtomicBool::new(false),
            get_records_calls: AtomicU64::new(0),
            fan_out,
        });
        let url = spawn_server("canned", canned.clone(), serve);
        CannedServer { url, canned }
    }

    /// While true, GetRecords returns no records (an idle stream).
    pub fn set_empty(&self, empty: bool) {
        self.canned.empty.store(empty, Ordering::Relaxed);
    }

    /// The size of the full GetRecords reply body.
    pub fn body_bytes(&self) -> usize {
        self.canned.get_records.len()
    }

    /// The full GetRecords reply body.
    pub fn body(&self) -> &[u8] {
        &self.canned.get_records
    }

    /// What SubscribeToShard streams (`None` unless started with
    /// [`start_fan_out`](Self::start_fan_out)).
    pub fn events(&self) -> Option<&Events> {
        self.canned.fan_out.as_deref()
    }
}

fn serve(stream: TcpStream, canned: &Canned) {
    if let Some(events) = &canned.fan_out
        && canned_h2::opens_http2(&stream)
    {
        canned_h2::serve(stream, events.clone());
        return;
    }
    serve_operations(stream, |operation, request| {
        let body: Cow<[u8]> = match operation {
            "GetRecords" => {
                canned.get_records_calls.fetch_add(1, Ordering::Relaxed);
                if canned.empty.load(Ordering::Relaxed) {
                    Cow::Borrowed(&canned.empty_records)
                } else {
                    Cow::Borrowed(&canned.get_records)
                }
            }
            "GetShardIterator" => Cow::Borrowed(br#"{"ShardIterator":"AAAAAAAAAAEbenchiterator"}"#),
            "ListShards" => Cow::Borrowed(&canned.list_shards),
            // Named as asked: a multi-stream consumer describes each of
            // its streams.
            "DescribeStreamSummary" => match stream_name(request) {
                Some(name) => Cow::Owned(describe_body(&name, 0)),
                None => Cow::Borrowed(&canned.describe),
            },
            "DescribeStreamConsumer" if canned.fan_out.is_some() => Cow::Owned(
                format!(
                    r#"{{"ConsumerDescription":{{"ConsumerName":"bench-efo","ConsumerARN":"{CONSUMER_ARN}","ConsumerStatus":"ACTIVE","ConsumerCreationTimestamp":1700000000,"StreamARN":"arn:aws:kinesis:us-east-1:000000000000:stream/bench"}}}}"#
                )
                .into_bytes(),
            ),
            _ => return None,
        };
        Some(body)
    })
}

/// The `StreamName` of a request body.
fn stream_name(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v.get("StreamName")?.as_str()?.to_owned())
}

/// A DescribeStreamSummary reply for stream `name` (created at a fixed time).
fn describe_body(name: &str, shards: usize) -> Vec<u8> {
    format!(
        r#"{{"StreamDescriptionSummary":{{"StreamName":"{name}","StreamARN":"arn:aws:kinesis:us-east-1:000000000000:stream/{name}","StreamStatus":"ACTIVE","OpenShardCount":{shards},"RetentionPeriodHours":24,"StreamCreationTimestamp":1700000000}}}}"#
    )
    .into_bytes()
}

/// A GetRecords reply: `records` records of `size` bytes, 56-digit
/// sequence numbers, arrival timestamps, and a next iterator.
pub fn get_records_body(records: usize, size: usize) -> Vec<u8> {
    let mut out = String::with_capacity(records * (size * 4 / 3 + 160) + 200);
    out.push_str(r#"{"Records":["#);
    let mut payload = vec![0u8; size];
    for i in 0..records {
        for (j, b) in payload.iter_mut().enumerate() {
            *b = b'a' + ((i + j) % 26) as u8;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"SequenceNumber":"4959033827149025660855969253836157109592{:016}","ApproximateArrivalTimestamp":1.700000000123E9,"Data":"{}","PartitionKey":"pk-{:06}"}}"#,
            1_575_989_136_588_898u64 + i as u64,
            BASE64.encode(&payload),
            i % 1000
        ));
    }
    out.push_str(GET_RECORDS_TAIL);
    out.into_bytes()
}

/// The tail of a [`get_records_body`]: what follows the record list.
const GET_RECORDS_TAIL: &str =
    r#"],"NextShardIterator":"AAAAAAAAAAEbenchiteratornext","MillisBehindLatest":0}"#;

/// One event-stream message with string headers (type 7): prelude, its
/// CRC-32, headers, payload, the message's CRC-32.
pub fn event_stream_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(name.len() as u8);
        head.extend_from_slice(name.as_bytes());
        head.push(7);
        head.extend_from_slice(&(value.len() as u16).to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    let total = 12 + head.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    let prelude_crc = event_stream_crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = event_stream_crc32(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// The records of a [`get_records_body`] as one `SubscribeToShardEvent`
/// message: the same record list, with the event's own fields (the last
/// record's sequence number as the continuation) in place of the iterator.
pub fn subscribe_event(get_records: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(get_records).unwrap();
    let records = text.strip_suffix(GET_RECORDS_TAIL).unwrap();
    let last = records
        .rsplit_once(r#""SequenceNumber":""#)
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or(
            "49590338271490256608559692538361571095921575989136588898",
            |(seq, _)| seq,
        );
    let payload =
        format!(r#"{records}],"ContinuationSequenceNumber":"{last}","MillisBehindLatest":0}}"#);
    event_stream_message(
        &[
            (":event-type", "SubscribeToShardEvent"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// The `initial-response` message a subscription opens with.
pub fn initial_response() -> Vec<u8> {
    event_stream_message(
        &[
            (":event-type", "initial-response"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        b"{}",
    )
}

/// A ListShards reply for `shards` shards splitting the hash key range evenly.
pub fn list_shards_body(shards: usize) -> Vec<u8> {
    let step = u128::MAX / shards as u128;
    let mut out = String::from(r#"{"Shards":["#);
    for i in 0..shards {
        let start = step * i as u128;
        let end = if i + 1 == shards {
            u128::MAX
        } else {
            step * (i as u128 + 1) - 1
        };
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"ShardId":"shardId-{i:012}","HashKeyRange":{{"StartingHashKey":"{start}","EndingHashKey":"{end}"}},"SequenceNumberRange":{{"StartingSequenceNumber":"49590338271490256608559692538361571095921575989136588898"}}}}"#
        ));
    }
    out.push_str("]}");
    out.into_bytes()
}
