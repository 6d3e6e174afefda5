//! What the batch ticker and the shard processors share: who checkpoints,
//! what a handler failure does, and calling user code under that policy.

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;

use crate::error::{Error, HandlerResult, Result};
use crate::lease::{Checkpoint, CoordinatorEvent, HeldLeases};
use crate::metrics::{Metric, Metrics};
use crate::record::Record;
use crate::worker::MessageHandler;
use crate::worker::batch::{GoesBack, Message, ShardBatch, SpareBuffers};
use crate::worker::budget::Budget;
use crate::worker::checkpointer::Checkpointer;
use crate::worker::dead_letter::DeadLetterHandler;
use crate::worker::load::LoadMeter;
use crate::worker::reader::panic_message;

/// Who writes checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Checkpointing {
    /// The consumer checkpoints what the handler accepted: after each batch
    /// (or shard processor call) that returned `Ok`, no more often than the
    /// checkpoint interval, and at a shard's end, a handoff and shutdown.
    /// The default, as in Spark's Kinesis stream.
    #[default]
    Automatic,
    /// Nothing is checkpointed unless the application asks through its
    /// [`Checkpointer`], as in the KCL: for sinks that make records durable
    /// later than the handler returns. A shard's children start only once
    /// the application checkpointed the shard's end
    /// ([`Checkpointer::checkpoint`] after [`ShardEvent::Ended`](crate::ShardEvent::Ended)).
    Manual,
}

/// What happens when the batch handler or a shard processor fails (returns
/// an error or panics). Records whose processing failed are never
/// checkpointed, whatever the policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// `run` stops and returns the error, after writing the checkpoints
    /// earned before and releasing the leases. The default.
    #[default]
    Stop,
    /// Calls the handler again with the same records (the message handler
    /// is run again on them), up to `retries` more times, waiting `backoff`
    /// doubled per attempt (at most 20 s, with jitter); then stops as
    /// [`Stop`](Self::Stop) does. A shutdown asked for meanwhile ends the
    /// retries without failing `run`: the records are not checkpointed.
    Retry {
        /// How many calls after the first failed one.
        retries: u32,
        /// The wait before the first retry.
        backoff: Duration,
    },
    /// For shard processors: retries as [`Retry`](Self::Retry) does, then
    /// gives up that shard alone: its processor is told the lease is lost,
    /// and the lease is released, so that another worker (or this one, at
    /// a later take) reads the shard again from its checkpoint, while the
    /// other shards go on. The batch API has one handler for every shard,
    /// so there it stops as [`Retry`](Self::Retry) does.
    RetryThenReleaseShard {
        /// How many calls after the first failed one.
        retries: u32,
        /// The wait before the first retry.
        backoff: Duration,
    },
    /// Poison records: retries as [`Retry`](Self::Retry) does, then finds
    /// the records of the failing shard's part the handler keeps rejecting
    /// by bisection (halves of the part tried once each, in order; a
    /// single record under the retries), hands the rest on, and passes
    /// each reject to the dead-letter handler
    /// ([`ConsumerBuilder::dead_letter`](crate::ConsumerBuilder::dead_letter),
    /// required). A shard's checkpoint passes a record only once the
    /// handler accepted it or the dead-letter handler returned `Ok`; if the
    /// dead-letter handler fails, the shard stops before that record (what
    /// came before is checkpointed, the lease released, and the shard read
    /// again from there, by this or another worker), while the other
    /// shards go on. With the batch API, each shard of a failed batch is
    /// first tried alone. With manual checkpoints, the application can
    /// checkpoint no further than the records of the call it is in, and a
    /// stopped shard is released without a checkpoint of the consumer's.
    /// A failure with no
    /// records to isolate (a processor's `initialize`, `shard_ended` or
    /// `shutdown_requested`) gives up the shard as
    /// [`RetryThenReleaseShard`](Self::RetryThenReleaseShard) does.
    RetryThenDeadLetter {
        /// How many calls after the first failed one (for the whole part,
        /// and again for each single record before it is dead-lettered).
        retries: u32,
        /// The wait before the first retry.
        backoff: Duration,
    },
}

