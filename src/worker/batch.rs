//! What the batch handler receives.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber, Shared, Span};

/// One user record after the message handler: its value and where it came from.
///
/// A message keeps the buffer of the GetRecords reply it came from (its
/// partition key lives there) until it is dropped.
#[derive(Clone)]
pub struct Message<T> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) position: ExtendedSequenceNumber,
    pub(crate) partition_key: Span,
    pub(crate) explicit_hash_key: Option<Span>,
    pub(crate) arrival: Option<SystemTime>,
    pub(crate) value: T,
}

impl<T> Message<T> {
    /// The message for `record` with the message handler's `value`.
    pub(crate) fn new(record: Record, value: T) -> Message<T> {
        Message {
            shared: record.shared,
            position: record.position,
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            arrival: record.arrival,
            value,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("shard_id", &self.shard_id())
            .field("position", &self.position)
            .field("partition_key", &self.partition_key())
            .field("explicit_hash_key", &self.explicit_hash_key())
            .field("arrival", &self.arrival)
            .field("value", &self.value)
            .finish()
    }
}

impl<T: PartialEq> PartialEq for Message<T> {
    fn eq(&self, other: &Message<T>) -> bool {
        self.shard_id() == other.shard_id()
            && self.position == other.position
            && self.partition_key() == other.partition_key()
            && self.explicit_hash_key() == other.explicit_hash_key()
            && self.arrival == other.arrival
            && self.value == other.value
    }
}

impl<T: Eq> Eq for Message<T> {}

impl<T> Message<T> {
    /// What the message handler returned for the record.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Takes the value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The shard the record was read from.
    pub fn shard_id(&self) -> &str {
        &self.shared.shard_id
    }

    /// The Kinesis sequence number.
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.position.sequence_number
    }

    /// The index inside a KPL aggregate; 0 for plain records.
    pub fn sub_sequence_number(&self) -> u64 {
        self.position.sub_sequence_number
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        self.partition_key.text(&self.shared.bytes)
    }

    /// The explicit hash key, when the producer set one.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        Some(self.explicit_hash_key?.text(&self.shared.bytes))
    }

    /// When Kinesis accepted the record, if it said.
    pub fn approximate_arrival_timestamp(&self) -> Option<SystemTime> {
        self.arrival
    }
}

/// The records of one shard in a batch, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardBatch<T> {
    pub(crate) shard_id: Arc<str>,
    pub(crate) messages: Vec<Message<T>>,
    pub(crate) millis_behind_latest: Option<u64>,
    pub(crate) shard_ended: bool,
    /// The lease epoch the records were read under (not public).
    pub(crate) epoch: u64,
}

impl<T> ShardBatch<T> {
    /// The shard id.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The shard's records in this batch, in sequence order.
    pub fn messages(&self) -> &[Message<T>] {
        &self.messages
    }

    /// Takes the records.
    pub fn into_messages(self) -> Vec<Message<T>> {
        self.messages
    }

    /// How far behind the tip of the shard the last read was.
    pub fn millis_behind_latest(&self) -> Option<u64> {
        self.millis_behind_latest
    }

    /// True when this batch reaches the end of a closed shard.
    pub fn shard_ended(&self) -> bool {
        self.shard_ended
    }
}

/// Everything that arrived during one batch interval, grouped by shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<T> {
    pub(crate) time: SystemTime,
    pub(crate) shards: Vec<ShardBatch<T>>,
}

impl<T> Batch<T> {
    /// The batch time: when the batch interval ended.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The shards with records (or a shard end) in this batch.
    pub fn shards(&self) -> &[ShardBatch<T>] {
        &self.shards
    }

    /// Takes the per-shard parts.
    pub fn into_shards(self) -> Vec<ShardBatch<T>> {
        self.shards
    }

    /// Every message, shard after shard.
    pub fn messages(&self) -> impl Iterator<Item = &Message<T>> {
        self.shards.iter().flat_map(|s| s.messages.iter())
    }

    /// The number of records in the batch.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.messages.len()).sum()
    }

    /// True when no record arrived during the interval.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
