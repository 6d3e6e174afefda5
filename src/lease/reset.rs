//! Moving an application's position while its workers run: reset leases
//! to a new starting position (fenced by the lease counter), re-create
//! parent leases a reset to the past needs, and export or import every
//! checkpoint as JSON. Nothing here knows about batches or handlers.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::aws::ClientConfig;
use crate::aws::dynamodb::DynamoDbClient;
use crate::aws::kinesis::{Shard, is_valid_shard_id};
use crate::error::{Error, Result};
use crate::lease::plan::{Row, new_lease};
use crate::lease::table::{LeaseStore, LeaseTable};
use crate::lease::{Checkpoint, Lease};
use crate::record::{ExtendedSequenceNumber, SequenceNumber};
use crate::stream::{Layout, StreamIdentifier, shard_id_of, split_lease_key};

/// Where [`reset_positions`] moves an application's position.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetTo {
    /// The oldest record still in the stream.
    TrimHorizon,
    /// The tip: records put after the reset (pinned to the time of the
    /// reset, as a new lease's `Latest` is).
    Latest,
    /// The records that arrived at or after this time.
    AtTimestamp(SystemTime),
    /// The records after this one (a sequence number with, for a KPL
    /// aggregate, the sub-sequence number of the last user record to skip).
    /// It names a record of one shard: the reset must name that shard.
    AfterSequence(ExtendedSequenceNumber),
}

/// `trim-horizon`, `latest`, `at-timestamp <RFC 3339 time>` or
/// `after-sequence <N>[/<SUB>]`.
impl std::str::FromStr for ResetTo {
    type Err = Error;

    fn from_str(text: &str) -> Result<ResetTo> {
        let bad = |why: String| Error::config("reset", why);
        let text = text.trim();
        let (kind, value) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let value = value.trim();
        match (kind, value) {
            ("trim-horizon", "") => Ok(ResetTo::TrimHorizon),
            ("latest", "") => Ok(ResetTo::Latest),
            ("at-timestamp", t) => crate::time::parse_iso8601(t)
                .filter(|_| {
                    t.get(19..)
                        .is_some_and(|zone| zone.contains(['Z', 'z', '+', '-']))
                })
                .map(ResetTo::AtTimestamp)
                .ok_or_else(|| {
                    bad(format!(
                        "{t:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z"
                    ))
                }),
            ("after-sequence", n) => {
                let (sequence, sub) = n.split_once('/').unwrap_or((n, "0"));
                let sequence_number = SequenceNumber::parse(sequence);
                let sub_sequence_number = sub.parse::<u64>().ok();
                match (sequence_number, sub_sequence_number) {
                    (Some(sequence_number), Some(sub_sequence_number)) => {
                        Ok(ResetTo::AfterSequence(ExtendedSequenceNumber {
                            sequence_number,
                            sub_sequence_number,
                        }))
                    }
                    _ => Err(bad(format!(
                        "{n:?} is not a sequence number (digits), optionally with /SUB"
                    ))),
                }
            }
            _ => Err(bad(format!(
                "{text:?} is not trim-horizon, latest, at-timestamp <RFC 3339 time> or after-sequence <N>[/SUB]"
            ))),
        }
    }
}

/// One lease a reset or an import changes (or would change, in a dry run).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResetChange {
    /// The shard.
    pub shard_id: String,
    /// Its checkpoint before; `None` for a lease the change creates (a
    /// parent shard whose finished lease was deleted).
    pub from: Option<Checkpoint>,
    /// Its checkpoint after.
    pub to: Checkpoint,
    /// The worker that held it before (it drops the lease and what it read).
    pub owner: Option<String>,
}

/// What [`reset_positions`] or [`import_checkpoints`] did (or would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResetReport {
    /// The leases changed, parents before children, in the order written.
    pub changes: Vec<ResetChange>,
    /// Shards the reset cannot go back into: past the stream's retention
    /// (their records are gone), so left as they are.
    pub past_retention: Vec<String>,
    /// True when nothing was written.
    pub dry_run: bool,
}

/// One write of a reset.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Move an existing lease, fenced by its counter.
    Reset {
        shard_id: String,
        counter: u64,
        from: Checkpoint,
        owner: Option<String>,
        to: Checkpoint,
    },
    /// Create a lease that has no row.
    Create(Lease),
}

