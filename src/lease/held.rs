//! The leases this worker holds, shared by the coordinator (renew, take,
//! release) and the ticker (checkpoint, handoff). Writes to one lease are
//! serialized by that lease's own write lock, so a renewal and a checkpoint
//! never race on its counter; writes to different leases never wait for
//! each other, and a renewal skips a lease whose checkpoint is in flight
//! (that write renews it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lease::table::{LeaseStore, Written};
use crate::lease::{Checkpoint, Clock};
use crate::sync::lock;

/// Peers judge a lease expired after seeing its counter stand still for
/// the failover time, less up to this much timing slack (see the
/// coordinator's take rounds).
pub(crate) const ROUND_SLACK: Duration = Duration::from_millis(100);

/// How long after the last renewal was *sent* records of a lease may still
/// be handed on. A peer first sees that renewal no earlier than it was sent,
/// and takes the lease no earlier than the failover time (less
/// [`ROUND_SLACK`]) after that, so stopping a tenth of the failover time
/// earlier still leaves a positive margin for clock rates and scheduling.
pub(crate) fn fencing_window(failover: Duration) -> Duration {
    failover.saturating_sub(ROUND_SLACK + failover / 10)
}

#[derive(Debug)]
struct State {
    counter: u64,
    epoch: u64,
    /// When the last write that renewed the lease was sent.
    renewed_at: Instant,
    /// Set when another worker asked for the lease: we stop reading it and
    /// hand it over once what was delivered is checkpointed.
    handoff_to: Option<String>,
}

#[derive(Debug)]
struct Held {
    /// Held across a write's request: one write at a time per lease.
    writing: Mutex<()>,
    /// Held only briefly, never across a request.
    state: Mutex<State>,
}

/// What a round of renewals found.
#[derive(Debug, Default)]
pub(crate) struct Renewed {
    /// Leases another worker took (or that went unrenewed too long): stop
    /// reading them at once.
    pub lost: Vec<String>,
    /// Leases another worker asked for: stop reading, then hand them over.
    pub handing_off: Vec<String>,
}

/// How many renewals run at once: enough that a few hung requests do not
/// hold up the others, few enough to be polite to DynamoDB.
const RENEWAL_THREADS: usize = 8;

