//! The leases this worker holds, shared by the coordinator (renew, take,
//! release) and the ticker (checkpoint, handoff). Every write to a held
//! lease goes through its own lock, so a renewal and a checkpoint never race
//! on the counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::lease::{Checkpoint, LeaseTable};
use crate::sync::lock;

#[derive(Debug)]
struct Held {
    counter: u64,
    epoch: u64,
    renewed_at: Instant,
    /// Set when another worker asked for the lease: we stop reading it and
    /// hand it over once what was delivered is checkpointed.
    handoff_to: Option<String>,
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

/// The leases of this worker.
#[derive(Debug)]
pub(crate) struct HeldLeases {
    table: LeaseTable,
    owner: String,
    failover: Duration,
    leases: Mutex<HashMap<String, Arc<Mutex<Held>>>>,
    next_epoch: AtomicU64,
    /// Leases found lost (renewal or checkpoint refused) and not yet reported.
    lost: AtomicU64,
}

impl HeldLeases {
    pub(crate) fn new(table: LeaseTable, owner: String, failover: Duration) -> HeldLeases {
        HeldLeases {
            table,
            owner,
            failover,
            leases: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(1),
            lost: AtomicU64::new(0),
        }
    }

    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    pub(crate) fn table(&self) -> &LeaseTable {
        &self.table
    }

    fn get(&self, shard_id: &str) -> Option<Arc<Mutex<Held>>> {
        lock(&self.leases).get(shard_id).cloned()
    }

    /// Tries to take a lease seen with `seen_counter`; on success returns the
    /// epoch that tags everything read under this ownership.
    pub(crate) fn take(&self, shard_id: &str, seen_counter: u64) -> Result<Option<u64>> {
        let Some(written) = self.table.take(shard_id, seen_counter, &self.owner)? else {
            return Ok(None);
        };
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        let held = Held {
            counter: written.counter,
            epoch,
            renewed_at: Instant::now(),
            handoff_to: None,
        };
        lock(&self.leases).insert(shard_id.to_owned(), Arc::new(Mutex::new(held)));
        Ok(Some(epoch))
    }

    /// The shards held now, with their epochs.
    pub(crate) fn shards(&self) -> Vec<(String, u64)> {
        let leases = lock(&self.leases);
        leases
            .iter()
            .map(|(id, h)| (id.clone(), lock(h).epoch))
            .collect()
    }

    /// The shards being handed over to another worker.
    pub(crate) fn handoffs(&self) -> Vec<String> {
        let leases = lock(&self.leases);
        leases
            .iter()
            .filter(|(_, h)| lock(h).handoff_to.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.leases).len()
    }

    /// True while the lease is held under `epoch`, is not being handed over,
    /// and was renewed within the failover time. Records read under other
    /// epochs are dropped.
    ///
    /// A lease not renewed for the failover time may have been taken by
    /// another worker: its records are dropped, and the lease is given up
    /// here and then, so that a renewal that succeeds later cannot keep it
    /// under the same epoch, with its reader already past the dropped
    /// records. It is taken again (if still free) and read from its
    /// checkpoint.
    pub(crate) fn is_current(&self, shard_id: &str, epoch: u64) -> bool {
        let Some(entry) = self.get(shard_id) else {
            return false;
        };
        let held = lock(&entry);
        if held.epoch != epoch || held.handoff_to.is_some() {
            return false;
        }
        let unrenewed = held.renewed_at.elapsed();
        if unrenewed < self.failover {
            return true;
        }
        drop(held);
        log::warn!("lease {shard_id} lost: not renewed for {unrenewed:?}; dropping what was read");
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.forget(shard_id, epoch);
        false
    }

    fn forget(&self, shard_id: &str, epoch: u64) {
        let mut leases = lock(&self.leases);
        if leases.get(shard_id).is_some_and(|h| lock(h).epoch == epoch) {
            leases.remove(shard_id);
        }
    }

    /// Renews every held lease.
    pub(crate) fn renew_all(&self) -> Renewed {
        let mut renewed = Renewed::default();
        let mut lost = Vec::new();
        for (shard_id, _) in self.shards() {
            let Some(entry) = self.get(&shard_id) else {
                continue;
            };
            let mut held = lock(&entry);
            match self.table.renew(&shard_id, &self.owner, held.counter) {
                Ok(Some(written)) => {
                    held.counter = written.counter;
                    held.renewed_at = Instant::now();
                    if held.handoff_to.is_none() && written.handoff_to.is_some() {
                        log::info!(
                            "lease {shard_id}: {:?} asked for it; handing it over",
                            written.handoff_to
                        );
                        held.handoff_to = written.handoff_to;
                        renewed.handing_off.push(shard_id);
                    }
                }
                Ok(None) => {
                    log::info!("lease {shard_id} lost: another worker took it");
                    lost.push((shard_id, held.epoch));
                }
                Err(e) if held.renewed_at.elapsed() >= self.failover => {
                    log::warn!(
                        "lease {shard_id} lost: not renewed for {:?} ({e})",
                        held.renewed_at.elapsed()
                    );
                    lost.push((shard_id, held.epoch));
                }
                Err(e) => log::warn!("renewing lease {shard_id} failed, will retry: {e}"),
            }
        }
        self.lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
        for (shard_id, epoch) in lost {
            self.forget(&shard_id, epoch);
            renewed.lost.push(shard_id);
        }
        renewed
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
        let mut held = lock(&entry);
        if held.epoch != epoch {
            return Ok(false);
        }
        match self
            .table
            .checkpoint(shard_id, &self.owner, held.counter, checkpoint)?
        {
            Some(written) => {
                held.counter = written.counter;
                held.renewed_at = Instant::now();
                Ok(true)
            }
            None => {
                log::info!("lease {shard_id} lost: checkpoint refused, another worker holds it");
                self.lost.fetch_add(1, Ordering::Relaxed);
                drop(held);
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
        let held = lock(&entry);
        let epoch = held.epoch;
        let result = self.table.release(
            shard_id,
            &self.owner,
            held.counter,
            held.handoff_to.as_deref(),
        );
        if let (Ok(Some(_)), Some(to)) = (&result, &held.handoff_to) {
            log::info!("handed lease {shard_id} over to {to}");
        }
        drop(held);
        self.forget(shard_id, epoch);
        result.map(|_| ())
    }

    /// Forgets a lease the table says is someone else's.
    pub(crate) fn drop_lost(&self, shard_id: &str) {
        if let Some(entry) = self.get(shard_id) {
            let epoch = lock(&entry).epoch;
            self.forget(shard_id, epoch);
        }
    }
}
