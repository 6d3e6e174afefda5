//! A prototype of the leader-run fleet on the simulated table (issue 25;
//! the design is in docs/many-workers.md, "Thousands of workers"). Not
//! the coordinator: each worker is a small loop over the real table
//! operations (its item, the lock, the leader's survey, take, ask,
//! release) on simulated time, with no records, checkpoints, shard syncs
//! or faults; the leader shares the leases evenly (free and dead workers'
//! leases to the least loaded live worker, then asks the busiest to give
//! towards the mean). It measures what the design costs the table:
//! per-item peak WCU/s, the largest item, request units per lease-minute,
//! and the times of a kill -9 (of a worker, then of the leader) and of a
//! join.
//!
//! `LEADER_FLEET=20000x2000 cargo test --release --lib leader_fleet --
//! --nocapture` prints the figures of one size; without it the test runs
//! 1,000 leases x 20 workers and checks them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::limits::lease_bytes;
use super::{FAILOVER, Sim, lock};
use crate::lease::LeaseStore;
use crate::lease::members::{Lead, MemberStore, Notes, Settled};
use crate::lease::plan::Row;
use crate::lease::table::Beat;

const FAILOVER_MS: u64 = FAILOVER.as_millis() as u64;
/// A heartbeat (and a leader's round) every third of the failover time.
const PERIOD_MS: u64 = FAILOVER_MS / 3;
const STEP_MS: u64 = 100;
/// The rounds' milliseconds of jitter in the judgement of a still beat.
const SLACK_MS: u64 = 50;

/// One prototype worker.
#[derive(Default)]
struct Member {
    id: String,
    beat: u64,
    landed: Option<u64>,
    next_round_ms: u64,
    /// The leases it reads, with their counters.
    held: BTreeMap<String, u64>,
    /// Leases taken into `held` or handed over since its last heartbeat.
    settled: Settled,
    /// The lock as last read: holder, beat, since when (clock ms).
    lock_seen: Option<(String, u64, u64)>,
    /// Set while it leads: its last lock beat.
    leading: Option<u64>,
    /// As leader: each worker's beat, since when it stood still.
    watched: BTreeMap<String, (u64, u64)>,
    /// As a new leader: the old one, dead at once if its item's beat is no
    /// later than the lock's.
    predecessor: Option<(String, u64)>,
    /// As leader: who claims first if it stops (written with the lock).
    successors: Vec<String>,
    /// As leader: when it starts sharing leases out (clock ms).
    plans_from_ms: u64,
}

/// What one run measured (simulated time).
#[derive(Debug)]
struct Figures {
    cold_start_s: Option<f64>,
    units_per_lease_minute: (f64, f64),
    peak_item_wcu: (String, f64),
    largest_item: (String, usize),
    /// For the KCL 2.x model's figure (its `S`).
    mean_lease_bytes: f64,
    throttled: u64,
    /// Leases owned by live workers again; every lease read again.
    takeover_s: (Option<f64>, Option<f64>),
    join_s: (Option<f64>, Option<f64>),
    /// A new leader holds the lock; the old leader's leases owned by live
    /// workers; the share even and every lease read again.
    leader_kill_s: (Option<f64>, Option<f64>, Option<f64>),
}

struct Fleet {
    sim: Sim,
    members: Vec<Member>,
    leases: usize,
}

impl Fleet {
    fn new(leases: usize, workers: usize) -> Fleet {
        let sim = Sim::idle_fleet(leases, 0);
        let members = (0..workers)
            .map(|i| Member {
                id: format!("w{i:04}"),
                // All start within one period.
                next_round_ms: i as u64 * PERIOD_MS / workers as u64,
                ..Member::default()
            })
            .collect();
        Fleet {
            sim,
            members,
            leases,
        }
    }

    fn now_ms(&self) -> u64 {
        self.sim.table.clock.load(Ordering::Relaxed)
    }

