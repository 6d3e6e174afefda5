//! Records as delivered to the message handler, and sequence numbers.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::spares::Spares;

/// A Kinesis sequence number: a decimal string of up to 129 digits (the API's
/// pattern is `0|([1-9]\d{0,128})`; real ones have 56 digits, more than a
/// `u128` holds).
///
/// Sequence numbers compare as integers, never as strings ("9" < "10").
/// Numbers of up to 62 digits are stored inline: making one allocates nothing.
#[derive(Clone)]
pub struct SequenceNumber(Digits);

/// How many digits a sequence number keeps inline (the struct stays 64 bytes).
const INLINE_DIGITS: usize = 62;

#[derive(Clone)]
enum Digits {
    Inline {
        len: u8,
        digits: [u8; INLINE_DIGITS],
    },
    Long(Arc<str>),
}

impl SequenceNumber {
    /// Checks that `text` is a decimal number of at most 129 digits.
    pub fn parse(text: &str) -> Option<SequenceNumber> {
        SequenceNumber::from_bytes(text.as_bytes())
    }

    /// [`SequenceNumber::parse`] for text not yet checked to be UTF-8.
    pub(crate) fn from_bytes(text: &[u8]) -> Option<SequenceNumber> {
        if text.is_empty() || text.len() > 129 || !all_digits(text) {
            return None;
        }
        if text.len() <= INLINE_DIGITS {
            let mut digits = [0u8; INLINE_DIGITS];
            digits[..text.len()].copy_from_slice(text);
            let len = text.len() as u8;
            return Some(SequenceNumber(Digits::Inline { len, digits }));
        }
        let text = std::str::from_utf8(text).ok()?;
        Some(SequenceNumber(Digits::Long(text.into())))
    }

    /// The number as Kinesis wrote it.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only ASCII digits get in, so this is always valid UTF-8.
            Digits::Inline { len, digits } => {
                std::str::from_utf8(&digits[..*len as usize]).unwrap_or_default()
            }
            Digits::Long(text) => text,
        }
    }
}

/// True when every byte is an ASCII digit; looks at 8 bytes at a time.
fn all_digits(text: &[u8]) -> bool {
    const THREES: u64 = 0x3030_3030_3030_3030;
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let mut words = text.chunks_exact(8);
    // A digit has a high nibble of 3 and a low one of at most 9: adding 6
    // leaves the high nibble alone.
    let digits = words.by_ref().all(|w| {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or_default());
        word & HIGH_NIBBLES == THREES
            && word.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES == THREES
    });
    digits && words.remainder().iter().all(u8::is_ascii_digit)
}

impl SequenceNumber {
    /// The digits without leading zeros: what equality, hashing and order
    /// look at, so that "007" and "7" are one number everywhere.
    fn significant(&self) -> &str {
        self.as_str().trim_start_matches('0')
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.significant(), other.significant());
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialEq for SequenceNumber {
    fn eq(&self, other: &Self) -> bool {
        self.significant() == other.significant()
    }
}

impl Eq for SequenceNumber {}

impl std::hash::Hash for SequenceNumber {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A position in a shard at user-record granularity: the Kinesis sequence
/// number and, for records that came out of a KPL aggregate, the index of the
/// user record inside it (0 for plain records).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExtendedSequenceNumber {
    /// The sequence number of the Kinesis record.
    pub sequence_number: SequenceNumber,
    /// The user record's index inside a KPL aggregate; 0 for plain records.
    pub sub_sequence_number: u64,
}

/// As a person reads it: `sequence 4968…`, with `, sub-sequence 3` for a
/// user record after the first of a KPL aggregate.
impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sequence {}", self.sequence_number)?;
        if self.sub_sequence_number > 0 {
            write!(f, ", sub-sequence {}", self.sub_sequence_number)?;
        }
        Ok(())
    }
}

