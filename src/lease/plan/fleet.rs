//! The leader's plan for the whole fleet (issue 25): one elected worker
//! reads the table and decides for every live worker at once which free
//! leases each gets and which leases givers hand to whom, with the
//! balancer ([`balance`]): by load or by lease count (issue 27), the
//! same code for both. Deletions follow the rule of a worker's own plan,
//! through the same code. Pure; the leader carries the plan out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Lineage, Row, Standing, cap_in, deletions};
use crate::lease::Lease;
use crate::lease::balance::{self, BalanceSettings, HashRange, Move, MoveHistory};

/// What the leader knows at the start of a round.
pub(crate) struct FleetInput<'a> {
    /// The lease table as the leader read it.
    pub rows: &'a [Row],
    /// Where each row stands (see `plan::standings`).
    pub standings: &'a HashMap<String, Standing>,
    /// The stream's shards as last listed (for deletions).
    pub lineage: &'a Lineage<'a>,
    /// Rows whose shard the service confirmed gone (see `plan::gone`).
    pub gone: &'a HashSet<String>,
    /// The live workers (the leader included), from the worker items.
    pub live: &'a BTreeSet<String>,
    /// Leases whose owner is presumed dead (the caller judges): assigned
    /// anew like free ones.
    pub stale: &'a HashSet<String>,
    /// The most leases each capped worker may hold.
    pub caps: &'a BTreeMap<String, u64>,
    /// Leases asked for longer than the failover time ago: not waited for
    /// (they count as their owner's) and not asked for anew.
    pub handoff_overdue: &'a HashSet<String>,
    /// Live workers that say they cannot keep up: they take nothing.
    pub falling_behind: &'a HashSet<String>,
    /// Streams (lease-key prefixes) live workers say they do not read:
    /// they take none of their leases.
    pub unread: &'a BTreeMap<String, BTreeSet<String>>,
    /// How leases are balanced (the leader's settings apply to all).
    pub balance: &'a FleetBalance,
    /// The moves of recent rounds, and this round's number.
    pub memory: &'a BalanceMemory,
}

/// The leader's balancing settings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct FleetBalance {
    /// What is evened out, and how fast.
    pub settings: BalanceSettings,
    /// The most load (bytes read per second) any worker may carry;
    /// `None`: no cap.
    pub max_throughput: Option<f64>,
}

impl FleetBalance {
    /// The default damping, threshold and bounds, balancing `by`, with a
    /// throughput cap if given.
    pub(crate) fn new(by: balance::BalanceBy, max_throughput: Option<f64>) -> FleetBalance {
        FleetBalance {
            settings: BalanceSettings {
                by,
                ..BalanceSettings::default()
            },
            max_throughput,
        }
    }
}

/// What the leader remembers between rounds: the moves of recent rounds
/// (a lease moved is left alone for a few rounds: no ping-pong) and the
/// round number.
#[derive(Debug, Default)]
pub(crate) struct BalanceMemory {
    history: MoveHistory,
    round: u64,
}

impl BalanceMemory {
    /// Notes the asks of the plan just carried out, and starts the next
    /// round. Assignments of free leases are not moves between workers:
    /// a lease a lone first worker took may go to a joiner at once.
    pub(crate) fn record(&mut self, plan: &FleetPlan, settings: &BalanceSettings) {
        let asked = plan.ask.iter().map(|(lease, from, _, to)| Move {
            lease: lease.clone(),
            from: Some(from.clone()),
            to: to.clone(),
        });
        let moves: Vec<Move> = asked.collect();
        self.history
            .record(&moves, self.round, settings.cooldown_rounds);
        self.round += 1;
    }
}

/// The fleet's moves for one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FleetPlan {
    /// Free or stale readable leases to take for a live worker: (lease,
    /// counter seen, new owner), by lease id.
    pub assign: Vec<(String, u64, String)>,
    /// Balance moves to ask for: (lease, owner, counter seen, to), by
    /// lease id.
    pub ask: Vec<(String, String, u64, String)>,
    /// Rows to delete (the rule of a worker's own plan), by id.
    pub delete: Vec<String>,
    /// How many workers share the table: the live ones and the owners of
    /// leases not presumed dead.
    pub workers: usize,
    /// True when there is nothing to do and nothing in flight: no lease to
    /// assign, ask for or delete, none asked for and not yet handed over,
    /// none left free for want of room, none held by an owner that is not
    /// live and not judged dead yet.
    pub settled: bool,
}

