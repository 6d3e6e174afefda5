//! KPL record aggregation and de-aggregation.
//!
//! The Kinesis Producer Library (KPL) packs many small *user records* into one
//! Kinesis record. Such an *aggregate* is laid out as
//!
//! ```text
//! F3 89 9A C2 | AggregatedRecord (protobuf, proto2) | MD5 digest of the protobuf bytes (16 bytes)
//! ```
//!
//! where the protobuf message is
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag {
//!   required string key   = 1;
//!   optional string value = 2;
//! }
//! ```
//!
//! [`deaggregate`] splits such a record into [`UserRecord`]s that borrow from
//! the record's bytes; [`Aggregator`] builds aggregates for producers. Both
//! use a small hand-written protobuf codec and nothing else from the crate.
//!
//! # No silent loss
//!
//! When [`deaggregate`] returns an error, the caller delivers the Kinesis
//! record *whole*, exactly as it was read, rather than dropping it. That is
//! why an aggregate that is damaged in any way (a bad digest, a truncated or
//! otherwise malformed message, an aggregate holding no user records) is an
//! error here and never an empty list.
//!
//! # Hash ranges
//!
//! Unlike the KCL, this module does no hash-range check: a user record whose
//! partition key (or explicit hash key) hashes outside the range of the shard
//! the aggregate was read from is still returned, not dropped.

use std::collections::HashMap;
use std::fmt;

use md5::{Digest, Md5};

/// The four bytes every KPL aggregate starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The size of the MD5 digest that ends every aggregate.
const DIGEST_LEN: usize = 16;

/// The Kinesis per-record limit: data blob plus partition key, in bytes (1 MiB).
pub const MAX_RECORD_BYTES: usize = 1_048_576;

/// The Kinesis limit on partition keys, in Unicode scalar values.
const MAX_PARTITION_KEY_CHARS: usize = 256;

/// How deeply (deprecated) protobuf groups may nest in skipped fields.
const MAX_GROUP_DEPTH: u32 = 32;

// Protobuf wire types.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_START_GROUP: u8 = 3;
const WIRE_END_GROUP: u8 = 4;
const WIRE_FIXED32: u8 = 5;

/// One user record inside an aggregate, borrowing from the aggregate's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserRecord<'a> {
    /// The partition key the producer gave this user record.
    pub partition_key: &'a str,
    /// The explicit hash key the producer gave this user record, if any: a
    /// decimal number below 2^128.
    pub explicit_hash_key: Option<&'a str>,
    /// The user record's payload.
    pub data: &'a [u8],
}

/// Why a record could not be de-aggregated.
///
/// Whatever the reason, the caller delivers the Kinesis record whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeaggregationError {
    /// The record does not start with the KPL magic bytes, or is too short to
    /// hold them and a digest: it is an ordinary record.
    NotAggregated,
    /// The MD5 digest at the end does not match the protobuf bytes.
    BadDigest,
    /// The protobuf message is malformed: truncated, a required field is
    /// missing, a table index is out of range, a key is not UTF-8, an explicit
    /// hash key is not a decimal number below 2^128, or there are no records.
    Malformed(&'static str),
}

impl fmt::Display for DeaggregationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeaggregationError::NotAggregated => f.write_str("not a KPL aggregated record"),
            DeaggregationError::BadDigest => {
                f.write_str("KPL aggregated record has a bad MD5 digest")
            }
            DeaggregationError::Malformed(why) => {
                write!(f, "malformed KPL aggregated record: {why}")
            }
        }
    }
}

impl std::error::Error for DeaggregationError {}

/// Returns `true` when `data` starts with the KPL magic bytes.
///
/// [`deaggregate`] may still return [`DeaggregationError::NotAggregated`] for
/// such a record when it is too short to hold a digest.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

/// Splits a Kinesis record's data into its user records.
///
/// The user records are returned in the order the producer added them. On
/// error the caller delivers the record whole (see the [module
/// documentation](self)). No hash-range check is done.
pub fn deaggregate(data: &[u8]) -> Result<Vec<UserRecord<'_>>, DeaggregationError> {
    if !is_aggregated(data) || data.len() < MAGIC.len() + DIGEST_LEN {
        return Err(DeaggregationError::NotAggregated);
    }
    let (body, digest) = data[MAGIC.len()..].split_at(data.len() - MAGIC.len() - DIGEST_LEN);
    if Md5::digest(body).as_slice() != digest {
        return Err(DeaggregationError::BadDigest);
    }
    parse_aggregate(body)
}

fn malformed(why: &'static str) -> DeaggregationError {
    DeaggregationError::Malformed(why)
}

/// A cursor over protobuf bytes. Every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn varint(&mut self) -> Result<u64, DeaggregationError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(malformed("truncated varint"));
            };
            self.pos += 1;
            // The tenth byte may only carry the 64th bit and must end the varint.
            if i == 9 && byte > 1 {
                return Err(malformed("varint longer than 64 bits"));
            }
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("varint longer than 64 bits"))
    }

    /// Reads a field key: (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8), DeaggregationError> {
        let key = self.varint()?;
        let wire = (key & 7) as u8;
        match u32::try_from(key >> 3) {
            Ok(field) if (1..(1 << 29)).contains(&field) => Ok((field, wire)),
            _ => Err(malformed("invalid field number")),
        }
    }

    /// Reads a length-delimited field's contents.
    fn bytes(&mut self) -> Result<&'a [u8], DeaggregationError> {
        let len = self.varint()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.remaining())
            .ok_or(malformed("truncated length-delimited field"))?;
        let out = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(out)
    }

    fn fixed(&mut self, len: usize) -> Result<(), DeaggregationError> {
        if len > self.remaining() {
            return Err(malformed("truncated fixed-width field"));
        }
        self.pos += len;
        Ok(())
    }

    /// Skips the value of a field whose key has just been read.
    fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Result<(), DeaggregationError> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.fixed(8),
            WIRE_LEN => self.bytes().map(drop),
            WIRE_FIXED32 => self.fixed(4),
            WIRE_START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(malformed("groups nested too deeply"));
                }
                loop {
                    let (inner_field, inner_wire) = self.key()?;
                    if inner_wire == WIRE_END_GROUP {
                        return if inner_field == field {
                            Ok(())
                        } else {
                            Err(malformed("mismatched end of group"))
                        };
                    }
                    self.skip(inner_field, inner_wire, depth + 1)?;
                }
            }
            WIRE_END_GROUP => Err(malformed("unexpected end of group")),
            _ => Err(malformed("invalid wire type")),
        }
    }
}

