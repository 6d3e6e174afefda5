//! Per-shard processors, the KCL's processing model: one processor per
//! shard held, each on its own thread, told when its shard is gained,
//! lost, ended or shut down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, HandlerResult, Result};
use crate::lease::{Checkpoint, Holding};
use crate::worker::batch::ShardBatch;
use crate::worker::checkpointer::Checkpointer;
use crate::worker::processing::{
    Delivery, ErrorPolicy, KeptShard, SHUTDOWN_CHECK, call_with_policy,
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
/// dropped. The `Checkpointer` is the consumer's (clonable, for use from
/// other threads and later).
///
/// A call that returns an error or panics is handled by the consumer's
/// [`ErrorPolicy`]; with automatic checkpoints, the records of a failed
/// call are never checkpointed.
pub trait ShardProcessor<T>: Send {
    /// The shard was gained; its records are read from `from`.
    fn initialize(&mut self, shard_id: &str, from: &Checkpoint) -> HandlerResult {
        let _ = (shard_id, from);
        Ok(())
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
    /// the last chance to checkpoint; the lease is released after this.
    fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> HandlerResult {
        let _ = checkpointer;
        Ok(())
    }
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
    let mut running: Vec<JoinHandle<()>> = Vec::new();
    let mut failure = None;
    while failure.is_none() && !delivery.stopping() {
        if let Ok(error) = failures.try_recv() {
            failure = Some(error);
            break;
        }
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
                    delivery: delivery.clone(),
                    pending: None,
                    last_written: None,
                };
                let failed = failed.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("kinesis-processor-{shard_id}"))
                    .spawn(move || {
                        if let Err(error) = task.run(from) {
                            let _ = failed.send(error);
                        }
                    });
                match spawned {
                    Ok(handle) => running.push(handle),
                    Err(e) => {
                        failure = Some(Error::Internal(format!(
                            "cannot start a processor thread for {shard_id}: {e}"
                        )))
                    }
                }
            }
            Ok(ReaderOutput::Started { records: None, .. }) => {}
            Ok(ReaderOutput::Chunk(chunk)) => release(&delivery, &chunk),
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
                let (done, still): (Vec<_>, Vec<_>) =
                    running.into_iter().partition(|h| h.is_finished());
                running = still;
                done.into_iter().for_each(join);
            }
            Err(RecvTimeoutError::Disconnected) => {
                failure = Some(Error::Internal("every reader is gone".into()));
            }
        }
    }
    // Every processor sees the flag and shuts its shard down.
    delivery.shutdown.store(true, Ordering::Relaxed);
    running.into_iter().for_each(join);
    match failure.or_else(|| failures.try_recv().ok()) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn join(handle: JoinHandle<()>) {
    if handle.join().is_err() {
        log::error!("a shard processor thread panicked");
    }
}

fn release<T>(delivery: &Delivery<T>, chunk: &Chunk<T>) {
    delivery
        .budget
        .release(chunk.bytes, chunk.messages.len() as u64);
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
        let result = self.call("initialize", |p, _| p.initialize(&shard_id, &from));
        let result = result.and_then(|()| self.work());
        let outcome = match result {
            Ok(end) => self.finish(end),
            Err(error) if self.gives_up_shard_alone(&error) => {
                log::warn!("giving up shard {shard_id} after its processor failed: {error}");
                self.processor.lease_lost();
                // What was processed before the failure is done: checkpoint
                // it, so that the shard's next reader starts at the failure.
                self.write_pending(true);
                if let Err(e) = self.delivery.held.release(&shard_id) {
                    log::warn!("releasing lease {shard_id} failed (it will expire): {e}");
                }
                Ok(())
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

    fn gives_up_shard_alone(&self, error: &Error) -> bool {
        matches!(
            self.delivery.error_policy,
            ErrorPolicy::RetryThenReleaseShard { .. }
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
                    self.process(chunk)?;
                    if ended {
                        return Ok(End::Ended);
                    }
                }
                Ok(ReaderOutput::Failed { error, .. }) => return Err(error),
                Ok(ReaderOutput::Started { .. } | ReaderOutput::Fatal(_)) => {}
                Err(RecvTimeoutError::Timeout) => self.write_pending(false),
                Err(RecvTimeoutError::Disconnected) => reader_gone = true,
            }
        }
    }

    /// Calls the processor with one read's records.
    fn process(&mut self, chunk: Chunk<T>) -> Result<()> {
        let room = (chunk.bytes, chunk.messages.len() as u64);
        let data_bytes = chunk.data_bytes;
        let shard = ShardBatch {
            shard_id: chunk.shard_id,
            messages: chunk.messages,
            millis_behind_latest: chunk.millis_behind_latest,
            shard_ended: chunk.shard_end,
            epoch: chunk.epoch,
        };
        let records = shard.messages.len();
        let position = match shard.messages.last() {
            Some(m) => Checkpoint::At(m.record.position.clone()),
            None => {
                self.delivery.budget.release(room.0, room.1);
                return Ok(()); // the end of the shard alone: nothing to process
            }
        };
        let handed = if shard.shard_ended {
            Checkpoint::ShardEnd
        } else {
            position.clone()
        };
        self.delivery
            .checkpointer
            .handed(&self.shard_id, self.epoch, handed);
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
        self.delivery.record_call(started, records);
        self.delivery.budget.release(room.0, room.1);
        result?;
        self.delivery
            .record_processed(&self.shard_id, records, data_bytes);
        if self.delivery.automatic() {
            self.pending = Some(position);
            self.write_pending(false);
        }
        Ok(())
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
                self.call("shutdown_requested", |p, c| p.shutdown_requested(c))?;
                self.write_pending(true);
                Ok(())
            }
            End::HandingOff => {
                self.call("shutdown_requested", |p, c| p.shutdown_requested(c))?;
                self.write_pending(true);
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
        self.delivery
            .checkpointer
            .handed(&self.shard_id, self.epoch, Checkpoint::ShardEnd);
        let automatic = self.delivery.automatic();
        let (shard_id, epoch) = (self.shard_id.clone(), self.epoch);
        self.call("shard_ended", |p, checkpointer| {
            p.shard_ended(checkpointer)?;
            if automatic || checkpointer.is_finished(&shard_id, epoch) {
                return Ok(());
            }
            Err(format!(
                "shard_ended of shard {shard_id} returned without checkpointing the end of the shard (call Checkpointer::checkpoint): its children cannot start until it does"
            )
            .into())
        })?;
        if automatic {
            self.pending = Some(Checkpoint::ShardEnd);
            // Until written, the children wait: keep trying while the
            // lease is ours.
            while self.pending.is_some() && !self.delivery.stopping() {
                self.write_pending(true);
                if self.pending.is_some() {
                    std::thread::sleep(SHUTDOWN_CHECK * 10);
                }
            }
        }
        Ok(())
    }

    /// Calls the processor under the error policy.
    fn call(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut P, &Checkpointer) -> HandlerResult,
    ) -> Result<()> {
        let what = format!("the processor of shard {} ({what})", self.shard_id);
        let checkpointer = &self.delivery.checkpointer;
        let processor = &mut self.processor;
        call_with_policy(
            &self.delivery.error_policy,
            &self.delivery.shutdown,
            &what,
            |_| call(processor, checkpointer),
        )
    }

    /// Writes the automatic checkpoint when due (or now, when `now`); a
    /// failed write is retried later, a lost lease ends with the shard.
    fn write_pending(&mut self, now: bool) {
        let Some(checkpoint) = self.pending.clone() else {
            return;
        };
        let due = now
            || checkpoint == Checkpoint::ShardEnd
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