/// Where a field lies in the bytes shared by the records of one
/// GetRecords reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The span of `part`, a slice of `whole`.
    pub(crate) fn within(whole: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize) as u32;
        Span {
            start,
            end: start + part.len() as u32,
        }
    }

    /// The bytes of the span.
    pub(crate) fn of(self, bytes: &[u8]) -> &[u8] {
        bytes
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The span as text; spans of text are checked to be UTF-8 when made.
    pub(crate) fn text(self, bytes: &[u8]) -> &str {
        std::str::from_utf8(self.of(bytes)).unwrap_or_default()
    }

    /// Its length in bytes.
    pub(crate) fn len(self) -> usize {
        (self.end - self.start) as usize
    }
}

/// What the records of one GetRecords reply share: their shard id, one
/// buffer holding their decoded data, and one holding their keys (two
/// allocations instead of several per record, and no reference count per
/// record that the reading and the handling threads would both touch).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub shard_id: Arc<str>,
    pub bytes: Vec<u8>,
    /// The keys of the records, checked as UTF-8 once, when decoded; the
    /// keys of KPL user records are in `bytes` instead (inside their
    /// aggregate's data), checked again when read.
    pub text: String,
    /// Where `bytes` goes back for reuse when the records are dropped.
    pub goes_back: Option<Arc<Spares<u8>>>,
}

impl Shared {
    /// The key at `span`: in `text`, or in `bytes` for a KPL user record.
    fn key(&self, span: Span, user_record: bool) -> &str {
        if user_record {
            span.text(&self.bytes)
        } else {
            self.text
                .get(span.start as usize..span.end as usize)
                .unwrap_or_default()
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(spares) = &self.goes_back {
            spares.give(std::mem::take(&mut self.bytes));
        }
    }
}

/// One user record: a plain Kinesis record, or one user record taken out of
/// a KPL aggregate.
///
/// The records of one GetRecords reply share one buffer that holds their
/// data and keys; it is freed when the last of them (and of the
/// [`Message`](crate::Message)s made from them) is dropped.
#[derive(Clone)]
pub struct Record {
    pub(crate) shared: Arc<Shared>,
    pub(crate) position: ExtendedSequenceNumber,
    pub(crate) aggregated: bool,
    pub(crate) partition_key: Span,
    pub(crate) explicit_hash_key: Option<Span>,
    pub(crate) arrival: Option<SystemTime>,
    pub(crate) data: Span,
}

impl Record {
    /// The shard the record was read from, as the consumer names it in
    /// batches, events and checkpoints: the shard id, or in a
    /// multi-stream consumer the lease key
    /// `<account>:<stream>:<creationEpochSeconds>:<shardId>`.
    pub fn shard_id(&self) -> &str {
        &self.shared.shard_id
    }

    /// The Kinesis shard id alone, such as `shardId-000000000000`, in
    /// either layout.
    pub fn kinesis_shard_id(&self) -> &str {
        crate::stream::shard_id_of(&self.shared.shard_id)
    }

    /// The stream the record came from, in a multi-stream consumer
    /// ([`streams`](crate::ConsumerBuilder::streams)); `None` in a
    /// single-stream one.
    pub fn stream(&self) -> Option<crate::StreamIdentifier> {
        crate::StreamIdentifier::of_lease_key(&self.shared.shard_id)
    }

    /// The record's sequence number (shared by all user records of one aggregate).
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.position.sequence_number
    }

    /// The index of this user record inside its KPL aggregate; 0 for plain records.
    pub fn sub_sequence_number(&self) -> u64 {
        self.position.sub_sequence_number
    }

    /// Sequence and sub-sequence number together: what a checkpoint stores.
    pub fn position(&self) -> &ExtendedSequenceNumber {
        &self.position
    }

    /// True when this user record came out of a KPL aggregate.
    pub fn is_aggregated(&self) -> bool {
        self.aggregated
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        self.shared.key(self.partition_key, self.aggregated)
    }

    /// The explicit hash key, when the producer set one.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        Some(self.shared.key(self.explicit_hash_key?, self.aggregated))
    }

    /// When Kinesis accepted the record, if it said.
    pub fn approximate_arrival_timestamp(&self) -> Option<SystemTime> {
        self.arrival
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        self.data.of(&self.shared.bytes)
    }

    /// The payload as a value that shares the reply's buffer instead of
    /// copying it: what the default message handler returns.
    pub fn payload(&self) -> Payload {
        Payload {
            shared: self.shared.clone(),
            span: self.data,
        }
    }
}

