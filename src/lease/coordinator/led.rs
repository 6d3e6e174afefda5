//! The coordinator in a leader-run fleet ([`Coordination::Leader`]; the
//! design is in docs/many-workers.md, "Thousands of workers").
//!
//! Every worker, every heartbeat period: renews the lock if it leads,
//! beats in its own item (the reply is the item: the leases taken for it
//! and those it is asked to hand over), starts the former and hands the
//! latter over, and watches the lock, claiming it when its holder's beat
//! stood still. The leader alone then reads the whole table (leases and
//! worker items, one Scan), judges which workers are dead, and decides
//! for the whole fleet with [`plan::plan_fleet`]: it takes free and dead
//! workers' leases *for* their new owners and writes them into their
//! items, and asks givers for balance through theirs. The others never
//! read the table in the steady state.
//!
//! [`Coordination::Leader`]: crate::Coordination::Leader

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use super::{Coordinator, ShardRunner, owned_by};
use crate::error::{Error, Result};
use crate::lease::Checkpoint;
use crate::lease::held::lock_backdate;
use crate::lease::members::{Lead, Notes, Settled, WorkerItem, note_entry, parse_entry};
use crate::lease::peers::has_waited;
use crate::lease::plan::{self, FleetInput, Lineage, Row};
use crate::lease::table::Workers;
use crate::metrics::Metric;

/// A leader-run worker's own state, besides the coordinator's.
#[derive(Debug, Default)]
pub(super) struct Led {
    /// Entries of its item's sets dealt with since the last heartbeat
    /// that landed: that heartbeat takes them out.
    settled: Settled,
    /// Leases dropped when the heartbeat lapsed: held again, from their
    /// checkpoints, if the table still gives them to us.
    recheck: BTreeSet<String>,
    /// This worker's leases lapsed (its heartbeat, or its lock writes
    /// while it led) since its item was last settled: a leader may have
    /// judged it dead, and its take of a lease the item still hands us
    /// may be in flight, so such a lease is taken with a conditional write
    /// rather than adopted (SIM_FAULTS=suspend,drift,namesakes seed 2891).
    lapsed: bool,
    /// Leases the table gave this worker's id at startup (an earlier
    /// run's): held once an older process under the id surely stopped
    /// (see [`HeldLeases::may_take_earlier_runs_leases`]), if still ours.
    /// The leader cannot tell them from leases we hold: our id is live.
    ///
    /// [`HeldLeases::may_take_earlier_runs_leases`]: crate::lease::HeldLeases::may_take_earlier_runs_leases
    earlier_runs: BTreeSet<String>,
    /// The shards this worker started readers for: a reader whose lease
    /// is no longer held is stopped.
    started: BTreeSet<String>,
    /// The lock as last read: holder, beat, and since when it stood still.
    lock_seen: Option<(String, u64, Instant)>,
    /// While leading: the beat the lock holds from us.
    leading: Option<u64>,
    /// While leading: the beat of our last renewal that failed, which may
    /// have landed with its reply lost.
    lock_attempt: Option<u64>,
    /// While leading: when planning may begin (a fleet starting gives every
    /// worker a period to write its item first).
    plans_from: Option<Instant>,
    /// The leader we took the lock over from, its last lock beat, and its
    /// item's beat when first surveyed: dead at once if that beat is no
    /// later than the one written right after the lock (each round writes
    /// the lock, then the item with the next number) and no lower than its
    /// own rounds' (see [`wrote_no_beat_since`]), until its item's beat
    /// moves (a restart under its id).
    predecessor: Option<(String, u64, Option<u64>)>,
    /// While leading: who claims first if we stop, as written in the lock.
    successors: Vec<String>,
    /// While leading: notes not written yet, sent again next round.
    unsent: BTreeMap<(String, bool), Vec<String>>,
    /// While leading: live workers the table gives more leases than they
    /// say they hold, and since when (see [`Coordinator::remind`]).
    doubts: BTreeMap<String, Instant>,
    /// While leading: the leases taken this round and for whom, written
    /// into the rows kept for the next round (see
    /// [`Coordinator::tell_of_leases_taken_behind_backs`]).
    taken: Vec<(String, String)>,
    /// The item as a beat written between rounds (while a shard listing
    /// waited) returned it: the next round settles it instead of beating
    /// again.
    between: Option<WorkerItem>,
    /// While leading: the recent balance moves, against ping-pong.
    balance: plan::BalanceMemory,
    /// When this worker's current round began, by its wall clock: a
    /// leader writes it into the lock.
    round_began: Option<SystemTime>,
    /// While following: when the leader's round began, as its lock last
    /// said (see [`Coordinator::until_next_round`]).
    leader_round_began: Option<SystemTime>,
    /// A successor's next look at the lock outside its rounds: when the
    /// lock it saw last would have stood still long enough for it to
    /// claim (see [`Coordinator::early_watch`]).
    next_watch: Option<Instant>,
    /// The `unread` set of this worker's item as its last beat returned it.
    unread: BTreeSet<String>,
    /// While leading: the beats in the workers row at the last survey
    /// (see [`Coordinator::refuse_workers_row`]).
    row_beats: Option<BTreeMap<String, u64>>,
}

impl Led {
    /// True while this worker leads.
    pub(super) fn leads(&self) -> bool {
        self.leading.is_some()
    }
}

impl<R: ShardRunner> Coordinator<R> {
    /// One round of a leader-run worker.
    pub(super) fn led_round(&mut self) {
        self.led.round_began = Some(self.held.clock().stamp().wall);
        // A beat written meanwhile (with the lock renewed before it) stands
        // for this round's, as in the workers row's round (see
        // `Coordinator::round`).
        let fresh = !self.beat_is_due(self.timings.heartbeat_interval / 2);
        let beat = match self.led.between.take() {
            Some(item) if fresh => Some(Ok(item)),
            _ if fresh => None,
            _ => Some(self.renew_and_beat()),
        };
        match beat {
            None => {}
            Some(Ok(item)) => {
                self.settle(&item);
                let refused = self.held.take_refused();
                self.led.recheck.extend(refused);
                self.note_not_found();
                if !self.reported_not_found.is_empty() {
                    match self.check_not_found() {
                        Ok(again) => self.led.recheck.extend(again),
                        Err(e) => self.log_failure("listing the stream", Err::<(), _>(e)),
                    }
                }
                self.recheck();
            }
            Some(Err(e)) => self.beat_failed(e),
        }
        // Streams this process stopped reading: their leases are given
        // back (the leader lists the streams only for itself).
        if !self.syncs_shards() {
            self.shards.apply_stream_changes();
        }
        self.retire_streams();
        self.stop_unheld_readers();
        self.watch();
    }

