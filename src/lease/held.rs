//! The leases this worker holds, shared by the coordinator (heartbeat,
//! take, release) and the ticker (checkpoint, handoff). One heartbeat
//! keeps every lease the worker holds: peers judge its leases expired when
//! its heartbeat stands still for the failover time. Writes to one lease
//! are serialized by that lease's own write lock; writes to different
//! leases never wait for each other.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lease::members::{Notes, Settled, WorkerItem, note_entry};
use crate::lease::table::{Beat, LeaseStore, Workers};
use crate::lease::{Checkpoint, Clock, Stamp};
use crate::metrics::LoadView;
use crate::sync::lock;

/// Peers judge a worker dead after seeing its heartbeat (or a lease of an
/// owner not in the workers row, its counter) stand still for the failover
/// time, less up to this much timing slack (see the coordinator's rounds).
pub(crate) const ROUND_SLACK: Duration = Duration::from_millis(100);

/// How long after the last heartbeat that landed was *sent* records may
/// still be handed on. A peer first sees that heartbeat no earlier than it
/// was sent, and takes the leases no earlier than the failover time (less
/// [`ROUND_SLACK`]) after that, so stopping a tenth of the failover time
/// earlier still leaves a positive margin for clock rates and scheduling.
pub(crate) fn fencing_window(failover: Duration) -> Duration {
    failover.saturating_sub(ROUND_SLACK + failover / 10)
}

/// The most a successor backdates the lock it first sees, by the lock's
/// age on the wall clock: half a heartbeat period (a sixth of the failover
/// time), so that it claims the failover time after the leader's last
/// write rather than after its own first look (see `lock_age` in
/// coordinator/led.rs).
pub(crate) fn lock_backdate(failover: Duration) -> Duration {
    failover / 6
}

/// How long after its last lock write that landed was sent a leader may
/// still hand on records: its successor may claim the lock, and take the
/// leader's leases at once, [`lock_backdate`] sooner than the failover
/// time after it first saw that write, whatever the two wall clocks say.
fn leading_window(failover: Duration) -> Duration {
    fencing_window(failover).saturating_sub(lock_backdate(failover))
}

/// Of two heartbeats' send times, the later one (by the monotonic clock,
/// which only moves forward).
fn later_sent(a: Stamp, b: Stamp) -> Stamp {
    if b.monotonic >= a.monotonic { b } else { a }
}

#[derive(Debug)]
struct State {
    counter: u64,
    epoch: u64,
    /// Set when another worker asked for the lease (`Some(asker)`), or
    /// its stream was removed (`None`): we stop reading it and give it up
    /// once what was delivered is checkpointed.
    handoff_to: Option<Option<String>>,
    /// Set for a child shard not started yet: its first checkpoint is
    /// announced to every worker (its parents' leases may be deleted).
    announce_start: bool,
    /// When the lease was taken (our clock).
    taken_at: Instant,
}

/// A heartbeat that lapsed, while the leases of our id we do not hold
/// may be a namesake's (see [`HeldLeases::may_take_back`]).
#[derive(Debug, Default)]
struct Lapse {
    /// The leases dropped then, with their counters.
    dropped: HashMap<String, u64>,
    /// When the reply to the first heartbeat that landed since came.
    relanded: Option<Stamp>,
}

#[derive(Debug)]
struct Held {
    /// Held across a write's request: one write at a time per lease.
    writing: Mutex<()>,
    /// Held only briefly, never across a request.
    state: Mutex<State>,
}

