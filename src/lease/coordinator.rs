//! The lease coordinator thread: writes this worker's heartbeat (which
//! keeps every lease it holds), keeps the lease table in step with the
//! stream's shards, takes expired or unowned leases, asks for leases
//! towards an even share, and tells the shard runner which shards to read.
//! It never reads records itself. What to do is decided by the pure
//! functions of `plan.rs` and `peers.rs`; this module gathers their inputs
//! and carries their decisions out.
//!
//! What it costs: one write per worker per heartbeat (a third of the
//! failover time), whatever the number of leases. The lease table is read
//! (a Scan) only when the workers row says something changed (a worker
//! joined, left or died; a lease was freed, created or asked for), while
//! the table is unsettled (free leases, leases of owners outside the
//! workers row, asks in flight), and otherwise every
//! [`FULL_READ_EVERY`] failover times, eventually consistent.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::aws::kinesis::{KinesisClient, Shard};
use crate::error::{Error, Result};
use crate::lease::peers::{Namesake, NamesakeWatch, Peers, has_waited};
use crate::lease::plan::{self, Lineage, RoundInput, RoundPlan, Row, Standing};
use crate::lease::table::namesake_error;
use crate::lease::{Checkpoint, Coordination, HeldLeases, Lease, Stamp};
use crate::metrics::{LeaseRow, Metric, Metrics};
use crate::stream::{Layout, StreamIdentifier, check_layout};

mod led;

/// With nothing changing, the lease table is still read once every this
/// many failover times (60 s at the default 10 s): a safety net for a
/// notice that was lost.
pub(crate) const FULL_READ_EVERY: u32 = 6;

/// The lease of `shard_id` among the table's rows.
fn lease_of<'a>(rows: &'a [Row], shard_id: &str) -> Option<&'a Lease> {
    rows.iter()
        .filter_map(Row::lease)
        .find(|l| l.shard_id == shard_id)
}

fn is_namesake_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Config {
            setting: "worker_id",
            ..
        }
    )
}

/// A lease as last seen changing (or its owner alive).
struct Observed {
    owner: Option<String>,
    counter: u64,
    checkpoint: Checkpoint,
    /// Since when (our clock) it has not changed.
    since: Instant,
}

impl Observed {
    fn of(lease: &Lease, now: Instant) -> Observed {
        Observed {
            owner: lease.owner.clone(),
            counter: lease.counter,
            checkpoint: lease.checkpoint.clone(),
            since: now,
        }
    }

    /// True when only the counter moved: a renewal, which the KCL writes
    /// and we never do (our takes, checkpoints and releases change the
    /// owner or the checkpoint with it).
    fn renewed_to(&self, lease: &Lease) -> bool {
        self.owner == lease.owner
            && self.counter != lease.counter
            && self.checkpoint == lease.checkpoint
    }
}

/// Lease timing settings (see the builder for their defaults and meaning).
#[derive(Clone, Debug)]
pub(crate) struct LeaseTimings {
    pub failover: Duration,
    pub heartbeat_interval: Duration,
    pub shard_sync_interval: Duration,
    pub max_leases_per_worker: usize,
    /// How long the lease table may be out of reach (no heartbeat lands)
    /// before the consumer stops with [`Error::LeaseTableUnavailable`];
    /// `None`: for ever.
    pub max_unavailable: Option<Duration>,
    /// How long the rows of a stream no longer read are kept before they
    /// are deleted (a stream added back meanwhile resumes from them).
    pub former_stream_retention: Duration,
    /// Workers row, or worker items and a leader.
    pub coordination: Coordination,
    /// How the leader balances leases (leader-run fleets only).
    pub balance: crate::lease::plan::FleetBalance,
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
pub(crate) trait ShardSource: Send + Sync {
    /// Every shard the stream lists, and the service's time of the listing
    /// when it said (rounded down to the second), for pinning `Latest`.
    fn list_shards(&self) -> Result<(Vec<Shard>, Option<SystemTime>)>;
    /// How the lease table keys these shards' leases: bare shard ids
    /// unless the source reads several streams.
    fn layout(&self) -> Layout {
        Layout::SingleStream
    }
    /// True for the lease keys of this source's shards: the coordinator
    /// never plans, takes or deletes a row of a stream it does not read
    /// (another application's on a shared multi-stream table, say).
    fn owns(&self, _key: &str) -> bool {
        true
    }
    /// Where a new lease of `key` starts, when not the consumer's initial
    /// position.
    fn initial_of(&self, _key: &str) -> Option<Checkpoint> {
        None
    }
    /// Streams no longer read (removed, deleted, or recreated under a new
    /// identity) since the last call.
    fn take_retired(&self) -> Vec<StreamIdentifier> {
        Vec::new()
    }
    /// Applies the streams added or removed since the last listing (a
    /// listing applies them too): a worker of a leader-run fleet that does
    /// not list calls it every round, or it would refuse the leases of a
    /// stream added since it started, and read on those of one removed.
    fn apply_stream_changes(&self) {}
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
    shards: Arc<dyn ShardSource>,
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
    /// Shards a reader was told do not exist, not yet checked against a
    /// listing: one the stream still lists is read again.
    reported_not_found: HashSet<String>,
    /// For each lease seen: owner and counter, and since when (our clock)
    /// they have not changed, or its owner was last seen alive in the
    /// workers row. A lease of an owner outside that row (the KCL's, say)
    /// is expired when its counter has not moved for the failover time;
    /// no cross-host clock is ever compared.
    observed: HashMap<String, Observed>,
    /// The other workers, from the workers row.
    peers: Peers,
    /// Owners of leases not in the workers row, and since when we see them
    /// so: one renewing its leases for the failover time is a worker that
    /// does not write heartbeats (the KCL, or an older version of ours).
    outsiders: HashMap<String, Instant>,
    /// The lease table as last read.
    rows: Vec<Row>,
    /// True when the table should be read at the next round.
    read_due: bool,
    /// When the table is read next, even if nothing changed.
    next_full_read: Instant,
    /// Leases asked of their owners for this worker, and since when (our
    /// clock) we have seen them asked: also those asked before a restart.
    handoffs_seen: HashMap<String, Instant>,
    /// Rows already reported (waiting, not listed, gone, malformed), to
    /// log each once; rows that left the table are forgotten.
    reported: HashMap<String, Standing>,
    /// When the last heartbeat was sent (both clocks: see
    /// [`Self::since_beat`]).
    last_beat: Option<Stamp>,
    /// True when the last heartbeat sent was refused because another live
    /// process beats under our id (see [`Self::round`]).
    beat_refused_for_namesake: bool,
    /// The leases this run asked their owners for (see
    /// [`Self::earlier_runs`]).
    asked_this_run: HashSet<String>,
    /// True once the consumer was told to stop for an unreachable table.
    gave_up: bool,
    /// Streams no longer read, and since when (our clock): their free
    /// rows are deleted after the retention period.
    former: HashMap<StreamIdentifier, Instant>,
    /// A heartbeat under our own id found in the workers row at startup;
    /// `None` once we may start beating.
    namesake: Option<NamesakeWatch>,
    /// A leader-run worker's own state ([`Coordination::Leader`]).
    led: led::Led,
}

impl<R: ShardRunner> Coordinator<R> {
    pub(crate) fn new(
        held: Arc<HeldLeases>,
        shards: Arc<dyn ShardSource>,
        stream: &str,
        initial: Checkpoint,
        timings: LeaseTimings,
        runner: R,
        metrics: Metrics,
    ) -> Coordinator<R> {
        if timings.coordination == Coordination::Leader {
            held.use_worker_items();
        }
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
            reported_not_found: HashSet::new(),
            observed: HashMap::new(),
            peers: Peers::default(),
            outsiders: HashMap::new(),
            rows: Vec::new(),
            read_due: true,
            next_full_read: Instant::now(),
            handoffs_seen: HashMap::new(),
            asked_this_run: HashSet::new(),
            reported: HashMap::new(),
            last_beat: None,
            beat_refused_for_namesake: false,
            gave_up: false,
            namesake: Some(NamesakeWatch::default()),
            former: HashMap::new(),
            led: led::Led::default(),
        }
    }