impl Step {
    fn shard_id(&self) -> &str {
        match self {
            Step::Reset { shard_id, .. } => shard_id,
            Step::Create(lease) => &lease.shard_id,
        }
    }

    fn change(&self) -> ResetChange {
        match self {
            Step::Reset {
                shard_id,
                from,
                owner,
                to,
                ..
            } => ResetChange {
                shard_id: shard_id.clone(),
                from: Some(from.clone()),
                to: to.clone(),
                owner: owner.clone(),
            },
            Step::Create(lease) => ResetChange {
                shard_id: lease.shard_id.clone(),
                from: None,
                to: lease.checkpoint.clone(),
                owner: None,
            },
        }
    }
}

/// A checkpoint as the table keeps it: times to the millisecond.
fn stored(checkpoint: Checkpoint) -> Checkpoint {
    match checkpoint {
        Checkpoint::AtTimestamp(Some(t)) => {
            let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            Checkpoint::AtTimestamp(Some(UNIX_EPOCH + Duration::from_millis(ms)))
        }
        other => other,
    }
}

/// Plans a reset of the rows `rows` of a stream listed as `listing` to
/// `to` (at `now`), of the shards `only` (every shard when empty): the
/// writes, parents before children, and the shards past retention.
///
/// Every listed shard moves (its row, or a new one for a listed parent
/// whose finished lease was deleted: its children wait for it again),
/// but with [`ResetTo::Latest`] finished shards stay finished and no row
/// is created. Rows of shards the stream no longer lists, and parents
/// the listing names but no longer holds, are past retention.
fn plan(
    rows: &[Row],
    listing: &[Shard],
    to: &ResetTo,
    only: &[String],
    now: SystemTime,
) -> Result<(Vec<Step>, Vec<String>)> {
    let listed: HashMap<&str, &Shard> = listing.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let by_id: HashMap<&str, &Row> = rows.iter().map(|r| (r.shard_id(), r)).collect();
    for id in only {
        if !listed.contains_key(id.as_str()) && !by_id.contains_key(id.as_str()) {
            return Err(Error::config(
                "shard",
                format!("{id:?} is neither a shard of the stream nor in the lease table"),
            ));
        }
    }
    if let ResetTo::AfterSequence(_) = to {
        if only.len() != 1 {
            return Err(Error::config(
                "shard",
                "after-sequence names a record of one shard: give exactly that shard",
            ));
        }
    }
    let target = stored(match to {
        ResetTo::TrimHorizon => Checkpoint::TrimHorizon,
        ResetTo::Latest => Checkpoint::AtTimestamp(Some(now)),
        ResetTo::AtTimestamp(t) => Checkpoint::AtTimestamp(Some(*t)),
        ResetTo::AfterSequence(p) => Checkpoint::At(p.clone()),
    });
    let into_the_past = !matches!(to, ResetTo::Latest);
    let chosen: BTreeSet<&str> = match only.is_empty() {
        true => listed.keys().chain(by_id.keys()).copied().collect(),
        false => only.iter().map(String::as_str).collect(),
    };
    let mut steps = Vec::new();
    let mut past: BTreeSet<String> = BTreeSet::new();
    for id in &chosen {
        match (by_id.get(id), listed.get(id)) {
            (Some(_), None) => {
                past.insert((*id).to_owned());
            }
            (Some(Row::Malformed { why, .. }), Some(_)) => {
                return Err(Error::config(
                    "shard",
                    format!(
                        "the lease row of {id} is malformed ({why}): repair or delete it first"
                    ),
                ));
            }
            (Some(Row::Lease(l)), Some(_)) => {
                if !into_the_past && l.checkpoint == Checkpoint::ShardEnd {
                    continue;
                }
                steps.push(Step::Reset {
                    shard_id: l.shard_id.clone(),
                    counter: l.counter,
                    from: l.checkpoint.clone(),
                    owner: l.owner.clone(),
                    to: target.clone(),
                });
            }
            (None, Some(shard)) if into_the_past => {
                steps.push(Step::Create(new_lease(shard, target.clone())))
            }
            (None, _) => {}
        }
        if into_the_past {
            if let Some(shard) = listed.get(id) {
                past.extend(
                    shard
                        .parents()
                        .filter(|p| !listed.contains_key(p))
                        .map(str::to_owned),
                );
            }
        }
    }
    let parents: HashMap<&str, Vec<&str>> = listing
        .iter()
        .map(|s| (s.shard_id.as_str(), s.parents().collect()))
        .collect();
    sort_parents_first(&mut steps, &parents);
    Ok((steps, past.into_iter().collect()))
}