    fn step(&mut self) {
        let now = self.now_ms();
        // An eventually consistent read sees the table as it was up to a
        // second ago.
        if now % 1_000 == 0 {
            *lock(&self.sim.table.stale_rows) = lock(&self.sim.table.rows).clone();
        }
        for member in &mut self.members {
            if member.next_round_ms <= now {
                round(&self.sim, member, now);
                member.next_round_ms += PERIOD_MS;
            }
        }
        self.sim.table.clock.fetch_add(STEP_MS, Ordering::Relaxed);
    }

    fn run_until(&mut self, bound: Duration, done: impl Fn(&Fleet) -> bool) -> Option<f64> {
        let start = self.now_ms();
        while self.now_ms() - start < bound.as_millis() as u64 {
            if done(self) {
                return Some((self.now_ms() - start) as f64 / 1_000.0);
            }
            self.step();
        }
        None
    }

    /// Leases per live worker by the table's owners; `None` while a lease
    /// has no live owner.
    fn owned(&self) -> Option<Vec<usize>> {
        let index: BTreeMap<&str, usize> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i))
            .collect();
        let mut counts = vec![0; self.members.len()];
        for row in lock(&self.sim.table.rows).values() {
            let owner = row.lease().and_then(|l| l.owner.as_deref());
            counts[*index.get(owner?)?] += 1;
        }
        Some(counts)
    }

    fn is_even(&self) -> bool {
        let n = self.members.len();
        let (low, high) = (self.leases / n, self.leases.div_ceil(n));
        self.owned()
            .is_some_and(|c| c.iter().all(|k| (low..=high).contains(k)))
    }

    /// Every lease read by the live worker that owns it.
    fn all_read(&self) -> bool {
        let by_id: BTreeMap<&str, &Member> =
            self.members.iter().map(|m| (m.id.as_str(), m)).collect();
        let rows = lock(&self.sim.table.rows);
        rows.values().filter_map(Row::lease).all(|l| {
            l.owner
                .as_deref()
                .and_then(|o| by_id.get(o))
                .is_some_and(|m| m.held.contains_key(&l.shard_id))
        })
    }

    fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.leading.is_some())
    }
}

/// One worker's round: its heartbeat, its notes, then the lock.
fn round(sim: &Sim, me: &mut Member, now: u64) {
    let table = &*sim.table;
    me.beat += 1;
    // A leader writes the lock first, with the same beat: a successor
    // that saw the lock still for the failover time knows the item too
    // stood still.
    if let Some(last) = me.leading {
        let renewal = Lead {
            worker: &me.id,
            beat: me.beat,
            seen: Some((&me.id, last)),
            successors: &me.successors,
        };
        me.leading = table.lead(&renewal).unwrap_or(false).then_some(me.beat);
    }
    let beat = Beat {
        worker: &me.id,
        number: me.beat,
        since: me.landed,
        cap: None,
    };
    let Ok(item) = table.beat_in_item(&beat, &me.settled) else {
        return;
    };
    me.landed = Some(me.beat);
    me.settled = Settled::default();
    for shard_id in &item.take {
        // The lease's row, for its counter (and in production its
        // checkpoint): one strongly consistent read.
        let row = lock(&table.rows).get(shard_id).cloned();
        if let Some(Row::Lease(lease)) = row {
            table.limits.read(lease_bytes(&lease), true);
            if lease.owner.as_deref() == Some(me.id.as_str()) {
                me.held.insert(shard_id.clone(), lease.counter);
            }
        }
        me.settled.took.push(shard_id.clone());
    }
    for shard_id in &item.give {
        let row = lock(&table.rows).get(shard_id).cloned();
        if let (Some(Row::Lease(lease)), Some(&counter)) = (row, me.held.get(shard_id)) {
            if let Some(to) = lease.handoff_to.as_deref() {
                if let Ok(Some(_)) = table.release(shard_id, &me.id, counter, Some(to)) {
                    me.held.remove(shard_id);
                    let _ = table.note(to, Notes::Take, std::slice::from_ref(shard_id));
                }
            }
        }
        me.settled.gave.push(shard_id.clone());
    }
    if me.leading.is_none() {
        watch_lock(sim, me, now);
    }
    // A worker that just claimed the lock leads at once.
    if me.leading.is_some() {
        lead_round(sim, me, now);
    }
}