impl ErrorPolicy {
    fn retries(&self) -> (u32, Duration) {
        match *self {
            ErrorPolicy::Stop => (0, Duration::ZERO),
            ErrorPolicy::Retry { retries, backoff }
            | ErrorPolicy::RetryThenReleaseShard { retries, backoff }
            | ErrorPolicy::RetryThenDeadLetter { retries, backoff } => (retries, backoff),
        }
    }

    /// True for [`RetryThenDeadLetter`](Self::RetryThenDeadLetter).
    pub(crate) fn dead_letters(&self) -> bool {
        matches!(self, ErrorPolicy::RetryThenDeadLetter { .. })
    }
}

/// How often a waiting ticker or processor looks at the shutdown flag.
pub(crate) const SHUTDOWN_CHECK: Duration = Duration::from_millis(50);

/// How a call under the error policy ended, unless the policy gave up.
#[derive(Debug)]
pub(crate) enum Called {
    /// It succeeded.
    Done,
    /// It failed with retries left, and the retries were ended (a
    /// shutdown, or the lease lost): its records are not accepted, but the
    /// consumer has not failed.
    Cut(Error),
}

impl Called {
    /// A cut call as the failure it is where no retry is owed (a call that
    /// must succeed for the consumer to go on).
    pub(crate) fn done(self) -> Result<()> {
        match self {
            Called::Done => Ok(()),
            Called::Cut(error) => Err(error),
        }
    }
}

/// Calls `attempt` (with the attempt number, 0 first) until it succeeds or
/// `policy` gives up (the error), catching panics. Once `stop` returns true
/// (a shutdown, or the lease lost) a failure with retries left ends them:
/// [`Called::Cut`].
pub(crate) fn call_with_policy(
    policy: &ErrorPolicy,
    stop: impl Fn() -> bool,
    what: &str,
    mut attempt: impl FnMut(u32) -> HandlerResult,
) -> Result<Called> {
    let (retries, base) = policy.retries();
    let mut number = 0;
    loop {
        let error = match catch_unwind(AssertUnwindSafe(|| attempt(number))) {
            Ok(Ok(())) => return Ok(Called::Done),
            Ok(Err(e)) => Error::Handler(e),
            Err(panic) => {
                Error::HandlerPanicked(format!("{what} panicked: {}", panic_message(&panic)))
            }
        };
        if number >= retries {
            return Err(error);
        }
        if stop() {
            log::warn!(
                "{what} failed; its retries end here (shutdown, or its lease gone): {error}"
            );
            return Ok(Called::Cut(error));
        }
        number += 1;
        let wait = crate::aws::client::backoff(base, number);
        log::warn!("{what} failed (retry {number} of {retries} in {wait:?}): {error}");
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop() {
            std::thread::sleep(SHUTDOWN_CHECK.min(until - Instant::now()));
        }
    }
}

/// The first wait between tries of a last checkpoint write (doubled per
/// try, at most [`LAST_WRITE_MAX_WAIT`]).
const LAST_WRITE_BACKOFF: Duration = Duration::from_millis(100);
const LAST_WRITE_MAX_WAIT: Duration = Duration::from_secs(1);

/// Whether a failed checkpoint write may succeed if tried again: not when
/// the lease is no longer ours or the position is refused.
pub(crate) fn worth_retrying(error: &Error) -> bool {
    !matches!(
        error,
        Error::LeaseLost { .. } | Error::InvalidCheckpoint { .. }
    )
}

/// Writes a last checkpoint (at shutdown, or before a lease is handed
/// over) with `write`, trying again after a failure that may pass, with
/// backoff, until it succeeds or `give_up` says so after a failure; returns
/// the last failure then. The batch ticker and the shard processors share
/// it.
pub(crate) fn write_last(
    shard_id: &str,
    mut give_up: impl FnMut() -> bool,
    mut write: impl FnMut() -> Result<()>,
) -> Result<()> {
    let mut tries = 0;
    loop {
        let error = match write() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !worth_retrying(&error) || give_up() {
            return Err(error);
        }
        tries += 1;
        let wait = crate::aws::client::backoff(LAST_WRITE_BACKOFF, tries).min(LAST_WRITE_MAX_WAIT);
        log::warn!(
            "checkpoint of {shard_id} failed (try {tries}), trying again in {wait:?}: {error}"
        );
        std::thread::sleep(wait);
    }
}

