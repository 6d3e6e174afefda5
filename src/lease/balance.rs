//! The load-aware balancer (issue 27), a pure function: given the workers,
//! the leases with their owners and loads, and the recent moves, it says
//! which leases to move this round. No I/O, no clock: the leader's plan
//! (`plan::plan_fleet`) calls it once per round and carries the moves out
//! as graceful handoffs.
//!
//! It evens the sum of lease loads per worker ([`BalanceBy::Load`]) or the
//! number of leases ([`BalanceBy::LeaseCount`]). A lease cannot be split,
//! so a lease heavier than a fair share is given a worker of its own in
//! the reckoning: the fair share is then that of the other leases over the
//! other workers (see [`fair_share`]); by load, with more leases than
//! workers, it is at least [`shared_floor`]. Each worker's target is that
//! share, or the heaviest lease it holds when that is more.
//!
//! A round moves nothing while every worker is within the threshold of its
//! target (±`threshold` of it by load; by count, between the target rounded
//! down and up). Otherwise it moves leases from the workers most over
//! their targets to the least loaded workers with room, one lease at a
//! time, each move strictly lowering the heavier of the two (so a round
//! never undoes itself and steady loads come to rest); by load, when no
//! single lease can go, a lease goes in exchange for some of the
//! receiver's lightest, under the same rule. Damping, by load: a worker
//! gives at most `damping` of its surplus per round (it may pass it by its
//! last lease); by count it gives all of it. By load with no load
//! measured anywhere, it balances by count. At most `max_moves_per_round` moves. A lease moved is not
//! moved again for `cooldown_rounds` rounds. A worker never takes a lease
//! that would put it over its lease cap or its throughput cap, and a
//! worker falling behind takes none.

use std::collections::{BTreeSet, HashMap};

#[cfg(test)]
mod fleet_tests;

/// What the leader evens out between workers (see
/// [`ConsumerBuilder::balance_by`](crate::ConsumerBuilder::balance_by)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BalanceBy {
    /// The sum of the leases' loads (bytes read per second) per worker
    /// (the default). While no lease has a load measured, lease counts.
    #[default]
    Load,
    /// The number of leases per worker, loads ignored (but
    /// `max_throughput_per_worker` still honoured).
    LeaseCount,
}

/// The balancer's knobs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct BalanceSettings {
    /// What is evened out. Defaults to [`BalanceBy::Load`].
    pub by: BalanceBy,
    /// By load: nothing moves while every worker is within this fraction
    /// of its target. Defaults to 0.10 (±10%, the KCL 3's
    /// `reBalanceThresholdPercentage`).
    pub threshold: f64,
    /// By load, the part of a worker's surplus it may give in one round
    /// (by count it gives all of it). Defaults to 0.6 (the KCL 3's `dampeningPercentage` is 60).
    pub damping: f64,
    /// At most this many moves per round (new leases assigned do not
    /// count). Defaults to 50.
    pub max_moves_per_round: usize,
    /// A lease moved is not moved again until this many rounds have
    /// passed. Defaults to 5.
    pub cooldown_rounds: u64,
}

impl Default for BalanceSettings {
    fn default() -> BalanceSettings {
        BalanceSettings {
            by: BalanceBy::Load,
            threshold: 0.10,
            damping: 0.6,
            max_moves_per_round: 50,
            cooldown_rounds: 5,
        }
    }
}

/// A live worker as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Worker {
    pub id: String,
    /// The most leases it may hold (`max_leases_per_worker`); `None`: no cap.
    pub max_leases: Option<usize>,
    /// The most load it may carry, in the leases' load unit
    /// (`max_throughput_per_worker`); `None`: no cap.
    pub max_throughput: Option<f64>,
    /// It cannot keep up (MillisBehindLatest rising on all its leases): it
    /// counts as full and takes no lease, whatever its measured load.
    pub falling_behind: bool,
    /// Streams (see [`Lease::stream`]) it does not read: it takes none of
    /// their leases.
    pub unread: BTreeSet<String>,
}