/// The next two workers after `me` by id (wrapping): who claims first.
fn successors(live: &BTreeSet<&str>, me: &str) -> Vec<String> {
    let after = live.range::<&str, _>((std::ops::Bound::Excluded(me), std::ops::Bound::Unbounded));
    after
        .chain(live.iter())
        .filter(|id| **id != me)
        .take(2)
        .map(|id| id.to_string())
        .collect()
}

/// A follower reads the lock and claims it when its holder stood still.
fn watch_lock(sim: &Sim, me: &mut Member, now: u64) {
    let table = &*sim.table;
    let Ok(held) = table.lock() else { return };
    let claim_on = match held {
        None => Some(None),
        Some(l) => {
            let rank = l.successors.iter().position(|s| *s == me.id);
            let seen = me.lock_seen.get_or_insert((l.leader.clone(), l.beat, now));
            if (seen.0.as_str(), seen.1) != (l.leader.as_str(), l.beat) {
                *seen = (l.leader.clone(), l.beat, now);
            }
            let still = now - seen.2 + SLACK_MS;
            // The first successor at F, the second a period later, anyone
            // else from 2F, spread over a period by id.
            let wait = match rank {
                Some(r) => FAILOVER_MS + r as u64 * PERIOD_MS,
                None => 2 * FAILOVER_MS + spread(&me.id),
            };
            (still >= wait).then(|| Some((l.leader.clone(), l.beat)))
        }
    };
    let Some(seen) = claim_on else { return };
    let claim = Lead {
        worker: &me.id,
        beat: me.beat,
        seen: seen.as_ref().map(|(w, b)| (w.as_str(), *b)),
        successors: &[],
    };
    if table.lead(&claim).unwrap_or(false) {
        me.leading = Some(me.beat);
        me.watched.clear();
        // A lock no one held: the fleet is starting, and workers that
        // have not beaten yet have no item. Waiting a period lets each
        // write one, so that the first leader does not take every lease
        // for the few it sees (an item of every lease key, past 400 KB
        // at 20,000 leases). A lock taken over: every live worker has an
        // item already.
        me.plans_from_ms = if seen.is_none() { now + PERIOD_MS } else { now };
        me.predecessor = seen;
    }
}

fn spread(id: &str) -> u64 {
    id.bytes().map(u64::from).sum::<u64>() * 97 % PERIOD_MS
}

