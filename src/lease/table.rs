//! The lease table: one DynamoDB row per shard, in the KCL's layout, and
//! one workers row where every worker writes its heartbeat.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use crate::aws::dynamodb::{
    AttributeValue, CreateTableOptions, DynamoDbClient, Expression, Item, TableDescription,
};
use crate::aws::kinesis::{is_valid_shard_id, shown_id};
use crate::error::{Error, Result};
use crate::lease::plan::Row;
use crate::lease::{Checkpoint, Lease};
use crate::metrics::LeaseLoad;
use crate::stream::{shard_id_of, split_lease_key};
use crate::sync::lock;

pub(super) const KEY: &str = "leaseKey";
/// Our own attribute (the KCL ignores it): the worker that asked the owner
/// to hand the lease over.
const HANDOFF: &str = "handoffTo";

/// Our own attribute (the KCL ignores it): where an AT_TIMESTAMP checkpoint
/// starts, in milliseconds since the epoch.
const TIMESTAMP: &str = "checkpointTimestamp";

/// The lease's bytes read per second, in KB (1,024 bytes) per second: the
/// KCL 3's attribute and unit (its `LeaseStatsRecorder` measures it and its
/// lease renewals write it), so a KCL 3 worker reading our table, and we
/// reading its, see the same figure.
const THROUGHPUT: &str = "throughputKBps";
/// Our own load attributes (the KCL ignores them): records read per
/// second and the handler's busy seconds per second.
const LOAD_RECORDS: &str = "loadRecordsPerSecond";
const LOAD_BUSY: &str = "loadBusyFraction";

/// The start of every key of ours that is not a lease (no shard id has a
/// `:`, and a multi-stream lease key starts with an account id).
pub(super) const OURS: &str = "kinesis-consumer:";
/// The key of the workers row: one row beside the leases (its
/// `entityType` is not `LEASE`, so the KCL's readers and ours skip it as a
/// lease) where every worker writes its heartbeat.
pub(crate) const WORKERS_KEY: &str = "kinesis-consumer:workers";
const WORKERS_TYPE: &str = "WORKERS";
/// Attribute prefixes in the workers row: a worker's heartbeat, and its
/// inbox, a number other workers bump to make it read the lease table.
const BEAT: &str = "beat:";
const INBOX: &str = "inbox:";
/// A worker's `max_leases_per_worker`, for the workers with one: the
/// others' shares are computed around it.
const CAP: &str = "cap:";
/// Bumped to make every worker read the lease table.
const VERSION: &str = "version";

/// The workers row as a heartbeat left it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Workers {
    /// Each worker's last heartbeat number.
    pub beats: BTreeMap<String, u64>,
    /// Each worker's inbox count (missing: never bumped).
    pub inboxes: BTreeMap<String, u64>,
    /// The count bumped when every worker should read the table.
    pub version: u64,
    /// The most leases each capped worker may hold.
    pub caps: BTreeMap<String, u64>,
}

/// One heartbeat to write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Beat<'a> {
    /// The worker's id.
    pub worker: &'a str,
    /// The heartbeat's number.
    pub number: u64,
    /// The number of this worker's last heartbeat that landed, or of its
    /// first attempt while none has (`None`: no condition): the row must
    /// hold no beat of ours or one of ours since.
    pub since: Option<u64>,
    /// Until the worker's first heartbeat landed: the beat the start-up
    /// check saw under its id (a predecessor's that stood still), which
    /// it may replace too. Any other beat there is a live process's that
    /// started meanwhile under the same id.
    pub over: Option<u64>,
    /// The worker's cap, if it has one.
    pub cap: Option<u64>,
}

impl Beat<'_> {
    /// The condition of this heartbeat's write of the beat attribute
    /// `attribute`: no beat there, one of ours since `since`, or the one it
    /// may replace.
    pub(crate) fn condition(&self, attribute: &str) -> Option<Expression> {
        let since = self.since?;
        let mut text =
            String::from("attribute_not_exists(#beat) OR #beat BETWEEN :since AND :beat");
        if self.over.is_some() {
            text.push_str(" OR #beat = :over");
        }
        let mut condition = Expression::new(text)
            .name("#beat", attribute)
            .value(":since", n(since))
            .value(":beat", n(self.number));
        if let Some(over) = self.over {
            condition = condition.value(":over", n(over));
        }
        Some(condition)
    }

    /// True when this heartbeat may replace the beat `there` (see
    /// [`condition`](Self::condition)), as the simulated tables judge it.
    #[cfg(any(test, feature = "simulation"))]
    pub(crate) fn may_replace(&self, there: Option<u64>) -> bool {
        match (self.since, there) {
            (Some(since), Some(there)) => {
                (since..=self.number).contains(&there) || self.over == Some(there)
            }
            _ => true,
        }
    }
}

impl Workers {
    pub(crate) fn parse(item: &Item) -> Workers {
        let mut workers = Workers::default();
        for (name, value) in item {
            let Some(number) = value.as_n().and_then(parse_counter) else {
                continue;
            };
            if let Some(id) = name.strip_prefix(BEAT) {
                workers.beats.insert(id.to_owned(), number);
            } else if let Some(id) = name.strip_prefix(INBOX) {
                workers.inboxes.insert(id.to_owned(), number);
            } else if let Some(id) = name.strip_prefix(CAP) {
                workers.caps.insert(id.to_owned(), number);
            } else if name == VERSION {
                workers.version = number;
            }
        }
        workers
    }
}

/// What a conditional write left in a lease row.
#[derive(Debug)]
pub(crate) struct Written {
    /// The lease counter after the write.
    pub counter: u64,
}

/// What a conditional write leaves in the row when it lands: the owner
/// (none for a release to nobody), the counter, and for a checkpoint its
/// columns.
struct After<'a> {
    owner: Option<&'a str>,
    counter: u64,
    checkpoint: Option<(&'a str, u64)>,
}

/// The error of a worker that finds another live process writing
/// heartbeats under its id: both would take the same leases back and
/// forth, each delivering records the other already did.
pub(crate) fn namesake_error(worker: &str) -> Error {
    Error::config(
        "worker_id",
        format!(
            "another live process writes heartbeats as worker {worker:?} in this lease table (a copied configuration, or a restarted process whose predecessor still runs); give each process its own worker id"
        ),
    )
}