    /// A follower reads the lock (and leads at once if it claims it); a
    /// leader leads.
    fn watch(&mut self) {
        if !self.led.leads() {
            let watched = self.watch_lock();
            self.log_failure("reading the leader's lock", watched);
        }
        if self.led.leads() {
            let led = self.lead();
            self.log_failure("leading", led);
        }
    }

    /// The first heartbeat and lock watch at startup; errors reach the
    /// caller.
    pub(super) fn start_led(&mut self) -> Result<()> {
        let me = self.held.owner();
        self.led.earlier_runs = self
            .rows
            .iter()
            .filter_map(Row::lease)
            .filter(|l| l.owner.as_deref() == Some(me))
            .map(|l| l.shard_id.clone())
            .collect();
        let item = self.beat_in_item()?;
        self.settle(&item);
        // Only the leader lists the stream: 2,000 workers listing 20,000
        // shards at once would be 40,000 ListShards calls.
        self.watch_lock()?;
        if self.led.leads() {
            self.lead()?;
        } else {
            self.forget_table();
        }
        Ok(())
    }

    /// Drops what only a leader needs (the table and the stream's shards
    /// as last read): at 20,000 leases a copy in each of 2,000 workers
    /// would take gigabytes.
    pub(super) fn forget_table(&mut self) {
        self.rows = Vec::new();
        self.led.row_beats = None;
        self.listed = None;
        self.misses.clear();
        self.observed.clear();
    }

    /// Renews the lock if this worker leads, then beats in its item: the
    /// item's beat right after the lock's tells a successor that this
    /// leader lived past its last lock write (see [`Led::predecessor`]).
    fn renew_and_beat(&mut self) -> Result<WorkerItem> {
        if let Some(last) = self.led.leading {
            self.renew_lock(last);
        }
        self.beat_in_item()
    }

    /// Writes the heartbeat in this worker's item (with the entries
    /// settled since the last one that landed) and returns the item.
    pub(super) fn beat_in_item(&mut self) -> Result<WorkerItem> {
        self.last_beat = Some(self.held.clock().stamp());
        self.led.between = None;
        self.led.settled.held = Some(self.held.len() as u64);
        self.led.settled.falling_behind = self.metrics.live().falling_behind();
        let (lapsed, item) = self.held.heartbeat_in_item(self.cap(), &self.led.settled);
        if let Some(dropped) = lapsed {
            self.led.lapsed = true;
            for shard_id in &dropped {
                log::warn!(
                    "lease {shard_id} dropped: no heartbeat landed in time; it is read again if still ours"
                );
            }
            self.led.recheck.extend(dropped);
        }
        let item = item?;
        self.led.settled = Settled::default();
        Ok(item)
    }

    /// A heartbeat due while a round waits (on a shard listing): the item
    /// it returns is settled by the next round, which writes no beat of
    /// its own then.
    pub(super) fn beat_between_rounds(&mut self) {
        match self.renew_and_beat() {
            Ok(item) => self.led.between = Some(item),
            Err(e) => self.log_failure("heartbeat", Err::<(), _>(e)),
        }
    }

    /// Starts the leases taken for this worker and hands over those asked
    /// of it. Entries whose row could not be read stay for the next round.
    fn settle(&mut self, item: &WorkerItem) {
        self.led.unread = item.unread.clone();
        self.led.settled.read = item
            .unread
            .iter()
            .filter(|key| self.shards.owns(key))
            .cloned()
            .collect();
        let mut all_taken = true;
        for entry in &item.take {
            match self.adopt(parse_entry(entry).0) {
                Ok(()) => self.led.settled.took.push(entry.clone()),
                Err(e) => {
                    all_taken = false;
                    self.log_failure("starting a lease taken for us", Err::<(), _>(e));
                }
            }
        }
        self.led.lapsed &= !all_taken;
        for entry in &item.give {
            match self.give(parse_entry(entry).0) {
                Ok(()) => self.led.settled.gave.push(entry.clone()),
                Err(e) => self.log_failure("handing a lease over", Err::<(), _>(e)),
            }
        }
    }

    /// Holds and reads a lease the table gives this worker (the leader
    /// took it for us, or its owner handed it over), if it still does; or
    /// reads again a held one whose reader stopped (the service said for a
    /// moment that its shard does not exist).
    fn adopt(&mut self, key: &str) -> Result<()> {
        let held = self.held.shards().into_iter().find(|(id, _)| id == key);
        let handing_over = || self.held.handoffs().iter().any(|id| id == key);
        if held.is_some() && (self.runner.is_running(key) || handing_over()) {
            return Ok(());
        }
        if self.led.earlier_runs.contains(key) && !self.held.may_take_earlier_runs_leases() {
            // Perhaps a live process's under our id, whose item we share:
            // `recheck` holds it once we may (SIM_FAULTS=namesakes seed 129).
            return Ok(());
        }
        let Some(Row::Lease(lease)) = self.held.table().lease_row(key)? else {
            return Ok(());
        };
        if lease.owner.as_deref() != Some(self.held.owner()) {
            return Ok(());
        }
        if let (None, Some(to)) = (&held, lease.handoff_to.as_deref()) {
            // Asked of us before we read it: nothing to checkpoint first.
            return self.pass_on(key, lease.counter, to);
        }
        if lease.checkpoint == Checkpoint::ShardEnd {
            // Read to its end (a checkpoint that landed with its reply
            // lost, refused on retry): finished, as if its reader had
            // said so. Held, it would stay ours for good, its reader
            // having nothing to read, and counted in our item, where it
            // hid a take whose note was lost (seeds 903 and 2137 of
            // SIM_FAULTS=suspend,drift,namesakes).
            if held.is_none() {
                self.held.adopt(key, lease.counter);
            }
            self.shard_finished(key);
            return Ok(());
        }
        if held.is_none() && !self.shards.owns(key) {
            // A stream this process no longer reads (the leader's list
            // differs): free it for a worker that does.
            log::info!("freeing lease {key}: its stream is not read here");
            let me = self.held.owner();
            self.held.table().release(key, me, lease.counter, None)?;
            // Said in the item, so that the leader gives us no more of it.
            let stream = plan::stream_of(key);
            let said = |k: &String| plan::stream_of(k) == stream;
            if !self.led.unread.iter().any(said) && !self.led.settled.unread.iter().any(said) {
                self.led.settled.unread.push(key.to_owned());
            }
            return Ok(());
        }
        let epoch = match held {
            Some((_, epoch)) => epoch,
            None if self.led.lapsed => match self.held.take(key, lease.counter, false)? {
                Some(epoch) => epoch,
                None => return Ok(()),
            },
            None => self.held.adopt(key, lease.counter),
        };
        if self.runner.is_running(key) {
            self.runner.stop(key);
        }
        self.start_reader(key, epoch, &lease.checkpoint);
        self.led.started.insert(key.to_owned());
        self.metrics.record(None, &[(Metric::LeasesTaken, 1.0)]);
        Ok(())
    }