/// Orders `steps` so that a shard's ancestors (by `parents`) come before
/// it: a child reset before its parent could be read at once, from its
/// new position, ahead of its parent.
fn sort_parents_first(steps: &mut [Step], parents: &HashMap<&str, Vec<&str>>) {
    fn depth(id: &str, parents: &HashMap<&str, Vec<&str>>, seen: usize) -> usize {
        let up = parents.get(id).into_iter().flatten();
        // A lineage is a tree; `seen` only guards against a table that
        // says otherwise.
        up.map(|p| {
            if seen > 64 {
                0
            } else {
                1 + depth(p, parents, seen + 1)
            }
        })
        .max()
        .unwrap_or(0)
    }
    steps.sort_by_cached_key(|s| (depth(s.shard_id(), parents, 0), s.shard_id().to_owned()));
}

/// How many times one lease's reset is tried when its counter keeps moving
/// (its owner checkpointing meanwhile).
const RESET_TRIES: u32 = 10;

/// Writes `steps` in order, each fenced: a reset lands only over the
/// counter it read (read again and retried when the owner wrote
/// meanwhile), a lease is created only where none exists. Then every
/// worker is told to read the table.
fn apply(table: &LeaseTable, steps: &[Step]) -> Result<()> {
    for step in steps {
        let mut step = step.clone();
        let mut tries = 0;
        loop {
            let landed = match &step {
                Step::Reset {
                    shard_id,
                    counter,
                    to,
                    ..
                } => table.reset(shard_id, *counter, to)?,
                Step::Create(lease) => table.create(lease)?,
            };
            if landed {
                break;
            }
            tries += 1;
            let shard_id = step.shard_id().to_owned();
            if tries >= RESET_TRIES {
                return Err(Error::Internal(format!(
                    "the lease of {shard_id} kept changing: not reset after {tries} tries; run the reset again"
                )));
            }
            let to = step.change().to;
            step = match table.row(&shard_id)? {
                // Reset already (a retried request whose reply was lost),
                // or taken since by a worker that reads from there.
                Some(Row::Lease(l)) if l.checkpoint == to => break,
                Some(Row::Lease(l)) => Step::Reset {
                    shard_id,
                    counter: l.counter,
                    from: l.checkpoint,
                    owner: l.owner,
                    to,
                },
                Some(Row::Malformed { why, .. }) => {
                    return Err(Error::Internal(format!(
                        "the lease row of {shard_id} became malformed during the reset: {why}"
                    )));
                }
                // Deleted meanwhile (a finished parent): created again.
                None => match &step {
                    Step::Create(_) => step,
                    Step::Reset { .. } => {
                        log::warn!(
                            "lease {shard_id} was deleted during the reset; not re-created (run the reset again to re-create it)"
                        );
                        break;
                    }
                },
            };
        }
        log::info!("reset lease {} to {}", step.shard_id(), step.change().to);
    }
    // Holders drop the leases at their next read of the table: now.
    table.notify(None)
}

fn table(config: &ClientConfig, app_name: &str) -> Result<LeaseTable> {
    Ok(LeaseTable::new(DynamoDbClient::new(config)?, app_name))
}

/// The rows, listing and named shards of one reset. In a multi-stream
/// table (`stream` given): the rows of that stream alone, and its listing
/// and the named shards (bare shard ids or lease keys) keyed by it. A
/// table in the other layout than asked for is refused: the reset would
/// write single-stream leases into a multi-stream table (or the other way
/// round) and call every row past retention.
fn scoped(
    mut rows: Vec<Row>,
    stream: Option<&StreamIdentifier>,
    listing: &[Shard],
    only: &[String],
) -> Result<(Vec<Row>, Vec<Shard>, Vec<String>)> {
    let expected = match stream {
        Some(_) => Layout::MultiStream,
        None => Layout::SingleStream,
    };
    let mut keys = rows
        .iter()
        .filter_map(Row::lease)
        .map(|l| l.shard_id.as_str());
    if let Some(other) = keys.find(|k| Layout::of(k) != expected) {
        let why = match stream {
            None => format!(
                "the lease table holds multi-stream leases (such as {other:?}): name the stream with reset_stream_positions (leases --reset with --stream)"
            ),
            Some(_) => format!(
                "the lease table holds single-stream leases (such as {other:?}): use reset_positions"
            ),
        };
        return Err(Error::config("reset", why));
    }
    let Some(stream) = stream else {
        return Ok((rows, listing.to_vec(), only.to_vec()));
    };
    rows.retain(|r| split_lease_key(r.shard_id()).is_some_and(|(s, _)| s == *stream));
    let listing = listing
        .iter()
        .map(|s| stream.key_shard(s.clone()))
        .collect();
    let only = only
        .iter()
        .map(|id| match is_valid_shard_id(id) {
            true => stream.lease_key(id),
            false => id.clone(),
        })
        .collect();
    Ok((rows, listing, only))
}

