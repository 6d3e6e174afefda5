//! Decoding GetRecords replies, the hot path of a consumer.
//!
//! The records of one reply share one buffer holding their decoded data and
//! partition keys (see [`Record`]): no allocation per record. The usual
//! shape of a reply (no escapes, no child shards) goes through a
//! single-pass scanner that decodes the base64 data while it looks for the
//! end of the string; anything else goes through serde_json, which accepts
//! every valid reply.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::aws::kinesis::{
    ChildShard, GetRecordsOutput, bad_reply, check_shard_ids, parse_sequence,
};
use crate::error::Result;
use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber, Shared, Span};
use crate::spares::Spares;

const OP: &str = "GetRecords";

/// Decodes a GetRecords reply from `shard_id`, records and all.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_get_records(body: &[u8], shard_id: &Arc<str>) -> Result<GetRecordsOutput> {
    let (records, rest) = decode_reply(body, shard_id, None)?;
    Ok(GetRecordsOutput {
        records: records.into_iter().collect(),
        ..rest
    })
}

/// Decodes a GetRecords reply, leaving its records to be made one at a
/// time (the consumer's path: no list of records per reply); the output's
/// own `records` is empty.
/// The records' data is decoded into a buffer from `spares` when one fits,
/// and goes back there once the last record is dropped.
pub(crate) fn decode_reply(
    body: &[u8],
    shard_id: &Arc<str>,
    spares: Option<&Arc<Spares<u8>>>,
) -> Result<(Records, GetRecordsOutput)> {
    let (decoded, rest) = match fast::reply(body, &fast::GET_RECORDS, spares) {
        Some(out) => {
            let (decoded, top) = out?;
            let rest = GetRecordsOutput {
                next_shard_iterator: top.position.filter(|t| !t.is_empty()).map(str::to_owned),
                millis_behind_latest: top.millis_behind_latest,
                ..GetRecordsOutput::default()
            };
            (decoded, rest)
        }
        None => decode_with_serde(body, spares)?,
    };
    Ok((decoded.into_records(shard_id), rest))
}

/// The records of one reply, made as they are taken.
pub(crate) struct Records {
    shared: Arc<Shared>,
    fields: Vec<Fields>,
}

impl Records {
    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// How many records the reply holds (before KPL de-aggregation).
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }

    pub(crate) fn last_sequence_number(&self) -> Option<&SequenceNumber> {
        Some(&self.fields.last()?.sequence_number)
    }

    /// The size of the buffer the records share: three quarters of the
    /// reply body, by construction.
    pub(crate) fn buffer_bytes(&self) -> u64 {
        self.shared.bytes.capacity() as u64
    }
}

impl IntoIterator for Records {
    type Item = Record;
    type IntoIter = RecordsIter;

    fn into_iter(self) -> RecordsIter {
        RecordsIter {
            shared: self.shared,
            fields: self.fields.into_iter(),
        }
    }
}

/// Makes the records of a reply one at a time.
pub(crate) struct RecordsIter {
    shared: Arc<Shared>,
    fields: std::vec::IntoIter<Fields>,
}

impl Iterator for RecordsIter {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let f = self.fields.next()?;
        Some(Record {
            shared: self.shared.clone(),
            position: ExtendedSequenceNumber {
                sequence_number: f.sequence_number,
                sub_sequence_number: 0,
            },
            aggregated: false,
            partition_key: f.partition_key,
            explicit_hash_key: None,
            arrival: f.arrival,
            data: f.data,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.fields.size_hint()
    }
}

impl ExactSizeIterator for RecordsIter {}

/// Decodes with serde_json only: the oracle the scanner is checked against.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_get_records_with_serde(
    body: &[u8],
    shard_id: &Arc<str>,
) -> Result<GetRecordsOutput> {
    let (decoded, rest) = decode_with_serde(body, None)?;
    Ok(GetRecordsOutput {
        records: decoded.into_records(shard_id).into_iter().collect(),
        ..rest
    })
}

/// The records of a reply as they are decoded: their fields, and the one
/// buffer their data and keys go to.
struct Decoded {
    /// The records' data.
    bytes: Vec<u8>,
    /// The records' partition keys.
    text: String,
    /// Where `bytes` goes back once the records are dropped.
    goes_back: Option<Arc<Spares<u8>>>,
    records: Vec<Fields>,
    /// The operation whose reply this is, for error messages.
    operation: &'static str,
}

struct Fields {
    sequence_number: SequenceNumber,
    partition_key: Span,
    data: Span,
    arrival: Option<SystemTime>,
}