/// A `Record` message before its table indexes are resolved.
struct RawRecord<'a> {
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data: &'a [u8],
}

/// Parses the `AggregatedRecord` message (the bytes between magic and digest).
///
/// Fields may come in any order, so the tables are resolved only once the
/// whole message has been read. A known field number carrying an unexpected
/// wire type is skipped like an unknown field, as protobuf parsers do; for
/// singular fields the last occurrence wins.
fn parse_aggregate(body: &[u8]) -> Result<Vec<UserRecord<'_>>, DeaggregationError> {
    let mut partition_keys: Vec<&str> = Vec::new();
    let mut explicit_hash_keys: Vec<&str> = Vec::new();
    let mut raw_records: Vec<RawRecord<'_>> = Vec::new();
    let mut reader = Reader::new(body);
    while !reader.at_end() {
        match reader.key()? {
            (1, WIRE_LEN) => {
                let key = std::str::from_utf8(reader.bytes()?)
                    .map_err(|_| malformed("partition key is not UTF-8"))?;
                partition_keys.push(key);
            }
            (2, WIRE_LEN) => {
                let key = std::str::from_utf8(reader.bytes()?)
                    .map_err(|_| malformed("explicit hash key is not UTF-8"))?;
                if !is_valid_explicit_hash_key(key) {
                    return Err(malformed(
                        "explicit hash key is not a decimal number below 2^128",
                    ));
                }
                explicit_hash_keys.push(key);
            }
            (3, WIRE_LEN) => raw_records.push(parse_record(reader.bytes()?)?),
            (field, wire) => reader.skip(field, wire, 0)?,
        }
    }
    if raw_records.is_empty() {
        return Err(malformed("no records"));
    }
    raw_records
        .into_iter()
        .map(|raw| {
            let partition_key = usize::try_from(raw.partition_key_index)
                .ok()
                .and_then(|i| partition_keys.get(i))
                .ok_or(malformed("partition key index out of range"))?;
            let explicit_hash_key = match raw.explicit_hash_key_index {
                None => None,
                Some(index) => Some(
                    *usize::try_from(index)
                        .ok()
                        .and_then(|i| explicit_hash_keys.get(i))
                        .ok_or(malformed("explicit hash key index out of range"))?,
                ),
            };
            Ok(UserRecord {
                partition_key,
                explicit_hash_key,
                data: raw.data,
            })
        })
        .collect()
}

/// Parses one `Record` message.
fn parse_record(buf: &[u8]) -> Result<RawRecord<'_>, DeaggregationError> {
    let mut partition_key_index = None;
    let mut explicit_hash_key_index = None;
    let mut data = None;
    let mut reader = Reader::new(buf);
    while !reader.at_end() {
        match reader.key()? {
            (1, WIRE_VARINT) => partition_key_index = Some(reader.varint()?),
            (2, WIRE_VARINT) => explicit_hash_key_index = Some(reader.varint()?),
            (3, WIRE_LEN) => data = Some(reader.bytes()?),
            (4, WIRE_LEN) => check_tag(reader.bytes()?)?,
            (field, wire) => reader.skip(field, wire, 0)?,
        }
    }
    Ok(RawRecord {
        partition_key_index: partition_key_index
            .ok_or(malformed("record without partition_key_index"))?,
        explicit_hash_key_index,
        data: data.ok_or(malformed("record without data"))?,
    })
}

/// Checks the structure of a `Tag` message (its required key is present).
/// Tags are not exposed, so their text is not checked for UTF-8.
fn check_tag(buf: &[u8]) -> Result<(), DeaggregationError> {
    let mut has_key = false;
    let mut reader = Reader::new(buf);
    while !reader.at_end() {
        match reader.key()? {
            (1, WIRE_LEN) => {
                reader.bytes()?;
                has_key = true;
            }
            (field, wire) => reader.skip(field, wire, 0)?,
        }
    }
    if has_key {
        Ok(())
    } else {
        Err(malformed("tag without key"))
    }
}

/// Is `key` a decimal number (ASCII digits only) below 2^128?
fn is_valid_explicit_hash_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) && key.parse::<u128>().is_ok()
}

/// Why a user record could not be added to an [`Aggregator`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AggregationError {
    /// The record alone, in an aggregate of its own, would exceed the limit.
    TooLarge {
        /// The bytes it would take: aggregate data plus partition key.
        size: usize,
        /// The aggregator's limit.
        max: usize,
    },
    /// The partition key is empty or longer than 256 characters, which
    /// Kinesis rejects.
    InvalidPartitionKey,
    /// The explicit hash key is not a decimal number below 2^128.
    InvalidExplicitHashKey,
}

