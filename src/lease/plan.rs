//! The coordinator's decisions as pure functions: which leases to create,
//! where each shard stands (readable, waiting for a parent, finished, gone
//! from the stream, malformed), and what one round of a worker does (take,
//! ask for, force-take, give up, delete, start). No I/O and no clock: the
//! coordinator gathers the facts, these functions decide, the coordinator
//! carries the decisions out. The simulation in `sim.rs` drives them too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use crate::aws::kinesis::Shard;
use crate::lease::{Checkpoint, Lease};

// The leader's plan for the whole fleet (issue 25): only its tests use it
// until the leader does.
mod fleet;
pub(crate) use fleet::{BalanceMemory, FleetBalance, FleetInput, plan_fleet, stream_of};

/// One row of the lease table: a lease, or a row we cannot use.
// Nearly every row is a lease: boxing it would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Row {
    /// A well-formed lease.
    Lease(Lease),
    /// A row that does not parse: never taken, never a finished parent.
    Malformed {
        /// Its `leaseKey`, or "?" when even that is unreadable.
        shard_id: String,
        /// What is wrong with it.
        why: String,
    },
}

impl Row {
    pub(crate) fn shard_id(&self) -> &str {
        match self {
            Row::Lease(l) => &l.shard_id,
            Row::Malformed { shard_id, .. } => shard_id,
        }
    }

    pub(crate) fn lease(&self) -> Option<&Lease> {
        match self {
            Row::Lease(l) => Some(l),
            Row::Malformed { .. } => None,
        }
    }
}

/// Where one lease row stands, and so whether its shard can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Standing {
    /// Its parents are finished (or have no rows): it can be read now.
    Readable,
    /// Waiting for these parents (rows not finished, or malformed).
    Blocked(Vec<String>),
    /// Read to its end (`SHARD_END`).
    Finished,
    /// The service confirmed the shard is gone (past retention): its
    /// unread data expired. It counts as finished for its children.
    Expired,
    /// The stream did not list the shard in the last listing; not yet
    /// confirmed gone. Not taken; still holds its children back.
    NotListed,
    /// The row does not parse (the reason): never taken; holds its
    /// children back until someone repairs or deletes it.
    Malformed(String),
}

impl Standing {
    /// True for a lease some worker should hold: it can be read now or
    /// will be once its parents finish.
    pub(crate) fn wants_worker(&self) -> bool {
        matches!(self, Standing::Readable | Standing::Blocked(_))
    }
}

/// Every shard the stream lists, with its children, for walking lineage.
pub(crate) struct Lineage<'a> {
    shards: BTreeMap<&'a str, &'a Shard>,
    children: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Lineage<'a> {
    pub(crate) fn new(shards: &'a [Shard]) -> Lineage<'a> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for shard in shards {
            for parent in shard.parents() {
                children.entry(parent).or_default().push(&shard.shard_id);
            }
        }
        Lineage {
            shards: shards.iter().map(|s| (s.shard_id.as_str(), s)).collect(),
            children,
        }
    }

    pub(crate) fn contains(&self, shard_id: &str) -> bool {
        self.shards.contains_key(shard_id)
    }

    /// The listed shards naming `shard_id` as a parent.
    pub(crate) fn children(&self, shard_id: &str) -> &[&'a str] {
        self.children.get(shard_id).map_or(&[], Vec::as_slice)
    }

    /// True when some descendant of `shard_id` (child, grandchild, ...)
    /// satisfies `found`.
    fn has_descendant(&self, shard_id: &str, found: &impl Fn(&str) -> bool) -> bool {
        let mut seen = HashSet::new();
        let mut todo: Vec<&str> = self.children(shard_id).to_vec();
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            if found(id) {
                return true;
            }
            todo.extend_from_slice(self.children(id));
        }
        false
    }

    /// The listed shards, parents before children.
    fn parents_first(&self) -> Vec<&'a Shard> {
        let mut depth: HashMap<&str, usize> = HashMap::new();
        fn depth_of<'b>(
            lineage: &Lineage<'b>,
            id: &'b str,
            depth: &mut HashMap<&'b str, usize>,
            guard: usize,
        ) -> usize {
            if let Some(d) = depth.get(id) {
                return *d;
            }
            let d = match lineage.shards.get(id) {
                Some(shard) if guard < 64 => shard
                    .parents()
                    .filter_map(|p| lineage.shards.get_key_value(p).map(|(k, _)| *k))
                    .map(|p| depth_of(lineage, p, depth, guard + 1) + 1)
                    .max()
                    .unwrap_or(0),
                _ => 0,
            };
            depth.insert(id, d);
            d
        }
        let mut shards: Vec<&Shard> = self.shards.values().copied().collect();
        for shard in &shards {
            depth_of(self, &shard.shard_id, &mut depth, 0);
        }
        shards.sort_by_key(|s| (depth[s.shard_id.as_str()], s.shard_id.as_str()));
        shards
    }
}

/// The leases to create for listed shards that have no row, parents first.
///
/// Creation follows the stream's lineage: a shard that has a descendant
/// with a row is never leased again, whatever the initial position: it was
/// finished and cleaned up, or predates where the application started
/// (a closed shard stays listed for the retention period). For `Latest`,
/// children of leased shards start at their beginning (or the records
/// between parent and child would be lost), other closed shards are not
/// leased, and open ones are pinned to `pin` (see [`Checkpoint::AtTimestamp`]).
pub(crate) fn new_leases(
    rows: &[Row],
    lineage: &Lineage<'_>,
    initial: &dyn Fn(&str) -> Checkpoint,
    pin: SystemTime,
) -> Vec<Lease> {
    let has_row: HashSet<&str> = rows.iter().map(Row::shard_id).collect();
    let mut created: Vec<Lease> = Vec::new();
    for shard in lineage.parents_first() {
        if has_row.contains(shard.shard_id.as_str())
            || lineage.has_descendant(&shard.shard_id, &|id| has_row.contains(id))
        {
            continue;
        }
        let parent_leased = shard
            .parents()
            .any(|p| has_row.contains(p) || created.iter().any(|l| l.shard_id == p));
        let checkpoint = match initial(&shard.shard_id) {
            Checkpoint::Latest if parent_leased => Checkpoint::TrimHorizon,
            Checkpoint::Latest if shard.is_closed() => continue,
            Checkpoint::Latest => Checkpoint::AtTimestamp(Some(pin)),
            other => other,
        };
        created.push(new_lease(shard, checkpoint));
    }
    created
}

/// A new lease for a listed shard, unowned, at `checkpoint`.
pub(crate) fn new_lease(shard: &Shard, checkpoint: Checkpoint) -> Lease {
    Lease {
        shard_id: shard.shard_id.clone(),
        owner: None,
        handoff_to: None,
        counter: 0,
        checkpoint,
        owner_switches_since_checkpoint: 0,
        parents: shard.parents().map(str::to_owned).collect(),
        children: Vec::new(),
        hash_range: Some((
            shard.starting_hash_key.clone(),
            shard.ending_hash_key.clone(),
        )),
        load: None,
    }
}