    /// Hands a held lease over to the worker its row names; drops one the
    /// row gives to another (taken behind our back).
    fn give(&mut self, key: &str) -> Result<()> {
        let row = self.held.table().lease_row(key)?;
        let lease = row.as_ref().and_then(Row::lease);
        let me = self.held.owner();
        if !self.held.shard_ids().contains(key) {
            // Taken for us and asked of us before we read it.
            return match lease {
                Some(l) if l.owner.as_deref() == Some(me) => match l.handoff_to.as_deref() {
                    Some(to) => self.pass_on(key, l.counter, to),
                    None => Ok(()),
                },
                _ => Ok(()),
            };
        }
        match lease {
            Some(l) if l.owner.as_deref() == Some(me) => {
                if let Some(to) = l.handoff_to.as_deref() {
                    if self.held.hand_over(key, to) {
                        self.runner.stop(key);
                    }
                }
            }
            _ => {
                log::info!(
                    "lease {key} lost: now {}",
                    owned_by(lease.and_then(|l| l.owner.as_deref()))
                );
                self.runner.stop(key);
                self.held.drop_lost(key);
            }
        }
        Ok(())
    }

    /// Hands a lease the table gives us but we never read straight to
    /// `to`, and writes it into `to`'s item.
    fn pass_on(&mut self, key: &str, counter: u64, to: &str) -> Result<()> {
        let me = self.held.owner();
        if let Some(written) = self.held.table().release(key, me, counter, Some(to))? {
            log::info!("handed lease {key} over to {to} unread");
            let entry = [note_entry(key, written.counter)];
            self.held.table().note(to, Notes::Take, &entry)?;
        }
        Ok(())
    }

    /// After a lapsed heartbeat: holds again the dropped leases the table
    /// still gives us; and an earlier run's, once we may.
    fn recheck(&mut self) {
        if !self.led.earlier_runs.is_empty() && self.held.may_take_earlier_runs_leases() {
            let earlier = std::mem::take(&mut self.led.earlier_runs);
            self.led.recheck.extend(earlier);
        }
        for key in std::mem::take(&mut self.led.recheck) {
            if let Err(e) = self.adopt(&key) {
                self.log_failure("taking a lease back", Err::<(), _>(e));
                self.led.recheck.insert(key);
            }
        }
    }

    /// Stops the readers of leases no longer held (lapsed, refused at a
    /// checkpoint, handed over).
    fn stop_unheld_readers(&mut self) {
        let held = self.held.shard_ids();
        let runner = &mut self.runner;
        self.led.started.retain(|key| {
            let keep = held.contains(key);
            if !keep && runner.is_running(key) {
                log::info!("stopping the reader of {key}: its lease is gone");
                runner.stop(key);
            }
            keep
        });
    }

    /// Renews the lock; a renewal refused (someone took the lock over
    /// while we were slow) ends our leadership.
    fn renew_lock(&mut self, last: u64) {
        let (mut beat, mut renewed) = self.write_held_lock(last, None);
        if let (Ok(false), Some(attempt)) = (&renewed, self.led.lock_attempt.take()) {
            // Our last renewal landed with its reply lost: renew over it
            // (SIM_FAULTS=suspend,drift,namesakes seed 2137: the leader
            // gave the fleet up to its successor for it).
            (beat, renewed) = self.write_held_lock(attempt, None);
        }
        match renewed {
            Ok(true) => self.led.leading = Some(beat),
            Ok(false) => {
                log::warn!("no longer the leader: another worker took the lock");
                self.led.leading = None;
                if let Some(dropped) = self.held.stop_leading() {
                    self.led.lapsed = true;
                    self.led.recheck.extend(dropped);
                }
                self.forget_table();
            }
            // Not renewed: still ours until someone claims it.
            Err(e) => {
                self.led.lock_attempt = Some(beat);
                self.log_failure("renewing the leader's lock", Err::<(), _>(e));
            }
        }
    }

    /// Writes the lock this worker holds since its beat `last` (with why
    /// the fleet stops, if it does), under a beat number of its own;
    /// returns that number and whether the lock was still ours.
    fn write_held_lock(&self, last: u64, halt: Option<&str>) -> (u64, Result<bool>) {
        let beat = self.held.reserve_beat();
        let write = Lead {
            worker: self.held.owner(),
            beat,
            seen: Some((self.held.owner(), last)),
            successors: &self.led.successors,
            halt,
            round_at: self.round_began(),
        };
        (beat, self.write_lock(&write))
    }

    /// Writes the lock; one that landed fences this worker's leases from
    /// its send on (see [`HeldLeases::lock_written`]).
    ///
    /// [`HeldLeases::lock_written`]: crate::lease::HeldLeases::lock_written
    fn write_lock(&self, lead: &Lead<'_>) -> Result<bool> {
        let sent = self.held.clock().stamp();
        let landed = self.held.table().lead(lead)?;
        if landed {
            self.held.lock_written(sent);
        }
        Ok(landed)
    }

