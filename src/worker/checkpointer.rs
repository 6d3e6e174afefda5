//! Checkpoints: the one place they are checked and written, for the
//! automatic checkpoints after each batch and for the application's own
//! through [`Checkpointer`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::error::{Error, Result};
use crate::lease::{Checkpoint, CoordinatorEvent, HeldLeases, Holding};
use crate::metrics::{Metric, Metrics};
use crate::record::{ExtendedSequenceNumber, Record};
use crate::sync::lock;

/// Writes checkpoints of the shards this worker holds, from any thread and
/// at any time: also after the batch handler returned, several batches
/// later, once the application's sink has made the records durable.
///
/// Get one from [`Consumer::checkpointer`](crate::Consumer::checkpointer)
/// (before `run`) or from a batch; clones share everything.
///
/// A position may be checkpointed once the handler accepted it: the batch
/// handler (or shard processor) call that held its record returned `Ok`.
/// During that call, and on that call's thread only, the call's own
/// records may be checkpointed too (as the KCL's `processRecords` does);
/// from any other thread, such as a flusher's, a call still running or
/// failing (also between its retries) holds nothing that may be
/// checkpointed. Records of a call that failed are never checkpointed
/// through here, also not from a later `shutdown_requested`.
///
/// Positions are those of the lease's current ownership (its epoch): when
/// a lease is lost and taken again, positions accepted before do not count
/// for the new ownership. The checkpointer a [`ShardProcessor`](crate::ShardProcessor)
/// is given (and its clones) belongs to its processor's ownership of the
/// shard: once that ended, it checkpoints nothing of the shard (it fails
/// with [`Error::LeaseLost`]), also when this worker holds the shard again.
///
/// The write is conditional on the lease in DynamoDB, as the automatic
/// checkpoints are: once another worker took the lease, the call fails with
/// [`Error::LeaseLost`] and writes nothing. A position not handed on yet, not
/// accepted yet, or behind the checkpoint, fails with
/// [`Error::InvalidCheckpoint`]. Calls block for the DynamoDB write.
///
/// With [`Checkpointing::Automatic`](crate::Checkpointing::Automatic) (the
/// default) the consumer also checkpoints after each batch; calls here may
/// then find the checkpoint already ahead of them.
#[derive(Clone)]
pub struct Checkpointer {
    inner: Arc<Shared>,
    /// For a shard processor's: its shard and the lease epoch it was made
    /// under; positions of that shard under other epochs are refused.
    pinned: Option<(Arc<str>, u64)>,
}

impl fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

struct Shared {
    store: Arc<dyn CheckpointStore>,
    metrics: Metrics,
    shards: Mutex<HashMap<Arc<str>, Arc<ShardState>>>,
}

/// Where a checkpointer's writes go, the way ureq's `Transport` is where
/// its requests go: the lease table for the consumer ([`LeaseStore`]), a
/// record of the writes for [`testing`](crate::testing). Every check of a
/// position is the checkpointer's, made before the store is asked, so the
/// two refuse the same calls with the same errors.
pub(crate) trait CheckpointStore: Send + Sync {
    /// Where the lease of `shard_id` under `epoch` stands.
    fn holding(&self, shard_id: &str, epoch: u64) -> Holding;

    /// Writes `checkpoint` if the lease of `shard_id` is still ours under
    /// `epoch`: `Ok(false)` when it is not (nothing written).
    fn write(&self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint) -> Result<bool>;

    /// The end of `shard_id` was written (its children may start).
    fn shard_finished(&self, shard_id: &str) {
        let _ = shard_id;
    }

    /// A call of the application's was refused with `error`, nothing
    /// written.
    fn refused(&self, error: &Error) {
        let _ = error;
    }
}

/// The consumer's store: conditional writes to the lease table through
/// the leases held; a shard's end written tells the coordinator, which
/// starts its children.
struct LeaseStore {
    held: Arc<HeldLeases>,
    coordinator: Sender<CoordinatorEvent>,
}