#[cfg(test)]
impl Worker {
    /// A worker without caps that keeps up.
    pub(crate) fn new(id: &str) -> Worker {
        Worker {
            id: id.to_owned(),
            max_leases: None,
            max_throughput: None,
            falling_behind: false,
            unread: BTreeSet::new(),
        }
    }
}

/// A lease as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Lease {
    pub key: String,
    /// The stream it belongs to (new leases get the mean of its leases).
    pub stream: String,
    /// Its owner; `None` or a worker not listed: to be assigned.
    pub owner: Option<String>,
    /// Its measured load (bytes read per second, say); `None`: no history
    /// yet (see [`estimated_loads`]).
    pub load: Option<f64>,
    /// It stays where it is this round (a handoff of it is under way): it
    /// counts as its owner's but is not moved.
    pub pinned: bool,
}

/// One lease to move (or, `from` `None`, to assign).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Move {
    pub lease: String,
    pub from: Option<String>,
    pub to: String,
}

/// When each lease last moved, by round number: the balancer's memory
/// against ping-pong, kept by the caller between rounds.
#[derive(Clone, Debug, Default)]
pub(crate) struct MoveHistory {
    moved: HashMap<String, u64>,
}

impl MoveHistory {
    /// Notes the moves made in `round`, and forgets moves older than
    /// `cooldown` rounds.
    pub(crate) fn record(&mut self, moves: &[Move], round: u64, cooldown: u64) {
        self.moved
            .retain(|_, moved| round.saturating_sub(*moved) < cooldown);
        for m in moves {
            self.moved.insert(m.lease.clone(), round);
        }
    }

    /// True when `lease` moved less than `cooldown` rounds before `round`.
    pub(crate) fn frozen(&self, lease: &str, round: u64, cooldown: u64) -> bool {
        self.moved
            .get(lease)
            .is_some_and(|moved| round.saturating_sub(*moved) < cooldown)
    }
}

/// Each lease's load, a lease without history given the mean load of the
/// measured leases of its stream (0 when none is measured).
pub(crate) fn estimated_loads(leases: &[Lease]) -> Vec<f64> {
    let mut by_stream: HashMap<&str, (f64, usize)> = HashMap::new();
    for lease in leases {
        if let Some(load) = lease.load {
            let sum = by_stream.entry(&lease.stream).or_default();
            sum.0 += load;
            sum.1 += 1;
        }
    }
    leases
        .iter()
        .map(|lease| {
            lease.load.unwrap_or_else(|| {
                by_stream
                    .get(lease.stream.as_str())
                    .map_or(0.0, |(sum, n)| sum / *n as f64)
            })
        })
        .collect()
}

/// A shard's hash key range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HashRange {
    pub start: u128,
    pub end: u128,
}

impl HashRange {
    fn len(self) -> f64 {
        // As f64: the whole range holds 2^128 keys, one more than u128 has.
        (self.end - self.start) as f64 + 1.0
    }

    fn overlap(self, other: HashRange) -> f64 {
        let (start, end) = (self.start.max(other.start), self.end.min(other.end));
        if start > end {
            0.0
        } else {
            HashRange { start, end }.len()
        }
    }
}

/// The load a child shard inherits from its parents (one for a split, two
/// for a merge): each parent's load in the share of its hash range the
/// child covers, keys assumed evenly loaded.
pub(crate) fn inherited_load(child: HashRange, parents: &[(f64, HashRange)]) -> f64 {
    parents
        .iter()
        .map(|(load, range)| load * child.overlap(*range) / range.len())
        .sum()
}

/// The fair share of load per worker, a lease heavier than the fair share
/// taking a worker of its own: while the heaviest lease left weighs more
/// than the rest's mean over the workers left, it is set aside with one
/// worker; the share is the mean of the rest.
pub(crate) fn fair_share(weights: &[f64], workers: usize) -> f64 {
    let mut sorted: Vec<f64> = weights.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let (mut total, mut left) = (sorted.iter().sum::<f64>(), workers.max(1));
    for w in sorted {
        if left > 1 && w > total / left as f64 {
            total -= w;
            left -= 1;
        } else {
            break;
        }
    }
    total / left as f64
}