    /// When this worker's round began (now, before the first), by its
    /// wall clock.
    fn round_began(&self) -> SystemTime {
        self.led
            .round_began
            .unwrap_or_else(|| self.held.clock().stamp().wall)
    }

    /// How long until a follower's next round: half a period after the
    /// leader's round began, when the leader has written that round's
    /// takes into the items. The leader sees a follower's beat half a
    /// period after it, and the worker it gives a dead follower's leases
    /// reads them half a period after it took them: takeover within the
    /// failover time and one period after the last beat, not two. Every
    /// follower at the same point: one later than another would add the
    /// difference. `None` for a leader, or with no lock read yet.
    pub(super) fn until_next_round(&self) -> Option<Duration> {
        if self.led.leads() {
            return None;
        }
        let began = self.led.leader_round_began?;
        let period = self.timings.heartbeat_interval;
        let now = self.held.clock().stamp().wall;
        Some(until_point(
            now,
            began,
            period,
            period.mul_f64(FOLLOWERS_POINT),
        ))
    }

    /// A successor's look at the lock at the moment the lock it saw last
    /// would have stood still for its wait, if that moment came; returns
    /// when the next is (`None`: no look due, as for a leader, a worker
    /// that is no successor, or one whose lock read failed). While the
    /// leader lives it renews the lock every period and the successor's
    /// rounds see it, so the moment keeps moving on and no extra read is
    /// made; once it died, the first successor claims the failover time
    /// after its last write, not at its next round.
    pub(crate) fn early_watch(&mut self) -> Option<Instant> {
        if self.led.next_watch.is_some_and(|at| self.now() >= at) {
            self.led.next_watch = None;
            self.watch();
        }
        self.led.next_watch
    }

    /// Reads the lock and claims it when no one holds it, or when its
    /// holder's beat stood still long enough for our rank: the first
    /// successor after the failover time, the second a period later,
    /// anyone else from twice the failover time (spread over a period),
    /// each counted from the lock's last write (see [`lock_age`]).
    fn watch_lock(&mut self) -> Result<()> {
        let now = self.now();
        let me = self.held.owner().to_owned();
        let failover = self.timings.failover;
        let period = self.timings.heartbeat_interval;
        let lock = self.held.table().lock()?;
        self.led.leader_round_began = lock
            .as_ref()
            .filter(|l| l.leader != me)
            .and_then(|l| l.round_at);
        self.led.next_watch = None;
        let seen = match lock {
            None => None,
            Some(lock) => {
                // A halt written since our last read stops us; one already
                // there when we first looked is an old fleet's (see
                // `halt_fleet`), claimed over like any still lock.
                let written_since = |(w, b, _): &(String, u64, Instant)| {
                    (w.as_str(), *b) != (lock.leader.as_str(), lock.beat)
                };
                if let Some(why) = &lock.halt {
                    if self.led.lock_seen.as_ref().is_some_and(written_since) {
                        return Err(self.halted(&lock.leader, why));
                    }
                }
                let since = match &mut self.led.lock_seen {
                    Some((holder, beat, since)) if *holder == lock.leader && *beat == lock.beat => {
                        *since
                    }
                    other => {
                        let age = lock_age(lock.round_at, self.held.clock().stamp().wall, failover);
                        let since = now.checked_sub(age).unwrap_or(now);
                        *other = Some((lock.leader.clone(), lock.beat, since));
                        since
                    }
                };
                let still = now.saturating_duration_since(since);
                // Our own id (an earlier run's lock, or a renewal whose
                // reply was lost): the failover time.
                let rank = lock.successors.iter().position(|s| *s == me);
                let wait = match rank {
                    _ if lock.leader == me => failover,
                    Some(rank) => failover + period * rank as u32,
                    None => failover * 2 + spread(&me, period),
                };
                if !has_waited(still, wait) {
                    if rank.is_some() {
                        self.led.next_watch = Some(since + wait);
                    }
                    return Ok(());
                }
                Some((lock.leader, lock.beat))
            }
        };
        let beat = self.held.reserve_beat();
        let claim = Lead {
            worker: &me,
            beat,
            seen: seen.as_ref().map(|(w, b)| (w.as_str(), *b)),
            successors: &[],
            halt: None,
            round_at: self.round_began(),
        };
        if !self.write_lock(&claim)? {
            return Ok(());
        }
        log::info!(
            "leading the fleet (the lock was {})",
            match &seen {
                Some((w, _)) => format!("{w}'s, still for the failover time"),
                None => "free".to_owned(),
            }
        );
        self.led.leading = Some(beat);
        self.led.leader_round_began = None;
        // A lock no one held since we started: the fleet may be starting,
        // and a worker that has not beaten yet has no item; a period lets
        // each write one. One let go by a leader that left: at once.
        let starting = seen.is_none() && self.led.lock_seen.is_none();
        self.led.plans_from = Some(if starting { now + period } else { now });
        self.led.predecessor = seen
            .filter(|(w, _)| *w != me)
            .map(|(w, beat)| (w, beat, None));
        // Judge every worker and row afresh, from now: what this worker
        // kept from leading earlier (a shard's misses in listings made
        // while a stream was removed) is stale (seed 2077: a dead
        // leader's lease was left for a round).
        self.peers = Default::default();
        self.forget_table();
        self.handoffs_seen.clear();
        Ok(())
    }