impl CheckpointStore for LeaseStore {
    fn holding(&self, shard_id: &str, epoch: u64) -> Holding {
        self.held.holding(shard_id, epoch)
    }

    fn write(&self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint) -> Result<bool> {
        self.held.checkpoint(shard_id, epoch, checkpoint)
    }

    fn shard_finished(&self, shard_id: &str) {
        let _ = self
            .coordinator
            .send(CoordinatorEvent::ShardFinished(shard_id.to_string()));
    }
}

/// One gained shard, under one lease epoch.
struct ShardState {
    shard_id: Arc<str>,
    epoch: u64,
    /// Held across a write: one write at a time per shard, so that two
    /// threads cannot write positions out of order.
    writing: Mutex<()>,
    positions: Mutex<Positions>,
}

/// What the handler accepted, what a call holds now, and what is written,
/// for one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Positions {
    /// The last position whose handler call returned `Ok`: a record, or
    /// the end of the shard.
    pub accepted: Option<Checkpoint>,
    /// A handler call running now (retries included): the last position it
    /// was handed, and the thread it runs on.
    pub in_call: Option<(Checkpoint, ThreadId)>,
    /// The shard's checkpoint: where it was gained, or the last written.
    pub written: Checkpoint,
}

impl Positions {
    /// The furthest position `caller` may checkpoint: the running call's,
    /// on that call's thread; otherwise the last accepted.
    pub(crate) fn limit(&self, caller: ThreadId) -> Option<&Checkpoint> {
        match &self.in_call {
            Some((position, thread)) if *thread == caller => Some(position),
            _ => self.accepted.as_ref(),
        }
    }
}