/// The leases of this worker.
#[derive(Debug)]
pub(crate) struct HeldLeases {
    table: Arc<dyn LeaseStore>,
    owner: String,
    failover: Duration,
    clock: Clock,
    leases: Mutex<HashMap<String, Arc<Held>>>,
    next_epoch: AtomicU64,
    /// Leases found lost (heartbeat lapsed, checkpoint refused, or taken)
    /// and not yet reported.
    lost: AtomicU64,
    /// The number of this worker's last heartbeat.
    beat: AtomicU64,
    /// When the last heartbeat that landed was sent (both clocks).
    alive_since: Mutex<Option<Stamp>>,
    /// While this worker leads: when its last lock write that landed was
    /// sent (see [`lock_written`](Self::lock_written)).
    led_since: Mutex<Option<Stamp>>,
    /// When the reply to this process's first heartbeat that landed came
    /// (see [`may_take_earlier_runs_leases`](Self::may_take_earlier_runs_leases)).
    first_landed: Mutex<Option<Stamp>>,
    /// The last lapse of the heartbeat, until the failover time after a
    /// heartbeat landed again (see [`may_take_back`](Self::may_take_back)).
    lapse: Mutex<Option<Lapse>>,
    /// True when a notice to read the table failed and is still owed.
    notice_owed: AtomicBool,
    /// True when a checkpoint found its lease taken since the last call of
    /// [`take_taken_unseen`](Self::take_taken_unseen).
    taken_unseen: AtomicBool,
    /// The number of the last heartbeat that landed: every later one is
    /// written only over it or another of ours.
    landed_beat: Mutex<Option<u64>>,
    /// The number of the first heartbeat attempted: until one lands, a
    /// heartbeat may replace any attempted since (one landed with its
    /// reply lost).
    first_attempt: Mutex<Option<u64>>,
    /// The beat under our id that the start-up check saw and let us
    /// replace (see [`replace_beat`](Self::replace_beat)).
    replaces: Mutex<Option<u64>>,
    /// Leases dropped because their last checkpoint was not written: left
    /// to expire, never released on leaving (see [`withhold`](Self::withhold)).
    withheld: Mutex<HashSet<String>>,
    /// Where each lease's load is measured, once attached: every
    /// checkpoint carries its lease's load to the row.
    loads: OnceLock<Arc<dyn LoadView>>,
    /// True in a leader-run fleet ([`Coordination::Leader`]): heartbeats
    /// go to the worker's own item, a lease handed over is written into
    /// its taker's item, and no notice is sent (the leader reads the
    /// table every round).
    ///
    /// [`Coordination::Leader`]: crate::Coordination::Leader
    itemized: AtomicBool,
    /// In a leader-run fleet: leases dropped because a checkpoint was
    /// refused (one that landed with its reply lost is refused when
    /// retried, yet the lease is still ours) or because the ticker found
    /// the heartbeat lapsed, for the coordinator to look at.
    refused: Mutex<Vec<String>>,
}

impl HeldLeases {
    pub(crate) fn new(
        table: Arc<dyn LeaseStore>,
        owner: String,
        failover: Duration,
        clock: Clock,
    ) -> HeldLeases {
        HeldLeases {
            table,
            owner,
            failover,
            clock,
            leases: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(1),
            lost: AtomicU64::new(0),
            // A worker restarted under the same id must not write the
            // beats its last run wrote: peers would see them stand still.
            beat: AtomicU64::new(crate::random::next_u64() >> 24),
            alive_since: Mutex::new(None),
            led_since: Mutex::new(None),
            first_landed: Mutex::new(None),
            lapse: Mutex::new(None),
            landed_beat: Mutex::new(None),
            first_attempt: Mutex::new(None),
            replaces: Mutex::new(None),
            notice_owed: AtomicBool::new(false),
            taken_unseen: AtomicBool::new(false),
            withheld: Mutex::default(),
            loads: OnceLock::new(),
            itemized: AtomicBool::new(false),
            refused: Mutex::default(),
        }
    }

    /// Beats in the worker's own item and hands leases over through the
    /// takers' items (a leader-run fleet), from now on.
    pub(crate) fn use_worker_items(&self) {
        self.itemized.store(true, Ordering::Relaxed);
    }

    fn itemized(&self) -> bool {
        self.itemized.load(Ordering::Relaxed)
    }