/// A record's payload, sharing the buffer of the GetRecords reply it came
/// from (cloning it copies no data). It dereferences to `&[u8]`; use
/// `to_vec()` for an owned copy.
///
/// Keeping a payload keeps that whole buffer (the data of up to 10,000
/// records) alive: copy what you keep for long.
#[derive(Clone)]
pub struct Payload {
    shared: Arc<Shared>,
    span: Span,
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.span.of(&self.shared.bytes)
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl std::hash::Hash for Payload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl From<Payload> for Vec<u8> {
    fn from(payload: Payload) -> Vec<u8> {
        payload.to_vec()
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("shard_id", &self.shard_id())
            .field("position", &self.position)
            .field("aggregated", &self.aggregated)
            .field("partition_key", &self.partition_key())
            .field("explicit_hash_key", &self.explicit_hash_key())
            .field("arrival", &self.arrival)
            .field("data", &self.data())
            .finish()
    }
}

impl PartialEq for Record {
    fn eq(&self, other: &Record) -> bool {
        self.shard_id() == other.shard_id()
            && self.position == other.position
            && self.aggregated == other.aggregated
            && self.partition_key() == other.partition_key()
            && self.explicit_hash_key() == other.explicit_hash_key()
            && self.arrival == other.arrival
            && self.data() == other.data()
    }
}

impl Eq for Record {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_display_as_people_read_them() {
        let at = |sub| ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse("4968").unwrap(),
            sub_sequence_number: sub,
        };
        assert_eq!(at(0).to_string(), "sequence 4968");
        assert_eq!(at(3).to_string(), "sequence 4968, sub-sequence 3");
        let checkpoint = crate::lease::Checkpoint::At(at(0));
        assert_eq!(checkpoint.to_string(), "sequence 4968");
        assert_eq!(
            crate::lease::Checkpoint::TrimHorizon.to_string(),
            "the trim horizon"
        );
    }

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).unwrap()
    }

    #[test]
    fn sequence_numbers_compare_as_integers() {
        assert!(seq("9") < seq("10"));
        assert!(seq("0") < seq("1"));
        assert_eq!(seq("007").cmp(&seq("7")), Ordering::Equal);
        // Equality and hashing agree with the order.
        assert_eq!(seq("007"), seq("7"));
        let set: std::collections::HashSet<SequenceNumber> = [seq("007"), seq("7")].into();
        assert_eq!(set.len(), 1);
        assert_ne!(seq("70"), seq("7"));
        let big = "49590338271490256608559692538361571095921575989136588898";
        assert!(seq(big) > seq("49590338271490256608559692538361571095921575989136588897"));
        assert!(seq(big) > seq("99999999999999999999"));
        let long_zeros = format!("{}7", "0".repeat(70));
        assert_eq!(seq(&long_zeros).cmp(&seq("7")), Ordering::Equal);
        assert!(seq(&"1".repeat(63)) > seq(&"9".repeat(62)));
    }

    #[test]
    fn rejects_what_is_not_a_sequence_number() {
        for bad in [
            "",
            "12a",
            "-1",
            " 1",
            &"1".repeat(130),
            "1234567:1",
            "12345678/",
            "0123456789abcdef",
        ] {
            assert!(SequenceNumber::parse(bad).is_none(), "{bad:?}");
        }
        assert!(SequenceNumber::parse(&"9".repeat(129)).is_some());
        for len in [1, 56, INLINE_DIGITS, INLINE_DIGITS + 1, 129] {
            let text = "7".repeat(len);
            assert_eq!(SequenceNumber::parse(&text).unwrap().as_str(), text);
        }
    }

    #[test]
    fn positions_order_by_sequence_then_sub_sequence() {
        let a = ExtendedSequenceNumber {
            sequence_number: seq("5"),
            sub_sequence_number: 3,
        };
        let b = ExtendedSequenceNumber {
            sequence_number: seq("5"),
            sub_sequence_number: 4,
        };
        let c = ExtendedSequenceNumber {
            sequence_number: seq("10"),
            sub_sequence_number: 0,
        };
        assert!(a < b && b < c);
    }
}