/// Hands over at once the leases another worker asked for that were never
/// opened (`opened` says which are): a child blocked behind its parents
/// has no reader and nothing was handed on, so nothing is left to
/// checkpoint, and nothing else would release it. Opened ones are released
/// by whoever opened them, once their checkpoint is written.
pub(crate) fn release_unopened_handoffs(held: &HeldLeases, opened: impl Fn(&str) -> bool) {
    for shard_id in held.handoffs() {
        if !opened(&shard_id) {
            if let Err(e) = held.release(&shard_id) {
                log::warn!("handing lease {shard_id} over failed: {e}");
            }
        }
    }
}

/// The last checkpoint of `shard_id` was not written: its lease is
/// forgotten here, so that it is not released as if saved at shutdown (it
/// expires, and its next owner reads from the checkpoint in the table).
pub(crate) fn not_saved(held: &HeldLeases, shard_id: &str, error: Error) -> Error {
    log::error!(
        "the last checkpoint of {shard_id} could not be written; its lease is left to expire: {error}"
    );
    held.withhold(shard_id);
    Error::CheckpointsNotSaved {
        shard_ids: vec![shard_id.to_owned()],
        source: Box::new(error),
    }
}

/// What a stopped consumer returns, given every failure seen: the first
/// failure that stopped it, if any; otherwise, the shards whose last
/// checkpoint was not written, all in one error.
pub(crate) fn outcome(failures: impl IntoIterator<Item = Error>) -> Result<()> {
    let mut unsaved: Option<(Vec<String>, Box<Error>)> = None;
    for failure in failures {
        match failure {
            Error::CheckpointsNotSaved { shard_ids, source } => match &mut unsaved {
                Some((all, _)) => all.extend(shard_ids),
                None => unsaved = Some((shard_ids, source)),
            },
            other => return Err(other),
        }
    }
    match unsaved {
        Some((mut shard_ids, source)) => {
            shard_ids.sort();
            Err(Error::CheckpointsNotSaved { shard_ids, source })
        }
        None => Ok(()),
    }
}

/// A shard's part of a batch with its records kept, so that a retry can
/// hand the same records on again (values are made again by the message
/// handler: they need not be `Clone`).
pub(crate) struct KeptShard {
    bare: ShardBatch<()>,
    records: Vec<Record>,
}

impl KeptShard {
    pub(crate) fn of<T>(shard: &ShardBatch<T>) -> KeptShard {
        KeptShard {
            bare: ShardBatch {
                shard_id: shard.shard_id.clone(),
                messages: Vec::new(),
                millis_behind_latest: shard.millis_behind_latest,
                shard_ended: shard.shard_ended,
                epoch: shard.epoch,
                goes_back: GoesBack::nowhere(),
            },
            records: shard.messages.iter().map(|m| m.record.clone()).collect(),
        }
    }

    /// How many records are kept.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The record at `index`.
    pub(crate) fn record(&self, index: usize) -> &Record {
        &self.records[index]
    }

    /// The shard and the lease epoch its records were read under.
    pub(crate) fn lease(&self) -> (&Arc<str>, u64) {
        (&self.bare.shard_id, self.bare.epoch)
    }

    /// The position that the records of `0..end` hand on: the shard's end
    /// with the last record of an ended shard, else the last record's;
    /// none without a record.
    pub(crate) fn handed(&self, end: usize) -> Option<Checkpoint> {
        let last = self.records.get(end.checked_sub(1)?)?;
        Some(match end == self.records.len() && self.bare.shard_ended {
            true => Checkpoint::ShardEnd,
            false => Checkpoint::At(last.position.clone()),
        })
    }

    /// The shard's part made again, its values by `handler`.
    pub(crate) fn remake<T>(&self, handler: &MessageHandler<T>) -> ShardBatch<T> {
        self.part(handler, 0..self.records.len())
    }

    /// The records of `range` made again, their values by `handler`; it
    /// holds the shard's end only if it holds the last record.
    pub(crate) fn part<T>(
        &self,
        handler: &MessageHandler<T>,
        range: Range<usize>,
    ) -> ShardBatch<T> {
        let bare = &self.bare;
        let to_the_end = range.end == self.records.len();
        ShardBatch {
            shard_id: bare.shard_id.clone(),
            messages: self.records[range]
                .iter()
                .map(|record| Message {
                    value: handler(record),
                    record: record.clone(),
                })
                .collect(),
            millis_behind_latest: bare.millis_behind_latest,
            shard_ended: bare.shard_ended && to_the_end,
            epoch: bare.epoch,
            goes_back: GoesBack::nowhere(),
        }
    }
}

