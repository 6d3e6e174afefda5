//! Records as delivered to the message handler, and sequence numbers.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// A Kinesis sequence number: a decimal string of up to 129 digits (the API's
/// pattern is `0|([1-9]\d{0,128})`; real ones have 56 digits, more than a
/// `u128` holds).
///
/// Sequence numbers compare as integers, never as strings ("9" < "10").
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Checks that `text` is a decimal number of at most 129 digits.
    pub fn parse(text: &str) -> Option<SequenceNumber> {
        if text.is_empty() || text.len() > 129 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SequenceNumber(text.into()))
    }

    /// The number as Kinesis wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.0.trim_start_matches('0');
        let b = other.0.trim_start_matches('0');
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

/// One user record: a plain Kinesis record, or one user record taken out of
/// a KPL aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub(crate) shard_id: Arc<str>,
    pub(crate) position: ExtendedSequenceNumber,
    pub(crate) aggregated: bool,
    pub(crate) partition_key: String,
    pub(crate) explicit_hash_key: Option<String>,
    pub(crate) arrival: Option<SystemTime>,
    pub(crate) data: Vec<u8>,
}

impl Record {
    /// The shard the record was read from.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
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
        &self.partition_key
    }

    /// The explicit hash key, when the producer set one.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_deref()
    }

    /// When Kinesis accepted the record, if it said.
    pub fn approximate_arrival_timestamp(&self) -> Option<SystemTime> {
        self.arrival
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the payload without copying it.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).unwrap()
    }

    #[test]
    fn sequence_numbers_compare_as_integers() {
        assert!(seq("9") < seq("10"));
        assert!(seq("0") < seq("1"));
        assert_eq!(seq("007").cmp(&seq("7")), Ordering::Equal);
        let big = "49590338271490256608559692538361571095921575989136588898";
        assert!(seq(big) > seq("49590338271490256608559692538361571095921575989136588897"));
        assert!(seq(big) > seq("99999999999999999999"));
    }

    #[test]
    fn rejects_what_is_not_a_sequence_number() {
        for bad in ["", "12a", "-1", " 1", &"1".repeat(130)] {
            assert!(SequenceNumber::parse(bad).is_none(), "{bad:?}");
        }
        assert!(SequenceNumber::parse(&"9".repeat(129)).is_some());
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