impl fmt::Display for AggregationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregationError::TooLarge { size, max } => write!(
                f,
                "user record needs {size} bytes in an aggregate, more than the limit of {max}"
            ),
            AggregationError::InvalidPartitionKey => {
                f.write_str("partition key must be 1 to 256 characters long")
            }
            AggregationError::InvalidExplicitHashKey => {
                f.write_str("explicit hash key must be a decimal number below 2^128")
            }
        }
    }
}

impl std::error::Error for AggregationError {}

/// A finished aggregate ready for PutRecord(s).
///
/// Put `data` with `partition_key` (and `explicit_hash_key` when present):
/// these are the first user record's keys, as the KPL does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatedRecord {
    /// The partition key to put the aggregate with.
    pub partition_key: String,
    /// The explicit hash key to put the aggregate with, if any.
    pub explicit_hash_key: Option<String>,
    /// The aggregate: magic, protobuf message, MD5 digest.
    pub data: Vec<u8>,
    /// How many user records the aggregate holds.
    pub user_records: usize,
}

/// Hands each user record of `record`, a Kinesis record holding a KPL
/// aggregate, to `deliver` (sharing its buffer; sub-sequence numbers 0,
/// 1, …), and returns how many; delivers nothing when it is not a valid
/// aggregate. The consumer's readers and [`testing`](crate::testing)
/// de-aggregate through here.
pub(crate) fn user_records_of(
    record: &crate::Record,
    mut deliver: impl FnMut(crate::Record),
) -> Result<usize, DeaggregationError> {
    use crate::record::{ExtendedSequenceNumber, Span};
    let users = deaggregate(record.data())?;
    let span = |part: &[u8]| Span::within(&record.shared.bytes, part);
    for (i, u) in users.iter().enumerate() {
        deliver(crate::Record {
            shared: record.shared.clone(),
            position: ExtendedSequenceNumber {
                sequence_number: record.position.sequence_number.clone(),
                sub_sequence_number: i as u64,
            },
            aggregated: true,
            partition_key: span(u.partition_key.as_bytes()),
            explicit_hash_key: u.explicit_hash_key.map(|k| span(k.as_bytes())),
            arrival: record.arrival,
            data: span(u.data),
        });
    }
    Ok(users.len())
}

/// Packs user records into KPL-format aggregates of at most `max_bytes`.
///
/// The limit (default and cap: [`MAX_RECORD_BYTES`], 1 MiB, the Kinesis
/// record limit) counts what Kinesis counts: the aggregate's data plus the
/// partition key it is put with, so `data.len() + partition_key.len() <=
/// max_bytes` for every [`AggregatedRecord`]. The encoded size is tracked
/// exactly as records are added, so aggregates are filled as far as possible.
///
/// An aggregate is put with its first user record's keys, so all of its user
/// records land on that record's shard. Consumers of this crate deliver every
/// user record regardless, but the KCL drops user records whose key hashes
/// outside the shard they were read from: if KCL applications read the
/// stream, aggregate only records that map to the same shard (for example,
/// use one `Aggregator` per shard, or per partition key).
#[derive(Debug, Clone)]
pub struct Aggregator {
    max_bytes: usize,
    partition_key_indexes: HashMap<String, u64>,
    explicit_hash_key_indexes: HashMap<String, u64>,
    /// Encoded `partition_key_table` entries (field 1).
    partition_key_table: Vec<u8>,
    /// Encoded `explicit_hash_key_table` entries (field 2).
    explicit_hash_key_table: Vec<u8>,
    /// Encoded `records` entries (field 3).
    records: Vec<u8>,
    user_records: usize,
    first_partition_key: String,
    first_explicit_hash_key: Option<String>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new()
    }
}

/// Bytes an aggregate takes besides its protobuf message.
const FRAME_LEN: usize = MAGIC.len() + DIGEST_LEN;

fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The encoded size of a length-delimited field (one-byte key) of `len` bytes.
fn len_field_size(len: usize) -> usize {
    1usize
        .saturating_add(varint_len(len as u64))
        .saturating_add(len)
}

/// Where a key would go in a table: its index, and whether it is new there.
fn table_slot(indexes: &HashMap<String, u64>, key: &str) -> (u64, bool) {
    match indexes.get(key) {
        Some(&index) => (index, false),
        None => (indexes.len() as u64, true),
    }
}

/// The bytes adding one user record adds to the protobuf message.
fn record_cost(
    partition_key: (&str, u64, bool),
    explicit_hash_key: Option<(&str, u64, bool)>,
    data_len: usize,
) -> usize {
    let mut cost = 0usize;
    let mut inner = 1 + varint_len(partition_key.1);
    if partition_key.2 {
        cost = cost.saturating_add(len_field_size(partition_key.0.len()));
    }
    if let Some((key, index, new)) = explicit_hash_key {
        if new {
            cost = cost.saturating_add(len_field_size(key.len()));
        }
        inner += 1 + varint_len(index);
    }
    let inner = inner.saturating_add(len_field_size(data_len));
    cost.saturating_add(len_field_size(inner))
}

impl Aggregator {
    /// An aggregator with the 1 MiB Kinesis record limit.
    pub fn new() -> Aggregator {
        Aggregator::with_max_bytes(MAX_RECORD_BYTES)
    }

    /// An aggregator whose aggregates (data plus partition key) take at most
    /// `max` bytes; values above 1 MiB are lowered to 1 MiB.
    pub fn with_max_bytes(max: usize) -> Aggregator {
        Aggregator {
            max_bytes: max.min(MAX_RECORD_BYTES),
            partition_key_indexes: HashMap::new(),
            explicit_hash_key_indexes: HashMap::new(),
            partition_key_table: Vec::new(),
            explicit_hash_key_table: Vec::new(),
            records: Vec::new(),
            user_records: 0,
            first_partition_key: String::new(),
            first_explicit_hash_key: None,
        }
    }