impl Decoded {
    /// Room for the records of a reply of `operation` of `body_len` bytes:
    /// the data is at most three quarters of the base64 text.
    fn for_body(
        body_len: usize,
        operation: &'static str,
        spares: Option<&Arc<Spares<u8>>>,
    ) -> Decoded {
        let room = body_len / 4 * 3;
        // The smallest record is about 50 bytes of JSON; GetRecords returns
        // at most 10,000.
        Decoded {
            bytes: spares.map_or_else(|| Vec::with_capacity(room), |s| s.take(room)),
            goes_back: spares.cloned(),
            // Keys are a small part of a reply: a guess, grown if short.
            text: String::with_capacity(body_len / 32),
            records: Vec::with_capacity((body_len / 50).min(10_000)),
            operation,
        }
    }

    /// The span of what was appended to the buffer since `start`.
    fn span_from(&self, start: usize) -> Span {
        Span {
            start: start as u32,
            end: self.bytes.len() as u32,
        }
    }

    /// Appends a key to the keys' text.
    fn push_text(&mut self, text: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(text);
        Span {
            start,
            end: self.text.len() as u32,
        }
    }

    /// Adds one record whose data is already in the buffer at `data`.
    fn push(
        &mut self,
        sequence_number: &[u8],
        key: &str,
        data: Span,
        arrival: Option<f64>,
    ) -> Result<()> {
        let sequence_number = parse_sequence(self.operation, sequence_number)?;
        let partition_key = self.push_text(key);
        self.records.push(Fields {
            sequence_number,
            partition_key,
            data,
            arrival: arrival.and_then(from_epoch_seconds),
        });
        Ok(())
    }

    fn into_records(self, shard_id: &Arc<str>) -> Records {
        Records {
            shared: Arc::new(Shared {
                shard_id: shard_id.clone(),
                bytes: self.bytes,
                text: self.text,
                goes_back: self.goes_back,
            }),
            fields: self.records,
        }
    }
}

/// An arrival time from epoch seconds; `None` for a negative one, or one
/// past what a `Duration` or the system clock can hold (a bogus reply must
/// not panic the reader).
fn from_epoch_seconds(secs: f64) -> Option<SystemTime> {
    if secs < 0.0 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsJson<'a> {
    #[serde(borrow, default)]
    records: Option<Vec<RecordJson<'a>>>,
    next_shard_iterator: Option<String>,
    millis_behind_latest: Option<u64>,
    #[serde(default)]
    child_shards: Option<Vec<ChildShardJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordJson<'a> {
    #[serde(borrow)]
    sequence_number: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow)]
    data: Cow<'a, str>,
    approximate_arrival_timestamp: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ChildShardJson {
    shard_id: String,
    #[serde(default)]
    parent_shards: Option<Vec<String>>,
}

/// The general decoder, borrowing strings from the body where it can.
fn decode_with_serde(
    body: &[u8],
    spares: Option<&Arc<Spares<u8>>>,
) -> Result<(Decoded, GetRecordsOutput)> {
    let reply: GetRecordsJson<'_> =
        serde_json::from_slice(body).map_err(|e| bad_reply(OP, e.to_string()))?;
    let mut decoded = Decoded::for_body(body.len(), OP, spares);
    decode_records(&mut decoded, reply.records.unwrap_or_default())?;
    let rest = GetRecordsOutput {
        records: Vec::new(),
        next_shard_iterator: reply.next_shard_iterator.filter(|s| !s.is_empty()),
        millis_behind_latest: reply.millis_behind_latest,
        child_shards: child_shards(OP, reply.child_shards)?,
    };
    Ok((decoded, rest))
}

/// Decodes parsed records into `decoded`'s one buffer.
fn decode_records(decoded: &mut Decoded, records: Vec<RecordJson<'_>>) -> Result<()> {
    decoded.records.reserve(records.len());
    for r in records {
        let start = decoded.bytes.len();
        BASE64
            .decode_vec(r.data.as_bytes(), &mut decoded.bytes)
            .map_err(|e| {
                bad_reply(
                    decoded.operation,
                    format!("record {} has invalid base64 data: {e}", r.sequence_number),
                )
            })?;
        let data = decoded.span_from(start);
        decoded.push(
            r.sequence_number.as_bytes(),
            &r.partition_key,
            data,
            r.approximate_arrival_timestamp,
        )?;
    }
    Ok(())
}

/// The child shards of a reply of `operation`, each id checked.
fn child_shards(
    operation: &'static str,
    list: Option<Vec<ChildShardJson>>,
) -> Result<Vec<ChildShard>> {
    let children: Vec<ChildShard> = list
        .unwrap_or_default()
        .into_iter()
        .map(|c| ChildShard {
            shard_id: c.shard_id,
            parent_shards: c.parent_shards.unwrap_or_default(),
        })
        .collect();
    for child in &children {
        let parents = child.parent_shards.iter().map(String::as_str);
        check_shard_ids(operation, parents.chain([child.shard_id.as_str()]))?;
    }
    Ok(children)
}