    /// Attaches where the leases' loads are measured; the first call wins.
    /// Until then (and in the simulation) checkpoints carry no load.
    pub(crate) fn publish_loads_from(&self, loads: Arc<dyn LoadView>) {
        let _ = self.loads.set(loads);
    }

    /// Starts this run's heartbeat numbers at `first` instead of a random
    /// number: the simulation, so that a seed replays exactly.
    #[cfg(any(test, feature = "simulation"))]
    pub(crate) fn start_beats_at(&self, first: u64) {
        self.beat.store(first, Ordering::Relaxed);
    }

    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    pub(crate) fn table(&self) -> &dyn LeaseStore {
        &*self.table
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    fn get(&self, shard_id: &str) -> Option<Arc<Held>> {
        lock(&self.leases).get(shard_id).cloned()
    }

    /// Writes this worker's heartbeat, which keeps every lease it holds, and
    /// returns the workers row. If no heartbeat sent within the fencing
    /// window landed, peers may take the leases: they are all dropped first
    /// (returned as `Some`, possibly empty when the ticker dropped them
    /// already), so that this heartbeat cannot make their epochs current
    /// again; still ours, they are taken again from the checkpoint.
    ///
    /// Continuity is checked again when the heartbeat lands: one sent in
    /// time but landing after the window ran out (a slow write, a paused
    /// process) proves nothing about the time between, when a peer may
    /// have taken the leases; they are dropped before the beat counts.
    pub(crate) fn heartbeat(&self, cap: Option<u64>) -> (Option<Vec<String>>, Result<Workers>) {
        self.beat_with(cap, |beat| self.table.heartbeat(beat))
    }

    /// The heartbeat of a leader-run fleet: written in the worker's own
    /// item, taking the leases it `settled` out of their sets; returns the
    /// item as it is afterwards. Fenced as [`heartbeat`](Self::heartbeat).
    pub(crate) fn heartbeat_in_item(
        &self,
        cap: Option<u64>,
        settled: &Settled,
    ) -> (Option<Vec<String>>, Result<WorkerItem>) {
        self.beat_with(cap, |beat| self.table.beat_in_item(beat, settled))
    }

    /// Lets the first heartbeat replace `beat` under our id, the one the
    /// start-up check saw stand still (`None`: it saw none). Any other beat
    /// there then belongs to a process that started meanwhile under our
    /// id: the heartbeat is refused and this one stops (two processes
    /// that passed the check at once, one paused in between: SIM_FAULTS
    /// suspend,drift,namesakes seed 1406).
    pub(crate) fn replace_beat(&self, beat: Option<u64>) {
        *lock(&self.replaces) = beat;
    }

    /// True when `beat`, the one under our worker id in the table, is
    /// the last heartbeat of this process that landed: no other process
    /// beat under the id since.
    pub(crate) fn is_last_beat(&self, beat: Option<u64>) -> bool {
        beat.is_some() && beat == *lock(&self.landed_beat)
    }

    /// A heartbeat number for a write of the leader's lock: every later
    /// heartbeat carries a higher one, so a successor that finds the
    /// leader's item beat no higher than the lock's knows no heartbeat
    /// landed since the lock stood still.
    pub(crate) fn reserve_beat(&self) -> u64 {
        self.beat.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Writes a heartbeat with `write`, fenced as
    /// [`heartbeat`](Self::heartbeat) says.
    fn beat_with<T>(
        &self,
        cap: Option<u64>,
        write: impl FnOnce(&Beat<'_>) -> Result<T>,
    ) -> (Option<Vec<String>>, Result<T>) {
        let sent = self.clock.stamp();
        let mut lapsed = self.drop_all_if_lapsed(sent);
        let beat = self.beat.fetch_add(1, Ordering::Relaxed) + 1;
        let landed = *lock(&self.landed_beat);
        let first = *lock(&self.first_attempt).get_or_insert(beat);
        let result = write(&Beat {
            worker: &self.owner,
            number: beat,
            since: Some(landed.unwrap_or(first)),
            over: landed.is_none().then(|| *lock(&self.replaces)).flatten(),
            cap,
        });
        if result.is_ok() {
            *lock(&self.landed_beat) = Some(beat);
            lock(&self.first_landed).get_or_insert_with(|| self.clock.stamp());
            if let Some(late) = self.drop_all_if_lapsed(self.clock.stamp()) {
                lapsed.get_or_insert_with(Vec::new).extend(late);
            }
            if let Some(lapse) = lock(&self.lapse).as_mut() {
                lapse.relanded.get_or_insert_with(|| self.clock.stamp());
            }
            let mut alive = lock(&self.alive_since);
            *alive = Some(alive.map_or(sent, |a| later_sent(a, sent)));
        }
        (lapsed, result)
    }

    /// Drops every lease if no heartbeat that landed was sent within the
    /// fencing window before `now`; returns the leases dropped then.
    fn drop_all_if_lapsed(&self, now: Stamp) -> Option<Vec<String>> {
        // Not before the first heartbeat: there is nothing to drop yet.
        (lock(&self.alive_since).is_some() && self.has_lapsed(now)).then(|| {
            let dropped: Vec<(String, Arc<Held>)> = lock(&self.leases).drain().collect();
            self.lost.fetch_add(dropped.len() as u64, Ordering::Relaxed);
            self.note_lapse(
                dropped
                    .iter()
                    .map(|(id, h)| (id.clone(), lock(&h.state).counter)),
            );
            dropped.into_iter().map(|(id, _)| id).collect()
        })
    }

    /// Notes leases dropped for a lapsed heartbeat, with their counters.
    fn note_lapse(&self, dropped: impl IntoIterator<Item = (String, u64)>) {
        let mut lapse = lock(&self.lapse);
        let lapse = lapse.get_or_insert_with(Lapse::default);
        lapse.relanded = None;
        lapse.dropped.extend(dropped);
    }

    /// True when a lease the table gives our id at `counter`, which we do
    /// not hold, may be taken as ours (workers row): once an earlier
    /// run's may be ([`may_take_earlier_runs_leases`](Self::may_take_earlier_runs_leases)),
    /// and after a lapsed heartbeat only one we dropped at that counter,
    /// until the failover time after a heartbeat landed again. Written
    /// since, it may be a namesake's that started while we were out (its
    /// leases carry our id) and whose beat our late one replaced in a
    /// workers row deleted meanwhile: that process has its next heartbeat
    /// refused, so by then it stopped (namesakes seed 1829).
    pub(crate) fn may_take_back(&self, shard_id: &str, counter: u64) -> bool {
        if !self.may_take_earlier_runs_leases() {
            return false;
        }
        let mut lapse = lock(&self.lapse);
        let Some(last) = lapse.as_ref() else {
            return true;
        };
        if last.dropped.get(shard_id) == Some(&counter) {
            return true;
        }
        let over = last
            .relanded
            .is_some_and(|r| self.clock.stamp().since(r) >= self.failover);
        if over {
            *lapse = None;
        }
        over
    }

    /// True once this process may take the leases the table gives its
    /// worker id but that it never took (an earlier run's): the failover
    /// time after its first heartbeat landed. Until then they may be
    /// another live process's under the same id (a beat missing from the
    /// workers row looks the same whether that process left or the row
    /// was deleted; one that stood still may be stuck in a slow write).
    /// Such a process has its next heartbeat refused once ours landed (see
    /// the lease table's heartbeat), so by then it stopped and its fencing
    /// window ran out: the two never hand on one shard, which nothing else
    /// prevents, as their leases carry the same owner.
    pub(crate) fn may_take_earlier_runs_leases(&self) -> bool {
        lock(&self.first_landed).is_some_and(|f| self.clock.stamp().since(f) >= self.failover)
    }

    /// How long since the last heartbeat that landed was sent, by the
    /// clock that saw more time pass (`Duration::MAX`: none landed yet).
    pub(crate) fn since_alive(&self) -> Duration {
        lock(&self.alive_since).map_or(Duration::MAX, |a| self.clock.stamp().since(a))
    }

    /// When the last heartbeat that landed was sent (none yet: `None`).
    pub(crate) fn alive_since(&self) -> Option<Instant> {
        lock(&self.alive_since).map(|a| a.monotonic)
    }

    /// True when no heartbeat sent within the fencing window landed, by
    /// either clock (see [`Stamp::since`]: a host suspend stops the
    /// monotonic one while peers' time runs on).
    /// A leader's leases lapse also when no lock write sent within the
    /// [`leading_window`] landed.
    fn has_lapsed(&self, now: Stamp) -> bool {
        let led_lapsed =
            lock(&self.led_since).is_some_and(|l| now.since(l) >= leading_window(self.failover));
        led_lapsed
            || lock(&self.alive_since).is_none_or(|a| now.since(a) >= fencing_window(self.failover))
    }

    /// A lock write sent at `sent` landed: this worker leads, and its
    /// leases are fenced by its lock writes as well as by its heartbeats.
    pub(crate) fn lock_written(&self, sent: Stamp) {
        let mut led = lock(&self.led_since);
        *led = Some(led.map_or(sent, |l| later_sent(l, sent)));
    }

    /// This worker no longer leads: every lease is dropped if its lock
    /// writes lapsed (a successor claimed the lock and may have taken
    /// them), then only heartbeats fence them. Returns those dropped.
    pub(crate) fn stop_leading(&self) -> Option<Vec<String>> {
        let dropped = self.drop_all_if_lapsed(self.clock.stamp());
        *lock(&self.led_since) = None;
        dropped
    }

    /// Tries to take a lease seen with `seen_counter`; on success returns the
    /// epoch that tags everything read under this ownership. With
    /// `announce_start`, its first checkpoint of a record bumps the version
    /// every worker watches.
    pub(crate) fn take(
        &self,
        shard_id: &str,
        seen_counter: u64,
        announce_start: bool,
    ) -> Result<Option<u64>> {
        let Some(written) = self.table.take(shard_id, seen_counter, &self.owner)? else {
            return Ok(None);
        };
        Ok(Some(self.hold(shard_id, written.counter, announce_start)))
    }

    /// Holds a lease the table gives this worker at `counter` (the leader
    /// took it for us, or its owner handed it over): nothing is written.
    /// Returns the epoch that tags what is read under it; a lease held
    /// already keeps its epoch.
    pub(crate) fn adopt(&self, shard_id: &str, counter: u64) -> u64 {
        if let Some(entry) = self.get(shard_id) {
            return lock(&entry.state).epoch;
        }
        self.hold(shard_id, counter, false)
    }

    fn hold(&self, shard_id: &str, counter: u64, announce_start: bool) -> u64 {
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            writing: Mutex::new(()),
            state: Mutex::new(State {
                counter,
                epoch,
                handoff_to: None,
                announce_start,
                taken_at: self.clock.now(),
            }),
        };
        lock(&self.leases).insert(shard_id.to_owned(), Arc::new(held));
        epoch
    }

    /// The shards held now, with their epochs.
    pub(crate) fn shards(&self) -> Vec<(String, u64)> {
        let leases = lock(&self.leases);
        leases
            .iter()
            .map(|(id, h)| (id.clone(), lock(&h.state).epoch))
            .collect()
    }

    /// The shards held, without their epochs.
    pub(crate) fn shard_ids(&self) -> HashSet<String> {
        lock(&self.leases).keys().cloned().collect()
    }

    /// The shards being handed over to another worker.
    pub(crate) fn handoffs(&self) -> Vec<String> {
        let leases = lock(&self.leases);
        leases
            .iter()
            .filter(|(_, h)| lock(&h.state).handoff_to.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.leases).len()
    }

    /// True while the lease is held under `epoch`, is not being handed over,
    /// and the last heartbeat that landed was sent within the
    /// [`fencing_window`]. Records read under other epochs are dropped.
    ///
    /// A lease past the window may be taken by another worker soon: its
    /// records are dropped, and the lease is given up here and then, so
    /// that a heartbeat that lands later cannot keep it under the same
    /// epoch, with its reader already past the dropped records. It is taken
    /// again (if still ours) and read from its checkpoint.
    pub(crate) fn is_current(&self, shard_id: &str, epoch: u64) -> bool {
        let Some(entry) = self.get(shard_id) else {
            return false;
        };
        {
            let state = lock(&entry.state);
            if state.epoch != epoch || state.handoff_to.is_some() {
                return false;
            }
        }
        if !self.has_lapsed(self.clock.stamp()) {
            return true;
        }
        log::warn!(
            "lease {shard_id} lost: no heartbeat landed for the fencing window ({:?}); dropping what was read",
            fencing_window(self.failover)
        );
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.note_lapse([(shard_id.to_owned(), lock(&entry.state).counter)]);
        self.forget(shard_id, epoch);
        // Not dropped by the heartbeat, which would have had it looked at
        // again (SIM_FAULTS=suspend,drift,namesakes seed 903).
        self.to_look_at_again(shard_id);
        false
    }

    /// Where the lease of `shard_id` under `epoch` stands for its records
    /// (see [`is_current`](Self::is_current)).
    pub(crate) fn holding(&self, shard_id: &str, epoch: u64) -> Holding {
        if self.is_current(shard_id, epoch) {
            return Holding::Current;
        }
        match self.get(shard_id) {
            Some(entry) => {
                let state = lock(&entry.state);
                if state.epoch == epoch && state.handoff_to.is_some() {
                    Holding::HandingOff
                } else {
                    Holding::Gone
                }
            }
            None => Holding::Gone,
        }
    }

    fn forget(&self, shard_id: &str, epoch: u64) {
        let mut leases = lock(&self.leases);
        if leases
            .get(shard_id)
            .is_some_and(|h| lock(&h.state).epoch == epoch)
        {
            leases.remove(shard_id);
        }
    }

    /// Notes that `to` asked for a held lease: its records stop, and it is
    /// handed over once what was delivered is checkpointed. True the first
    /// time.
    pub(crate) fn hand_over(&self, shard_id: &str, to: &str) -> bool {
        let Some(entry) = self.get(shard_id) else {
            return false;
        };
        let mut state = lock(&entry.state);
        if state.handoff_to.is_some() {
            return false;
        }
        log::info!("lease {shard_id}: {to} asked for it; handing it over");
        state.handoff_to = Some(Some(to.to_owned()));
        true
    }

    /// Gives a held lease back to no one in particular once what was
    /// delivered is checkpointed (its stream was removed), as a handoff
    /// is: its records stop. True the first time.
    pub(crate) fn give_back(&self, shard_id: &str) -> bool {
        let Some(entry) = self.get(shard_id) else {
            return false;
        };
        let mut state = lock(&entry.state);
        if state.handoff_to.is_some() {
            return false;
        }
        log::info!(
            "lease {shard_id}: its stream was removed; releasing it after its last checkpoint"
        );
        state.handoff_to = Some(None);
        true
    }

    /// Writes a checkpoint if the lease is still held under `epoch`.
    /// Returns false, writing nothing, when the lease is no longer ours.
    pub(crate) fn checkpoint(
        &self,
        shard_id: &str,
        epoch: u64,
        checkpoint: &Checkpoint,
    ) -> Result<bool> {
        let Some(entry) = self.get(shard_id) else {
            return Ok(false);
        };
        let _writing = lock(&entry.writing);
        let counter = {
            let state = lock(&entry.state);
            if state.epoch != epoch {
                return Ok(false);
            }
            state.counter
        };
        let load = self.loads.get().and_then(|loads| loads.load_of(shard_id));
        match self
            .table
            .checkpoint(shard_id, &self.owner, counter, checkpoint, load)?
        {
            Some(written) => {
                let announce = {
                    let mut state = lock(&entry.state);
                    state.counter = written.counter;
                    let announce = state.announce_start && checkpoint.has_started();
                    state.announce_start &= !announce;
                    announce
                };
                if announce {
                    self.tell(None, || format!("that {shard_id} started"));
                }
                Ok(true)
            }
            None => {
                log::info!(
                    "lease {shard_id} lost: checkpoint refused (another worker took it, or its position was reset)"
                );
                self.lost.fetch_add(1, Ordering::Relaxed);
                // Taken behind our back (no notice came): look at the table.
                self.taken_unseen.store(true, Ordering::Relaxed);
                self.to_look_at_again(shard_id);
                self.forget(shard_id, epoch);
                Ok(false)
            }
        }
    }

    /// In a leader-run fleet, notes a lease dropped while the table may
    /// still give it to us, for the coordinator to look at its row.
    fn to_look_at_again(&self, shard_id: &str) {
        if self.itemized() {
            lock(&self.refused).push(shard_id.to_owned());
        }
    }

    /// True once after a checkpoint found its lease taken by another
    /// worker: the table should be read at the next round.
    pub(crate) fn take_taken_unseen(&self) -> bool {
        self.taken_unseen.swap(false, Ordering::Relaxed)
    }

    /// The leases dropped for a refused checkpoint or by the ticker for a
    /// lapsed heartbeat since the last call (a leader-run fleet only).
    pub(crate) fn take_refused(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.refused))
    }

