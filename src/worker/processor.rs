//! Per-shard processors, the KCL's processing model: one processor per
//! shard held, each on its own thread, told when its shard is gained,
//! lost, ended or shut down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, HandlerResult, Result};
use crate::lease::{Checkpoint, Holding};
use crate::worker::batch::{GoesBack, ShardBatch};
use crate::worker::checkpointer::Checkpointer;
use crate::worker::dead_letter::isolate;
use crate::worker::processing::{
    Called, Delivery, ErrorPolicy, KeptShard, SHUTDOWN_CHECK, not_saved, outcome,
    release_unopened_handoffs, worth_retrying, write_last,
};
use crate::worker::reader::{Chunk, ReaderOutput};

/// How many reads (GetRecords replies) wait for one shard's processor
/// before its reader waits: enough to read ahead while it works.
pub(crate) const SHARD_QUEUE: usize = 4;

/// Processes the records of one shard, as the KCL's `ShardRecordProcessor`
/// does; [`Consumer::run_processors`](crate::Consumer::run_processors)
/// makes one per shard gained and calls it on that shard's own thread.
///
/// The calls, in order: [`initialize`](Self::initialize) once; then
/// [`process`](Self::process) for each read with records, in sequence
/// order; then exactly one of [`lease_lost`](Self::lease_lost),
/// [`shard_ended`](Self::shard_ended) or
/// [`shutdown_requested`](Self::shutdown_requested); then the processor is
/// dropped. The `Checkpointer` is this processor's: clonable, for use
/// from other threads and later, and it checkpoints the shard only while
/// this processor's ownership of it lasts (see [`Checkpointer`] for which
/// positions it accepts).
///
/// A call that returns an error or panics is handled by the consumer's
/// [`ErrorPolicy`]; with automatic checkpoints, the records of a failed
/// call are never checkpointed. Retries end at shutdown and once the lease
/// changes (lost, or asked for by another worker during the call). Under
/// [`ErrorPolicy::RetryThenReleaseShard`] a failure of any call, also of
/// `shard_ended` or of `shutdown_requested` at a handoff, gives up the shard
/// alone: what was accepted before is checkpointed and the lease released.
///
/// At most one processor of a shard runs at a time: a processor made for
/// a shard this worker holds again starts once the shard's earlier
/// processor returned from its last call.
pub trait ShardProcessor<T>: Send {
    /// The shard was gained; its records are read from `from`. In a
    /// multi-stream consumer ([`streams`](crate::ConsumerBuilder::streams))
    /// `shard_id` is the shard's lease key, which names its stream:
    /// [`StreamIdentifier::of_lease_key`](crate::StreamIdentifier::of_lease_key)
    /// gives the stream (or implement
    /// [`initialize_with`](Self::initialize_with) instead, which is told it).
    ///
    /// Only called through the default
    /// [`initialize_with`](Self::initialize_with): a processor implements
    /// one of the two.
    fn initialize(&mut self, shard_id: &str, from: &Checkpoint) -> HandlerResult {
        let _ = (shard_id, from);
        Ok(())
    }

    /// The shard was gained, as the KCL's `initialize(InitializationInput)`:
    /// `input` names the shard, its stream (multi-stream consumers) and
    /// where its records are read from. This is what the consumer calls;
    /// by default it calls [`initialize`](Self::initialize) with the
    /// shard id and the position.
    fn initialize_with(&mut self, input: &InitializationInput) -> HandlerResult {
        self.initialize(input.shard_id(), input.checkpoint())
    }

    /// Records of the shard, in sequence order (one read's worth). With
    /// automatic checkpoints, they are checkpointed once this returns
    /// `Ok` (no more often than the checkpoint interval).
    fn process(&mut self, records: ShardBatch<T>, checkpointer: &Checkpointer) -> HandlerResult;

    /// Another worker has the lease now: nothing can be checkpointed any
    /// more, and records not checkpointed will be read again by it.
    fn lease_lost(&mut self) {}

    /// The shard is closed and every record of it was processed: the last
    /// chance to checkpoint it. With automatic checkpoints, its end is
    /// checkpointed once this returns `Ok`. With manual checkpoints this
    /// must call [`Checkpointer::checkpoint`] (which checkpoints the end):
    /// the shard's children start only then; returning without doing so is
    /// a failure, handled by the error policy.
    fn shard_ended(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        let _ = checkpointer;
        Ok(())
    }

    /// The worker is shutting down, or another worker asked for the lease:
    /// the last chance to checkpoint; the lease is released after this,
    /// once the checkpoint due (automatic mode) is written.
    fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        let _ = checkpointer;
        Ok(())
    }
}

/// What a [`ShardProcessor`] is told when its shard is gained (the KCL's
/// `InitializationInput`): the shard, its stream and where its records
/// are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitializationInput {
    shard_id: String,
    checkpoint: Checkpoint,
}

impl InitializationInput {
    /// The input for shard `shard_id` (a bare shard id, or in a
    /// multi-stream consumer its lease key), read from `checkpoint`.
    pub fn new(shard_id: &str, checkpoint: Checkpoint) -> InitializationInput {
        InitializationInput {
            shard_id: shard_id.to_owned(),
            checkpoint,
        }
    }

    /// The shard as the consumer names it everywhere else
    /// ([`ShardBatch::shard_id`], the [`Checkpointer`]): its lease key in
    /// a multi-stream consumer, the bare shard id otherwise.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The shard id as Kinesis names it (`shardId-…`), in either layout.
    pub fn kinesis_shard_id(&self) -> &str {
        crate::stream::shard_id_of(&self.shard_id)
    }

    /// The shard's stream in a multi-stream consumer
    /// ([`streams`](crate::ConsumerBuilder::streams)); `None` in a
    /// single-stream one.
    pub fn stream(&self) -> Option<crate::StreamIdentifier> {
        crate::StreamIdentifier::of_lease_key(&self.shard_id)
    }

    /// Where the shard's records are read from: its checkpoint, or the
    /// initial position for a shard never checkpointed.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
}

/// What `shard_ended` must have done under manual checkpoints:
/// checkpointed the end of the shard (its children wait for it). The
/// consumer and [`testing::ProcessorHarness`](crate::testing::ProcessorHarness)
/// both check it here.
pub(crate) fn end_checkpointed(
    automatic: bool,
    checkpointer: &Checkpointer,
    shard_id: &str,
    epoch: u64,
) -> HandlerResult {
    if automatic || checkpointer.is_finished(shard_id, epoch) {
        return Ok(());
    }
    Err(format!(
        "shard_ended of shard {shard_id} returned without checkpointing the end of the shard (call Checkpointer::checkpoint): its children cannot start until it does"
    )
    .into())
}

