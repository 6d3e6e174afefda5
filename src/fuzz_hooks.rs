//! Thin wrappers around internal parsers for the fuzz targets in `fuzz/`
//! (feature `fuzzing`). Not a stable API.

use std::collections::HashMap;

pub use crate::aws::kinesis::GetRecordsOutput;

/// The GetRecords reply decoder.
pub fn decode_get_records(body: &[u8]) -> crate::Result<GetRecordsOutput> {
    crate::aws::get_records::decode_get_records(body, &std::sync::Arc::from("shardId-0"))
}

/// The same, with serde_json only: the oracle for the scanner.
pub fn decode_get_records_with_serde(body: &[u8]) -> crate::Result<GetRecordsOutput> {
    crate::aws::get_records::decode_get_records_with_serde(body, &std::sync::Arc::from("shardId-0"))
}

/// The error of a non-2xx reply, from its status, `x-amzn-ErrorType`
/// header and body.
pub fn service_error(status: u16, error_type: Option<&str>, body: &[u8]) -> crate::ServiceError {
    crate::aws::client::service_error("Fuzz", status, None, error_type.map(str::to_owned), body)
}

/// A reply body decoded as JSON, as every non-GetRecords call does.
pub fn decode_json(body: &[u8]) -> crate::Result<serde_json::Value> {
    crate::aws::client::decode("Fuzz", body)
}

/// A lease table row (DynamoDB JSON) to a lease, or why it is unusable.
pub fn parse_lease(item: &crate::aws::dynamodb::Item) -> Result<crate::Lease, String> {
    crate::lease::parse_lease(item).map_err(|why| why.to_string())
}

/// The stored form of a checkpoint, and back.
pub fn checkpoint_columns(checkpoint: &crate::Checkpoint) -> (String, u64) {
    let (text, sub) = checkpoint.to_columns();
    (text.to_owned(), sub)
}

/// Parses checkpoint columns (`timestamp`: the row's checkpointTimestamp).
pub fn checkpoint_from_columns(
    text: &str,
    sub: u64,
    timestamp: Option<std::time::SystemTime>,
) -> Option<crate::Checkpoint> {
    crate::Checkpoint::from_columns(text, sub, timestamp)
}

/// The shared config (`config = true`) or credentials file parser.
pub fn parse_profile_file(text: &str, config: bool) -> HashMap<String, HashMap<String, String>> {
    let kind = if config {
        crate::aws::FileKind::Config
    } else {
        crate::aws::FileKind::Credentials
    };
    crate::aws::parse_profile_file(text, kind)
}

/// Reads HTTP/2 frames from `bytes` until they end or one is bad, parsing
/// each control frame's payload; how many frames were read.
pub fn http2_frames(bytes: &[u8]) -> usize {
    use crate::aws::http2::frame;
    let mut input = bytes;
    let mut count = 0;
    while let Ok(Some(f)) = frame::read_frame(&mut input, frame::DEFAULT_MAX_FRAME_SIZE) {
        count += 1;
        let _ = match f.kind {
            frame::SETTINGS => frame::parse_settings(&f.payload).map(|_| ()),
            frame::GOAWAY => frame::parse_goaway(&f.payload).map(|_| ()),
            frame::RST_STREAM | frame::WINDOW_UPDATE => {
                frame::parse_u32("frame", &f.payload).map(|_| ())
            }
            _ => frame::strip_padding_and_priority(&f).map(|_| ()),
        };
    }
    count
}

/// Drives the HTTP/2 connection state machine (no socket) with `bytes`
/// as everything a server sends, one request open on stream 1 whose body
/// goes out as the server's windows allow; panics if more data is
/// buffered than the stream's window allows, a reply is not whole frames,
/// or the body is sent out of order or past the connection's window. How many frames were handled, and whether a
/// connection error ended it.
pub fn http2_connection(bytes: &[u8]) -> (usize, bool) {
    let driven = crate::aws::http2::drive(bytes);
    (driven.frames, driven.error.is_some())
}

/// Splits `bytes` into length-prefixed blocks: a 2-byte big-endian length,
/// then that many bytes (the last block takes what is left). Every byte
/// value can appear inside a block.
pub fn length_prefixed(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut blocks = Vec::new();
    while let [high, low, rest @ ..] = bytes {
        let length = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
        let (block, after) = rest.split_at(length);
        blocks.push(block);
        bytes = after;
    }
    blocks
}