/// Moves an application's position while its workers may be running:
/// every shard (or those of `shards`) of the stream listed as `listing`
/// (a `list_shards` of it) is reset to `to` in the lease table `app_name`
/// (through DynamoDB as `config` says). With `dry_run`, only says what
/// would change.
///
/// Each lease's reset is one conditional write on the counter it read: it
/// sets the checkpoint, moves the counter on and frees the lease. A worker
/// holding it finds every later checkpoint write refused (it can never
/// write an older position over the reset), drops the lease and what it
/// read at its next read of the table (every worker is told to read it at
/// once), and whoever takes the lease reads from the new position.
///
/// Resetting to a time before a reshard (or to the trim horizon)
/// re-creates the leases of parent shards still in the stream whose
/// finished leases were deleted: their children wait for them again, so
/// the parents are read again first. Shards past the stream's retention
/// are left as they are and named in the report.
///
/// A table in the multi-stream layout is refused (`Error::Config`): use
/// [`reset_stream_positions`].
pub fn reset_positions(
    config: &ClientConfig,
    app_name: &str,
    listing: &[Shard],
    to: &ResetTo,
    shards: &[String],
    dry_run: bool,
) -> Result<ResetReport> {
    reset(config, app_name, None, listing, to, shards, dry_run)
}

/// [`reset_positions`] for one stream of a multi-stream application (a
/// lease table in the KCL 3's multi-stream layout): the leases of
/// `stream` (as [`StreamSummary::stream_identifier`](crate::aws::kinesis::StreamSummary::stream_identifier)
/// names it; a former stream of the same name is another stream) move,
/// the other streams' are left alone. `listing` is a `list_shards` of the
/// stream; `shards` are bare shard ids or lease keys; the report names
/// leases by lease key. A single-stream table is refused (`Error::Config`).
pub fn reset_stream_positions(
    config: &ClientConfig,
    app_name: &str,
    stream: &StreamIdentifier,
    listing: &[Shard],
    to: &ResetTo,
    shards: &[String],
    dry_run: bool,
) -> Result<ResetReport> {
    reset(config, app_name, Some(stream), listing, to, shards, dry_run)
}

fn reset(
    config: &ClientConfig,
    app_name: &str,
    stream: Option<&StreamIdentifier>,
    listing: &[Shard],
    to: &ResetTo,
    shards: &[String],
    dry_run: bool,
) -> Result<ResetReport> {
    let table = table(config, app_name)?;
    let (rows, listing, shards) = scoped(table.list(true)?, stream, listing, shards)?;
    let (steps, past_retention) = plan(&rows, &listing, to, &shards, SystemTime::now())?;
    if !dry_run {
        apply(&table, &steps)?;
    }
    Ok(ResetReport {
        changes: steps.iter().map(Step::change).collect(),
        past_retention,
        dry_run,
    })
}

/// One lease in an export: its position, and what it takes to create it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Exported {
    shard_id: String,
    /// The `checkpoint` column.
    checkpoint: String,
    sub_sequence_number: u64,
    /// An `AT_TIMESTAMP` checkpoint's time, epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp_ms: Option<u64>,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash_range: Option<(String, String)>,
}

