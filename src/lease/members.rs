//! The items of a leader-run fleet (issue 25; the design and its
//! arithmetic are in docs/many-workers.md, "Thousands of workers"): one
//! item per worker, where only that worker writes its heartbeat, and the
//! lock item through which one worker leads. Both live in the lease table
//! under keys no shard has and with an `entityType` other than `LEASE`, so
//! the KCL's readers and ours never read them as leases. Each stays about
//! 100-200 B and is written a few times a period, where the workers row
//! grows with the fleet and takes every worker's heartbeat.
//!
//! The coordinator uses them under [`Coordination::Leader`]
//! (coordinator/led.rs).
//!
//! [`Coordination::Leader`]: crate::Coordination::Leader

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::aws::dynamodb::{AttributeValue, Expression, Item};
use crate::error::Result;
use crate::lease::plan::Row;
use crate::lease::table::{
    Beat, KEY, LeaseTable, OURS, WORKERS_KEY, Workers, is_lease_item, key, n, namesake_error,
    parse_counter, s,
};

/// The start of a worker item's key; the worker id follows.
pub(crate) const WORKER_PREFIX: &str = "kinesis-consumer:worker:";
/// The key of the lock item.
pub(crate) const LEADER_KEY: &str = "kinesis-consumer:leader";
const WORKER_TYPE: &str = "WORKER";
const LEADER_TYPE: &str = "LEADER";
/// A heartbeat number: the worker's in its item, the leader's in the lock.
const BEAT: &str = "beat";
const CAP: &str = "cap";
const HELD: &str = "held";
const FALLING_BEHIND: &str = "fallingBehind";
const TAKE: &str = "take";
const GIVE: &str = "give";
const UNREAD: &str = "unread";
const LEADER: &str = "leader";
const SUCCESSORS: &str = "successors";
const HALT: &str = "halt";
const ROUND_AT: &str = "roundAt";

/// A worker's item as its heartbeat left it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerItem {
    /// The worker's last heartbeat number.
    pub beat: u64,
    /// Its `max_leases_per_worker`, if it has one.
    pub cap: Option<u64>,
    /// How many leases it held as it wrote its last heartbeat: the leader
    /// compares it with the table to find leases the worker does not know
    /// are its (see coordinator/led.rs).
    pub held: Option<u64>,
    /// It said at its last heartbeat that it cannot keep up (its lag
    /// rising on every lease it holds): the leader gives it nothing.
    pub falling_behind: bool,
    /// Leases taken for it (by the leader, or handed over by a giver): it
    /// starts them from their checkpoints, then settles them.
    pub take: BTreeSet<String>,
    /// Leases it is asked to hand over (each row's `handoffTo` says to
    /// whom): it hands them over, then settles them.
    pub give: BTreeSet<String>,
    /// A lease key for each stream it does not read (one it was given and
    /// freed): the leader gives it no lease of those streams (processes
    /// of one application reading different stream lists, as during a
    /// rolling change of the list). It takes a key out once it reads that
    /// stream.
    pub unread: BTreeSet<String>,
}

/// The lock item: who leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lock {
    /// The leader's worker id.
    pub leader: String,
    /// The leader's heartbeat number, written every round: standing still
    /// for the failover time, it lets a successor claim the lock.
    pub beat: u64,
    /// Who claims first when the leader stops, in order.
    pub successors: Vec<String>,
    /// Why the leader stopped the fleet (a KCL worker shares the table):
    /// every worker that reads it stops with this reason.
    pub halt: Option<String>,
    /// When the leader began the round that wrote it, by the leader's wall
    /// clock: the others beat at a fixed point of its period, so that what
    /// it decides reaches them within the same period (see
    /// `Coordinator::next_round`). `None` from a lock written without one.
    pub round_at: Option<SystemTime>,
}

/// One of a worker's two sets of leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notes {
    /// Leases taken for it.
    Take,
    /// Leases it is asked to hand over.
    Give,
}

impl Notes {
    fn attribute(self) -> &'static str {
        match self {
            Notes::Take => TAKE,
            Notes::Give => GIVE,
        }
    }
}