    /// The limit on data plus partition key of each aggregate.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Adds a record; if it would not fit, first returns the finished
    /// aggregate so far (the record then starts the next one). Errors if the
    /// single record alone cannot fit, or a key is invalid; the pending
    /// aggregate is then left as it was.
    pub fn add(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) -> Result<Option<AggregatedRecord>, AggregationError> {
        let key_chars = partition_key.chars().count();
        if key_chars == 0 || key_chars > MAX_PARTITION_KEY_CHARS {
            return Err(AggregationError::InvalidPartitionKey);
        }
        if explicit_hash_key.is_some_and(|key| !is_valid_explicit_hash_key(key)) {
            return Err(AggregationError::InvalidExplicitHashKey);
        }

        let alone = FRAME_LEN
            .saturating_add(partition_key.len())
            .saturating_add(record_cost(
                (partition_key, 0, true),
                explicit_hash_key.map(|key| (key, 0, true)),
                data.len(),
            ));
        if alone > self.max_bytes {
            return Err(AggregationError::TooLarge {
                size: alone,
                max: self.max_bytes,
            });
        }

        let mut finished = None;
        if self.user_records > 0 {
            let (pk_index, pk_new) = table_slot(&self.partition_key_indexes, partition_key);
            let ehk = explicit_hash_key.map(|key| {
                let (index, new) = table_slot(&self.explicit_hash_key_indexes, key);
                (key, index, new)
            });
            let cost = record_cost((partition_key, pk_index, pk_new), ehk, data.len());
            if self.size().saturating_add(cost) > self.max_bytes {
                finished = self.flush();
            }
        }
        self.push(partition_key, explicit_hash_key, data);
        Ok(finished)
    }

    /// Returns what is pending, if anything, and starts a new aggregate.
    pub fn flush(&mut self) -> Option<AggregatedRecord> {
        if self.user_records == 0 {
            return None;
        }
        let proto_len = self.partition_key_table.len()
            + self.explicit_hash_key_table.len()
            + self.records.len();
        let mut data = Vec::with_capacity(FRAME_LEN + proto_len);
        data.extend_from_slice(&MAGIC);
        data.extend_from_slice(&self.partition_key_table);
        data.extend_from_slice(&self.explicit_hash_key_table);
        data.extend_from_slice(&self.records);
        let digest = Md5::digest(&data[MAGIC.len()..]);
        data.extend_from_slice(&digest);
        debug_assert_eq!(data.len() + self.first_partition_key.len(), self.size());

        let finished = AggregatedRecord {
            partition_key: std::mem::take(&mut self.first_partition_key),
            explicit_hash_key: self.first_explicit_hash_key.take(),
            data,
            user_records: self.user_records,
        };
        self.partition_key_indexes.clear();
        self.explicit_hash_key_indexes.clear();
        self.partition_key_table.clear();
        self.explicit_hash_key_table.clear();
        self.records.clear();
        self.user_records = 0;
        Some(finished)
    }

    /// The number of user records pending.
    pub fn len(&self) -> usize {
        self.user_records
    }

    /// Whether no user records are pending.
    pub fn is_empty(&self) -> bool {
        self.user_records == 0
    }

    /// What the pending aggregate counts against the limit: its data plus
    /// its partition key. Only meaningful when records are pending.
    fn size(&self) -> usize {
        FRAME_LEN
            + self.partition_key_table.len()
            + self.explicit_hash_key_table.len()
            + self.records.len()
            + self.first_partition_key.len()
    }

    /// Appends a record that is known to fit.
    fn push(&mut self, partition_key: &str, explicit_hash_key: Option<&str>, data: &[u8]) {
        let (pk_index, pk_new) = table_slot(&self.partition_key_indexes, partition_key);
        if pk_new {
            self.partition_key_indexes
                .insert(partition_key.to_owned(), pk_index);
            self.partition_key_table.push(0x0A); // field 1, length-delimited
            put_varint(&mut self.partition_key_table, partition_key.len() as u64);
            self.partition_key_table
                .extend_from_slice(partition_key.as_bytes());
        }
        let ehk_index = explicit_hash_key.map(|key| {
            let (index, new) = table_slot(&self.explicit_hash_key_indexes, key);
            if new {
                self.explicit_hash_key_indexes.insert(key.to_owned(), index);
                self.explicit_hash_key_table.push(0x12); // field 2, length-delimited
                put_varint(&mut self.explicit_hash_key_table, key.len() as u64);
                self.explicit_hash_key_table
                    .extend_from_slice(key.as_bytes());
            }
            index
        });

        let mut inner_len = 1 + varint_len(pk_index) + len_field_size(data.len());
        if let Some(index) = ehk_index {
            inner_len += 1 + varint_len(index);
        }
        self.records.push(0x1A); // field 3, length-delimited
        put_varint(&mut self.records, inner_len as u64);
        self.records.push(0x08); // Record.partition_key_index, varint
        put_varint(&mut self.records, pk_index);
        if let Some(index) = ehk_index {
            self.records.push(0x10); // Record.explicit_hash_key_index, varint
            put_varint(&mut self.records, index);
        }
        self.records.push(0x1A); // Record.data, length-delimited
        put_varint(&mut self.records, data.len() as u64);
        self.records.extend_from_slice(data);

        if self.user_records == 0 {
            self.first_partition_key = partition_key.to_owned();
            self.first_explicit_hash_key = explicit_hash_key.map(str::to_owned);
        }
        self.user_records += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An owned user record, for comparisons.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        pk: String,
        ehk: Option<String>,
        data: Vec<u8>,
    }