/// An update of the workers row, `rest` after its entity type: every
/// write names the type, so that a write that recreates a deleted row
/// (UpdateItem creates what is missing) never leaves a row that reads as
/// a lease.
fn workers_row_update(rest: &str) -> Expression {
    Expression::new(format!("SET #type = :type{rest}"))
        .name("#type", "entityType")
        .value(":type", s(WORKERS_TYPE))
}

/// True for a lease row: none of our other items (the workers row, a
/// worker's item, the lock item: even one an operator rewrote without its
/// type), and no other entity of the KCL's.
pub(super) fn is_lease_item(item: &Item) -> bool {
    !item
        .get(KEY)
        .and_then(AttributeValue::as_s)
        .is_some_and(|k| k.starts_with(OURS))
        && item
            .get("entityType")
            .is_none_or(|t| t.as_s() == Some("LEASE"))
}

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(super) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn key(shard_id: &str) -> Item {
    HashMap::from([(KEY.to_owned(), s(shard_id))])
}

/// The condition "this worker holds the lease and nobody touched it since
/// we last wrote `counter`".
fn held_by(owner: &str, counter: u64) -> Expression {
    Expression::new("#owner = :owner AND #counter = :counter")
        .name("#owner", "leaseOwner")
        .name("#counter", "leaseCounter")
        .value(":owner", s(owner))
        .value(":counter", n(counter))
}

/// The largest counter we accept: the KCL keeps counters in a Java `long`.
const MAX_COUNTER: u64 = i64::MAX as u64;

/// The counter a write leaves after `counter`. At the top it wraps to 1:
/// every condition only asks whether the counter moved, and a counter past
/// `MAX_COUNTER` would make the row malformed for us and the KCL.
pub(crate) fn next_counter(counter: u64) -> u64 {
    if counter >= MAX_COUNTER {
        1
    } else {
        counter + 1
    }
}

pub(super) fn parse_counter(text: &str) -> Option<u64> {
    text.parse().ok().filter(|c| *c <= MAX_COUNTER)
}

/// What a write left in the row it returned.
fn written(operation: &'static str, item: &Item) -> Result<Written> {
    Ok(Written {
        counter: counter_of(operation, item)?,
    })
}

/// Reads the counter a write left behind.
fn counter_of(operation: &'static str, item: &Item) -> Result<u64> {
    item.get("leaseCounter")
        .and_then(AttributeValue::as_n)
        .and_then(parse_counter)
        .ok_or_else(|| Error::Decode {
            operation,
            message: "the lease has no numeric leaseCounter".into(),
        })
}

/// Why a row of the table is not a lease we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MalformedRow {
    /// No string `leaseKey`.
    NoKey,
    /// `checkpoint` is there but not a string.
    CheckpointNotString,
    /// A counter column that is not a whole number up to 2^63 - 1.
    NotACounter(&'static str),
    /// `checkpointTimestamp` is not a number of milliseconds.
    BadTimestamp,
    /// A checkpoint that is neither a sequence number nor a known position.
    UnknownCheckpoint(String),
    /// A column (`leaseKey`, `parentShardId`, `childShardIds`) holding
    /// something that is not a shard id.
    NotAShardId(&'static str),
}

impl std::fmt::Display for MalformedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MalformedRow::NoKey => write!(f, "{KEY} is missing or not a string"),
            MalformedRow::CheckpointNotString => f.write_str("checkpoint is not a string"),
            MalformedRow::NotACounter(name) => {
                write!(f, "{name} is not a whole number up to 2^63 - 1")
            }
            MalformedRow::BadTimestamp => {
                write!(f, "{TIMESTAMP} is not a number of milliseconds")
            }
            MalformedRow::UnknownCheckpoint(text) => write!(
                f,
                "checkpoint {text:?} is neither a sequence number nor a known position"
            ),
            MalformedRow::NotAShardId(name) => write!(
                f,
                "{name} holds something that is not a shard id (1 to 128 letters, digits, '_', '.' or '-')"
            ),
        }
    }
}

/// The load a checkpoint left on a row; `None` for a row without one (an
/// old row, or one only the KCL 2 wrote) and for one whose figures are
/// not finite, non-negative numbers. A bad load is ignored rather than
/// making the row malformed: a malformed row is never taken, so its shard
/// would go unread, while a missing load only costs the balancer one
/// estimate. A row the KCL 3 wrote has bytes alone: its records and busy
/// time read as 0.
fn parse_load(item: &Item) -> Option<LeaseLoad> {
    let rate = |name: &str| -> Option<Option<f64>> {
        match item.get(name) {
            None => Some(None),
            Some(v) => v
                .as_n()
                .and_then(|text| text.parse::<f64>().ok())
                .filter(|r| r.is_finite() && *r >= 0.0)
                .map(Some),
        }
    };
    let kb_per_second = rate(THROUGHPUT)??;
    Some(LeaseLoad {
        bytes_per_second: kb_per_second * 1024.0,
        records_per_second: rate(LOAD_RECORDS)?.unwrap_or(0.0),
        busy_fraction: rate(LOAD_BUSY)?.unwrap_or(0.0),
    })
}

/// A rate as a DynamoDB number, to `places` decimals: enough for a
/// balancer, and it keeps the row small.
fn rate_value(rate: f64, places: usize) -> AttributeValue {
    let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    AttributeValue::N(format!("{rate:.places$}"))
}

/// Shard ids as a row stores them: bare, in either layout.
fn bare(keys: &[String]) -> Vec<String> {
    keys.iter().map(|k| shard_id_of(k).to_owned()).collect()
}