    fn is_led(&self) -> bool {
        self.timings.coordination == Coordination::Leader
    }

    fn now(&self) -> Instant {
        self.held.clock().now()
    }

    /// The first heartbeat, shard sync and lease take, on the caller's
    /// thread so that errors such as an unknown stream reach `run` at once
    /// (the caller retries what may pass).
    pub(crate) fn start(&mut self) -> Result<()> {
        self.held.table().ensure_exists()?;
        let rows = self.held.table().list(true)?;
        check_layout(self.shards.layout(), rows.iter().map(Row::shard_id))?;
        // The shard sync below plans new leases from these rows (and reads
        // again only if it would create some), instead of a scan of its own.
        self.rows = rows;
        self.check_namesake()?;
        if self.is_led() {
            return self.start_led();
        }
        self.heartbeat()?;
        self.sync_shards()?;
        self.read_and_plan(true)
    }

    /// Before the first heartbeat: a process already beating under this
    /// worker id (a copied configuration, a restarted pod whose predecessor
    /// still drains) must not share it, or both would take the same leases
    /// back and forth. Not ready while its heartbeat may still be live
    /// (startup looks again); an error once it kept moving for the failover
    /// time. A predecessor that left the row, or whose heartbeat stood
    /// still for one and a half heartbeat periods, is taken for gone (see
    /// [`NamesakeWatch`]); its leases are taken the failover time after
    /// our first heartbeat landed, when it surely stopped (see
    /// [`HeldLeases::may_take_earlier_runs_leases`]): the row cannot tell
    /// a process that left from a deleted row, nor a dead one from one
    /// stuck in a slow write.
    fn check_namesake(&mut self) -> Result<()> {
        if self.namesake.is_none() {
            return Ok(());
        }
        let me = self.held.owner().to_owned();
        let beat = if self.is_led() {
            self.held.table().worker_item(&me)?.map(|item| item.beat)
        } else {
            self.held.table().workers()?.beats.get(&me).copied()
        };
        let Some(watch) = &mut self.namesake else {
            return Ok(());
        };
        let now = self.held.clock().now();
        let (interval, failover) = (self.timings.heartbeat_interval, self.timings.failover);
        match watch.observe(beat, now, interval, failover) {
            Namesake::Clear => {
                self.namesake = None;
                self.held.replace_beat(beat);
                Ok(())
            }
            Namesake::Live => Err(namesake_error(&me)),
            Namesake::Wait => Err(Error::NotReady(format!(
                "worker id {me:?} has a live-looking heartbeat in the lease table: waiting for the process that wrote it to stop (at most the failover time, {failover:?})"
            ))),
        }
    }