    /// The leader's round: reads the table and the worker items, judges
    /// the workers, and assigns, asks for and deletes leases.
    fn lead(&mut self) -> Result<()> {
        let survey = self.held.table().survey(true)?;
        let now = self.now();
        let me = self.held.owner().to_owned();
        let workers = Workers {
            beats: survey
                .workers
                .iter()
                .map(|(id, w)| (id.clone(), w.beat))
                .collect(),
            caps: survey
                .workers
                .iter()
                .filter_map(|(id, w)| Some((id.clone(), w.cap?)))
                .collect(),
            ..Workers::default()
        };
        self.peers
            .observe(&workers, &me, now, self.timings.failover);
        let live = self.live_workers(&survey.workers);
        self.led.successors = successors(&live, &me);
        self.send_unsent();
        // The leases of new shards are created at once (pinning `Latest`
        // at the first start), even while planning waits.
        let before = std::mem::take(&mut self.rows);
        let mut rows = self.ours(survey.rows);
        if self.listed.is_none() {
            self.rows = rows;
            self.sync_shards()?;
            rows = std::mem::take(&mut self.rows);
        }
        let listed = Lineage::new(self.listed.as_deref().unwrap_or_default());
        if plan::names_unlisted_shard(&rows, &listed, &self.misses) {
            self.rows = rows;
            self.sync_shards()?;
            rows = std::mem::take(&mut self.rows);
        }
        if self.led.plans_from.is_some_and(|from| now < from) {
            self.rows = rows;
            return Ok(());
        }
        if !self.led.leads() {
            // The lock was lost while a listing waited (its renewal between
            // rounds was refused): a new leader plans now.
            self.forget_table();
            return Ok(());
        }
        let one_mode = self.refuse_workers_row(&survey.row_beats);
        if let Err(e) = one_mode.and_then(|()| self.observe(&rows, now, &me)) {
            self.halt_fleet(&e);
            return Err(e);
        }
        let listed = self.listed.take().unwrap_or_default();
        let result = self.plan_fleet(&rows, &survey.workers, &listed, &live, now);
        self.listed = Some(listed);
        // Notes decided before an error are sent at the next round's start.
        let standings = result?;
        self.forget_dead_items(&rows, &survey.workers, &standings);
        self.tell_of_leases_taken_behind_backs(&before, &rows, &live);
        self.send_unsent();
        self.show_table(&rows);
        for (key, to) in std::mem::take(&mut self.led.taken) {
            let taken = rows.iter_mut().find_map(|row| match row {
                Row::Lease(lease) if lease.shard_id == key => Some(lease),
                _ => None,
            });
            if let Some(lease) = taken {
                lease.owner = Some(to);
            }
        }
        self.rows = rows;
        Ok(())
    }

    /// Fails when a beat in the workers row moved since the last survey:
    /// a worker of [`Coordination::WorkersRow`] shares the table (a rolling
    /// upgrade from a version whose default it was). Each mode would take
    /// the other's leases for an outsider's; the leader stops the fleet
    /// (see [`Coordinator::halt_fleet`]) within two rounds, before either
    /// takes a lease for expired.
    ///
    /// [`Coordination::WorkersRow`]: crate::Coordination::WorkersRow
    fn refuse_workers_row(&mut self, beats: &BTreeMap<String, u64>) -> Result<()> {
        let Some(before) = self.led.row_beats.replace(beats.clone()) else {
            return Ok(());
        };
        let Some((id, _)) = beats
            .iter()
            .find(|(id, beat)| before.get(*id) != Some(*beat))
        else {
            return Ok(());
        };
        let why = format!(
            "worker {id:?} beats in the workers row of this lease table: it runs with Coordination::WorkersRow, while this fleet is leader-run (Coordination::Leader, the default). Every worker of one application must use the same coordination (each would take the other's leases for expired): stop the workers of one mode first, or give them all the same `coordination`"
        );
        Err(self.stop_for_setting("coordination", why))
    }

    /// Stops the whole fleet, not only this worker, when a worker outside
    /// it shares the table (see [`Coordinator::observe`]): the lock keeps
    /// the reason, and every worker that reads it stops with it within a
    /// heartbeat period. The lock is not let go: a worker started later
    /// claims it only once it stood still for the failover time, and then
    /// watches the table afresh.
    fn halt_fleet(&mut self, e: &Error) {
        let Error::Config { setting, reason } = e else {
            return;
        };
        let Some(last) = self.led.leading.take() else {
            return;
        };
        let halt = format!("{setting}: {reason}");
        let (_, written) = self.write_held_lock(last, Some(&halt));
        self.log_failure("stopping the fleet through the lock", written);
        self.forget_table();
    }

    /// A follower's error for a fleet its leader stopped (the reason the
    /// leader wrote in the lock); its own work stops with it.
    fn halted(&mut self, leader: &str, why: &str) -> Error {
        log::error!("the leader {leader} stopped the fleet: {why}");
        // "setting: reason", as `halt_fleet` writes it.
        let known = ["coordination", "lease_table_name"]
            .into_iter()
            .find_map(|setting| {
                let reason = why.strip_prefix(setting)?.strip_prefix(": ")?;
                Some((setting, reason))
            });
        let (setting, reason) = known.unwrap_or(("lease_table_name", why));
        self.stop_for_setting(setting, reason.to_owned())
    }

    /// The live workers: those whose item's beat has not stood still for
    /// the failover time, but for the leader we took over from, dead at
    /// once if no heartbeat of its landed after its last lock write's
    /// round (or it has no item).
    fn live_workers(&mut self, items: &BTreeMap<String, WorkerItem>) -> BTreeSet<String> {
        let mut live = self.peers.live();
        if let Some((old, lock_beat, first)) = &mut self.led.predecessor {
            let beat = items.get(old.as_str()).map(|w| w.beat);
            let first = *first.get_or_insert(beat.unwrap_or(0));
            if beat.is_some_and(|b| b != first) {
                self.led.predecessor = None;
            } else if beat.is_none() || wrote_no_beat_since(first, *lock_beat) {
                live.remove(old.as_str());
            }
        }
        live.insert(self.held.owner().to_owned());
        live
    }