/// How many listings in a row must leave a shard out before it counts as
/// gone; a single listing is not trusted (a reader's ResourceNotFound
/// confirms it sooner, see [`gone`]).
pub(crate) const LISTINGS_TO_CONFIRM_GONE: u32 = 2;

/// Updates, for every row, how many listings in a row left its shard out.
pub(crate) fn count_misses(
    rows: &[Row],
    lineage: &Lineage<'_>,
    misses: &HashMap<String, u32>,
) -> HashMap<String, u32> {
    rows.iter()
        .map(Row::shard_id)
        .filter(|id| !lineage.contains(id))
        .map(|id| (id.to_owned(), misses.get(id).copied().unwrap_or(0) + 1))
        .collect()
}

/// True when a lease names a shard that no listing has left out yet: a
/// shard newer than the last listing (a child another worker created after
/// a reshard). List again before planning, or the lease is not taken until
/// the next shard sync (a minute by default) while its parent is finished.
/// A row that a listing already left out waits for the next sync, so a row
/// of a gone shard costs no extra listing.
pub(crate) fn names_unlisted_shard(
    rows: &[Row],
    lineage: &Lineage<'_>,
    misses: &HashMap<String, u32>,
) -> bool {
    rows.iter()
        .filter_map(Row::lease)
        .any(|l| !lineage.contains(&l.shard_id) && !misses.contains_key(&l.shard_id))
}

/// True when a lease that has not started names a listed parent with no
/// row. On a strongly consistent read that parent was finished and deleted
/// (or predates the application); an eventually consistent read may just
/// not show it yet (the two rows sit on different partitions), so the
/// table is read again consistently before such a child can start ahead
/// of its parent.
pub(crate) fn parent_may_be_unseen(rows: &[Row], lineage: &Lineage<'_>) -> bool {
    let has_row: HashSet<&str> = rows.iter().map(Row::shard_id).collect();
    rows.iter()
        .filter_map(Row::lease)
        .filter(|l| !l.checkpoint.has_started())
        .flat_map(|l| &l.parents)
        .any(|p| lineage.contains(p) && !has_row.contains(p.as_str()))
}

/// The rows whose shard the service confirmed gone: left out of
/// [`LISTINGS_TO_CONFIRM_GONE`] listings in a row, or left out of one and
/// answered ResourceNotFound to a reader.
pub(crate) fn gone(misses: &HashMap<String, u32>, not_found: &HashSet<String>) -> HashSet<String> {
    misses
        .iter()
        .filter(|(id, n)| **n >= LISTINGS_TO_CONFIRM_GONE || not_found.contains(*id))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Where every row stands.
pub(crate) fn standings(
    rows: &[Row],
    lineage: &Lineage<'_>,
    gone: &HashSet<String>,
) -> HashMap<String, Standing> {
    let by_id: HashMap<&str, &Row> = rows.iter().map(|r| (r.shard_id(), r)).collect();
    // Whether a row keeps its children waiting.
    let holds_back = |row: &Row| match row {
        Row::Malformed { .. } => true,
        Row::Lease(l) => l.checkpoint != Checkpoint::ShardEnd && !gone.contains(&l.shard_id),
    };
    rows.iter()
        .map(|row| {
            let standing = match row {
                Row::Malformed { why, .. } => Standing::Malformed(why.clone()),
                Row::Lease(l) if l.checkpoint == Checkpoint::ShardEnd => Standing::Finished,
                Row::Lease(l) if gone.contains(&l.shard_id) => Standing::Expired,
                Row::Lease(l) if !lineage.contains(&l.shard_id) => Standing::NotListed,
                Row::Lease(l) => {
                    let waiting: Vec<String> = l
                        .parents
                        .iter()
                        .filter(|p| by_id.get(p.as_str()).is_some_and(|r| holds_back(r)))
                        .cloned()
                        .collect();
                    if waiting.is_empty() {
                        Standing::Readable
                    } else {
                        Standing::Blocked(waiting)
                    }
                }
            };
            (row.shard_id().to_owned(), standing)
        })
        .collect()
}

/// What a worker knows at the start of a round, besides the table.
pub(crate) struct RoundInput<'a> {
    /// This worker's id.
    pub me: &'a str,
    /// The lease table as just read.
    pub rows: &'a [Row],
    /// Where each row stands (see [`standings`]).
    pub standings: &'a HashMap<String, Standing>,
    /// The stream's shards as last listed.
    pub lineage: &'a Lineage<'a>,
    /// Rows whose shard the service confirmed gone (see [`gone`]).
    pub gone: &'a HashSet<String>,
    /// The leases this worker holds.
    pub held: &'a HashSet<String>,
    /// Leases of other owners presumed dead: a worker of the workers row
    /// whose heartbeat stood still for the failover time, or an owner not
    /// in that row whose lease counter did.
    pub stale: &'a HashSet<String>,
    /// Free leases (unowned or stale) that nobody took for twice the
    /// failover time: any worker with room takes them.
    pub unclaimed: &'a HashSet<String>,
    /// The live workers of the workers row (this one included).
    pub live: &'a BTreeSet<String>,
    /// Leases this worker asked for whose owner has not handed them over
    /// within the failover time: no longer waited for.
    pub handoff_overdue: &'a HashSet<String>,
    /// The most leases this worker may hold.
    pub max_leases: usize,
    /// Leases the table gives this worker's id that it neither holds nor
    /// asked for (an earlier run's): they may still be another live
    /// process's under the same id, and are left alone until that process
    /// surely stopped (see `HeldLeases::may_take_earlier_runs_leases`).
    pub earlier_runs: &'a HashSet<String>,
    /// The most leases each other capped worker may hold (the workers row).
    pub caps: &'a BTreeMap<String, u64>,
    /// Owners of leases not presumed dead that left the workers row long
    /// ago (twice the failover time): their leases are left alone until
    /// they stand still, but they beat no more and get no share.
    pub departed: &'a HashSet<String>,
}

/// What a worker does in one round, in this order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RoundPlan {
    /// Held leases the table shows with another owner: stop reading them.
    pub lost: Vec<String>,
    /// Rows to delete: finished leases whose children all started or whose
    /// shard is confirmed gone, and leases of shards confirmed gone that
    /// something still names as a parent.
    pub delete: Vec<String>,
    /// Held leases to give up: finished ones, and blocked ones that make
    /// room (at this worker's cap) for a readable lease to take.
    pub release: Vec<String>,
    /// Leases to take (shard, counter seen), best first.
    pub take: Vec<(String, u64)>,
    /// Leases the table gives this worker that it does not hold and has no
    /// room for (from an earlier run under this id): free them, as nobody
    /// else takes a live worker's lease (shard, counter seen).
    pub disown: Vec<(String, u64)>,
    /// Leases to ask their owner for (shard, owner, counter seen).
    pub ask: Vec<(String, String, u64)>,
    /// Leases to read once held (their parents are finished): those held
    /// and those taken this round.
    pub start: Vec<String>,
    /// Held leases waiting for a parent.
    pub blocked: Vec<String>,
    /// How many workers share the table (this one included).
    pub workers: usize,
    /// How many leases this worker aims to hold.
    pub target: usize,
    /// True while a lease asked for has not arrived yet.
    pub waiting: bool,
    /// True when the table needs no watching: every lease that wants a
    /// worker is held by a live worker of the workers row, and this round
    /// changes nothing. Until then the table is read every round.
    pub settled: bool,
}

