//! Shard leases in DynamoDB: the table (compatible with the KCL's), the
//! leases this worker holds, and the coordinator that renews, takes, steals
//! and releases them. Nothing here knows about batches or handlers.

mod coordinator;
mod held;
mod table;

pub(crate) use coordinator::{Coordinator, CoordinatorEvent, LeaseTimings, ShardRunner};
pub(crate) use held::HeldLeases;
pub(crate) use table::LeaseTable;
#[cfg(feature = "fuzzing")]
pub(crate) use table::parse_lease;

use std::time::SystemTime;

use crate::record::{ExtendedSequenceNumber, SequenceNumber};

/// Where a shard's processing stands, as stored in the `checkpoint` column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// Nothing processed yet; start at the oldest record.
    TrimHorizon,
    /// Nothing processed yet; start at the tip. (Rows written by the KCL;
    /// this library pins a new lease's "latest" to its creation time with
    /// [`AtTimestamp`](Self::AtTimestamp), so that records put before its
    /// first checkpoint are not skipped when the lease changes hands.)
    Latest,
    /// Nothing processed yet; start at the records that arrived at or after
    /// this time (our `checkpointTimestamp` attribute, epoch milliseconds),
    /// or, when the row has none, at the configured initial timestamp.
    AtTimestamp(Option<SystemTime>),
    /// Processed up to and including this user record.
    At(ExtendedSequenceNumber),
    /// The shard is closed and was read to its end.
    ShardEnd,
}

impl Checkpoint {
    /// The value of the `checkpoint` column and of `checkpointSubSequenceNumber`.
    pub(crate) fn to_columns(&self) -> (&str, u64) {
        match self {
            Checkpoint::TrimHorizon => ("TRIM_HORIZON", 0),
            Checkpoint::Latest => ("LATEST", 0),
            Checkpoint::AtTimestamp(_) => ("AT_TIMESTAMP", 0),
            Checkpoint::ShardEnd => ("SHARD_END", 0),
            Checkpoint::At(p) => (p.sequence_number.as_str(), p.sub_sequence_number),
        }
    }

    pub(crate) fn from_columns(
        text: &str,
        sub_sequence_number: u64,
        timestamp: Option<SystemTime>,
    ) -> Option<Checkpoint> {
        Some(match text {
            "TRIM_HORIZON" => Checkpoint::TrimHorizon,
            "LATEST" => Checkpoint::Latest,
            "AT_TIMESTAMP" => Checkpoint::AtTimestamp(timestamp),
            "SHARD_END" => Checkpoint::ShardEnd,
            seq => Checkpoint::At(ExtendedSequenceNumber {
                sequence_number: SequenceNumber::parse(seq)?,
                sub_sequence_number,
            }),
        })
    }

    /// True once a record of the shard has been processed (or it was finished).
    pub(crate) fn has_started(&self) -> bool {
        matches!(self, Checkpoint::At(_) | Checkpoint::ShardEnd)
    }
}

/// One row of the lease table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub shard_id: String,
    /// The worker holding the lease (`leaseOwner`), if any.
    pub owner: Option<String>,
    /// A worker that asked the owner to hand the lease over (`handoffTo`,
    /// an attribute of this library's that the KCL ignores).
    pub handoff_to: Option<String>,
    /// Bumped by every renewal, take, checkpoint and release (`leaseCounter`).
    pub counter: u64,
    /// How far the shard has been processed.
    pub checkpoint: Checkpoint,
    /// `ownerSwitchesSinceCheckpoint`.
    pub owner_switches_since_checkpoint: u64,
    /// The shard's parents (`parentShardId`).
    pub parents: Vec<String>,
    /// The shard's children, once known (`childShardIds`).
    pub children: Vec<String>,
    /// The shard's hash key range (`startingHashKey`, `endingHashKey`).
    pub hash_range: Option<(String, String)>,
}

impl Lease {
    /// The parents this shard still waits for: those whose leases exist and
    /// are not finished. A parent without a lease was finished and cleaned
    /// up, or predates the application.
    pub fn unfinished_parents<'a>(&'a self, leases: &[Lease]) -> Vec<&'a str> {
        self.parents
            .iter()
            .filter(|p| {
                leases
                    .iter()
                    .any(|l| &l.shard_id == *p && l.checkpoint != Checkpoint::ShardEnd)
            })
            .map(String::as_str)
            .collect()
    }
}

/// Reads every lease of an application's lease table, for inspection (see
/// the `leases` example). Rows of other entity types and malformed rows are
/// left out.
pub fn list_leases(
    dynamodb: &crate::aws::dynamodb::DynamoDbClient,
    app_name: &str,
) -> crate::Result<Vec<Lease>> {
    LeaseTable::new(dynamodb.clone(), app_name).list()
}