/// Orders checkpoints along a shard: any starting position, then records
/// by sequence number, then the shard's end.
fn compare(a: &Checkpoint, b: &Checkpoint) -> Ordering {
    fn rank(c: &Checkpoint) -> u8 {
        match c {
            Checkpoint::At(_) => 1,
            Checkpoint::ShardEnd => 2,
            _ => 0,
        }
    }
    match (a, b) {
        (Checkpoint::At(a), Checkpoint::At(b)) => a.cmp(b),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Whether `position` is at or before `limit` along the shard (a starting
/// position never is: it names no record).
fn within(position: &Checkpoint, limit: &Checkpoint) -> bool {
    match position {
        Checkpoint::At(_) => compare(position, limit) != Ordering::Greater,
        Checkpoint::ShardEnd => *limit == Checkpoint::ShardEnd,
        _ => false,
    }
}

/// Whether `caller` may write `wanted` over `positions`: `Ok(true)` to
/// write, `Ok(false)` when it is the checkpoint already, or why not.
pub(crate) fn check(
    positions: &Positions,
    wanted: &Checkpoint,
    caller: ThreadId,
) -> Result<bool, String> {
    let limit = positions.limit(caller);
    if !limit.is_some_and(|limit| within(wanted, limit)) {
        // Handed to a call running on another thread, or failing.
        if let Some((held, _)) = &positions.in_call {
            if within(wanted, held) {
                return Err(format!(
                    "{} is not accepted yet: the handler call holding it has not returned Ok (only that call, on its own thread, may checkpoint it before)",
                    describe(wanted)
                ));
            }
        }
        let handed = positions
            .in_call
            .as_ref()
            .map(|(held, _)| held)
            .or(positions.accepted.as_ref());
        return Err(match handed {
            Some(handed) => format!(
                "{} was not handed on (the last position handed on is {})",
                describe(wanted),
                describe(handed)
            ),
            None => format!(
                "{} was not handed on: nothing of the shard was handed on yet",
                describe(wanted)
            ),
        });
    }
    match compare(wanted, &positions.written) {
        Ordering::Less => Err(format!(
            "{} is behind the shard's checkpoint, {}",
            describe(wanted),
            describe(&positions.written)
        )),
        Ordering::Equal => Ok(false),
        Ordering::Greater => Ok(true),
    }
}

fn describe(c: &Checkpoint) -> String {
    match c {
        Checkpoint::At(p) => format!(
            "sequence number {} (sub-sequence {})",
            p.sequence_number, p.sub_sequence_number
        ),
        Checkpoint::ShardEnd => "the end of the shard".into(),
        other => format!("the starting position {other:?}"),
    }
}

impl Checkpointer {
    pub(crate) fn new(
        held: Arc<HeldLeases>,
        coordinator: Sender<CoordinatorEvent>,
        metrics: Metrics,
    ) -> Checkpointer {
        Checkpointer::with_store(Arc::new(LeaseStore { held, coordinator }), metrics)
    }

    /// A checkpointer writing to `store`.
    pub(crate) fn with_store(store: Arc<dyn CheckpointStore>, metrics: Metrics) -> Checkpointer {
        Checkpointer {
            inner: Arc::new(Shared {
                store,
                metrics,
                shards: Mutex::new(HashMap::new()),
            }),
            pinned: None,
        }
    }

    /// The checkpointer of a shard processor made for `shard_id` under
    /// `epoch`: it checkpoints nothing of that shard under another epoch.
    pub(crate) fn pinned(&self, shard_id: &Arc<str>, epoch: u64) -> Checkpointer {
        Checkpointer {
            inner: self.inner.clone(),
            pinned: Some((shard_id.clone(), epoch)),
        }
    }

    /// Checkpoints `shard_id` at the last position the handler accepted (its
    /// last record, or its end when the shard ended); called during a
    /// handler call on its thread, at the last position of that call.
    /// Does nothing when nothing of the shard was accepted yet.
    pub fn checkpoint(&self, shard_id: &str) -> Result<()> {
        let result = self.state(shard_id).and_then(|state| {
            let caller = std::thread::current().id();
            let limit = lock(&state.positions).limit(caller).cloned();
            match limit {
                Some(position) => self.write_state(&state, &position),
                None => Ok(()),
            }
        });
        self.noted(result)
    }

    /// Checkpoints `record`'s shard at `record`: processed up to and
    /// including it.
    pub fn checkpoint_record(&self, record: &Record) -> Result<()> {
        self.checkpoint_at(record.shard_id(), record.position())
    }

    /// Checkpoints `shard_id` at `position` (a sequence number and, for
    /// records of a KPL aggregate, a sub-sequence number).
    pub fn checkpoint_at(&self, shard_id: &str, position: &ExtendedSequenceNumber) -> Result<()> {
        let result = self
            .state(shard_id)
            .and_then(|state| self.write_state(&state, &Checkpoint::At(position.clone())));
        self.noted(result)
    }

    /// Tells the store of an application's call refused.
    fn noted(&self, result: Result<()>) -> Result<()> {
        if let Err(error @ (Error::LeaseLost { .. } | Error::InvalidCheckpoint { .. })) = &result {
            self.inner.store.refused(error);
        }
        result
    }

    fn state(&self, shard_id: &str) -> Result<Arc<ShardState>> {
        let lost = || Error::LeaseLost {
            shard_id: shard_id.to_owned(),
        };
        let state = lock(&self.inner.shards)
            .get(shard_id)
            .cloned()
            .ok_or_else(lost)?;
        match &self.pinned {
            // A processor of an ended ownership of the shard.
            Some((pinned, epoch)) if **pinned == *shard_id && *epoch != state.epoch => Err(lost()),
            _ => Ok(state),
        }
    }

    /// A shard was gained under `epoch`, to be read from `from`.
    pub(crate) fn gained(&self, shard_id: &Arc<str>, epoch: u64, from: &Checkpoint) {
        let state = ShardState {
            shard_id: shard_id.clone(),
            epoch,
            writing: Mutex::new(()),
            positions: Mutex::new(Positions {
                accepted: None,
                in_call: None,
                written: from.clone(),
            }),
        };
        lock(&self.inner.shards).insert(shard_id.clone(), Arc::new(state));
    }

    /// Applies `change` to the positions of `shard_id` under `epoch`.
    fn update(&self, shard_id: &str, epoch: u64, change: impl FnOnce(&mut Positions)) {
        if let Some(state) = lock(&self.inner.shards).get(shard_id) {
            if state.epoch == epoch {
                change(&mut lock(&state.positions));
            }
        }
    }

    /// Records of `shard_id` up to `position` are handed to a handler call
    /// on this thread.
    pub(crate) fn handing(&self, shard_id: &str, epoch: u64, position: Checkpoint) {
        let thread = std::thread::current().id();
        self.update(shard_id, epoch, |p| p.in_call = Some((position, thread)));
    }

    /// The handler call holding records of `shard_id` returned: they are
    /// accepted when it returned `Ok`, and never otherwise.
    pub(crate) fn call_ended(&self, shard_id: &str, epoch: u64, ok: bool) {
        self.update(shard_id, epoch, |p| {
            if let Some((position, _)) = p.in_call.take() {
                if ok {
                    p.accepted = Some(position);
                }
            }
        });
    }

    /// The shard under `epoch` is no longer this worker's to checkpoint.
    pub(crate) fn closed(&self, shard_id: &str, epoch: u64) {
        let mut shards = lock(&self.inner.shards);
        if shards.get(shard_id).is_some_and(|s| s.epoch == epoch) {
            shards.remove(shard_id);
        }
    }

    /// True once the end of the shard under `epoch` is checkpointed.
    pub(crate) fn is_finished(&self, shard_id: &str, epoch: u64) -> bool {
        lock(&self.inner.shards)
            .get(shard_id)
            .is_some_and(|s| s.epoch == epoch && lock(&s.positions).written == Checkpoint::ShardEnd)
    }

    /// Writes `wanted` for the shard gained under `epoch` (the automatic
    /// checkpoints).
    pub(crate) fn write(&self, shard_id: &str, epoch: u64, wanted: &Checkpoint) -> Result<()> {
        let state = self.state(shard_id)?;
        if state.epoch != epoch {
            return Err(Error::LeaseLost {
                shard_id: shard_id.to_owned(),
            });
        }
        self.write_state(&state, wanted)
    }

    fn write_state(&self, state: &ShardState, wanted: &Checkpoint) -> Result<()> {
        let shard_id = &state.shard_id;
        let _writing = lock(&state.writing);
        if self.inner.store.holding(shard_id, state.epoch) == Holding::Gone {
            return Err(Error::LeaseLost {
                shard_id: shard_id.to_string(),
            });
        }
        let positions = lock(&state.positions).clone();
        let caller = std::thread::current().id();
        let needed =
            check(&positions, wanted, caller).map_err(|reason| Error::InvalidCheckpoint {
                shard_id: shard_id.to_string(),
                reason,
            })?;
        if !needed {
            return Ok(());
        }
        let inner = &self.inner;
        let started = Instant::now();
        let result = inner.store.write(shard_id, state.epoch, wanted);
        inner.metrics.record(
            Some(shard_id),
            &[
                (
                    Metric::CheckpointSuccess,
                    f64::from(u8::from(matches!(result, Ok(true)))),
                ),
                (
                    Metric::CheckpointTime,
                    started.elapsed().as_secs_f64() * 1000.0,
                ),
            ],
        );
        if let Err(e) = &result {
            inner
                .metrics
                .live()
                .error(format!("checkpoint of {shard_id} failed: {e}"));
        }
        match result? {
            true => {
                inner
                    .metrics
                    .live()
                    .checkpointed(shard_id, wanted.to_columns().0);
                lock(&state.positions).written = wanted.clone();
                log::debug!("checkpointed {shard_id} at {wanted:?}");
                if *wanted == Checkpoint::ShardEnd {
                    inner.store.shard_finished(shard_id);
                }
                Ok(())
            }
            false => Err(Error::LeaseLost {
                shard_id: shard_id.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SequenceNumber;
    use std::thread::ThreadId;

    fn at(sequence: &str, sub: u64) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse(sequence).unwrap(),
            sub_sequence_number: sub,
        })
    }

    fn positions(accepted: Option<Checkpoint>, written: Checkpoint) -> Positions {
        Positions {
            accepted,
            in_call: None,
            written,
        }
    }

    fn me() -> ThreadId {
        std::thread::current().id()
    }

    fn another_thread() -> ThreadId {
        std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap()
    }

    #[test]
    fn a_position_accepted_and_ahead_of_the_checkpoint_is_written() {
        let p = positions(Some(at("30", 0)), Checkpoint::TrimHorizon);
        assert_eq!(check(&p, &at("10", 0), me()), Ok(true));
        assert_eq!(check(&p, &at("30", 0), me()), Ok(true));
        let p = positions(Some(at("30", 0)), at("10", 0));
        assert_eq!(check(&p, &at("20", 0), me()), Ok(true));
        assert_eq!(check(&p, &at("10", 0), me()), Ok(false), "already there");
    }

    #[test]
    fn a_position_not_handed_on_is_refused() {
        let nothing = positions(None, Checkpoint::TrimHorizon);
        let e = check(&nothing, &at("10", 0), me()).unwrap_err();
        assert!(e.contains("nothing of the shard was handed on"), "{e}");
        let p = positions(Some(at("30", 0)), Checkpoint::TrimHorizon);
        let e = check(&p, &at("31", 0), me()).unwrap_err();
        assert!(e.contains("was not handed on"), "{e}");
        assert!(
            check(&p, &at("30", 1), me()).is_err(),
            "a later sub-sequence"
        );
        assert!(
            check(&p, &Checkpoint::ShardEnd, me()).is_err(),
            "the end was not reached"
        );
        assert!(check(&p, &Checkpoint::TrimHorizon, me()).is_err());
    }

    #[test]
    fn a_position_behind_the_checkpoint_is_refused() {
        let p = positions(Some(at("30", 0)), at("20", 5));
        let e = check(&p, &at("20", 4), me()).unwrap_err();
        assert!(e.contains("behind the shard's checkpoint"), "{e}");
        assert_eq!(check(&p, &at("20", 6), me()), Ok(true));
    }

    #[test]
    fn the_end_of_a_shard_follows_every_record_once_accepted() {
        let p = positions(Some(Checkpoint::ShardEnd), at("20", 0));
        assert_eq!(check(&p, &Checkpoint::ShardEnd, me()), Ok(true));
        assert_eq!(
            check(&p, &at("999", 0), me()),
            Ok(true),
            "a record before the end"
        );
        let done = positions(Some(Checkpoint::ShardEnd), Checkpoint::ShardEnd);
        assert_eq!(check(&done, &Checkpoint::ShardEnd, me()), Ok(false));
        assert!(check(&done, &at("20", 0), me()).is_err(), "behind the end");
    }

    #[test]
    fn a_running_call_s_records_are_checkpointed_only_from_its_own_thread() {
        let mut p = positions(Some(at("10", 0)), Checkpoint::TrimHorizon);
        p.in_call = Some((at("30", 0), me()));
        // The call itself may checkpoint what it holds (the KCL's way).
        assert_eq!(p.limit(me()), Some(&at("30", 0)));
        assert_eq!(check(&p, &at("30", 0), me()), Ok(true));
        // A flusher thread: only what was accepted before.
        let flusher = another_thread();
        assert_eq!(p.limit(flusher), Some(&at("10", 0)));
        assert_eq!(check(&p, &at("10", 0), flusher), Ok(true));
        let e = check(&p, &at("20", 0), flusher).unwrap_err();
        assert!(e.contains("not accepted yet"), "{e}");
        let e = check(&p, &at("31", 0), flusher).unwrap_err();
        assert!(e.contains("was not handed on"), "{e}");
        // Nothing accepted yet: a flusher has nothing to checkpoint.
        p.accepted = None;
        assert_eq!(p.limit(flusher), None);
        assert!(check(&p, &at("10", 0), flusher).is_err());
    }
}