/// What a SubscribeToShardEvent holds besides its records.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventFields {
    pub(crate) continuation_sequence_number: Option<SequenceNumber>,
    pub(crate) millis_behind_latest: Option<u64>,
    pub(crate) child_shards: Vec<ChildShard>,
}

const EVENT: &str = "SubscribeToShard";

/// Decodes the JSON payload of a SubscribeToShardEvent from `shard_id`:
/// its records are made exactly as GetRecords records are (one shared
/// buffer, not de-aggregated), by the same scanner, with serde_json for
/// unusual shapes.
pub(crate) fn decode_subscribe_event(
    payload: &[u8],
    shard_id: &Arc<str>,
) -> Result<(Records, EventFields)> {
    let (decoded, fields) = match fast::reply(payload, &fast::SUBSCRIBE_EVENT, None) {
        Some(out) => {
            let (decoded, top) = out?;
            let fields = EventFields {
                continuation_sequence_number: continuation(top.position)?,
                millis_behind_latest: top.millis_behind_latest,
                child_shards: Vec::new(),
            };
            (decoded, fields)
        }
        None => decode_event_with_serde(payload)?,
    };
    Ok((decoded.into_records(shard_id), fields))
}

/// An event's continuation sequence number; empty is none.
fn continuation(text: Option<&str>) -> Result<Option<SequenceNumber>> {
    match text {
        Some(text) if !text.is_empty() => Ok(Some(parse_sequence(EVENT, text.as_bytes())?)),
        _ => Ok(None),
    }
}

/// Decodes an event's payload with serde_json only: the general path, and
/// the oracle the scanner is checked against.
fn decode_event_with_serde(payload: &[u8]) -> Result<(Decoded, EventFields)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct EventJson<'a> {
        #[serde(borrow, default)]
        records: Option<Vec<RecordJson<'a>>>,
        continuation_sequence_number: Option<String>,
        millis_behind_latest: Option<u64>,
        #[serde(default)]
        child_shards: Option<Vec<ChildShardJson>>,
    }
    let event: EventJson<'_> = serde_json::from_slice(payload)
        .map_err(|e| bad_reply(EVENT, format!("SubscribeToShardEvent: {e}")))?;
    let mut decoded = Decoded::for_body(payload.len(), EVENT, None);
    decode_records(&mut decoded, event.records.unwrap_or_default())?;
    let fields = EventFields {
        continuation_sequence_number: continuation(event.continuation_sequence_number.as_deref())?,
        millis_behind_latest: event.millis_behind_latest,
        child_shards: child_shards(EVENT, event.child_shards)?,
    };
    Ok((decoded, fields))
}

/// [`decode_subscribe_event`] with serde_json only (for the fuzz targets).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode_subscribe_event_with_serde(
    payload: &[u8],
    shard_id: &Arc<str>,
) -> Result<(Records, EventFields)> {
    let (decoded, fields) = decode_event_with_serde(payload)?;
    Ok((decoded.into_records(shard_id), fields))
}

/// A scanner for the common shape of a GetRecords reply and of a
/// SubscribeToShardEvent (the same records, one other field). It gives up
/// (`None`) on anything it does not expect, such as an escaped string,
/// child shards, an unknown nested field or base64 it cannot decode, and
/// the caller falls back to serde_json; a reply it accepts decodes exactly
/// as serde_json would.
mod fast {
    use std::sync::Arc;

    use super::Decoded;
    use crate::error::Result;
    use crate::spares::Spares;

    /// The shape of a reply: the records, MillisBehindLatest, ChildShards
    /// (only empty) and one string field saying where reading continues.
    pub(super) struct Shape {
        operation: &'static str,
        position_field: &'static [u8],
    }

    pub(super) const GET_RECORDS: Shape = Shape {
        operation: super::OP,
        position_field: b"NextShardIterator",
    };

    pub(super) const SUBSCRIBE_EVENT: Shape = Shape {
        operation: super::EVENT,
        position_field: b"ContinuationSequenceNumber",
    };