    /// How many leases were found lost since the last call.
    pub(crate) fn take_lost_count(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }

    /// Gives up one lease: to the worker that asked for it, if one did, or
    /// to whoever takes it first. Whoever should take it is told (the
    /// asker's inbox, or every worker's version), so that it does not wait
    /// for its next full read of the table.
    pub(crate) fn release(&self, shard_id: &str) -> Result<()> {
        let Some((to, counter)) = self.give_up(shard_id)? else {
            return Ok(());
        };
        match to {
            // A leader-run fleet: the taker learns from its item, and a
            // lease freed for anyone waits for the leader's next round.
            Some(to) if self.itemized() => {
                let entry = [note_entry(shard_id, counter)];
                if !self.table.note(&to, Notes::Take, &entry)? {
                    log::info!("{to} left before lease {shard_id} reached it; the leader frees it");
                }
            }
            to => self.tell(to.as_deref(), || format!("that lease {shard_id} is free")),
        }
        Ok(())
    }

    /// Tells `to` (or with `None` every worker) to read the lease table.
    /// A notice that fails is owed: every worker is told at the next
    /// heartbeat (see [`pay_owed_notice`](Self::pay_owed_notice)), rather
    /// than waiting for its next full read.
    pub(crate) fn tell(&self, to: Option<&str>, what: impl FnOnce() -> String) {
        if self.itemized() {
            return;
        }
        if let Err(e) = self.table.notify(to) {
            log::info!(
                "telling {} {} failed; telling every worker at the next heartbeat: {e}",
                to.unwrap_or("every worker"),
                what()
            );
            self.notice_owed.store(true, Ordering::Relaxed);
        }
    }