/// Runs a processor for each shard a reader starts on, until shutdown or a
/// failure that stops the consumer; then tells every processor to shut
/// down and waits for them.
pub(crate) fn dispatch<T, P, F>(
    records: &Receiver<ReaderOutput<T>>,
    delivery: Delivery<T>,
    factory: F,
) -> Result<()>
where
    T: Send + 'static,
    P: ShardProcessor<T> + 'static,
    F: Fn(&str) -> P + Send + Sync + 'static,
{
    let factory = Arc::new(factory);
    let (failed, failures) = crossbeam_channel::unbounded::<Error>();
    // The task of each shard, the last started: a new one waits for it.
    let mut running: HashMap<Arc<str>, JoinHandle<()>> = HashMap::new();
    let mut failure = None;
    while failure.is_none() && !delivery.stopping() {
        if let Ok(error) = failures.try_recv() {
            failure = Some(error);
            break;
        }
        release_unopened_handoffs(&delivery.held, |id| {
            running.get(id).is_some_and(|task| !task.is_finished())
        });
        match records.recv_timeout(SHUTDOWN_CHECK) {
            Ok(ReaderOutput::Started {
                shard_id,
                epoch,
                from,
                records: Some(queue),
            }) => {
                if !delivery.held.is_current(&shard_id, epoch) {
                    continue; // dropping the queue stops its reader
                }
                let task = ShardTask {
                    processor: factory(&shard_id),
                    shard_id: shard_id.clone(),
                    epoch,
                    queue,
                    checkpointer: delivery.checkpointer.pinned(&shard_id, epoch),
                    delivery: delivery.clone(),
                    pending: None,
                    last_written: None,
                };
                let failed = failed.clone();
                // At most one processor of a shard at a time: the shard's
                // earlier task (lease lost or handed off, then taken again)
                // ends before this one starts.
                let earlier = running.remove(&shard_id);
                let spawned = std::thread::Builder::new()
                    .name(format!("kinesis-processor-{shard_id}"))
                    .spawn(move || {
                        earlier.into_iter().for_each(join);
                        if let Err(error) = task.run(from) {
                            let _ = failed.send(error);
                        }
                    });
                match spawned {
                    Ok(handle) => {
                        running.insert(shard_id, handle);
                    }
                    Err(e) => {
                        failure = Some(Error::Internal(format!(
                            "cannot start a processor thread for {shard_id}: {e}"
                        )))
                    }
                }
            }
            Ok(ReaderOutput::Started { records: None, .. }) => {}
            // Not expected here (readers send chunks to their queues);
            // dropped, a chunk gives its room back.
            Ok(ReaderOutput::Chunk(_)) => {}
            Ok(ReaderOutput::Failed {
                shard_id,
                epoch,
                error,
            }) => {
                if delivery.held.is_current(&shard_id, epoch) {
                    failure = Some(error);
                }
            }
            Ok(ReaderOutput::Fatal(error)) => failure = Some(error),
            Err(RecvTimeoutError::Timeout) => {
                let done: Vec<Arc<str>> = running
                    .iter()
                    .filter(|(_, h)| h.is_finished())
                    .map(|(id, _)| id.clone())
                    .collect();
                for shard_id in done {
                    running.remove(&shard_id).into_iter().for_each(join);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                failure = Some(Error::Internal("every reader is gone".into()));
            }
        }
    }
    // Every processor sees the flag and shuts its shard down.
    delivery.shutdown.store(true, Ordering::Relaxed);
    running.into_values().for_each(join);
    outcome(failure.into_iter().chain(failures.try_iter()))
}

fn join(handle: JoinHandle<()>) {
    if handle.join().is_err() {
        log::error!("a shard processor thread panicked");
    }
}

/// How a shard's processing ended.
enum End {
    Lost,
    Ended,
    Shutdown,
    HandingOff,
}

/// One shard's processor and what its thread keeps.
struct ShardTask<T, P> {
    processor: P,
    shard_id: Arc<str>,
    epoch: u64,
    queue: Receiver<ReaderOutput<T>>,
    delivery: Delivery<T>,
    /// The checkpointer the processor is given: this ownership's alone.
    checkpointer: Checkpointer,
    /// The last position processed and not yet checkpointed (automatic).
    pending: Option<Checkpoint>,
    last_written: Option<Instant>,
}

impl<T, P: ShardProcessor<T>> ShardTask<T, P> {
    /// Runs the processor until its shard is lost, ended or shut down. An
    /// error returned stops the consumer.
    fn run(mut self, from: Checkpoint) -> Result<()> {
        let checkpointer = self.delivery.checkpointer.clone();
        checkpointer.gained(&self.shard_id, self.epoch, &from);
        let shard_id = self.shard_id.clone();
        let input = InitializationInput::new(&shard_id, from.clone());
        let result = self
            .call("initialize", |p, _| p.initialize_with(&input))
            .and_then(Called::done);
        let result = result.and_then(|()| self.work());
        let outcome = match result {
            Ok(end) => match self.finish(end) {
                // `shard_ended` or `shutdown_requested` failed: the shard
                // alone is given up (its processor had its last call).
                Err(error) if self.gives_up_shard_alone(&error) => self.give_up(error),
                other => other,
            },
            Err(error) if self.gives_up_shard_alone(&error) => {
                self.processor.lease_lost();
                self.give_up(error)
            }
            Err(error) => {
                log::error!("shard {shard_id}: {error}; the consumer stops");
                // The consumer stops: still give the shard its last chance.
                if let Err(e) = self.finish(End::Shutdown) {
                    log::warn!("shutting down the processor of {shard_id}: {e}");
                }
                Err(error)
            }
        };
        checkpointer.closed(&shard_id, self.epoch);
        outcome
    }

    /// Gives up the shard alone after its processor failed (under
    /// [`ErrorPolicy::RetryThenReleaseShard`]): what was processed before
    /// the failure is checkpointed, so that the shard's next reader starts
    /// at the failure, and the lease is released once that is saved.
    fn give_up(&mut self, error: Error) -> Result<()> {
        let shard_id = self.shard_id.clone();
        log::warn!("giving up shard {shard_id} after its processor failed: {error}");
        self.save_last()?;
        if let Err(e) = self.delivery.held.release(&shard_id) {
            log::warn!("releasing lease {shard_id} failed (it will expire): {e}");
        }
        Ok(())
    }

    /// Whether `error` gives up this shard alone: a processor's failure
    /// under [`ErrorPolicy::RetryThenReleaseShard`] or
    /// [`ErrorPolicy::RetryThenDeadLetter`] (records it could not isolate).
    fn gives_up_shard_alone(&self, error: &Error) -> bool {
        matches!(
            self.delivery.error_policy,
            ErrorPolicy::RetryThenReleaseShard { .. } | ErrorPolicy::RetryThenDeadLetter { .. }
        ) && matches!(error, Error::Handler(_) | Error::HandlerPanicked(_))
    }

    /// Hands the shard's reads to the processor until something ends it.
    fn work(&mut self) -> Result<End> {
        let mut reader_gone = false;
        loop {
            if self.delivery.stopping() {
                return Ok(End::Shutdown);
            }
            match self.delivery.held.holding(&self.shard_id, self.epoch) {
                Holding::Current => {}
                Holding::HandingOff => return Ok(End::HandingOff),
                Holding::Gone => return Ok(End::Lost),
            }
            if reader_gone {
                // Its reader stopped (a shard the service does not know):
                // wait for the coordinator to settle the lease.
                std::thread::sleep(SHUTDOWN_CHECK);
                continue;
            }
            match self.queue.recv_timeout(SHUTDOWN_CHECK) {
                Ok(ReaderOutput::Chunk(chunk)) => {
                    let ended = chunk.shard_end;
                    match self.process(chunk) {
                        Ok(Called::Done) if ended => return Ok(End::Ended),
                        // Accepted; or its retries were cut short by a
                        // shutdown or the lease's loss, which the checks
                        // above now see.
                        Ok(_) => {}
                        // Failed after the lease was lost or asked for:
                        // the records are its next owner's to read again.
                        Err(error) => {
                            match self.delivery.held.holding(&self.shard_id, self.epoch) {
                                Holding::Current => return Err(error),
                                Holding::HandingOff => return Ok(End::HandingOff),
                                Holding::Gone => return Ok(End::Lost),
                            }
                        }
                    }
                }
                Ok(ReaderOutput::Failed { error, .. }) => return Err(error),
                Ok(ReaderOutput::Started { .. } | ReaderOutput::Fatal(_)) => {}
                Err(RecvTimeoutError::Timeout) => self.write_pending(),
                Err(RecvTimeoutError::Disconnected) => reader_gone = true,
            }
        }
    }

    /// Calls the processor with one read's records; they are accepted
    /// when it returns [`Called::Done`].
    fn process(&mut self, chunk: Chunk<T>) -> Result<Called> {
        // Given back once the call returned (dropped on every path out).
        let room = chunk.room;
        let data_bytes = chunk.data_bytes;
        let shard = ShardBatch {
            shard_id: chunk.shard_id,
            messages: chunk.messages,
            millis_behind_latest: chunk.millis_behind_latest,
            shard_ended: chunk.shard_end,
            epoch: chunk.epoch,
            goes_back: GoesBack::nowhere(),
        };
        let records = shard.messages.len();
        let last_arrival = shard.messages.last().and_then(|m| m.record.arrival);
        let position = match shard.messages.last() {
            Some(m) => Checkpoint::At(m.record.position.clone()),
            None => return Ok(Called::Done), // the end of the shard alone: nothing to process
        };
        // The end of the shard is handed on with `shard_ended`.
        self.delivery
            .checkpointer
            .handing(&self.shard_id, self.epoch, position.clone());
        let kept = (self.delivery.error_policy != ErrorPolicy::Stop).then(|| KeptShard::of(&shard));
        let mut first = Some(shard);
        let started = Instant::now();
        let handler = self.delivery.message_handler.clone();
        let result = self.call("process", |p, checkpointer| {
            let shard = match (first.take(), &kept) {
                (Some(shard), _) => shard,
                (None, Some(kept)) => kept.remake(&handler),
                (None, None) => return Err("no records kept for a retry".into()),
            };
            p.process(shard, checkpointer)
        });
        let result = match (result, &kept) {
            (Err(error @ (Error::Handler(_) | Error::HandlerPanicked(_))), Some(kept))
                if self.delivery.error_policy.dead_letters() =>
            {
                self.isolate(kept, error)
            }
            (result, _) => result,
        };
        self.delivery.record_call(
            started,
            &[(self.shard_id.clone(), records)],
            Some(&self.shard_id),
        );
        drop(room);
        let accepted = matches!(result, Ok(Called::Done));
        self.delivery
            .checkpointer
            .call_ended(&self.shard_id, self.epoch, accepted);
        if !accepted {
            return result;
        }
        self.delivery
            .record_processed(&self.shard_id, records, data_bytes, last_arrival);
        if self.delivery.automatic() {
            self.pending = Some(position);
            self.write_pending();
        }
        Ok(Called::Done)
    }

    /// Isolates the records of a failed `process` call that the processor
    /// keeps rejecting (see [`isolate`]). [`Called::Done`] when every
    /// record is done; [`Called::Cut`] when a shutdown or the lease's
    /// change ended the search; otherwise (the dead-letter handler failed)
    /// the error, which gives the shard up. Either way what was done
    /// before is pending.
    fn isolate(&mut self, kept: &KeptShard, error: Error) -> Result<Called> {
        let (delivery, shard_id, epoch) = (&self.delivery, &self.shard_id, self.epoch);
        let holding = delivery.held.holding(shard_id, epoch);
        let stop = || delivery.stopping() || delivery.held.holding(shard_id, epoch) != holding;
        let (processor, checkpointer) = (&mut self.processor, &self.checkpointer);
        let what = format!("the processor of shard {shard_id} (process)");
        let isolated = isolate(delivery, kept, Some(error), &stop, &what, &mut |part| {
            processor.process(part, checkpointer)
        });
        let Some(error) = isolated.stopped else {
            return Ok(Called::Done);
        };
        // What came before the stop is done (and accepted by `isolate`).
        if delivery.automatic() {
            self.pending = kept.handed(isolated.done).or(self.pending.take());
        }
        match isolated.cut {
            true => Ok(Called::Cut(error)),
            false => Err(error),
        }
    }

    /// Tells the processor how its shard's processing ended, and writes
    /// the last checkpoints (automatic mode).
    fn finish(&mut self, end: End) -> Result<()> {
        match end {
            End::Lost => {
                self.processor.lease_lost();
                Ok(())
            }
            End::Ended => self.end_shard(),
            End::Shutdown => {
                self.call("shutdown_requested", |p, c| p.shutdown_requested(c))?
                    .done()?;
                self.save_last()
            }
            End::HandingOff => {
                self.call("shutdown_requested", |p, c| p.shutdown_requested(c))?
                    .done()?;
                // Handed over only once saved.
                self.save_last()?;
                if let Err(e) = self.delivery.held.release(&self.shard_id) {
                    log::warn!("handing lease {} over failed: {e}", self.shard_id);
                }
                Ok(())
            }
        }
    }

    /// The shard's last records were processed: the processor's
    /// `shard_ended`, then the end's checkpoint, which lets its children
    /// start.
    fn end_shard(&mut self) -> Result<()> {
        let (shard_id, epoch) = (self.shard_id.clone(), self.epoch);
        self.delivery
            .checkpointer
            .handing(&shard_id, epoch, Checkpoint::ShardEnd);
        let automatic = self.delivery.automatic();
        let ended = self
            .call("shard_ended", |p, checkpointer| {
                p.shard_ended(checkpointer)?;
                end_checkpointed(automatic, checkpointer, &shard_id, epoch)
            })
            .and_then(Called::done);
        self.delivery
            .checkpointer
            .call_ended(&shard_id, epoch, ended.is_ok());
        ended?;
        if automatic {
            // Until written, the children wait.
            self.pending = Some(Checkpoint::ShardEnd);
            self.save_last()?;
        }
        Ok(())
    }

    /// Writes the pending checkpoint (automatic mode) now, trying again
    /// after a failure while the lease is ours: for as long as a handoff or
    /// the shard's children wait, and once shutdown was asked for, up to
    /// the last checkpoint time. Left unsaved then, the lease is not
    /// released (see [`not_saved`]) and the error names the shard.
    fn save_last(&mut self) -> Result<()> {
        let Some(checkpoint) = self.pending.take() else {
            return Ok(());
        };
        let delivery = &self.delivery;
        let mut until = None;
        let result = write_last(
            &self.shard_id,
            || {
                if !delivery.stopping() {
                    return false;
                }
                let until =
                    *until.get_or_insert_with(|| Instant::now() + delivery.last_checkpoint_time);
                Instant::now() >= until
            },
            || {
                delivery
                    .checkpointer
                    .write(&self.shard_id, self.epoch, &checkpoint)
            },
        );
        match result {
            Ok(()) => {
                self.last_written = Some(Instant::now());
                Ok(())
            }
            Err(e) if !worth_retrying(&e) => {
                log::info!("not checkpointing {}: {e}", self.shard_id);
                Ok(())
            }
            Err(e) => Err(not_saved(&delivery.held, &self.shard_id, e)),
        }
    }

    /// Calls the processor under the error policy.
    fn call(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut P, &Checkpointer) -> HandlerResult,
    ) -> Result<Called> {
        let what = format!("the processor of shard {} ({what})", self.shard_id);
        let checkpointer = &self.checkpointer;
        let processor = &mut self.processor;
        let (delivery, shard_id, epoch) = (&self.delivery, &self.shard_id, self.epoch);
        // No retry once the lease changed (lost, or asked for during the
        // call): its next owner reads the records again.
        let holding = delivery.held.holding(shard_id, epoch);
        let stop = || delivery.stopping() || delivery.held.holding(shard_id, epoch) != holding;
        delivery.call(&delivery.error_policy, &stop, &what, &mut |_| {
            call(processor, checkpointer)
        })
    }

    /// Writes the automatic checkpoint when due; a failed write is retried
    /// later, a lost lease ends with the shard.
    fn write_pending(&mut self) {
        let Some(checkpoint) = self.pending.clone() else {
            return;
        };
        let due = checkpoint == Checkpoint::ShardEnd
            || self
                .last_written
                .is_none_or(|t| t.elapsed() >= self.delivery.checkpoint_interval);
        if !due {
            return;
        }
        match self
            .delivery
            .checkpointer
            .write(&self.shard_id, self.epoch, &checkpoint)
        {
            Ok(()) => {
                self.pending = None;
                self.last_written = Some(Instant::now());
            }
            Err(e @ (Error::LeaseLost { .. } | Error::InvalidCheckpoint { .. })) => {
                log::info!("not checkpointing {}: {e}", self.shard_id);
                self.pending = None;
            }
            Err(e) => log::warn!("checkpoint of {} failed, will retry: {e}", self.shard_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use crossbeam_channel::Sender;

    use super::*;
    use crate::metrics::LoadView;
    use crate::worker::budget::Budget;
    use crate::worker::processing::Checkpointing;
    use crate::worker::test_support::{
        chunk_in, delivery, held_leases, held_leases_noting, started_with,
    };

    /// What the probes of one test saw, in order: "call shard epoch values".
    type Log = Arc<Mutex<Vec<String>>>;

    /// What the probes of one test do.
    #[derive(Clone, Default)]
    struct Setup {
        /// Each `process` call waits for a go-ahead.
        gated: bool,
        /// A `process` call with this value fails (after its go-ahead).
        poison: Option<String>,
        /// `shutdown_requested` checkpoints the shard, as a processor
        /// ported from the KCL does.
        checkpoint_at_shutdown: bool,
        /// Only the first processor made waits for go-aheads.
        gate_only_first: bool,
        /// `shutdown_requested` and `shard_ended` fail.
        fail_last_call: bool,
        /// Where each `process` call leaves a clone of its checkpointer.
        kept: Arc<Mutex<Vec<Checkpointer>>>,
        /// Processors made so far.
        made: Arc<AtomicUsize>,
        /// `process` calls running now, and the most at once.
        inside: Arc<AtomicUsize>,
        most_inside: Arc<AtomicUsize>,
    }

    /// A processor that notes its calls, and whose `process` calls each wait
    /// for a go-ahead when it has a gate.
    struct Probe {
        shard: String,
        epoch: u64,
        log: Log,
        /// Told when a `process` call begins, with its first value.
        entered: Sender<String>,
        gate: Option<Receiver<()>>,
        setup: Setup,
    }

    impl Probe {
        fn note(&self, call: &str) {
            let line = format!("{call} {} {}", self.shard, self.epoch);
            self.log.lock().unwrap().push(line);
        }
    }

    impl ShardProcessor<String> for Probe {
        fn initialize(&mut self, shard_id: &str, _: &Checkpoint) -> HandlerResult {
            self.shard = shard_id.to_owned();
            self.note("initialize");
            Ok(())
        }

        fn process(
            &mut self,
            records: ShardBatch<String>,
            checkpointer: &Checkpointer,
        ) -> HandlerResult {
            self.epoch = records.epoch;
            let values: Vec<&str> = records
                .messages()
                .iter()
                .map(|m| m.value().as_str())
                .collect();
            self.note(&format!("process {}", values.join(",")));
            self.setup.kept.lock().unwrap().push(checkpointer.clone());
            let inside = self.setup.inside.fetch_add(1, Ordering::SeqCst) + 1;
            self.setup.most_inside.fetch_max(inside, Ordering::SeqCst);
            let _ = self.entered.send(values[0].to_owned());
            let waited = match &self.gate {
                Some(gate) => gate.recv_timeout(Duration::from_secs(10)).is_ok(),
                None => true,
            };
            self.setup.inside.fetch_sub(1, Ordering::SeqCst);
            if !waited {
                return Err("no go-ahead".into());
            }
            if self
                .setup
                .poison
                .as_deref()
                .is_some_and(|p| values.contains(&p))
            {
                return Err("poison".into());
            }
            Ok(())
        }

        fn lease_lost(&mut self) {
            self.note("lease_lost");
        }

        fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
            self.note("shutdown_requested");
            if self.setup.fail_last_call {
                return Err("shutdown_requested failed".into());
            }
            if self.setup.checkpoint_at_shutdown {
                checkpointer.checkpoint(&self.shard)?;
            }
            Ok(())
        }

        fn shard_ended(&mut self, _: &Checkpointer) -> HandlerResult {
            self.note("shard_ended");
            if self.setup.fail_last_call {
                return Err("shard_ended failed".into());
            }
            Ok(())
        }
    }

    /// Runs `dispatch` on its own thread over `delivery`, with probes.
    struct Dispatching {
        outputs: Sender<ReaderOutput<String>>,
        log: Log,
        entered: Receiver<String>,
        gate: Sender<()>,
        thread: std::thread::JoinHandle<Result<()>>,
        shutdown: Arc<std::sync::atomic::AtomicBool>,
    }

    fn dispatching(delivery: Delivery<String>, gated: bool) -> Dispatching {
        let setup = Setup {
            gated,
            ..Setup::default()
        };
        dispatching_with(delivery, setup)
    }

    fn dispatching_with(delivery: Delivery<String>, setup: Setup) -> Dispatching {
        let (outputs, records) = crossbeam_channel::unbounded();
        let log: Log = Arc::default();
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let (gate, gate_rx) = crossbeam_channel::unbounded();
        let shutdown = delivery.shutdown.clone();
        let probe_log = log.clone();
        let thread = std::thread::spawn(move || {
            dispatch(&records, delivery, move |_: &str| {
                let first = setup.made.fetch_add(1, Ordering::SeqCst) == 0;
                let gated = setup.gated && (first || !setup.gate_only_first);
                Probe {
                    shard: String::new(),
                    epoch: 0,
                    log: probe_log.clone(),
                    entered: entered_tx.clone(),
                    gate: gated.then(|| gate_rx.clone()),
                    setup: setup.clone(),
                }
            })
        });
        Dispatching {
            outputs,
            log,
            entered,
            gate,
            thread,
            shutdown,
        }
    }

    impl Dispatching {
        /// Waits for a `process` call to begin; its first value.
        fn entered(&self) -> String {
            self.entered
                .recv_timeout(Duration::from_secs(10))
                .expect("a process call")
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }

        fn stop(self) -> Result<()> {
            self.shutdown.store(true, Ordering::Relaxed);
            // Let any call waiting at the gate through.
            for _ in 0..100 {
                let _ = self.gate.send(());
            }
            self.thread.join().unwrap()
        }
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A reader's queue for `shard` under `epoch` holding `reads` chunks of
    /// one record each (values `{first}`, `{first + 1}`, …), their room
    /// taken in `budget`; the reader is gone (its sender dropped).
    fn queue_of(
        budget: &Arc<Budget>,
        shard: &str,
        epoch: u64,
        first: usize,
        reads: usize,
    ) -> Receiver<ReaderOutput<String>> {
        let (sender, queue) = crossbeam_channel::bounded(SHARD_QUEUE);
        for i in first..first + reads {
            let (sequence, value) = (format!("{}", i + 1), format!("{i}"));
            let chunk = chunk_in(budget, shard, epoch, &[(&sequence, &value)])
                .expect("room for a read: the budget ran out");
            sender.send(chunk).unwrap();
        }
        queue
    }

    #[test]
    fn chunks_left_in_a_queue_give_their_room_back() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        let budget = Arc::new(Budget::new(10_000, 1000));
        delivery.budget = budget.clone();
        let run = dispatching(delivery, true);
        // A stale reader's start, its queue holding a read: dropped.
        let stale = queue_of(&budget, "shard-1", epoch + 100, 0, 1);
        run.outputs
            .send(started_with("shard-1", epoch + 100, stale))
            .unwrap();
        // The current reader's three reads; the processor is inside the
        // first when shutdown is asked for.
        let queue = queue_of(&budget, "shard-1", epoch, 0, 3);
        run.outputs
            .send(started_with("shard-1", epoch, queue))
            .unwrap();
        assert_eq!(run.entered(), "0");
        // The stale reader's read is given back, the current three held.
        assert_eq!(budget.used(), (300, 3));
        run.stop().unwrap();
        assert_eq!(budget.used(), (0, 0), "room of chunks never processed");
    }

    #[test]
    fn eight_handoffs_of_a_busy_shard_keep_delivering_and_give_all_room_back() {
        let (_server, held) = held_leases();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        // Room for one full queue: a queue's worth leaked would stall the
        // next reader for good.
        let budget = Arc::new(Budget::new(100 * SHARD_QUEUE as u64, 1000));
        delivery.budget = budget.clone();
        let run = dispatching(delivery, true);
        for round in 0..8 {
            let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
            let first = round * SHARD_QUEUE;
            let queue = queue_of(&budget, "shard-1", epoch, first, SHARD_QUEUE);
            run.outputs
                .send(started_with("shard-1", epoch, queue))
                .unwrap();
            assert_eq!(run.entered(), first.to_string(), "round {round}");
            // A peer asks for the lease while the processor works.
            assert!(held.hand_over("shard-1", "peer"));
            run.gate.send(()).unwrap();
            let handed = format!("shutdown_requested shard-1 {epoch}");
            wait_until("the handoff", || run.log().contains(&handed));
            wait_until("the room given back", || budget.used() == (0, 0));
            wait_until("the lease released", || held.len() == 0);
        }
        let log = run.log.clone();
        run.stop().unwrap();
        let processed = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("process"))
            .count();
        assert_eq!(processed, 8, "a read delivered in every round");
    }

    /// A reader's queue for `shard` under `epoch` holding one read per
    /// value, sequence numbers 1, 2, … (no buffer room); the reader is gone.
    fn reads(shard: &str, epoch: u64, values: &[&str]) -> Receiver<ReaderOutput<String>> {
        let (sender, queue) = crossbeam_channel::unbounded();
        for (i, value) in values.iter().enumerate() {
            let sequence = (i + 1).to_string();
            sender
                .send(crate::worker::test_support::chunk(
                    shard,
                    epoch,
                    &[(&sequence, value)],
                ))
                .unwrap();
        }
        queue
    }

    #[test]
    fn a_failed_read_is_not_checkpointed_by_shutdown_requested() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        delivery.checkpointing = Checkpointing::Manual;
        let run = dispatching_with(
            delivery,
            Setup {
                poison: Some("poison".into()),
                checkpoint_at_shutdown: true,
                ..Setup::default()
            },
        );
        let queue = reads("shard-1", epoch, &["a", "b", "poison", "c"]);
        run.outputs
            .send(started_with("shard-1", epoch, queue))
            .unwrap();
        let result = run.thread.join().unwrap();
        assert!(
            matches!(&result, Err(Error::Handler(e)) if e.to_string() == "poison"),
            "{result:?}"
        );
        // `shutdown_requested` checkpointed the record before the poison.
        assert_eq!(
            *written.lock().unwrap(),
            [("shard-1".to_owned(), "2".to_owned())]
        );
    }

    #[test]
    fn a_flusher_never_checkpoints_a_read_whose_call_runs_or_fails() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(
            &held,
            ErrorPolicy::Retry {
                retries: 1,
                backoff: Duration::from_millis(1),
            },
        );
        delivery.checkpointing = Checkpointing::Manual;
        let flusher = delivery.checkpointer.clone();
        let run = dispatching_with(
            delivery,
            Setup {
                gated: true,
                poison: Some("poison".into()),
                ..Setup::default()
            },
        );
        let queue = reads("shard-1", epoch, &["a", "poison"]);
        run.outputs
            .send(started_with("shard-1", epoch, queue))
            .unwrap();
        assert_eq!(run.entered(), "a");
        // Inside the first call: nothing accepted yet.
        flusher.checkpoint("shard-1").unwrap();
        run.gate.send(()).unwrap();
        // Inside the failing call, then inside its retry: only "a".
        for _ in 0..2 {
            assert_eq!(run.entered(), "poison");
            flusher.checkpoint("shard-1").unwrap();
            let e = flusher
                .checkpoint_at("shard-1", &position("2"))
                .unwrap_err();
            assert!(e.to_string().contains("not accepted yet"), "{e}");
            run.gate.send(()).unwrap();
        }
        let result = run.thread.join().unwrap();
        assert!(matches!(&result, Err(Error::Handler(_))), "{result:?}");
        assert_eq!(
            *written.lock().unwrap(),
            [("shard-1".to_owned(), "1".to_owned())]
        );
    }

    fn position(sequence: &str) -> crate::record::ExtendedSequenceNumber {
        crate::record::ExtendedSequenceNumber {
            sequence_number: crate::record::SequenceNumber::parse(sequence).unwrap(),
            sub_sequence_number: 0,
        }
    }

    #[test]
    fn a_processor_of_an_ended_ownership_cannot_checkpoint_the_next_one() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        delivery.checkpointing = Checkpointing::Manual;
        let setup = Setup::default();
        let kept = setup.kept.clone();
        let run = dispatching_with(delivery, setup);
        let old = held.take("shard-1", 0, false).unwrap().unwrap();
        run.outputs
            .send(started_with("shard-1", old, reads("shard-1", old, &["a"])))
            .unwrap();
        assert_eq!(run.entered(), "a");
        // The lease lapses and this worker takes it again; the new
        // processor is handed "a" and "b" and accepts them.
        held.drop_lost("shard-1");
        let new = held.take("shard-1", 0, false).unwrap().unwrap();
        wait_until("the old processor told", || {
            run.log().contains(&format!("lease_lost shard-1 {old}"))
        });
        run.outputs
            .send(started_with(
                "shard-1",
                new,
                reads("shard-1", new, &["a", "b"]),
            ))
            .unwrap();
        assert_eq!(run.entered(), "a");
        assert_eq!(run.entered(), "b");
        // "a" was accepted before "b" was handed on: checkpointed by the
        // new processor's checkpointer from here, another thread.
        let new_checkpointer = kept.lock().unwrap()[2].clone();
        new_checkpointer
            .checkpoint_at("shard-1", &position("1"))
            .unwrap();
        written.lock().unwrap().clear();
        // The old processor's checkpointer writes nothing of the new
        // ownership.
        let e = kept.lock().unwrap()[0].checkpoint("shard-1").unwrap_err();
        assert!(matches!(e, Error::LeaseLost { .. }), "{e}");
        assert!(written.lock().unwrap().is_empty());
        run.stop().unwrap();
    }

    #[test]
    fn a_processor_s_last_checkpoint_never_written_fails_run_and_its_lease_is_not_released() {
        let refuse = Arc::new(AtomicUsize::new(usize::MAX));
        let (_server, held, written) = held_leases_noting(refuse);
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let run = dispatching(delivery(&held, ErrorPolicy::Stop), false);
        run.outputs
            .send(started_with(
                "shard-1",
                epoch,
                reads("shard-1", epoch, &["a"]),
            ))
            .unwrap();
        assert_eq!(run.entered(), "a");
        wait_until("the checkpoint refused", || {
            !written.lock().unwrap().is_empty()
        });
        let result = run.stop();
        match &result {
            Err(Error::CheckpointsNotSaved { shard_ids, .. }) => {
                assert_eq!(shard_ids, &["shard-1"])
            }
            other => panic!("{other:?}"),
        }
        assert!(written.lock().unwrap().len() >= 2, "tried again");
        // Forgotten, not released: the coordinator's leave() passes it by.
        assert!(held.shards().is_empty());
    }

    #[test]
    fn a_lease_is_handed_over_only_once_its_checkpoint_is_written() {
        let refuse = Arc::new(AtomicUsize::new(usize::MAX));
        let (_server, held, written) = held_leases_noting(refuse.clone());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let run = dispatching(delivery(&held, ErrorPolicy::Stop), true);
        run.outputs
            .send(started_with(
                "shard-1",
                epoch,
                reads("shard-1", epoch, &["a"]),
            ))
            .unwrap();
        assert_eq!(run.entered(), "a");
        assert!(held.hand_over("shard-1", "peer"));
        run.gate.send(()).unwrap();
        let refused = || {
            written
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, what)| what == "refused")
                .count()
        };
        wait_until("three refused writes", || refused() >= 3);
        assert_eq!(
            held.holding("shard-1", epoch),
            Holding::HandingOff,
            "not handed over while unsaved"
        );
        refuse.store(0, Ordering::SeqCst);
        wait_until("the lease handed over", || held.shards().is_empty());
        assert_eq!(
            written.lock().unwrap().last().unwrap(),
            &("shard-1".to_owned(), "1".to_owned())
        );
        run.stop().unwrap();
    }

    #[test]
    fn a_shard_s_new_processor_starts_only_once_the_old_one_ended() {
        let (_server, held) = held_leases();
        let setup = Setup {
            gated: true,
            gate_only_first: true,
            ..Setup::default()
        };
        let most_inside = setup.most_inside.clone();
        let run = dispatching_with(delivery(&held, ErrorPolicy::Stop), setup);
        let old = held.take("shard-1", 0, false).unwrap().unwrap();
        run.outputs
            .send(started_with(
                "shard-1",
                old,
                reads("shard-1", old, &["a", "b"]),
            ))
            .unwrap();
        assert_eq!(run.entered(), "a");
        // The lease lapses and is taken again while the old processor is
        // inside `process`: the new one waits for it to end.
        held.drop_lost("shard-1");
        let new = held.take("shard-1", 0, false).unwrap().unwrap();
        run.outputs
            .send(started_with(
                "shard-1",
                new,
                reads("shard-1", new, &["a", "b"]),
            ))
            .unwrap();
        let early = run.entered.recv_timeout(Duration::from_millis(300));
        assert!(early.is_err(), "the new processor ran beside the old one");
        run.gate.send(()).unwrap();
        assert_eq!(run.entered(), "a");
        assert_eq!(run.entered(), "b");
        let log = run.log();
        let lost = log
            .iter()
            .position(|l| *l == format!("lease_lost shard-1 {old}"));
        let second_start = log
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("initialize"))
            .nth(1)
            .map(|(i, _)| i);
        assert!(lost.is_some() && lost < second_start, "{log:?}");
        assert!(
            !log.contains(&format!("process b shard-1 {old}")),
            "nothing after the loss: {log:?}"
        );
        run.stop().unwrap();
        assert_eq!(most_inside.load(Ordering::SeqCst), 1);
    }

    /// A processor of shard-1 whose one record, "x", fails for ever under
    /// `Retry`, seen called and retried once; with its lease epoch.
    fn retrying_a_poisoned_read() -> (
        crate::aws::test_server::FakeServer,
        Arc<crate::lease::HeldLeases>,
        Dispatching,
        u64,
    ) {
        let (server, held) = held_leases();
        let policy = ErrorPolicy::Retry {
            retries: 100,
            backoff: Duration::from_millis(20),
        };
        let setup = Setup {
            poison: Some("x".into()),
            ..Setup::default()
        };
        let run = dispatching_with(delivery(&held, policy), setup);
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        run.outputs
            .send(started_with(
                "shard-1",
                epoch,
                reads("shard-1", epoch, &["x"]),
            ))
            .unwrap();
        assert_eq!(run.entered(), "x");
        assert_eq!(run.entered(), "x", "retried");
        (server, held, run, epoch)
    }

    #[test]
    fn retries_end_when_the_lease_is_lost() {
        let (_server, held, run, epoch) = retrying_a_poisoned_read();
        held.drop_lost("shard-1");
        let lost = format!("lease_lost shard-1 {epoch}");
        wait_until("the processor told", || run.log().contains(&lost));
        let log = run.log();
        let after = log.iter().skip_while(|l| **l != lost).count();
        assert_eq!(after, 1, "no call after lease_lost: {log:?}");
        // Not a failure of the consumer: the next owner reads "x" again.
        run.stop().unwrap();
    }

    #[test]
    fn a_lease_asked_for_that_never_got_a_processor_is_handed_over() {
        let (_server, held) = held_leases();
        let run = dispatching(delivery(&held, ErrorPolicy::Stop), false);
        // A child blocked behind its parent: held, never started.
        held.take("child", 0, false).unwrap().unwrap();
        assert!(held.hand_over("child", "peer"));
        wait_until("the lease handed over", || held.shards().is_empty());
        run.stop().unwrap();
    }

    #[test]
    fn a_shutdown_during_retries_ends_them_with_shutdown_requested() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let policy = ErrorPolicy::RetryThenReleaseShard {
            retries: 100,
            backoff: Duration::from_millis(20),
        };
        let setup = Setup {
            poison: Some("x".into()),
            ..Setup::default()
        };
        let run = dispatching_with(delivery(&held, policy), setup);
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        run.outputs
            .send(started_with(
                "shard-1",
                epoch,
                reads("shard-1", epoch, &["a", "x"]),
            ))
            .unwrap();
        assert_eq!(run.entered(), "a");
        assert_eq!(run.entered(), "x");
        assert_eq!(run.entered(), "x", "retried");
        let log = run.log.clone();
        run.stop().unwrap();
        let log = log.lock().unwrap().clone();
        assert!(
            log.contains(&format!("shutdown_requested shard-1 {epoch}")),
            "{log:?}"
        );
        assert!(!log.iter().any(|l| l.starts_with("lease_lost")), "{log:?}");
        // "a" is checkpointed, the failed read is not.
        assert_eq!(
            *written.lock().unwrap(),
            [("shard-1".to_owned(), "1".to_owned())]
        );
    }

    /// What `RetryThenReleaseShard` does when a processor's last call
    /// fails: the shard alone is given up and its lease released.
    fn a_failed_last_call_gives_up_the_shard_alone(ended: bool) {
        let (_server, held) = held_leases();
        let policy = ErrorPolicy::RetryThenReleaseShard {
            retries: 1,
            backoff: Duration::from_millis(1),
        };
        let setup = Setup {
            fail_last_call: true,
            gated: !ended,
            ..Setup::default()
        };
        let run = dispatching_with(delivery(&held, policy), setup);
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let queue = reads("shard-1", epoch, &["a"]);
        if ended {
            // The shard's end follows its last record.
            let (sender, ends) = crossbeam_channel::unbounded();
            for output in queue.try_iter() {
                sender.send(output).unwrap();
            }
            let ReaderOutput::Chunk(mut end) =
                crate::worker::test_support::chunk("shard-1", epoch, &[])
            else {
                unreachable!()
            };
            end.shard_end = true;
            sender.send(ReaderOutput::Chunk(end)).unwrap();
            run.outputs
                .send(started_with("shard-1", epoch, ends))
                .unwrap();
        } else {
            run.outputs
                .send(started_with("shard-1", epoch, queue))
                .unwrap();
        }
        assert_eq!(run.entered(), "a");
        if !ended {
            // A peer asks for the lease while the processor works.
            assert!(held.hand_over("shard-1", "peer"));
            run.gate.send(()).unwrap();
        }
        wait_until("the lease released", || held.shards().is_empty());
        let log = run.log();
        let last = if ended {
            "shard_ended"
        } else {
            "shutdown_requested"
        };
        let calls = log.iter().filter(|l| l.starts_with(last)).count();
        assert_eq!(calls, 2, "the call and its retry: {log:?}");
        assert!(!log.iter().any(|l| l.starts_with("lease_lost")), "{log:?}");
        // The consumer goes on.
        run.stop().unwrap();
    }

    #[test]
    fn a_failed_shard_ended_gives_up_the_shard_alone() {
        a_failed_last_call_gives_up_the_shard_alone(true);
    }

    #[test]
    fn a_failed_shutdown_requested_at_a_handoff_gives_up_the_shard_alone() {
        a_failed_last_call_gives_up_the_shard_alone(false);
    }

    #[test]
    fn retries_end_when_the_lease_is_asked_for_and_it_is_handed_over() {
        let (_server, held, run, epoch) = retrying_a_poisoned_read();
        assert!(held.hand_over("shard-1", "peer"));
        wait_until("the lease handed over", || held.shards().is_empty());
        let log = run.log();
        assert!(
            log.contains(&format!("shutdown_requested shard-1 {epoch}")),
            "{log:?}"
        );
        // Not a failure of the consumer: the asker reads "x" again.
        run.stop().unwrap();
    }

    /// How a processor misbehaves.
    #[derive(Clone, Copy)]
    enum Misstep {
        /// Manual checkpoints: `shard_ended` returns without checkpointing
        /// the end.
        ForgetsTheEnd,
        /// Checkpoints a position after the records it was handed.
        CheckpointsAhead,
        /// Checkpoints its records from another thread during the call.
        CheckpointsFromAFlusherTooEarly,
    }

    struct Misbehaving(Misstep);

    impl ShardProcessor<String> for Misbehaving {
        fn process(&mut self, records: ShardBatch<String>, c: &Checkpointer) -> HandlerResult {
            match self.0 {
                Misstep::ForgetsTheEnd => {}
                Misstep::CheckpointsAhead => c.checkpoint_at(records.shard_id(), &position("9"))?,
                Misstep::CheckpointsFromAFlusherTooEarly => {
                    let (c, shard) = (c.clone(), records.shard_id().to_owned());
                    std::thread::spawn(move || c.checkpoint_at(&shard, &position("1")))
                        .join()
                        .unwrap()?;
                }
            }
            Ok(())
        }
    }

    /// The error `run_processors` ends with when a processor misbehaving
    /// so is handed "a" then the shard's end, manual checkpoints.
    fn through_the_consumer(misstep: Misstep) -> String {
        let (_server, held) = held_leases();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        delivery.checkpointing = Checkpointing::Manual;
        let (outputs, records) = crossbeam_channel::unbounded();
        let run = std::thread::spawn(move || {
            dispatch(&records, delivery, move |_: &str| Misbehaving(misstep))
        });
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let (sender, queue) = crossbeam_channel::unbounded();
        sender
            .send(crate::worker::test_support::chunk(
                "shard-1",
                epoch,
                &[("1", "a")],
            ))
            .unwrap();
        let ReaderOutput::Chunk(mut end) =
            crate::worker::test_support::chunk("shard-1", epoch, &[])
        else {
            unreachable!()
        };
        end.shard_end = true;
        sender.send(ReaderOutput::Chunk(end)).unwrap();
        outputs.send(started_with("shard-1", epoch, queue)).unwrap();
        run.join().unwrap().unwrap_err().to_string()
    }

    /// The same through the public test kit.
    fn through_the_test_kit(misstep: Misstep) -> String {
        let mut harness = crate::testing::ProcessorHarness::with_message_handler(
            Misbehaving(misstep),
            |r: &crate::Record| String::from_utf8_lossy(r.data()).into_owned(),
        )
        .shard_id("shard-1")
        .checkpointing(Checkpointing::Manual);
        harness.initialize(Checkpoint::TrimHorizon).unwrap();
        let result = harness
            .process_data(["a"])
            .and_then(|()| harness.shard_ended());
        result.unwrap_err().to_string()
    }

    #[test]
    fn a_misbehaving_processor_fails_the_test_kit_as_it_fails_the_consumer() {
        for (misstep, says) in [
            (
                Misstep::ForgetsTheEnd,
                "returned without checkpointing the end",
            ),
            (
                Misstep::CheckpointsAhead,
                "sequence number 9 (sub-sequence 0) was not handed on",
            ),
            (
                Misstep::CheckpointsFromAFlusherTooEarly,
                "is not accepted yet",
            ),
        ] {
            let consumer = through_the_consumer(misstep);
            assert!(consumer.contains(says), "{consumer}");
            assert_eq!(through_the_test_kit(misstep), consumer);
        }
    }

    /// A processor under the dead-letter policy given one read of "a",
    /// "x" (poison) and "b", with a dead-letter handler that fails if
    /// `dead_letter_fails`: the log, the checkpoints written, what was
    /// dead-lettered, and the leases held, once `done` says so.
    fn poisoned_processor(
        dead_letter_fails: bool,
        done: impl Fn(&[String], &[(String, String)], usize) -> bool,
    ) -> (Vec<String>, Vec<(String, String)>, usize, usize) {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let mut delivery = delivery(
            &held,
            ErrorPolicy::RetryThenDeadLetter {
                retries: 0,
                backoff: Duration::ZERO,
            },
        );
        let dead = Arc::new(AtomicUsize::new(0));
        let counted = dead.clone();
        delivery.dead_letter =
            Some(Arc::new(
                move |_: &[crate::Record], _: &Error| match dead_letter_fails {
                    true => Err("queue down".into()),
                    false => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
            ));
        let setup = Setup {
            poison: Some("x".into()),
            ..Setup::default()
        };
        let run = dispatching_with(delivery, setup);
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let (sender, queue) = crossbeam_channel::unbounded();
        let read = [("1", "a"), ("2", "x"), ("3", "b")];
        sender
            .send(crate::worker::test_support::chunk("shard-1", epoch, &read))
            .unwrap();
        run.outputs
            .send(started_with("shard-1", epoch, queue))
            .unwrap();
        wait_until("the isolation", || {
            done(&run.log(), &written.lock().unwrap(), held.shards().len())
        });
        let log = run.log();
        let leases = held.shards().len();
        run.stop().unwrap();
        let written = written.lock().unwrap().clone();
        (log, written, dead.load(Ordering::SeqCst), leases)
    }

    #[test]
    fn a_processor_s_poison_record_is_dead_lettered_and_its_siblings_processed() {
        let checkpointed_3 =
            |_: &[String], w: &[(String, String)], _| w.iter().any(|(_, c)| c == "3");
        let (log, written, dead, leases) = poisoned_processor(false, checkpointed_3);
        assert_eq!(dead, 1);
        assert!(log.contains(&"process a shard-1 1".to_owned()), "{log:?}");
        assert!(log.contains(&"process b shard-1 1".to_owned()), "{log:?}");
        assert!(!log.iter().any(|l| l.starts_with("lease_lost")), "{log:?}");
        assert!(written.iter().all(|(_, c)| c == "3"), "{written:?}");
        assert_eq!(leases, 1, "the shard goes on");
    }

    #[test]
    fn a_processor_whose_dead_letter_handler_fails_gives_up_its_shard_before_the_record() {
        let given_up = |log: &[String], _: &[(String, String)], leases| {
            leases == 0 && log.iter().any(|l| l.starts_with("lease_lost"))
        };
        let (log, written, dead, leases) = poisoned_processor(true, given_up);
        assert_eq!(dead, 0);
        assert!(!log.contains(&"process b shard-1 1".to_owned()), "{log:?}");
        assert_eq!(written, [("shard-1".to_owned(), "1".to_owned())]);
        assert_eq!(leases, 0, "released");
    }

    /// Issue 27: a processor's time is its own shard's load, all of it,
    /// even while another shard's processor runs at the same time (the
    /// batch handler's time is split by records instead).
    #[test]
    fn each_processor_s_time_is_charged_to_its_own_shard_alone() {
        let (_server, held) = held_leases();
        let slow = held.take("shard-1", 0, false).unwrap().unwrap();
        let quick = held.take("shard-2", 0, false).unwrap().unwrap();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        let budget = Arc::new(Budget::new(10_000, 1000));
        delivery.budget = budget.clone();
        let load = delivery.load.clone();
        let setup = Setup {
            gated: true,
            gate_only_first: true,
            ..Setup::default()
        };
        let run = dispatching_with(delivery, setup);
        // shard-1's processor (the first made) waits at its gate inside
        // `process`; shard-2's returns at once meanwhile.
        let queue = queue_of(&budget, "shard-1", slow, 0, 1);
        run.outputs
            .send(started_with("shard-1", slow, queue))
            .unwrap();
        assert_eq!(run.entered(), "0");
        let queue = queue_of(&budget, "shard-2", quick, 10, 1);
        run.outputs
            .send(started_with("shard-2", quick, queue))
            .unwrap();
        assert_eq!(run.entered(), "10");
        let charged = |shard: &str| load.load_of(shard).is_some();
        wait_until("shard-2's call charged", || charged("shard-2"));
        std::thread::sleep(Duration::from_millis(300));
        // Read as of now, before shard-1's call ends: each lease's rate is
        // then its seconds busy (one sample, no decay, taken over the
        // shortest span, 1 s), whatever the scheduler does later.
        let read_at = Instant::now();
        run.gate.send(()).unwrap();
        wait_until("shard-1's call charged", || charged("shard-1"));
        let loads: HashMap<String, f64> = load
            .loads_at(read_at)
            .into_iter()
            .map(|(lease, l)| (lease, l.busy_fraction))
            .collect();
        let (slow_busy, quick_busy) = (loads["shard-1"], loads["shard-2"]);
        // At least the 300 ms its call waited at the gate.
        assert!(slow_busy >= 0.3, "shard-1 busy {slow_busy}");
        // Charged evenly between the two (the batch handler's rule for
        // equal records), each would read about 0.15.
        assert!(
            quick_busy < slow_busy / 3.0,
            "shard-2 busy {quick_busy}, shard-1 {slow_busy}"
        );
        run.stop().unwrap();
    }
}