    /// Runs until told to stop, then stops readers and releases leases.
    pub(crate) fn run(mut self, events: Receiver<CoordinatorEvent>) {
        let now = Instant::now();
        let mut next_round = now + self.timings.heartbeat_interval;
        let mut next_sync = now + self.timings.shard_sync_interval;
        loop {
            let watch = self.early_watch().unwrap_or(next_round);
            let next = next_round.min(next_sync).min(watch);
            match events.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(CoordinatorEvent::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(CoordinatorEvent::ShardFinished(shard_id)) => {
                    self.shard_finished(&shard_id);
                    next_sync = Instant::now() + self.timings.shard_sync_interval;
                    // A leader-run fleet's leader assigns the children at
                    // its next round.
                    if !self.is_led() {
                        let result = self.read_and_plan(true);
                        self.log_failure("lease take", result);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_sync && self.syncs_shards() {
                match self.sync_shards() {
                    // The stream was deleted: nothing left to read.
                    Err(e) if e.code() == Some("ResourceNotFoundException") => self.runner.fail(e),
                    other => self.log_failure("shard sync", other),
                }
                let deleted = self.delete_former_streams();
                self.log_failure("deleting the leases of former streams", deleted);
                next_sync = now + self.timings.shard_sync_interval;
            }
            if now >= next_round {
                self.round();
                next_round = self.next_round(now, Instant::now());
            }
        }
        self.stop();
    }

    /// When the round after the one that began at `began` is due (`now`:
    /// when it ended): a heartbeat period after it began; a leader-run
    /// fleet's follower at its point of the leader's period instead (see
    /// `until_next_round` in coordinator/led.rs).
    pub(crate) fn next_round(&self, began: Instant, now: Instant) -> Instant {
        match self.is_led().then(|| self.until_next_round()).flatten() {
            Some(wait) => now + wait,
            None => began + self.timings.heartbeat_interval,
        }
    }

    /// True when this worker keeps the table in step with the stream
    /// every shard sync interval: in a leader-run fleet only the leader
    /// does (a worker finishing a shard lists it too).
    pub(crate) fn syncs_shards(&self) -> bool {
        !self.is_led() || self.led.leads()
    }

    /// One round: the heartbeat, then a read of the lease table and a take
    /// round if the workers row or the last round calls for one.
    pub(crate) fn round(&mut self) {
        if self.is_led() {
            self.led_round();
            self.record_holdings();
            return;
        }
        // A beat written meanwhile (while a shard listing waited) stands
        // for this round's, as it went: a second one in the same period
        // would be one write more for nothing, and under throttling one
        // retry chain more. Half a period keeps the next beat at most 1.5
        // periods on. One refused because another process beats under our
        // id stops this one, before it reads the table as the owner of
        // that process's leases (SIM_FAULTS=namesakes seeds 340, 420).
        // One that failed (logged then) leaves this round nothing to do:
        // the table is planned on only with a workers row that landed
        // lately, as a stale one shows live peers as dead (seed 471).
        let half = self.timings.heartbeat_interval / 2;
        let beat = if self.beat_refused_for_namesake {
            Some(Err(namesake_error(self.held.owner())))
        } else if self.beat_is_due(half) {
            Some(self.heartbeat())
        } else if self.held.since_alive() < half {
            Some(Ok(()))
        } else {
            None
        };
        match beat {
            Some(Ok(())) => {
                self.held.pay_owed_notice();
                self.note_not_found();
                self.read_due |= self.held.take_taken_unseen();
                let now = self.now();
                if self.read_due || now >= self.next_full_read {
                    // Only the safety-net read may see a slightly stale
                    // table: every read that answers a change is consistent.
                    let consistent = self.read_due;
                    if let Err(e) = self.read_and_plan(consistent) {
                        self.read_due = true;
                        self.log_failure("lease take", Err::<(), _>(e));
                    }
                }
            }
            // Another live process beats under our id, or the table is
            // out of reach for longer than the program allows: stop.
            Some(Err(e)) => self.beat_failed(e),
            None => {}
        }
        self.record_holdings();
    }

    fn record_holdings(&self) {
        self.metrics.live().forget_released();
        self.metrics.record(
            None,
            &[
                (Metric::LeasesHeld, self.held.len() as f64),
                (Metric::LeasesLost, self.held.take_lost_count() as f64),
            ],
        );
    }

    /// How long since the last heartbeat that landed was sent (the lease
    /// table was within reach then), when that is longer than
    /// `max_unavailable` allows.
    fn unavailable_for(&self) -> Option<Duration> {
        let bound = self.timings.max_unavailable?;
        let since = self.now().duration_since(self.held.alive_since()?);
        (since >= bound).then_some(since)
    }

    /// Writes the heartbeat and notes what the workers row says. Leases
    /// dropped because no heartbeat landed in time stop being read.
    fn heartbeat(&mut self) -> Result<()> {
        self.last_beat = Some(self.held.clock().stamp());
        let (lapsed, workers) = self.held.heartbeat(self.cap());
        if let Some(dropped) = lapsed {
            for shard_id in &dropped {
                log::warn!(
                    "lease {shard_id} dropped: no heartbeat landed in time; it is taken again if still ours"
                );
            }
            // Leases may have been taken meanwhile: look at once.
            self.read_due = true;
        }
        // Readers of leases dropped here or by the ticker stop now, not at
        // the next read of the table.
        let held = self.held.shard_ids();
        let rows = std::mem::take(&mut self.rows);
        self.stop_orphaned_readers(&rows, &held);
        self.rows = rows;
        self.beat_refused_for_namesake = workers.as_ref().is_err_and(is_namesake_error);
        let workers = workers?;
        let now = self.now();
        let me = self.held.owner().to_owned();
        self.read_due |= self
            .peers
            .observe(&workers, &me, now, self.timings.failover);
        match self.peers.over_cap(&me) {
            Some(why) => Err(self.stop_for_setting("coordination", why)),
            None => Ok(()),
        }
    }

    /// Notes the shards readers were told do not exist; the table is read
    /// (and the stream listed) at once.
    fn note_not_found(&mut self) {
        let reported = self.runner.take_not_found();
        if !reported.is_empty() {
            self.read_due = true;
            self.reported_not_found.extend(reported);
        }
    }

    /// Writes the heartbeat if a heartbeat period passed since the last
    /// one. Called between the writes of long loops: creating or taking a
    /// thousand leases takes longer than the failover time, and without it
    /// the peers would judge this worker dead and its own leases lapse.
    fn beat_if_due(&mut self) {
        if self.beat_is_due(self.timings.heartbeat_interval) {
            if self.is_led() {
                self.beat_between_rounds();
                return;
            }
            let result = self.heartbeat();
            self.log_failure("heartbeat", result);
        }
    }

    /// True if no heartbeat was sent in the last `period`.
    fn beat_is_due(&self, period: Duration) -> bool {
        self.since_beat() >= period
    }

    /// How long since the last heartbeat was sent (`Duration::MAX`: none
    /// yet), by the clock that saw more time pass: after a host suspend the
    /// monotonic one has seen none, while peers forgot this worker's beat.
    fn since_beat(&self) -> Duration {
        self.last_beat
            .map_or(Duration::MAX, |sent| self.held.clock().stamp().since(sent))
    }

    /// Lists the shards on a thread of its own while this one keeps the
    /// heartbeat going. A listing can take seconds (a busy endpoint,
    /// throttling waited out); a heartbeat held up behind it let this
    /// worker's own leases lapse while it was alive and reading them.
    fn list_shards_beating(&mut self) -> Result<(Vec<Shard>, Option<SystemTime>)> {
        let source = self.shards.clone();
        let (sender, listed) = crossbeam_channel::bounded(1);
        let lister = std::thread::Builder::new()
            .name("kinesis-shard-listing".into())
            .spawn(move || {
                let _ = sender.send(source.list_shards());
            })
            .map_err(|e| Error::Internal(format!("cannot start the shard listing thread: {e}")))?;
        loop {
            // A beat already due is written before the wait, not raced
            // against the listing's answer (a wait of zero): the same here
            // (a listing takes longer than nothing), and a simulated seed
            // replays as it ran.
            self.beat_if_due();
            let until_beat = self
                .timings
                .heartbeat_interval
                .saturating_sub(self.since_beat());
            match listed.recv_timeout(until_beat) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Timeout) => {}
                // The lister panicked: so does this thread, as if it had listed.
                Err(RecvTimeoutError::Disconnected) => match lister.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => {
                        return Err(Error::Internal(
                            "the shard listing thread ended without an answer".into(),
                        ));
                    }
                },
            }
        }
    }