    /// Tells every worker to read the lease table if a notice failed since
    /// the last call; owed still if this one fails too.
    pub(crate) fn pay_owed_notice(&self) {
        if self.notice_owed.swap(false, Ordering::Relaxed) {
            self.tell(None, || "of an earlier change".to_owned());
        }
    }

    /// Releases every lease and takes this worker out of the workers row,
    /// at shutdown: the others see it leave at their next heartbeat and read
    /// the table then. `given` are leases the table gives this worker that
    /// it does not hold (shard, counter seen): handed over to it since its
    /// last round; they are freed too, or peers would wait for them to
    /// expire. Returns each lease with how its release went.
    pub(crate) fn leave(&self, given: &[(String, u64)]) -> Vec<(String, Result<()>)> {
        let mut released: Vec<(String, Result<()>)> = self
            .shards()
            .into_iter()
            .map(|(id, _)| {
                let result = self.give_up(&id).map(|_| ());
                (id, result)
            })
            .collect();
        released.extend(given.iter().map(|(id, counter)| {
            let result = self.table.release(id, &self.owner, *counter, None);
            (id.clone(), result.map(|_| ()))
        }));
        // Never in the row (no heartbeat landed): nothing to take out.
        if lock(&self.alive_since).is_none() {
            return released;
        }
        // Everyone reads the table at its next heartbeat, even if taking
        // this worker out of the row fails (its last heartbeat may not
        // have landed), rather than waiting for its heartbeat to expire.
        if self.itemized() {
            if let Err(e) = self.table.forget_item(&self.owner, None) {
                log::warn!(
                    "deleting this worker's item failed (the leader will see its heartbeat stop): {e}"
                );
            }
            return released;
        }
        if !released.is_empty() {
            if let Err(e) = self.table.notify(None) {
                log::warn!("telling the other workers that our leases are free failed: {e}");
            }
        }
        if let Err(e) = self.table.forget_worker(&self.owner, None) {
            log::warn!("leaving the workers row failed (peers will see the heartbeat stop): {e}");
        }
        released
    }