    impl Owned {
        fn new(pk: &str, ehk: Option<&str>, data: &[u8]) -> Owned {
            Owned {
                pk: pk.to_owned(),
                ehk: ehk.map(str::to_owned),
                data: data.to_vec(),
            }
        }
    }

    fn owned(records: &[UserRecord<'_>]) -> Vec<Owned> {
        records
            .iter()
            .map(|r| Owned::new(r.partition_key, r.explicit_hash_key, r.data))
            .collect()
    }

    /// Aggregates `input` with the given limit, checks every aggregate against
    /// the limit, and returns the aggregates.
    fn aggregate_all(input: &[Owned], max: usize) -> Vec<AggregatedRecord> {
        let mut agg = Aggregator::with_max_bytes(max);
        let mut out = Vec::new();
        for r in input {
            if let Some(done) = agg.add(&r.pk, r.ehk.as_deref(), &r.data).unwrap() {
                out.push(done);
            }
        }
        out.extend(agg.flush());
        assert!(agg.is_empty());
        assert_eq!(agg.flush(), None);
        for a in &out {
            assert!(
                a.data.len() + a.partition_key.len() <= max,
                "aggregate over limit"
            );
            assert!(a.user_records > 0);
        }
        out
    }

    /// Aggregates then de-aggregates, checking order, keys and data survive.
    fn round_trip(input: &[Owned], max: usize) -> Vec<AggregatedRecord> {
        let aggregates = aggregate_all(input, max);
        let mut back = Vec::new();
        for a in &aggregates {
            let records = deaggregate(&a.data).unwrap();
            assert_eq!(records.len(), a.user_records);
            assert_eq!(records[0].partition_key, a.partition_key);
            assert_eq!(records[0].explicit_hash_key, a.explicit_hash_key.as_deref());
            back.extend(owned(&records));
        }
        assert_eq!(back, input);
        aggregates
    }

    /// A small deterministic pseudo-random generator (64-bit LCG).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Frames a protobuf body as an aggregate: magic, body, digest.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(body);
        out.extend_from_slice(&Md5::digest(body));
        out
    }