/// A decoded header field: name and value.
pub type HeaderField = (String, Vec<u8>);

/// Decodes `blocks` in turn with one HPACK decoder (the dynamic table
/// carries over, as on a connection); each block's fields or error.
pub fn hpack_blocks(blocks: &[&[u8]]) -> Vec<Result<Vec<HeaderField>, String>> {
    let mut decoder = crate::aws::http2::hpack::Decoder::new(4096, 64 * 1024);
    blocks
        .iter()
        .map(|b| decoder.decode(b).map_err(|e| e.to_string()))
        .collect()
}

/// Feeds `bytes` to the event-stream decoder in two parts (split at
/// `split`) and decodes every message's payload as a SubscribeToShardEvent;
/// how many messages decoded, or the first error.
pub fn event_stream(bytes: &[u8], split: usize) -> Result<usize, String> {
    let mut decoder = crate::aws::event_stream::Decoder::default();
    let split = split.min(bytes.len());
    let mut count = 0;
    for part in [&bytes[..split], &bytes[split..]] {
        decoder.push(part);
        while let Some(m) = decoder.next_message().map_err(|e| e.to_string())? {
            count += 1;
            // The scanner must agree with serde_json: a difference is a bug.
            if let Err(difference) = subscribe_event_agrees_with_serde(m.payload) {
                panic!("{difference}");
            }
        }
    }
    Ok(count)
}

/// Decodes `payload` as a SubscribeToShardEvent both ways, the scanner
/// (with serde_json for unusual shapes) and serde_json alone: `Err` says
/// how they differ (accepted or not, records, fields).
pub fn subscribe_event_agrees_with_serde(payload: &[u8]) -> Result<(), String> {
    use crate::aws::get_records::{decode_subscribe_event, decode_subscribe_event_with_serde};
    let shard: std::sync::Arc<str> = std::sync::Arc::from("shardId-0");
    let (ours, oracle) = (
        decode_subscribe_event(payload, &shard),
        decode_subscribe_event_with_serde(payload, &shard),
    );
    let ((records, fields), (expected, expected_fields)) = match (ours, oracle) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(_), Err(_)) => return Ok(()),
        (a, b) => {
            return Err(format!(
                "{:?} vs serde_json {:?}",
                a.map(|r| r.1),
                b.map(|r| r.1)
            ));
        }
    };
    if fields != expected_fields {
        return Err(format!("{fields:?} vs serde_json {expected_fields:?}"));
    }
    let (records, expected): (Vec<_>, Vec<_>) = (
        records.into_iter().collect(),
        expected.into_iter().collect(),
    );
    if records.len() != expected.len() {
        return Err(format!(
            "{} records vs serde_json {}",
            records.len(),
            expected.len()
        ));
    }
    for (r, e) in records.iter().zip(&expected) {
        // serde_json and a correctly rounded parser may differ in the last bit.
        let gap = match (
            r.approximate_arrival_timestamp(),
            e.approximate_arrival_timestamp(),
        ) {
            (Some(a), Some(b)) => a
                .duration_since(b)
                .or(b.duration_since(a))
                .map_or(0, |d| d.as_micros()),
            (a, b) => u128::from(a != b) * u128::MAX,
        };
        if r.sequence_number() != e.sequence_number()
            || r.partition_key() != e.partition_key()
            || r.data() != e.data()
            || gap > 1
        {
            return Err(format!("{r:?} vs serde_json {e:?}"));
        }
    }
    Ok(())
}

/// Seconds since the epoch of an HTTP `Date` header, if it reads as one.
pub fn http_date_seconds(text: &str) -> Option<u64> {
    crate::time::http_date_seconds(text)
}

/// Every credential source's reply parser over `body` (credential_process
/// output, container and instance metadata JSON, STS XML, SSO role
/// credentials, OIDC `CreateToken`); how many accepted it.
pub fn credential_replies(body: &[u8]) -> usize {
    crate::aws::credentials::parse_replies_for_fuzzing(body)
}

/// The CRC-32 the event-stream decoder checks (for building valid inputs).
pub fn crc32(data: &[u8]) -> u32 {
    crate::aws::event_stream::crc32(data)
}