    /// A shard's end is checkpointed: give its lease up and look for its
    /// children at once.
    pub(crate) fn shard_finished(&mut self, shard_id: &str) {
        log::info!("shard {shard_id} finished; looking for its children");
        self.runner.stop(shard_id);
        if let Err(e) = self.held.release(shard_id) {
            log::warn!("releasing finished lease {shard_id}: {e}");
        }
        let result = self.sync_shards();
        self.log_failure("shard sync", result);
        self.read_due = true;
        if self.is_led() && !self.led.leads() {
            self.forget_table();
        }
    }

    /// Stops every reader and releases every lease. Readers are told to
    /// stop first (a stopped reader hands nothing on) and waited for last,
    /// so that one stuck in a slow request does not delay the release.
    pub(crate) fn stop(&mut self) {
        for (shard_id, _) in self.held.shards() {
            self.runner.stop(&shard_id);
        }
        let given = if self.is_led() {
            self.leave_led()
        } else {
            self.given_not_taken()
        };
        for (shard_id, result) in self.held.leave(&given) {
            match result {
                Ok(()) => log::info!("released lease {shard_id}"),
                Err(e) => log::warn!("releasing lease {shard_id} failed (it will expire): {e}"),
            }
        }
        self.runner.stop_all();
    }

    /// The leases the table gives this worker's id that it neither holds
    /// nor asked for in this run, left alone as an earlier run's: they may
    /// be another live process's under the same id (taken or asked for by
    /// it). None once the failover time passed since this run's first
    /// heartbeat landed: an older process under the id stopped by then.
    fn earlier_runs(&self, rows: &[Row]) -> HashSet<String> {
        let (me, held) = (self.held.owner(), self.held.shard_ids());
        rows.iter()
            .filter_map(Row::lease)
            .filter(|l| l.owner.as_deref() == Some(me) && !held.contains(&l.shard_id))
            .filter(|l| self.is_earlier_runs(l))
            .map(|l| l.shard_id.clone())
            .collect()
    }

    /// True for a lease of this worker's id it does not hold that is left
    /// alone as an earlier run's (see [`Self::earlier_runs`]), or after a
    /// lapsed heartbeat as a namesake's
    /// ([`HeldLeases::may_take_back`]).
    fn is_earlier_runs(&self, lease: &Lease) -> bool {
        !self.held.may_take_back(&lease.shard_id, lease.counter)
            && !self.asked_this_run.contains(&lease.shard_id)
    }

