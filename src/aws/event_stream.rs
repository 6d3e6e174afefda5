//! The AWS event-stream encoding (`application/vnd.amazon.eventstream`)
//! that `SubscribeToShard` streams its events in.
//!
//! A message is a 12-byte prelude (total length, headers length, CRC32 of
//! those 8 bytes), typed headers, a payload, and a CRC32 of everything
//! before it. Both checksums are verified: a message that fails one is an
//! error, never skipped.

use std::fmt;

/// The largest record Kinesis stores: 10 MiB on a stream whose maximum
/// record size was raised ("Handle large records" in the Kinesis Data
/// Streams developer guide; 1 MiB by default).
const LARGEST_RECORD: usize = 10 << 20;

/// The largest message accepted, near the largest real event: one largest
/// record in base64 (13.3 MiB), 1 MiB for the rest of the event (other
/// records, their keys and sequence numbers, the continuation) and the
/// event-stream headers (at most 128 KiB) and framing. About 14.5 MiB,
/// below the 16 MiB of payload the event-stream format allows: a
/// subscription's decoder never holds more than this of one event.
pub(crate) const MAX_MESSAGE: usize = LARGEST_RECORD.div_ceil(3) * 4 + (1 << 20) + (128 << 10) + 16;
const PRELUDE: usize = 12;

/// The CRC-32 (IEEE 802.3) of `data`. crc32fast uses the CPU's
/// carry-less multiply where it has one: the CRC checks every byte of an
/// event, and a table-driven loop made it a third of the decoder's time
/// (see BENCHMARKS.md).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A header value, of any of the nine types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderValue {
    /// Types 0 and 1.
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(Vec<u8>),
    /// Type 7.
    String(String),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// One decoded message, its payload borrowed from the decoder's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    pub(crate) headers: Vec<(String, HeaderValue)>,
    pub(crate) payload: &'a [u8],
}

impl Message<'_> {
    /// The value of string header `name`, if present and a string.
    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// Why the stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventStreamError(pub(crate) String);

impl fmt::Display for EventStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event stream: {}", self.0)
    }
}

fn error<T>(message: impl Into<String>) -> Result<T, EventStreamError> {
    Err(EventStreamError(message.into()))
}

/// Collects bytes as they arrive and hands out whole messages.
#[derive(Default)]
pub(crate) struct Decoder {
    buf: Vec<u8>,
    /// Where the bytes not handed out yet start: a message handed out
    /// stays where it is (its payload is lent, not copied) until the next
    /// push.
    start: usize,
}

impl Decoder {
    /// Adds bytes read from the stream.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        // Drop what was handed out; at most the start of one message moves.
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// How many bytes wait for the rest of their message.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `None` until one has fully arrived.
    pub(crate) fn next_message(&mut self) -> Result<Option<Message<'_>>, EventStreamError> {
        let Some((message, len)) = split_message(&self.buf[self.start..])? else {
            return Ok(None);
        };
        self.start += len;
        Ok(Some(message))
    }
}