/// The lease a row holds, or why it holds none.
pub(crate) fn parse_lease(item: &Item) -> std::result::Result<Lease, MalformedRow> {
    let text = |name: &str| item.get(name).and_then(AttributeValue::as_s);
    let number = |name: &'static str| -> std::result::Result<u64, MalformedRow> {
        match item.get(name) {
            None | Some(AttributeValue::NULL(_)) => Ok(0),
            Some(v) => v
                .as_n()
                .and_then(parse_counter)
                .ok_or(MalformedRow::NotACounter(name)),
        }
    };
    let set = |name: &str| {
        item.get(name)
            .and_then(AttributeValue::as_ss)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    };
    let shard_id = text(KEY).ok_or(MalformedRow::NoKey)?.to_owned();
    // A multi-stream row (the KCL 3's layout) names its parents and
    // children by bare shard id; inside this library every shard is named
    // by its lease key, so they are keyed with the row's stream.
    let stream = split_lease_key(&shard_id).map(|(stream, _)| stream);
    // Shard ids from the table name files, metrics and log lines: each is
    // checked as ids from Kinesis are.
    for (name, ids) in [
        (KEY, vec![shard_id_of(&shard_id).to_owned()]),
        ("parentShardId", set("parentShardId")),
        ("childShardIds", set("childShardIds")),
    ] {
        if !ids.iter().all(|id| is_valid_shard_id(id)) {
            return Err(MalformedRow::NotAShardId(name));
        }
    }
    let keyed = |ids: Vec<String>| match &stream {
        Some(stream) => ids.iter().map(|id| stream.lease_key(id)).collect(),
        None => ids,
    };
    let checkpoint_text = match item.get("checkpoint") {
        None | Some(AttributeValue::NULL(_)) => "TRIM_HORIZON",
        Some(v) => v.as_s().ok_or(MalformedRow::CheckpointNotString)?,
    };
    let timestamp = match item.get(TIMESTAMP) {
        None => None,
        Some(v) => Some(
            v.as_n()
                .and_then(|t| t.parse::<u64>().ok())
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                .ok_or(MalformedRow::BadTimestamp)?,
        ),
    };
    let checkpoint = Checkpoint::from_columns(
        checkpoint_text,
        number("checkpointSubSequenceNumber")?,
        timestamp,
    )
    .ok_or_else(|| MalformedRow::UnknownCheckpoint(checkpoint_text.to_owned()))?;
    Ok(Lease {
        shard_id,
        owner: text("leaseOwner").map(str::to_owned),
        handoff_to: text(HANDOFF).map(str::to_owned),
        counter: number("leaseCounter")?,
        checkpoint,
        owner_switches_since_checkpoint: number("ownerSwitchesSinceCheckpoint")?,
        parents: keyed(set("parentShardId")),
        children: keyed(set("childShardIds")),
        hash_range: text("startingHashKey")
            .zip(text("endingHashKey"))
            .map(|(a, b)| (a.to_owned(), b.to_owned())),
        load: parse_load(item),
    })
}

/// How the lease table is billed, when this library creates it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BillingMode {
    /// On-demand (`PAY_PER_REQUEST`): billed per request, no capacity to
    /// plan. The default.
    #[default]
    OnDemand,
    /// Provisioned (`PROVISIONED`) with these read and write capacity units
    /// per second (each at least 1).
    Provisioned {
        /// Read capacity units.
        read_capacity_units: u64,
        /// Write capacity units.
        write_capacity_units: u64,
    },
}

/// The lease table's name and how to create it (see the builder's
/// `lease_table_*` settings for the defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableOptions {
    /// The table name; empty in the builder until resolved to the
    /// application name.
    pub name: String,
    pub billing: BillingMode,
    pub tags: Vec<(String, String)>,
    pub point_in_time_recovery: bool,
    pub deletion_protection: bool,
}

/// What is wrong with an existing table's key schema for a lease table,
/// if anything.
fn schema_problem(description: &TableDescription) -> Option<String> {
    let hash = description.hash_key.as_deref();
    let problem = if hash.is_some_and(|h| h != KEY) {
        format!("its hash key is {:?}", hash.unwrap_or_default())
    } else if let Some(range) = &description.range_key {
        format!("it also has the sort key {range:?}")
    } else if let Some(t) = description.hash_key_type.as_deref().filter(|t| *t != "S") {
        format!("its hash key {KEY:?} is of type {t}")
    } else {
        return None;
    };
    Some(problem)
}

/// The lease table of one application.
#[derive(Clone, Debug)]
pub(crate) struct LeaseTable {
    dynamodb: DynamoDbClient,
    name: String,
    options: TableOptions,
    /// Set when this worker created the table and point-in-time recovery
    /// is still to be turned on (once the table is active).
    recovery_pending: Arc<Mutex<bool>>,
    /// Malformed rows already warned about (key and reason): each is
    /// logged once, not at every read of the table.
    malformed: Arc<Mutex<HashSet<String>>>,
}

impl LeaseTable {
    pub(crate) fn new(dynamodb: DynamoDbClient, name: &str) -> LeaseTable {
        LeaseTable::with_options(
            dynamodb,
            &TableOptions {
                name: name.to_owned(),
                ..TableOptions::default()
            },
        )
    }

    /// The table `options.name`, created as `options` say if it is missing.
    pub(crate) fn with_options(dynamodb: DynamoDbClient, options: &TableOptions) -> LeaseTable {
        LeaseTable {
            dynamodb,
            name: options.name.clone(),
            options: options.clone(),
            recovery_pending: Arc::default(),
            malformed: Arc::default(),
        }
    }

    /// Creates the table if it does not exist. A table still being created
    /// is [`Error::NotReady`]: startup waits that out (and can be stopped
    /// meanwhile). An existing table is used as it is (its billing, tags and
    /// backups are left alone), but only if its key schema is a lease
    /// table's: the string hash key `leaseKey` and no sort key.
    pub(crate) fn ensure_exists(&self) -> Result<()> {
        let description = match self.dynamodb.describe_table(&self.name) {
            Err(e) if e.code() == Some("ResourceNotFoundException") => {
                log::info!("creating lease table {}", self.name);
                let o = &self.options;
                let mut create = CreateTableOptions::default();
                if let BillingMode::Provisioned {
                    read_capacity_units,
                    write_capacity_units,
                } = o.billing
                {
                    create.provisioned = Some((read_capacity_units, write_capacity_units));
                }
                create.tags = o.tags.clone();
                create.deletion_protection = o.deletion_protection;
                match self.dynamodb.create_table_with(&self.name, KEY, &create) {
                    Err(e) if e.code() != Some("ResourceInUseException") => return Err(e),
                    Err(_) => {}
                    Ok(()) => *lock(&self.recovery_pending) = o.point_in_time_recovery,
                }
                self.dynamodb.describe_table(&self.name)?
            }
            other => other?,
        };
        if description.table_status != "ACTIVE" {
            return Err(Error::NotReady(format!(
                "lease table {} is {}",
                self.name, description.table_status
            )));
        }
        if let Some(problem) = schema_problem(&description) {
            return Err(Error::config(
                "lease_table_name",
                format!(
                    "table {} exists but {problem}: a lease table has the string (S) hash key {KEY:?} and no sort key; choose another lease_table_name (or app_name), or delete the table",
                    self.name
                ),
            ));
        }
        // Only backups can be turned on once the table is active.
        if *lock(&self.recovery_pending) {
            self.dynamodb
                .set_point_in_time_recovery(&self.name, true)
                .map_err(|e| {
                    if e.may_pass() {
                        // Startup retries it; still pending.
                        return e;
                    }
                    Error::config(
                        "lease_table_point_in_time_recovery",
                        format!(
                            "lease table {} was created, but turning point-in-time recovery on failed (turn it on yourself, or give the consumer dynamodb:UpdateContinuousBackups): {e}",
                            self.name
                        ),
                    )
                })?;
            *lock(&self.recovery_pending) = false;
            log::info!("point-in-time recovery on for lease table {}", self.name);
        }
        Ok(())
    }