impl Exported {
    fn of(lease: &Lease) -> Exported {
        let (text, sub) = lease.checkpoint.to_columns();
        let timestamp_ms = match lease.checkpoint {
            Checkpoint::AtTimestamp(Some(t)) => {
                Some(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
            }
            _ => None,
        };
        Exported {
            shard_id: lease.shard_id.clone(),
            checkpoint: text.to_owned(),
            sub_sequence_number: sub,
            timestamp_ms,
            parents: lease.parents.clone(),
            hash_range: lease.hash_range.clone(),
        }
    }

    /// The lease it describes, unowned; or what is wrong with it. Its
    /// key is a shard id, or a multi-stream lease key (its parents then
    /// keys of the same stream).
    fn lease(&self) -> std::result::Result<Lease, String> {
        let shard_id = &self.shard_id;
        let stream = StreamIdentifier::of_lease_key(shard_id);
        let valid = |id: &str| {
            is_valid_shard_id(shard_id_of(id)) && StreamIdentifier::of_lease_key(id) == stream
        };
        if !valid(shard_id) || !self.parents.iter().all(|p| valid(p)) {
            return Err(format!(
                "{shard_id:?}: a shard id (or a parent's) is not one"
            ));
        }
        let timestamp = self
            .timestamp_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        let checkpoint =
            Checkpoint::from_columns(&self.checkpoint, self.sub_sequence_number, timestamp)
                .ok_or_else(|| format!("{shard_id}: {:?} is not a checkpoint", self.checkpoint))?;
        Ok(Lease {
            shard_id: shard_id.clone(),
            owner: None,
            handoff_to: None,
            counter: 0,
            checkpoint,
            owner_switches_since_checkpoint: 0,
            parents: self.parents.clone(),
            children: Vec::new(),
            hash_range: self.hash_range.clone(),
            load: None,
        })
    }
}

/// Every checkpoint of the lease table `app_name`, as JSON (an array of
/// `{shard_id, checkpoint, sub_sequence_number, timestamp_ms, parents,
/// hash_range}`): a backup, or an application's position to copy to
/// another with [`import_checkpoints`]. Malformed rows are left out.
pub fn export_checkpoints(config: &ClientConfig, app_name: &str) -> Result<String> {
    let rows = table(config, app_name)?.list(true)?;
    let mut exported: Vec<Exported> = rows
        .iter()
        .filter_map(Row::lease)
        .map(Exported::of)
        .collect();
    exported.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    serde_json::to_string_pretty(&exported).map_err(|e| Error::Internal(e.to_string()))
}

/// Sets the checkpoints of the lease table `app_name` (created if
/// missing) to those of `json`, an [`export_checkpoints`] of this or
/// another application: each lease is reset as [`reset_positions`] does
/// (fenced, safe while workers run), and created where it has no row.
/// Leases of the table the file does not name are left alone. With
/// `dry_run`, only says what would change. A file that does not parse, or
/// that names a malformed row of the table, is an error naming what is
/// wrong, and nothing is written.
pub fn import_checkpoints(
    config: &ClientConfig,
    app_name: &str,
    json: &str,
    dry_run: bool,
) -> Result<ResetReport> {
    let bad = |why: String| Error::config("import", why);
    let entries: Vec<Exported> =
        serde_json::from_str(json).map_err(|e| bad(format!("not a checkpoint export: {e}")))?;
    let leases: Vec<Lease> = entries
        .iter()
        .map(Exported::lease)
        .collect::<std::result::Result<_, _>>()
        .map_err(bad)?;
    let table = table(config, app_name)?;
    let rows = match dry_run {
        true => table.list(true).or_else(|e| match e.code() {
            Some("ResourceNotFoundException") => Ok(Vec::new()),
            _ => Err(e),
        })?,
        false => {
            ready(&table)?;
            table.list(true)?
        }
    };
    let steps = import_steps(&rows, leases)?;
    if !dry_run {
        apply(&table, &steps)?;
    }
    Ok(ResetReport {
        changes: steps.iter().map(Step::change).collect(),
        past_retention: Vec::new(),
        dry_run,
    })
}

/// How long an import waits for a lease table it created to be ready.
const TABLE_READY_WAIT: Duration = Duration::from_secs(120);

/// Creates the table if it is missing and waits until it can be written.
fn ready(table: &LeaseTable) -> Result<()> {
    let until = std::time::Instant::now() + TABLE_READY_WAIT;
    loop {
        match table.ensure_exists() {
            Err(Error::NotReady(why)) if std::time::Instant::now() < until => {
                log::info!("waiting: {why}");
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Refuses leases keyed in different layouts, among the file's leases or
/// between them and the table's: imported, they would not be found.
fn check_import_layout(rows: &[Row], leases: &[Lease]) -> Result<()> {
    let table = rows.iter().filter_map(Row::lease);
    let mut keys = leases.iter().chain(table).map(|l| l.shard_id.as_str());
    let Some(first) = keys.next() else {
        return Ok(());
    };
    match keys.find(|k| Layout::of(k) != Layout::of(first)) {
        None => Ok(()),
        Some(other) => Err(Error::config(
            "import",
            format!(
                "{first:?} and {other:?} are keyed in different layouts (single-stream, multi-stream): a file and the table it goes into must both be in one layout (see docs/multi-stream.md)"
            ),
        )),
    }
}

/// The writes that give `rows` the checkpoints of `leases`, parents first;
/// leases already there are left out.
fn import_steps(rows: &[Row], leases: Vec<Lease>) -> Result<Vec<Step>> {
    check_import_layout(rows, &leases)?;
    let by_id: HashMap<&str, &Row> = rows.iter().map(|r| (r.shard_id(), r)).collect();
    let parents: HashMap<&str, Vec<&str>> = leases
        .iter()
        .map(|l| {
            (
                l.shard_id.as_str(),
                l.parents.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut steps = Vec::new();
    for lease in &leases {
        match by_id.get(lease.shard_id.as_str()) {
            Some(Row::Lease(l)) if l.checkpoint == lease.checkpoint => {}
            Some(Row::Lease(l)) => steps.push(Step::Reset {
                shard_id: l.shard_id.clone(),
                counter: l.counter,
                from: l.checkpoint.clone(),
                owner: l.owner.clone(),
                to: lease.checkpoint.clone(),
            }),
            Some(Row::Malformed { shard_id, why }) => {
                return Err(Error::config(
                    "import",
                    format!(
                        "the lease row of {shard_id} is malformed ({why}): repair or delete it first"
                    ),
                ));
            }
            None => steps.push(Step::Create(lease.clone())),
        }
    }
    sort_parents_first(&mut steps, &parents);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str]) -> Shard {
        Shard {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            starting_hash_key: "0".into(),
            ending_hash_key: "9".into(),
            starting_sequence_number: "1".into(),
            ending_sequence_number: None,
        }
    }

    fn row(id: &str, counter: u64, checkpoint: Checkpoint, owner: Option<&str>) -> Row {
        Row::Lease(Lease {
            owner: owner.map(str::to_owned),
            counter,
            checkpoint,
            ..new_lease(&shard(id, &[]), Checkpoint::TrimHorizon)
        })
    }

    fn at(seq: &str) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse(seq).unwrap(),
            sub_sequence_number: 0,
        })
    }

    const P: &str = "shardId-000000000000";
    const C1: &str = "shardId-000000000001";
    const C2: &str = "shardId-000000000002";
    const GONE: &str = "shardId-000000000009";

    /// A split of P into C1 and C2; P's finished lease deleted, C1 read
    /// to 50 by w1, C2 unread.
    fn resharded() -> (Vec<Row>, Vec<Shard>) {
        let rows = vec![
            row(C1, 7, at("50"), Some("w1")),
            row(C2, 3, Checkpoint::TrimHorizon, None),
        ];
        let listing = vec![shard(P, &[GONE]), shard(C1, &[P]), shard(C2, &[P])];
        (rows, listing)
    }

    fn ids(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(Step::shard_id).collect()
    }

    #[test]
    fn a_reset_into_the_past_recreates_the_parent_first_and_names_what_is_gone() {
        let (rows, listing) = resharded();
        let (steps, past) = plan(&rows, &listing, &ResetTo::TrimHorizon, &[], UNIX_EPOCH).unwrap();
        assert_eq!(ids(&steps), [P, C1, C2], "parent before children");
        match &steps[0] {
            Step::Create(lease) => {
                assert_eq!(lease.checkpoint, Checkpoint::TrimHorizon);
                assert_eq!(lease.parents, [GONE]);
                assert_eq!(lease.owner, None);
            }
            other => panic!("{other:?}"),
        }
        match &steps[1] {
            Step::Reset {
                counter,
                from,
                owner,
                to,
                ..
            } => {
                assert_eq!(
                    (*counter, from, owner.as_deref()),
                    (7, &at("50"), Some("w1"))
                );
                assert_eq!(to, &Checkpoint::TrimHorizon);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(past, [GONE]);
    }

    #[test]
    fn a_reset_to_latest_leaves_finished_shards_and_creates_nothing() {
        let (mut rows, listing) = resharded();
        rows.push(row(P, 2, Checkpoint::ShardEnd, None));
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let (steps, past) = plan(&rows, &listing, &ResetTo::Latest, &[], now).unwrap();
        assert_eq!(ids(&steps), [C1, C2]);
        assert!(past.is_empty());
        assert_eq!(steps[0].change().to, Checkpoint::AtTimestamp(Some(now)));
    }

    #[test]
    fn rows_the_stream_no_longer_lists_are_past_retention() {
        let (mut rows, listing) = resharded();
        rows.push(row(GONE, 1, at("9"), None));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (steps, past) = plan(&rows, &listing, &ResetTo::AtTimestamp(t), &[], t).unwrap();
        assert!(!ids(&steps).contains(&GONE));
        assert_eq!(past, [GONE]);
        assert!(
            steps
                .iter()
                .all(|s| s.change().to == Checkpoint::AtTimestamp(Some(t)))
        );
    }

    #[test]
    fn only_the_named_shards_move_and_unknown_ones_are_refused() {
        let (rows, listing) = resharded();
        let only = [C2.to_owned()];
        let (steps, _) = plan(&rows, &listing, &ResetTo::TrimHorizon, &only, UNIX_EPOCH).unwrap();
        assert_eq!(ids(&steps), [C2]);
        let unknown = ["shardId-000000000042".to_owned()];
        let error = plan(&rows, &listing, &ResetTo::TrimHorizon, &unknown, UNIX_EPOCH).unwrap_err();
        assert!(
            error.to_string().contains("shardId-000000000042"),
            "{error}"
        );
    }

    #[test]
    fn after_sequence_needs_exactly_one_shard() {
        let (rows, listing) = resharded();
        let to: ResetTo = "after-sequence 123/4".parse().unwrap();
        let error = plan(&rows, &listing, &to, &[], UNIX_EPOCH).unwrap_err();
        assert!(error.to_string().contains("exactly that shard"), "{error}");
        let (steps, _) = plan(&rows, &listing, &to, &[C1.to_owned()], UNIX_EPOCH).unwrap();
        let expected = Checkpoint::At(ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse("123").unwrap(),
            sub_sequence_number: 4,
        });
        assert_eq!(steps[0].change().to, expected);
    }

    #[test]
    fn reset_positions_parse_and_bad_ones_say_what_is_wrong() {
        assert_eq!(
            "trim-horizon".parse::<ResetTo>().unwrap(),
            ResetTo::TrimHorizon
        );
        assert_eq!("latest".parse::<ResetTo>().unwrap(), ResetTo::Latest);
        let t = "at-timestamp 2024-05-01T12:00:00Z"
            .parse::<ResetTo>()
            .unwrap();
        assert_eq!(
            t,
            ResetTo::AtTimestamp(UNIX_EPOCH + Duration::from_secs(1_714_564_800))
        );
        for bad in [
            "yesterday",
            "at-timestamp 2024-05-01",
            "after-sequence x",
            "latest now",
        ] {
            let error = bad.parse::<ResetTo>().unwrap_err().to_string();
            assert!(error.contains("reset"), "{bad}: {error}");
        }
    }

    #[test]
    fn an_export_imports_as_the_same_leases_parents_first() {
        let (rows, _) = resharded();
        let exported: Vec<Exported> = rows
            .iter()
            .filter_map(Row::lease)
            .map(Exported::of)
            .collect();
        let json = serde_json::to_string(&exported).unwrap();
        let back: Vec<Exported> = serde_json::from_str(&json).unwrap();
        let leases: Vec<Lease> = back.iter().map(|e| e.lease().unwrap()).collect();
        // Into an empty table: every lease created, unowned.
        let steps = import_steps(&[], leases.clone()).unwrap();
        assert_eq!(ids(&steps), [C1, C2]);
        assert!(
            matches!(&steps[0], Step::Create(l) if l.checkpoint == at("50") && l.owner.is_none())
        );
        // Into the same table: nothing to change.
        assert!(import_steps(&rows, leases.clone()).unwrap().is_empty());
        // A malformed row is named, not written over.
        let malformed = [Row::Malformed {
            shard_id: C1.into(),
            why: "bad".into(),
        }];
        let error = import_steps(&malformed, leases).unwrap_err().to_string();
        assert!(error.contains(C1) && error.contains("malformed"), "{error}");
        let broken = Exported {
            checkpoint: "NOT_A_POSITION".into(),
            ..Exported::of(rows[0].lease().unwrap())
        };
        assert!(broken.lease().unwrap_err().contains("NOT_A_POSITION"));
    }

    fn orders() -> StreamIdentifier {
        StreamIdentifier::new("111122223333", "orders", 1_700_000_000).unwrap()
    }

    /// `resharded()` as the rows of `stream` in a multi-stream table.
    fn keyed_rows(stream: &StreamIdentifier) -> Vec<Row> {
        let (rows, _) = resharded();
        rows.into_iter()
            .map(|r| {
                let lease = r.lease().unwrap().clone();
                Row::Lease(Lease {
                    shard_id: stream.lease_key(&lease.shard_id),
                    ..lease
                })
            })
            .collect()
    }

    #[test]
    fn a_multi_stream_reset_moves_the_named_streams_leases_alone_keyed_by_it() {
        let (stream, former) = (
            orders(),
            StreamIdentifier::new("111122223333", "orders", 5).unwrap(),
        );
        let clicks = StreamIdentifier::new("111122223333", "clicks", 6).unwrap();
        let mut rows = keyed_rows(&stream);
        rows.extend(keyed_rows(&clicks));
        rows.extend(keyed_rows(&former));
        let (_, listing) = resharded();
        let (rows, listing, only) = scoped(rows, Some(&stream), &listing, &[]).unwrap();
        assert!(only.is_empty());
        let (steps, past) =
            plan(&rows, &listing, &ResetTo::TrimHorizon, &only, UNIX_EPOCH).unwrap();
        let key = |id: &str| stream.lease_key(id);
        assert_eq!(ids(&steps), [key(P), key(C1), key(C2)]);
        match &steps[0] {
            Step::Create(lease) => assert_eq!(lease.parents, [key(GONE)]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            past,
            [key(GONE)],
            "the other streams' rows are not past retention"
        );
        // A shard named bare or by its lease key.
        let (_, listing) = resharded();
        for named in [C2.to_owned(), key(C2)] {
            let (rows, listing, only) =
                scoped(keyed_rows(&stream), Some(&stream), &listing, &[named]).unwrap();
            let (steps, _) =
                plan(&rows, &listing, &ResetTo::TrimHorizon, &only, UNIX_EPOCH).unwrap();
            assert_eq!(ids(&steps), [key(C2)]);
        }
    }

    #[test]
    fn a_reset_of_a_table_in_the_other_layout_is_refused() {
        let (single, listing) = resharded();
        let error = scoped(single, Some(&orders()), &listing, &[]).unwrap_err();
        assert!(error.to_string().contains("reset_positions"), "{error}");
        let error = scoped(keyed_rows(&orders()), None, &listing, &[]).unwrap_err();
        assert!(
            error.to_string().contains("reset_stream_positions"),
            "{error}"
        );
    }

    #[test]
    fn a_multi_stream_export_imports_and_layouts_do_not_mix() {
        let stream = orders();
        let rows = keyed_rows(&stream);
        let exported: Vec<Exported> = rows
            .iter()
            .filter_map(Row::lease)
            .map(Exported::of)
            .collect();
        let leases: Vec<Lease> = exported.iter().map(|e| e.lease().unwrap()).collect();
        let steps = import_steps(&[], leases.clone()).unwrap();
        assert_eq!(ids(&steps), [stream.lease_key(C1), stream.lease_key(C2)]);
        // Into a single-stream table: refused, naming both layouts.
        let (single, _) = resharded();
        let error = import_steps(&single, leases).unwrap_err().to_string();
        assert!(error.contains("different layouts"), "{error}");
        // A parent of another stream, or a key that is neither: not a lease.
        let other_parent = Exported {
            parents: vec![format!("111122223333:clicks:6:{P}")],
            ..Exported::of(rows[0].lease().unwrap())
        };
        assert!(other_parent.lease().is_err());
        let neither = Exported {
            shard_id: "a:b:shardId-000000000001".into(),
            ..Exported::of(rows[0].lease().unwrap())
        };
        assert!(neither.lease().is_err());
    }
}