    /// Encodes a length-delimited field (one-byte key).
    fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(field << 3) | WIRE_LEN];
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        out
    }

    /// Encodes a varint field (one-byte key).
    fn vi(field: u8, value: u64) -> Vec<u8> {
        let mut out = vec![field << 3];
        put_varint(&mut out, value);
        out
    }

    fn record(fields: &[Vec<u8>]) -> Vec<u8> {
        ld(3, &fields.concat())
    }

    #[test]
    fn varint_helpers_agree() {
        for value in [
            0,
            1,
            127,
            128,
            16383,
            16384,
            u64::from(u32::MAX),
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
            let mut reader = Reader::new(&buf);
            assert_eq!(reader.varint().unwrap(), value);
            assert!(reader.at_end());
        }
    }

    #[test]
    fn varint_overflow_and_truncation_rejected() {
        let eleven = [0xFF; 11];
        assert!(Reader::new(&eleven).varint().is_err());
        let mut ten = [0xFF; 10];
        ten[9] = 0x02; // bit 64 set
        assert!(Reader::new(&ten).varint().is_err());
        ten[9] = 0x01;
        assert_eq!(Reader::new(&ten).varint().unwrap(), u64::MAX);
        assert!(Reader::new(&[0x80, 0x80]).varint().is_err());
    }

    #[test]
    fn round_trip_empty_data() {
        round_trip(&[Owned::new("k", None, b"")], MAX_RECORD_BYTES);
        round_trip(
            &[
                Owned::new("k", None, b""),
                Owned::new("k", Some("0"), b""),
                Owned::new("other", None, b""),
            ],
            MAX_RECORD_BYTES,
        );
    }

    #[test]
    fn round_trip_many_small_records() {
        let mut rng = Lcg(1);
        let input: Vec<Owned> = (0..5000)
            .map(|i| {
                let len = rng.below(40) as usize;
                Owned::new(&format!("key-{}", i % 37), None, &rng.bytes(len))
            })
            .collect();
        let aggregates = round_trip(&input, MAX_RECORD_BYTES);
        assert_eq!(aggregates.len(), 1);
        // Many aggregates when the limit is small.
        let aggregates = round_trip(&input, 2000);
        assert!(aggregates.len() > 50);
    }

    #[test]
    fn round_trip_shared_and_unique_keys() {
        let shared: Vec<Owned> = (0..100)
            .map(|i| Owned::new("shared", Some("42"), format!("r{i}").as_bytes()))
            .collect();
        let aggregates = round_trip(&shared, MAX_RECORD_BYTES);
        // One table entry each: the key bytes appear once.
        let data = &aggregates[0].data;
        assert_eq!(data.windows(6).filter(|w| w == b"shared").count(), 1);

        let unique: Vec<Owned> = (0..300)
            .map(|i| {
                let ehk = (i % 3 == 0).then(|| format!("{}", u128::MAX - i as u128));
                Owned::new(&format!("ключ-{i}"), ehk.as_deref(), &[i as u8; 7])
            })
            .collect();
        round_trip(&unique, MAX_RECORD_BYTES);
    }

    #[test]
    fn round_trip_explicit_hash_keys() {
        let max = u128::MAX.to_string();
        let input = vec![
            Owned::new("a", Some("0"), b"zero"),
            Owned::new("b", Some(&max), b"max"),
            Owned::new("c", None, b"none"),
            Owned::new("d", Some("000123"), b"leading zeros"),
            Owned::new("a", Some(&max), b"shared ehk"),
        ];
        let aggregates = round_trip(&input, MAX_RECORD_BYTES);
        assert_eq!(aggregates[0].partition_key, "a");
        assert_eq!(aggregates[0].explicit_hash_key.as_deref(), Some("0"));
    }

    #[test]
    fn round_trip_near_one_mib() {
        let mut rng = Lcg(7);
        let input = vec![
            Owned::new("big-1", None, &rng.bytes(MAX_RECORD_BYTES - 100)),
            Owned::new("big-2", Some("12345"), &rng.bytes(600_000)),
            Owned::new("big-3", None, &rng.bytes(449_000)),
            Owned::new("small", None, b"x"),
        ];
        let aggregates = round_trip(&input, MAX_RECORD_BYTES);
        assert_eq!(
            aggregates
                .iter()
                .map(|a| a.user_records)
                .collect::<Vec<_>>(),
            [1, 1, 2]
        );
    }

    /// The size an aggregate of one record (one-byte key, no explicit hash
    /// key, `data_len` bytes) takes, worked out by hand from the format.
    fn single_record_size(data_len: usize) -> usize {
        let table = 1 + 1 + 1; // key 0x0A, length 1, "k"
        let inner = 2 + 1 + varint_len(data_len as u64) + data_len; // 08 00, 1A len data
        let record = 1 + varint_len(inner as u64) + inner;
        4 + table + record + 16 + 1 // magic, message, digest, outer partition key
    }

    #[test]
    fn limit_is_exact_for_a_single_record() {
        for max in [30, 100, 200, 16_400, 100_000, MAX_RECORD_BYTES] {
            // The largest data length that fits.
            let fits = (0..max).rev().find(|&d| single_record_size(d) <= max);
            let Some(fits) = fits else { continue };
            let mut agg = Aggregator::with_max_bytes(max);
            assert_eq!(
                agg.add("k", None, &vec![0; fits + 1]),
                Err(AggregationError::TooLarge {
                    size: single_record_size(fits + 1),
                    max
                })
            );
            assert!(agg.is_empty());
            assert_eq!(agg.add("k", None, &vec![0; fits]), Ok(None));
            let done = agg.flush().unwrap();
            assert_eq!(
                done.data.len() + done.partition_key.len(),
                single_record_size(fits)
            );
            assert!(single_record_size(fits) <= max);
        }
        // At the 1 MiB default, a 1 MiB record cannot fit whole.
        let mut agg = Aggregator::new();
        assert!(matches!(
            agg.add("k", None, &vec![0; MAX_RECORD_BYTES]),
            Err(AggregationError::TooLarge { .. })
        ));
    }

    #[test]
    fn exact_fit_is_accepted() {
        // Find a data length for which the size lands exactly on the limit.
        let max = 1000;
        let fits = (0..max).find(|&d| single_record_size(d) == max).unwrap();
        let mut agg = Aggregator::with_max_bytes(max);
        assert_eq!(agg.add("k", None, &vec![1; fits]), Ok(None));
        let done = agg.flush().unwrap();
        assert_eq!(done.data.len() + done.partition_key.len(), max);

        // A second record exactly filling the rest is accepted too.
        let mut agg = Aggregator::with_max_bytes(100);
        agg.add("k", None, b"0123456789").unwrap();
        let used = agg.size();
        // Same key: cost is 1 (key) + 1 (len) + 2 (08 00) + 1 + 1 + data.
        let data_len = 100 - used - 6;
        assert_eq!(agg.add("k", None, &vec![2; data_len]), Ok(None));
        assert_eq!(agg.size(), 100);
        assert!(agg.add("k", None, b"").unwrap().is_some());
        assert_eq!(agg.len(), 1);
    }

    #[test]
    fn aggregates_are_never_over_and_never_closed_early() {
        let mut rng = Lcg(99);
        let max = 5000;
        let input: Vec<Owned> = (0..3000)
            .map(|_| {
                let len = match rng.below(10) {
                    0 => rng.below(4000),
                    _ => rng.below(300),
                } as usize;
                let pk = format!("pk{}", rng.below(20));
                let ehk = (rng.below(3) == 0).then(|| rng.next().to_string());
                Owned::new(&pk, ehk.as_deref(), &rng.bytes(len))
            })
            .collect();
        let aggregates = round_trip(&input, max);
        // Each aggregate but the last was closed only because the next record
        // did not fit: adding it (with no limit) goes over `max`.
        let mut next = 0;
        for a in &aggregates {
            next += a.user_records;
            let Some(following) = input.get(next) else {
                continue;
            };
            let mut unlimited = Aggregator::new();
            for r in deaggregate(&a.data).unwrap() {
                unlimited
                    .add(r.partition_key, r.explicit_hash_key, r.data)
                    .unwrap();
            }
            unlimited
                .add(&following.pk, following.ehk.as_deref(), &following.data)
                .unwrap();
            let grown = unlimited.flush().unwrap();
            assert_eq!(&grown.data[..4], &MAGIC);
            assert!(grown.data.len() + grown.partition_key.len() > max);
        }
    }

    #[test]
    fn too_large_leaves_pending_aggregate_alone() {
        let mut agg = Aggregator::with_max_bytes(100);
        agg.add("a", None, b"first").unwrap();
        assert!(matches!(
            agg.add("b", None, &[0; 100]),
            Err(AggregationError::TooLarge { .. })
        ));
        assert_eq!(agg.len(), 1);
        let done = agg.flush().unwrap();
        assert_eq!(
            owned(&deaggregate(&done.data).unwrap()),
            [Owned::new("a", None, b"first")]
        );
    }

    #[test]
    fn limit_counts_the_outer_partition_key() {
        let long_key = "p".repeat(256);
        let mut agg = Aggregator::with_max_bytes(1000);
        agg.add(&long_key, None, b"").unwrap();
        let done = agg.flush().unwrap();
        let size = done.data.len() + 256;
        let mut agg = Aggregator::with_max_bytes(size - 1);
        assert!(matches!(
            agg.add(&long_key, None, b""),
            Err(AggregationError::TooLarge { .. })
        ));
        let mut agg = Aggregator::with_max_bytes(size);
        assert!(agg.add(&long_key, None, b"").is_ok());
    }

    #[test]
    fn max_bytes_is_capped() {
        assert_eq!(
            Aggregator::with_max_bytes(usize::MAX).max_bytes(),
            MAX_RECORD_BYTES
        );
        assert_eq!(Aggregator::new().max_bytes(), MAX_RECORD_BYTES);
        assert_eq!(Aggregator::default().max_bytes(), MAX_RECORD_BYTES);
        assert_eq!(Aggregator::with_max_bytes(500).max_bytes(), 500);
    }

    #[test]
    fn invalid_keys_rejected_by_aggregator() {
        let mut agg = Aggregator::new();
        assert_eq!(
            agg.add("", None, b"x"),
            Err(AggregationError::InvalidPartitionKey)
        );
        let too_long = "é".repeat(257);
        assert_eq!(
            agg.add(&too_long, None, b"x"),
            Err(AggregationError::InvalidPartitionKey)
        );
        assert!(agg.add(&"é".repeat(256), None, b"x").is_ok());
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            " 1",
            "abc",
            "340282366920938463463374607431768211456",
        ] {
            assert_eq!(
                agg.add("k", Some(bad), b"x"),
                Err(AggregationError::InvalidExplicitHashKey),
                "{bad:?}"
            );
        }
        assert_eq!(agg.len(), 1);
    }

    #[test]
    fn not_aggregated() {
        assert_eq!(deaggregate(b""), Err(DeaggregationError::NotAggregated));
        assert_eq!(
            deaggregate(b"plain record data"),
            Err(DeaggregationError::NotAggregated)
        );
        assert!(!is_aggregated(b"plain record data"));
        // Magic but too short for a digest.
        let short = [&MAGIC[..], &[0; 15]].concat();
        assert!(is_aggregated(&short));
        assert_eq!(deaggregate(&short), Err(DeaggregationError::NotAggregated));
        // A valid aggregate with its first byte changed.
        let mut agg = Aggregator::new();
        agg.add("k", None, b"data").unwrap();
        let mut data = agg.flush().unwrap().data;
        data[0] ^= 1;
        assert_eq!(deaggregate(&data), Err(DeaggregationError::NotAggregated));
    }

    #[test]
    fn bad_digest() {
        let mut agg = Aggregator::new();
        agg.add("k", None, b"data").unwrap();
        let good = agg.flush().unwrap().data;
        for i in 4..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                deaggregate(&bad),
                Err(DeaggregationError::BadDigest),
                "byte {i}"
            );
        }
    }

    #[test]
    fn truncated() {
        let body = [ld(1, b"key"), record(&[vi(1, 0), ld(3, b"hello")])].concat();
        assert!(deaggregate(&frame(&body)).is_ok());
        for cut in 1..body.len() {
            // Cutting inside the table entry or record leaves a truncated field;
            // cutting right after the table leaves no records.
            let framed = frame(&body[..cut]);
            let result = deaggregate(&framed);
            assert!(
                matches!(result, Err(DeaggregationError::Malformed(_))),
                "cut {cut}: {result:?}"
            );
        }
        // A length running past the end of the message.
        let body = [ld(1, b"key"), vec![0x1A, 0x7F, 0x08, 0x00]].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "truncated length-delimited field"
            ))
        );
        // A huge length does not allocate or overflow.
        let body = [ld(1, b"key"), vec![0x1A], vec![0xFF; 9], vec![0x01]].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "truncated length-delimited field"
            ))
        );
    }

    #[test]
    fn missing_required_fields() {
        let body = [ld(1, b"key"), record(&[ld(3, b"hello")])].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "record without partition_key_index"
            ))
        );
        let body = [ld(1, b"key"), record(&[vi(1, 0)])].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed("record without data"))
        );
        let body = [
            ld(1, b"key"),
            record(&[vi(1, 0), ld(3, b"x"), ld(4, &ld(2, b"value only"))]),
        ]
        .concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed("tag without key"))
        );
    }

    #[test]
    fn index_out_of_range() {
        let body = [ld(1, b"key"), record(&[vi(1, 1), ld(3, b"x")])].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "partition key index out of range"
            ))
        );
        let body = [ld(1, b"key"), record(&[vi(1, u64::MAX), ld(3, b"x")])].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "partition key index out of range"
            ))
        );
        let body = [
            ld(1, b"key"),
            ld(2, b"7"),
            record(&[vi(1, 0), vi(2, 1), ld(3, b"x")]),
        ]
        .concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "explicit hash key index out of range"
            ))
        );
        // An explicit hash key index with no table at all.
        let body = [ld(1, b"key"), record(&[vi(1, 0), vi(2, 0), ld(3, b"x")])].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "explicit hash key index out of range"
            ))
        );
    }

    #[test]
    fn non_utf8_keys() {
        let body = [ld(1, b"ke\xFFy"), record(&[vi(1, 0), ld(3, b"x")])].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed("partition key is not UTF-8"))
        );
        let body = [
            ld(1, b"key"),
            ld(2, b"1\xC3"),
            record(&[vi(1, 0), ld(3, b"x")]),
        ]
        .concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed(
                "explicit hash key is not UTF-8"
            ))
        );
    }

    #[test]
    fn bad_explicit_hash_keys() {
        let too_big = "340282366920938463463374607431768211456"; // 2^128
        for bad in [
            &b""[..],
            b"-5",
            b"+5",
            b"12a",
            b"1e9",
            b" 7",
            too_big.as_bytes(),
        ] {
            let body = [
                ld(1, b"key"),
                ld(2, bad),
                record(&[vi(1, 0), vi(2, 0), ld(3, b"x")]),
            ]
            .concat();
            assert_eq!(
                deaggregate(&frame(&body)),
                Err(DeaggregationError::Malformed(
                    "explicit hash key is not a decimal number below 2^128"
                )),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_records() {
        assert_eq!(
            deaggregate(&frame(&[])),
            Err(DeaggregationError::Malformed("no records"))
        );
        let body = [ld(1, b"key"), ld(2, b"5")].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed("no records"))
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let group = [
            vec![(9 << 3) | WIRE_START_GROUP],
            vi(1, 5),
            ld(2, b"in group"),
            vec![(3 << 3) | WIRE_START_GROUP, (3 << 3) | WIRE_END_GROUP],
            vec![(9 << 3) | WIRE_END_GROUP],
        ]
        .concat();
        let fixed64 = [vec![(10 << 3) | WIRE_FIXED64], vec![0xAB; 8]].concat();
        let fixed32 = [vec![(11 << 3) | WIRE_FIXED32], vec![0xCD; 4]].concat();
        // A two-byte key (field 100).
        let big_field = [vec![0xA0, 0x06], vec![0x96, 0x01]].concat();
        let body = [
            vi(7, 300),
            ld(1, b"key"),
            fixed64.clone(),
            ld(8, b"unknown bytes"),
            group.clone(),
            record(&[
                fixed32.clone(),
                vi(1, 0),
                vi(5, 1),
                ld(3, b"data"),
                ld(4, &[ld(1, b"tag"), ld(2, b"value"), vi(3, 1)].concat()),
                group.clone(),
                fixed64.clone(),
                big_field.clone(),
                // Known field number, wrong wire type: skipped like an unknown field.
                ld(2, b"not a varint"),
            ]),
            fixed32,
            big_field,
            // Field 1 as a varint is not a table entry.
            vi(1, 9),
        ]
        .concat();
        assert_eq!(
            owned(&deaggregate(&frame(&body)).unwrap()),
            [Owned::new("key", None, b"data")]
        );
    }

    #[test]
    fn fields_in_any_order_and_last_value_wins() {
        // Records before tables; a repeated singular field keeps its last value.
        let body = [
            record(&[vi(1, 0), ld(3, b"first"), vi(1, 1), vi(2, 0)]),
            ld(1, b"k0"),
            ld(1, b"k1"),
            ld(2, b"99"),
            record(&[ld(3, b"ignored"), vi(1, 0), ld(3, b"second")]),
        ]
        .concat();
        assert_eq!(
            owned(&deaggregate(&frame(&body)).unwrap()),
            [
                Owned::new("k1", Some("99"), b"first"),
                Owned::new("k0", None, b"second")
            ]
        );
    }

    #[test]
    fn malformed_wire_structure() {
        let ok_part = [ld(1, b"key"), record(&[vi(1, 0), ld(3, b"x")])].concat();
        let cases: [(&[u8], &str); 6] = [
            (&[0x00, 0x00], "invalid field number"),
            (&[(1 << 3) | 6], "invalid wire type"),
            (&[(1 << 3) | 7], "invalid wire type"),
            (&[(9 << 3) | WIRE_END_GROUP], "unexpected end of group"),
            (
                &[(9 << 3) | WIRE_START_GROUP, (8 << 3) | WIRE_END_GROUP],
                "mismatched end of group",
            ),
            (&[(9 << 3) | WIRE_START_GROUP], "truncated varint"),
        ];
        for (tail, why) in cases {
            let body = [&ok_part[..], tail].concat();
            assert_eq!(
                deaggregate(&frame(&body)),
                Err(DeaggregationError::Malformed(why)),
                "{tail:?}"
            );
        }
        // Deeply nested groups are refused, not recursed into without bound.
        let mut deep = vec![(9 << 3) | WIRE_START_GROUP; 1000];
        deep.extend(vec![(9 << 3) | WIRE_END_GROUP; 1000]);
        let body = [&ok_part[..], &deep].concat();
        assert_eq!(
            deaggregate(&frame(&body)),
            Err(DeaggregationError::Malformed("groups nested too deeply"))
        );
        // Truncated fixed-width fields.
        for tail in [
            &[(9 << 3) | WIRE_FIXED64, 0, 0][..],
            &[(9 << 3) | WIRE_FIXED32, 0],
        ] {
            let body = [&ok_part[..], tail].concat();
            assert_eq!(
                deaggregate(&frame(&body)),
                Err(DeaggregationError::Malformed("truncated fixed-width field"))
            );
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            DeaggregationError::Malformed("no records").to_string(),
            "malformed KPL aggregated record: no records"
        );
        assert!(
            AggregationError::TooLarge { size: 2, max: 1 }
                .to_string()
                .contains("limit of 1")
        );
    }
}