/// Plans one round for the whole fleet.
///
/// Only readable leases move and count: a child waits unowned until its
/// parents are finished, then it is assigned; one owned already stays
/// with its owner and counts for nobody. A lease asked for counts as its
/// asker's until handed over, unless the ask is overdue; either way it is
/// not asked for anew. Free and stale leases go to the least loaded live
/// worker under its caps (heaviest first; by count, or with equal loads,
/// by lease id), then the balancer asks for moves towards even loads (see
/// [`balance::balance`]). A lease's load is what its row says; one
/// without is inherited from its parents by hash range, or else its
/// stream's mean. Owners that are not live and whose leases are not stale
/// (not judged yet) keep their leases and count as workers, but neither
/// give nor receive.
pub(crate) fn plan_fleet(input: &FleetInput<'_>) -> FleetPlan {
    let readable = |l: &Lease| input.standings.get(&l.shard_id) == Some(&Standing::Readable);
    let rows: HashMap<&str, &Lease> = input
        .rows
        .iter()
        .filter_map(Row::lease)
        .map(|l| (l.shard_id.as_str(), l))
        .collect();
    let mut leases: Vec<&Lease> = rows.values().copied().filter(|l| readable(l)).collect();
    leases.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let mut in_flight = false;
    let mut not_judged: BTreeSet<&str> = BTreeSet::new();
    let mut to_balance = Vec::with_capacity(leases.len());
    for lease in &leases {
        let owner = match lease.owner.as_deref() {
            Some(owner) if !input.stale.contains(&lease.shard_id) => Some(owner),
            _ => None,
        };
        if let Some(owner) = owner.filter(|o| !input.live.contains(*o)) {
            not_judged.insert(owner);
            continue;
        }
        let asker = lease.handoff_to.as_deref().filter(|to| {
            owner.is_some()
                && input.live.contains(*to)
                && !input.handoff_overdue.contains(&lease.shard_id)
        });
        in_flight |= asker.is_some();
        to_balance.push(balance::Lease {
            key: lease.shard_id.clone(),
            stream: stream_of(&lease.shard_id).to_owned(),
            owner: asker.or(owner).map(str::to_owned),
            load: load_of(lease, &rows),
            pinned: owner.is_some() && lease.handoff_to.is_some(),
        });
    }
    let workers: Vec<balance::Worker> = input
        .live
        .iter()
        .map(|id| balance::Worker {
            id: id.clone(),
            max_leases: Some(cap_in(input.caps, id)).filter(|c| *c != usize::MAX),
            max_throughput: input.balance.max_throughput,
            falling_behind: input.falling_behind.contains(id),
            unread: input.unread.get(id).cloned().unwrap_or_default(),
        })
        .collect();
    let moves = balance::balance(
        &workers,
        &to_balance,
        &input.memory.history,
        input.memory.round,
        &input.balance.settings,
    );
    let counter: HashMap<&str, u64> = leases
        .iter()
        .map(|l| (l.shard_id.as_str(), l.counter))
        .collect();
    let mut plan = FleetPlan::default();
    for m in moves {
        let seen = counter[m.lease.as_str()];
        match m.from {
            None => plan.assign.push((m.lease, seen, m.to)),
            Some(from) => plan.ask.push((m.lease, from, seen, m.to)),
        }
    }
    plan.assign.sort();
    plan.ask.sort();
    let free = to_balance.iter().filter(|l| l.owner.is_none()).count();
    let left_free = plan.assign.len() < free;
    plan.delete = deletions(input.rows, input.standings, input.lineage, input.gone);
    plan.delete.sort();
    plan.workers = input.live.len() + not_judged.len();
    plan.settled = plan.assign.is_empty()
        && plan.ask.is_empty()
        && plan.delete.is_empty()
        && !in_flight
        && !left_free
        && not_judged.is_empty();
    plan
}

/// The stream part of a lease key: the prefix before the shard id of a
/// multi-stream table's key, empty for a bare shard id.
pub(crate) fn stream_of(key: &str) -> &str {
    key.rsplit_once(':').map_or("", |(stream, _)| stream)
}