/// The message at the start of `bytes`, checked, and its length; `None`
/// when `bytes` holds only part of it.
pub(crate) fn split_message(
    bytes: &[u8],
) -> Result<Option<(Message<'_>, usize)>, EventStreamError> {
    if bytes.len() < PRELUDE {
        return Ok(None);
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (total, headers_len, prelude_crc) = (word(0) as usize, word(4) as usize, word(8));
    let computed = crc32(&bytes[..8]);
    if computed != prelude_crc {
        return error(format!(
            "prelude CRC mismatch: the message says {prelude_crc:#010x}, its bytes give {computed:#010x}"
        ));
    }
    if !(PRELUDE + 4..=MAX_MESSAGE).contains(&total) {
        return error(format!(
            "a message of {total} bytes (from 16 to {MAX_MESSAGE})"
        ));
    }
    if headers_len > total - PRELUDE - 4 {
        return error(format!(
            "{headers_len} bytes of headers in a message of {total} bytes"
        ));
    }
    if bytes.len() < total {
        return Ok(None);
    }
    let message_crc = word(total - 4);
    let computed = crc32(&bytes[..total - 4]);
    if computed != message_crc {
        return error(format!(
            "message CRC mismatch: the message says {message_crc:#010x}, its bytes give {computed:#010x}"
        ));
    }
    let headers = parse_headers(&bytes[PRELUDE..PRELUDE + headers_len])?;
    let payload = &bytes[PRELUDE + headers_len..total - 4];
    Ok(Some((Message { headers, payload }, total)))
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, HeaderValue)>, EventStreamError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], EventStreamError> {
        if bytes.len() < n {
            return error(format!("the headers end inside {what}"));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(bytes: &mut &[u8], what: &str) -> Result<[u8; N], EventStreamError> {
        let head = take(bytes, N, what)?;
        Ok(head.try_into().unwrap_or([0; N]))
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = usize::from(take(&mut bytes, 1, "a header name length")?[0]);
        let name = take(&mut bytes, name_len, "a header name")?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| EventStreamError("a header name is not UTF-8".into()))?;
        let kind = take(&mut bytes, 1, "a header type")?[0];
        let value =
            match kind {
                0 => HeaderValue::Bool(true),
                1 => HeaderValue::Bool(false),
                2 => HeaderValue::Byte(i8::from_be_bytes(array(&mut bytes, &name)?)),
                3 => HeaderValue::Short(i16::from_be_bytes(array(&mut bytes, &name)?)),
                4 => HeaderValue::Int(i32::from_be_bytes(array(&mut bytes, &name)?)),
                5 => HeaderValue::Long(i64::from_be_bytes(array(&mut bytes, &name)?)),
                6 | 7 => {
                    let len = usize::from(u16::from_be_bytes(array(&mut bytes, &name)?));
                    let raw = take(&mut bytes, len, &name)?.to_vec();
                    if kind == 6 {
                        HeaderValue::Bytes(raw)
                    } else {
                        HeaderValue::String(String::from_utf8(raw).map_err(|_| {
                            EventStreamError(format!("header {name:?} is not UTF-8"))
                        })?)
                    }
                }
                8 => HeaderValue::Timestamp(i64::from_be_bytes(array(&mut bytes, &name)?)),
                9 => HeaderValue::Uuid(array(&mut bytes, &name)?),
                other => return error(format!("header {name:?} has unknown type {other}")),
            };
        headers.push((name, value));
    }
    Ok(headers)
}

