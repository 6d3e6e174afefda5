//! The lease coordinator thread: keeps the lease table in step with the
//! stream's shards, renews what this worker holds, takes expired or unowned
//! leases, steals towards an even share, and tells the shard runner which
//! shards to read. It never reads records itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::aws::client::backoff;
use crate::aws::kinesis::{KinesisClient, Shard};
use crate::error::Result;
use crate::lease::{Checkpoint, HeldLeases, Lease};
use crate::metrics::{Metric, Metrics};

/// How long startup retries failures that may pass.
pub(crate) const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

/// Take rounds come every third of the failover time, so the third round
/// after a lease was seen is the failover time later, give or take timing
/// jitter of a few milliseconds either way. Without some slack, a lease
/// would expire at the third round or at the fourth (3.3 s later) by chance.
const ROUND_SLACK: Duration = Duration::from_millis(100);

/// True once `waited` is the failover time, allowing for [`ROUND_SLACK`].
fn has_waited(waited: Duration, failover: Duration) -> bool {
    waited + ROUND_SLACK >= failover
}

/// Lease timing settings (see the builder for their defaults and meaning).
#[derive(Clone, Debug)]
pub(crate) struct LeaseTimings {
    pub failover: Duration,
    pub renew_interval: Duration,
    pub take_interval: Duration,
    pub shard_sync_interval: Duration,
    pub max_leases_per_worker: usize,
}

/// Starts and stops the reading of shards; implemented by the worker.
pub(crate) trait ShardRunner: Send {
    /// Starts reading `shard_id` after `checkpoint`, tagging what it reads with `epoch`.
    fn start(&mut self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint);
    /// Stops reading `shard_id`, if it is being read.
    fn stop(&mut self, shard_id: &str);
    /// True while `shard_id` has a reader (even one that reached the shard's end).
    fn is_running(&self, shard_id: &str) -> bool;
    /// Stops every reader and waits for them.
    fn stop_all(&mut self);
    /// Shards whose reader ended because the service answered that the
    /// shard does not exist (ResourceNotFound), since the last call.
    fn take_not_found(&mut self) -> Vec<String>;
}

/// What the rest of the consumer tells the coordinator.
#[derive(Debug)]
pub(crate) enum CoordinatorEvent {
    /// The shard's SHARD_END checkpoint is written: its children may start.
    ShardFinished(String),
    /// Stop readers, release every lease, and return.
    Stop,
}

/// The lease coordinator of one worker.
pub(crate) struct Coordinator<R: ShardRunner> {
    held: Arc<HeldLeases>,
    kinesis: KinesisClient,
    stream: String,
    initial: Checkpoint,
    timings: LeaseTimings,
    runner: R,
    /// For each lease seen: owner and counter, and since when (our clock)
    /// they have not changed. A lease is expired when its counter has not
    /// moved for the failover time; no cross-host clock is ever compared.
    observed: HashMap<String, (Option<String>, u64, Instant)>,
    /// Shards already reported as waiting for a parent, to log it once.
    blocked: HashSet<String>,
    /// Leases we asked their owners to hand over, and when.
    handoffs_asked: HashMap<String, Instant>,
    metrics: Metrics,
    /// The stream's shards as of the last shard sync: a lease row naming
    /// any other shard is never taken (its reader could only fail).
    stream_shards: HashSet<String>,
    /// Lease rows already reported as naming no shard of the stream.
    foreign: HashSet<String>,
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b.max(1))
}

impl<R: ShardRunner> Coordinator<R> {
    pub(crate) fn new(
        held: Arc<HeldLeases>,
        kinesis: KinesisClient,
        stream: &str,
        initial: Checkpoint,
        timings: LeaseTimings,
        runner: R,
        metrics: Metrics,
    ) -> Coordinator<R> {
        Coordinator {
            held,
            kinesis,
            stream: stream.to_owned(),
            initial,
            timings,
            runner,
            observed: HashMap::new(),
            blocked: HashSet::new(),
            handoffs_asked: HashMap::new(),
            metrics,
            stream_shards: HashSet::new(),
            foreign: HashSet::new(),
        }
    }

