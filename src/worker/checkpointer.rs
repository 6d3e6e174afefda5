//! Checkpoints: the one place they are checked and written, for the
//! automatic checkpoints after each batch and for the application's own
//! through [`Checkpointer`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
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
/// A position is accepted when it was handed to the application for a shard
/// whose lease this worker still holds, and is not behind the shard's
/// checkpoint. The write is conditional on the lease in DynamoDB, as the
/// automatic checkpoints are: once another worker took the lease, the call
/// fails with [`Error::LeaseLost`] and writes nothing. A position not
/// handed on yet, or behind the checkpoint, fails with
/// [`Error::InvalidCheckpoint`]. Calls block for the DynamoDB write.
///
/// With [`Checkpointing::Automatic`](crate::Checkpointing::Automatic) (the
/// default) the consumer also checkpoints after each batch; calls here may
/// then find the checkpoint already ahead of them.
#[derive(Clone)]
pub struct Checkpointer {
    inner: Arc<Shared>,
}

impl fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

struct Shared {
    held: Arc<HeldLeases>,
    coordinator: Sender<CoordinatorEvent>,
    metrics: Metrics,
    shards: Mutex<HashMap<Arc<str>, Arc<ShardState>>>,
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

/// What was handed on and what is written, for one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Positions {
    /// The last position handed to the application: a record, or the end
    /// of the shard once its last records were handed on.
    pub handed: Option<Checkpoint>,
    /// The shard's checkpoint: where it was gained, or the last written.
    pub written: Checkpoint,
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

/// Whether `wanted` may be written over `positions`: `Ok(true)` to write,
/// `Ok(false)` when it is the checkpoint already, or why not.
pub(crate) fn check(positions: &Positions, wanted: &Checkpoint) -> Result<bool, String> {
    let Some(handed) = &positions.handed else {
        return Err(format!(
            "{} was not handed on: nothing of the shard was handed on yet",
            describe(wanted)
        ));
    };
    let handed_on = match wanted {
        Checkpoint::At(_) => compare(wanted, handed) != Ordering::Greater,
        Checkpoint::ShardEnd => *handed == Checkpoint::ShardEnd,
        _ => false,
    };
    if !handed_on {
        return Err(format!(
            "{} was not handed on (the last position handed on is {})",
            describe(wanted),
            describe(handed)
        ));
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
        Checkpointer {
            inner: Arc::new(Shared {
                held,
                coordinator,
                metrics,
                shards: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Checkpoints `shard_id` at the last position handed on: its last
    /// record handed to the application, or its end when the shard ended.
    /// Does nothing when nothing of the shard was handed on yet.
    pub fn checkpoint(&self, shard_id: &str) -> Result<()> {
        let state = self.state(shard_id)?;
        let handed = lock(&state.positions).handed.clone();
        match handed {
            Some(position) => self.write_state(&state, &position),
            None => Ok(()),
        }
    }

    /// Checkpoints `record`'s shard at `record`: processed up to and
    /// including it.
    pub fn checkpoint_record(&self, record: &Record) -> Result<()> {
        self.checkpoint_at(record.shard_id(), record.position())
    }

    /// Checkpoints `shard_id` at `position` (a sequence number and, for
    /// records of a KPL aggregate, a sub-sequence number).
    pub fn checkpoint_at(&self, shard_id: &str, position: &ExtendedSequenceNumber) -> Result<()> {
        let state = self.state(shard_id)?;
        self.write_state(&state, &Checkpoint::At(position.clone()))
    }

    fn state(&self, shard_id: &str) -> Result<Arc<ShardState>> {
        lock(&self.inner.shards)
            .get(shard_id)
            .cloned()
            .ok_or_else(|| Error::LeaseLost {
                shard_id: shard_id.to_owned(),
            })
    }

    /// A shard was gained under `epoch`, to be read from `from`.
    pub(crate) fn gained(&self, shard_id: &Arc<str>, epoch: u64, from: &Checkpoint) {
        let state = ShardState {
            shard_id: shard_id.clone(),
            epoch,
            writing: Mutex::new(()),
            positions: Mutex::new(Positions {
                handed: None,
                written: from.clone(),
            }),
        };
        lock(&self.inner.shards).insert(shard_id.clone(), Arc::new(state));
    }

    /// Records of `shard_id` up to `position` are being handed on.
    pub(crate) fn handed(&self, shard_id: &str, epoch: u64, position: Checkpoint) {
        if let Some(state) = lock(&self.inner.shards).get(shard_id) {
            if state.epoch == epoch {
                lock(&state.positions).handed = Some(position);
            }
        }
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
        if self.inner.held.holding(shard_id, state.epoch) == Holding::Gone {
            return Err(Error::LeaseLost {
                shard_id: shard_id.to_string(),
            });
        }
        let positions = lock(&state.positions).clone();
        let needed = check(&positions, wanted).map_err(|reason| Error::InvalidCheckpoint {
            shard_id: shard_id.to_string(),
            reason,
        })?;
        if !needed {
            return Ok(());
        }
        let inner = &self.inner;
        let started = Instant::now();
        let result = inner.held.checkpoint(shard_id, state.epoch, wanted);
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
        match result? {
            true => {
                lock(&state.positions).written = wanted.clone();
                log::debug!("checkpointed {shard_id} at {wanted:?}");
                if *wanted == Checkpoint::ShardEnd {
                    let _ = inner
                        .coordinator
                        .send(CoordinatorEvent::ShardFinished(shard_id.to_string()));
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

    fn at(sequence: &str, sub: u64) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse(sequence).unwrap(),
            sub_sequence_number: sub,
        })
    }

    fn positions(handed: Option<Checkpoint>, written: Checkpoint) -> Positions {
        Positions { handed, written }
    }

    #[test]
    fn a_position_handed_on_and_ahead_of_the_checkpoint_is_written() {
        let p = positions(Some(at("30", 0)), Checkpoint::TrimHorizon);
        assert_eq!(check(&p, &at("10", 0)), Ok(true));
        assert_eq!(check(&p, &at("30", 0)), Ok(true));
        let p = positions(Some(at("30", 0)), at("10", 0));
        assert_eq!(check(&p, &at("20", 0)), Ok(true));
        assert_eq!(check(&p, &at("10", 0)), Ok(false), "already there");
    }

    #[test]
    fn a_position_not_handed_on_is_refused() {
        let nothing = positions(None, Checkpoint::TrimHorizon);
        let e = check(&nothing, &at("10", 0)).unwrap_err();
        assert!(e.contains("nothing of the shard was handed on"), "{e}");
        let p = positions(Some(at("30", 0)), Checkpoint::TrimHorizon);
        let e = check(&p, &at("31", 0)).unwrap_err();
        assert!(e.contains("was not handed on"), "{e}");
        assert!(check(&p, &at("30", 1)).is_err(), "a later sub-sequence");
        assert!(
            check(&p, &Checkpoint::ShardEnd).is_err(),
            "the end was not reached"
        );
        assert!(check(&p, &Checkpoint::TrimHorizon).is_err());
    }

    #[test]
    fn a_position_behind_the_checkpoint_is_refused() {
        let p = positions(Some(at("30", 0)), at("20", 5));
        let e = check(&p, &at("20", 4)).unwrap_err();
        assert!(e.contains("behind the shard's checkpoint"), "{e}");
        assert_eq!(check(&p, &at("20", 6)), Ok(true));
    }

    #[test]
    fn the_end_of_a_shard_follows_every_record_once_handed_on() {
        let p = positions(Some(Checkpoint::ShardEnd), at("20", 0));
        assert_eq!(check(&p, &Checkpoint::ShardEnd), Ok(true));
        assert_eq!(
            check(&p, &at("999", 0)),
            Ok(true),
            "a record before the end"
        );
        let done = positions(Some(Checkpoint::ShardEnd), Checkpoint::ShardEnd);
        assert_eq!(check(&done, &Checkpoint::ShardEnd), Ok(false));
        assert!(check(&done, &at("20", 0)).is_err(), "behind the end");
    }
}