    /// The leases the table gives this worker that it does not hold (with
    /// the counter seen): handed over to it since its last round read the
    /// table. One consistent read, at shutdown only.
    fn given_not_taken(&self) -> Vec<(String, u64)> {
        // Nothing is handed to a worker whose heartbeat never landed: it
        // asked for nothing, and the table may not even be usable.
        if self.held.alive_since().is_none() {
            return Vec::new();
        }
        let held = self.held.shard_ids();
        let me = self.held.owner();
        // Another process beat under our id since our last heartbeat (we
        // were paused, and it started): the leases of the id we do not
        // hold are its own (SIM_FAULTS=suspend,drift,namesakes seeds 1054
        // and 2933 of the workers row: freed while it read them).
        match self.held.table().workers() {
            Ok(row) if self.held.is_last_beat(row.beats.get(me).copied()) => {}
            Ok(_) => return Vec::new(),
            Err(e) => {
                log::warn!(
                    "reading the workers row before leaving failed; leases handed to this worker since its last round will expire: {e}"
                );
                return Vec::new();
            }
        }
        match self.list_rows(true) {
            Ok(rows) => rows
                .iter()
                .filter_map(Row::lease)
                .filter(|l| l.owner.as_deref() == Some(me) && !held.contains(&l.shard_id))
                // Nor are an earlier run's leases ours to free while they
                // may be another live process's under this id.
                .filter(|l| !self.is_earlier_runs(l))
                .filter(|l| !self.held.is_withheld(&l.shard_id))
                .map(|l| (l.shard_id.clone(), l.counter))
                .collect(),
            Err(e) => {
                log::warn!(
                    "reading the lease table before leaving failed; leases handed to this worker since its last round will expire: {e}"
                );
                Vec::new()
            }
        }
    }

    fn log_failure(&self, what: &str, result: Result<impl Sized>) {
        if let Err(e) = result {
            log::warn!("{what} failed, will retry: {e}");
            self.metrics.live().error(format!("{what} failed: {e}"));
        }
    }

    /// The table's rows of the shards this coordinator reads, and of the
    /// leases it still holds (those of a stream just removed, until they
    /// are released after their last checkpoint).
    fn list_rows(&self, consistent: bool) -> Result<Vec<Row>> {
        let rows = self.held.table().list(consistent)?;
        Ok(self.ours(rows))
    }

    /// Of `rows`, those of the shards this coordinator reads and of the
    /// leases it still holds (see [`Self::list_rows`]).
    fn ours(&self, mut rows: Vec<Row>) -> Vec<Row> {
        let held = self.held.shard_ids();
        rows.retain(|r| self.shards.owns(r.shard_id()) || held.contains(r.shard_id()));
        rows
    }

    /// Gives back the held leases of streams no longer read: each is
    /// released once what was handed on is checkpointed (as at a
    /// handoff). Their rows are deleted after the retention period.
    fn retire_streams(&mut self) {
        let now = self.now();
        for stream in self.shards.take_retired() {
            let prefix = format!("{stream}:");
            for (key, _) in self.held.shards() {
                if key.starts_with(&prefix) && self.held.give_back(&key) {
                    self.runner.stop(&key);
                }
            }
            self.former.insert(stream, now);
        }
    }

    /// Deletes the free rows of streams retired longer ago than the
    /// retention period, unless read again since. A row still owned (by
    /// a worker that reads the stream yet) is left alone.
    fn delete_former_streams(&mut self) -> Result<()> {
        let now = self.now();
        let retention = self.timings.former_stream_retention;
        let due: Vec<StreamIdentifier> = self
            .former
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= retention)
            .map(|(stream, _)| stream.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let rows = self.held.table().list(true)?;
        for stream in due {
            let prefix = format!("{stream}:");
            let mut left = 0;
            for lease in rows.iter().filter_map(Row::lease) {
                if !lease.shard_id.starts_with(&prefix) || self.shards.owns(&lease.shard_id) {
                    continue;
                }
                if lease.owner.is_some() {
                    left += 1;
                    continue;
                }
                log::info!(
                    "deleting the lease of {} at {}: its stream is no longer read",
                    lease.shard_id,
                    lease.checkpoint
                );
                self.held
                    .table()
                    .delete_gone(&lease.shard_id, lease.counter)?;
            }
            if left == 0 {
                self.former.remove(&stream);
            }
        }
        Ok(())
    }

    /// Lists the stream, creates leases for new shards following their
    /// lineage, and records children on their parents' leases. The table as
    /// last read serves, unless it lacks a lease for some shard: then it is
    /// read again (consistently) before any lease is created, and every
    /// worker is told of the new leases.
    pub(crate) fn sync_shards(&mut self) -> Result<()> {
        let (shards, service_time) = self.list_shards_beating()?;
        let lineage = Lineage::new(&shards);
        // Pin "latest" by the service's clock where it said, never later
        // than ours: a fast local clock must not skip records.
        let now = SystemTime::now();
        let pin = service_time.map_or(now, |t| t.min(now));
        let mut rows = std::mem::take(&mut self.rows);
        self.retire_streams();
        let initial = |key: &str| {
            let own = self.shards.initial_of(key);
            own.unwrap_or_else(|| self.initial.clone())
        };
        if !plan::new_leases(&rows, &lineage, &initial, pin).is_empty() {
            rows = self.list_rows(true)?;
        }
        self.misses = plan::count_misses(&rows, &lineage, &self.misses);
        let mut created = false;
        let new_leases = plan::new_leases(&rows, &lineage, &initial, pin);
        for lease in new_leases {
            self.beat_if_due();
            if self.held.table().create(&lease)? {
                created = true;
                log::info!(
                    "new lease for shard {} (parents: {}) at {}",
                    lease.shard_id,
                    super::shard_list(&lease.parents),
                    lease.checkpoint
                );
            }
        }
        if created {
            self.read_due = true;
            self.held.tell(None, || "of new leases".to_owned());
        }
        for lease in rows.iter().filter_map(Row::lease) {
            let children = lineage.children(&lease.shard_id);
            if children
                .iter()
                .any(|c| !lease.children.iter().any(|k| k == c))
            {
                let children: Vec<String> = children.iter().map(|c| (*c).to_owned()).collect();
                self.beat_if_due();
                self.held.table().set_children(&lease.shard_id, &children)?;
            }
        }
        self.rows = rows;
        self.listed = Some(shards);
        Ok(())
    }