    /// Plans for the fleet and carries the plan out; returns where every
    /// row stands.
    fn plan_fleet(
        &mut self,
        rows: &[Row],
        items: &BTreeMap<String, WorkerItem>,
        listed: &[crate::aws::kinesis::Shard],
        live: &BTreeSet<String>,
        now: Instant,
    ) -> Result<HashMap<String, plan::Standing>> {
        let me = self.held.owner().to_owned();
        let lineage = Lineage::new(listed);
        let mut gone = plan::gone(&self.misses, &self.not_found);
        gone.retain(|key| self.shards.owns(key));
        let standings = plan::standings(rows, &lineage, &gone);
        self.report(&standings);
        let (mut stale, _) = self.judge_leases(rows, now, &me);
        for lease in rows.iter().filter_map(Row::lease) {
            let owner = lease.owner.as_deref();
            if owner.is_some_and(|o| self.peers.is_member(o) && !live.contains(o)) {
                stale.insert(lease.shard_id.clone());
            }
        }
        // Asks seen in flight, and since when: one older than the failover
        // time is no longer waited for.
        self.handoffs_seen.retain(|id, _| {
            rows.iter()
                .filter_map(Row::lease)
                .any(|l| &l.shard_id == id && l.handoff_to.is_some())
        });
        for lease in rows.iter().filter_map(Row::lease) {
            if lease.handoff_to.is_some() {
                self.handoffs_seen
                    .entry(lease.shard_id.clone())
                    .or_insert(now);
            }
        }
        let overdue = self.overdue_handoffs();
        let plan = plan::plan_fleet(&FleetInput {
            rows,
            standings: &standings,
            lineage: &lineage,
            gone: &gone,
            live,
            stale: &stale,
            caps: self.peers.caps(),
            handoff_overdue: &overdue,
            falling_behind: &items
                .iter()
                .filter(|(_, item)| item.falling_behind)
                .map(|(id, _)| id.clone())
                .collect(),
            unread: &items
                .iter()
                .filter(|(_, item)| !item.unread.is_empty())
                .map(|(id, item)| {
                    let streams = item
                        .unread
                        .iter()
                        .map(|key| plan::stream_of(key).to_owned());
                    (id.clone(), streams.collect())
                })
                .collect(),
            balance: &self.timings.balance,
            memory: &self.led.balance,
        });
        self.led
            .balance
            .record(&plan, &self.timings.balance.settings);
        self.delete(&plan.delete, rows)?;
        let mut notes: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
        let mut taken = 0u32;
        for (key, counter, to) in &plan.assign {
            self.beat_if_due();
            if *to == me {
                if let Some(epoch) = self.held.take(key, *counter, false)? {
                    let lease = rows
                        .iter()
                        .filter_map(Row::lease)
                        .find(|l| l.shard_id == *key);
                    if let Some(lease) = lease {
                        log::info!(
                            "took lease {key} (was {})",
                            owned_by(lease.owner.as_deref())
                        );
                        self.start_reader(key, epoch, &lease.checkpoint);
                        self.led.started.insert(key.clone());
                    }
                    self.led.taken.push((key.clone(), me.clone()));
                    taken += 1;
                }
            } else if let Some(written) = self.held.table().take(key, *counter, to)? {
                log::info!("took lease {key} for {to}");
                self.led.taken.push((key.clone(), to.clone()));
                notes
                    .entry((to.clone(), true))
                    .or_default()
                    .push(note_entry(key, written.counter));
                taken += 1;
            }
        }
        let mut asked = 0u32;
        for (key, owner, counter, to) in &plan.ask {
            self.beat_if_due();
            if *owner == me {
                if self.held.hand_over(key, to) {
                    self.runner.stop(key);
                    asked += 1;
                }
            } else if self
                .held
                .table()
                .request_handoff(key, owner, *counter, to)?
            {
                log::info!("asked {owner} to hand lease {key} over to {to}");
                notes
                    .entry((owner.clone(), false))
                    .or_default()
                    .push(note_entry(key, *counter));
                asked += 1;
            }
        }
        for (target, entries) in notes {
            self.led.unsent.entry(target).or_default().extend(entries);
        }
        self.remind(rows, items, live, &standings, now);
        let blocked = standings
            .values()
            .filter(|s| matches!(s, plan::Standing::Blocked(_)))
            .count();
        self.metrics.record(
            None,
            &[
                (Metric::LeasesTaken, f64::from(taken)),
                (Metric::LeasesStolen, f64::from(asked)),
                (Metric::BalanceMoves, plan.ask.len() as f64),
                (Metric::Workers, plan.workers as f64),
                (Metric::ShardsBlockedOnParent, blocked as f64),
            ],
        );
        Ok(standings)
    }

    /// Finds leases that live workers do not know are theirs: a take or a
    /// handover whose note was lost, or a write that landed with its
    /// reply lost. A worker the table gives more leases (wanting a worker
    /// and not waiting in its `take` set, or unfinished and wanting none)
    /// than its item says it holds, for the failover time, gets every lease the
    /// table gives it written into its `take` set again; it starts those
    /// it does not hold (or hands over, if asked for). The leader checks
    /// its own leases the same way.
    fn remind(
        &mut self,
        rows: &[Row],
        items: &BTreeMap<String, WorkerItem>,
        live: &BTreeSet<String>,
        standings: &std::collections::HashMap<String, plan::Standing>,
        now: Instant,
    ) {
        let me = self.held.owner().to_owned();
        let mut owned: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        // Unfinished leases it may hold that want no worker (a shard
        // trimmed while it reads it, a stream removed): its count includes
        // them (SIM seed 2893: one hid a take whose note was lost).
        let mut unwanted: BTreeMap<&str, u64> = BTreeMap::new();
        for lease in rows.iter().filter_map(Row::lease) {
            let wanted = standings
                .get(&lease.shard_id)
                .is_some_and(plan::Standing::wants_worker);
            match lease.owner.as_deref() {
                Some(owner) if wanted && live.contains(owner) => {
                    owned
                        .entry(owner)
                        .or_default()
                        .push((&lease.shard_id, lease.counter));
                }
                Some(owner) if lease.checkpoint != Checkpoint::ShardEnd => {
                    *unwanted.entry(owner).or_default() += 1;
                }
                _ => {}
            }
        }
        let held = self.held.shard_ids();
        let failover = self.timings.failover;
        for (worker, leases) in owned {
            let item = items.get(worker);
            let pending: HashSet<&str> = item
                .map(|i| i.take.iter().map(|e| parse_entry(e).0).collect())
                .unwrap_or_default();
            let unknown: Vec<&(&str, u64)> = leases
                .iter()
                .filter(|(key, _)| !pending.contains(key))
                .collect();
            let doubtful = match worker == me {
                true => unknown
                    .iter()
                    .any(|(key, _)| !held.contains(*key) && !self.led.earlier_runs.contains(*key)),
                false => item.and_then(|i| i.held).is_some_and(|said| {
                    unknown.len() as u64 + unwanted.get(worker).unwrap_or(&0) > said
                }),
            };
            if !doubtful {
                self.led.doubts.remove(worker);
                continue;
            }
            let since = *self.led.doubts.entry(worker.to_owned()).or_insert(now);
            if !has_waited(now.saturating_duration_since(since), failover) {
                continue;
            }
            log::info!(
                "{worker} may not know every lease it owns: writing them into its item again"
            );
            self.led.doubts.insert(worker.to_owned(), now);
            if worker == me {
                let mine = unknown.iter().map(|(key, _)| (*key).to_owned());
                self.led.recheck.extend(mine);
                continue;
            }
            let entries = unknown
                .iter()
                .map(|(key, counter)| note_entry(key, *counter));
            self.led
                .unsent
                .entry((worker.to_owned(), true))
                .or_default()
                .extend(entries);
        }
        self.led.doubts.retain(|w, _| live.contains(w));
    }