    /// The rows of lease items: leases, and malformed rows with what is
    /// wrong with them (each warned about once).
    pub(super) fn lease_rows<'a>(&self, items: impl Iterator<Item = &'a Item>) -> Vec<Row> {
        let mut rows = Vec::new();
        for item in items {
            match parse_lease(item) {
                Ok(lease) => rows.push(Row::Lease(lease)),
                Err(why) => {
                    // A key that is no shard id is logged and shown quoted
                    // and escaped, never as it is.
                    let shard_id = match item.get(KEY).and_then(AttributeValue::as_s) {
                        Some(id) if is_valid_shard_id(id) => id.to_owned(),
                        Some(id) => shown_id(id),
                        None => "?".to_owned(),
                    };
                    let first = lock(&self.malformed).insert(format!("{shard_id}: {why}"));
                    if first {
                        log::warn!(
                            "lease table {}: malformed row {shard_id}: {why}; it is never taken, and its children wait until it is repaired or deleted (logged once)",
                            self.name
                        );
                    }
                    rows.push(Row::Malformed {
                        shard_id,
                        why: why.to_string(),
                    });
                }
            }
        }
        self.forget_repaired(&rows);
        rows
    }

    /// The DynamoDB client and the table's name, for the items of a
    /// leader-run fleet ([`members`](super::members)).
    pub(super) fn client(&self) -> (&DynamoDbClient, &str) {
        (&self.dynamodb, &self.name)
    }

    /// Forgets malformed rows no longer in the table, so the set of rows
    /// warned about does not grow for ever.
    fn forget_repaired(&self, rows: &[Row]) {
        lock(&self.malformed).retain(|warned| {
            rows.iter()
                .any(|r| matches!(r, Row::Malformed { shard_id, why } if *warned == format!("{shard_id}: {why}")))
        });
    }
}

/// The lease table's operations, as the coordinator and held leases use
/// them: DynamoDB in production, an in-memory table in the simulation.
/// Every write on a lease is conditional on what the caller last saw.
pub(crate) trait LeaseStore: crate::lease::members::MemberStore {
    /// Creates the table if it does not exist; [`Error::NotReady`] while
    /// it is being created.
    fn ensure_exists(&self) -> Result<()>;

    /// Every row: leases, and malformed rows with what is wrong with them
    /// (never taken, never a finished parent). Rows of other entity types
    /// are left out. `consistent` false may return a slightly stale table
    /// at half the price.
    fn list(&self, consistent: bool) -> Result<Vec<Row>>;

    /// Writes a heartbeat (and the worker's cap) in the workers row and
    /// returns the row as it is afterwards (a strongly consistent read,
    /// free with the write). After the first (`since` `None`), only if the
    /// row holds no beat of the worker or one of ours, `since` to this one
    /// (a retry, a lost reply); another beat there means another live
    /// process writes heartbeats under this id: [`namesake_error`].
    fn heartbeat(&self, beat: &Beat<'_>) -> Result<Workers>;

    /// The workers row as it is now (empty if there is none).
    fn workers(&self) -> Result<Workers>;

    /// Bumps `worker`'s inbox, or with `None` the version every worker
    /// watches: they read the lease table at their next heartbeat.
    fn notify(&self, worker: Option<&str>) -> Result<()>;

    /// Takes `worker` out of the workers row: a dead worker's if its
    /// heartbeat is still `seen_beat`; our own (`None`) as we leave.
    fn forget_worker(&self, worker: &str, seen_beat: Option<u64>) -> Result<()>;

    /// Creates a lease unless a row exists for the shard; true if created.
    fn create(&self, lease: &Lease) -> Result<bool>;

    /// Records a shard's children on its lease.
    fn set_children(&self, shard_id: &str, children: &[String]) -> Result<()>;

    /// Takes a lease that was seen with `seen_counter`; the new counter, or
    /// `None` when someone else touched it first.
    fn take(&self, shard_id: &str, seen_counter: u64, owner: &str) -> Result<Option<Written>>;

    /// Asks the owner of a lease seen with `seen_counter` to hand it to
    /// `to` once its batch in flight is checkpointed; false when the lease
    /// changed meanwhile or another worker asked for it first (asks never
    /// overwrite each other, so no asker waits for a lease promised to
    /// another).
    fn request_handoff(
        &self,
        shard_id: &str,
        owner: &str,
        seen_counter: u64,
        to: &str,
    ) -> Result<bool>;

    /// Writes a checkpoint on a held lease, and with it the lease's `load`
    /// when it is known (in the same write); `None` if it is no longer
    /// ours (and so nothing was written).
    fn checkpoint(
        &self,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
        load: Option<LeaseLoad>,
    ) -> Result<Option<Written>>;

    /// Gives a held lease up: to the worker `to` that asked for it, or to
    /// whoever takes it first. Either way no one waits for it to expire.
    fn release(
        &self,
        shard_id: &str,
        owner: &str,
        counter: u64,
        to: Option<&str>,
    ) -> Result<Option<Written>>;

    /// Deletes the lease of a finished shard.
    fn delete_finished(&self, shard_id: &str) -> Result<()>;

    /// Deletes the lease of a shard the stream no longer has, if its counter
    /// is still `seen_counter` (nobody took it meanwhile).
    fn delete_gone(&self, shard_id: &str, seen_counter: u64) -> Result<()>;
}

impl LeaseStore for LeaseTable {
    fn ensure_exists(&self) -> Result<()> {
        LeaseTable::ensure_exists(self)
    }