/// The leader's round: survey, judge, take for others, ask, forget.
fn lead_round(sim: &Sim, me: &mut Member, now: u64) {
    let table = &*sim.table;
    let Ok(survey) = table.survey(false) else {
        return;
    };
    // Judge each worker by its beat on our own clock.
    me.watched.retain(|id, _| survey.workers.contains_key(id));
    for (id, item) in &survey.workers {
        let seen = me.watched.entry(id.clone()).or_insert((item.beat, now));
        if seen.0 != item.beat {
            *seen = (item.beat, now);
        }
    }
    let dead_at_once = |id: &str, beat: u64| {
        me.predecessor
            .as_ref()
            .is_some_and(|(p, lock_beat)| p == id && beat <= *lock_beat)
    };
    let live: BTreeSet<&str> = me
        .watched
        .iter()
        .filter(|(id, (beat, since))| {
            id.as_str() == me.id
                || (now - since + SLACK_MS < FAILOVER_MS && !dead_at_once(id, *beat))
        })
        .map(|(id, _)| id.as_str())
        .collect();
    me.successors = successors(&live, &me.id);
    if now < me.plans_from_ms {
        return;
    }
    let leases: Vec<_> = survey.rows.iter().filter_map(Row::lease).collect();
    let mut counts: BTreeMap<&str, usize> = live.iter().map(|id| (*id, 0)).collect();
    let mut free = Vec::new();
    for lease in &leases {
        // An asked lease counts as its asker's while the asker lives.
        let asker = lease.handoff_to.as_deref().filter(|a| live.contains(a));
        match asker
            .or(lease.owner.as_deref())
            .and_then(|o| counts.get_mut(o))
        {
            Some(count) => *count += 1,
            None => free.push(*lease),
        }
    }
    // Free leases to the least loaded (ties by id).
    let least = |counts: &BTreeMap<&str, usize>| {
        let (id, n) = counts.iter().min_by_key(|(id, n)| (**n, **id)).unwrap();
        (id.to_string(), *n)
    };
    let mut taken: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for lease in free {
        let (to, _) = least(&counts);
        if let Ok(Some(_)) = table.take(&lease.shard_id, lease.counter, &to) {
            *counts.get_mut(to.as_str()).unwrap() += 1;
            taken.entry(to).or_default().push(lease.shard_id.clone());
        }
    }
    for (to, ids) in &taken {
        let _ = table.note(to, Notes::Take, ids);
    }
    // Then asks towards floor or ceiling of the mean: a lease moves from
    // above the ceiling, or to below the floor, and only when that narrows
    // the gap.
    let total: usize = counts.values().sum();
    let (low, high) = (total / live.len(), total.div_ceil(live.len()));
    let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for lease in &leases {
        let (Some(owner), None) = (lease.owner.as_deref(), &lease.handoff_to) else {
            continue;
        };
        let Some(&have) = counts.get(owner) else {
            continue;
        };
        let (to, n) = least(&counts);
        if n + 1 >= have || (have <= high && n >= low) {
            continue;
        }
        if let Ok(true) = table.request_handoff(&lease.shard_id, owner, lease.counter, &to) {
            *counts.get_mut(owner).unwrap() -= 1;
            *counts.get_mut(to.as_str()).unwrap() += 1;
            asked
                .entry(owner.to_owned())
                .or_default()
                .push(lease.shard_id.clone());
        }
    }
    for (owner, ids) in &asked {
        let _ = table.note(owner, Notes::Give, ids);
    }
    // Dead workers' items go once no lease names them.
    for (id, item) in &survey.workers {
        let named = leases
            .iter()
            .any(|l| l.owner.as_deref() == Some(id.as_str()));
        if !live.contains(id.as_str()) && !named {
            let _ = table.forget_item(id, Some(item.beat));
        }
    }
}

fn run(leases: usize, workers: usize, measure: Duration, bound: Duration) -> Figures {
    let mut fleet = Fleet::new(leases, workers);
    let cold_start_s = fleet.run_until(bound, |f| f.is_even() && f.all_read());
    fleet.run_until(FAILOVER, |_| false);
    let limits = &fleet.sim.table.limits;
    let before = limits.units();
    limits.reset_peaks();
    fleet.run_until(measure, |_| false);
    let limits = &fleet.sim.table.limits;
    let spent = limits.units();
    let (peak, _) = limits.peaks();
    let lease_minutes = leases as f64 * measure.as_secs_f64() / 60.0;
    let units_per_lease_minute = (
        (spent.read - before.read) / lease_minutes,
        (spent.write - before.write) / lease_minutes,
    );
    let throttled = spent.throttled - before.throttled;
    // kill -9 of a worker that does not lead.
    let leader = fleet.leader();
    let victim = (0..fleet.members.len())
        .find(|i| Some(*i) != leader)
        .unwrap();
    fleet.members.remove(victim);
    let owned = fleet.run_until(bound, |f| f.owned().is_some());
    let read = fleet.run_until(bound, Fleet::all_read);
    let takeover_s = (owned, owned.zip(read).map(|(a, b)| a + b));
    // A worker joins once the victim's item is gone.
    let join = Member {
        id: "w-new".into(),
        next_round_ms: fleet.now_ms(),
        ..Member::default()
    };
    fleet.members.push(join);
    let even = fleet.run_until(bound, Fleet::is_even);
    let read = fleet.run_until(bound, Fleet::all_read);
    let join_s = (even, even.zip(read).map(|(a, b)| a + b));
    // kill -9 of the leader.
    let leader_kill_s = match fleet.leader() {
        Some(i) => {
            fleet.members.remove(i);
            let claimed = fleet.run_until(bound, |f| f.leader().is_some());
            let owned = fleet.run_until(bound, |f| f.owned().is_some());
            let even = fleet.run_until(bound, |f| f.is_even() && f.all_read());
            let since_kill =
                |later: Option<f64>| claimed.zip(owned).zip(later).map(|((a, b), c)| a + b + c);
            (claimed, since_kill(Some(0.0)), since_kill(even))
        }
        None => (None, None, None),
    };
    let limits = &fleet.sim.table.limits;
    Figures {
        cold_start_s,
        units_per_lease_minute,
        peak_item_wcu: (peak.key, peak.units),
        largest_item: limits.largest(),
        mean_lease_bytes: fleet.sim.mean_lease_bytes(),
        throttled,
        takeover_s,
        join_s,
        leader_kill_s,
    }
}