/// The leases of this worker.
#[derive(Debug)]
pub(crate) struct HeldLeases {
    table: Arc<dyn LeaseStore>,
    owner: String,
    failover: Duration,
    clock: Clock,
    leases: Mutex<HashMap<String, Arc<Held>>>,
    next_epoch: AtomicU64,
    /// Leases found lost (renewal or checkpoint refused) and not yet reported.
    lost: AtomicU64,
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
        }
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

    /// Tries to take a lease seen with `seen_counter`; on success returns the
    /// epoch that tags everything read under this ownership.
    pub(crate) fn take(&self, shard_id: &str, seen_counter: u64) -> Result<Option<u64>> {
        let sent = self.clock.now();
        let Some(written) = self.table.take(shard_id, seen_counter, &self.owner)? else {
            return Ok(None);
        };
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            writing: Mutex::new(()),
            state: Mutex::new(State {
                counter: written.counter,
                epoch,
                renewed_at: sent,
                handoff_to: None,
            }),
        };
        lock(&self.leases).insert(shard_id.to_owned(), Arc::new(held));
        Ok(Some(epoch))
    }

    /// The shards held now, with their epochs.
    pub(crate) fn shards(&self) -> Vec<(String, u64)> {
        let leases = lock(&self.leases);
        leases
            .iter()
            .map(|(id, h)| (id.clone(), lock(&h.state).epoch))
            .collect()
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
    /// and its last renewal was sent within the [`fencing_window`]. Records
    /// read under other epochs are dropped.
    ///
    /// A lease past the window may be taken by another worker soon: its
    /// records are dropped, and the lease is given up here and then, so
    /// that a renewal that succeeds later cannot keep it under the same
    /// epoch, with its reader already past the dropped records. It is taken
    /// again (if still free) and read from its checkpoint.
    pub(crate) fn is_current(&self, shard_id: &str, epoch: u64) -> bool {
        let Some(entry) = self.get(shard_id) else {
            return false;
        };
        let state = lock(&entry.state);
        if state.epoch != epoch || state.handoff_to.is_some() {
            return false;
        }
        let unrenewed = self.clock.now().saturating_duration_since(state.renewed_at);
        if unrenewed < fencing_window(self.failover) {
            return true;
        }
        drop(state);
        log::warn!("lease {shard_id} lost: not renewed for {unrenewed:?}; dropping what was read");
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.forget(shard_id, epoch);
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

    /// Renews every held lease, several at once: one slow request delays
    /// only its own lease. A lease with a write in flight (a checkpoint or
    /// a release) is skipped: that write renews it.
    pub(crate) fn renew_all(&self) -> Renewed {
        let held: Vec<(String, Arc<Held>)> = lock(&self.leases)
            .iter()
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<(String, u64, Renewal)>> = Mutex::new(Vec::new());
        let renew_some = || {
            while let Some((shard_id, entry)) = held.get(next.fetch_add(1, Ordering::Relaxed)) {
                if let Some(outcome) = self.renew_one(shard_id, entry) {
                    lock(&results).push(outcome);
                }
            }
        };
        let threads = held.len().min(RENEWAL_THREADS);
        if threads <= 1 {
            renew_some();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(renew_some);
                }
            });
        }
        let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        // The order leases were held in, whatever order threads finished in.
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let mut renewed = Renewed::default();
        for (shard_id, epoch, outcome) in results {
            match outcome {
                Renewal::Lost => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    self.forget(&shard_id, epoch);
                    renewed.lost.push(shard_id);
                }
                Renewal::HandingOff => renewed.handing_off.push(shard_id),
            }
        }
        renewed
    }

    /// Renews one lease; what the round must act on, if anything.
    fn renew_one(&self, shard_id: &str, entry: &Held) -> Option<(String, u64, Renewal)> {
        let Ok(_writing) = entry.writing.try_lock() else {
            return None;
        };
        let (counter, epoch) = {
            let state = lock(&entry.state);
            (state.counter, state.epoch)
        };
        let sent = self.clock.now();
        let outcome = match self.table.renew(shard_id, &self.owner, counter) {
            Ok(Some(written)) => {
                let mut state = lock(&entry.state);
                Self::renewed(&mut state, &written, sent);
                if state.handoff_to.is_none() && written.handoff_to.is_some() {
                    log::info!(
                        "lease {shard_id}: {:?} asked for it; handing it over",
                        written.handoff_to
                    );
                    state.handoff_to = written.handoff_to;
                    return Some((shard_id.to_owned(), epoch, Renewal::HandingOff));
                }
                return None;
            }
            Ok(None) => {
                log::info!("lease {shard_id} lost: another worker took it");
                Renewal::Lost
            }
            Err(e) => {
                let unrenewed = self
                    .clock
                    .now()
                    .saturating_duration_since(lock(&entry.state).renewed_at);
                if unrenewed < self.failover {
                    log::warn!("renewing lease {shard_id} failed, will retry: {e}");
                    return None;
                }
                log::warn!("lease {shard_id} lost: not renewed for {unrenewed:?} ({e})");
                Renewal::Lost
            }
        };
        Some((shard_id.to_owned(), epoch, outcome))
    }

    /// Notes a write that renewed the lease, sent at `sent`.
    fn renewed(state: &mut State, written: &Written, sent: Instant) {
        state.counter = written.counter;
        state.renewed_at = state.renewed_at.max(sent);
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
        let sent = self.clock.now();
        match self
            .table
            .checkpoint(shard_id, &self.owner, counter, checkpoint)?
        {
            Some(written) => {
                Self::renewed(&mut lock(&entry.state), &written, sent);
                Ok(true)
            }
            None => {
                log::info!("lease {shard_id} lost: checkpoint refused, another worker holds it");
                self.lost.fetch_add(1, Ordering::Relaxed);
                self.forget(shard_id, epoch);
                Ok(false)
            }
        }
    }

    /// How many leases were found lost since the last call.
    pub(crate) fn take_lost_count(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }

    /// Gives up one lease: to the worker that asked for it, if one did, or
    /// to whoever takes it first.
    pub(crate) fn release(&self, shard_id: &str) -> Result<()> {
        let Some(entry) = self.get(shard_id) else {
            return Ok(());
        };
        let _writing = lock(&entry.writing);
        let (counter, epoch, to) = {
            let state = lock(&entry.state);
            (state.counter, state.epoch, state.handoff_to.clone())
        };
        let result = self
            .table
            .release(shard_id, &self.owner, counter, to.as_deref());
        if let (Ok(Some(_)), Some(to)) = (&result, &to) {
            log::info!("handed lease {shard_id} over to {to}");
        }
        self.forget(shard_id, epoch);
        result.map(|_| ())
    }

    /// Forgets a lease the table says is someone else's (or gone).
    pub(crate) fn drop_lost(&self, shard_id: &str) {
        if let Some(entry) = self.get(shard_id) {
            let epoch = lock(&entry.state).epoch;
            self.forget(shard_id, epoch);
        }
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

/// What a renewal found that the round must act on.
enum Renewal {
    Lost,
    HandingOff,
}
