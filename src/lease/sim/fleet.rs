//! The fleet benchmark on the simulated table: N in-process workers (the
//! real coordinator and held leases, as in the simulation) share L leases
//! of an idle stream on simulated time, without injected faults, against
//! a table that bills and limits each item as DynamoDB does (see
//! [`limits`](super::limits)). It measures the cold start, the steady
//! state's request units and per-item load, a kill's takeover and a
//! join. Run by `bench/src/bin/fleet.rs --simulated`.

use std::time::{Duration, Instant};

use super::{FAILOVER, Odds, Sim, SimStream, lock};
use crate::lease::plan::Row;
use crate::lease::{Checkpoint, Lease};

/// The shard sync interval of the workers (the library's default).
const SYNC_INTERVAL: Duration = Duration::from_secs(60);
/// A hash key as long as a real shard's last one.
const HIGHEST_HASH_KEY: &str = "340282366920938463463374607431768211455";

/// What one simulated fleet run measured; times are simulated.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FleetFigures {
    /// Leases (shards of the idle stream).
    pub leases: usize,
    /// Workers at the start.
    pub workers: usize,
    /// The failover time (heartbeats every third of it).
    pub failover: Duration,
    /// From the start (every lease free) until every lease was held and
    /// evenly spread; `None` when not within the bound.
    pub cold_start: Option<Duration>,
    /// The steady-state window measured.
    pub measured: Duration,
    /// Read and write units per lease-minute in that window.
    pub read_units_per_lease_minute: f64,
    /// See `read_units_per_lease_minute`.
    pub write_units_per_lease_minute: f64,
    /// Writes refused for throughput in that window (throttled).
    pub throttled_writes: u64,
    /// Leases workers lost in that window.
    pub lost_leases: u64,
    /// The item with the most write units served in one second in that
    /// window: key and units.
    pub peak_item_wcu: (String, f64),
    /// The item with the most write units asked for (throttled writes
    /// included) in one second in that window.
    pub peak_item_wcu_asked: (String, f64),
    /// The largest item written in the run: key and bytes.
    pub largest_item: (String, usize),
    /// The mean size of a lease row, bytes.
    pub mean_lease_bytes: f64,
    /// From the kill -9 of one worker until its leases were all held by
    /// live workers.
    pub takeover: Option<Duration>,
    /// From a new worker's start until the share was even again.
    pub join: Option<Duration>,
    /// Wall-clock time the run took.
    pub wall: Duration,
}

/// Runs a fleet of `workers` over `leases` leases: the cold start, then
/// `measure` of steady state, a kill and a join; each phase gives up
/// after `bound` of simulated time.
pub fn simulate_fleet(
    leases: usize,
    workers: usize,
    measure: Duration,
    bound: Duration,
) -> FleetFigures {
    let wall = Instant::now();
    let mut sim = Sim::idle_fleet(leases, workers);
    let started = sim.clock.now();
    let cold_start = sim
        .run_until(bound, |sim| sim.is_even())
        .map(|t| t - started);
    // One more heartbeat period, then measure.
    sim.run_for(FAILOVER / 3);
    let units = sim.table.limits.units();
    let lost = sim.lost_leases();
    sim.table.limits.reset_peaks();
    sim.run_for(measure);
    let spent = sim.table.limits.units();
    let (served, asked) = sim.table.limits.peaks();
    let lease_minutes = leases as f64 * measure.as_secs_f64() / 60.0;
    let (mean_lease_bytes, lost_leases) = (sim.mean_lease_bytes(), sim.lost_leases() - lost);

    // kill -9 of the first worker: its heartbeats stop.
    let victim = sim.workers.remove(0).id;
    let killed = sim.clock.now();
    let takeover = sim
        .run_until(bound, |sim| sim.all_held_by_live())
        .map(|t| t - killed);
    // A joiner counts a worker in the workers row in the even share, so it
    // joins once the victim left the row (as in the fleet benchmark).
    sim.run_until(bound, |sim| {
        !lock(&sim.table.workers).beats.contains_key(&victim)
    });
    sim.spawn("w-new".into(), false);
    let joined = sim.clock.now();
    // A consumer beats as it starts (`Coordinator::start`), not at a
    // random point of its first period as the fleet's first workers do.
    if let Some(joiner) = sim.workers.last_mut() {
        joiner.next_round = joined;
    }
    let join = sim
        .run_until(bound, |sim| sim.is_even())
        .map(|t| t - joined);
    FleetFigures {
        leases,
        workers,
        failover: FAILOVER,
        cold_start,
        measured: measure,
        read_units_per_lease_minute: (spent.read - units.read) / lease_minutes,
        write_units_per_lease_minute: (spent.write - units.write) / lease_minutes,
        throttled_writes: spent.throttled - units.throttled,
        lost_leases,
        peak_item_wcu: (served.key, served.units),
        peak_item_wcu_asked: (asked.key, asked.units),
        largest_item: sim.table.limits.largest(),
        mean_lease_bytes,
        takeover,
        join,
        wall: wall.elapsed(),
    }
}

impl Sim {
    /// No faults, one stream of `leases` open shards whose leases exist
    /// and are free (as a first worker leaves them), `workers` workers.
    pub(super) fn idle_fleet(leases: usize, workers: usize) -> Sim {
        let mut sim = Sim::new(1);
        sim.workers.clear();
        sim.dead.clear();
        *lock(&sim.faults.odds) = Odds::default();
        sim.sync_interval = SYNC_INTERVAL;
        {
            let mut stream = lock(&sim.stream);
            *stream = SimStream::default();
            let mut rows = lock(&sim.table.rows);
            for _ in 0..leases {
                let shard_id = stream.add_shard(&[]);
                rows.insert(shard_id.clone(), Row::Lease(free_lease(shard_id)));
            }
        }
        for i in 0..workers {
            sim.spawn(format!("w{i:04}"), false);
        }
        sim
    }

