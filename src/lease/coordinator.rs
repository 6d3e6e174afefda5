//! The lease coordinator thread: keeps the lease table in step with the
//! stream's shards, renews what this worker holds, takes expired or unowned
//! leases, steals towards an even share, and tells the shard runner which
//! shards to read. It never reads records itself. What to do is decided by
//! the pure functions of `plan.rs`; this module gathers their inputs and
//! carries their decisions out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::aws::kinesis::{KinesisClient, Shard};
use crate::error::{Error, Result};
use crate::lease::held::ROUND_SLACK;
use crate::lease::plan::{self, Lineage, RoundInput, RoundPlan, Row, Standing};
use crate::lease::{Checkpoint, HeldLeases, Lease};
use crate::metrics::{Metric, Metrics};

/// True once `waited` is the failover time, allowing for [`ROUND_SLACK`]:
/// take rounds come every third of the failover time, so the third round
/// after a lease was seen is the failover time later, give or take a few
/// milliseconds either way; without slack a lease would expire at the
/// third round or at the fourth (3.3 s later) by chance.
fn has_waited(waited: Duration, failover: Duration) -> bool {
    waited + ROUND_SLACK >= failover
}

/// The lease of `shard_id` among the table's rows.
fn lease_of<'a>(rows: &'a [Row], shard_id: &str) -> Option<&'a Lease> {
    rows.iter()
        .filter_map(Row::lease)
        .find(|l| l.shard_id == shard_id)
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
    /// Stops every reader and waits for them, up to a bound.
    fn stop_all(&mut self);
    /// Shards whose reader ended because the service answered that the
    /// shard does not exist (ResourceNotFound), since the last call.
    fn take_not_found(&mut self) -> Vec<String>;
    /// Stops the consumer with `error`: it cannot go on (the stream is gone).
    fn fail(&mut self, error: Error);
}

/// The stream's shards, as the coordinator sees them.
pub(crate) trait ShardSource: Send {
    /// Every shard the stream lists, and the service's time of the listing
    /// when it said (rounded down to the second), for pinning `Latest`.
    fn list_shards(&self) -> Result<(Vec<Shard>, Option<SystemTime>)>;
}

/// The shards of one Kinesis stream.
pub(crate) struct StreamShards {
    pub kinesis: KinesisClient,
    pub stream: String,
}

impl ShardSource for StreamShards {
    fn list_shards(&self) -> Result<(Vec<Shard>, Option<SystemTime>)> {
        let shards = self.kinesis.list_shards(&self.stream, None)?;
        Ok((shards, self.kinesis.service_time()))
    }
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
    shards: Box<dyn ShardSource>,
    stream: String,
    initial: Checkpoint,
    timings: LeaseTimings,
    runner: R,
    metrics: Metrics,
    /// The stream's shards as of the last shard sync; `None` until one
    /// succeeded (no lease is judged against a listing we do not have).
    listed: Option<Vec<Shard>>,
    /// For each row: how many listings in a row left its shard out.
    misses: HashMap<String, u32>,
    /// Shards whose reader was told by the service that they do not exist.
    not_found: HashSet<String>,
    /// For each lease seen: owner and counter, and since when (our clock)
    /// they have not changed. A lease is expired when its counter has not
    /// moved for the failover time; no cross-host clock is ever compared.
    observed: HashMap<String, (Option<String>, u64, Instant)>,
    /// Leases asked of their owners for this worker, and since when (our
    /// clock) we have seen them asked: also those asked before a restart.
    handoffs_seen: HashMap<String, Instant>,
    /// Rows already reported (waiting, not listed, gone, malformed), to
    /// log each once; rows that left the table are forgotten.
    reported: HashMap<String, Standing>,
}