/// Encodes a message (for the tests that play a server).
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, HeaderValue)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        match value {
            HeaderValue::Bool(true) => h.push(0),
            HeaderValue::Bool(false) => h.push(1),
            HeaderValue::Byte(v) => {
                h.push(2);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Short(v) => {
                h.push(3);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int(v) => {
                h.push(4);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Long(v) => {
                h.push(5);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(v) => {
                h.push(6);
                h.extend_from_slice(&(v.len() as u16).to_be_bytes());
                h.extend_from_slice(v);
            }
            HeaderValue::String(v) => {
                h.push(7);
                h.extend_from_slice(&(v.len() as u16).to_be_bytes());
                h.extend_from_slice(v.as_bytes());
            }
            HeaderValue::Timestamp(v) => {
                h.push(8);
                h.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(v) => {
                h.push(9);
                h.extend_from_slice(v);
            }
        }
    }
    let total = (PRELUDE + h.len() + payload.len() + 4) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32(&out[..8]).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out
}

/// An event message of the given type with a JSON payload.
#[cfg(test)]
pub(crate) fn event(event_type: &str, json: &str) -> Vec<u8> {
    encode(
        &[
            (":message-type", HeaderValue::String("event".into())),
            (":event-type", HeaderValue::String(event_type.into())),
            (
                ":content-type",
                HeaderValue::String("application/json".into()),
            ),
        ],
        json.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_strings() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn a_message_from_kinesis_local_decodes() {
        // The start of an empty SubscribeToShardEvent as kinesis-local sent
        // it (prelude 0x000000fb 0x0000005b, CRC 0xa67f3659), rebuilt here.
        let bytes = event(
            "SubscribeToShardEvent",
            r#"{"Records":[],"ContinuationSequenceNumber":"49680587197776944958277749254210132315132962011556610050","MillisBehindLatest":0,"ChildShards":null}"#,
        );
        assert_eq!(
            bytes[..12],
            [0, 0, 0, 0xfb, 0, 0, 0, 0x5b, 0xa6, 0x7f, 0x36, 0x59]
        );
        let mut d = Decoder::default();
        d.push(&bytes);
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.header_str(":event-type"), Some("SubscribeToShardEvent"));
        assert!(m.payload.starts_with(b"{\"Records\""));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn every_header_type_round_trips() {
        let headers = vec![
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("byte", HeaderValue::Byte(-7)),
            ("short", HeaderValue::Short(-300)),
            ("int", HeaderValue::Int(70_000)),
            ("long", HeaderValue::Long(-5_000_000_000)),
            ("bytes", HeaderValue::Bytes(vec![0, 255, 1])),
            ("string", HeaderValue::String("héllo".into())),
            ("time", HeaderValue::Timestamp(1_700_000_000_123)),
            ("uuid", HeaderValue::Uuid(*b"0123456789abcdef")),
        ];
        let bytes = encode(&headers, b"payload");
        let mut d = Decoder::default();
        d.push(&bytes);
        let m = d.next_message().unwrap().unwrap();
        let expected: Vec<(String, HeaderValue)> = headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        assert_eq!(m.headers, expected);
        assert_eq!(m.payload, b"payload");
    }

    #[test]
    fn messages_split_anywhere_are_reassembled() {
        let mut bytes = event("SubscribeToShardEvent", "{\"a\":1}");
        bytes.extend(event("SubscribeToShardEvent", "{\"b\":2}"));
        for split in 0..bytes.len() {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                d.push(part);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m.payload.to_vec());
                }
            }
            assert_eq!(
                got,
                [b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_bad_crc_is_an_error_not_a_skipped_message() {
        let good = event("SubscribeToShardEvent", "{\"Records\":[]}");
        let mut bad_payload = good.clone();
        let at = bad_payload.len() - 6;
        bad_payload[at] ^= 1;
        let mut d = Decoder::default();
        d.push(&bad_payload);
        d.push(&good);
        let e = d.next_message().unwrap_err();
        assert!(e.0.contains("message CRC mismatch"), "{e}");
        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 1;
        let mut d = Decoder::default();
        d.push(&bad_prelude);
        let e = d.next_message().unwrap_err();
        assert!(e.0.contains("prelude CRC mismatch"), "{e}");
    }

    #[test]
    fn malformed_headers_and_lengths_are_errors() {
        // A header that claims more bytes than there are.
        let mut m = encode(&[("s", HeaderValue::String("abc".into()))], b"");
        m[12 + 3] = 0; // string length high byte
        m[12 + 4] = 200; // string length low byte
        let total = m.len();
        let crc = crc32(&m[..total - 4]);
        m[total - 4..].copy_from_slice(&crc.to_be_bytes());
        let mut d = Decoder::default();
        d.push(&m);
        assert!(d.next_message().unwrap_err().0.contains("end inside"));
        // An unknown header type.
        let mut m = encode(&[("x", HeaderValue::Bool(true))], b"");
        m[12 + 2] = 10;
        let total = m.len();
        let crc = crc32(&m[..total - 4]);
        m[total - 4..].copy_from_slice(&crc.to_be_bytes());
        let mut d = Decoder::default();
        d.push(&m);
        assert!(d.next_message().unwrap_err().0.contains("unknown type 10"));
        // A total length too small, with a valid prelude CRC.
        let mut prelude = vec![0, 0, 0, 8, 0, 0, 0, 0];
        prelude.extend_from_slice(&crc32(&prelude).to_be_bytes());
        let mut d = Decoder::default();
        d.push(&prelude);
        assert!(
            d.next_message()
                .unwrap_err()
                .0
                .contains("a message of 8 bytes")
        );
    }
}
