//! Shard leases in DynamoDB: the table (compatible with the KCL's, plus a
//! workers row of heartbeats), the leases this worker holds, what it knows
//! of its peers, and the coordinator that writes the heartbeat and takes,
//! asks for and releases leases. Nothing here knows about batches or
//! handlers.

// The load-aware balancer (issue 27), which the leader's plan calls.
mod balance;
mod coordinator;
mod held;
mod members;
mod peers;
mod plan;
mod reset;
// The simulation: unit tests, and the fleet benchmark (feature
// `simulation`, through `__test_support`).
#[cfg(any(test, feature = "simulation"))]
#[cfg_attr(not(test), allow(dead_code))]
mod sim;
pub use members::MemberItems;
#[cfg(feature = "simulation")]
pub use sim::fleet::{FleetFigures, simulate_fleet};
#[cfg(feature = "simulation")]
pub use sim::skewed_fleet::{SkewedRound, simulate_skewed_fleet};
mod streams;
mod table;

pub use balance::BalanceBy;
pub(crate) use coordinator::{
    Coordinator, CoordinatorEvent, LeaseTimings, ShardRunner, ShardSource, StreamShards,
};
pub(crate) use held::{HeldLeases, Holding};
pub(crate) use plan::FleetBalance;
pub use plan::Standing;
use plan::{Lineage, Row};
pub use reset::{
    ResetChange, ResetReport, ResetTo, export_checkpoints, import_checkpoints, reset_positions,
    reset_stream_positions,
};
pub use streams::StreamsHandle;
pub(crate) use streams::{LeasedStream, MultiStreamShards, RequestNames};
pub use table::BillingMode;

/// How the workers of one application share the leases (see
/// [`ConsumerBuilder::coordination`](crate::ConsumerBuilder::coordination)
/// and docs/many-workers.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Coordination {
    /// One workers row holds every worker's heartbeat; every worker reads
    /// the lease table when something changed and plans its own part.
    /// Each heartbeat rewrites that one item, so its cost grows with the
    /// square of the fleet: at most 64 live workers, the rest (by id)
    /// stop with [`Error::Config`](crate::Error::Config) for
    /// `coordination`, so that the item never turns hot (about 77 WCU/s
    /// at 64 workers).
    WorkersRow,
    /// Each worker beats in an item of its own; one worker, elected
    /// through a lock item in the lease table, reads the table every
    /// heartbeat period and assigns leases for the whole fleet (writing
    /// them into the workers' items); the others never read the table.
    /// No item grows with the fleet. A leader's death stops assignment
    /// for up to the failover time. The default.
    #[default]
    Leader,
}
#[cfg(feature = "fuzzing")]
pub(crate) use table::parse_lease;
pub(crate) use table::{LeaseStore, LeaseTable, TableOptions};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::aws::kinesis::Shard;
use crate::metrics::LeaseLoad;

/// The time sources of the lease logic: the monotonic clock and the wall
/// clock, or simulated time in the simulation. Both are read because the
/// monotonic clock stops while the host is suspended (Linux's
/// CLOCK_MONOTONIC, which `Instant` uses) and the wall clock does not.
#[derive(Clone)]
pub(crate) struct Clock {
    monotonic: Arc<dyn Fn() -> Instant + Send + Sync>,
    wall: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) monotonic: Instant,
    pub(crate) wall: SystemTime,
}

impl Stamp {
    /// The time from `earlier` to this reading: the larger of what the
    /// two clocks measured, so that a host suspend (monotonic clock
    /// stopped) still counts. A wall clock stepped back counts as zero; one
    /// stepped forward only makes the time look longer (the safe side).
    pub(crate) fn since(&self, earlier: Stamp) -> std::time::Duration {
        let monotonic = self.monotonic.saturating_duration_since(earlier.monotonic);
        let wall = self.wall.duration_since(earlier.wall).unwrap_or_default();
        monotonic.max(wall)
    }
}

impl Clock {
    pub(crate) fn system() -> Clock {
        Clock {
            monotonic: Arc::new(Instant::now),
            wall: Arc::new(SystemTime::now),
        }
    }

    #[cfg(any(test, feature = "simulation"))]
    pub(crate) fn new(
        monotonic: impl Fn() -> Instant + Send + Sync + 'static,
        wall: impl Fn() -> SystemTime + Send + Sync + 'static,
    ) -> Clock {
        Clock {
            monotonic: Arc::new(monotonic),
            wall: Arc::new(wall),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        (self.monotonic)()
    }

    /// Both clocks, read now.
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp {
            monotonic: (self.monotonic)(),
            wall: (self.wall)(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

use crate::record::{ExtendedSequenceNumber, SequenceNumber};

/// Where a shard's processing stands, as stored in the `checkpoint` column.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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

/// As a person reads it, after "at": `the trim horizon`, `the tip
/// (LATEST)`, `records from 2026-01-02T03:04:05Z`, `sequence 4968…`,
/// `the shard's end`.
impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checkpoint::TrimHorizon => f.write_str("the trim horizon"),
            Checkpoint::Latest => f.write_str("the tip (LATEST)"),
            Checkpoint::AtTimestamp(Some(t)) => {
                write!(f, "records from {}", crate::time::format_rfc3339(*t, true))
            }
            Checkpoint::AtTimestamp(None) => f.write_str("the configured initial timestamp"),
            Checkpoint::At(position) => position.fmt(f),
            Checkpoint::ShardEnd => f.write_str("the shard's end"),
        }
    }
}

/// Shard ids for a log line: `a, b`, or `none`.
pub(crate) fn shard_list(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".to_owned()
    } else {
        ids.join(", ")
    }
}