/// Decides one round for one worker: which leases to take (unowned,
/// presumed dead, or asked for and not handed over in time), which to ask
/// the busiest workers for, which to give up, delete and start.
///
/// Readable leases are taken before blocked ones (parents before
/// children), and a worker at its cap gives up a blocked lease for each
/// readable one it could take, so a cap can never leave a parent unread
/// while its children wait on it.
pub(crate) fn plan_round(input: &RoundInput<'_>) -> RoundPlan {
    let me = input.me;
    let mut plan = RoundPlan::default();
    let standing = |id: &str| input.standings.get(id);
    let leases: Vec<&Lease> = input.rows.iter().filter_map(Row::lease).collect();
    let is_mine = |l: &Lease| l.owner.as_deref() == Some(me);
    for lease in &leases {
        if input.held.contains(&lease.shard_id) && !is_mine(lease) {
            plan.lost.push(lease.shard_id.clone());
        }
    }
    plan.delete = deletions(input.rows, input.standings, input.lineage, input.gone);
    let held: Vec<&Lease> = leases
        .iter()
        .copied()
        .filter(|l| input.held.contains(&l.shard_id) && is_mine(l))
        .collect();
    for lease in &held {
        if standing(&lease.shard_id) == Some(&Standing::Finished) {
            plan.release.push(lease.shard_id.clone());
        }
    }
    // Leases some worker should hold, and who holds them.
    let open: Vec<&Lease> = leases
        .iter()
        .copied()
        .filter(|l| standing(&l.shard_id).is_some_and(Standing::wants_worker))
        .collect();
    let mut available: Vec<&Lease> = Vec::new();
    let mut by_owner: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    let mut left_alone = false;
    for lease in &open {
        match lease.owner.as_deref() {
            Some(_) if input.held.contains(&lease.shard_id) && is_mine(lease) => {}
            // Unowned, handed to us, or ours from an earlier run under this id.
            None => available.push(lease),
            Some(owner) if owner == me && input.earlier_runs.contains(&lease.shard_id) => {
                left_alone = true;
            }
            Some(owner) if owner == me => available.push(lease),
            Some(_) if input.stale.contains(&lease.shard_id) => available.push(lease),
            Some(owner) => by_owner.entry(owner).or_default().push(lease),
        }
    }
    let readable = |l: &Lease| standing(&l.shard_id) == Some(&Standing::Readable);
    // Readable first (parents before children), then by shard id.
    available.sort_by_key(|l| (!readable(l), l.shard_id.as_str()));
    // The workers sharing the leases: the live ones of the workers row
    // (those holding none too) and the owners of leases not presumed dead.
    let mut workers: BTreeSet<&str> = input.live.iter().map(String::as_str).collect();
    workers.insert(me);
    workers.extend(
        by_owner
            .keys()
            .copied()
            .filter(|o| !input.departed.contains(*o)),
    );
    plan.workers = workers.len();
    let cap_of = |w: &str| match w == me {
        true => input.max_leases,
        false => cap_in(input.caps, w),
    };
    let idle: BTreeMap<&str, usize> = workers.iter().map(|w| (*w, 0)).collect();
    let level = shares(&idle, open.len(), &cap_of).into_values().max();
    plan.target = level.unwrap_or(0).min(input.max_leases);
    // Handing leases over changes this worker's share: it reads again once
    // they are gone, and asks if that left it short.
    plan.settled = !left_alone
        && available.is_empty()
        && by_owner.keys().all(|o| input.live.contains(*o))
        && held.iter().all(|l| l.handoff_to.is_none());
    let mut mine = held
        .iter()
        .filter(|l| standing(&l.shard_id).is_some_and(Standing::wants_worker))
        .count();
    let mut blocked_held: Vec<&str> = held
        .iter()
        .filter(|l| matches!(standing(&l.shard_id), Some(Standing::Blocked(_))))
        .map(|l| l.shard_id.as_str())
        .collect();
    // Each free lease goes to the least loaded live worker (ties by id), so
    // that workers reading the same table share the free leases out alike
    // instead of racing for each, and a dead worker's leases spread evenly.
    let mut loads = Loads::new(&cap_of);
    for worker in input.live {
        loads.set(worker, by_owner.get(worker.as_str()).map_or(0, Vec::len));
    }
    loads.set(me, mine);
    for lease in available {
        let ours = lease.owner.as_deref() == Some(me);
        let unclaimed = input.unclaimed.contains(&lease.shard_id);
        if !ours && !unclaimed {
            let least = loads.least_with_room().unwrap_or(me);
            if least != me {
                loads.add_one(least);
                continue;
            }
        }
        // Beyond the even share only for our own lease (from an earlier
        // run under this id: nobody else takes it while we live) or one
        // nobody took for twice the failover time: the workers below their
        // share may all be capped.
        let room = mine < plan.target || (mine < input.max_leases && (ours || unclaimed));
        if !room {
            if ours && mine >= input.max_leases && !readable(lease) {
                plan.disown.push((lease.shard_id.clone(), lease.counter));
                continue;
            }
            // At the cap: swap a blocked lease for a readable one.
            if mine < input.max_leases || !readable(lease) {
                continue;
            }
            let Some(give_up) = blocked_held.pop() else {
                if ours {
                    plan.disown.push((lease.shard_id.clone(), lease.counter));
                }
                continue;
            };
            plan.release.push(give_up.to_owned());
            mine -= 1;
        }
        plan.take.push((lease.shard_id.clone(), lease.counter));
        mine += 1;
        loads.set(me, mine);
    }
    // A lease asked for by a live worker counts as that worker's, as every
    // worker reading the table counts it, until its owner hands it over.
    // One we asked for longer than the failover time ago is not waited for
    // (the table may settle) but is not asked for anew either: a live
    // owner's lease is never taken from it (it may still be handing records
    // on), and it hands the lease over whenever it reads the table next.
    fn asker<'l>(lease: &'l Lease, me: &str, live: &BTreeSet<String>) -> Option<&'l str> {
        lease
            .handoff_to
            .as_deref()
            .filter(|to| *to == me || live.contains(*to))
    }
    for lease in &held {
        if let Some(to) = asker(lease, me, input.live) {
            loads.hand_over(me, to);
        }
    }
    for (owner, owned) in by_owner.iter_mut() {
        owned.retain(|lease| {
            let Some(to) = asker(lease, me, input.live) else {
                return true;
            };
            if to == me && !input.handoff_overdue.contains(&lease.shard_id) {
                plan.waiting = true;
            }
            loads.hand_over(owner, to);
            false
        });
    }
    for (lease, to) in asks(&loads.of, &by_owner, &readable, &cap_of) {
        if to != me {
            continue;
        }
        if loads.of[me] >= input.max_leases {
            break;
        }
        let owner = lease.owner.clone().unwrap_or_default();
        plan.ask
            .push((lease.shard_id.clone(), owner, lease.counter));
        plan.waiting = true;
        loads.add_one(me);
    }
    let released: HashSet<&str> = plan.release.iter().map(String::as_str).collect();
    for lease in held {
        if released.contains(lease.shard_id.as_str()) {
            continue;
        }
        match standing(&lease.shard_id) {
            Some(Standing::Readable) => plan.start.push(lease.shard_id.clone()),
            Some(Standing::Blocked(_)) => plan.blocked.push(lease.shard_id.clone()),
            _ => {}
        }
    }
    for (shard_id, _) in &plan.take {
        if standing(shard_id) == Some(&Standing::Readable) {
            plan.start.push(shard_id.clone());
        }
    }
    plan.settled &= plan.lost.is_empty()
        && plan.delete.is_empty()
        && plan.release.is_empty()
        && plan.disown.is_empty()
        && plan.take.is_empty()
        && plan.ask.is_empty()
        && !plan.waiting;
    plan
}