    /// Reads the table, then takes unowned and expired leases, asks the
    /// busiest workers to hand leases over towards an even share, cleans up
    /// finished leases, and starts reading every held shard whose parents
    /// are finished. Until the table is settled (see
    /// [`RoundPlan::settled`]) it is read again at the next round.
    pub(crate) fn read_and_plan(&mut self, consistent: bool) -> Result<()> {
        if self.listed.is_none() {
            self.sync_shards()?;
        }
        self.beat_if_due();
        let mut rows = self.list_rows(consistent)?;
        let listed = Lineage::new(self.listed.as_deref().unwrap_or_default());
        if !consistent && plan::parent_may_be_unseen(&rows, &listed) {
            rows = self.list_rows(true)?;
        }
        if plan::names_unlisted_shard(&rows, &listed, &self.misses) {
            // The shard sync works on `self.rows` and may read them again.
            self.rows = rows;
            self.sync_shards()?;
            rows = std::mem::take(&mut self.rows);
        }
        let now = self.now();
        let me = self.held.owner().to_owned();
        self.observe(&rows, now, &me)?;
        self.note_not_found();
        if !self.reported_not_found.is_empty() {
            self.rows = rows;
            self.check_not_found()?;
            rows = std::mem::take(&mut self.rows);
        }
        // Borrowed out while the round runs; put back below.
        let listed = self.listed.take().unwrap_or_default();
        let result = self.plan_and_carry_out(&rows, &listed, now, &me);
        self.listed = Some(listed);
        self.read_due = !result?;
        self.next_full_read = now + self.timings.failover * FULL_READ_EVERY;
        self.forget_dead_workers(&rows);
        self.show_table(&rows);
        self.rows = rows;
        Ok(())
    }

    /// Lists the stream again for the shards readers were told do not
    /// exist: a listing newer than the reports tells a shard that is gone
    /// from one the service did not know for a moment (stale state behind
    /// its front end), whose lease would stay held unread. Returns those
    /// still listed, whose readers it stopped to be started again.
    fn check_not_found(&mut self) -> Result<Vec<String>> {
        self.sync_shards()?;
        let mut again = Vec::new();
        for shard_id in std::mem::take(&mut self.reported_not_found) {
            if self.misses.contains_key(&shard_id) {
                self.not_found.insert(shard_id);
            } else {
                log::warn!(
                    "shard {shard_id}: the service said it does not exist, but the stream lists it; reading it again"
                );
                self.runner.stop(&shard_id);
                again.push(shard_id);
            }
        }
        Ok(again)
    }

    /// Keeps the table as just read for the status page.
    fn show_table(&self, rows: &[Row]) {
        let leases = rows.iter().filter_map(Row::lease).map(|l| LeaseRow {
            shard_id: l.shard_id.clone(),
            owner: l.owner.clone(),
            checkpoint: l.checkpoint.to_columns().0.to_owned(),
        });
        self.metrics.live().table_read(leases.collect());
    }

    /// Takes dead workers out of the workers row once no lease names them,
    /// so that the row stays the size of the live fleet.
    fn forget_dead_workers(&mut self, rows: &[Row]) {
        for (worker, beat) in self.peers.dead() {
            let owns = rows
                .iter()
                .filter_map(Row::lease)
                .any(|l| l.owner.as_deref() == Some(worker.as_str()));
            if !owns {
                log::info!("worker {worker} is dead and holds no lease: forgetting it");
                self.log_failure(
                    "forgetting a dead worker",
                    self.held.table().forget_worker(&worker, Some(beat)),
                );
            }
        }
    }

    /// Carries a round out; true when the table is settled.
    fn plan_and_carry_out(
        &mut self,
        rows: &[Row],
        listed: &[Shard],
        now: Instant,
        me: &str,
    ) -> Result<bool> {
        let lineage = Lineage::new(listed);
        let mut gone = plan::gone(&self.misses, &self.not_found);
        // A held lease of a stream no longer read is unlisted until it is
        // released, never gone: its row goes after the retention period.
        gone.retain(|key| self.shards.owns(key));
        let standings = plan::standings(rows, &lineage, &gone);
        self.report(&standings);
        let (stale, unclaimed) = self.judge_leases(rows, now, me);
        let live: BTreeSet<String> = self.peers.live();
        let overdue = self.overdue_handoffs();
        let held = self.held.shard_ids();
        let earlier_runs = self.earlier_runs(rows);
        let plan = plan::plan_round(&RoundInput {
            me,
            rows,
            standings: &standings,
            lineage: &lineage,
            gone: &gone,
            held: &held,
            stale: &stale,
            unclaimed: &unclaimed,
            live: &live,
            handoff_overdue: &overdue,
            max_leases: self.timings.max_leases_per_worker,
            earlier_runs: &earlier_runs,
            caps: self.peers.caps(),
            departed: &self.departed(rows, now),
        });
        self.carry_out(&plan, rows, &held)?;
        Ok(plan.settled)
    }

    /// Owners of leases that were in the workers row and left it longer
    /// ago than we keep them as vanished (twice the failover time): a
    /// stream added back shows us their rows only now, so we have not
    /// watched them stand still, yet they count for no share (namesakes
    /// seed 1311: w2 counted w1, killed 75 s before, reached its share and
    /// left a dead worker's lease to a worker at its cap).
    fn departed(&self, rows: &[Row], now: Instant) -> HashSet<String> {
        rows.iter()
            .filter_map(Row::lease)
            .filter_map(|l| l.owner.as_deref())
            .filter(|o| {
                !self.peers.is_member(o)
                    && self.peers.was_ever_member(o)
                    && self.peers.vanished_for(o, now).is_none()
            })
            .map(str::to_owned)
            .collect()
    }