/// The KCL 2.x model's request units per lease-minute, as the `fleet`
/// benchmark prints it: renewals every `F/3` of a row of `bytes`, and
/// every worker scanning the table every `2F`, eventually consistent.
fn kcl_model(leases: usize, workers: usize, bytes: f64) -> f64 {
    let failover = FAILOVER.as_secs_f64();
    let renewal = 60.0 / (failover / 3.0) * (bytes / 1024.0).ceil();
    let table_units = (leases as f64 * bytes / 4096.0).ceil();
    let scan = workers as f64 * 60.0 / (2.0 * failover) * table_units * 0.5 / leases as f64;
    renewal + scan
}

/// The size named in `LEADER_FLEET` (`LEASESxWORKERS`), or 1,000 x 20.
fn size() -> (usize, usize, bool) {
    let named = std::env::var("LEADER_FLEET").ok().and_then(|s| {
        let (l, w) = s.split_once('x')?;
        Some((l.parse().ok()?, w.parse().ok()?))
    });
    match named {
        Some((l, w)) => (l, w, true),
        None => (1_000, 20, false),
    }
}

#[test]
fn leader_fleet_prototype_meets_the_per_item_and_cost_goals() {
    let (leases, workers, named) = size();
    let wall = std::time::Instant::now();
    let f = run(
        leases,
        workers,
        Duration::from_secs(60),
        Duration::from_secs(120),
    );
    let (read, write) = f.units_per_lease_minute;
    let model = kcl_model(leases, workers, f.mean_lease_bytes);
    println!(
        "leader fleet prototype, {leases} leases x {workers} workers: {f:#?}\nKCL 2.x model {model:.3} per lease-minute: {:.3}x\nwall {:?}",
        (read + write) / model,
        wall.elapsed()
    );
    if named {
        return;
    }
    let period = FAILOVER.as_secs_f64() / 3.0;
    let failover = FAILOVER.as_secs_f64();
    assert!(f.cold_start_s.is_some(), "{f:?}");
    assert!(f.peak_item_wcu.1 <= 100.0, "{f:?}");
    assert!(f.largest_item.1 <= 64 * 1024, "{f:?}");
    assert_eq!(f.throttled, 0, "{f:?}");
    // A tenth of the KCL 2.x model at this size (19.53 per lease-minute
    // with 206 B rows).
    let (read, write) = f.units_per_lease_minute;
    let model = kcl_model(leases, workers, f.mean_lease_bytes);
    assert!((model - 19.53).abs() < 0.01, "{model}");
    assert!(read + write <= model / 10.0, "{f:?}");
    assert!(
        f.takeover_s.0.is_some_and(|t| t <= failover + period + 0.5),
        "{f:?}"
    );
    assert!(f.join_s.0.is_some_and(|t| t <= 2.0 * period + 0.5), "{f:?}");
    assert!(
        f.leader_kill_s
            .0
            .is_some_and(|t| t <= failover + period + 0.5),
        "{f:?}"
    );
}