/// What the ticker and the shard processors share.
pub(crate) struct Delivery<T> {
    pub held: Arc<HeldLeases>,
    pub budget: Arc<Budget>,
    pub coordinator: Sender<CoordinatorEvent>,
    pub shutdown: Arc<AtomicBool>,
    pub checkpointer: Checkpointer,
    pub metrics: Metrics,
    /// Each lease's load: the handler's time is charged to it.
    pub load: Arc<LoadMeter>,
    pub message_handler: MessageHandler<T>,
    /// Spare message lists, shared with the readers: a chunk's list goes
    /// back once merged into a batch, a batch's once it is dropped.
    pub spare_buffers: Arc<SpareBuffers<T>>,
    pub batch_interval: Duration,
    pub checkpoint_interval: Duration,
    pub checkpointing: Checkpointing,
    pub error_policy: ErrorPolicy,
    /// Where rejected records go under [`ErrorPolicy::RetryThenDeadLetter`].
    pub dead_letter: Option<DeadLetterHandler>,
    /// How long the last checkpoints at shutdown are tried for (the
    /// failover time: a peer could take over a dead worker's leases by
    /// then).
    pub last_checkpoint_time: Duration,
}

impl<T> Clone for Delivery<T> {
    fn clone(&self) -> Self {
        Delivery {
            held: self.held.clone(),
            budget: self.budget.clone(),
            coordinator: self.coordinator.clone(),
            shutdown: self.shutdown.clone(),
            checkpointer: self.checkpointer.clone(),
            metrics: self.metrics.clone(),
            load: self.load.clone(),
            message_handler: self.message_handler.clone(),
            spare_buffers: self.spare_buffers.clone(),
            batch_interval: self.batch_interval,
            checkpoint_interval: self.checkpoint_interval,
            checkpointing: self.checkpointing,
            error_policy: self.error_policy,
            dead_letter: self.dead_letter.clone(),
            last_checkpoint_time: self.last_checkpoint_time,
        }
    }
}

impl<T> Delivery<T> {
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    pub(crate) fn automatic(&self) -> bool {
        self.checkpointing == Checkpointing::Automatic
    }

    /// Calls user code under `policy` (see [`call_with_policy`]),
    /// counting each retry in the `HandlerRetries` metric.
    pub(crate) fn call(
        &self,
        policy: &ErrorPolicy,
        stop: &dyn Fn() -> bool,
        what: &str,
        attempt: &mut dyn FnMut(u32) -> HandlerResult,
    ) -> Result<Called> {
        call_with_policy(policy, stop, what, |number| {
            if number > 0 {
                self.metrics.record(None, &[(Metric::HandlerRetries, 1.0)]);
            }
            attempt(number)
        })
    }

    /// Records the metrics of a shard's records processed; `last_arrival`:
    /// the arrival time of the last of them.
    pub(crate) fn record_processed(
        &self,
        shard_id: &Arc<str>,
        records: usize,
        data_bytes: u64,
        last_arrival: Option<SystemTime>,
    ) {
        self.metrics.record(
            Some(shard_id),
            &[
                (Metric::RecordsProcessed, records as f64),
                (Metric::DataBytesProcessed, data_bytes as f64),
            ],
        );
        self.metrics
            .live()
            .handed_on(shard_id, records, data_bytes, last_arrival);
    }