    /// Leases of owners presumed dead (a member whose heartbeat stood
    /// still for the failover time, or an owner outside the members whose
    /// lease counter did), and the free ones nobody took for twice the
    /// failover time.
    fn judge_leases(
        &self,
        rows: &[Row],
        now: Instant,
        me: &str,
    ) -> (HashSet<String>, HashSet<String>) {
        let failover = self.timings.failover;
        let (mut stale, mut unclaimed) = (HashSet::new(), HashSet::new());
        for lease in rows.iter().filter_map(Row::lease) {
            let still = self
                .observed
                .get(&lease.shard_id)
                .map_or(Duration::ZERO, |seen| now.duration_since(seen.since));
            // A member's leases stand still as long as its heartbeat does:
            // the table may not have been read since it last beat.
            let (expired, still) = match lease.owner.as_deref() {
                None => (false, still),
                Some(owner) if owner == me => (false, Duration::ZERO),
                Some(owner) if self.peers.is_member(owner) => {
                    (self.peers.is_dead(owner), self.peers.still_for(owner, now))
                }
                // A worker that left the row lately may be beating again
                // soon (the row was deleted): not dead until it had time.
                Some(owner) => {
                    let still = self
                        .peers
                        .vanished_for(owner, now)
                        .map_or(still, |v| v.min(still));
                    (has_waited(still, failover), still)
                }
            };
            if expired {
                stale.insert(lease.shard_id.clone());
            }
            if (expired || lease.owner.is_none()) && has_waited(still, failover * 2) {
                unclaimed.insert(lease.shard_id.clone());
            }
        }
        (stale, unclaimed)
    }

    /// The asks seen in flight for the failover time or more: no longer
    /// waited for.
    fn overdue_handoffs(&self) -> HashSet<String> {
        self.handoffs_seen
            .keys()
            .filter(|id| self.overdue(id))
            .cloned()
            .collect()
    }

    /// True when the lease was asked for this worker the failover time ago
    /// or more and has not come.
    fn overdue(&self, shard_id: &str) -> bool {
        self.handoffs_seen.get(shard_id).is_some_and(|since| {
            has_waited(self.now().duration_since(*since), self.timings.failover)
        })
    }

    /// Stops this worker's readers with a configuration error for
    /// `setting` (the fleet cannot go on as configured) and returns the
    /// same error for the caller.
    fn stop_for_setting(&mut self, setting: &'static str, why: String) -> Error {
        self.runner.fail(Error::config(setting, why.clone()));
        Error::config(setting, why)
    }