/// One row of the lease table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub shard_id: String,
    /// The worker holding the lease (`leaseOwner`), if any.
    pub owner: Option<String>,
    /// A worker that asked the owner to hand the lease over (`handoffTo`,
    /// an attribute of this library's that the KCL ignores).
    pub handoff_to: Option<String>,
    /// Bumped by every take, checkpoint and release, and by the KCL's
    /// renewals (`leaseCounter`).
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
    /// The lease's load as its owner's last checkpoint left it
    /// (`throughputKBps`, the KCL 3's, and this library's
    /// `loadRecordsPerSecond` and `loadBusyFraction`); `None` on a row
    /// without one, such as one only the KCL 2 wrote.
    pub load: Option<LeaseLoad>,
}

/// One row of the lease table and where it stands (see [`inspect_leases`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStanding {
    /// The row's `leaseKey`.
    pub shard_id: String,
    /// The lease, unless the row is malformed.
    pub lease: Option<Lease>,
    /// Whether the shard can be read, and if not, why.
    pub standing: Standing,
}

/// Reads every lease of an application's lease table, for inspection (see
/// the `leases` example), through DynamoDB as `config` says. `app_name`
/// names the table: the application name, or the `lease_table_name` the
/// consumer was given. Rows of other entity types and malformed rows are
/// left out; [`inspect_leases`] shows those too.
pub fn list_leases(config: &crate::aws::ClientConfig, app_name: &str) -> crate::Result<Vec<Lease>> {
    let dynamodb = crate::aws::dynamodb::DynamoDbClient::new(config)?;
    let rows = LeaseTable::new(dynamodb, app_name).list(true)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| match r {
            Row::Lease(l) => Some(l),
            Row::Malformed { .. } => None,
        })
        .collect())
}

/// Reads the heartbeat of every worker of an application (each worker's
/// item of its lease table, and the workers row of
/// [`Coordination::WorkersRow`] fleets; `app_name` as for [`list_leases`]):
/// each worker id with the number of its last heartbeat. A worker writes
/// one every third of its failover time; read twice that far apart, a
/// number that did not move is a worker that may be gone (its leases go to
/// others once it stood still for the failover time).
pub fn worker_heartbeats(
    config: &crate::aws::ClientConfig,
    app_name: &str,
) -> crate::Result<std::collections::BTreeMap<String, u64>> {
    let dynamodb = crate::aws::dynamodb::DynamoDbClient::new(config)?;
    let table = LeaseTable::new(dynamodb, app_name);
    let mut beats = LeaseStore::workers(&table)?.beats;
    let items = members::MemberStore::survey(&table, true)?.workers;
    beats.extend(items.into_iter().map(|(id, item)| (id, item.beat)));
    Ok(beats)
}

/// Reads every row of an application's lease table, malformed ones
/// included, and says where each stands, judged as the consumer judges it
/// against `listings`: the stream's shards listed one or more times, oldest
/// first. A row whose shard every listing left out (at least two) is
/// [`Standing::Expired`]; left out of fewer, [`Standing::NotListed`]. With
/// no listing at all, every row counts as listed.
pub fn inspect_leases(
    config: &crate::aws::ClientConfig,
    app_name: &str,
    listings: &[Vec<Shard>],
) -> crate::Result<Vec<LeaseStanding>> {
    let dynamodb = crate::aws::dynamodb::DynamoDbClient::new(config)?;
    let rows = LeaseTable::new(dynamodb, app_name).list(true)?;
    let mut misses = HashMap::new();
    for listing in listings {
        misses = plan::count_misses(&rows, &Lineage::new(listing), &misses);
    }
    let gone = plan::gone(&misses, &Default::default());
    let every_row: Vec<Shard>;
    let lineage = match listings.last() {
        Some(last) => Lineage::new(last),
        None => {
            every_row = rows.iter().map(|r| listed(r.shard_id())).collect();
            Lineage::new(&every_row)
        }
    };
    let mut standings = plan::standings(&rows, &lineage, &gone);
    Ok(rows
        .into_iter()
        .map(|row| {
            let shard_id = row.shard_id().to_owned();
            LeaseStanding {
                standing: standings.remove(&shard_id).unwrap_or(Standing::NotListed),
                lease: row.lease().cloned(),
                shard_id,
            }
        })
        .collect())
}

/// A stand-in listing entry for a row when no listing is at hand.
fn listed(shard_id: &str) -> Shard {
    Shard {
        shard_id: shard_id.to_owned(),
        parent_shard_id: None,
        adjacent_parent_shard_id: None,
        starting_hash_key: String::new(),
        ending_hash_key: String::new(),
        starting_sequence_number: String::new(),
        ending_sequence_number: None,
    }
}