    /// Records the time and size of one handler call: the batch handler's
    /// (`shard` `None`) or a shard's processor's; `shares`: the records of
    /// each shard in the call, whose load is charged its share of the time.
    pub(crate) fn record_call(
        &self,
        started: Instant,
        shares: &[(Arc<str>, usize)],
        shard: Option<&Arc<str>>,
    ) {
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        let records: usize = shares.iter().map(|(_, records)| records).sum();
        // Neither metric is per shard: only the live busy fraction keeps
        // the shard.
        self.metrics.record(
            shard,
            &[
                (Metric::ProcessTaskTime, took.as_secs_f64() * 1000.0),
                (Metric::BatchSize, records as f64),
            ],
        );
        self.load.busy(shares, took, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u32) -> ErrorPolicy {
        ErrorPolicy::Retry {
            retries,
            backoff: Duration::from_millis(1),
        }
    }

    #[test]
    fn stop_calls_once_and_returns_the_failure() {
        let mut calls = 0;
        let result = call_with_policy(
            &ErrorPolicy::Stop,
            || false,
            "h",
            |_| {
                calls += 1;
                Err("bad record".into())
            },
        );
        assert_eq!(calls, 1);
        assert!(matches!(result, Err(Error::Handler(e)) if e.to_string() == "bad record"));
    }

    #[test]
    fn retry_calls_again_until_it_succeeds_or_gives_up() {
        let mut attempts = Vec::new();
        let result = call_with_policy(
            &policy(3),
            || false,
            "h",
            |n| {
                attempts.push(n);
                if n < 2 { Err("not yet".into()) } else { Ok(()) }
            },
        );
        assert!(matches!(result, Ok(Called::Done)));
        assert_eq!(attempts, [0, 1, 2]);
        let mut calls = 0;
        let result = call_with_policy(
            &policy(2),
            || false,
            "h",
            |_| {
                calls += 1;
                panic!("poison")
            },
        );
        assert_eq!(calls, 3, "the first call and two retries");
        assert!(matches!(result, Err(Error::HandlerPanicked(m)) if m.contains("poison")));
    }

    #[test]
    fn a_last_write_is_tried_again_until_it_lands_or_time_is_up() {
        let refused = || Error::Internal("refused".into());
        let mut tries = 0;
        let result = write_last(
            "s",
            || false,
            || {
                tries += 1;
                if tries < 3 { Err(refused()) } else { Ok(()) }
            },
        );
        assert!(result.is_ok());
        assert_eq!(tries, 3);
        // Time is up after the second failure.
        let (mut tries, mut looks) = (0, 0);
        let result = write_last(
            "s",
            || {
                looks += 1;
                looks >= 2
            },
            || {
                tries += 1;
                Err(refused())
            },
        );
        assert!(matches!(result, Err(Error::Internal(_))));
        assert_eq!(tries, 2);
        // A lost lease or a refused position: trying again cannot help.
        for error in [
            Error::LeaseLost {
                shard_id: "s".into(),
            },
            Error::InvalidCheckpoint {
                shard_id: "s".into(),
                reason: "behind".into(),
            },
        ] {
            let mut error = Some(error);
            let mut tries = 0;
            let result = write_last(
                "s",
                || false,
                || {
                    tries += 1;
                    Err(error.take().unwrap())
                },
            );
            assert!(result.is_err());
            assert_eq!(tries, 1);
        }
    }

    #[test]
    fn a_failure_comes_first_then_every_unsaved_shard_in_one_error() {
        let unsaved = |shard: &str| Error::CheckpointsNotSaved {
            shard_ids: vec![shard.into()],
            source: Box::new(Error::Internal(format!("{shard} refused"))),
        };
        assert!(outcome([]).is_ok());
        let result = outcome([unsaved("b"), unsaved("a")]);
        match result {
            Err(Error::CheckpointsNotSaved { shard_ids, source }) => {
                assert_eq!(shard_ids, ["a", "b"]);
                assert_eq!(source.to_string(), "internal error: b refused");
            }
            other => panic!("{other:?}"),
        }
        let result = outcome([unsaved("a"), Error::Handler("bad".into()), unsaved("b")]);
        assert!(matches!(result, Err(Error::Handler(_))), "{result:?}");
    }

    #[test]
    fn a_shutdown_ends_the_retries() {
        let mut calls = 0;
        let result = call_with_policy(
            &policy(100),
            || true,
            "h",
            |_| {
                calls += 1;
                Err("down".into())
            },
        );
        assert_eq!(calls, 1);
        assert!(matches!(result, Ok(Called::Cut(Error::Handler(_)))));
        // Without retries left, a failure is the policy's to report.
        let result = call_with_policy(&ErrorPolicy::Stop, || true, "h", |_| Err("down".into()));
        assert!(matches!(result, Err(Error::Handler(_))));
    }
}