    /// The first shard sync and lease take, on the caller's thread so that
    /// errors such as an unknown stream reach `run` at once. Failures that
    /// may pass (throttling, 5xx, resets) are retried with backoff for up to
    /// [`STARTUP_PATIENCE`]: the stream is known to exist by then, and one
    /// busy minute should not stop a program.
    pub(crate) fn start(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut failures = 0;
        loop {
            let attempt = self
                .held
                .table()
                .ensure_exists()
                .and_then(|()| self.sync_shards())
                .and_then(|()| self.take_and_start());
            match attempt {
                Err(e) if e.is_retryable() && started.elapsed() < STARTUP_PATIENCE => {
                    failures += 1;
                    let wait = backoff(Duration::from_millis(500), failures);
                    log::warn!("starting failed, retrying in {wait:?}: {e}");
                    std::thread::sleep(wait);
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// Runs until told to stop, then stops readers and releases leases.
    pub(crate) fn run(mut self, events: Receiver<CoordinatorEvent>) {
        let now = Instant::now();
        let mut next_renew = now + self.timings.renew_interval;
        let mut next_take = now + self.timings.take_interval;
        let mut next_sync = now + self.timings.shard_sync_interval;
        loop {
            let next = next_renew.min(next_take).min(next_sync);
            match events.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(CoordinatorEvent::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(CoordinatorEvent::ShardFinished(shard_id)) => {
                    log::info!("shard {shard_id} finished; looking for its children");
                    self.runner.stop(&shard_id);
                    if let Err(e) = self.held.release(&shard_id) {
                        log::warn!("releasing finished lease {shard_id}: {e}");
                    }
                    Self::log_failure("shard sync", self.sync_shards());
                    next_sync = Instant::now() + self.timings.shard_sync_interval;
                    next_take = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_renew {
                let renewed = self.held.renew_all();
                for shard_id in renewed.lost.iter().chain(&renewed.handing_off) {
                    self.runner.stop(shard_id);
                }
                self.metrics.record(
                    None,
                    &[
                        (Metric::LeasesHeld, self.held.len() as f64),
                        (Metric::LeasesLost, self.held.take_lost_count() as f64),
                    ],
                );
                next_renew = now + self.timings.renew_interval;
            }
            if now >= next_sync {
                Self::log_failure("shard sync", self.sync_shards());
                next_sync = now + self.timings.shard_sync_interval;
            }
            if now >= next_take {
                // While waiting for leases to be handed over, look again sooner.
                let waiting = match self.take_and_start() {
                    Ok(waiting) => waiting,
                    Err(e) => {
                        Self::log_failure("lease take", Err::<bool, _>(e));
                        false
                    }
                };
                let interval = self.timings.take_interval;
                next_take = now + if waiting { interval / 2 } else { interval };
            }
        }
        self.runner.stop_all();
        for (shard_id, _) in self.held.shards() {
            match self.held.release(&shard_id) {
                Ok(()) => log::info!("released lease {shard_id}"),
                Err(e) => log::warn!("releasing lease {shard_id} failed (it will expire): {e}"),
            }
        }
    }

    fn log_failure(what: &str, result: Result<impl Sized>) {
        if let Err(e) = result {
            log::warn!("{what} failed, will retry: {e}");
        }
    }

    /// Creates leases for new shards, records children on their parents,
    /// and deletes finished leases of shards the stream no longer lists.
    fn sync_shards(&mut self) -> Result<()> {
        let shards = self.kinesis.list_shards(&self.stream, None)?;
        self.stream_shards = shards.iter().map(|s| s.shard_id.clone()).collect();
        let leases = self.held.table().list()?;
        let mut known: HashMap<String, Lease> = leases
            .into_iter()
            .map(|l| (l.shard_id.clone(), l))
            .collect();
        // A closed shard without a lease whose children have leases was
        // finished and cleaned up (or is older than where we started):
        // never lease it again. Judge by the leases from before this sync.
        let finished: HashSet<String> = shards
            .iter()
            .filter(|s| known.contains_key(&s.shard_id))
            .flat_map(|s| s.parents())
            .filter(|p| !known.contains_key(*p))
            .map(str::to_owned)
            .collect();
        for shard in &shards {
            if known.contains_key(&shard.shard_id) || finished.contains(&shard.shard_id) {
                continue;
            }
            let parent_leased = shard.parents().any(|p| known.contains_key(p));
            let checkpoint = match self.initial {
                // Starting at the tip: closed shards of old reshards hold only
                // old data; but children of shards we read start at their
                // beginning, or records between parent and child would be lost.
                Checkpoint::Latest if parent_leased => Checkpoint::TrimHorizon,
                Checkpoint::Latest if shard.is_closed() => continue,
                // Pin "latest" to now, so that records put before the first
                // checkpoint are read even if the lease changes hands first.
                Checkpoint::Latest => Checkpoint::AtTimestamp(Some(SystemTime::now())),
                ref initial => initial.clone(),
            };
            let lease = new_lease(shard, checkpoint);
            if self.held.table().create(&lease)? {
                log::info!(
                    "new lease for shard {} (parents {:?}) at {:?}",
                    shard.shard_id,
                    lease.parents,
                    lease.checkpoint
                );
            }
            known.insert(shard.shard_id.clone(), lease);
        }
        for lease in known.values() {
            let children: Vec<String> = shards
                .iter()
                .filter(|s| s.parents().any(|p| p == lease.shard_id))
                .map(|s| s.shard_id.clone())
                .collect();
            if !children.is_empty() && children.iter().any(|c| !lease.children.contains(c)) {
                self.held.table().set_children(&lease.shard_id, &children)?;
            }
            let gone = shards.iter().all(|s| s.shard_id != lease.shard_id);
            if lease.checkpoint == Checkpoint::ShardEnd && gone {
                log::info!(
                    "deleting the lease of finished shard {} (no longer in the stream)",
                    lease.shard_id
                );
                self.held.table().delete_finished(&lease.shard_id)?;
            }
        }
        Ok(())
    }

    /// Takes unowned and expired leases, asks the busiest workers to hand
    /// leases over towards an even share, cleans up finished leases, and
    /// starts reading every held shard whose parents are finished. Returns
    /// true while some asked-for lease has not arrived yet.
    fn take_and_start(&mut self) -> Result<bool> {
        let leases = self.held.table().list()?;
        let now = Instant::now();
        let me = self.held.owner().to_owned();
        self.observed
            .retain(|id, _| leases.iter().any(|l| &l.shard_id == id));
        for lease in &leases {
            let seen = self.observed.entry(lease.shard_id.clone()).or_insert((
                lease.owner.clone(),
                lease.counter,
                now,
            ));
            if seen.0 != lease.owner || seen.1 != lease.counter {
                *seen = (lease.owner.clone(), lease.counter, now);
            }
        }
        self.delete_finished(&leases)?;
        let held: HashSet<String> = self.held.shards().into_iter().map(|(id, _)| id).collect();
        // A reader whose lease was dropped elsewhere (a refused checkpoint
        // forgets the lease on the ticker's side) reads for nobody: stop it,
        // or a later take of the same shard would find it "running" under
        // the old epoch and never start a reader that counts.
        for lease in &leases {
            if !held.contains(&lease.shard_id) && self.runner.is_running(&lease.shard_id) {
                log::info!(
                    "stopping the reader of {}: its lease is gone",
                    lease.shard_id
                );
                self.runner.stop(&lease.shard_id);
            }
        }
        let (mut taken, mut stolen, mut lost) = (0u32, 0u32, 0u32);
        // A lease the table gives to someone else is lost, whatever we thought.
        for lease in &leases {
            if held.contains(&lease.shard_id) && lease.owner.as_deref() != Some(me.as_str()) {
                lost += 1;
                log::info!(
                    "lease {} lost: now owned by {:?}",
                    lease.shard_id,
                    lease.owner
                );
                self.runner.stop(&lease.shard_id);
                self.held.drop_lost(&lease.shard_id);
            }
        }
        let failover = self.timings.failover;
        let unchanged_for = |l: &Lease| {
            self.observed
                .get(&l.shard_id)
                .map_or(Duration::ZERO, |o| now.duration_since(o.2))
        };
        for lease in &leases {
            if !self.stream_shards.contains(&lease.shard_id)
                && self.foreign.insert(lease.shard_id.clone())
            {
                log::warn!(
                    "lease table row {} names no shard of stream {}; ignoring it",
                    lease.shard_id,
                    self.stream
                );
            }
        }
        let open: Vec<&Lease> = leases
            .iter()
            .filter(|l| l.checkpoint != Checkpoint::ShardEnd)
            .filter(|l| self.stream_shards.contains(&l.shard_id))
            .collect();
        let mut available: Vec<&Lease> = Vec::new();
        let mut by_owner: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for lease in &open {
            match lease.owner.as_deref() {
                Some(owner) if owner == me && held.contains(&lease.shard_id) => {}
                None => available.push(lease),
                // Handed to us, or ours from an earlier run under this id.
                Some(owner) if owner == me => available.push(lease),
                Some(_) if has_waited(unchanged_for(lease), failover) => available.push(lease),
                Some(owner) => by_owner.entry(owner).or_default().push(lease),
            }
        }
        let workers = by_owner.len() + 1;
        let target = ceil_div(open.len(), workers).min(self.timings.max_leases_per_worker);
        let mut mine = self.held.len();
        for lease in available {
            if mine >= target {
                break;
            }
            if self.held.take(&lease.shard_id, lease.counter)?.is_some() {
                log::info!("took lease {} (was {:?})", lease.shard_id, lease.owner);
                mine += 1;
                taken += 1;
            }
        }
        // Leases already asked for count as ours; one asked for longer than
        // the failover time ago (its owner ignores handoffs) is taken.
        let mut waiting = false;
        for (owner, owned) in by_owner.iter_mut() {
            let mut still_owned = Vec::new();
            for lease in owned.drain(..) {
                if lease.handoff_to.as_deref() != Some(me.as_str()) {
                    still_owned.push(lease);
                    continue;
                }
                let asked = self
                    .handoffs_asked
                    .get(&lease.shard_id)
                    .copied()
                    .unwrap_or(now);
                if has_waited(now.duration_since(asked), failover)
                    && self.held.take(&lease.shard_id, lease.counter)?.is_some()
                {
                    log::info!(
                        "took lease {} from {owner}, which did not hand it over",
                        lease.shard_id
                    );
                    stolen += 1;
                } else {
                    waiting = true;
                }
                mine += 1;
            }
            *owned = still_owned;
        }
        self.handoffs_asked.retain(|id, _| {
            leases
                .iter()
                .any(|l| &l.shard_id == id && l.handoff_to.as_deref() == Some(me.as_str()))
        });
        // Ask the busiest workers for leases, several per round if needed,
        // but never one at or below the target: no ping-pong.
        let mut victims: Vec<(&str, Vec<&Lease>)> = by_owner.into_iter().collect();
        victims.sort_by_key(|(owner, l)| (std::cmp::Reverse(l.len()), *owner));
        for (owner, owned) in victims {
            let spare = owned.len().saturating_sub(target);
            for lease in owned.into_iter().take(spare) {
                if mine >= target {
                    break;
                }
                if self
                    .held
                    .table()
                    .request_handoff(&lease.shard_id, owner, lease.counter, &me)?
                {
                    log::info!("asked {owner} to hand lease {} over", lease.shard_id);
                    self.handoffs_asked.insert(lease.shard_id.clone(), now);
                    waiting = true;
                    mine += 1;
                    stolen += 1;
                }
            }
        }
        self.metrics.record(
            None,
            &[
                (Metric::LeasesTaken, f64::from(taken)),
                (Metric::LeasesStolen, f64::from(stolen)),
                (Metric::Workers, workers as f64),
                (Metric::LeasesLost, f64::from(lost)),
            ],
        );
        self.start_readable(&leases)?;
        Ok(waiting)
    }

    /// Deletes the leases of finished shards once every child has started,
    /// so that no child can be mistaken for one without parents.
    fn delete_finished(&self, leases: &[Lease]) -> Result<()> {
        let started = |id: &String| {
            leases
                .iter()
                .any(|l| &l.shard_id == id && l.checkpoint.has_started())
        };
        for lease in leases {
            if lease.checkpoint == Checkpoint::ShardEnd
                && !lease.children.is_empty()
                && lease.children.iter().all(started)
            {
                log::info!(
                    "deleting the lease of finished shard {}: its children have started",
                    lease.shard_id
                );
                self.held.table().delete_finished(&lease.shard_id)?;
            }
        }
        Ok(())
    }

    fn start_readable(&mut self, leases: &[Lease]) -> Result<()> {
        let by_id: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
        let handing_off = self.held.handoffs();
        let mut blocked = 0u32;
        for (shard_id, epoch) in self.held.shards() {
            if self.runner.is_running(&shard_id) || handing_off.contains(&shard_id) {
                continue;
            }
            let Some(lease) = by_id.get(shard_id.as_str()) else {
                continue;
            };
            if lease.checkpoint == Checkpoint::ShardEnd {
                self.held.release(&shard_id)?;
                continue;
            }
            let waiting = lease.unfinished_parents(leases);
            if waiting.is_empty() {
                self.blocked.remove(&shard_id);
                log::info!("starting shard {shard_id} at {:?}", lease.checkpoint);
                self.runner.start(&shard_id, epoch, &lease.checkpoint);
            } else {
                blocked += 1;
                if self.blocked.insert(shard_id.clone()) {
                    log::info!("shard {shard_id} waits for its parents {waiting:?} to finish");
                }
            }
        }
        self.metrics
            .record(None, &[(Metric::ShardsBlockedOnParent, f64::from(blocked))]);
        Ok(())
    }
}

fn new_lease(shard: &Shard, checkpoint: Checkpoint) -> Lease {
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
    }
}