/// A lease's load in bytes read per second: its row's, or for a child
/// without one, its share of its parents' by hash range (when every
/// parent's load and range is known); `None` otherwise (the balancer then
/// takes the stream's mean).
fn load_of(lease: &Lease, rows: &HashMap<&str, &Lease>) -> Option<f64> {
    if let Some(load) = lease.load {
        return Some(load.bytes_per_second);
    }
    let range = hash_range(lease)?;
    if lease.parents.is_empty() {
        return None;
    }
    let parents: Option<Vec<(f64, HashRange)>> = lease
        .parents
        .iter()
        .map(|id| {
            let parent = rows.get(id.as_str())?;
            Some((parent.load?.bytes_per_second, hash_range(parent)?))
        })
        .collect();
    Some(balance::inherited_load(range, &parents?))
}

fn hash_range(lease: &Lease) -> Option<HashRange> {
    let (start, end) = lease.hash_range.as_ref()?;
    Some(HashRange {
        start: start.parse().ok()?,
        end: end.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::tests::{at, lease, shard};
    use super::super::{RoundInput, plan_round, standings};
    use super::*;
    use crate::aws::kinesis::Shard;
    use crate::lease::Checkpoint;

    fn s(i: usize) -> String {
        format!("s{i:05}")
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|w| (*w).to_owned()).collect()
    }

    /// A lease table and what the leader knows besides.
    struct Table {
        shards: Vec<Shard>,
        rows: Vec<Row>,
        live: BTreeSet<String>,
        stale: HashSet<String>,
        caps: BTreeMap<String, u64>,
        overdue: HashSet<String>,
        gone: HashSet<String>,
        falling_behind: HashSet<String>,
        unread: BTreeMap<String, BTreeSet<String>>,
        balance: FleetBalance,
        memory: BalanceMemory,
    }

    impl Table {
        fn new(shards: Vec<Shard>, rows: Vec<Row>, live: &[&str]) -> Table {
            Table {
                shards,
                rows,
                live: set(live),
                stale: HashSet::new(),
                caps: BTreeMap::new(),
                overdue: HashSet::new(),
                gone: HashSet::new(),
                falling_behind: HashSet::new(),
                unread: BTreeMap::new(),
                balance: FleetBalance::default(),
                memory: BalanceMemory::default(),
            }
        }

        /// Readable leases `s00000`, `s00001`, ... held as `counts` says,
        /// in that order ("" for none), and these live workers.
        fn of(counts: &[(&str, usize)], live: &[&str]) -> Table {
            let owners: Vec<&str> = counts
                .iter()
                .flat_map(|(owner, n)| std::iter::repeat_n(*owner, *n))
                .collect();
            let shards = (0..owners.len())
                .map(|i| shard(&s(i), &[], false))
                .collect();
            let rows = owners
                .iter()
                .enumerate()
                .map(|(i, o)| lease(&s(i), &[], (!o.is_empty()).then_some(*o), at("1")))
                .collect();
            Table::new(shards, rows, live)
        }

        fn plan(&self) -> FleetPlan {
            self.timed_plan().0
        }

        /// The plan, and how long `plan_fleet` alone took.
        fn timed_plan(&self) -> (FleetPlan, Duration) {
            let lineage = Lineage::new(&self.shards);
            let standings = standings(&self.rows, &lineage, &self.gone);
            let started = Instant::now();
            let plan = plan_fleet(&FleetInput {
                rows: &self.rows,
                standings: &standings,
                lineage: &lineage,
                gone: &self.gone,
                live: &self.live,
                stale: &self.stale,
                caps: &self.caps,
                handoff_overdue: &self.overdue,
                falling_behind: &self.falling_behind,
                unread: &self.unread,
                balance: &self.balance,
                memory: &self.memory,
            });
            (plan, started.elapsed())
        }

        fn lease_mut(&mut self, id: &str) -> &mut Lease {
            self.rows
                .iter_mut()
                .find_map(|row| match row {
                    Row::Lease(l) if l.shard_id == id => Some(l),
                    _ => None,
                })
                .unwrap()
        }

        /// The plan carried out: every assignment taken, every ask handed over.
        fn carry_out(&mut self, plan: &FleetPlan) {
            let at: HashMap<String, usize> = self
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| (r.shard_id().to_owned(), i))
                .collect();
            let moves = plan.assign.iter().map(|(id, _, to)| (id, to));
            let handed = plan.ask.iter().map(|(id, _, _, to)| (id, to));
            for (id, to) in moves.chain(handed) {
                if let Row::Lease(l) = &mut self.rows[at[id]] {
                    l.owner = Some(to.clone());
                    l.handoff_to = None;
                    l.counter += 1;
                }
            }
        }

        /// Leases each live worker owns.
        fn counts(&self) -> BTreeMap<String, usize> {
            let mut counts: BTreeMap<String, usize> =
                self.live.iter().map(|w| (w.clone(), 0)).collect();
            for l in self.rows.iter().filter_map(Row::lease) {
                if let Some(n) = l.owner.as_ref().and_then(|o| counts.get_mut(o)) {
                    *n += 1;
                }
            }
            counts
        }
    }

    fn assigned(plan: &FleetPlan) -> Vec<(String, String)> {
        let pairs = plan
            .assign
            .iter()
            .map(|(id, _, to)| (id.clone(), to.clone()));
        pairs.collect()
    }

    /// (lease, owner, to) of each ask.
    fn asked(plan: &FleetPlan) -> Vec<(String, String, String)> {
        let asks = plan.ask.iter();
        asks.map(|(id, owner, _, to)| (id.clone(), owner.clone(), to.clone()))
            .collect()
    }

    fn givers_to(plan: &FleetPlan, to: &str) -> Vec<String> {
        let asks = plan.ask.iter().filter(|(_, _, _, t)| t == to);
        asks.map(|(_, owner, _, _)| owner.clone()).collect()
    }

    fn counts_of(items: &[(&str, usize)]) -> BTreeMap<String, usize> {
        items.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect()
    }

    fn pairs(items: &[(usize, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(i, w)| (s(*i), (*w).to_owned()))
            .collect()
    }

    #[test]
    fn a_cold_start_shares_the_free_leases_evenly_ties_by_id() {
        let table = Table::of(&[("", 7)], &["c", "a", "b"]);
        let plan = table.plan();
        let expected = pairs(&[
            (0, "a"),
            (1, "b"),
            (2, "c"),
            (3, "a"),
            (4, "b"),
            (5, "c"),
            (6, "a"),
        ]);
        assert_eq!(assigned(&plan), expected);
        assert!(plan.assign.iter().all(|(_, counter, _)| *counter == 1));
        assert!(plan.ask.is_empty(), "3, 2, 2 is even: {plan:?}");
        assert_eq!(plan.workers, 3);
        assert!(!plan.settled);
    }

    #[test]
    fn a_dead_workers_leases_spread_evenly_over_the_survivors() {
        let mut table = Table::of(&[("a", 2), ("b", 2), ("c", 2), ("x", 6)], &["a", "b", "c"]);
        table.stale = (6..12).map(s).collect();
        let plan = table.plan();
        assert_eq!(plan.assign.len(), 6, "{plan:?}");
        assert!(plan.assign.iter().all(|(_, _, to)| to != "x"));
        assert!(plan.ask.is_empty(), "even after the takes: {plan:?}");
        assert_eq!(plan.workers, 3, "x is judged dead: not a worker");
        table.carry_out(&plan);
        assert_eq!(table.counts(), counts_of(&[("a", 4), ("b", 4), ("c", 4)]));
    }

    #[test]
    fn a_joiner_is_asked_leases_from_the_busiest_until_its_floor() {
        // 15 leases among 4: 4, 4, 4, 3 after, the ceilings kept by those
        // holding the most.
        let table = Table::of(&[("a", 5), ("b", 5), ("c", 5)], &["a", "b", "c", "j"]);
        let plan = table.plan();
        assert_eq!(givers_to(&plan, "j"), ["a", "b", "c"], "{plan:?}");
        assert_eq!(plan.ask.len(), 3);
        assert_eq!(
            plan.ask[0],
            (s(0), "a".into(), 1, "j".into()),
            "readable first, by id"
        );
        // 20 leases among 4: each gives what it holds beyond 5, no more.
        let mut table = Table::of(&[("a", 7), ("b", 7), ("c", 6)], &["a", "b", "c", "j"]);
        let plan = table.plan();
        assert_eq!(givers_to(&plan, "j"), ["a", "a", "b", "b", "c"]);
        table.carry_out(&plan);
        assert!(
            table.counts().values().all(|n| *n == 5),
            "{:?}",
            table.counts()
        );
        assert!(table.plan().settled, "even and nothing in flight");
    }

    #[test]
    fn leases_in_flight_count_as_the_askers_and_are_not_asked_again() {
        let mut table = Table::of(&[("a", 8)], &["a", "j"]);
        table.lease_mut(&s(0)).handoff_to = Some("j".into());
        let plan = table.plan();
        // 7 and 1 counted: 3 more, none of them s0.
        let expected: Vec<_> = (1..4).map(|i| (s(i), "a".into(), "j".into())).collect();
        assert_eq!(asked(&plan), expected);
        assert!(!plan.settled);
        // All four in flight: nothing more to ask, but not settled.
        for i in 1..4 {
            table.lease_mut(&s(i)).handoff_to = Some("j".into());
        }
        let plan = table.plan();
        assert!(plan.ask.is_empty() && plan.assign.is_empty(), "{plan:?}");
        assert!(!plan.settled, "waiting for the handoffs");
        // A free lease goes to whoever is least loaded counting them (a
        // tie at 4: "a" by id), not to "j" for holding none yet.
        let mut table = Table::of(&[("a", 8), ("", 1)], &["a", "j"]);
        for i in 0..4 {
            table.lease_mut(&s(i)).handoff_to = Some("j".into());
        }
        assert_eq!(assigned(&table.plan()), pairs(&[(8, "a")]));
    }

    #[test]
    fn overdue_asks_count_as_the_owners_and_are_not_asked_anew() {
        let mut table = Table::of(&[("a", 6)], &["a", "j"]);
        for i in 0..3 {
            table.lease_mut(&s(i)).handoff_to = Some("j".into());
            table.overdue.insert(s(i));
        }
        let plan = table.plan();
        let expected: Vec<_> = (3..6).map(|i| (s(i), "a".into(), "j".into())).collect();
        assert_eq!(asked(&plan), expected, "others asked, not the overdue ones");
        // Even but for an overdue ask: not waited for.
        let mut table = Table::of(&[("a", 3), ("j", 3)], &["a", "j"]);
        table.lease_mut(&s(0)).handoff_to = Some("j".into());
        table.overdue.insert(s(0));
        let plan = table.plan();
        assert!(plan.settled, "{plan:?}");
        // The same ask in time is waited for.
        table.overdue.clear();
        assert!(!table.plan().settled);
    }

    #[test]
    fn no_lease_goes_to_a_worker_at_its_cap() {
        let mut table = Table::of(&[("c", 1), ("", 4)], &["a", "b", "c"]);
        table.caps.insert("c".into(), 1);
        let plan = table.plan();
        assert_eq!(
            assigned(&plan),
            pairs(&[(1, "a"), (2, "b"), (3, "a"), (4, "b")])
        );
        assert!(plan.ask.is_empty(), "{plan:?}");
        // Nobody with room: the lease stays free, and the table unsettled.
        let mut table = Table::of(&[("c", 1), ("", 1)], &["c"]);
        table.caps.insert("c".into(), 1);
        let plan = table.plan();
        assert!(plan.assign.is_empty() && plan.ask.is_empty(), "{plan:?}");
        assert!(!plan.settled);
    }

    #[test]
    fn a_capped_workers_deficit_absorbs_no_surplus() {
        // "b" holds 8; "c" may hold only one. Evenly among the other two:
        // "b" keeps 4, "c" gets 1, "d" 3.
        let mut table = Table::of(&[("b", 8)], &["b", "c", "d"]);
        table.caps.insert("c".into(), 1);
        let plan = table.plan();
        assert_eq!(givers_to(&plan, "c"), ["b"], "{plan:?}");
        assert_eq!(givers_to(&plan, "d"), ["b", "b", "b"], "{plan:?}");
        table.carry_out(&plan);
        assert_eq!(table.counts(), counts_of(&[("b", 4), ("c", 1), ("d", 3)]));
        // At its cap, "c" is asked nothing more.
        let plan = table.plan();
        assert!(plan.ask.is_empty() && plan.settled, "{plan:?}");
    }

    #[test]
    fn blocked_children_wait_unowned_and_are_assigned_once_their_parents_finish() {
        let shards = vec![
            shard("X", &[], true),
            shard("A", &["X"], false),
            shard("B", &["X"], false),
            shard("C", &["X"], false),
            shard("Y", &[], false),
        ];
        let rows = vec![
            lease("X", &[], Some("a"), at("3")),
            lease("Y", &[], Some("a"), at("3")),
            lease("A", &["X"], None, Checkpoint::TrimHorizon),
            lease("B", &["X"], Some("b"), Checkpoint::TrimHorizon),
            lease("C", &["X"], Some("b"), Checkpoint::TrimHorizon),
        ];
        let mut table = Table::new(shards, rows, &["a", "b"]);
        let plan = table.plan();
        assert!(plan.assign.is_empty(), "A waits for X: {plan:?}");
        // "b" holds two blocked children, counted for nobody: 2 against 0.
        let expected = vec![("X".to_owned(), "a".to_owned(), "b".to_owned())];
        assert_eq!(asked(&plan), expected);
        // "a" at 0 and "b" holding both children: neither is asked for.
        table.lease_mut("X").owner = Some("b".into());
        table.lease_mut("Y").owner = Some("b".into());
        let plan = table.plan();
        let asked_ids: Vec<String> = asked(&plan).into_iter().map(|(id, _, _)| id).collect();
        assert_eq!(asked_ids, ["X"], "a readable one only: {plan:?}");
        // X finished: its children are readable; A is free and assigned.
        table.lease_mut("X").checkpoint = Checkpoint::ShardEnd;
        let plan = table.plan();
        assert_eq!(assigned(&plan), [("A".to_owned(), "a".to_owned())]);
    }

    #[test]
    fn owners_not_judged_yet_keep_their_leases_and_count() {
        let table = Table::of(&[("o", 4), ("", 2)], &["a", "b"]);
        let plan = table.plan();
        assert_eq!(assigned(&plan), pairs(&[(4, "a"), (5, "b")]));
        assert!(plan.ask.is_empty(), "o is never asked: {plan:?}");
        assert_eq!(plan.workers, 3);
        // Nothing to do among the live ones, but o is not judged yet.
        let table = Table::of(&[("o", 4), ("a", 1), ("b", 1)], &["a", "b"]);
        let plan = table.plan();
        assert!(plan.assign.is_empty() && plan.ask.is_empty(), "{plan:?}");
        assert!(!plan.settled);
    }

    #[test]
    fn settled_only_when_nothing_is_to_do_or_in_flight() {
        let mut table = Table::of(&[("a", 2), ("b", 2)], &["a", "b"]);
        let plan = table.plan();
        assert!(plan.settled, "{plan:?}");
        assert_eq!(plan.workers, 2);
        table.lease_mut(&s(0)).owner = None;
        assert!(!table.plan().settled, "a lease to assign");
        table.lease_mut(&s(0)).owner = Some("b".into());
        table.lease_mut(&s(1)).owner = Some("b".into());
        assert!(!table.plan().settled, "a lease to ask for");
        table.lease_mut(&s(1)).owner = Some("a".into());
        table.lease_mut(&s(0)).owner = Some("a".into());
        table.lease_mut(&s(0)).handoff_to = Some("b".into());
        assert!(!table.plan().settled, "a lease in flight");
        table.lease_mut(&s(0)).handoff_to = None;
        table.lease_mut(&s(0)).checkpoint = Checkpoint::ShardEnd;
        table.gone.insert(s(0));
        let plan = table.plan();
        assert_eq!(plan.delete, [s(0)]);
        assert!(!plan.settled, "a row to delete");
    }

    #[test]
    fn deletes_what_a_workers_own_plan_deletes() {
        let shards = vec![
            shard("A", &["P"], false),
            shard("B", &["Q"], false),
            shard("D", &["R"], false),
        ];
        let rows = vec![
            lease("P", &[], Some("gone-worker"), at("5")),
            lease("D", &["R"], None, Checkpoint::TrimHorizon),
            lease("R", &[], None, Checkpoint::ShardEnd),
            lease("Q", &[], None, Checkpoint::ShardEnd),
            lease("A", &["P"], None, Checkpoint::TrimHorizon),
            lease("B", &["Q"], None, at("7")),
        ];
        let mut table = Table::new(shards, rows, &["a"]);
        table.lease_mut("Q").children = vec!["B".into()];
        table.lease_mut("R").children = vec!["D".into()];
        table.gone.insert("P".into());
        table.stale.insert("P".into());
        let plan = table.plan();
        // Q finished and its child started; P gone and named as a parent;
        // R's child has not started.
        assert_eq!(plan.delete, ["P", "Q"]);
        let lineage = Lineage::new(&table.shards);
        let standings = standings(&table.rows, &lineage, &table.gone);
        let mut own = plan_round(&RoundInput {
            me: "a",
            rows: &table.rows,
            standings: &standings,
            lineage: &lineage,
            gone: &table.gone,
            held: &HashSet::new(),
            stale: &table.stale,
            unclaimed: &HashSet::new(),
            live: &table.live,
            handoff_overdue: &HashSet::new(),
            max_leases: usize::MAX,
            earlier_runs: &HashSet::new(),
            caps: &BTreeMap::new(),
            departed: &HashSet::new(),
        })
        .delete;
        own.sort();
        assert_eq!(plan.delete, own);
    }

    #[test]
    fn the_plan_does_not_depend_on_the_order_of_the_rows() {
        let counts = [("a", 8), ("b", 1), ("x", 3), ("", 3), ("o", 2), ("c", 1)];
        let mut table = Table::of(&counts, &["a", "b", "c", "j"]);
        table.stale = (9..12).map(s).collect();
        table.caps.insert("c".into(), 2);
        table.lease_mut(&s(0)).handoff_to = Some("b".into());
        for i in [15, 17] {
            table.lease_mut(&s(i)).checkpoint = Checkpoint::ShardEnd;
            table.gone.insert(s(i));
        }
        let plan = table.plan();
        assert!(!plan.assign.is_empty() && !plan.ask.is_empty(), "{plan:?}");
        assert_eq!(plan.delete, [s(15), s(17)]);
        for turn in 1..table.rows.len() {
            table.rows.rotate_left(1);
            assert_eq!(table.plan(), plan, "rotated {turn}");
            table.rows.reverse();
            assert_eq!(table.plan(), plan, "rotated {turn}, reversed");
            table.rows.reverse();
        }
    }

    fn bytes(bytes_per_second: f64) -> Option<crate::metrics::LeaseLoad> {
        Some(crate::metrics::LeaseLoad {
            bytes_per_second,
            ..Default::default()
        })
    }

    #[test]
    fn by_load_two_hot_leases_on_one_worker_are_split_and_then_left_alone() {
        // 8 leases, s0 and s1 twenty times hotter, both on "a"; 3 workers.
        let mut table = Table::of(&[("a", 3), ("b", 3), ("c", 2)], &["a", "b", "c"]);
        for i in 0..8 {
            table.lease_mut(&s(i)).load = bytes(if i < 2 { 2000.0 } else { 100.0 });
        }
        let hot_moved = |plan: &FleetPlan| plan.ask.iter().filter(|a| a.0 < s(2)).count();
        assert_eq!(hot_moved(&table.plan()), 1, "{:?}", table.plan());
        for _ in 0..6 {
            let plan = table.plan();
            table.memory.record(&plan, &table.balance.settings);
            table.carry_out(&plan);
        }
        let hot: BTreeSet<String> = (0..2)
            .map(|i| table.lease_mut(&s(i)).owner.clone().unwrap())
            .collect();
        assert_eq!(hot.len(), 2, "the hot leases on different workers");
        assert!(table.plan().ask.is_empty(), "at rest");
        // By count the same table is even already: 3, 3, 2.
        let mut by_count = Table::of(&[("a", 3), ("b", 3), ("c", 2)], &["a", "b", "c"]);
        by_count.balance.settings.by = balance::BalanceBy::LeaseCount;
        for i in 0..8 {
            by_count.lease_mut(&s(i)).load = bytes(if i < 2 { 2000.0 } else { 100.0 });
        }
        assert!(by_count.plan().ask.is_empty());
    }

    #[test]
    fn leases_just_assigned_may_be_asked_for_but_not_leases_just_asked_for() {
        // A lone worker takes all 8; a joiner gets 4 in the next round.
        let mut table = Table::of(&[("", 8)], &["a"]);
        let plan = table.plan();
        table.memory.record(&plan, &table.balance.settings);
        table.carry_out(&plan);
        table.live.insert("j".into());
        let plan = table.plan();
        assert_eq!(givers_to(&plan, "j"), ["a"; 4], "{plan:?}");
        table.memory.record(&plan, &table.balance.settings);
        table.carry_out(&plan);
        // Those 4 stay 5 rounds where they went, though a third joins.
        table.live.insert("k".into());
        let moved: BTreeSet<String> = (0..4).map(s).collect();
        for _ in 0..4 {
            let plan = table.plan();
            assert!(plan.ask.iter().all(|a| !moved.contains(&a.0)), "{plan:?}");
            table.memory.record(&plan, &table.balance.settings);
            table.carry_out(&plan);
        }
    }

    #[test]
    fn a_free_lease_goes_to_the_least_loaded_worker_under_its_caps() {
        let mut table = Table::of(&[("a", 1), ("b", 3), ("c", 1), ("", 1)], &["a", "b", "c"]);
        table.lease_mut(&s(0)).load = bytes(900.0);
        for i in 1..4 {
            table.lease_mut(&s(i)).load = bytes(100.0);
        }
        table.lease_mut(&s(4)).load = bytes(50.0);
        // s5 has no load: its stream's mean, 250. "c" carries least (50)
        // but falls behind; "b" (300) is next.
        table.falling_behind.insert("c".into());
        assert_eq!(assigned(&table.plan()), pairs(&[(5, "b")]));
        // A throughput cap "b" would pass: nobody left with room.
        table.balance.max_throughput = Some(500.0);
        let plan = table.plan();
        assert!(plan.assign.is_empty() && !plan.settled, "{plan:?}");
    }

    #[test]
    fn a_child_without_a_load_inherits_its_parents_by_hash_range() {
        let max = u128::MAX.to_string();
        let half = (u128::MAX / 2).to_string();
        let shards = vec![
            shard("P", &[], true),
            shard("L", &["P"], false),
            shard("R", &["P"], false),
            shard("Q", &[], false),
        ];
        let rows = vec![
            lease("P", &[], Some("a"), Checkpoint::ShardEnd),
            lease("L", &["P"], None, Checkpoint::TrimHorizon),
            lease("R", &["P"], None, Checkpoint::TrimHorizon),
            lease("Q", &[], Some("a"), at("3")),
        ];
        let mut table = Table::new(shards, rows, &["a", "b"]);
        table.lease_mut("P").hash_range = Some(("0".into(), max.clone()));
        table.lease_mut("P").load = bytes(1000.0);
        table.lease_mut("L").hash_range = Some(("0".into(), half.clone()));
        table.lease_mut("R").hash_range = Some((format!("{}", u128::MAX / 2 + 1), max));
        table.lease_mut("Q").load = bytes(400.0);
        // L and R inherit 500 each (not Q's 400, the mean): both go to b,
        // the heavier first, since 500 > a's 400 after the first.
        let plan = table.plan();
        assert_eq!(
            assigned(&plan),
            [
                ("L".to_owned(), "b".to_owned()),
                ("R".to_owned(), "a".to_owned())
            ],
            "{plan:?}"
        );
    }

    #[test]
    fn plans_twenty_thousand_leases_for_two_thousand_workers() {
        let workers: Vec<String> = (0..2_000).map(|i| format!("w{i:04}")).collect();
        let mut table = Table::of(&[("", 20_000)], &[]);
        table.live = workers.iter().cloned().collect();
        let (plan, cold) = table.timed_plan();
        assert_eq!(plan.assign.len(), 20_000);
        assert!(plan.ask.is_empty());
        table.carry_out(&plan);
        assert!(table.counts().values().all(|n| *n == 10));

        // A worker dies: its 10 leases go to 10 others, one each.
        let dead = "w0042";
        table.live.remove(dead);
        table.stale = table
            .rows
            .iter()
            .filter_map(Row::lease)
            .filter(|l| l.owner.as_deref() == Some(dead))
            .map(|l| l.shard_id.clone())
            .collect();
        assert_eq!(table.stale.len(), 10);
        let (plan, death) = table.timed_plan();
        assert_eq!(plan.assign.len(), 10);
        assert!(plan.assign.iter().all(|(_, _, to)| table.live.contains(to)));
        assert!(plan.ask.is_empty(), "{:?}", plan.ask);
        table.carry_out(&plan);
        table.stale.clear();
        let counts = table.counts();
        let (min, max) = (counts.values().min(), counts.values().max());
        assert!(max.unwrap() - min.unwrap() <= 1, "{min:?}..{max:?}");

        // A worker joins: the 10 holding 11 give one each, to it.
        table.live.insert("w9999".into());
        let (plan, join) = table.timed_plan();
        assert!(plan.assign.is_empty());
        assert!(plan.ask.iter().all(|(_, _, _, to)| to == "w9999"));
        let givers: BTreeSet<String> = givers_to(&plan, "w9999").into_iter().collect();
        assert_eq!((plan.ask.len(), givers.len()), (10, 10));
        table.carry_out(&plan);
        assert!(table.counts().values().all(|n| *n == 10), "the floor, 10");
        let (plan, settled) = table.timed_plan();
        assert!(plan.settled, "{plan:?}");
        println!(
            "plan_fleet, 20,000 leases x 2,000 workers: cold start {cold:?}, \
             a death {death:?}, a join {join:?}, settled {settled:?}"
        );
    }
}