/// With more leases than workers, two of the `workers + 1` heaviest share
/// a worker: the two lightest of those are a floor under the heaviest
/// worker's load, whatever the assignment (0 with no more leases than
/// workers).
pub(crate) fn shared_floor(weights: &[f64], workers: usize) -> f64 {
    let mut sorted: Vec<f64> = weights.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    match (workers.checked_sub(1), sorted.get(workers)) {
        (Some(last), Some(next)) => sorted[last] + next,
        _ => 0.0,
    }
}

/// A worker's state during a round.
struct Holder {
    /// Index into the lease list, of each lease held.
    leases: Vec<usize>,
    weight: f64,
    load: f64,
    target: f64,
    /// What it may still give this round.
    budget: f64,
}

/// Each worker's target: the fair share, or the heaviest lease it holds
/// when that is more.
fn targets(holders: &mut [Holder], weights: &[f64], fair: f64) {
    for h in holders {
        let heaviest = h.leases.iter().map(|&i| weights[i]).fold(0.0, f64::max);
        h.target = fair.max(heaviest);
    }
}

/// The moves of one balancing round (see the module documentation).
/// `round` numbers the rounds, for `history`.
pub(crate) fn balance(
    workers: &[Worker],
    leases: &[Lease],
    history: &MoveHistory,
    round: u64,
    settings: &BalanceSettings,
) -> Vec<Move> {
    if workers.is_empty() {
        return Vec::new();
    }
    let loads = estimated_loads(leases);
    // Nothing measured yet (a fresh stream, rows only the KCL 2 wrote, an
    // idle stream): loads cannot tell workers apart, counts can.
    let by = match settings.by {
        BalanceBy::Load if loads.iter().all(|l| *l == 0.0) => BalanceBy::LeaseCount,
        by => by,
    };
    // By count a worker may give its whole surplus: leases are whole and
    // the targets exact, there is no measurement noise to overshoot on.
    let damping = match by {
        BalanceBy::Load => settings.damping,
        BalanceBy::LeaseCount => 1.0,
    };
    let weights: Vec<f64> = match by {
        BalanceBy::Load => loads.clone(),
        BalanceBy::LeaseCount => vec![1.0; leases.len()],
    };
    let index: HashMap<&str, usize> = workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.as_str(), i))
        .collect();
    let mut holders: Vec<Holder> = workers
        .iter()
        .map(|_| Holder {
            leases: Vec::new(),
            weight: 0.0,
            load: 0.0,
            target: 0.0,
            budget: 0.0,
        })
        .collect();
    let mut unowned = Vec::new();
    for (i, lease) in leases.iter().enumerate() {
        match lease.owner.as_deref().and_then(|o| index.get(o)) {
            Some(&w) => {
                let h = &mut holders[w];
                h.leases.push(i);
                h.weight += weights[i];
                h.load += loads[i];
            }
            None => unowned.push(i),
        }
    }
    let fits = |h: &Holder, w: &Worker, lease: usize| {
        !w.falling_behind
            && !w.unread.contains(&leases[lease].stream)
            && w.max_leases.is_none_or(|max| h.leases.len() < max)
            && w.max_throughput
                .is_none_or(|max| h.load + loads[lease] <= max)
    };
    let mut moves = Vec::new();
    let give = |moves: &mut Vec<Move>,
                holders: &mut [Holder],
                lease: usize,
                from: Option<usize>,
                to: usize| {
        if let Some(from) = from {
            let h = &mut holders[from];
            h.leases.retain(|&i| i != lease);
            h.weight -= weights[lease];
            h.load -= loads[lease];
            h.budget -= weights[lease];
        }
        let h = &mut holders[to];
        h.leases.push(lease);
        h.weight += weights[lease];
        h.load += loads[lease];
        moves.push(Move {
            lease: leases[lease].key.clone(),
            from: from.map(|f| workers[f].id.clone()),
            to: workers[to].id.clone(),
        });
    };

    // Leases assigned or moved in this round stay where they went.
    let mut moved_now = vec![false; leases.len()];
    // Leases without a live owner first, heaviest first, each to the
    // least loaded worker with room (ties: fewer leases, then the first
    // listed). Workers are kept in that order, so that a cold start of
    // thousands of leases over thousands of workers does not scan every
    // worker per lease. Weights are never negative, so their bits order
    // as the weights do.
    let rank = |h: &Holder, w: usize| (h.weight.to_bits(), h.leases.len(), w);
    let mut least_first: BTreeSet<(u64, usize, usize)> = holders
        .iter()
        .enumerate()
        .map(|(w, h)| rank(h, w))
        .collect();
    unowned.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    for lease in unowned {
        let to = least_first
            .iter()
            .map(|&(_, _, w)| w)
            .find(|&w| fits(&holders[w], &workers[w], lease));
        if let Some(to) = to {
            least_first.remove(&rank(&holders[to], to));
            give(&mut moves, &mut holders, lease, None, to);
            least_first.insert(rank(&holders[to], to));
            moved_now[lease] = true;
        }
    }
    let assigned = moves.len();

    let fair = match by {
        BalanceBy::Load => {
            fair_share(&weights, workers.len()).max(shared_floor(&weights, workers.len()))
        }
        // By count every worker with one lease fewer is a receiver.
        BalanceBy::LeaseCount => fair_share(&weights, workers.len()),
    };
    targets(&mut holders, &weights, fair);
    let within = |h: &Holder| match by {
        BalanceBy::Load => (h.weight - h.target).abs() <= settings.threshold * h.target,
        BalanceBy::LeaseCount => h.weight >= h.target.floor() && h.weight <= h.target.ceil(),
    };
    for h in &mut holders {
        h.budget = damping * (h.weight - h.target).max(0.0);
    }
    let movable = |lease: usize, moved_now: &[bool]| {
        !moved_now[lease]
            && !leases[lease].pinned
            && !history.frozen(&leases[lease].key, round, settings.cooldown_rounds)
    };
    while moves.len() - assigned < settings.max_moves_per_round && !holders.iter().all(within) {
        // Donors most over their targets first; receivers least loaded first.
        let mut donors: Vec<usize> = (0..workers.len())
            .filter(|&w| holders[w].weight > holders[w].target && holders[w].budget > 0.0)
            .collect();
        donors.sort_by(|&a, &b| {
            let over = |w: usize| holders[w].weight - holders[w].target;
            over(b).total_cmp(&over(a)).then(a.cmp(&b))
        });
        let mut receivers: Vec<usize> = (0..workers.len())
            .filter(|&w| holders[w].weight < holders[w].target && !workers[w].falling_behind)
            .collect();
        receivers.sort_by(|&a, &b| {
            holders[a]
                .weight
                .total_cmp(&holders[b].weight)
                .then(a.cmp(&b))
        });
        let chosen = donors.iter().find_map(|&d| {
            receivers.iter().find_map(|&r| {
                let (giver, taker) = (&holders[d], &holders[r]);
                // What would bring one to its target without pushing the
                // other past its own.
                let wanted = (giver.weight - giver.target).min(taker.target - taker.weight);
                giver
                    .leases
                    .iter()
                    .copied()
                    .filter(|&l| movable(l, &moved_now) && fits(taker, &workers[r], l))
                    // The heavier of the two gets lighter: no undoing.
                    .filter(|&l| weights[l] < giver.weight - taker.weight)
                    .min_by(|&a, &b| {
                        let miss = |l: usize| (weights[l] - wanted).abs();
                        miss(a).total_cmp(&miss(b)).then(a.cmp(&b))
                    })
                    .map(|l| (l, d, r))
            })
        });
        // No single move helps: a lease too heavy for a lighter worker to
        // take outright may still go there in exchange for some of its
        // lightest leases (by load only: by count, one for one changes
        // nothing).
        let exchange = match (chosen, by) {
            (None, BalanceBy::Load) => {
                let room = settings.max_moves_per_round - (moves.len() - assigned);
                donors.iter().find_map(|&d| {
                    receivers.iter().find_map(|&r| {
                        let (giver, taker) = (&holders[d], &holders[r]);
                        let gap = giver.weight - taker.weight;
                        let mut lightest: Vec<usize> = taker
                            .leases
                            .iter()
                            .copied()
                            .filter(|&b| {
                                movable(b, &moved_now)
                                    && !workers[d].unread.contains(&leases[b].stream)
                            })
                            .collect();
                        lightest
                            .sort_by(|&a, &b| weights[a].total_cmp(&weights[b]).then(a.cmp(&b)));
                        giver
                            .leases
                            .iter()
                            .copied()
                            .filter(|&l| movable(l, &moved_now) && fits(taker, &workers[r], l))
                            .find_map(|l| {
                                // Back: the taker's lightest, up to what evens the two.
                                let even = weights[l] - gap / 2.0;
                                let (mut back, mut sum) = (Vec::new(), 0.0);
                                for &b in &lightest {
                                    if back.len() + 1 >= room || sum + weights[b] > even {
                                        break;
                                    }
                                    sum += weights[b];
                                    back.push(b);
                                }
                                let heavier = (giver.weight - weights[l] + sum)
                                    .max(taker.weight + weights[l] - sum);
                                let giver_fits = workers[d]
                                    .max_leases
                                    .is_none_or(|max| giver.leases.len() - 1 + back.len() <= max);
                                (!back.is_empty() && heavier < giver.weight && giver_fits)
                                    .then_some((l, d, r, back))
                            })
                    })
                })
            }
            _ => None,
        };
        match (chosen, exchange) {
            (Some((lease, from, to)), _) => {
                give(&mut moves, &mut holders, lease, Some(from), to);
                moved_now[lease] = true;
            }
            (None, Some((lease, from, to, back))) => {
                give(&mut moves, &mut holders, lease, Some(from), to);
                moved_now[lease] = true;
                for b in back {
                    give(&mut moves, &mut holders, b, Some(to), from);
                    moved_now[b] = true;
                }
            }
            (None, None) => break,
        }
        // A worker's heaviest lease may have changed hands.
        let budgets: Vec<f64> = holders.iter().map(|h| h.budget).collect();
        targets(&mut holders, &weights, fair);
        for (h, budget) in holders.iter_mut().zip(budgets) {
            h.budget = budget;
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Each worker's summed load (or count), by worker id.
    fn weights_by_worker(
        workers: &[Worker],
        leases: &[Lease],
        by: BalanceBy,
    ) -> BTreeMap<String, f64> {
        let loads = estimated_loads(leases);
        let mut sums: BTreeMap<String, f64> = workers.iter().map(|w| (w.id.clone(), 0.0)).collect();
        for (lease, load) in leases.iter().zip(loads) {
            if let Some(sum) = lease.owner.as_ref().and_then(|o| sums.get_mut(o)) {
                *sum += match by {
                    BalanceBy::Load => load,
                    BalanceBy::LeaseCount => 1.0,
                };
            }
        }
        sums
    }

    fn lease(key: &str, owner: Option<&str>, load: Option<f64>) -> Lease {
        Lease {
            key: key.into(),
            stream: "s".into(),
            owner: owner.map(str::to_owned),
            load,
            pinned: false,
        }
    }

    fn apply(leases: &mut [Lease], moves: &[Move]) {
        for m in moves {
            let lease = leases.iter_mut().find(|l| l.key == m.lease).unwrap();
            assert_eq!(lease.owner, m.from, "{m:?}");
            lease.owner = Some(m.to.clone());
        }
    }

    #[test]
    fn nothing_moves_while_every_worker_is_within_the_threshold() {
        let workers = [Worker::new("a"), Worker::new("b")];
        // 105 and 95 around a mean of 100: within ±10%.
        let leases = [
            lease("1", Some("a"), Some(60.0)),
            lease("2", Some("a"), Some(45.0)),
            lease("3", Some("b"), Some(50.0)),
            lease("4", Some("b"), Some(45.0)),
        ];
        let settings = BalanceSettings::default();
        assert!(balance(&workers, &leases, &MoveHistory::default(), 1, &settings).is_empty());
    }

    #[test]
    fn a_worker_takes_no_lease_of_a_stream_it_does_not_read() {
        // "b" does not read stream "t": of t's leases it is given none,
        // free or moved, by load or by count, though it holds nothing.
        let mut b = Worker::new("b");
        b.unread.insert("t".into());
        let workers = [Worker::new("a"), b];
        let mut leases = Vec::new();
        for i in 0..4 {
            let mut free = lease(&format!("t{i}"), None, Some(10.0));
            free.stream = "t".into();
            leases.push(free);
            let mut held = lease(&format!("u{i}"), Some("a"), Some(10.0));
            held.stream = "t".into();
            leases.push(held);
        }
        for by in [BalanceBy::Load, BalanceBy::LeaseCount] {
            let settings = BalanceSettings {
                by,
                ..BalanceSettings::default()
            };
            let moves = balance(&workers, &leases, &MoveHistory::default(), 1, &settings);
            assert_eq!(moves.len(), 4, "{by:?}: {moves:?}");
            assert!(moves.iter().all(|m| m.to == "a"), "{by:?}: {moves:?}");
        }
    }

    #[test]
    fn two_hot_leases_on_one_worker_are_split_up() {
        let workers = [Worker::new("a"), Worker::new("b"), Worker::new("c")];
        let mut leases = vec![
            lease("hot1", Some("a"), Some(100.0)),
            lease("hot2", Some("a"), Some(100.0)),
        ];
        for i in 0..6 {
            let owner = if i % 2 == 0 { "b" } else { "c" };
            leases.push(lease(&format!("cold{i}"), Some(owner), Some(5.0)));
        }
        let settings = BalanceSettings::default();
        let moves = balance(&workers, &leases, &MoveHistory::default(), 1, &settings);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert!(moves[0].lease.starts_with("hot"));
        apply(&mut leases, &moves);
        let sums = weights_by_worker(&workers, &leases, BalanceBy::Load);
        assert_eq!(sums["a"], 100.0);
    }

    #[test]
    fn a_hot_lease_alone_on_its_worker_stays_and_the_rest_even_out() {
        // One lease weighs more than the mean (1000 / 4 = 250): its worker
        // keeps it alone, the others share the rest, 100 each.
        let workers: Vec<Worker> = ["a", "b", "c", "d"].map(Worker::new).to_vec();
        let mut leases = vec![lease("hot", Some("a"), Some(700.0))];
        for i in 0..30 {
            leases.push(lease(&format!("c{i}"), Some("a"), Some(10.0)));
        }
        assert_eq!(fair_share(&estimated_loads(&leases), 4), 100.0);
        let settings = BalanceSettings::default();
        let mut history = MoveHistory::default();
        for round in 1..=10 {
            let moves = balance(&workers, &leases, &history, round, &settings);
            assert!(moves.iter().all(|m| m.lease != "hot"), "{moves:?}");
            apply(&mut leases, &moves);
            history.record(&moves, round, settings.cooldown_rounds);
        }
        // Each within ±10% of its target: 700 for a, 100 for the others.
        let sums = weights_by_worker(&workers, &leases, BalanceBy::Load);
        assert!(sums["a"] <= 770.0, "{sums:?}");
        for w in ["b", "c", "d"] {
            assert!((sums[w] - 100.0).abs() <= 10.0, "{sums:?}");
        }
        // And at rest.
        let moves = balance(&workers, &leases, &history, 11, &settings);
        assert!(moves.is_empty(), "{moves:?}");
    }

    #[test]
    fn a_lease_too_heavy_to_move_alone_is_exchanged_for_a_lighter_one() {
        // a carries 140: no lease of it can go alone without making its
        // taker as heavy (70 + 95 or 70 + 100), but 70 for b's 45 can.
        let workers: Vec<Worker> = ["a", "b", "c"].map(Worker::new).to_vec();
        let mut leases = vec![
            lease("a1", Some("a"), Some(70.0)),
            lease("a2", Some("a"), Some(70.0)),
            lease("b1", Some("b"), Some(50.0)),
            lease("b2", Some("b"), Some(45.0)),
            lease("c1", Some("c"), Some(100.0)),
        ];
        let settings = BalanceSettings::default();
        let moves = balance(&workers, &leases, &MoveHistory::default(), 1, &settings);
        assert_eq!(moves.len(), 2, "{moves:?}");
        apply(&mut leases, &moves);
        let sums = weights_by_worker(&workers, &leases, BalanceBy::Load);
        assert_eq!(sums["a"], 115.0, "{sums:?}");
        assert_eq!(sums["b"], 120.0, "{sums:?}");
        // By count nothing is exchanged: 2, 2, 1 is even.
        let by_count = BalanceSettings {
            by: BalanceBy::LeaseCount,
            ..settings
        };
        assert!(balance(&workers, &leases, &MoveHistory::default(), 1, &by_count).is_empty());
    }

    #[test]
    fn damping_and_the_bound_limit_a_round() {
        let workers = [Worker::new("a"), Worker::new("b")];
        let leases: Vec<Lease> = (0..100)
            .map(|i| lease(&i.to_string(), Some("a"), Some(1.0)))
            .collect();
        // Surplus 50: damping 0.6 gives 30 at most.
        let settings = BalanceSettings::default();
        let moves = balance(&workers, &leases, &MoveHistory::default(), 1, &settings);
        assert_eq!(moves.len(), 30);
        let bounded = BalanceSettings {
            max_moves_per_round: 7,
            ..settings
        };
        assert_eq!(
            balance(&workers, &leases, &MoveHistory::default(), 1, &bounded).len(),
            7
        );
    }

    #[test]
    fn caps_are_never_exceeded_and_a_worker_falling_behind_takes_nothing() {
        let mut capped = Worker::new("capped");
        capped.max_leases = Some(2);
        let mut thin = Worker::new("thin");
        thin.max_throughput = Some(25.0);
        let mut behind = Worker::new("behind");
        behind.falling_behind = true;
        let workers = [Worker::new("busy"), capped, thin, behind];
        let mut leases: Vec<Lease> = (0..12)
            .map(|i| lease(&i.to_string(), Some("busy"), Some(10.0)))
            .collect();
        leases.push(lease("new", None, None));
        let settings = BalanceSettings::default();
        let mut history = MoveHistory::default();
        for round in 1..=10 {
            let moves = balance(&workers, &leases, &history, round, &settings);
            assert!(moves.iter().all(|m| m.to != "behind"), "{moves:?}");
            apply(&mut leases, &moves);
            history.record(&moves, round, settings.cooldown_rounds);
        }
        let count = |w: &str| {
            leases
                .iter()
                .filter(|l| l.owner.as_deref() == Some(w))
                .count()
        };
        assert_eq!(count("capped"), 2);
        assert_eq!(count("thin"), 2, "25 allows two leases of 10");
        assert_eq!(count("behind"), 0);
        assert_eq!(count("busy"), 9);
    }

    #[test]
    fn a_lease_moved_is_not_moved_again_within_the_cooldown() {
        let workers = [Worker::new("a"), Worker::new("b")];
        let leases = [
            lease("x", Some("a"), Some(50.0)),
            lease("y", Some("a"), Some(50.0)),
        ];
        let settings = BalanceSettings::default();
        let mut history = MoveHistory::default();
        history.record(
            &[
                Move {
                    lease: "x".into(),
                    from: Some("b".into()),
                    to: "a".into(),
                },
                Move {
                    lease: "y".into(),
                    from: Some("b".into()),
                    to: "a".into(),
                },
            ],
            10,
            settings.cooldown_rounds,
        );
        assert!(balance(&workers, &leases, &history, 14, &settings).is_empty());
        assert_eq!(balance(&workers, &leases, &history, 15, &settings).len(), 1);
    }

    #[test]
    fn counts_even_out_in_count_mode_whatever_the_loads() {
        let workers: Vec<Worker> = ["a", "b", "c"].map(Worker::new).to_vec();
        let mut leases: Vec<Lease> = (0..10)
            .map(|i| lease(&i.to_string(), Some("a"), Some(i as f64 * 100.0)))
            .collect();
        let settings = BalanceSettings {
            by: BalanceBy::LeaseCount,
            ..BalanceSettings::default()
        };
        let mut history = MoveHistory::default();
        for round in 1..=10 {
            let moves = balance(&workers, &leases, &history, round, &settings);
            apply(&mut leases, &moves);
            history.record(&moves, round, settings.cooldown_rounds);
        }
        let counts = weights_by_worker(&workers, &leases, BalanceBy::LeaseCount);
        let (min, max) = counts
            .values()
            .fold((f64::MAX, 0.0f64), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        assert!(max - min <= 1.0, "{counts:?}");
    }

    #[test]
    fn with_no_load_measured_leases_are_shared_by_count_and_at_once() {
        // A fresh stream: nothing measured, so by load is by count, and by
        // count the whole surplus goes in one round (no damping).
        let workers: Vec<Worker> = ["a", "b", "c"].map(Worker::new).to_vec();
        let mut leases: Vec<Lease> = (0..9)
            .map(|i| lease(&i.to_string(), Some("a"), None))
            .collect();
        leases.extend((9..12).map(|i| lease(&i.to_string(), None, Some(0.0))));
        let settings = BalanceSettings::default();
        let moves = balance(&workers, &leases, &MoveHistory::default(), 1, &settings);
        apply(&mut leases, &moves);
        let counts = weights_by_worker(&workers, &leases, BalanceBy::LeaseCount);
        assert!(counts.values().all(|n| *n == 4.0), "{counts:?}");
        // The free ones went to the emptiest workers, not all to the first.
        let assigned: Vec<&str> = moves
            .iter()
            .filter(|m| m.from.is_none())
            .map(|m| m.to.as_str())
            .collect();
        assert_eq!(assigned, ["b", "c", "b"], "{moves:?}");
    }

    #[test]
    fn a_new_lease_gets_its_streams_mean_and_a_child_its_share_of_the_parents() {
        let mut leases = vec![
            lease("1", Some("a"), Some(100.0)),
            lease("2", Some("a"), Some(300.0)),
            lease("new", None, None),
        ];
        leases.push(Lease {
            stream: "other".into(),
            ..lease("alone", None, None)
        });
        assert_eq!(estimated_loads(&leases), [100.0, 300.0, 200.0, 0.0]);
        let whole = HashRange {
            start: 0,
            end: u128::MAX,
        };
        let lower = HashRange {
            start: 0,
            end: u128::MAX / 4,
        };
        // A split: the child covering a quarter of the range gets a quarter.
        let split = inherited_load(lower, &[(800.0, whole)]);
        assert!((split - 200.0).abs() < 1e-6, "{split}");
        // A merge: all of both parents.
        let upper = HashRange {
            start: u128::MAX / 4 + 1,
            end: u128::MAX,
        };
        let merged = inherited_load(whole, &[(10.0, lower), (30.0, upper)]);
        assert!((merged - 40.0).abs() < 1e-9, "{merged}");
        let disjoint = HashRange { start: 5, end: 9 };
        let apart = HashRange { start: 10, end: 19 };
        assert_eq!(inherited_load(apart, &[(7.0, disjoint)]), 0.0);
    }
}