    /// Steps until `done` holds (checked every simulated second) or
    /// `bound` passed; when it first held.
    fn run_until(&mut self, bound: Duration, done: impl Fn(&Sim) -> bool) -> Option<Instant> {
        let until = self.clock.now() + bound;
        while self.clock.now() < until {
            if done(self) {
                return Some(self.clock.now());
            }
            for _ in 0..10 {
                self.step_fleet();
            }
        }
        None
    }

    fn run_for(&mut self, time: Duration) {
        let until = self.clock.now() + time;
        while self.clock.now() < until {
            self.step_fleet();
        }
    }

    /// One step of every worker; an eventually consistent read sees the
    /// table as it was a step ago.
    fn step_fleet(&mut self) {
        *lock(&self.table.stale_rows) = lock(&self.table.rows).clone();
        self.step_all();
        self.remove_stopped();
    }

    /// Leases per live worker, when every lease is held by one.
    fn counts(&self) -> Option<Vec<usize>> {
        let index: std::collections::HashMap<&str, usize> = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.as_str(), i))
            .collect();
        let mut counts = vec![0; self.workers.len()];
        for row in lock(&self.table.rows).values() {
            let owner = row.lease().and_then(|l| l.owner.as_deref());
            counts[*index.get(owner?)?] += 1;
        }
        Some(counts)
    }

    fn all_held_by_live(&self) -> bool {
        self.counts().is_some()
    }

    /// Every lease held by a live worker, each holding floor or ceil of
    /// leases / workers.
    fn is_even(&self) -> bool {
        let leases = lock(&self.table.rows).len();
        let (low, high) = (
            leases / self.workers.len(),
            leases.div_ceil(self.workers.len()),
        );
        self.counts()
            .is_some_and(|c| c.iter().all(|n| (low..=high).contains(n)))
    }

    fn lost_leases(&self) -> u64 {
        self.workers.iter().map(|w| w.held.take_lost_count()).sum()
    }

    pub(super) fn mean_lease_bytes(&self) -> f64 {
        let rows = lock(&self.table.rows);
        let total: usize = rows
            .values()
            .filter_map(Row::lease)
            .map(super::lease_bytes)
            .sum();
        total as f64 / rows.len().max(1) as f64
    }
}

pub(super) fn free_lease(shard_id: String) -> Lease {
    Lease {
        shard_id,
        owner: None,
        handoff_to: None,
        counter: 1,
        checkpoint: Checkpoint::TrimHorizon,
        owner_switches_since_checkpoint: 0,
        parents: Vec::new(),
        children: Vec::new(),
        hash_range: Some(("0".into(), HIGHEST_HASH_KEY.into())),
        load: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_settles_and_its_figures_are_measured() {
        let f = simulate_fleet(40, 4, Duration::from_secs(60), Duration::from_secs(120));
        // Four workers starting at once: one that read the table while
        // every lease was promised to the others asks at its next full
        // read (6 x failover).
        assert!(f.cold_start.is_some_and(|t| t <= FAILOVER * 7), "{f:?}");
        assert_eq!((f.throttled_writes, f.lost_leases), (0, 0), "{f:?}");
        // Four workers beat every F/3 in a row of well under 1 KB: 1.2
        // writes a second, one unit each (a second may see two of one
        // worker's beats, so up to about 2 units).
        assert_eq!(f.peak_item_wcu.0, "kinesis-consumer:workers", "{f:?}");
        assert!((1.0..=4.0).contains(&f.peak_item_wcu.1), "{f:?}");
        assert!(f.largest_item.1 < 1024, "{f:?}");
        assert!(f.write_units_per_lease_minute > 0.0, "{f:?}");
        assert!(
            f.takeover
                .is_some_and(|t| t <= FAILOVER + FAILOVER / 3 + Duration::from_secs(1)),
            "{f:?}"
        );
        assert!(f.join.is_some_and(|t| t <= FAILOVER), "{f:?}");
    }

    /// Issue 25: a workers-row fleet never grows past its cap, where its
    /// one item would turn hot: of 70 workers the six after the first 64
    /// by id stop (with a configuration error naming the cap), the rest
    /// share every lease, and the row stays under 100 WCU/s.
    #[test]
    fn a_workers_row_fleet_stops_the_workers_past_its_cap() {
        use crate::lease::peers::WORKERS_ROW_MAX;
        let mut sim = Sim::idle_fleet(128, 70);
        sim.run_for(FAILOVER * 3);
        let ids: Vec<&str> = sim.workers.iter().map(|w| w.id.as_str()).collect();
        let first: Vec<String> = (0..WORKERS_ROW_MAX).map(|i| format!("w{i:04}")).collect();
        assert_eq!(ids, first);
        sim.table.limits.reset_peaks();
        sim.run_for(FAILOVER * 3);
        assert!(
            sim.all_held_by_live(),
            "a lease of a stopped worker is not read"
        );
        let (served, asked) = sim.table.limits.peaks();
        assert!(asked.units < 100.0, "{}: {} WCU/s", asked.key, asked.units);
        assert_eq!(served.units, asked.units, "writes throttled");
    }
}