/// Each worker's share of `total` leases: capped workers that cannot hold
/// an even share of what is left hold their cap; the others end at the
/// floor or the ceiling of the mean of the rest, the ceilings going to
/// those holding the most now (`loads`; ties by id), so that the fewest
/// leases move. Every worker reading the same table computes the same.
fn shares<'w>(
    loads: &BTreeMap<&'w str, usize>,
    total: usize,
    cap_of: &impl Fn(&str) -> usize,
) -> BTreeMap<&'w str, usize> {
    let mut total = total;
    let mut share = BTreeMap::new();
    let mut rest: Vec<(&str, usize)> = loads.iter().map(|(w, n)| (*w, *n)).collect();
    loop {
        let even = total.div_ceil(rest.len().max(1));
        let (capped, uncapped): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|(w, _)| cap_of(w) < even);
        rest = uncapped;
        if capped.is_empty() {
            break;
        }
        for (w, _) in capped {
            let cap = cap_of(w).min(total);
            share.insert(w, cap);
            total -= cap;
        }
    }
    rest.sort_by_key(|(w, n)| (std::cmp::Reverse(*n), *w));
    let n = rest.len().max(1);
    for (rank, (w, _)) in rest.into_iter().enumerate() {
        share.insert(w, total / n + usize::from(rank < total % n));
    }
    share
}

/// A worker's cap as the worker items (or the workers row) give it: no
/// limit for a worker without one.
fn cap_in(caps: &BTreeMap<String, u64>, worker: &str) -> usize {
    caps.get(worker)
        .map_or(usize::MAX, |c| usize::try_from(*c).unwrap_or(usize::MAX))
}

/// Each worker's load (leases held, taken this round, or in flight towards
/// it), with the workers below their cap kept in (load, id) order, so that
/// the least loaded one with room is found without a scan of every worker:
/// at thousands of workers and leases a scan per lease costs their product.
struct Loads<'w, C> {
    of: BTreeMap<&'w str, usize>,
    with_room: BTreeSet<(usize, &'w str)>,
    cap_of: C,
}

impl<'w, C: Fn(&str) -> usize> Loads<'w, C> {
    fn new(cap_of: C) -> Self {
        Loads {
            of: BTreeMap::new(),
            with_room: BTreeSet::new(),
            cap_of,
        }
    }

    fn set(&mut self, worker: &'w str, load: usize) {
        if let Some(old) = self.of.insert(worker, load) {
            self.with_room.remove(&(old, worker));
        }
        if load < (self.cap_of)(worker) {
            self.with_room.insert((load, worker));
        }
    }

    /// One more lease for a worker already counted.
    fn add_one(&mut self, worker: &str) {
        if let Some((&worker, &load)) = self.of.get_key_value(worker) {
            self.set(worker, load + 1);
        }
    }

    /// A lease moving between workers; either may be one not counted (a
    /// worker outside the live ones), which is left out.
    fn hand_over(&mut self, from: &str, to: &str) {
        if let Some((&from, &load)) = self.of.get_key_value(from) {
            self.set(from, load.saturating_sub(1));
        }
        self.add_one(to);
    }

    /// The least loaded worker below its cap, ties by id.
    fn least_with_room(&self) -> Option<&'w str> {
        self.with_room.first().map(|(_, worker)| *worker)
    }
}

/// Every balance move this round, towards each live worker's share (see
/// [`shares`]) of their `loads` (leases held, taken this round, or in
/// flight towards each): (lease, the worker to hand it to). Givers above
/// their share give their surplus to workers below theirs, both in id
/// order, readable leases first; a lease already asked for is not asked
/// anew. A worker planning for itself keeps the moves towards itself, the
/// leader all of them: all compute the same moves from the same table, so
/// that several asking at once neither pick the same lease nor drain one
/// giver below its share.
fn asks<'l, 'w>(
    loads: &BTreeMap<&'w str, usize>,
    by_owner: &BTreeMap<&str, Vec<&'l Lease>>,
    readable: &impl Fn(&Lease) -> bool,
    cap_of: &impl Fn(&str) -> usize,
) -> Vec<(&'l Lease, &'w str)> {
    let share = shares(loads, loads.values().sum(), cap_of);
    let mut surplus: Vec<&Lease> = Vec::new();
    for (owner, load) in loads {
        let Some(owned) = by_owner.get(owner) else {
            continue;
        };
        let mut owned: Vec<&Lease> = owned
            .iter()
            .copied()
            .filter(|l| l.handoff_to.is_none())
            .collect();
        owned.sort_by_key(|l| (!readable(l), l.shard_id.as_str()));
        surplus.extend(owned.into_iter().take(load.saturating_sub(share[owner])));
    }
    let mut surplus = surplus.into_iter();
    let mut asks = Vec::new();
    for (worker, load) in loads {
        for lease in surplus.by_ref().take(share[worker].saturating_sub(*load)) {
            asks.push((lease, *worker));
        }
    }
    asks
}