    /// Writes the notes the leader owes workers; those that fail stay
    /// owed. A worker without an item (it left, or was forgotten) gets
    /// none: its leases are judged by its beat like any other.
    fn send_unsent(&mut self) {
        for ((worker, take), entries) in std::mem::take(&mut self.led.unsent) {
            let notes = if take { Notes::Take } else { Notes::Give };
            if let Err(e) = self.held.table().note(&worker, notes, &entries) {
                self.log_failure("writing into a worker's item", Err::<(), _>(e));
                self.led.unsent.insert((worker, take), entries);
            }
        }
    }

    /// Leases that went from a live worker of ours to an owner outside the
    /// fleet since the last survey, by no handover (an operator, a restore,
    /// a process of another application): the worker would read on until
    /// a checkpoint is refused, never for an idle shard. Each goes into
    /// its `give` set; reading the row, the worker drops it.
    fn tell_of_leases_taken_behind_backs(
        &mut self,
        before: &[Row],
        rows: &[Row],
        live: &BTreeSet<String>,
    ) {
        let before: std::collections::HashMap<&str, &crate::lease::Lease> = before
            .iter()
            .filter_map(Row::lease)
            .map(|l| (l.shard_id.as_str(), l))
            .collect();
        let me = self.held.owner().to_owned();
        for lease in rows.iter().filter_map(Row::lease) {
            let Some(was) = before.get(lease.shard_id.as_str()) else {
                continue;
            };
            let Some(from) = was.owner.as_deref().filter(|w| live.contains(*w)) else {
                continue;
            };
            let Some(to) = lease.owner.as_deref() else {
                continue;
            };
            if live.contains(to) || was.handoff_to.as_deref() == Some(to) {
                continue;
            }
            log::info!(
                "lease {} went from {from} to {to} behind its back",
                lease.shard_id
            );
            if from == me {
                let given = self.give(&lease.shard_id);
                self.log_failure("dropping a lease taken behind our back", given);
                continue;
            }
            let entry = note_entry(&lease.shard_id, lease.counter);
            self.led
                .unsent
                .entry((from.to_owned(), false))
                .or_default()
                .push(entry);
        }
    }

    /// Deletes the items of dead workers that no lease names but those
    /// read to their end or expired: no worker reads those again, and they
    /// may stay for good (a finished parent whose child gets no record, an
    /// expired shard no row names as a parent). An item kept for them
    /// counts as live from the claim of every new leader, which then gives
    /// the dead worker leases for the failover time (SIM_FAULTS=suspend,
    /// drift,namesakes seed 996: a takeover 17.3 s after the kill).
    fn forget_dead_items(
        &mut self,
        rows: &[Row],
        items: &BTreeMap<String, WorkerItem>,
        standings: &HashMap<String, plan::Standing>,
    ) {
        let done = |key: &str| {
            matches!(
                standings.get(key),
                Some(plan::Standing::Finished | plan::Standing::Expired)
            )
        };
        for (worker, beat) in self.peers.dead() {
            let named = rows
                .iter()
                .filter_map(Row::lease)
                .filter(|l| !done(&l.shard_id))
                .any(|l| l.owner.as_deref() == Some(worker.as_str()));
            if !named && items.contains_key(&worker) {
                log::info!("worker {worker} is dead and holds no lease: deleting its item");
                let forgotten = self.held.table().forget_item(&worker, Some(beat));
                self.log_failure("deleting a dead worker's item", forgotten);
            }
        }
    }

    /// At shutdown: the leases taken for this worker that it never
    /// started (with the counter seen), to be freed with the rest; the
    /// lock is let go so that a successor claims it at once.
    pub(super) fn leave_led(&mut self) -> Vec<(String, u64)> {
        if let Some(beat) = self.led.leading.take() {
            let unlocked = self.held.table().unlock(self.held.owner(), beat);
            self.log_failure("letting the leader's lock go", unlocked);
        }
        if self.held.alive_since().is_none() {
            return Vec::new();
        }
        let me = self.held.owner().to_owned();
        let item = match self.held.table().worker_item(&me) {
            Ok(item) => item.unwrap_or_default(),
            Err(e) => {
                self.log_failure("reading this worker's item before leaving", Err::<(), _>(e));
                return Vec::new();
            }
        };
        // Another process beats under our id since our last heartbeat:
        // what its `take` set holds is its own (see
        // `Coordinator::given_not_taken`).
        if !self.held.is_last_beat(Some(item.beat)) {
            return Vec::new();
        }
        let held = self.held.shard_ids();
        let mut given = Vec::new();
        for entry in &item.take {
            let key = parse_entry(entry).0;
            if held.contains(key) {
                continue;
            }
            if let Ok(Some(Row::Lease(lease))) = self.held.table().lease_row(key) {
                if lease.owner.as_deref() == Some(me.as_str()) {
                    given.push((key.to_owned(), lease.counter));
                }
            }
        }
        given
    }

    /// This worker's cap, if it has one.
    pub(super) fn cap(&self) -> Option<u64> {
        let max = self.timings.max_leases_per_worker;
        (max != usize::MAX).then_some(max as u64)
    }