    /// Writes a lease's release; to whom it went and its new counter, if
    /// the write landed.
    fn give_up(&self, shard_id: &str) -> Result<Option<(Option<String>, u64)>> {
        let Some(entry) = self.get(shard_id) else {
            return Ok(None);
        };
        let _writing = lock(&entry.writing);
        let (counter, epoch, to) = {
            let state = lock(&entry.state);
            (
                state.counter,
                state.epoch,
                state.handoff_to.clone().flatten(),
            )
        };
        let result = self
            .table
            .release(shard_id, &self.owner, counter, to.as_deref());
        if let (Ok(Some(_)), Some(to)) = (&result, &to) {
            log::info!("handed lease {shard_id} over to {to}");
        }
        self.forget(shard_id, epoch);
        Ok(result?.map(|written| (to, written.counter)))
    }

    /// Forgets a lease whose last checkpoint was not written, and leaves
    /// it to expire: leaving releases it neither as held nor as one the
    /// table gives this worker.
    pub(crate) fn withhold(&self, shard_id: &str) {
        lock(&self.withheld).insert(shard_id.to_owned());
        self.drop_lost(shard_id);
    }

    /// True for a lease left to expire (see [`withhold`](Self::withhold)).
    pub(crate) fn is_withheld(&self, shard_id: &str) -> bool {
        lock(&self.withheld).contains(shard_id)
    }

    /// Forgets a lease the table says is someone else's (or gone).
    pub(crate) fn drop_lost(&self, shard_id: &str) {
        if let Some(entry) = self.get(shard_id) {
            let epoch = lock(&entry.state).epoch;
            self.forget(shard_id, epoch);
        }
    }
}

/// What the status page and the Prometheus gauges show of the leases.
impl crate::metrics::LeaseView for HeldLeases {
    fn held(&self) -> Vec<(String, Instant)> {
        let leases = lock(&self.leases);
        leases
            .iter()
            .map(|(id, h)| (id.clone(), lock(&h.state).taken_at))
            .collect()
    }

    fn alive_since(&self) -> Option<Instant> {
        HeldLeases::alive_since(self)
    }

    fn heartbeat_current(&self) -> bool {
        !self.has_lapsed(self.clock.stamp())
    }
}

/// Where a lease stands for the records read under one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holding {
    /// Held: its records may be handed on and checkpointed.
    Current,
    /// Held, but another worker asked for it: hand it over.
    HandingOff,
    /// Not held under that epoch any more.
    Gone,
}