impl<R: ShardRunner> Coordinator<R> {
    pub(crate) fn new(
        held: Arc<HeldLeases>,
        shards: Box<dyn ShardSource>,
        stream: &str,
        initial: Checkpoint,
        timings: LeaseTimings,
        runner: R,
        metrics: Metrics,
    ) -> Coordinator<R> {
        Coordinator {
            held,
            shards,
            stream: stream.to_owned(),
            initial,
            timings,
            runner,
            metrics,
            listed: None,
            misses: HashMap::new(),
            not_found: HashSet::new(),
            observed: HashMap::new(),
            handoffs_seen: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    fn now(&self) -> Instant {
        self.held.clock().now()
    }

    /// The first shard sync and lease take, on the caller's thread so that
    /// errors such as an unknown stream reach `run` at once (the caller
    /// retries what may pass).
    pub(crate) fn start(&mut self) -> Result<()> {
        self.held.table().ensure_exists()?;
        self.sync_shards()?;
        self.take_and_start().map(|_| ())
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
                    self.shard_finished(&shard_id);
                    next_sync = Instant::now() + self.timings.shard_sync_interval;
                    next_take = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_renew {
                self.renew();
                next_renew = now + self.timings.renew_interval;
            }
            if now >= next_sync {
                match self.sync_shards() {
                    // The stream was deleted: nothing left to read.
                    Err(e) if e.code() == Some("ResourceNotFoundException") => self.runner.fail(e),
                    other => Self::log_failure("shard sync", other),
                }
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
        self.stop();
    }

    /// A shard's end is checkpointed: give its lease up and look for its
    /// children at once.
    pub(crate) fn shard_finished(&mut self, shard_id: &str) {
        log::info!("shard {shard_id} finished; looking for its children");
        self.runner.stop(shard_id);
        if let Err(e) = self.held.release(shard_id) {
            log::warn!("releasing finished lease {shard_id}: {e}");
        }
        Self::log_failure("shard sync", self.sync_shards());
    }

    /// One renewal round.
    pub(crate) fn renew(&mut self) {
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
    }

    /// Stops every reader and releases every lease. Readers are told to
    /// stop first (a stopped reader hands nothing on) and waited for last,
    /// so that one stuck in a slow request does not delay the release.
    pub(crate) fn stop(&mut self) {
        for (shard_id, _) in self.held.shards() {
            self.runner.stop(&shard_id);
            match self.held.release(&shard_id) {
                Ok(()) => log::info!("released lease {shard_id}"),
                Err(e) => log::warn!("releasing lease {shard_id} failed (it will expire): {e}"),
            }
        }
        self.runner.stop_all();
    }

    fn log_failure(what: &str, result: Result<impl Sized>) {
        if let Err(e) = result {
            log::warn!("{what} failed, will retry: {e}");
        }
    }

    /// Lists the stream, creates leases for new shards following their
    /// lineage, and records children on their parents' leases.
    pub(crate) fn sync_shards(&mut self) -> Result<()> {
        let (shards, service_time) = self.shards.list_shards()?;
        let rows = self.held.table().list()?;
        let lineage = Lineage::new(&shards);
        self.misses = plan::count_misses(&rows, &lineage, &self.misses);
        // Pin "latest" by the service's clock where it said, never later
        // than ours: a fast local clock must not skip records.
        let now = SystemTime::now();
        let pin = service_time.map_or(now, |t| t.min(now));
        for lease in plan::new_leases(&rows, &lineage, &self.initial, pin) {
            if self.held.table().create(&lease)? {
                log::info!(
                    "new lease for shard {} (parents {:?}) at {:?}",
                    lease.shard_id,
                    lease.parents,
                    lease.checkpoint
                );
            }
        }
        for lease in rows.iter().filter_map(Row::lease) {
            let children = lineage.children(&lease.shard_id);
            if children
                .iter()
                .any(|c| !lease.children.iter().any(|k| k == c))
            {
                let children: Vec<String> = children.iter().map(|c| (*c).to_owned()).collect();
                self.held.table().set_children(&lease.shard_id, &children)?;
            }
        }
        self.listed = Some(shards);
        Ok(())
    }

    /// Reads the table, then takes unowned and expired leases, asks the
    /// busiest workers to hand leases over towards an even share, cleans up
    /// finished leases, and starts reading every held shard whose parents
    /// are finished. Returns true while some asked-for lease has not
    /// arrived yet.
    pub(crate) fn take_and_start(&mut self) -> Result<bool> {
        if self.listed.is_none() {
            self.sync_shards()?;
        }
        let rows = self.held.table().list()?;
        let now = self.now();
        let me = self.held.owner().to_owned();
        self.observe(&rows, now, &me);
        self.not_found.extend(self.runner.take_not_found());
        // Borrowed out while the round runs; put back below.
        let listed = self.listed.take().unwrap_or_default();
        let result = self.plan_and_carry_out(&rows, &listed, now, &me);
        self.listed = Some(listed);
        result
    }

    fn plan_and_carry_out(
        &mut self,
        rows: &[Row],
        listed: &[Shard],
        now: Instant,
        me: &str,
    ) -> Result<bool> {
        let lineage = Lineage::new(listed);
        let gone = plan::gone(&self.misses, &self.not_found);
        let standings = plan::standings(rows, &lineage, &gone);
        self.report(&standings);
        let failover = self.timings.failover;
        let stale: HashSet<String> = self
            .observed
            .iter()
            .filter(|(_, (_, _, since))| has_waited(now.duration_since(*since), failover))
            .map(|(id, _)| id.clone())
            .collect();
        let overdue: HashSet<String> = self
            .handoffs_seen
            .iter()
            .filter(|(_, since)| has_waited(now.duration_since(**since), failover))
            .map(|(id, _)| id.clone())
            .collect();
        let held: HashSet<String> = self.held.shards().into_iter().map(|(id, _)| id).collect();
        let plan = plan::plan_round(&RoundInput {
            me,
            rows,
            standings: &standings,
            lineage: &lineage,
            gone: &gone,
            held: &held,
            stale: &stale,
            handoff_overdue: &overdue,
            max_leases: self.timings.max_leases_per_worker,
        });
        self.carry_out(&plan, rows, &held)
    }

    /// Notes, for every lease, since when its owner and counter stood still,
    /// and since when it has been asked of its owner for this worker.
    fn observe(&mut self, rows: &[Row], now: Instant, me: &str) {
        let in_table: HashSet<&str> = rows.iter().map(Row::shard_id).collect();
        self.observed.retain(|id, _| in_table.contains(id.as_str()));
        self.misses.retain(|id, _| in_table.contains(id.as_str()));
        self.not_found.retain(|id| in_table.contains(id.as_str()));
        self.reported.retain(|id, _| in_table.contains(id.as_str()));
        for lease in rows.iter().filter_map(Row::lease) {
            let seen = self.observed.entry(lease.shard_id.clone()).or_insert((
                lease.owner.clone(),
                lease.counter,
                now,
            ));
            if seen.0 != lease.owner || seen.1 != lease.counter {
                *seen = (lease.owner.clone(), lease.counter, now);
            }
        }
        self.handoffs_seen.retain(|id, _| {
            rows.iter()
                .filter_map(Row::lease)
                .any(|l| &l.shard_id == id && l.handoff_to.as_deref() == Some(me))
        });
        for lease in rows.iter().filter_map(Row::lease) {
            if lease.handoff_to.as_deref() == Some(me) {
                self.handoffs_seen
                    .entry(lease.shard_id.clone())
                    .or_insert(now);
            }
        }
    }

    /// Logs, once per row and standing, what keeps a shard from being read.
    fn report(&mut self, standings: &HashMap<String, Standing>) {
        for (shard_id, standing) in standings {
            if self.reported.get(shard_id) == Some(standing) {
                continue;
            }
            match standing {
                Standing::Blocked(parents) => {
                    log::info!("shard {shard_id} waits for its parents {parents:?} to finish")
                }
                Standing::NotListed => log::warn!(
                    "lease table row {shard_id} names no shard the stream {} lists; not taking it",
                    self.stream
                ),
                Standing::Expired => log::warn!(
                    "shard {shard_id} expired from the stream {} before it was read to its end: its unread records are lost; its lease counts as finished",
                    self.stream
                ),
                Standing::Malformed(why) => log::warn!(
                    "lease table row {shard_id} is malformed ({why}): never taken, and its children wait until it is repaired or deleted"
                ),
                Standing::Readable | Standing::Finished => {}
            }
            self.reported.insert(shard_id.clone(), standing.clone());
        }
    }

    /// Carries a round's plan out: stops readers of leases held no more,
    /// drops lost leases, deletes finished and gone ones, gives leases up,
    /// takes and asks for leases, records the round's metrics and starts
    /// the readable shards. Returns true while an asked-for lease has not
    /// arrived.
    fn carry_out(
        &mut self,
        plan: &RoundPlan,
        rows: &[Row],
        held: &HashSet<String>,
    ) -> Result<bool> {
        self.stop_orphaned_readers(rows, held);
        self.drop_lost(plan, rows);
        self.delete(plan, rows)?;
        self.release(plan)?;
        let (taken, handed_over) = self.take(plan, rows)?;
        let asked = self.ask(plan)?;
        self.metrics.record(
            None,
            &[
                (Metric::LeasesTaken, f64::from(taken)),
                (Metric::LeasesStolen, f64::from(handed_over + asked)),
                (Metric::Workers, plan.workers as f64),
                (Metric::LeasesLost, plan.lost.len() as f64),
                (Metric::ShardsBlockedOnParent, plan.blocked.len() as f64),
            ],
        );
        self.start_readable(plan, rows);
        Ok(plan.waiting)
    }

    /// Stops readers whose lease is not held. A reader whose lease was
    /// dropped elsewhere (a refused checkpoint forgets the lease on the
    /// ticker's side) reads for nobody; a later take of the same shard would
    /// find it "running" under the old epoch and never start a reader that
    /// counts.
    fn stop_orphaned_readers(&mut self, rows: &[Row], held: &HashSet<String>) {
        for row in rows {
            let id = row.shard_id();
            if !held.contains(id) && self.runner.is_running(id) {
                log::info!("stopping the reader of {id}: its lease is gone");
                self.runner.stop(id);
            }
        }
    }

    /// Stops reading the leases another worker took, and forgets them.
    fn drop_lost(&mut self, plan: &RoundPlan, rows: &[Row]) {
        for shard_id in &plan.lost {
            log::info!(
                "lease {shard_id} lost: now owned by {:?}",
                lease_of(rows, shard_id).and_then(|l| l.owner.clone())
            );
            self.runner.stop(shard_id);
            self.held.drop_lost(shard_id);
        }
    }

    /// Deletes the leases of shards read to their end, and of shards gone
    /// from the stream (whose reading stops).
    fn delete(&mut self, plan: &RoundPlan, rows: &[Row]) -> Result<()> {
        for shard_id in &plan.delete {
            match lease_of(rows, shard_id) {
                Some(l) if l.checkpoint == Checkpoint::ShardEnd => {
                    log::info!("deleting the lease of finished shard {shard_id}");
                    self.held.table().delete_finished(shard_id)?;
                }
                Some(l) => {
                    log::warn!(
                        "deleting the lease of shard {shard_id}, gone from the stream at {:?}",
                        l.checkpoint
                    );
                    self.runner.stop(shard_id);
                    self.held.drop_lost(shard_id);
                    self.held.table().delete_gone(shard_id, l.counter)?;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Gives up the leases the plan hands to others.
    fn release(&mut self, plan: &RoundPlan) -> Result<()> {
        for shard_id in &plan.release {
            self.runner.stop(shard_id);
            log::info!("giving lease {shard_id} up");
            self.held.release(shard_id)?;
        }
        Ok(())
    }

    /// Takes the planned leases; returns how many were taken unasked and
    /// how many were handed over as asked.
    fn take(&mut self, plan: &RoundPlan, rows: &[Row]) -> Result<(u32, u32)> {
        let (mut taken, mut handed_over) = (0u32, 0u32);
        for (shard_id, counter) in &plan.take {
            let owner = lease_of(rows, shard_id).and_then(|l| l.owner.clone());
            if self.held.take(shard_id, *counter)?.is_some() {
                log::info!("took lease {shard_id} (was {owner:?})");
                if self.handoffs_seen.remove(shard_id).is_some() {
                    handed_over += 1;
                } else {
                    taken += 1;
                }
            }
        }
        Ok((taken, handed_over))
    }

    /// Asks busier workers to hand leases over; returns how many were asked.
    fn ask(&mut self, plan: &RoundPlan) -> Result<u32> {
        let mut asked = 0u32;
        let me = self.held.owner().to_owned();
        for (shard_id, owner, counter) in &plan.ask {
            if self
                .held
                .table()
                .request_handoff(shard_id, owner, *counter, &me)?
            {
                log::info!("asked {owner} to hand lease {shard_id} over");
                self.handoffs_seen.insert(shard_id.clone(), self.now());
                asked += 1;
            }
        }
        Ok(asked)
    }

    /// Starts a reader for every lease the plan found readable that is
    /// held now (a take may have failed) and not yet read.
    fn start_readable(&mut self, plan: &RoundPlan, rows: &[Row]) {
        let handing_off = self.held.handoffs();
        for (shard_id, epoch) in self.held.shards() {
            if !plan.start.contains(&shard_id)
                || self.runner.is_running(&shard_id)
                || handing_off.contains(&shard_id)
            {
                continue;
            }
            let Some(lease) = lease_of(rows, &shard_id) else {
                continue;
            };
            log::info!("starting shard {shard_id} at {:?}", lease.checkpoint);
            self.runner.start(&shard_id, epoch, &lease.checkpoint);
        }
    }
}
