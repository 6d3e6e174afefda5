//! The shards of several streams as one lease table sees them: every
//! shard, parent and child named by its multi-stream lease key, so that
//! lineage, balancing and handoff work across streams unchanged.

use std::time::SystemTime;

use crate::aws::kinesis::{KinesisClient, Shard};
use crate::error::Result;
use crate::lease::Checkpoint;
use crate::lease::coordinator::ShardSource;
use crate::stream::{Layout, StreamIdentifier, split_lease_key};

/// One stream of a multi-stream consumer, as the lease logic needs it.
#[derive(Clone, Debug)]
pub(crate) struct LeasedStream {
    pub id: StreamIdentifier,
    /// How Kinesis requests name it: its name or its ARN.
    pub request: String,
    /// Where its new leases start.
    pub initial: Checkpoint,
}

/// The shards of several streams.
pub(crate) struct MultiStreamShards {
    pub kinesis: KinesisClient,
    pub streams: Vec<LeasedStream>,
}

impl MultiStreamShards {
    fn stream_of(&self, key: &str) -> Option<&LeasedStream> {
        let (id, _) = split_lease_key(key)?;
        self.streams.iter().find(|s| s.id == id)
    }
}

/// `shard` with its id and its parents' ids turned into lease keys of `stream`.
pub(crate) fn keyed_shard(stream: &StreamIdentifier, mut shard: Shard) -> Shard {
    shard.shard_id = stream.lease_key(&shard.shard_id);
    for parent in [
        &mut shard.parent_shard_id,
        &mut shard.adjacent_parent_shard_id,
    ]
    .into_iter()
    .flatten()
    {
        *parent = stream.lease_key(parent);
    }
    shard
}

impl ShardSource for MultiStreamShards {
    fn list_shards(&self) -> Result<(Vec<Shard>, Option<SystemTime>)> {
        let mut all = Vec::new();
        for stream in &self.streams {
            let shards = self.kinesis.list_shards(&stream.request, None)?;
            all.extend(shards.into_iter().map(|s| keyed_shard(&stream.id, s)));
        }
        Ok((all, self.kinesis.service_time()))
    }

    fn layout(&self) -> Layout {
        Layout::MultiStream
    }

    fn owns(&self, key: &str) -> bool {
        self.stream_of(key).is_some()
    }

    fn initial_of(&self, key: &str) -> Option<&Checkpoint> {
        self.stream_of(key).map(|s| &s.initial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_and_its_parents_are_keyed_by_their_stream() {
        let stream = StreamIdentifier::new("1", "orders", 7).unwrap();
        let shard = Shard {
            shard_id: "shardId-2".into(),
            parent_shard_id: Some("shardId-0".into()),
            adjacent_parent_shard_id: Some("shardId-1".into()),
            starting_hash_key: "0".into(),
            ending_hash_key: "9".into(),
            starting_sequence_number: "1".into(),
            ending_sequence_number: None,
        };
        let keyed = keyed_shard(&stream, shard);
        assert_eq!(keyed.shard_id, "1:orders:7:shardId-2");
        assert_eq!(
            keyed.parents().collect::<Vec<_>>(),
            ["1:orders:7:shardId-0", "1:orders:7:shardId-1"]
        );
    }
}