    fn list(&self, consistent: bool) -> Result<Vec<Row>> {
        let items = self.dynamodb.scan_with(&self.name, consistent)?;
        Ok(self.lease_rows(items.iter().filter(|item| is_lease_item(item))))
    }

    fn create(&self, lease: &Lease) -> Result<bool> {
        let mut item = key(&lease.shard_id);
        let (checkpoint, sub) = lease.checkpoint.to_columns();
        item.insert("leaseCounter".into(), n(lease.counter));
        item.insert("checkpoint".into(), s(checkpoint));
        item.insert("checkpointSubSequenceNumber".into(), n(sub));
        item.insert("ownerSwitchesSinceCheckpoint".into(), n(0));
        if let Checkpoint::AtTimestamp(Some(t)) = lease.checkpoint {
            let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            item.insert(TIMESTAMP.into(), n(ms));
        }
        if !lease.parents.is_empty() {
            item.insert(
                "parentShardId".into(),
                AttributeValue::SS(bare(&lease.parents)),
            );
        }
        // The KCL 3 reads a multi-stream row's stream and shard from
        // these two attributes.
        if let Some((stream, shard_id)) = split_lease_key(&lease.shard_id) {
            item.insert("streamName".into(), s(&stream.to_string()));
            item.insert("shardId".into(), s(shard_id));
        }
        if let Some((start, end)) = &lease.hash_range {
            item.insert("startingHashKey".into(), s(start));
            item.insert("endingHashKey".into(), s(end));
        }
        let absent = Expression::new("attribute_not_exists(#key)").name("#key", KEY);
        match self.dynamodb.put_item(&self.name, &item, Some(&absent)) {
            Ok(()) => Ok(true),
            Err(e) if e.is_condition_failed() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn set_children(&self, shard_id: &str, children: &[String]) -> Result<()> {
        let update = Expression::new("SET #children = :children")
            .name("#children", "childShardIds")
            .value(":children", AttributeValue::SS(bare(children)));
        let exists = Expression::new("attribute_exists(#key)").name("#key", KEY);
        match self
            .dynamodb
            .update_item(&self.name, &key(shard_id), &update, Some(&exists))
        {
            Err(e) if !e.is_condition_failed() => Err(e),
            _ => Ok(()),
        }
    }

    fn take(&self, shard_id: &str, seen_counter: u64, owner: &str) -> Result<Option<Written>> {
        let update = Expression::new(
            "SET #owner = :owner, #counter = :next, #switches = if_not_exists(#switches, :zero) + :one REMOVE #handoff",
        )
        .name("#owner", "leaseOwner")
        .name("#counter", "leaseCounter")
        .name("#switches", "ownerSwitchesSinceCheckpoint")
        .name("#handoff", HANDOFF)
        .value(":owner", s(owner))
        .value(":next", n(next_counter(seen_counter)))
        .value(":zero", n(0))
        .value(":one", n(1));
        let unchanged = Expression::new("#counter = :seen")
            .name("#counter", "leaseCounter")
            .value(":seen", n(seen_counter));
        let after = After {
            owner: Some(owner),
            counter: next_counter(seen_counter),
            checkpoint: None,
        };
        self.conditional(shard_id, &update, &unchanged, Some(after))
    }

    fn request_handoff(
        &self,
        shard_id: &str,
        owner: &str,
        seen_counter: u64,
        to: &str,
    ) -> Result<bool> {
        let update = Expression::new("SET #handoff = :to")
            .name("#handoff", HANDOFF)
            .value(":to", s(to));
        let unasked = held_by(owner, seen_counter)
            .and("attribute_not_exists(#handoff) OR #handoff = :to")
            .name("#handoff", HANDOFF)
            .value(":to", s(to));
        // Moves no counter: a retry after a lost reply still meets the
        // condition.
        Ok(self
            .conditional(shard_id, &update, &unasked, None)?
            .is_some())
    }

    fn heartbeat(&self, beat: &Beat<'_>) -> Result<Workers> {
        let worker = beat.worker;
        let name = format!("{BEAT}{worker}");
        let update = match beat.cap {
            Some(cap) => workers_row_update(", #beat = :beat, #cap = :cap").value(":cap", n(cap)),
            None => workers_row_update(", #beat = :beat REMOVE #cap"),
        }
        .name("#beat", &name)
        .name("#cap", &format!("{CAP}{worker}"))
        .value(":beat", n(beat.number));
        let ours = beat.condition(&name);
        match self
            .dynamodb
            .update_item(&self.name, &key(WORKERS_KEY), &update, ours.as_ref())
        {
            Ok(item) => Ok(Workers::parse(&item)),
            Err(e) if e.is_condition_failed() => Err(namesake_error(worker)),
            Err(e) => Err(e),
        }
    }

    fn workers(&self) -> Result<Workers> {
        let item = self.dynamodb.get_item(&self.name, &key(WORKERS_KEY))?;
        Ok(item.map(|i| Workers::parse(&i)).unwrap_or_default())
    }

    fn notify(&self, worker: Option<&str>) -> Result<()> {
        let name = match worker {
            Some(worker) => format!("{INBOX}{worker}"),
            None => VERSION.to_owned(),
        };
        let update = workers_row_update(" ADD #count :one")
            .name("#count", &name)
            .value(":one", n(1));
        self.dynamodb
            .update_item(&self.name, &key(WORKERS_KEY), &update, None)
            .map(|_| ())
    }

    fn forget_worker(&self, worker: &str, seen_beat: Option<u64>) -> Result<()> {
        let update = workers_row_update(" REMOVE #beat, #inbox, #cap")
            .name("#beat", &format!("{BEAT}{worker}"))
            .name("#cap", &format!("{CAP}{worker}"))
            .name("#inbox", &format!("{INBOX}{worker}"));
        let unchanged = seen_beat.map(|seen| {
            Expression::new("#beat = :seen")
                .name("#beat", &format!("{BEAT}{worker}"))
                .value(":seen", n(seen))
        });
        match self
            .dynamodb
            .update_item(&self.name, &key(WORKERS_KEY), &update, unchanged.as_ref())
        {
            Err(e) if !e.is_condition_failed() => Err(e),
            _ => Ok(()),
        }
    }

    fn checkpoint(
        &self,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
        load: Option<LeaseLoad>,
    ) -> Result<Option<Written>> {
        let (text, sub) = checkpoint.to_columns();
        let set = "SET #checkpoint = :checkpoint, #sub = :sub, #switches = :zero, #counter = :next";
        let update = match load {
            // The load rides on the checkpoint: no write of its own.
            Some(load) => Expression::new(format!(
                "{set}, #throughput = :throughput, #records = :records, #busy = :busy"
            ))
            .name("#throughput", THROUGHPUT)
            .name("#records", LOAD_RECORDS)
            .name("#busy", LOAD_BUSY)
            .value(":throughput", rate_value(load.bytes_per_second / 1024.0, 3))
            .value(":records", rate_value(load.records_per_second, 3))
            .value(":busy", rate_value(load.busy_fraction, 4)),
            None => Expression::new(set),
        }
        .name("#checkpoint", "checkpoint")
        .name("#sub", "checkpointSubSequenceNumber")
        .name("#switches", "ownerSwitchesSinceCheckpoint")
        .name("#counter", "leaseCounter")
        .value(":checkpoint", s(text))
        .value(":sub", n(sub))
        .value(":zero", n(0))
        .value(":next", n(next_counter(counter)));
        let columns = Some((text, sub));
        self.write_held(shard_id, owner, counter, &update, Some(owner), columns)
    }

    fn release(
        &self,
        shard_id: &str,
        owner: &str,
        counter: u64,
        to: Option<&str>,
    ) -> Result<Option<Written>> {
        let update = match to {
            Some(to) => Expression::new(
                "SET #owner = :to, #counter = :next, #switches = if_not_exists(#switches, :zero) + :one REMOVE #handoff",
            )
            .value(":to", s(to))
            .value(":zero", n(0))
            .value(":one", n(1))
            .name("#switches", "ownerSwitchesSinceCheckpoint"),
            None => Expression::new("SET #counter = :next REMOVE #owner, #handoff"),
        }
        .name("#owner", "leaseOwner")
        .name("#counter", "leaseCounter")
        .name("#handoff", HANDOFF)
        .value(":next", n(next_counter(counter)));
        self.write_held(shard_id, owner, counter, &update, to, None)
    }

    fn delete_finished(&self, shard_id: &str) -> Result<()> {
        let finished = Expression::new("#checkpoint = :end")
            .name("#checkpoint", "checkpoint")
            .value(":end", s("SHARD_END"));
        match self
            .dynamodb
            .delete_item(&self.name, &key(shard_id), Some(&finished))
        {
            Err(e) if !e.is_condition_failed() => Err(e),
            _ => Ok(()),
        }
    }

    fn delete_gone(&self, shard_id: &str, seen_counter: u64) -> Result<()> {
        let unchanged = Expression::new("#counter = :seen")
            .name("#counter", "leaseCounter")
            .value(":seen", n(seen_counter));
        match self
            .dynamodb
            .delete_item(&self.name, &key(shard_id), Some(&unchanged))
        {
            Err(e) if !e.is_condition_failed() => Err(e),
            _ => Ok(()),
        }
    }
}

impl LeaseTable {
    /// Reads one row; `None` when it is missing or not a lease row.
    pub(crate) fn row(&self, shard_id: &str) -> Result<Option<Row>> {
        let Some(item) = self.dynamodb.get_item(&self.name, &key(shard_id))? else {
            return Ok(None);
        };
        if !is_lease_item(&item) {
            return Ok(None);
        }
        Ok(Some(match parse_lease(&item) {
            Ok(lease) => Row::Lease(lease),
            Err(why) => Row::Malformed {
                shard_id: shard_id.to_owned(),
                why: why.to_string(),
            },
        }))
    }

    /// Moves a lease's checkpoint to `checkpoint` if its counter is still
    /// `seen_counter`, and frees it: the counter moves on and the owner
    /// (and any handoff asked for) is removed. That is the fence: the
    /// owner's checkpoint writes, conditional on its owner and counter,
    /// all fail from then on, and its next read of the table finds the
    /// lease gone; whoever takes it next reads from `checkpoint`. False
    /// when the counter moved meanwhile (nothing written).
    pub(crate) fn reset(
        &self,
        shard_id: &str,
        seen_counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<bool> {
        let (text, sub) = checkpoint.to_columns();
        let timestamp = match checkpoint {
            Checkpoint::AtTimestamp(Some(t)) => {
                Some(t.duration_since(UNIX_EPOCH).unwrap_or_default())
            }
            _ => None,
        };
        let update = match timestamp {
            Some(t) => Expression::new(
                "SET #checkpoint = :checkpoint, #sub = :sub, #switches = :zero, #counter = :next, #ts = :ts REMOVE #owner, #handoff",
            )
            .value(":ts", n(t.as_millis() as u64)),
            None => Expression::new(
                "SET #checkpoint = :checkpoint, #sub = :sub, #switches = :zero, #counter = :next REMOVE #owner, #handoff, #ts",
            ),
        }
        .name("#checkpoint", "checkpoint")
        .name("#sub", "checkpointSubSequenceNumber")
        .name("#switches", "ownerSwitchesSinceCheckpoint")
        .name("#counter", "leaseCounter")
        .name("#owner", "leaseOwner")
        .name("#handoff", HANDOFF)
        .name("#ts", TIMESTAMP)
        .value(":checkpoint", s(text))
        .value(":sub", n(sub))
        .value(":zero", n(0))
        .value(":next", n(next_counter(seen_counter)));
        let unchanged = Expression::new("#counter = :seen")
            .name("#counter", "leaseCounter")
            .value(":seen", n(seen_counter));
        match self
            .dynamodb
            .update_item(&self.name, &key(shard_id), &update, Some(&unchanged))
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_condition_failed() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A write on a lease `owner` holds at `counter`: it moves the counter
    /// on and leaves `new_owner` (and a checkpoint's columns) in the row.
    fn write_held(
        &self,
        shard_id: &str,
        owner: &str,
        counter: u64,
        update: &Expression,
        new_owner: Option<&str>,
        checkpoint: Option<(&str, u64)>,
    ) -> Result<Option<Written>> {
        let after = After {
            owner: new_owner,
            counter: next_counter(counter),
            checkpoint,
        };
        self.conditional(shard_id, update, &held_by(owner, counter), Some(after))
    }

    /// A conditional update; `None` when the condition failed and the row
    /// does not show this very write (see [`LeaseTable::landed`]).
    fn conditional(
        &self,
        shard_id: &str,
        update: &Expression,
        condition: &Expression,
        after: Option<After<'_>>,
    ) -> Result<Option<Written>> {
        match self
            .dynamodb
            .update_item(&self.name, &key(shard_id), update, Some(condition))
        {
            Ok(item) => Ok(Some(written("UpdateItem", &item)?)),
            Err(e) if e.is_condition_failed() => match after {
                Some(after) => self.landed(shard_id, &after),
                None => Ok(None),
            },
            Err(e) => Err(e),
        }
    }

    /// After a failed condition: whether the row shows the write anyway.
    /// It does when an earlier attempt of the same request landed but its
    /// reply was lost, so the client's retry found the counter moved on;
    /// without this check a lost reply would cost the lease. Every write
    /// moves the counter, so only this write leaves this owner with this
    /// counter; a checkpoint must also find its columns.
    fn landed(&self, shard_id: &str, after: &After<'_>) -> Result<Option<Written>> {
        let Some(item) = self.dynamodb.get_item(&self.name, &key(shard_id))? else {
            return Ok(None);
        };
        let text = |name: &str| item.get(name).and_then(AttributeValue::as_s);
        let number = |name: &str| item.get(name).and_then(AttributeValue::as_n);
        let counter = counter_of("GetItem", &item).ok();
        let checkpoint_matches = after.checkpoint.is_none_or(|(checkpoint, sub)| {
            text("checkpoint") == Some(checkpoint)
                && number("checkpointSubSequenceNumber") == Some(sub.to_string().as_str())
        });
        if text("leaseOwner") != after.owner
            || counter != Some(after.counter)
            || !checkpoint_matches
        {
            return Ok(None);
        }
        log::debug!("lease {shard_id}: the write landed though its reply was lost");
        Ok(Some(written("GetItem", &item)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> Item {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_kcl_rows() {
        let lease = parse_lease(&item(
            r#"{"leaseKey":{"S":"shardId-000000000002"},"leaseOwner":{"S":"w1"},"leaseCounter":{"N":"7"},
                "checkpoint":{"S":"49590338271490256608559692538361571095921575989136588898"},
                "checkpointSubSequenceNumber":{"N":"3"},"ownerSwitchesSinceCheckpoint":{"N":"1"},
                "parentShardId":{"SS":["shardId-000000000000","shardId-000000000001"]},
                "startingHashKey":{"S":"0"},"endingHashKey":{"S":"99"}}"#,
        ))
        .unwrap();
        assert_eq!(lease.owner.as_deref(), Some("w1"));
        assert_eq!(lease.counter, 7);
        let Checkpoint::At(p) = &lease.checkpoint else {
            panic!("{:?}", lease.checkpoint)
        };
        assert_eq!(p.sub_sequence_number, 3);
        assert_eq!(lease.parents.len(), 2);
        assert_eq!(lease.hash_range, Some(("0".into(), "99".into())));
        let bare = parse_lease(&item(
            r#"{"leaseKey":{"S":"s"},"checkpoint":{"S":"SHARD_END"}}"#,
        ))
        .unwrap();
        assert_eq!(
            (bare.owner, bare.counter, bare.checkpoint),
            (None, 0, Checkpoint::ShardEnd)
        );
    }

    #[test]
    fn parses_kcl_3_multi_stream_rows_naming_parents_by_lease_key() {
        let lease = parse_lease(&item(
            r#"{"leaseKey":{"S":"123456789012:orders:1700000000:shardId-000000000002"},
                "streamName":{"S":"123456789012:orders:1700000000"},
                "shardId":{"S":"shardId-000000000002"},"leaseCounter":{"N":"2"},
                "checkpoint":{"S":"SHARD_END"},
                "parentShardId":{"SS":["shardId-000000000000"]},
                "childShardIds":{"SS":["shardId-000000000004"]}}"#,
        ))
        .unwrap();
        assert_eq!(
            lease.parents,
            ["123456789012:orders:1700000000:shardId-000000000000"]
        );
        assert_eq!(
            lease.children,
            ["123456789012:orders:1700000000:shardId-000000000004"]
        );
        // Written back bare, as the KCL writes them.
        assert_eq!(bare(&lease.parents), ["shardId-000000000000"]);
        let bad = item(r#"{"leaseKey":{"S":"1:orders:1:shard/1"}}"#);
        assert_eq!(
            parse_lease(&bad).unwrap_err(),
            MalformedRow::NotAShardId(KEY)
        );
    }

    #[test]
    fn at_timestamp_rows_keep_their_time() {
        let lease = parse_lease(&item(
            r#"{"leaseKey":{"S":"s"},"checkpoint":{"S":"AT_TIMESTAMP"},"checkpointTimestamp":{"N":"1700000000123"}}"#,
        ))
        .unwrap();
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(lease.checkpoint, Checkpoint::AtTimestamp(Some(t)));
        let kcl = parse_lease(&item(
            r#"{"leaseKey":{"S":"s"},"checkpoint":{"S":"AT_TIMESTAMP"}}"#,
        ))
        .unwrap();
        assert_eq!(kcl.checkpoint, Checkpoint::AtTimestamp(None));
        let bad = r#"{"leaseKey":{"S":"s"},"checkpoint":{"S":"AT_TIMESTAMP"},"checkpointTimestamp":{"S":"x"}}"#;
        assert_eq!(
            parse_lease(&item(bad)).unwrap_err(),
            MalformedRow::BadTimestamp
        );
    }

    #[test]
    fn a_row_s_load_is_read_in_the_kcl_3_s_unit_and_a_bad_one_is_ignored() {
        let row = |load: &str| item(&format!(r#"{{"leaseKey":{{"S":"s"}}{load}}}"#));
        let ours = parse_lease(&row(
            r#","throughputKBps":{"N":"2.5"},"loadRecordsPerSecond":{"N":"12.25"},"loadBusyFraction":{"N":"0.3"}"#,
        ))
        .unwrap();
        assert_eq!(
            ours.load,
            Some(LeaseLoad {
                bytes_per_second: 2560.0,
                records_per_second: 12.25,
                busy_fraction: 0.3,
            })
        );
        // The KCL 3 writes bytes alone.
        let kcl_3 = parse_lease(&row(r#","throughputKBps":{"N":"1"}"#)).unwrap();
        assert_eq!(
            kcl_3.load,
            Some(LeaseLoad {
                bytes_per_second: 1024.0,
                ..LeaseLoad::default()
            })
        );
        // Old rows and the KCL 2's: no load known.
        assert_eq!(parse_lease(&row("")).unwrap().load, None);
        // A bad figure leaves the load unknown, never the row malformed.
        for bad in [
            r#","throughputKBps":{"S":"2.5"}"#,
            r#","throughputKBps":{"N":"-1"}"#,
            r#","throughputKBps":{"N":"NaN"}"#,
            r#","throughputKBps":{"N":"inf"}"#,
            r#","throughputKBps":{"N":"1"},"loadBusyFraction":{"N":"x"}"#,
            r#","loadRecordsPerSecond":{"N":"3"}"#,
        ] {
            assert_eq!(parse_lease(&row(bad)).unwrap().load, None, "{bad}");
        }
    }

    #[test]
    fn rates_are_written_as_plain_numbers_dynamodb_accepts() {
        assert_eq!(rate_value(2.0 / 3.0, 3), AttributeValue::N("0.667".into()));
        assert_eq!(
            rate_value(1e12, 3),
            AttributeValue::N("1000000000000.000".into())
        );
        for odd in [f64::NAN, f64::INFINITY, -5.0] {
            assert_eq!(rate_value(odd, 4), AttributeValue::N("0.0000".into()));
        }
    }

    #[test]
    fn only_a_string_lease_key_without_a_sort_key_is_a_lease_table() {
        let table = |hash: &str, kind: &str, range: Option<&str>| TableDescription {
            table_name: "t".into(),
            table_status: "ACTIVE".into(),
            hash_key: Some(hash.into()),
            hash_key_type: Some(kind.into()),
            range_key: range.map(Into::into),
        };
        assert_eq!(schema_problem(&table(KEY, "S", None)), None);
        let wrong_name = schema_problem(&table("shardId", "S", None)).unwrap();
        assert!(wrong_name.contains("\"shardId\""), "{wrong_name}");
        let sort = schema_problem(&table(KEY, "S", Some("at"))).unwrap();
        assert!(sort.contains("sort key \"at\""), "{sort}");
        let number = schema_problem(&table(KEY, "N", None)).unwrap();
        assert!(number.contains("type N"), "{number}");
    }

    #[test]
    fn the_workers_row_is_never_a_lease_even_without_its_type() {
        let bare = item(r#"{"leaseKey":{"S":"kinesis-consumer:workers"},"version":{"N":"1"}}"#);
        assert!(!is_lease_item(&bare));
        let typed = item(r#"{"leaseKey":{"S":"x"},"entityType":{"S":"WORKERS"}}"#);
        assert!(!is_lease_item(&typed));
        let lease = item(r#"{"leaseKey":{"S":"shardId-1"},"checkpoint":{"S":"LATEST"}}"#);
        assert!(is_lease_item(&lease));
        let kcl = item(r#"{"leaseKey":{"S":"shardId-1"},"entityType":{"S":"LEASE"}}"#);
        assert!(is_lease_item(&kcl));
        assert!(
            workers_row_update(" ADD #count :one")
                .text
                .starts_with("SET #type")
        );
    }

    #[test]
    fn the_counter_wraps_before_it_leaves_the_kcl_range() {
        assert_eq!(next_counter(7), 8);
        assert_eq!(next_counter(MAX_COUNTER - 1), MAX_COUNTER);
        // The next write after 2^63 - 1 leaves a row both we and the KCL read.
        assert_eq!(next_counter(MAX_COUNTER), 1);
        let row = format!(
            r#"{{"leaseKey":{{"S":"s"}},"leaseCounter":{{"N":"{}"}}}}"#,
            next_counter(MAX_COUNTER)
        );
        assert_eq!(parse_lease(&item(&row)).unwrap().counter, 1);
    }

    #[test]
    fn rejects_malformed_rows_with_a_reason() {
        assert_eq!(
            parse_lease(&item(r#"{"leaseKey":{"N":"1"}}"#)).unwrap_err(),
            MalformedRow::NoKey
        );
        let counter = parse_lease(&item(r#"{"leaseKey":{"S":"s"},"leaseCounter":{"S":"x"}}"#));
        assert_eq!(
            counter.unwrap_err(),
            MalformedRow::NotACounter("leaseCounter")
        );
        let nonsense = parse_lease(&item(
            r#"{"leaseKey":{"S":"s"},"checkpoint":{"S":"nonsense"}}"#,
        ))
        .unwrap_err();
        assert_eq!(
            nonsense.to_string(),
            "checkpoint \"nonsense\" is neither a sequence number nor a known position"
        );
        for bad in [
            r#"{"leaseKey":{"S":"s"},"leaseCounter":{"N":"18446744073709551615"}}"#,
            r#"{"leaseKey":{"S":"s"},"leaseCounter":{"N":"9223372036854775808"}}"#,
            r#"{"leaseKey":{"S":"s"},"leaseCounter":{"N":"-1"}}"#,
            r#"{"leaseKey":{"S":"s"},"checkpoint":{"N":"12"}}"#,
            r#"{"leaseKey":{"S":"s"},"checkpoint":{"SS":["12"]}}"#,
        ] {
            assert!(parse_lease(&item(bad)).is_err(), "{bad}");
        }
        for (bad, column) in [
            (r#"{"leaseKey":{"S":"../x"}}"#, KEY),
            (r#"{"leaseKey":{"S":"/etc/passwd"}}"#, KEY),
            (r#"{"leaseKey":{"S":".."}}"#, KEY),
            (r#"{"leaseKey":{"S":"shard\u001b[2J"}}"#, KEY),
            (
                r#"{"leaseKey":{"S":"s"},"parentShardId":{"SS":["a/b"]}}"#,
                "parentShardId",
            ),
            (
                r#"{"leaseKey":{"S":"s"},"childShardIds":{"SS":["c","."]}}"#,
                "childShardIds",
            ),
        ] {
            assert_eq!(
                parse_lease(&item(bad)).unwrap_err(),
                MalformedRow::NotAShardId(column),
                "{bad}"
            );
        }
        let top = parse_lease(&item(
            r#"{"leaseKey":{"S":"s"},"leaseCounter":{"N":"9223372036854775807"}}"#,
        ))
        .unwrap();
        assert_eq!(top.counter, i64::MAX as u64);
        assert!(
            counter_of(
                "X",
                &item(r#"{"leaseCounter":{"N":"18446744073709551615"}}"#)
            )
            .is_err()
        );
    }
}