/// The leases a worker dealt with since its last heartbeat: each comes
/// out of its own set only, since one lease can be in both (taken, then
/// asked for before the worker's next heartbeat).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Leases of the `take` set it started reading.
    pub took: Vec<String>,
    /// Leases of the `give` set it handed over (or no longer held).
    pub gave: Vec<String>,
    /// How many leases it holds as it beats (`None`: not said).
    pub held: Option<u64>,
    /// Whether it cannot keep up as it beats (written with every beat).
    pub falling_behind: bool,
    /// Keys to add to its `unread` set (streams it found it does not read).
    pub unread: Vec<String>,
    /// Keys to take out of its `unread` set (streams it reads now); left
    /// for a later beat while `unread` adds some (one update may not both
    /// add to and delete from a set).
    pub read: Vec<String>,
}

/// One write of the lock item: a claim, or the leader's renewal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lead<'a> {
    /// The worker writing.
    pub worker: &'a str,
    /// Its heartbeat number.
    pub beat: u64,
    /// The holder and beat the lock held when last read (`None`: no
    /// holder); for a renewal, our own id and last beat.
    pub seen: Option<(&'a str, u64)>,
    /// Who claims first if we stop, in order.
    pub successors: &'a [String],
    /// Why the leader stops the fleet; a write without one clears it.
    pub halt: Option<&'a str>,
    /// When the writer's round began, by its wall clock.
    pub round_at: SystemTime,
}

/// What the leader reads each round, in one Scan.
#[derive(Clone, Debug, Default)]
pub(crate) struct Survey {
    /// The lease rows, as [`LeaseStore::list`](super::LeaseStore::list)
    /// gives them.
    pub rows: Vec<Row>,
    /// Every worker item, by worker id.
    pub workers: BTreeMap<String, WorkerItem>,
    /// The lock item, if there is one.
    pub lock: Option<Lock>,
    /// The beats in the workers row of [`Coordination::WorkersRow`]
    /// fleets, if the table has one: moving, they are workers of the other
    /// mode.
    ///
    /// [`Coordination::WorkersRow`]: crate::Coordination::WorkersRow
    pub row_beats: BTreeMap<String, u64>,
}

