//! What the batch handler receives.

use std::sync::Arc;
use std::time::SystemTime;

use crate::lease::Checkpoint;
use crate::record::Record;
use crate::spares::Spares;

/// One user record after the message handler: the value it returned, and
/// the record it came from (shard, sequence number, key, arrival time).
///
/// A message keeps the buffer of the GetRecords reply its record came from
/// until it is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<T> {
    pub(crate) record: Record,
    pub(crate) value: T,
}

impl<T> Message<T> {
    /// What the message handler returned for the record.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Takes the value.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The record the value was made from: where it came from, and its data.
    pub fn record(&self) -> &Record {
        &self.record
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
    /// Where `messages` goes back for reuse when the batch is dropped.
    pub(crate) goes_back: GoesBack<T>,
}

impl<T> Drop for ShardBatch<T> {
    fn drop(&mut self) {
        if let Some(spares) = &self.goes_back.0 {
            spares.give(std::mem::take(&mut self.messages));
        }
    }
}

/// Spare buffers of one consumer (see [`Spares`]): the record buffers
/// of replies, and the message lists of replies (the readers') and of
/// batches (the ticker's), the two kept apart so that a reader never takes
/// a batch's large list nor the ticker a reply's.
pub(crate) struct SpareBuffers<T> {
    pub record_bytes: Arc<Spares<u8>>,
    pub chunks: Spares<Message<T>>,
    pub batches: Arc<Spares<Message<T>>>,
}

impl<T> SpareBuffers<T> {
    /// Up to `max_bytes` of spares: half for record buffers, a quarter
    /// for each kind of message list.
    pub(crate) fn new(max_bytes: usize) -> Arc<SpareBuffers<T>> {
        Arc::new(SpareBuffers {
            record_bytes: Arc::new(Spares::new(max_bytes / 2)),
            chunks: Spares::new(max_bytes / 4),
            batches: Arc::new(Spares::new(max_bytes / 4)),
        })
    }
}

/// The spare message lists a batch's list goes back to, if any; not part
/// of what a batch is (batches compare equal whatever it is).
pub(crate) struct GoesBack<T>(pub Option<Arc<Spares<Message<T>>>>);

impl<T> GoesBack<T> {
    /// Nowhere: the list is freed with the batch.
    pub(crate) fn nowhere() -> GoesBack<T> {
        GoesBack(None)
    }
}

impl<T> Clone for GoesBack<T> {
    fn clone(&self) -> Self {
        GoesBack(self.0.clone())
    }
}

impl<T> PartialEq for GoesBack<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for GoesBack<T> {}

impl<T> std::fmt::Debug for GoesBack<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "spares"
        } else {
            "nowhere"
        })
    }
}

impl<T> ShardBatch<T> {
    /// The shard id; in a multi-stream consumer the shard's lease key
    /// (see [`Record::shard_id`]).
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The stream of the shard in a multi-stream consumer; `None` in a
    /// single-stream one.
    pub fn stream(&self) -> Option<crate::StreamIdentifier> {
        crate::StreamIdentifier::of_lease_key(&self.shard_id)
    }

    /// The shard's records in this batch, in sequence order.
    pub fn messages(&self) -> &[Message<T>] {
        &self.messages
    }

    /// Takes the records.
    pub fn into_messages(mut self) -> Vec<Message<T>> {
        std::mem::take(&mut self.messages)
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

/// A change in the shards this worker processes, as the KCL's record
/// processors see them (`initialize`, `leaseLost`, `shardEnded`,
/// `shutdownRequested`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardEvent {
    /// The worker took the shard's lease; its records follow, from `from`
    /// (its checkpoint, or the initial position for a new shard).
    Gained {
        /// The shard.
        shard_id: String,
        /// Where reading starts.
        from: Checkpoint,
    },
    /// Another worker has the lease now (it took it, or this worker could
    /// not keep it in time): no checkpoint of the shard is possible any
    /// more, and records handed on but not checkpointed will be read again
    /// by the next owner.
    Lost {
        /// The shard.
        shard_id: String,
    },
    /// The shard is closed (split or merged) and its last records are in
    /// this batch (possibly none: the batch may be otherwise empty); its
    /// children are read once its end is checkpointed (automatically, or
    /// with [`Checkpointer::checkpoint`](crate::Checkpointer::checkpoint)
    /// in manual mode: until then the consumer warns every minute and
    /// counts the `ShardEndsNotCheckpointed` metric).
    Ended {
        /// The shard.
        shard_id: String,
    },
    /// The worker is shutting down, or another worker asked for the lease:
    /// after this batch the lease is released. The last chance to
    /// checkpoint the shard: during this call.
    ShutdownRequested {
        /// The shard.
        shard_id: String,
    },
}

impl ShardEvent {
    /// The shard the event is about.
    pub fn shard_id(&self) -> &str {
        match self {
            ShardEvent::Gained { shard_id, .. }
            | ShardEvent::Lost { shard_id }
            | ShardEvent::Ended { shard_id }
            | ShardEvent::ShutdownRequested { shard_id } => shard_id,
        }
    }
}

/// Everything that arrived during one batch interval, grouped by shard,
/// and what changed in the shards this worker holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch<T> {
    pub(crate) time: SystemTime,
    pub(crate) shards: Vec<ShardBatch<T>>,
    pub(crate) events: Vec<ShardEvent>,
    pub(crate) last: bool,
}

impl<T> Batch<T> {
    /// The batch time: when the batch interval ended.
    pub fn time(&self) -> SystemTime {
        self.time
    }

    /// The batch time in RFC 3339, UTC, to the millisecond, such as
    /// `2024-05-01T12:00:00.250Z`.
    pub fn time_rfc3339(&self) -> String {
        crate::time::format_rfc3339(self.time, true)
    }

    /// What changed since the previous batch, in order: shards gained,
    /// lost, ended, and about to be released. Applications that checkpoint
    /// automatically may ignore it.
    pub fn events(&self) -> &[ShardEvent] {
        &self.events
    }

    /// True for the last batch `run` hands on, when shutdown was asked
    /// for: it has no records, and one [`ShardEvent::ShutdownRequested`]
    /// per held shard.
    pub fn is_last(&self) -> bool {
        self.last
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

    /// True when no record arrived during the interval. An empty batch may
    /// still carry [`events`](Self::events), such as a shard's
    /// [`ShardEvent::Ended`] (the end is often read after the shard's last
    /// records were handed on): a handler that returns early on empty
    /// batches must look at the events first, or, with manual checkpoints,
    /// the ended shard's children are never read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn batch_time_reads_as_rfc3339() {
        let batch: Batch<()> = Batch {
            time: UNIX_EPOCH + Duration::from_millis(1_714_564_800_250),
            shards: Vec::new(),
            events: Vec::new(),
            last: false,
        };
        assert_eq!(batch.time_rfc3339(), "2024-05-01T12:00:00.250Z");
    }
}