/// Rows to delete: finished leases once every child has started (so that
/// no child can be mistaken for one without parents; a child named on its
/// parent without a row of its own counts: its row was created before it
/// was named, so it was finished and deleted) or once their shard is
/// confirmed gone (one stale listing proves nothing: a lease deleted while
/// its shard is listed and its children have no rows would be created
/// again), and leases confirmed gone that something still names as a
/// parent (rows naming no shard of the stream and no parent of one are left
/// alone: they may belong to another stream under the same name).
///
/// Lookups go through maps built once, so a table of many finished leases
/// costs its size, not its square (the leader plans 20,000 rows a round).
fn deletions(
    rows: &[Row],
    standings: &HashMap<String, Standing>,
    lineage: &Lineage<'_>,
    gone: &HashSet<String>,
) -> Vec<String> {
    let mut by_id: HashMap<&str, &Row> = HashMap::new();
    for row in rows {
        by_id.entry(row.shard_id()).or_insert(row);
    }
    let named_parents: HashSet<&str> = rows
        .iter()
        .filter_map(Row::lease)
        .flat_map(|l| &l.parents)
        .map(String::as_str)
        .collect();
    let started = |id: &String| {
        by_id
            .get(id.as_str())
            .is_none_or(|r| r.lease().is_some_and(|l| l.checkpoint.has_started()))
    };
    let named_as_parent = |id: &str| !lineage.children(id).is_empty() || named_parents.contains(id);
    let mut delete = Vec::new();
    for lease in rows.iter().filter_map(Row::lease) {
        let id = &lease.shard_id;
        let remove = match standings.get(id) {
            Some(Standing::Finished) => {
                gone.contains(id)
                    || (!lease.children.is_empty() && lease.children.iter().all(started))
            }
            Some(Standing::Expired) => named_as_parent(id),
            _ => false,
        };
        if remove {
            delete.push(id.clone());
        }
    }
    delete
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ExtendedSequenceNumber, SequenceNumber};

    pub(super) fn shard(id: &str, parents: &[&str], closed: bool) -> Shard {
        Shard {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| (*p).into()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).into()),
            starting_hash_key: "0".into(),
            ending_hash_key: "9".into(),
            starting_sequence_number: "1".into(),
            ending_sequence_number: closed.then(|| "99".into()),
        }
    }

    pub(super) fn lease(
        id: &str,
        parents: &[&str],
        owner: Option<&str>,
        checkpoint: Checkpoint,
    ) -> Row {
        Row::Lease(Lease {
            shard_id: id.into(),
            owner: owner.map(Into::into),
            handoff_to: None,
            counter: 1,
            checkpoint,
            owner_switches_since_checkpoint: 0,
            parents: parents.iter().map(|p| (*p).into()).collect(),
            children: Vec::new(),
            hash_range: None,
            load: None,
        })
    }

    pub(super) fn at(seq: &str) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse(seq).unwrap(),
            sub_sequence_number: 0,
        })
    }

    fn ids(leases: &[Lease]) -> Vec<&str> {
        leases.iter().map(|l| l.shard_id.as_str()).collect()
    }

    /// P split into A and B, which were merged into M.
    fn split_then_merge() -> Vec<Shard> {
        vec![
            shard("P", &[], true),
            shard("A", &["P"], true),
            shard("B", &["P"], true),
            shard("M", &["A", "B"], false),
        ]
    }

    #[test]
    fn a_fresh_application_leases_the_whole_lineage_parents_first() {
        let shards = split_then_merge();
        let lineage = Lineage::new(&shards);
        let now = SystemTime::now();
        let created = new_leases(&[], &lineage, &|_| Checkpoint::TrimHorizon, now);
        assert_eq!(ids(&created), ["P", "A", "B", "M"]);
        // Latest: closed shards without leased parents are skipped; the
        // open one is pinned to now.
        let created = new_leases(&[], &lineage, &|_| Checkpoint::Latest, now);
        assert_eq!(ids(&created), ["M"]);
        assert_eq!(created[0].checkpoint, Checkpoint::AtTimestamp(Some(now)));
    }

    #[test]
    fn a_finished_ancestor_is_never_leased_again() {
        // P's lease was deleted once A and B started; A and B finished and
        // M started, so A's and B's were deleted too. P, A, B are still
        // listed (retention): none of them may come back.
        let shards = split_then_merge();
        let lineage = Lineage::new(&shards);
        let rows = vec![lease("M", &["A", "B"], Some("w"), at("5"))];
        for initial in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp(Some(SystemTime::UNIX_EPOCH)),
        ] {
            let created = new_leases(&rows, &lineage, &|_| initial.clone(), SystemTime::now());
            assert!(created.is_empty(), "{initial:?}: {:?}", ids(&created));
        }
        // A descendant's row counts even when it is malformed.
        let rows = vec![Row::Malformed {
            shard_id: "A".into(),
            why: "x".into(),
        }];
        let created = new_leases(
            &rows,
            &lineage,
            &|_| Checkpoint::TrimHorizon,
            SystemTime::now(),
        );
        assert_eq!(ids(&created), ["B", "M"]);
    }

    #[test]
    fn children_of_a_leased_shard_start_at_their_beginning_under_latest() {
        let shards = vec![
            shard("P", &[], true),
            shard("A", &["P"], false),
            shard("B", &["P"], false),
        ];
        let lineage = Lineage::new(&shards);
        let rows = vec![lease("P", &[], Some("w"), at("5"))];
        let created = new_leases(&rows, &lineage, &|_| Checkpoint::Latest, SystemTime::now());
        assert_eq!(ids(&created), ["A", "B"]);
        assert!(
            created
                .iter()
                .all(|l| l.checkpoint == Checkpoint::TrimHorizon)
        );
    }

    #[test]
    fn children_wait_for_unfinished_and_malformed_parents_not_for_expired_ones() {
        let shards = vec![shard("A", &["P"], false), shard("B", &["Q"], false)];
        let lineage = Lineage::new(&shards);
        let rows = vec![
            lease("P", &[], None, at("5")),
            Row::Malformed {
                shard_id: "Q".into(),
                why: "checkpoint \"x\"".into(),
            },
            lease("A", &["P"], None, Checkpoint::TrimHorizon),
            lease("B", &["Q"], None, Checkpoint::TrimHorizon),
        ];
        let s = standings(&rows, &lineage, &HashSet::new());
        assert_eq!(s["P"], Standing::NotListed);
        assert_eq!(s["A"], Standing::Blocked(vec!["P".into()]));
        assert_eq!(s["B"], Standing::Blocked(vec!["Q".into()]));
        assert!(matches!(s["Q"], Standing::Malformed(_)));
        // P confirmed gone: A is free; B still waits for the malformed Q.
        let s = standings(&rows, &lineage, &HashSet::from(["P".to_owned()]));
        assert_eq!(s["P"], Standing::Expired);
        assert_eq!(s["A"], Standing::Readable);
        assert_eq!(s["B"], Standing::Blocked(vec!["Q".into()]));
    }

    #[test]
    fn a_shard_is_gone_only_when_confirmed() {
        let shards = vec![shard("A", &["P"], false)];
        let lineage = Lineage::new(&shards);
        let rows = vec![
            lease("P", &[], None, at("5")),
            lease("A", &["P"], None, Checkpoint::TrimHorizon),
        ];
        let once = count_misses(&rows, &lineage, &HashMap::new());
        assert_eq!(once, HashMap::from([("P".to_owned(), 1)]));
        assert!(gone(&once, &HashSet::new()).is_empty(), "one listing");
        let not_found = HashSet::from(["P".to_owned()]);
        assert_eq!(gone(&once, &not_found), not_found, "listing + reader");
        let twice = count_misses(&rows, &lineage, &once);
        assert_eq!(gone(&twice, &HashSet::new()), not_found, "two listings");
        // Listed again: the count starts over.
        let all = vec![shard("P", &[], true), shard("A", &["P"], false)];
        assert!(count_misses(&rows, &Lineage::new(&all), &twice).is_empty());
    }

    struct World {
        shards: Vec<Shard>,
        rows: Vec<Row>,
        held: HashSet<String>,
        stale: HashSet<String>,
        unclaimed: HashSet<String>,
        overdue: HashSet<String>,
        gone: HashSet<String>,
        max: usize,
        /// Live workers that hold no lease.
        idle: Vec<&'static str>,
        /// Other workers' caps.
        caps: BTreeMap<String, u64>,
    }

    impl World {
        fn new(shards: Vec<Shard>, rows: Vec<Row>) -> World {
            World {
                shards,
                rows,
                held: HashSet::new(),
                stale: HashSet::new(),
                unclaimed: HashSet::new(),
                overdue: HashSet::new(),
                gone: HashSet::new(),
                max: usize::MAX,
                idle: Vec::new(),
                caps: BTreeMap::new(),
            }
        }

        fn plan(&self, me: &str) -> RoundPlan {
            let lineage = Lineage::new(&self.shards);
            let standings = standings(&self.rows, &lineage, &self.gone);
            // Every owner of the table is alive unless its lease is stale.
            let live: BTreeSet<String> = self
                .rows
                .iter()
                .filter_map(Row::lease)
                .filter(|l| !self.stale.contains(&l.shard_id))
                .filter_map(|l| l.owner.clone())
                .chain(self.idle.iter().map(|w| (*w).to_owned()))
                .chain([me.to_owned()])
                .collect();
            plan_round(&RoundInput {
                me,
                rows: &self.rows,
                standings: &standings,
                lineage: &lineage,
                gone: &self.gone,
                held: &self.held,
                stale: &self.stale,
                unclaimed: &self.unclaimed,
                live: &live,
                handoff_overdue: &self.overdue,
                max_leases: self.max,
                earlier_runs: &HashSet::new(),
                caps: &self.caps,
                departed: &HashSet::new(),
            })
        }
    }

    /// A world of leases held as `counts` says: (owner, how many), shards
    /// `s00`, `s01`, ... in that order; "me" holds its own.
    fn world_of(counts: &[(&str, usize)]) -> World {
        let owners: Vec<&str> = counts
            .iter()
            .flat_map(|(owner, n)| std::iter::repeat_n(*owner, *n))
            .collect();
        let shards: Vec<Shard> = (0..owners.len())
            .map(|i| shard(&format!("s{i:02}"), &[], false))
            .collect();
        let rows: Vec<Row> = owners
            .iter()
            .enumerate()
            .map(|(i, o)| lease(&format!("s{i:02}"), &[], Some(o), at("1")))
            .collect();
        let mut world = World::new(shards, rows);
        for (i, o) in owners.iter().enumerate() {
            if *o == "me" {
                world.held.insert(format!("s{i:02}"));
            }
        }
        world
    }

    fn taken(plan: &RoundPlan) -> Vec<&str> {
        plan.take.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn a_capped_workers_deficit_absorbs_no_surplus_and_gets_no_free_lease() {
        // "b" holds 8; "c" holds none but may hold only one. Evenly among
        // the other two: "b" keeps 4, "c" gets 1, "me" asks for 3.
        let mut world = world_of(&[("b", 8)]);
        world.idle = vec!["c"];
        world.caps.insert("c".into(), 1);
        let plan = world.plan("me");
        assert_eq!(plan.ask.len(), 3, "{plan:?}");
        assert_eq!(plan.target, 4);
        // "c" holds its one: a free lease goes to the least loaded of the
        // others ("me" before "x" by id), not to "c", which would never
        // take it (it waited twice the failover time for anyone).
        let mut world = world_of(&[("x", 3), ("me", 2), ("c", 1)]);
        world.caps.insert("c".into(), 1);
        if let Some(Row::Lease(l)) = world.rows.first_mut() {
            l.owner = None;
        }
        assert_eq!(taken(&world.plan("me")), ["s00"]);
    }

    #[test]
    fn shares_fill_up_to_the_caps_then_even_out_the_rest() {
        let loads: BTreeMap<&str, usize> = [("a", 5), ("b", 0), ("c", 0), ("d", 0)].into();
        let cap_of = |w: &str| match w {
            "b" => 1,
            "c" => 2,
            _ => usize::MAX,
        };
        let share = shares(&loads, 10, &cap_of);
        assert_eq!(share, [("a", 4), ("b", 1), ("c", 2), ("d", 3)].into());
        // More leases than the caps and the rest can hold evenly.
        let share = shares(&loads, 3, &cap_of);
        assert_eq!(share.values().sum::<usize>(), 3);
        assert!(share["b"] <= 1 && share["c"] <= 2, "{share:?}");
    }

    #[test]
    fn takes_parents_before_children() {
        let shards = vec![
            shard("X", &[], true),
            shard("A", &["X"], false),
            shard("B", &["X"], false),
        ];
        let rows = vec![
            lease("A", &["X"], None, Checkpoint::TrimHorizon),
            lease("B", &["X"], None, Checkpoint::TrimHorizon),
            lease("X", &[], Some("dead"), at("3")),
        ];
        let mut world = World::new(shards, rows);
        world.stale.insert("X".into());
        world.max = 1;
        assert_eq!(taken(&world.plan("me")), ["X"]);
    }

    #[test]
    fn a_capped_worker_gives_up_a_blocked_child_for_its_parent() {
        let shards = vec![
            shard("X", &[], true),
            shard("A", &["X"], false),
            shard("B", &["X"], false),
        ];
        let rows = vec![
            lease("A", &["X"], Some("me"), Checkpoint::TrimHorizon),
            lease("B", &["X"], None, Checkpoint::TrimHorizon),
            lease("X", &[], Some("dead"), at("3")),
        ];
        let mut world = World::new(shards, rows);
        world.held.insert("A".into());
        world.max = 1;
        // X's owner is alive: nothing to swap for.
        let plan = world.plan("me");
        assert!(plan.take.is_empty() && plan.release.is_empty(), "{plan:?}");
        assert_eq!(plan.blocked, ["A"]);
        // X's owner died: give A up, take X.
        world.stale.insert("X".into());
        let plan = world.plan("me");
        assert_eq!(plan.release, ["A"]);
        assert_eq!(taken(&plan), ["X"]);
        assert_eq!(plan.start, ["X"], "read as soon as it is taken");
    }

    #[test]
    fn takes_beyond_its_share_what_capped_workers_leave_behind() {
        let shards: Vec<Shard> = (0..4)
            .map(|i| shard(&format!("s{i}"), &[], false))
            .collect();
        let mut rows: Vec<Row> = (0..3)
            .map(|i| {
                lease(
                    &format!("s{i}"),
                    &[],
                    Some(if i < 2 { "me" } else { "capped" }),
                    at("1"),
                )
            })
            .collect();
        rows.push(lease("s3", &[], None, Checkpoint::TrimHorizon));
        let mut world = World::new(shards, rows);
        world.held = HashSet::from(["s0".into(), "s1".into()]);
        // At its share (2 of 4 with 2 workers): leaves s3 to the other...
        assert!(world.plan("me").take.is_empty());
        // ...until s3 has stood unowned for twice the failover time.
        world.unclaimed.insert("s3".into());
        assert_eq!(taken(&world.plan("me")), ["s3"]);
        world.max = 2;
        assert!(world.plan("me").take.is_empty(), "never beyond the cap");
    }

    #[test]
    fn never_takes_malformed_finished_unlisted_or_gone_rows() {
        let shards = vec![shard("A", &[], false), shard("E", &[], true)];
        let rows = vec![
            Row::Malformed {
                shard_id: "M".into(),
                why: "x".into(),
            },
            lease("E", &[], None, Checkpoint::ShardEnd),
            lease("U", &[], None, at("1")),
            lease("G", &[], None, at("1")),
            lease("A", &[], None, Checkpoint::TrimHorizon),
        ];
        let mut world = World::new(shards, rows);
        world.gone.insert("G".into());
        let plan = world.plan("me");
        assert_eq!(taken(&plan), ["A"]);
        // G blocks nothing and names nothing: left for another stream.
        assert!(plan.delete.is_empty(), "{plan:?}");
    }

    #[test]
    fn deletes_finished_leases_and_orphaned_parents() {
        let shards = vec![shard("A", &["P"], false), shard("B", &["Q"], false)];
        let mut q = lease("Q", &[], None, Checkpoint::ShardEnd);
        if let Row::Lease(l) = &mut q {
            l.children = vec!["B".into()];
        }
        let rows = vec![
            lease("P", &[], Some("gone-worker"), at("5")),
            q,
            lease("A", &["P"], None, Checkpoint::TrimHorizon),
            lease("B", &["Q"], None, at("7")),
        ];
        let mut world = World::new(shards, rows);
        // Q finished and its only child started; P is not confirmed gone yet.
        assert_eq!(world.plan("me").delete, ["Q"]);
        if let Row::Lease(q) = &mut world.rows[1] {
            q.children.clear();
        }
        assert!(
            world.plan("me").delete.is_empty(),
            "Q is unlisted but not confirmed gone, and names no child"
        );
        world.gone.insert("Q".into());
        assert_eq!(world.plan("me").delete, ["Q"]);
        world.gone.insert("P".into());
        world.stale.insert("P".into());
        let plan = world.plan("me");
        assert_eq!(plan.delete, ["P", "Q"]);
        assert!(!taken(&plan).contains(&"P"));
        assert!(taken(&plan).contains(&"A"), "A no longer waits: {plan:?}");
    }

    #[test]
    fn a_child_not_started_whose_listed_parent_has_no_row_calls_for_a_consistent_read() {
        let shards = split_then_merge();
        let lineage = Lineage::new(&shards);
        // M created with A and B; a stale read shows M and A only.
        let rows = vec![
            lease("A", &["P"], None, Checkpoint::TrimHorizon),
            lease("M", &["A", "B"], None, Checkpoint::TrimHorizon),
        ];
        assert!(parent_may_be_unseen(&rows, &lineage));
        // Started children, or parents not listed (expired), call for nothing.
        let started = vec![lease("M", &["A", "B"], None, at("4"))];
        assert!(!parent_may_be_unseen(&started, &lineage));
        let unlisted = Lineage::new(&shards[3..]);
        assert!(!parent_may_be_unseen(&rows[1..], &unlisted));
    }

    #[test]
    fn a_lease_newer_than_the_listing_calls_for_a_new_listing_once() {
        let shards = vec![shard("P", &[], true)];
        let lineage = Lineage::new(&shards);
        let rows = vec![
            lease("P", &[], None, Checkpoint::ShardEnd),
            lease("A", &["P"], None, Checkpoint::TrimHorizon),
        ];
        let misses = HashMap::new();
        assert!(names_unlisted_shard(&rows, &lineage, &misses));
        // Listed again and still left out: wait for the next shard sync.
        let misses = count_misses(&rows, &lineage, &misses);
        assert!(!names_unlisted_shard(&rows, &lineage, &misses));
        assert!(!names_unlisted_shard(&rows[..1], &lineage, &HashMap::new()));
    }

    #[test]
    fn a_parent_is_deleted_though_a_finished_child_was_deleted_before_its_sibling_started() {
        // P split into A and B; B was merged into M. B finished and was
        // deleted once M started, all before A started (CI: the worker
        // that could take A had a stale listing). P must still go once A
        // starts: a child named on its parent has a row from before it was
        // named, so a missing one was finished and cleaned up.
        let shards = vec![
            shard("P", &[], true),
            shard("A", &["P"], false),
            shard("B", &["P"], true),
            shard("M", &["B"], false),
        ];
        let mut p = lease("P", &[], None, Checkpoint::ShardEnd);
        if let Row::Lease(l) = &mut p {
            l.children = vec!["A".into(), "B".into()];
        }
        let rows = vec![
            p,
            lease("A", &["P"], Some("w"), Checkpoint::TrimHorizon),
            lease("M", &["B"], Some("w"), at("9")),
        ];
        let mut world = World::new(shards, rows);
        assert!(world.plan("me").delete.is_empty(), "A has not started");
        world.rows[1] = lease("A", &["P"], Some("w"), at("3"));
        assert_eq!(world.plan("me").delete, ["P"]);
    }

    #[test]
    fn balances_towards_an_even_share_and_stops_waiting_for_overdue_handoffs() {
        let shards: Vec<Shard> = (0..6)
            .map(|i| shard(&format!("s{i}"), &[], false))
            .collect();
        let rows: Vec<Row> = (0..6)
            .map(|i| lease(&format!("s{i}"), &[], Some("busy"), at("1")))
            .collect();
        let mut world = World::new(shards, rows);
        let plan = world.plan("me");
        assert_eq!((plan.workers, plan.target), (2, 3));
        assert_eq!(plan.ask.len(), 3, "{plan:?}");
        assert!(plan.ask.iter().all(|(_, owner, _)| owner == "busy"));
        assert!(plan.waiting);
        // The owner ignored the request for s0 for the failover time.
        if let Row::Lease(l) = &mut world.rows[0] {
            l.handoff_to = Some("me".into());
        }
        world.overdue.insert("s0".into());
        let plan = world.plan("me");
        assert!(
            taken(&plan).is_empty(),
            "a live owner's lease is never taken"
        );
        assert!(
            plan.ask.iter().all(|(id, _, _)| id != "s0"),
            "nor asked for again: {plan:?}"
        );
        // It still counts as coming (every worker counts it so): two more.
        assert_eq!(plan.ask.len(), 2);
    }

    #[test]
    fn a_worker_below_the_floor_asks_one_at_the_ceiling_and_no_one_ping_pongs() {
        let asked = |plan: &RoundPlan| -> Vec<String> {
            plan.ask.iter().map(|(_, owner, _)| owner.clone()).collect()
        };
        // 10 leases, 3 workers: ceiling 4, floor 3. Nobody is above the
        // ceiling, but "me" is below the floor: it asks one of 4 (the
        // ceiling stays with the first by id).
        let plan = world_of(&[("me", 2), ("a", 4), ("b", 4)]).plan("me");
        assert_eq!(plan.target, 4);
        assert_eq!(asked(&plan), ["b"], "{plan:?}");
        // Within one lease of even: nothing moves (no ping-pong).
        for counts in [
            [("me", 3), ("a", 4), ("b", 3)],
            [("me", 3), ("a", 3), ("b", 4)],
        ] {
            let plan = world_of(&counts).plan("me");
            assert!(plan.ask.is_empty(), "{counts:?}: {plan:?}");
        }
        // Far below: several asks, never leaving a giver below the asker.
        let plan = world_of(&[("me", 0), ("a", 5), ("b", 5)]).plan("me");
        assert_eq!(asked(&plan), ["a", "b", "b"], "4, 3 and 3 after: {plan:?}");
        // A worker joining 3 others at 5, 5, 5 (15 leases: ceiling 4,
        // floor 3): 3, 4, 4, 4 after, the ceilings kept by those holding
        // the most.
        let plan = world_of(&[("me", 0), ("a", 5), ("b", 5), ("c", 5)]).plan("me");
        assert_eq!(asked(&plan), ["a", "b", "c"], "{plan:?}");
        // 20 leases among 4 (ceiling and floor 5): each gives what it holds
        // beyond the ceiling, no more.
        let plan = world_of(&[("me", 0), ("a", 7), ("b", 7), ("c", 6)]).plan("me");
        assert_eq!(plan.target, 5);
        assert_eq!(asked(&plan), ["a", "a", "b", "b", "c"], "{plan:?}");
    }

    #[test]
    fn workers_asking_at_once_ask_for_different_leases_and_end_even() {
        // 30 leases, 6 workers: 5 each. Each worker plans from the same
        // table; between them they ask for each surplus lease once.
        let counts = [("a", 8), ("b", 6), ("c", 6), ("d", 4), ("e", 4), ("f", 2)];
        let mut world = world_of(&counts);
        let held_by = |world: &World, worker: &str| -> HashSet<String> {
            world
                .rows
                .iter()
                .filter_map(Row::lease)
                .filter(|l| l.owner.as_deref() == Some(worker))
                .map(|l| l.shard_id.clone())
                .collect()
        };
        let mut asked: Vec<(String, &str)> = Vec::new();
        let mut after: BTreeMap<String, usize> =
            counts.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect();
        for (worker, _) in counts {
            world.held = held_by(&world, worker);
            let plan = world.plan(worker);
            for (shard_id, owner, _) in plan.ask {
                asked.push((shard_id, worker));
                *after.get_mut(&owner).unwrap() -= 1;
                *after.get_mut(worker).unwrap() += 1;
            }
        }
        let distinct: HashSet<&String> = asked.iter().map(|(id, _)| id).collect();
        assert_eq!(distinct.len(), asked.len(), "asked twice: {asked:?}");
        assert!(after.values().all(|n| *n == 5), "{after:?}");
        // With the asks in the table (in flight), nobody asks for more.
        for row in &mut world.rows {
            if let Row::Lease(l) = row {
                l.handoff_to = asked
                    .iter()
                    .find(|(id, _)| *id == l.shard_id)
                    .map(|(_, to)| (*to).to_owned());
            }
        }
        for (worker, _) in counts {
            world.held = held_by(&world, worker);
            assert!(world.plan(worker).ask.is_empty(), "{worker} asks again");
        }
    }

    #[test]
    fn free_leases_are_shared_out_to_the_least_loaded_live_workers_alike() {
        let shards: Vec<Shard> = (0..6)
            .map(|i| shard(&format!("s{i}"), &[], false))
            .collect();
        let rows: Vec<Row> = (0..6)
            .map(|i| lease(&format!("s{i}"), &[], None, Checkpoint::TrimHorizon))
            .collect();
        let mut world = World::new(shards, rows);
        world.idle = vec!["a", "b", "me"];
        // Every worker reading this table takes its own two, none the same.
        let mut all: Vec<&str> = Vec::new();
        let plans: Vec<RoundPlan> = ["a", "b", "me"].iter().map(|w| world.plan(w)).collect();
        for plan in &plans {
            assert_eq!(plan.take.len(), 2, "{plan:?}");
            assert!(!plan.settled);
            all.extend(taken(plan));
        }
        all.sort();
        assert_eq!(all, ["s0", "s1", "s2", "s3", "s4", "s5"]);
        assert_eq!(taken(&plans[2]), ["s2", "s5"]);
        // Left free for twice the failover time: taken by whoever has room
        // (the rest is shared out anew around it).
        world.unclaimed.insert("s0".into());
        assert_eq!(taken(&world.plan("me")), ["s0", "s5"]);
    }

    #[test]
    fn a_dead_workers_leases_spread_evenly_over_the_live_ones() {
        let mut world = world_of(&[("me", 2), ("a", 2), ("b", 2), ("x", 6)]);
        // "x" is dead: its heartbeat stood still for the failover time.
        world.stale = (6..12).map(|i| format!("s{i:02}")).collect();
        let plan = world.plan("me");
        assert_eq!((plan.workers, plan.target), (3, 4));
        assert_eq!(plan.take.len(), 2, "{plan:?}");
        assert!(plan.ask.is_empty(), "even after the takes: {plan:?}");
    }

    #[test]
    fn a_lease_ours_from_an_earlier_run_without_room_for_it_is_freed() {
        let shards = vec![shard("s0", &[], false), shard("s1", &[], false)];
        let rows = vec![
            lease("s0", &[], Some("me"), at("1")),
            lease("s1", &[], Some("me"), at("2")),
        ];
        let mut world = World::new(shards, rows);
        world.held.insert("s0".into());
        world.max = 1;
        let plan = world.plan("me");
        assert!(plan.take.is_empty());
        assert_eq!(plan.disown, [("s1".to_owned(), 1)]);
        // With room, it is taken back, beyond an even share if need be.
        world.max = usize::MAX;
        world.idle = vec!["a", "b", "c"];
        let plan = world.plan("me");
        assert_eq!(taken(&plan), ["s1"]);
        assert!(plan.disown.is_empty());
    }

    #[test]
    fn a_table_held_by_live_workers_with_nothing_to_do_is_settled() {
        let shards = vec![shard("s0", &[], false), shard("s1", &[], false)];
        let rows = vec![
            lease("s0", &[], Some("me"), at("1")),
            lease("s1", &[], Some("a"), at("2")),
        ];
        let mut world = World::new(shards, rows);
        world.held.insert("s0".into());
        assert!(world.plan("me").settled);
        // Asked for one of ours: look again once it is handed over.
        if let Row::Lease(l) = &mut world.rows[0] {
            l.handoff_to = Some("a".into());
        }
        assert!(!world.plan("me").settled);
        if let Row::Lease(l) = &mut world.rows[0] {
            l.handoff_to = None;
        }
        // An owner outside the workers row is watched until it expires.
        world.stale.insert("s1".into());
        assert!(!world.plan("me").settled);
    }

    #[test]
    fn a_lease_the_table_gives_to_another_is_lost_and_not_started() {
        let shards = vec![shard("A", &[], false)];
        let rows = vec![lease("A", &[], Some("other"), at("1"))];
        let mut world = World::new(shards, rows);
        world.held.insert("A".into());
        let plan = world.plan("me");
        assert_eq!(plan.lost, ["A"]);
        assert!(plan.start.is_empty());
    }
}