/// The operations on worker items and the lock item: DynamoDB in
/// production, the in-memory table in the simulation.
pub(crate) trait MemberStore: Send + Sync + std::fmt::Debug {
    /// Writes a heartbeat (and the worker's cap) in the worker's own item,
    /// takes the leases it `settled` since out of their sets, and returns the item as it is afterwards (a strongly
    /// consistent read, free with the write). The same rule against a
    /// second process under one id as the workers row's
    /// ([`LeaseStore::heartbeat`](super::LeaseStore::heartbeat)):
    /// [`namesake_error`].
    fn beat_in_item(&self, beat: &Beat<'_>, settled: &Settled) -> Result<WorkerItem>;

    /// One worker's item, if it has one.
    fn worker_item(&self, worker: &str) -> Result<Option<WorkerItem>>;

    /// Adds leases to one of a worker's sets; false when the worker has no
    /// item (it left, or was forgotten): nothing is written.
    fn note(&self, worker: &str, notes: Notes, shard_ids: &[String]) -> Result<bool>;

    /// Deletes a worker's item: a dead worker's if its heartbeat is still
    /// `seen_beat`; our own (`None`) as we leave.
    fn forget_item(&self, worker: &str, seen_beat: Option<u64>) -> Result<()>;

    /// The lock item, if there is one.
    fn lock(&self) -> Result<Option<Lock>>;

    /// Claims the lock or renews it; true when it holds our id and beat
    /// afterwards (also when an earlier attempt of this very write landed
    /// and its reply was lost), false when someone else's write came
    /// first.
    fn lead(&self, lead: &Lead<'_>) -> Result<bool>;

    /// Lets the lock go as its leader leaves, if it still holds our id
    /// and `beat`: a successor claims it at its next round instead of
    /// waiting for the lock to stand still.
    fn unlock(&self, worker: &str, beat: u64) -> Result<()>;

    /// The leader's read of the whole table; `consistent` false at half
    /// the price.
    fn survey(&self, consistent: bool) -> Result<Survey>;

    /// One lease's row, strongly consistent (`None`: no such row; a
    /// malformed one as [`Row::Malformed`]).
    fn lease_row(&self, key: &str) -> Result<Option<Row>>;
}

/// A `take` or `give` set's entry: the lease key and its counter when
/// noted, so that a lease noted again later (taken for the worker, handed
/// on, taken for it again) is a new entry that settling the old one does
/// not remove.
pub(crate) fn note_entry(key: &str, counter: u64) -> String {
    format!("{key}@{counter}")
}

/// The lease key and counter of a set's entry (see [`note_entry`]); an
/// entry without a counter is a bare key.
pub(crate) fn parse_entry(entry: &str) -> (&str, Option<u64>) {
    match entry.rsplit_once('@') {
        Some((key, counter)) => match counter.parse() {
            Ok(counter) => (key, Some(counter)),
            Err(_) => (entry, None),
        },
        None => (entry, None),
    }
}

/// The key of `worker`'s item.
pub(crate) fn worker_key(worker: &str) -> String {
    format!("{WORKER_PREFIX}{worker}")
}

/// An item of ours that is none of the leases.
fn typed(kind: &str, rest: &str) -> Expression {
    Expression::new(format!("SET #type = :type{rest}"))
        .name("#type", "entityType")
        .value(":type", s(kind))
}

fn number(item: &Item, name: &str) -> Option<u64> {
    item.get(name)
        .and_then(AttributeValue::as_n)
        .and_then(parse_counter)
}

fn strings(item: &Item, name: &str) -> BTreeSet<String> {
    item.get(name)
        .and_then(AttributeValue::as_ss)
        .map(|v| v.iter().cloned().collect())
        .unwrap_or_default()
}

/// A worker item's id and contents; `None` for anything else, and for a
/// worker item without a numeric beat (an operator's edit).
pub(crate) fn parse_worker(item: &Item) -> Option<(String, WorkerItem)> {
    let id = item.get(KEY)?.as_s()?.strip_prefix(WORKER_PREFIX)?;
    let parsed = WorkerItem {
        beat: number(item, BEAT)?,
        cap: number(item, CAP),
        held: number(item, HELD),
        falling_behind: matches!(item.get(FALLING_BEHIND), Some(AttributeValue::BOOL(true))),
        take: strings(item, TAKE),
        give: strings(item, GIVE),
        unread: strings(item, UNREAD),
    };
    Some((id.to_owned(), parsed))
}

/// The lock item's contents; `None` for anything else, and for a lock
/// without a holder or a numeric beat.
pub(crate) fn parse_lock(item: &Item) -> Option<Lock> {
    if item.get(KEY)?.as_s()? != LEADER_KEY {
        return None;
    }
    let successors = match item.get(SUCCESSORS) {
        Some(AttributeValue::L(values)) => values
            .iter()
            .filter_map(|v| v.as_s().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Some(Lock {
        leader: item.get(LEADER)?.as_s()?.to_owned(),
        beat: number(item, BEAT)?,
        successors,
        halt: item
            .get(HALT)
            .and_then(AttributeValue::as_s)
            .map(str::to_owned),
        round_at: number(item, ROUND_AT).map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    })
}

/// The update of a heartbeat in a worker's item.
fn beat_update(beat: &Beat<'_>, settled: &Settled) -> Expression {
    let mut rest = String::from(", #beat = :beat, #behind = :behind");
    if settled.held.is_some() {
        rest.push_str(", #held = :held");
    }
    if beat.cap.is_some() {
        rest.push_str(", #cap = :cap");
    } else {
        rest.push_str(" REMOVE #cap");
    }
    // DynamoDB refuses an empty set, and a placeholder left unused.
    let read = match settled.unread.is_empty() {
        true => &settled.read,
        false => &Vec::new(),
    };
    let deletions: Vec<_> = [
        ("#take", TAKE, ":took", &settled.took),
        ("#give", GIVE, ":gave", &settled.gave),
        ("#unread", UNREAD, ":read", read),
    ]
    .into_iter()
    .filter(|(.., ids)| !ids.is_empty())
    .collect();
    if !settled.unread.is_empty() {
        rest.push_str(" ADD #unread :unread");
    }
    if !deletions.is_empty() {
        let clauses: Vec<String> = deletions
            .iter()
            .map(|(name, _, value, _)| format!("{name} {value}"))
            .collect();
        rest.push_str(&format!(" DELETE {}", clauses.join(", ")));
    }
    let mut update = typed(WORKER_TYPE, &rest)
        .name("#beat", BEAT)
        .name("#cap", CAP)
        .name("#behind", FALLING_BEHIND)
        .value(":beat", n(beat.number))
        .value(":behind", AttributeValue::BOOL(settled.falling_behind));
    if let Some(cap) = beat.cap {
        update = update.value(":cap", n(cap));
    }
    if let Some(held) = settled.held {
        update = update.name("#held", HELD).value(":held", n(held));
    }
    if !settled.unread.is_empty() {
        update = update
            .name("#unread", UNREAD)
            .value(":unread", AttributeValue::SS(settled.unread.clone()));
    }
    for (name, attribute, value, ids) in deletions {
        update = update
            .name(name, attribute)
            .value(value, AttributeValue::SS(ids.clone()));
    }
    update
}

/// The write of the lock item, and its condition: the lock as last seen,
/// or this very write already landed.
fn lead_write(lead: &Lead<'_>) -> (Expression, Expression) {
    let successors = lead.successors.iter().map(|w| s(w)).collect();
    let halt = match lead.halt {
        Some(_) => ", #halt = :halt",
        None => " REMOVE #halt",
    };
    let mut update = typed(
        LEADER_TYPE,
        &format!(
            ", #leader = :me, #beat = :beat, #successors = :successors, #roundAt = :roundAt{halt}"
        ),
    )
    .name("#leader", LEADER)
    .name("#beat", BEAT)
    .name("#successors", SUCCESSORS)
    .name("#roundAt", ROUND_AT)
    .name("#halt", HALT)
    .value(":me", s(lead.worker))
    .value(":beat", n(lead.beat))
    .value(":successors", AttributeValue::L(successors))
    .value(":roundAt", n(unix_millis(lead.round_at)));
    if let Some(why) = lead.halt {
        update = update.value(":halt", s(why));
    }
    let landed = "(#leader = :me AND #beat = :beat)";
    let condition = match lead.seen {
        None => Expression::new(format!("attribute_not_exists(#leader) OR {landed}")),
        Some((holder, beat)) => {
            Expression::new(format!("(#leader = :holder AND #beat = :seen) OR {landed}"))
                .value(":holder", s(holder))
                .value(":seen", n(beat))
        }
    }
    .name("#leader", LEADER)
    .name("#beat", BEAT)
    .value(":me", s(lead.worker))
    .value(":beat", n(lead.beat));
    (update, condition)
}

/// Milliseconds since the Unix epoch (zero for a clock set before it).
fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Only a worker item that has a beat gets notes: a forgotten worker's is
/// not made again without one.
fn note_write(notes: Notes, shard_ids: &[String]) -> (Expression, Expression) {
    let update = typed(WORKER_TYPE, " ADD #set :ids")
        .name("#set", notes.attribute())
        .value(":ids", AttributeValue::SS(shard_ids.to_vec()));
    let condition = Expression::new("attribute_exists(#beat)").name("#beat", BEAT);
    (update, condition)
}

/// A condition that failed is an answer, not an error.
fn unless_condition_failed<T>(result: Result<T>, failed: T) -> Result<T> {
    match result {
        Err(e) if e.is_condition_failed() => Ok(failed),
        other => other,
    }
}

impl MemberStore for LeaseTable {
    fn beat_in_item(&self, beat: &Beat<'_>, settled: &Settled) -> Result<WorkerItem> {
        let (dynamodb, table) = self.client();
        let reply = dynamodb.update_item(
            table,
            &key(&worker_key(beat.worker)),
            &beat_update(beat, settled),
            beat.condition(BEAT).as_ref(),
        );
        match reply {
            Ok(item) => Ok(parse_worker(&item).map(|(_, w)| w).unwrap_or_default()),
            Err(e) if e.is_condition_failed() => Err(namesake_error(beat.worker)),
            Err(e) => Err(e),
        }
    }

    fn worker_item(&self, worker: &str) -> Result<Option<WorkerItem>> {
        let (dynamodb, table) = self.client();
        let item = dynamodb.get_item(table, &key(&worker_key(worker)))?;
        Ok(item.as_ref().and_then(parse_worker).map(|(_, w)| w))
    }

    fn note(&self, worker: &str, notes: Notes, shard_ids: &[String]) -> Result<bool> {
        if shard_ids.is_empty() {
            return Ok(true);
        }
        let (dynamodb, table) = self.client();
        let (update, condition) = note_write(notes, shard_ids);
        let written = dynamodb
            .update_item(table, &key(&worker_key(worker)), &update, Some(&condition))
            .map(|_| true);
        unless_condition_failed(written, false)
    }

    fn forget_item(&self, worker: &str, seen_beat: Option<u64>) -> Result<()> {
        let (dynamodb, table) = self.client();
        let unchanged = seen_beat.map(|seen| {
            Expression::new("#beat = :seen")
                .name("#beat", BEAT)
                .value(":seen", n(seen))
        });
        let deleted = dynamodb.delete_item(table, &key(&worker_key(worker)), unchanged.as_ref());
        unless_condition_failed(deleted, ())
    }

    fn lock(&self) -> Result<Option<Lock>> {
        let (dynamodb, table) = self.client();
        let item = dynamodb.get_item(table, &key(LEADER_KEY))?;
        Ok(item.as_ref().and_then(parse_lock))
    }

    fn lead(&self, lead: &Lead<'_>) -> Result<bool> {
        let (dynamodb, table) = self.client();
        let (update, condition) = lead_write(lead);
        let written = dynamodb
            .update_item(table, &key(LEADER_KEY), &update, Some(&condition))
            .map(|_| true);
        unless_condition_failed(written, false)
    }

    fn unlock(&self, worker: &str, beat: u64) -> Result<()> {
        let (dynamodb, table) = self.client();
        let ours = Expression::new("#leader = :me AND #beat = :beat")
            .name("#leader", LEADER)
            .name("#beat", BEAT)
            .value(":me", s(worker))
            .value(":beat", n(beat));
        let deleted = dynamodb.delete_item(table, &key(LEADER_KEY), Some(&ours));
        unless_condition_failed(deleted, ())
    }

    fn lease_row(&self, lease_key: &str) -> Result<Option<Row>> {
        let (dynamodb, table) = self.client();
        let item = dynamodb.get_item(table, &key(lease_key))?;
        let leases = item.iter().filter(|item| is_lease_item(item));
        Ok(self.lease_rows(leases).pop())
    }

    fn survey(&self, consistent: bool) -> Result<Survey> {
        let (dynamodb, table) = self.client();
        let items = dynamodb.scan_with(table, consistent)?;
        let ours = |item: &Item| {
            item.get(KEY)
                .and_then(AttributeValue::as_s)
                .is_some_and(|k| k.starts_with(OURS))
        };
        Ok(Survey {
            rows: self.lease_rows(items.iter().filter(|item| is_lease_item(item))),
            workers: items
                .iter()
                .filter(|i| ours(i))
                .filter_map(parse_worker)
                .collect(),
            lock: items.iter().filter(|i| ours(i)).find_map(parse_lock),
            row_beats: items
                .iter()
                .find(|i| i.get(KEY).and_then(AttributeValue::as_s) == Some(WORKERS_KEY))
                .map(|row| Workers::parse(row).beats)
                .unwrap_or_default(),
        })
    }
}

/// A leader-run fleet's items in a real lease table, for this crate's
/// emulator tests (through `__test_support`): each operation of
/// `MemberStore` with plain types. Not a stable API.
#[derive(Debug)]
pub struct MemberItems {
    table: LeaseTable,
}

impl MemberItems {
    /// The items of the lease table `table`.
    pub fn new(dynamodb: crate::aws::dynamodb::DynamoDbClient, table: &str) -> MemberItems {
        MemberItems {
            table: LeaseTable::new(dynamodb, table),
        }
    }

    /// `MemberStore::beat_in_item` without a cap, settling `took` out of
    /// the `take` set and `gave` out of `give`: the item's sets after
    /// (leases to take, leases to give).
    pub fn beat(
        &self,
        worker: &str,
        number: u64,
        since: Option<u64>,
        (took, gave): (&[String], &[String]),
    ) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let beat = Beat {
            worker,
            number,
            since,
            over: None,
            cap: None,
        };
        let settled = Settled {
            took: took.to_vec(),
            gave: gave.to_vec(),
            ..Settled::default()
        };
        let item = self.table.beat_in_item(&beat, &settled)?;
        Ok((item.take, item.give))
    }

    /// `MemberStore::note` of leases to take (`take` true) or give.
    pub fn note(&self, worker: &str, take: bool, shard_ids: &[String]) -> Result<bool> {
        let notes = if take { Notes::Take } else { Notes::Give };
        self.table.note(worker, notes, shard_ids)
    }

    /// `MemberStore::forget_item`.
    pub fn forget(&self, worker: &str, seen_beat: Option<u64>) -> Result<()> {
        self.table.forget_item(worker, seen_beat)
    }

    /// `MemberStore::lead`.
    pub fn lead(
        &self,
        worker: &str,
        beat: u64,
        seen: Option<(&str, u64)>,
        successors: &[String],
    ) -> Result<bool> {
        self.table.lead(&Lead {
            worker,
            beat,
            seen,
            successors,
            halt: None,
            round_at: SystemTime::now(),
        })
    }

    /// `MemberStore::lock`: the leader, its beat and its successors.
    pub fn leader(&self) -> Result<Option<(String, u64, Vec<String>)>> {
        Ok(self.table.lock()?.map(|l| (l.leader, l.beat, l.successors)))
    }

    /// `MemberStore::survey`, strongly consistent.
    pub fn survey(&self) -> Result<Surveyed> {
        let survey = self.table.survey(true)?;
        Ok(Surveyed {
            leases: survey
                .rows
                .iter()
                .map(|r| r.shard_id().to_owned())
                .collect(),
            workers: survey
                .workers
                .into_iter()
                .map(|(id, w)| (id, w.beat))
                .collect(),
            leader: survey.lock.map(|l| l.leader),
        })
    }
}

/// What [`MemberItems::survey`] read.
#[derive(Debug)]
pub struct Surveyed {
    /// The lease rows' keys.
    pub leases: Vec<String>,
    /// Each worker item's worker and beat.
    pub workers: BTreeMap<String, u64>,
    /// The lock item's leader.
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> Item {
        serde_json::from_str(json).unwrap()
    }

    /// Every `#name` and `:value` given is used in the text, and every one
    /// used is given: DynamoDB refuses the request otherwise.
    fn assert_placeholders_match(e: &Expression) {
        for name in e.names.keys().chain(e.values.keys()) {
            assert!(e.text.contains(name.as_str()), "{name} unused in {e:?}");
        }
        for word in e
            .text
            .split(|c: char| !(c.is_alphanumeric() || "#:_".contains(c)))
        {
            if word.starts_with('#') {
                assert!(e.names.contains_key(word), "{word} not given in {e:?}");
            }
            if word.starts_with(':') {
                assert!(e.values.contains_key(word), "{word} not given in {e:?}");
            }
        }
    }

    #[test]
    fn parses_worker_and_lock_items_and_nothing_else() {
        let worker = item(
            r#"{"leaseKey":{"S":"kinesis-consumer:worker:w-1"},"entityType":{"S":"WORKER"},
                "beat":{"N":"42"},"cap":{"N":"5"},"take":{"SS":["shardId-1","shardId-2"]}}"#,
        );
        let (id, parsed) = parse_worker(&worker).unwrap();
        assert_eq!(id, "w-1");
        assert_eq!((parsed.beat, parsed.cap), (42, Some(5)));
        assert_eq!(parsed.take.len(), 2);
        assert!(parsed.give.is_empty());
        assert!(!parsed.falling_behind, "not said: keeps up");
        let behind = item(
            r#"{"leaseKey":{"S":"kinesis-consumer:worker:w-2"},"beat":{"N":"1"},
                "fallingBehind":{"BOOL":true}}"#,
        );
        assert!(parse_worker(&behind).unwrap().1.falling_behind);
        let lock = item(
            r#"{"leaseKey":{"S":"kinesis-consumer:leader"},"leader":{"S":"w-1"},"beat":{"N":"7"},
                "successors":{"L":[{"S":"w-2"},{"S":"w-3"}]}}"#,
        );
        assert_eq!(
            parse_lock(&lock),
            Some(Lock {
                leader: "w-1".into(),
                beat: 7,
                successors: vec!["w-2".into(), "w-3".into()],
                halt: None,
                round_at: None,
            })
        );
        let timed = item(
            r#"{"leaseKey":{"S":"kinesis-consumer:leader"},"leader":{"S":"w-1"},"beat":{"N":"8"},
                "roundAt":{"N":"1700000000123"}}"#,
        );
        assert_eq!(
            parse_lock(&timed).unwrap().round_at,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(parse_worker(&lock), None);
        assert_eq!(parse_lock(&worker), None);
        let no_beat = item(r#"{"leaseKey":{"S":"kinesis-consumer:worker:w"},"beat":{"S":"x"}}"#);
        assert_eq!(parse_worker(&no_beat), None);
        let lease = item(r#"{"leaseKey":{"S":"shardId-1"},"beat":{"N":"1"}}"#);
        assert_eq!(parse_worker(&lease), None);
    }

    #[test]
    fn worker_and_lock_items_are_never_leases_even_without_their_type() {
        for key in [worker_key("w-1"), LEADER_KEY.to_owned()] {
            let bare = item(&format!(
                r#"{{"leaseKey":{{"S":"{key}"}},"beat":{{"N":"1"}}}}"#
            ));
            assert!(!is_lease_item(&bare), "{key}");
        }
        // A multi-stream lease key starts with an account id.
        let multi = item(r#"{"leaseKey":{"S":"123456789012:orders:1:shardId-1"}}"#);
        assert!(is_lease_item(&multi));
    }

    #[test]
    fn every_write_names_exactly_the_placeholders_it_uses() {
        let settled = ["shardId-1".to_owned()];
        let one = vec!["shardId-1".to_owned()];
        let cases = [
            Settled::default(),
            Settled {
                took: one.clone(),
                held: Some(2),
                falling_behind: true,
                ..Settled::default()
            },
            Settled {
                gave: one.clone(),
                read: one.clone(),
                ..Settled::default()
            },
            Settled {
                took: one.clone(),
                gave: one.clone(),
                held: Some(0),
                unread: one.clone(),
                read: one.clone(),
                ..Settled::default()
            },
        ];
        for (cap, over) in [(None, None), (Some(3), Some(77))] {
            for since in [None, Some(4)] {
                let beat = Beat {
                    worker: "w",
                    number: 5,
                    since,
                    over,
                    cap,
                };
                for done in &cases {
                    let update = beat_update(&beat, done);
                    assert_placeholders_match(&update);
                    assert!(update.text.starts_with("SET #type"), "{update:?}");
                    assert_eq!(
                        update.values.get(":behind"),
                        Some(&AttributeValue::BOOL(done.falling_behind)),
                        "written with every beat"
                    );
                    assert_eq!(update.text.contains("ADD #unread"), !done.unread.is_empty());
                    // One update never both adds to and deletes from a set.
                    let read = done.unread.is_empty() && !done.read.is_empty();
                    assert_eq!(update.text.contains("#unread :read"), read);
                    assert_eq!(
                        update.text.contains("DELETE"),
                        !done.took.is_empty() || !done.gave.is_empty() || read
                    );
                    assert_eq!(update.text.contains("#take :took"), !done.took.is_empty());
                    assert_eq!(update.text.contains("#give :gave"), !done.gave.is_empty());
                }
                if let Some(condition) = beat.condition(BEAT) {
                    assert_placeholders_match(&condition);
                    assert_eq!(condition.text.contains(":over"), over.is_some());
                }
            }
        }
        let successors = ["w-2".to_owned()];
        for seen in [None, Some(("w-0", 9))] {
            for halt in [None, Some("a KCL worker")] {
                let (update, condition) = lead_write(&Lead {
                    worker: "w-1",
                    beat: 3,
                    seen,
                    successors: &successors,
                    halt,
                    round_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
                });
                assert_placeholders_match(&update);
                assert_placeholders_match(&condition);
                assert_eq!(update.text.contains("REMOVE #halt"), halt.is_none());
            }
        }
        let (update, condition) = note_write(Notes::Give, &settled);
        assert_placeholders_match(&update);
        assert_placeholders_match(&condition);
        assert_eq!(update.names.get("#set").map(String::as_str), Some(GIVE));
    }
}