    /// Notes, for every lease, since when its owner and counter stood still
    /// (or its owner was last seen alive), and since when it has been asked
    /// of its owner for this worker. Fails when an owner outside the
    /// workers row keeps renewing its leases: a worker that writes no
    /// heartbeat (the KCL, or an older version of this library) shares the
    /// table, which is unsafe (it would take our leases as expired).
    fn observe(&mut self, rows: &[Row], now: Instant, me: &str) -> Result<()> {
        let in_table: HashSet<&str> = rows.iter().map(Row::shard_id).collect();
        self.observed.retain(|id, _| in_table.contains(id.as_str()));
        self.misses.retain(|id, _| in_table.contains(id.as_str()));
        self.not_found.retain(|id| in_table.contains(id.as_str()));
        self.reported.retain(|id, _| in_table.contains(id.as_str()));
        let outsiders: HashSet<&str> = rows
            .iter()
            .filter_map(Row::lease)
            .filter_map(|l| l.owner.as_deref())
            .filter(|o| *o != me && !self.peers.was_ever_member(o))
            .collect();
        self.outsiders.retain(|o, _| outsiders.contains(o.as_str()));
        for outsider in outsiders {
            self.outsiders.entry(outsider.to_owned()).or_insert(now);
        }
        for lease in rows.iter().filter_map(Row::lease) {
            let seen = self
                .observed
                .entry(lease.shard_id.clone())
                .or_insert_with(|| Observed::of(lease, now));
            let owner = lease.owner.as_deref();
            // Renewed (only its counter moved) by an owner never seen in the
            // workers row, after we had watched it for a heartbeat period
            // (the lease we compare with was seen that late): a worker of
            // ours beats before its first lease write, and our own
            // heartbeat shows it to us within that period.
            let renewed_by_outsider = seen.renewed_to(lease)
                && owner
                    .and_then(|o| self.outsiders.get(o))
                    .is_some_and(|since| {
                        has_waited(
                            seen.since.saturating_duration_since(*since),
                            self.timings.heartbeat_interval,
                        )
                    });
            if renewed_by_outsider {
                let owner = owner.unwrap_or_default();
                let why = format!(
                    "the lease table is in use by worker {owner:?}, which renews lease {} but writes no heartbeat in the workers row: a KCL worker or an older version of this library. Sharing one table with it at the same time is unsafe (each would take the other's leases as expired); stop it first, or give this consumer another lease_table_name",
                    lease.shard_id
                );
                return Err(self.stop_for_setting("lease_table_name", why));
            }
            let alive = owner.is_some_and(|o| self.peers.is_member(o) && !self.peers.is_dead(o));
            if alive || seen.owner != lease.owner || seen.counter != lease.counter {
                *seen = Observed::of(lease, now);
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
        Ok(())
    }

    /// Logs, once per row and standing, what keeps a shard from being read.
    fn report(&mut self, standings: &HashMap<String, Standing>) {
        for (shard_id, standing) in standings {
            if self.reported.get(shard_id) == Some(standing) {
                continue;
            }
            match standing {
                Standing::Blocked(parents) => {
                    log::info!(
                        "shard {shard_id} waits for its parents ({}) to finish",
                        super::shard_list(parents)
                    )
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
        self.note_handoffs(rows, held);
        self.delete(&plan.delete, rows)?;
        self.release(plan)?;
        self.disown(plan)?;
        let (taken, handed_over) = self.take(plan, rows)?;
        let asked = self.ask(plan, rows)?;
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
                "lease {shard_id} lost: now {}",
                owned_by(lease_of(rows, shard_id).and_then(|l| l.owner.as_deref()))
            );
            self.runner.stop(shard_id);
            self.held.drop_lost(shard_id);
        }
    }

    /// Hands over the held leases another worker asked for: their readers
    /// stop, and the ticker releases them to the asker once what was
    /// delivered is checkpointed.
    fn note_handoffs(&mut self, rows: &[Row], held: &HashSet<String>) {
        for lease in rows.iter().filter_map(Row::lease) {
            let Some(to) = lease.handoff_to.as_deref() else {
                continue;
            };
            if held.contains(&lease.shard_id)
                && lease.owner.as_deref() == Some(self.held.owner())
                && self.held.hand_over(&lease.shard_id, to)
            {
                self.runner.stop(&lease.shard_id);
            }
        }
    }

    /// Deletes the leases of shards read to their end, and of shards gone
    /// from the stream (whose reading stops).
    fn delete(&mut self, delete: &[String], rows: &[Row]) -> Result<()> {
        for shard_id in delete {
            match lease_of(rows, shard_id) {
                Some(l) if l.checkpoint == Checkpoint::ShardEnd => {
                    log::info!("deleting the lease of finished shard {shard_id}");
                    self.held.table().delete_finished(shard_id)?;
                }
                Some(l) => {
                    log::warn!(
                        "deleting the lease of shard {shard_id}, gone from the stream at {}",
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

    /// Frees the leases the table gives this worker that it has no room
    /// for, and tells every worker.
    fn disown(&mut self, plan: &RoundPlan) -> Result<()> {
        for (shard_id, counter) in &plan.disown {
            log::info!("freeing lease {shard_id}: ours from an earlier run, but no room for it");
            self.held
                .table()
                .release(shard_id, self.held.owner(), *counter, None)?;
        }
        if !plan.disown.is_empty() {
            self.held.table().notify(None)?;
        }
        Ok(())
    }

    /// Takes the planned leases; returns how many were taken unasked and
    /// how many were handed over as asked.
    fn take(&mut self, plan: &RoundPlan, rows: &[Row]) -> Result<(u32, u32)> {
        let (mut taken, mut handed_over) = (0u32, 0u32);
        for (shard_id, counter) in &plan.take {
            self.beat_if_due();
            let lease = lease_of(rows, shard_id);
            let owner = lease.and_then(|l| l.owner.clone());
            // A child's first checkpoint frees its parents' leases for
            // deletion: every worker is told when it is written.
            let announce =
                lease.is_some_and(|l| !l.parents.is_empty() && !l.checkpoint.has_started());
            if self.held.take(shard_id, *counter, announce)?.is_some() {
                log::info!("took lease {shard_id} (was {})", owned_by(owner.as_deref()));
                if self.handoffs_seen.remove(shard_id).is_some() {
                    handed_over += 1;
                } else {
                    taken += 1;
                }
            }
        }
        Ok((taken, handed_over))
    }

    /// Asks busier workers to hand leases over, and tells every worker
    /// asked (now, or earlier and still waited for) to read the table;
    /// returns how many leases were asked for.
    fn ask(&mut self, plan: &RoundPlan, rows: &[Row]) -> Result<u32> {
        let mut asked = 0u32;
        let me = self.held.owner().to_owned();
        for (shard_id, owner, counter) in &plan.ask {
            if self
                .held
                .table()
                .request_handoff(shard_id, owner, *counter, &me)?
            {
                log::info!("asked {owner} to hand lease {shard_id} over");
                self.asked_this_run.insert(shard_id.clone());
                self.handoffs_seen.insert(shard_id.clone(), self.now());
                asked += 1;
            }
        }
        // Each owner asked reads the table at its next heartbeat; told
        // again each round, as a notice can be lost.
        let waited_for = rows
            .iter()
            .filter_map(Row::lease)
            .filter(|l| l.handoff_to.as_deref() == Some(me.as_str()))
            .filter(|l| self.handoffs_seen.contains_key(&l.shard_id))
            .filter(|l| !self.overdue(&l.shard_id))
            .filter_map(|l| l.owner.as_deref());
        let owners: BTreeSet<&str> = plan
            .ask
            .iter()
            .map(|(_, o, _)| o.as_str())
            .chain(waited_for)
            .filter(|o| *o != me)
            .collect();
        for owner in owners {
            self.log_failure(
                "telling a worker of an ask",
                self.held.table().notify(Some(owner)),
            );
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
            self.start_reader(&shard_id, epoch, &lease.checkpoint);
        }
    }

    /// Starts reading a held lease from its checkpoint.
    fn start_reader(&mut self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint) {
        log::info!("starting shard {shard_id} at {checkpoint}");
        self.runner.start(shard_id, epoch, checkpoint);
    }
}

/// Who holds a lease, for a log line: `owned by <worker>` or `free`.
fn owned_by(owner: Option<&str>) -> String {
    match owner {
        Some(owner) => format!("owned by {owner}"),
        None => "free".to_owned(),
    }
}