    /// What a failed heartbeat means: a second process under our id stops
    /// us; a table out of reach for longer than allowed too.
    pub(super) fn beat_failed(&mut self, e: Error) {
        if super::is_namesake_error(&e) {
            self.runner.fail(e);
            return;
        }
        match self.unavailable_for() {
            Some(duration) if !self.gave_up => {
                self.gave_up = true;
                log::error!(
                    "no lease-table request succeeded for {duration:.1?} (max_unavailable); stopping: {e}"
                );
                self.runner.fail(Error::LeaseTableUnavailable {
                    duration,
                    source: Box::new(e),
                });
            }
            _ => self.log_failure("heartbeat", Err::<(), _>(e)),
        }
    }
}

/// The next two live workers after `me` by id (wrapping): who claims the
/// lock first if the leader stops.
fn successors(live: &BTreeSet<String>, me: &str) -> Vec<String> {
    let after = live.range::<str, _>((std::ops::Bound::Excluded(me), std::ops::Bound::Unbounded));
    let before = live.range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(me)));
    after.chain(before).take(2).cloned().collect()
}

/// How far below its last lock write's number the old leader's item beat
/// may be and still be its own: a leader takes two numbers a round (the
/// lock's, then its item's), so its item lags by more only after dozens of
/// rounds whose item writes all failed. A beat further below is another
/// process's under the same id (a namesake, counting from its own random
/// start in 2^40, lands this close once in 2^34): no proof of anything.
const PREDECESSOR_BEATS: u64 = 64;

/// True when the item beat `first` of the leader we took the lock over
/// from, whose last lock write had the number `lock_beat`, shows that no
/// heartbeat of that process landed after its last lock write's round:
/// the number right after the lock's, or one of its own before.
fn wrote_no_beat_since(first: u64, lock_beat: u64) -> bool {
    let after = lock_beat.saturating_add(1);
    (after.saturating_sub(PREDECESSOR_BEATS)..=after).contains(&first)
}

/// Where in the leader's period followers' rounds come (see
/// [`Coordinator::until_next_round`]).
const FOLLOWERS_POINT: f64 = 0.5;

/// How long ago a lock written at the start of a round that began at
/// `round_at` (by its writer's wall clock) was written, as far as our wall
/// clock `now` tells, at most [`lock_backdate`] (half a period): a lock
/// first seen is taken to have stood still since then, so that the first
/// successor claims the failover time after the leader's last write, not
/// after its own first look at it at its round. The bound keeps a skewed
/// clock from claiming sooner; the leader stops handing on records that
/// much sooner too (see [`HeldLeases::lock_written`]).
///
/// [`HeldLeases::lock_written`]: crate::lease::HeldLeases::lock_written
fn lock_age(round_at: Option<SystemTime>, now: SystemTime, failover: Duration) -> Duration {
    round_at
        .and_then(|at| now.duration_since(at).ok())
        .unwrap_or_default()
        .min(lock_backdate(failover))
}

/// How long from `now` until the next time that is `point` past the start
/// of a period that began at `began` (by another host's wall clock: a
/// skew between the two only moves the point), at least a third of a
/// period away, so that no two rounds come closer and none more than
/// four thirds of a period apart.
fn until_point(now: SystemTime, began: SystemTime, period: Duration, point: Duration) -> Duration {
    let millis = |d: Duration| d.as_millis() as i128;
    let since = match now.duration_since(began) {
        Ok(d) => millis(d),
        Err(e) => -millis(e.duration()),
    };
    let period = millis(period).max(1);
    let mut wait = (millis(point) - since).rem_euclid(period);
    if wait < period / 3 {
        wait += period;
    }
    Duration::from_millis(wait as u64)
}

/// A worker's place within a period, from its id: workers that are no
/// successor do not all claim at once.
fn spread(id: &str, period: Duration) -> Duration {
    let sum: u64 = id.bytes().map(u64::from).sum();
    let millis = period.as_millis().max(1) as u64;
    Duration::from_millis(sum.wrapping_mul(97) % millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_are_the_next_two_live_workers_by_id_wrapping() {
        let live: BTreeSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(successors(&live, "c"), ["d", "a"]);
        assert_eq!(successors(&live, "a"), ["b", "c"]);
        let two: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(successors(&two, "a"), ["b"]);
    }

    #[test]
    fn followers_round_at_their_point_of_the_leaders_period() {
        let period = Duration::from_millis(3_000);
        let point = Duration::from_millis(1_600);
        let began = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |ms: u64| began + Duration::from_millis(ms);
        let wait = |now| until_point(now, began, period, point).as_millis();
        // Before the point of this period, and past it: this period's
        // point, or the next one's.
        assert_eq!(wait(at(100)), 1_500);
        assert_eq!(wait(at(2_000)), 2_600);
        // Periods later, and with our clock behind the leader's.
        assert_eq!(wait(at(9_100)), 1_500);
        assert_eq!(wait(began - Duration::from_millis(400)), 2_000);
        // Never closer than a third of a period: the point after next.
        assert_eq!(wait(at(1_000)), 600 + 3_000);
        assert_eq!(wait(at(1_600)), 3_000);
        for ms in (0..12_000).step_by(7) {
            let w = wait(at(ms));
            assert!((1_000..4_000).contains(&w), "{ms}: {w}");
            assert_eq!((ms as u128 + w) % 3_000, 1_600);
        }
    }

    #[test]
    fn only_the_old_leaders_own_item_beat_proves_it_dead_at_once() {
        // Its last lock write took 1_000: its item's beat right after, or
        // one of a few rounds before (item writes that failed).
        assert!(wrote_no_beat_since(1_001, 1_000));
        assert!(wrote_no_beat_since(999, 1_000));
        assert!(wrote_no_beat_since(940, 1_000));
        // A beat since, or another process's under the id, counting from
        // its own start far below (SIM seed 1874) or above.
        assert!(!wrote_no_beat_since(1_003, 1_000));
        assert!(!wrote_no_beat_since(427_381_511_220, 575_282_906_589));
        assert!(!wrote_no_beat_since(12, 1_000));
        assert!(wrote_no_beat_since(3, 2));
    }

    #[test]
    fn workers_spread_their_claims_over_a_period() {
        let period = Duration::from_millis(3_333);
        assert!(spread("w-1", period) < period);
        assert_ne!(spread("w-1", period), spread("w-2", period));
    }
}