    /// A reply's fields besides its records.
    pub(super) struct Top<'a> {
        /// NextShardIterator or ContinuationSequenceNumber, as written.
        pub(super) position: Option<&'a str>,
        pub(super) millis_behind_latest: Option<u64>,
    }

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// Marks (high bit) the bytes of `word` below `n` (n ≤ 128); the
    /// lowest mark is exact, higher ones may be false.
    fn bytes_below(word: u64, n: u8) -> u64 {
        word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS
    }

    fn bytes_equal(word: u64, byte: u8) -> u64 {
        bytes_below(word ^ (ONES * u64::from(byte)), 1)
    }

    /// Where the string starting at `at` stops being plain: the index of
    /// its first quote, backslash or control byte. Looks at 8 bytes at a time.
    fn plain_run_end(body: &[u8], mut at: usize) -> Option<usize> {
        while let Some(word) = body
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
        {
            let word = u64::from_le_bytes(word);
            let marks =
                bytes_equal(word, b'"') | bytes_equal(word, b'\\') | bytes_below(word, 0x20);
            if marks != 0 {
                return Some(at + (marks.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        let len = body
            .get(at..)?
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        Some(at + len)
    }

    /// Decodes the padded base64 string whose text starts at `at`, appending
    /// the bytes to `out`; the index after its closing quote. `None` for
    /// anything but canonical padded base64 without escapes. The end is
    /// found first and the text decoded in one call: both run on the CPU's
    /// vector units (memchr, base64-simd), more than twice as fast as the
    /// table-driven loop this replaced.
    fn base64_string(body: &[u8], at: usize, out: &mut Vec<u8>) -> Option<usize> {
        let len = memchr::memchr(b'"', body.get(at..)?)?;
        base64_simd::STANDARD
            .decode_append(&body[at..at + len], out)
            .ok()?;
        Some(at + len + 1)
    }

    struct Scanner<'a> {
        body: &'a [u8],
        at: usize,
    }

    impl<'a> Scanner<'a> {
        fn skip_ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.body.get(self.at) {
                self.at += 1;
            }
        }

        /// The next non-space byte, consumed.
        fn next(&mut self) -> Option<u8> {
            self.skip_ws();
            let b = *self.body.get(self.at)?;
            self.at += 1;
            Some(b)
        }

        fn peek(&mut self) -> Option<u8> {
            self.skip_ws();
            self.body.get(self.at).copied()
        }

        fn expect(&mut self, byte: u8) -> Option<()> {
            (self.next()? == byte).then_some(())
        }

        /// A string without escapes, as raw bytes (the opening quote next).
        fn raw_string(&mut self) -> Option<&'a [u8]> {
            self.expect(b'"')?;
            let start = self.at;
            let end = plain_run_end(self.body, start)?;
            if self.body[end] != b'"' {
                return None;
            }
            self.at = end + 1;
            Some(&self.body[start..end])
        }

        fn string(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.raw_string()?).ok()
        }

        /// A base64 string, decoded onto the end of `out`.
        fn base64(&mut self, out: &mut Vec<u8>) -> Option<()> {
            self.expect(b'"')?;
            self.at = base64_string(self.body, self.at, out)?;
            Some(())
        }

        fn is_null(&mut self) -> bool {
            self.skip_ws();
            if self.body[self.at..].starts_with(b"null") {
                self.at += 4;
                true
            } else {
                false
            }
        }

        /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        /// (Rust's parsers also take "+1", "01" or ".5", JSON does not),
        /// and its value as `str::parse` gives it, in one pass. Short ones,
        /// such as arrival timestamps (`1.700000000123E9`), take the exact
        /// fast path: an integer mantissa below 2^53 and a power of ten up
        /// to 10^22 are both exact doubles, so one multiplication or
        /// division rounds correctly, the same double a full parser gives.
        /// Longer ones go to `str::parse`.
        fn number(&mut self) -> Option<f64> {
            const POWERS: [f64; 23] = [
                1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
            ];
            self.skip_ws();
            let start = self.at;
            let negative = self.skip(b"-");
            let mut mantissa = 0u64;
            let mut digits = if self.skip(b"0") {
                1
            } else {
                self.decimal(&mut mantissa)
            };
            if digits == 0 {
                return None;
            }
            let mut exponent = 0i64;
            if self.skip(b".") {
                let fraction = self.decimal(&mut mantissa);
                if fraction == 0 {
                    return None;
                }
                digits += fraction;
                exponent -= fraction as i64;
            }
            let mut long_exponent = false;
            if self.skip(b"eE") {
                let minus = self.body.get(self.at) == Some(&b'-');
                self.skip(b"+-");
                let mut written = 0u64;
                match self.decimal(&mut written) {
                    0 => return None,
                    // Too long to be summed without overflow: str::parse.
                    7.. => long_exponent = true,
                    _ if minus => exponent -= written as i64,
                    _ => exponent += written as i64,
                }
            }
            if long_exponent || digits > 15 || mantissa >= 1 << 53 || exponent.abs() > 22 {
                let text = std::str::from_utf8(&self.body[start..self.at]).ok()?;
                return text.parse().ok();
            }
            let magnitude = mantissa as f64;
            let power = POWERS[exponent.unsigned_abs() as usize];
            let value = if exponent < 0 {
                magnitude / power
            } else {
                magnitude * power
            };
            Some(if negative { -value } else { value })
        }

        /// The text of a JSON number (see [`number`](Self::number)).
        fn number_text(&mut self) -> Option<&'a str> {
            self.skip_ws();
            let start = self.at;
            self.number()?;
            std::str::from_utf8(&self.body[start..self.at]).ok()
        }

        /// Consumes one byte if it is one of `any`.
        fn skip(&mut self, any: &[u8]) -> bool {
            let hit = self.body.get(self.at).is_some_and(|b| any.contains(b));
            self.at += usize::from(hit);
            hit
        }

        /// Consumes ASCII digits, adding them to `value` (wrapping: the
        /// caller looks at how many there were); how many.
        fn decimal(&mut self, value: &mut u64) -> usize {
            let start = self.at;
            while let Some(&b @ b'0'..=b'9') = self.body.get(self.at) {
                *value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                self.at += 1;
            }
            self.at - start
        }

        fn f64(&mut self) -> Option<Option<f64>> {
            if self.is_null() {
                return Some(None);
            }
            let v = self.number()?;
            v.is_finite().then_some(Some(v))
        }

        fn u64(&mut self) -> Option<Option<u64>> {
            if self.is_null() {
                return Some(None);
            }
            Some(Some(self.number_text()?.parse().ok()?))
        }

        /// A string or null.
        fn opt_string(&mut self) -> Option<Option<&'a str>> {
            if self.is_null() {
                return Some(None);
            }
            self.string().map(Some)
        }

        /// Walks an object, calling `field` with each key; `field` reads the
        /// value.
        fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
            self.expect(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                let key = self.raw_string()?;
                self.expect(b':')?;
                field(self, key)?;
                match self.next()? {
                    b',' => continue,
                    b'}' => return Some(()),
                    _ => return None,
                }
            }
        }
    }

    /// A whole text read as one JSON number; `None` when it is not one.
    #[cfg(test)]
    pub(super) fn parse_f64(text: &str) -> Option<f64> {
        let mut s = Scanner {
            body: text.as_bytes(),
            at: 0,
        };
        let value = s.number()?;
        (s.at == text.len()).then_some(value)
    }

    /// Scans a reply of `shape`: `None` when it is not of the usual shape.
    pub(super) fn reply<'a>(
        body: &'a [u8],
        shape: &Shape,
        spares: Option<&Arc<Spares<u8>>>,
    ) -> Option<Result<(Decoded, Top<'a>)>> {
        let mut s = Scanner { body, at: 0 };
        let mut decoded = Decoded::for_body(body.len(), shape.operation, spares);
        let mut top = Top {
            position: None,
            millis_behind_latest: None,
        };
        let mut failed = None;
        // A field seen twice fails its guard: serde_json refuses duplicates.
        let mut seen = [false; 4];
        let mut first = |field: usize| !std::mem::replace(&mut seen[field], true);
        s.object(|s, key| {
            match key {
                b"Records" if first(0) => {
                    if s.is_null() {
                        return Some(());
                    }
                    s.expect(b'[')?;
                    if s.peek()? == b']' {
                        s.at += 1;
                        return Some(());
                    }
                    loop {
                        if let Err(e) = record(s, &mut decoded)? {
                            failed.get_or_insert(e);
                        }
                        match s.next()? {
                            b',' => continue,
                            b']' => return Some(()),
                            _ => return None,
                        }
                    }
                }
                _ if key == shape.position_field && first(1) => {
                    top.position = s.opt_string()?;
                    Some(())
                }
                b"MillisBehindLatest" if first(2) => {
                    top.millis_behind_latest = s.u64()?;
                    Some(())
                }
                b"ChildShards" if first(3) => {
                    // Only at the end of a closed shard: leave it to serde.
                    if s.is_null() {
                        return Some(());
                    }
                    s.expect(b'[')?;
                    s.expect(b']')
                }
                _ => None,
            }
        })?;
        if s.peek().is_some() {
            return None;
        }
        Some(match failed {
            Some(e) => Err(e),
            None => Ok((decoded, top)),
        })
    }

    /// One record object, its data decoded into `decoded`; the inner `Err`
    /// is a record that is well-formed JSON but has an invalid sequence
    /// number.
    fn record(s: &mut Scanner<'_>, decoded: &mut Decoded) -> Option<Result<()>> {
        let (mut seq, mut key, mut data, mut arrival) = (None, None, None, None);
        let mut encryption = false;
        // A field seen twice fails its guard: serde_json refuses duplicates.
        s.object(|s, field| {
            match field {
                b"SequenceNumber" if seq.is_none() => seq = Some(s.raw_string()?),
                b"PartitionKey" if key.is_none() => key = Some(s.string()?),
                b"Data" if data.is_none() => {
                    let start = decoded.bytes.len();
                    s.base64(&mut decoded.bytes)?;
                    data = Some(decoded.span_from(start));
                }
                b"ApproximateArrivalTimestamp" if arrival.is_none() => arrival = Some(s.f64()?),
                b"EncryptionType" if !encryption => {
                    encryption = true;
                    s.opt_string()?;
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(decoded.push(seq?, key?, data?, arrival.flatten()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn decode(body: &[u8]) -> Result<GetRecordsOutput> {
        decode_get_records(body, &Arc::from("shardId-1"))
    }

    #[test]
    fn decodes_get_records_with_emulator_quirks() {
        let body = br#"{"Records":[
            {"SequenceNumber":"0","PartitionKey":"a","Data":"aGk=","ApproximateArrivalTimestamp":1700000000},
            {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","PartitionKey":"b\u00e9",
             "Data":"","ApproximateArrivalTimestamp":1700000000.25,"EncryptionType":null}],
            "NextShardIterator":null,"MillisBehindLatest":null,"ChildShards":null}"#;
        let out = decode(body).unwrap();
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].data(), b"hi");
        assert_eq!(out.records[0].shard_id(), "shardId-1");
        assert_eq!(
            out.records[0].approximate_arrival_timestamp(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(out.records[1].partition_key(), "bé");
        assert_eq!(
            out.records[1].approximate_arrival_timestamp(),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250))
        );
        assert!(out.next_shard_iterator.is_none() && out.millis_behind_latest.is_none());
        assert!(out.child_shards.is_empty());
    }

    #[test]
    fn records_of_a_reply_share_one_buffer_and_payloads_outlive_them() {
        let body = br#"{"Records":[
            {"SequenceNumber":"1","PartitionKey":"k1","Data":"b25l"},
            {"SequenceNumber":"2","PartitionKey":"k2","Data":"dHdv"}],"NextShardIterator":"it"}"#;
        let out = decode(body).unwrap();
        let (first, second) = (&out.records[0], &out.records[1]);
        assert!(Arc::ptr_eq(&first.shared, &second.shared));
        assert_eq!((first.data(), second.data()), (&b"one"[..], &b"two"[..]));
        assert_eq!(
            (first.partition_key(), second.partition_key()),
            ("k1", "k2")
        );
        let payload = second.payload();
        assert_eq!(format!("{payload:?}"), format!("{:?}", b"two"));
        drop(out);
        assert_eq!(&*payload, b"two");
        assert_eq!(Vec::from(payload.clone()), b"two");
        assert_eq!(payload, payload.clone());
    }

    #[test]
    fn get_records_rejects_bad_data_and_sequence_numbers() {
        for bad in ["!!", "aGk", "aGl=", "aG==", "a===", "aGk=aGk="] {
            let body = format!(
                r#"{{"Records":[{{"SequenceNumber":"1","PartitionKey":"a","Data":"{bad}"}}]}}"#
            );
            assert!(
                matches!(decode(body.as_bytes()), Err(Error::Decode { .. })),
                "{bad}"
            );
        }
        let bad_seq = br#"{"Records":[{"SequenceNumber":"x1","PartitionKey":"a","Data":""}]}"#;
        assert!(decode(bad_seq).unwrap_err().to_string().contains("x1"));
        assert!(decode(b"{\"Records\":[").is_err());
    }

    #[test]
    fn base64_decodes_like_the_base64_crate() {
        // Every length around the 16-digit blocks and the runs of 240
        // bytes, every byte value.
        for len in (0..40usize).chain(230..250).chain(470..490) {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let body = format!(
                r#"{{"Records":[{{"SequenceNumber":"1","PartitionKey":"a","Data":"{}"}}]}}"#,
                BASE64.encode(&data)
            );
            let out = fast::reply(body.as_bytes(), &fast::GET_RECORDS, None)
                .expect("plain base64 is scanned")
                .unwrap();
            let records: Vec<Record> = out.0.into_records(&Arc::from("s")).into_iter().collect();
            assert_eq!(records[0].data(), data, "{len} bytes");
        }
    }

    #[test]
    fn short_numbers_parse_to_the_same_double_as_str_parse() {
        for text in [
            "0",
            "-0",
            "1",
            "1.5",
            "1.700000000123E9",
            "1.441215410867E9",
            "1700000000.25",
            "1e22",
            "1e23",
            "123456789012345",
            "1234567890123456789",
            "0.1",
            "-2.5e-3",
            "9007199254740993",
            "1E+2",
            "1e-22",
            "4.9e-324",
            "1.7976931348623157e308",
        ] {
            let expected: f64 = text.parse().unwrap();
            let ours = fast::parse_f64(text).unwrap();
            assert_eq!(ours.to_bits(), expected.to_bits(), "{text}");
        }
        // Exponents too long to sum go to str::parse; so does everything
        // past the fast path's bounds.
        for text in [
            "1e0000000000000000000000005",
            "1e-0000000000000000000000005",
            "5e-99999999999999999999999999",
            "1.5e300",
            "-1.5E-300",
            "0.000000000000000000000000001",
        ] {
            let expected: f64 = text.parse().unwrap();
            let ours = fast::parse_f64(text).unwrap();
            assert_eq!(ours.to_bits(), expected.to_bits(), "{text}");
        }
        // What Rust parses and JSON does not allow is not a number here.
        for text in [
            "", "-", "+1", ".5", "1.", "01", "1e", "1e+", "1e+-5", "-.5", "1.e5", "e5",
        ] {
            assert_eq!(fast::parse_f64(text), None, "{text:?}");
        }
    }

    #[test]
    fn decodes_child_shards() {
        let body = br#"{"Records":[],"NextShardIterator":null,"MillisBehindLatest":0,
            "ChildShards":[{"ShardId":"shardId-2","ParentShards":["shardId-0","shardId-1"],
            "HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#;
        let out = decode(body).unwrap();
        assert_eq!(
            out.child_shards,
            vec![ChildShard {
                shard_id: "shardId-2".into(),
                parent_shards: vec!["shardId-0".into(), "shardId-1".into()]
            }]
        );
        assert_eq!(out.millis_behind_latest, Some(0));
    }

    #[test]
    fn child_shards_that_are_no_shard_ids_are_decode_errors() {
        for children in [
            r#"[{"ShardId":"../x","ParentShards":["shardId-0"]}]"#,
            r#"[{"ShardId":"shardId-2","ParentShards":["/etc"]}]"#,
            r#"[{"ShardId":"shardId-2\u001b[31m","ParentShards":[]}]"#,
        ] {
            let body = format!(r#"{{"Records":[],"ChildShards":{children}}}"#);
            let err = decode(body.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, Error::Decode { message, .. } if message.contains("is not a shard id")),
                "{children}: {err:?}"
            );
            assert!(!err.to_string().contains('\u{1b}'), "{err}");
            let event = format!(r#"{{"Records":[],"ChildShards":{children}}}"#);
            assert!(
                decode_subscribe_event(event.as_bytes(), &Arc::from("s")).is_err(),
                "{children}"
            );
        }
    }

    #[test]
    fn an_arrival_time_no_clock_can_hold_is_left_out_not_a_panic() {
        let shard: Arc<str> = Arc::from("s");
        for stamp in ["1e300", "1.8e19", "9.3e18", "1e19"] {
            let body = format!(
                r#"{{"Records":[{{"SequenceNumber":"1","PartitionKey":"k","Data":"","ApproximateArrivalTimestamp":{stamp}}}],"NextShardIterator":"it"}}"#
            );
            let out = decode_get_records(body.as_bytes(), &shard).unwrap();
            assert_eq!(
                out.records[0].approximate_arrival_timestamp(),
                None,
                "{stamp}"
            );
            let general = decode_get_records_with_serde(body.as_bytes(), &shard).unwrap();
            assert_eq!(general.records[0].approximate_arrival_timestamp(), None);
        }
    }

    /// The fast path decodes base64 with base64-simd and the general path
    /// with the base64 crate: both must accept and refuse the same texts.
    #[test]
    fn base64_decoders_agree_on_every_length_and_on_bad_text() {
        let shard: Arc<str> = Arc::from("s");
        let mut texts = Vec::new();
        let mut x = 7u32;
        for len in 0..200usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            let text = BASE64.encode(&data);
            // Longer texts exercise the vector loops, shorter ones the tail.
            for bad in [b'-', b'_', b' ', b'=', b'*', 0xC3] {
                for at in [0, text.len() / 2, text.len().saturating_sub(1)] {
                    let mut t = text.clone().into_bytes();
                    if let Some(b) = t.get_mut(at) {
                        *b = bad;
                        texts.push(String::from_utf8_lossy(&t).into_owned());
                    }
                }
            }
            texts.push(text.trim_end_matches('=').to_owned());
            texts.push(format!("{text}="));
            texts.push(text);
        }
        // Non-canonical: the unused low bits of the last digit set.
        texts.extend(["aGl=", "aGk>", "aR==", "aGk=aGk=", "a===", "===="].map(String::from));
        let mut scanned = 0;
        for text in &texts {
            let body = format!(
                r#"{{"Records":[{{"SequenceNumber":"1","PartitionKey":"k","Data":{}}}],"NextShardIterator":"it"}}"#,
                serde_json::to_string(text).unwrap()
            );
            let fast = decode_get_records(body.as_bytes(), &shard);
            let general = decode_get_records_with_serde(body.as_bytes(), &shard);
            let data = |r: &Result<GetRecordsOutput>| {
                r.as_ref()
                    .map(|o| o.records[0].data().to_vec())
                    .map_err(|e| e.to_string())
            };
            assert_eq!(data(&fast), data(&general), "{text:?}");
            scanned +=
                usize::from(fast::reply(body.as_bytes(), &fast::GET_RECORDS, None).is_some());
        }
        assert!(scanned > 200, "the fast path took only {scanned} texts");
    }

    #[test]
    fn fast_scanner_agrees_with_serde_or_steps_aside() {
        let bodies: [&[u8]; 16] = [
            br#"{"Records":[{"SequenceNumber":"12","ApproximateArrivalTimestamp":1.700000000123E9,"Data":"aGVsbG8=","PartitionKey":"k1"},{"SequenceNumber":"13","Data":"","PartitionKey":"k2","EncryptionType":"KMS"}],"NextShardIterator":"it","MillisBehindLatest":5}"#,
            b" { \"Records\" : [ { \"Data\" : \"YQ==\" , \"PartitionKey\":\"p\",\"SequenceNumber\":\"7\",\"ApproximateArrivalTimestamp\":null } ] ,\n\"NextShardIterator\":\"\" } ",
            br#"{"Records":[],"NextShardIterator":"x","MillisBehindLatest":0,"ChildShards":[]}"#,
            br#"{"Records":null}"#,
            br#"{}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"aGk\/"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"aGk="}]} x"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"aGk=","Extra":{"x":1}}],"Other":[1]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a long key \u00e9 with an escape","Data":"QUJDREVGR0hJSktMTU5PUA=="}]}"#,
            br#"{"Records":[],"Records":[]}"#,
            br#"{"Records":[{"SequenceNumber":"1","SequenceNumber":"2","PartitionKey":"a","Data":""}]}"#,
            br#"{"Records":[],"MillisBehindLatest":+5}"#,
            br#"{"Records":[],"MillisBehindLatest":05}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"","ApproximateArrivalTimestamp":.5}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"","ApproximateArrivalTimestamp":-0.5e-3}]}"#,
        ];
        let shard: Arc<str> = Arc::from("s");
        for body in bodies {
            let text = String::from_utf8_lossy(body);
            let general = decode_get_records_with_serde(body, &shard);
            assert_eq!(
                decode_get_records(body, &shard).map_err(|e| e.to_string()),
                general.map_err(|e| e.to_string()),
                "{text}"
            );
            // The same body as an event: its position field renamed.
            let event = text
                .replace(
                    "NextShardIterator\":\"it\"",
                    "ContinuationSequenceNumber\":\"77\"",
                )
                .replace("NextShardIterator", "ContinuationSequenceNumber");
            let as_event = |r: Result<(Records, EventFields)>| {
                r.map(|(records, fields)| (records.into_iter().collect::<Vec<_>>(), fields))
                    .map_err(|e| e.to_string())
            };
            assert_eq!(
                as_event(decode_subscribe_event(event.as_bytes(), &shard)),
                as_event(decode_subscribe_event_with_serde(event.as_bytes(), &shard)),
                "{event}"
            );
        }
        let scanned = |body: &[u8], shape| fast::reply(body, shape, None).is_some();
        assert!(
            scanned(bodies[0], &fast::GET_RECORDS),
            "the usual shape is scanned"
        );
        assert!(
            !scanned(bodies[5], &fast::GET_RECORDS),
            "escapes go to serde"
        );
        let event = br#"{"Records":[{"SequenceNumber":"12","Data":"aGVsbG8=","PartitionKey":"k1"}],"ContinuationSequenceNumber":"12","MillisBehindLatest":0,"ChildShards":null}"#;
        assert!(scanned(event, &fast::SUBSCRIBE_EVENT), "events are scanned");
        let (records, fields) = decode_subscribe_event(event, &shard).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(fields.continuation_sequence_number.unwrap().as_str(), "12");
    }
}
