//! The ticker: every batch interval it gathers what the readers handed on,
//! calls the user's batch handler with it and with what changed in the
//! shards held, and checkpoints what the handler accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, HandlerResult, Result};
use crate::lease::{Checkpoint, Holding};
use crate::metrics::Metric;
use crate::worker::batch::{Batch, GoesBack, ShardBatch, ShardEvent};
use crate::worker::budget::Room;
use crate::worker::dead_letter::isolate;
use crate::worker::processing::{
    Called, Delivery, ErrorPolicy, KeptShard, SHUTDOWN_CHECK, not_saved, outcome,
    release_unopened_handoffs, worth_retrying, write_last,
};
use crate::worker::reader::{Chunk, ReaderOutput};

/// A checkpoint accepted by the handler but not yet written.
#[derive(Debug)]
struct Pending {
    epoch: u64,
    checkpoint: Checkpoint,
}

/// A shard the application was told it gained, and not yet that it lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Open {
    pub epoch: u64,
    /// Told to shut the shard down: released after the next batch.
    pub closing: bool,
}

/// What happened to an open shard's lease since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Change {
    /// Another worker has it (or no heartbeat landed in time).
    Lost,
    /// Its end was checkpointed and it was released: nothing to tell.
    Finished,
    /// Another worker asked for it: tell the application, then release.
    HandingOff,
}

/// What to do about each open shard, given where its lease stands and
/// whether its end was checkpointed. Shards already closing need nothing.
pub(crate) fn changes(
    open: &HashMap<Arc<str>, Open>,
    holding: impl Fn(&str, u64) -> Holding,
    finished: impl Fn(&str, u64) -> bool,
) -> Vec<(Arc<str>, Change)> {
    let mut changes: Vec<(Arc<str>, Change)> = open
        .iter()
        .filter_map(|(shard_id, o)| {
            let change = match holding(shard_id, o.epoch) {
                Holding::Current => return None,
                Holding::HandingOff if o.closing => return None,
                Holding::HandingOff => Change::HandingOff,
                Holding::Gone if finished(shard_id, o.epoch) => Change::Finished,
                Holding::Gone => Change::Lost,
            };
            Some((shard_id.clone(), change))
        })
        .collect();
    changes.sort();
    changes
}

/// How often a shard read to its end whose end the application has not
/// checkpointed (manual checkpoints) is warned about: its children wait.
const END_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The shards of `waiting` (each with when its next warning is due) to warn
/// about at `now`, their next warnings set `every` later; shards whose end
/// is checkpointed (`finished`) leave `waiting`.
pub(crate) fn ends_to_warn(
    waiting: &mut HashMap<Arc<str>, Instant>,
    now: Instant,
    every: Duration,
    finished: impl Fn(&str) -> bool,
) -> Vec<Arc<str>> {
    waiting.retain(|shard_id, _| !finished(shard_id));
    let mut due: Vec<Arc<str>> = Vec::new();
    for (shard_id, next) in waiting.iter_mut() {
        if now >= *next {
            due.push(shard_id.clone());
            *next = now + every;
        }
    }
    due.sort();
    due
}

/// The position a shard's part of a batch hands on: its last record, or
/// its end.
fn handed_position<T>(shard: &ShardBatch<T>) -> Option<Checkpoint> {
    if shard.shard_ended {
        return Some(Checkpoint::ShardEnd);
    }
    Some(Checkpoint::At(
        shard.messages.last()?.record.position.clone(),
    ))
}

/// A shard of a batch that stopped part-way under the dead-letter policy.
struct Stopped {
    shard_id: Arc<str>,
    epoch: u64,
    /// The last position done (accepted or dead-lettered), if any.
    through: Option<Checkpoint>,
    error: Error,
    /// Cut by a shutdown or the lease's change: checkpointed through
    /// `through` as usual, not given up.
    cut: bool,
}

/// Isolates the rejected records of each shard of a batch that failed
/// after its retries (dead-letter policy): each shard alone, then halves
/// of a failing one (see [`isolate`]). The batch's events ride along until
/// a call accepts them (with the `Lost` events of the shards lost during
/// the retries, which are left out). Returns the shards that stopped
/// part-way, and the events no call accepted (for the next batch).
fn isolate_shards<T>(
    delivery: &Delivery<T>,
    kept: &Kept,
    lost: &[(Arc<str>, u64)],
    handler: &mut dyn FnMut(Batch<T>) -> HandlerResult,
) -> (Vec<Stopped>, Vec<ShardEvent>) {
    let mut all_events = kept.events.clone();
    all_events.extend(lost.iter().map(|(shard_id, _)| ShardEvent::Lost {
        shard_id: shard_id.to_string(),
    }));
    let mut events = Some(all_events);
    let mut stopped = Vec::new();
    for shard in &kept.shards {
        let (shard_id, epoch) = shard.lease();
        if lost.iter().any(|(id, _)| id == shard_id) {
            continue;
        }
        let stop =
            || delivery.stopping() || delivery.held.holding(shard_id, epoch) != Holding::Current;
        let mut deliver = |part: ShardBatch<T>| {
            let batch = Batch {
                time: kept.time,
                shards: vec![part],
                events: events.clone().unwrap_or_default(),
                last: false,
            };
            let result = handler(batch);
            if result.is_ok() {
                events = None;
            }
            result
        };
        let what = format!("the batch handler (shard {shard_id} alone)");
        let isolated = isolate(delivery, shard, None, &stop, &what, &mut deliver);
        if let Some(error) = isolated.stopped {
            stopped.push(Stopped {
                shard_id: shard_id.clone(),
                epoch,
                through: shard.handed(isolated.done),
                error,
                cut: isolated.cut,
            });
        }
    }
    (stopped, events.unwrap_or_default())
}

/// A batch's records, kept so that a retry hands the same ones on again.
struct Kept {
    time: SystemTime,
    shards: Vec<KeptShard>,
    events: Vec<ShardEvent>,
    last: bool,
}

impl Kept {
    fn of<T>(batch: &Batch<T>) -> Kept {
        Kept {
            time: batch.time,
            shards: batch.shards.iter().map(KeptShard::of).collect(),
            events: batch.events.clone(),
            last: batch.last,
        }
    }

    /// The batch made again for a retry, without the shards whose lease
    /// was lost since (added to `lost`, each told once with a `Lost`
    /// event): a retry never hands on records of a lease another worker
    /// may hold.
    fn remake<T>(&self, delivery: &Delivery<T>, lost: &mut Vec<(Arc<str>, u64)>) -> Batch<T> {
        let mut events = self.events.clone();
        let mut shards = Vec::new();
        for kept in &self.shards {
            let (shard_id, epoch) = kept.lease();
            if delivery.held.holding(shard_id, epoch) == Holding::Gone {
                if !lost.iter().any(|(id, _)| **id == **shard_id) {
                    lost.push((shard_id.clone(), epoch));
                }
                events.push(ShardEvent::Lost {
                    shard_id: shard_id.to_string(),
                });
                continue;
            }
            shards.push(kept.remake(&delivery.message_handler));
        }
        Batch {
            time: self.time,
            shards,
            events,
            last: self.last,
        }
    }
}

pub(crate) struct Ticker<'a, T> {
    records: &'a Receiver<ReaderOutput<T>>,
    delivery: Delivery<T>,
    open: HashMap<Arc<str>, Open>,
    /// Events for the next batch.
    events: Vec<ShardEvent>,
    pending: HashMap<Arc<str>, Pending>,
    last_written: HashMap<Arc<str>, Instant>,
    /// Manual checkpoints: open shards read to their end whose end is not
    /// checkpointed yet, with when to warn about each next.
    ends_waiting: HashMap<Arc<str>, Instant>,
    /// [`END_WARNING_EVERY`] (shorter in tests).
    end_warning_every: Duration,
}

impl<'a, T> Ticker<'a, T> {
    pub(crate) fn new(records: &'a Receiver<ReaderOutput<T>>, delivery: Delivery<T>) -> Self {
        Ticker {
            records,
            delivery,
            open: HashMap::new(),
            events: Vec::new(),
            pending: HashMap::new(),
            last_written: HashMap::new(),
            ends_waiting: HashMap::new(),
            end_warning_every: END_WARNING_EVERY,
        }
    }

    /// Runs batches until shutdown (handing on a last batch then) or an
    /// error; on the way out writes every checkpoint the handler earned.
    /// A last checkpoint that cannot be written within the last
    /// checkpoint time fails `run` (after any other failure), naming the
    /// shard; its lease is not released.
    pub(crate) fn run(&mut self, handler: &mut dyn FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        let result = self.batches(handler);
        let unsaved = self.write_last_checkpoints();
        // The leases are released next: no checkpoint after this.
        for (shard_id, open) in std::mem::take(&mut self.open) {
            self.delivery.checkpointer.closed(&shard_id, open.epoch);
        }
        outcome(result.err().into_iter().chain(unsaved))
    }

    /// Writes every checkpoint the handler earned, each failed write tried
    /// again until the last checkpoint time is up; returns an error for
    /// each shard left unsaved (see [`not_saved`]).
    fn write_last_checkpoints(&mut self) -> Vec<Error> {
        let until = Instant::now() + self.delivery.last_checkpoint_time;
        let mut pending: Vec<(Arc<str>, Pending)> = self.pending.drain().collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unsaved = Vec::new();
        for (shard_id, p) in pending {
            let checkpointer = &self.delivery.checkpointer;
            match write_last(
                &shard_id,
                || Instant::now() >= until,
                || checkpointer.write(&shard_id, p.epoch, &p.checkpoint),
            ) {
                Ok(()) => {}
                Err(e) if !worth_retrying(&e) => log::info!("not checkpointing {shard_id}: {e}"),
                Err(e) => unsaved.push(not_saved(&self.delivery.held, &shard_id, e)),
            }
        }
        unsaved
    }

    fn batches(&mut self, handler: &mut dyn FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        let interval = self.delivery.batch_interval;
        let mut tick = Instant::now() + interval;
        loop {
            let Some(chunks) = self.gather_until(tick)? else {
                return self.last_batch(handler);
            };
            tick += interval;
            if tick < Instant::now() {
                // The handler took longer than an interval: do not try to catch up.
                tick = Instant::now() + interval;
            }
            self.look_at_leases();
            let (batch, room, shard_bytes) = self.build(chunks);
            // Kept at every metrics level: the live figures need them.
            let processed: Vec<(Arc<str>, usize, u64, Option<SystemTime>)> = batch
                .shards
                .iter()
                .zip(shard_bytes)
                .map(|(s, bytes)| {
                    let last = s.messages.last();
                    let arrival = last.and_then(|m| m.record().approximate_arrival_timestamp());
                    (s.shard_id.clone(), s.messages.len(), bytes, arrival)
                })
                .collect();
            let ends: Vec<(Arc<str>, u64, Checkpoint)> = batch
                .shards
                .iter()
                .filter_map(|s| Some((s.shard_id.clone(), s.epoch, handed_position(s)?)))
                .collect();
            let (result, mut stopped) = self.hand_on(batch, handler);
            // The batch is handled: the readers may fill its room again.
            drop(room);
            let accepted = matches!(result, Ok(Called::Done));
            // Shards lost during retries were not accepted in the end.
            let open = &self.open;
            let ends: Vec<_> = ends
                .into_iter()
                .filter(|(id, epoch, _)| open.get(id).is_some_and(|o| o.epoch == *epoch))
                .collect();
            for (shard_id, epoch, _) in &ends {
                self.delivery
                    .checkpointer
                    .call_ended(shard_id, *epoch, accepted);
            }
            if !accepted {
                // Failed; or a shutdown ended its retries: then nothing of
                // it is checkpointed, and the last batch follows.
                result?;
                continue;
            }
            let is_stopped = |id: &Arc<str>| stopped.iter().any(|s| s.shard_id == *id);
            for (shard_id, records, bytes, arrival) in &processed {
                if self.open.contains_key(shard_id) && !is_stopped(shard_id) {
                    self.delivery
                        .record_processed(shard_id, *records, *bytes, *arrival);
                }
            }
            if self.delivery.automatic() {
                for (shard_id, epoch, checkpoint) in ends {
                    let stop = stopped.iter().find(|s| s.shard_id == shard_id);
                    // A cut shard is checkpointed as far as it got.
                    let checkpoint = match stop {
                        None => Some(checkpoint),
                        Some(s) if s.cut => s.through.clone(),
                        Some(_) => None,
                    };
                    if let Some(checkpoint) = checkpoint {
                        self.pending.insert(shard_id, Pending { epoch, checkpoint });
                    }
                }
                self.write_checkpoints();
            }
            stopped.retain(|s| !s.cut);
            self.give_up(stopped);
            self.release_closing();
        }
    }

    /// The batch handed on once shutdown was asked for: no records, and
    /// the last chance to checkpoint every open shard.
    fn last_batch(&mut self, handler: &mut dyn FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        self.look_at_leases();
        let mut shutting: Vec<&Arc<str>> = self
            .open
            .iter()
            .filter(|(_, o)| !o.closing)
            .map(|(id, _)| id)
            .collect();
        shutting.sort();
        for shard_id in shutting {
            self.events.push(ShardEvent::ShutdownRequested {
                shard_id: shard_id.to_string(),
            });
        }
        let batch = Batch {
            time: SystemTime::now(),
            shards: Vec::new(),
            events: std::mem::take(&mut self.events),
            last: true,
        };
        // Its failure is the handler's to report: no retry is owed.
        self.hand_on(batch, handler).0?.done()
    }

    /// Calls the handler with `batch` under the error policy; its records
    /// are accepted when it returns [`Called::Done`], but for the shards
    /// that stopped part-way (dead-letter policy), returned besides.
    fn hand_on(
        &mut self,
        batch: Batch<T>,
        handler: &mut dyn FnMut(Batch<T>) -> HandlerResult,
    ) -> (Result<Called>, Vec<Stopped>) {
        let shares: Vec<(Arc<str>, usize)> = batch
            .shards
            .iter()
            .map(|s| (s.shard_id.clone(), s.messages.len()))
            .collect();
        let policy = match self.delivery.error_policy {
            // One handler for every shard: no shard to give up alone.
            ErrorPolicy::RetryThenReleaseShard { retries, backoff } => {
                ErrorPolicy::Retry { retries, backoff }
            }
            other => other,
        };
        // Kept only when a retry may need them again.
        let kept = (policy != ErrorPolicy::Stop).then(|| Kept::of(&batch));
        let mut first = Some(batch);
        let started = Instant::now();
        let delivery = &self.delivery;
        let mut lost = Vec::new();
        let result = delivery.call(
            &policy,
            &|| delivery.stopping(),
            "the batch handler",
            &mut |_| match (first.take(), &kept) {
                (Some(batch), _) => handler(batch),
                (None, Some(kept)) => handler(kept.remake(delivery, &mut lost)),
                (None, None) => Err("no records kept for a retry".into()),
            },
        );
        let (mut stopped, mut unaccepted) = (Vec::new(), Vec::new());
        let result = match (result, &kept) {
            (Err(Error::Handler(_) | Error::HandlerPanicked(_)), Some(kept))
                if policy.dead_letters() && !kept.shards.is_empty() =>
            {
                (stopped, unaccepted) = isolate_shards(delivery, kept, &lost, handler);
                Ok(Called::Done)
            }
            (result, _) => result,
        };
        delivery.record_call(started, &shares, None);
        // Events no call accepted are handed on again with the next batch.
        unaccepted.append(&mut self.events);
        self.events = unaccepted;
        // Their loss was told in the retried batch: not again.
        for (shard_id, epoch) in lost {
            self.forget(&shard_id, epoch);
        }
        (result, stopped)
    }

    /// Gives up the shards that stopped part-way (dead-letter policy):
    /// what was done before is checkpointed, then the lease released, so
    /// that the shard is read again from there. Unsaved, the lease is left
    /// to expire instead: its next owner reads from the table's checkpoint.
    fn give_up(&mut self, stopped: Vec<Stopped>) {
        for s in stopped {
            if self
                .open
                .get(&s.shard_id)
                .is_none_or(|o| o.epoch != s.epoch)
            {
                continue; // lost meanwhile: nothing of it is ours to write
            }
            log::error!(
                "giving up shard {} where it stopped ({}); its lease is released: {}",
                s.shard_id,
                match &s.through {
                    Some(c) => format!("checkpointed through {c:?}"),
                    None => "nothing more checkpointed".into(),
                },
                s.error
            );
            let earlier = self.pending.remove(&s.shard_id).map(|p| p.checkpoint);
            // Manual checkpoints: the application's to write (it was
            // handed the records; it is told the shard is lost).
            let through = s.through.or(earlier).filter(|_| self.delivery.automatic());
            let saved = match through {
                Some(c) => self.delivery.checkpointer.write(&s.shard_id, s.epoch, &c),
                None => Ok(()),
            };
            match saved {
                Ok(()) => {
                    if let Err(e) = self.delivery.held.release(&s.shard_id) {
                        log::warn!(
                            "releasing lease {} failed (it will expire): {e}",
                            s.shard_id
                        );
                    }
                }
                Err(e) => {
                    log::warn!(
                        "checkpoint of {} failed; its lease is left to expire: {e}",
                        s.shard_id
                    );
                    self.delivery.held.drop_lost(&s.shard_id);
                }
            }
            self.close(&s.shard_id, s.epoch, Change::Lost);
        }
    }

    /// Collects chunks until `tick`; `None` when shutdown was asked for.
    fn gather_until(&mut self, tick: Instant) -> Result<Option<Vec<Chunk<T>>>> {
        let mut chunks = Vec::new();
        loop {
            if self.delivery.stopping() {
                return Ok(None);
            }
            // Past the tick, still take what already waits (a slow handler
            // or checkpoint write must not leave it for a batch later).
            let now = Instant::now();
            let wait = tick.saturating_duration_since(now).min(SHUTDOWN_CHECK);
            match self.records.recv_timeout(wait) {
                Ok(ReaderOutput::Chunk(chunk)) => {
                    if self.delivery.held.is_current(&chunk.shard_id, chunk.epoch) {
                        chunks.push(chunk);
                    }
                    // Otherwise read under a lease we no longer hold: the
                    // next owner reads it again (dropped, it gives its room back).
                }
                Ok(ReaderOutput::Started {
                    shard_id,
                    epoch,
                    from,
                    ..
                }) => self.gained(shard_id, epoch, from),
                Ok(ReaderOutput::Failed {
                    shard_id,
                    epoch,
                    error,
                }) => {
                    if self.delivery.held.is_current(&shard_id, epoch) {
                        return Err(error);
                    }
                    // A reader of a lease given up since: its failure
                    // concerns the shard's next reader, not this consumer.
                    log::info!("ignoring the failure of a stale reader of {shard_id}: {error}");
                }
                Ok(ReaderOutput::Fatal(error)) => return Err(error),
                Err(RecvTimeoutError::Timeout) if now >= tick => return Ok(Some(chunks)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal("every reader is gone".into()));
                }
            }
        }
    }

    /// A reader started on a lease taken: tell the application (after the
    /// loss of the same shard's earlier ownership, if it was not told yet).
    fn gained(&mut self, shard_id: Arc<str>, epoch: u64, from: Checkpoint) {
        if !self.delivery.held.is_current(&shard_id, epoch) {
            return;
        }
        if let Some(old) = self.open.get(&shard_id).copied() {
            self.close(&shard_id, old.epoch, Change::Lost);
        }
        self.delivery.checkpointer.gained(&shard_id, epoch, &from);
        self.open.insert(
            shard_id.clone(),
            Open {
                epoch,
                closing: false,
            },
        );
        self.events.push(ShardEvent::Gained {
            shard_id: shard_id.to_string(),
            from,
        });
    }

    /// Notes what happened to the open shards' leases as events, and hands
    /// over at once the leases asked for that were never opened (blocked
    /// behind their parents: nothing was handed on).
    fn look_at_leases(&mut self) {
        let held = &self.delivery.held;
        let checkpointer = &self.delivery.checkpointer;
        let found = changes(
            &self.open,
            |shard, epoch| held.holding(shard, epoch),
            |shard, epoch| checkpointer.is_finished(shard, epoch),
        );
        for (shard_id, change) in found {
            let epoch = self.open[&shard_id].epoch;
            match change {
                Change::HandingOff => {
                    self.open.insert(
                        shard_id.clone(),
                        Open {
                            epoch,
                            closing: true,
                        },
                    );
                    self.events.push(ShardEvent::ShutdownRequested {
                        shard_id: shard_id.to_string(),
                    });
                }
                other => self.close(&shard_id, epoch, other),
            }
        }
        release_unopened_handoffs(&self.delivery.held, |id| self.open.contains_key(id));
        self.warn_about_waiting_ends();
    }

    /// Warns (once every [`END_WARNING_EVERY`], the first time that long
    /// after the end was handed on) about each open shard read
    /// to its end whose end is not checkpointed, and counts it in the
    /// `ShardEndsNotCheckpointed` metric: with manual checkpoints, an
    /// application that never checkpoints an ended shard holds its
    /// children back.
    fn warn_about_waiting_ends(&mut self) {
        let (open, checkpointer) = (&self.open, &self.delivery.checkpointer);
        let due = ends_to_warn(
            &mut self.ends_waiting,
            Instant::now(),
            self.end_warning_every,
            |shard| {
                open.get(shard)
                    .is_none_or(|o| checkpointer.is_finished(shard, o.epoch))
            },
        );
        for shard_id in due {
            log::warn!(
                "shard {shard_id} was read to its end but its end is not checkpointed: its children are not read until the application calls Checkpointer::checkpoint(\"{shard_id}\")"
            );
            self.delivery
                .metrics
                .record(Some(&shard_id), &[(Metric::ShardEndsNotCheckpointed, 1.0)]);
        }
    }

    /// Forgets an open shard, telling the application when it was lost.
    fn close(&mut self, shard_id: &Arc<str>, epoch: u64, change: Change) {
        self.forget(shard_id, epoch);
        if change == Change::Lost {
            self.events.push(ShardEvent::Lost {
                shard_id: shard_id.to_string(),
            });
        }
    }

    /// Stops tracking a shard whose lease ended under `epoch`.
    fn forget(&mut self, shard_id: &Arc<str>, epoch: u64) {
        self.open.remove(shard_id);
        self.pending.remove(shard_id);
        self.delivery.checkpointer.closed(shard_id, epoch);
    }

    /// Hands over the shards the application was told about in the batch
    /// just handled: checkpoint what it accepted (automatic mode), then
    /// pass the lease on. The next owner starts right after it: nothing is
    /// delivered twice.
    fn release_closing(&mut self) {
        let closing: Vec<(Arc<str>, u64)> = self
            .open
            .iter()
            .filter(|(_, o)| o.closing)
            .map(|(id, o)| (id.clone(), o.epoch))
            .collect();
        for (shard_id, epoch) in closing {
            if let Some(pending) = self.pending.remove(&shard_id) {
                match self.delivery.checkpointer.write(
                    &shard_id,
                    pending.epoch,
                    &pending.checkpoint,
                ) {
                    Ok(()) | Err(Error::LeaseLost { .. }) => {}
                    Err(e) => {
                        log::warn!(
                            "checkpoint of {shard_id} before handing it over failed; it stays ours for now: {e}"
                        );
                        self.pending.insert(shard_id, pending);
                        continue;
                    }
                }
            }
            if let Err(e) = self.delivery.held.release(&shard_id) {
                log::warn!("handing lease {shard_id} over failed: {e}");
            }
            self.close(&shard_id, epoch, Change::Finished);
        }
    }

    /// Groups chunks by shard, in the order they were read, leaving out
    /// shards whose lease was lost meanwhile, and notes what is handed on.
    /// Also returns the buffer room the chunks held (to give back once the
    /// batch is handled), and the data bytes of each shard of the batch.
    fn build(&mut self, chunks: Vec<Chunk<T>>) -> (Batch<T>, Vec<Room>, Vec<u64>) {
        let mut shards: Vec<ShardBatch<T>> = Vec::new();
        let mut shard_bytes: Vec<u64> = Vec::new();
        let mut room = Vec::new();
        let lists = &self.delivery.spare_buffers;
        let mut chunks = chunks.into_iter();
        while let Some(mut chunk) = chunks.next() {
            room.extend(chunk.room.take());
            let open = self.open.get(&chunk.shard_id);
            if open.is_none_or(|o| o.epoch != chunk.epoch || o.closing)
                || !self.delivery.held.is_current(&chunk.shard_id, chunk.epoch)
            {
                continue;
            }
            match shards
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.shard_id == chunk.shard_id && s.epoch == chunk.epoch)
            {
                Some((i, s)) => {
                    shard_bytes[i] += chunk.data_bytes;
                    s.messages.append(&mut chunk.messages);
                    lists.chunks.give(std::mem::take(&mut chunk.messages));
                    s.millis_behind_latest = chunk.millis_behind_latest.or(s.millis_behind_latest);
                    s.shard_ended |= chunk.shard_end;
                }
                None => {
                    shard_bytes.push(chunk.data_bytes);
                    // Room for the shard's later chunks at once: grown
                    // chunk by chunk, a batch of 150,000 small messages
                    // was copied about twice over. A spare list: a new
                    // one of megabytes is page-faulted in on every batch.
                    let later: usize = chunks
                        .as_slice()
                        .iter()
                        .filter(|c| c.shard_id == chunk.shard_id && c.epoch == chunk.epoch)
                        .map(|c| c.messages.len())
                        .sum();
                    let mut messages = lists.batches.take(chunk.messages.len() + later);
                    messages.append(&mut chunk.messages);
                    lists.chunks.give(std::mem::take(&mut chunk.messages));
                    shards.push(ShardBatch {
                        shard_id: chunk.shard_id.clone(),
                        messages,
                        millis_behind_latest: chunk.millis_behind_latest,
                        shard_ended: chunk.shard_end,
                        epoch: chunk.epoch,
                        goes_back: GoesBack(Some(lists.batches.clone())),
                    });
                }
            }
        }
        for s in &shards {
            if s.shard_ended {
                self.events.push(ShardEvent::Ended {
                    shard_id: s.shard_id.to_string(),
                });
                if !self.delivery.automatic() {
                    let first_warning = Instant::now() + self.end_warning_every;
                    self.ends_waiting.insert(s.shard_id.clone(), first_warning);
                }
            }
            if let Some(position) = handed_position(s) {
                self.delivery
                    .checkpointer
                    .handing(&s.shard_id, s.epoch, position);
            }
        }
        let batch = Batch {
            time: SystemTime::now(),
            shards,
            events: std::mem::take(&mut self.events),
            last: false,
        };
        (batch, room, shard_bytes)
    }

    /// Writes the checkpoints that are due; a shard's end is written at
    /// once so its children can start.
    fn write_checkpoints(&mut self) {
        let now = Instant::now();
        // Forget shards no longer open: over a long run, many come and go.
        self.last_written.retain(|id, _| self.open.contains_key(id));
        let interval = self.delivery.checkpoint_interval;
        let due: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(shard_id, p)| {
                p.checkpoint == Checkpoint::ShardEnd
                    || self
                        .last_written
                        .get(*shard_id)
                        .is_none_or(|t| now.duration_since(*t) >= interval)
            })
            .map(|(shard_id, _)| shard_id.clone())
            .collect();
        for shard_id in due {
            let Some(pending) = self.pending.remove(&shard_id) else {
                continue;
            };
            match self
                .delivery
                .checkpointer
                .write(&shard_id, pending.epoch, &pending.checkpoint)
            {
                Ok(()) => {
                    self.last_written.insert(shard_id, now);
                }
                Err(Error::LeaseLost { .. }) => {
                    log::info!("not checkpointing {shard_id}: its lease is no longer ours")
                }
                Err(e @ Error::InvalidCheckpoint { .. }) => {
                    log::warn!("not checkpointing {shard_id}: {e}")
                }
                Err(e) => {
                    log::warn!("checkpoint of {shard_id} failed, will retry: {e}");
                    self.pending.entry(shard_id).or_insert(pending);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::record::Record;
    use crate::worker::processing::Checkpointing;
    use crate::worker::test_support::{
        chunk, delivery, held_leases, held_leases_answering, held_leases_noting, started,
    };

    #[test]
    fn chunks_already_waiting_at_a_late_tick_make_the_batch() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(chunk("shard-1", epoch, &[("1", "a")])).unwrap();
        sender.send(chunk("shard-1", epoch, &[("2", "b")])).unwrap();
        // The handler or a checkpoint write overran: the tick is long past.
        let late = Instant::now() - Duration::from_secs(1);
        let mut ticker = Ticker::new(&records, delivery(&held, ErrorPolicy::Stop));
        let chunks = ticker.gather_until(late).unwrap().unwrap();
        assert_eq!(chunks.len(), 2, "what waited is in this batch");
    }

    #[test]
    fn spare_buffers_go_back_for_reuse_once_merged_or_dropped() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let (sender, records) = crossbeam_channel::unbounded();
        let delivery = delivery(&held, ErrorPolicy::Stop);
        let lists = delivery.spare_buffers.clone();
        let mut ticker = Ticker::new(&records, delivery);
        let mut build_one = |first: &str, second: &str| {
            sender.send(started("shard-1", epoch)).unwrap();
            sender
                .send(chunk("shard-1", epoch, &[(first, "a")]))
                .unwrap();
            sender
                .send(chunk("shard-1", epoch, &[(second, "b")]))
                .unwrap();
            let late = Instant::now() - Duration::from_secs(1);
            let chunks = ticker.gather_until(late).unwrap().unwrap();
            ticker.build(chunks).0
        };
        let batch = build_one("1", "2");
        let merged = batch.shards()[0].messages();
        assert_eq!(merged.len(), 2);
        let at = merged.as_ptr();
        // The two chunks' lists, emptied, are the readers' to take again.
        assert!(lists.chunks.kept_bytes() > 0, "the chunks' lists are kept");
        assert_eq!(lists.batches.kept_bytes(), 0);
        drop(batch);
        assert!(lists.batches.kept_bytes() > 0, "the batch's list is kept");
        let again = build_one("3", "4");
        assert_eq!(
            again.shards()[0].messages().as_ptr(),
            at,
            "the dropped batch's list holds the next batch"
        );
        assert_eq!(again.messages().count(), 2);
    }

    #[test]
    fn only_a_current_readers_failure_stops_the_consumer() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let (sender, records) = crossbeam_channel::unbounded();
        let failed = |shard: &str, epoch, what: &str| ReaderOutput::<String>::Failed {
            shard_id: shard.into(),
            epoch,
            error: Error::Internal(what.into()),
        };
        sender
            .send(failed("shard-1", epoch + 1, "stale epoch"))
            .unwrap();
        sender.send(failed("shard-2", epoch, "not held")).unwrap();
        sender.send(failed("shard-1", epoch, "current")).unwrap();
        let mut ticker = Ticker::new(&records, delivery(&held, ErrorPolicy::Stop));
        let result = ticker.run(&mut |_: Batch<String>| Ok(()));
        assert!(
            matches!(&result, Err(Error::Internal(m)) if m == "current"),
            "{result:?}"
        );
    }

    /// Runs a ticker over `outputs` until `handler` accepts a batch with
    /// records (then a shutdown is asked for); returns what `run` returned.
    fn run_until(
        delivery: Delivery<String>,
        outputs: Vec<ReaderOutput<String>>,
        mut handler: impl FnMut(&Batch<String>) -> HandlerResult,
    ) -> Result<()> {
        let (sender, records) = crossbeam_channel::unbounded();
        for output in outputs {
            sender.send(output).unwrap();
        }
        let shutdown = delivery.shutdown.clone();
        let mut ticker = Ticker::new(&records, delivery);
        ticker.run(&mut |batch: Batch<String>| {
            let result = handler(&batch);
            if batch.is_last() {
                return result;
            }
            // Stop once the records were accepted (retries stop at shutdown).
            if result.is_ok() && !batch.is_empty() {
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            result
        })
    }

    #[test]
    fn a_gained_shard_is_announced_with_its_records_and_shut_down_in_the_last_batch() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut seen: Vec<(Vec<ShardEvent>, Vec<String>, bool)> = Vec::new();
        let result = run_until(
            delivery(&held, ErrorPolicy::Stop),
            vec![
                started("shard-1", epoch),
                chunk("shard-1", epoch, &[("1", "a"), ("2", "b")]),
            ],
            |batch| {
                let values = batch.messages().map(|m| m.value().clone()).collect();
                seen.push((batch.events().to_vec(), values, batch.is_last()));
                Ok(())
            },
        );
        assert!(result.is_ok(), "{result:?}");
        let shard_id = "shard-1".to_owned();
        assert_eq!(
            seen,
            vec![
                (
                    vec![ShardEvent::Gained {
                        shard_id: shard_id.clone(),
                        from: Checkpoint::TrimHorizon
                    }],
                    vec!["a".to_owned(), "b".to_owned()],
                    false
                ),
                (
                    vec![ShardEvent::ShutdownRequested { shard_id }],
                    vec![],
                    true
                ),
            ]
        );
    }

    #[test]
    fn a_retried_batch_holds_the_same_records_made_again() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let policy = ErrorPolicy::Retry {
            retries: 2,
            backoff: Duration::from_millis(1),
        };
        let mut calls: Vec<Vec<String>> = Vec::new();
        let result = run_until(
            delivery(&held, policy),
            vec![
                started("shard-1", epoch),
                chunk("shard-1", epoch, &[("1", "a"), ("2", "b")]),
            ],
            |batch| {
                if batch.is_empty() {
                    return Ok(());
                }
                calls.push(batch.messages().map(|m| m.value().clone()).collect());
                if calls.len() < 3 {
                    Err("not yet".into())
                } else {
                    Ok(())
                }
            },
        );
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(calls.len(), 3, "the first call and two retries");
        assert!(calls.iter().all(|c| c == &["a", "b"]), "{calls:?}");
    }

    #[test]
    fn a_lease_lost_during_retries_leaves_the_retried_batch_with_its_lost_event() {
        let (_server, held) = held_leases();
        let one = held.take("shard-1", 0, false).unwrap().unwrap();
        let two = held.take("shard-2", 0, false).unwrap().unwrap();
        let policy = ErrorPolicy::Retry {
            retries: 2,
            backoff: Duration::from_millis(1),
        };
        let mut calls: Vec<(Vec<String>, Vec<ShardEvent>)> = Vec::new();
        let result = run_until(
            delivery(&held, policy),
            vec![
                started("shard-1", one),
                started("shard-2", two),
                chunk("shard-1", one, &[("1", "a")]),
                chunk("shard-2", two, &[("1", "b")]),
            ],
            |batch| {
                if batch.is_empty() && !batch.is_last() {
                    return Ok(());
                }
                let values = batch.messages().map(|m| m.value().clone()).collect();
                calls.push((values, batch.events().to_vec()));
                if calls.len() == 1 {
                    // A peer takes shard-1 while the batch fails.
                    held.drop_lost("shard-1");
                    return Err("not yet".into());
                }
                Ok(())
            },
        );
        assert!(result.is_ok(), "{result:?}");
        let lost = ShardEvent::Lost {
            shard_id: "shard-1".into(),
        };
        assert_eq!(calls[0].0, ["a", "b"]);
        assert_eq!(
            calls[1].0,
            ["b"],
            "the lost shard's records are not handed on again"
        );
        assert!(calls[1].1.contains(&lost), "{:?}", calls[1].1);
        let told: usize = calls
            .iter()
            .map(|(_, e)| e.iter().filter(|e| **e == lost).count())
            .sum();
        assert_eq!(told, 1, "told once: {calls:?}");
    }

    #[test]
    fn a_batch_that_keeps_failing_stops_the_consumer_after_its_retries() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let policy = ErrorPolicy::RetryThenReleaseShard {
            retries: 1,
            backoff: Duration::from_millis(1),
        };
        let mut calls = 0;
        let result = run_until(
            delivery(&held, policy),
            vec![
                started("shard-1", epoch),
                chunk("shard-1", epoch, &[("1", "a")]),
            ],
            |batch| {
                if batch.is_empty() {
                    return Ok(());
                }
                calls += 1;
                Err("poison".into())
            },
        );
        assert_eq!(calls, 2);
        assert!(matches!(result, Err(Error::Handler(e)) if e.to_string() == "poison"));
    }

    #[test]
    fn open_shards_are_lost_finished_or_handed_off_as_their_leases_say() {
        let open: HashMap<Arc<str>, Open> = [
            ("current", 1, false),
            ("taken", 2, false),
            ("done", 3, false),
            ("asked", 4, false),
            ("asked-and-told", 5, true),
        ]
        .into_iter()
        .map(|(id, epoch, closing)| (Arc::from(id), Open { epoch, closing }))
        .collect();
        let found = changes(
            &open,
            |shard, _| match shard {
                "current" => Holding::Current,
                "asked" | "asked-and-told" => Holding::HandingOff,
                _ => Holding::Gone,
            },
            |shard, epoch| shard == "done" && epoch == 3,
        );
        assert_eq!(
            found,
            vec![
                (Arc::from("asked"), Change::HandingOff),
                (Arc::from("done"), Change::Finished),
                (Arc::from("taken"), Change::Lost),
            ]
        );
    }

    #[test]
    fn a_flusher_never_checkpoints_a_batch_whose_call_runs_or_fails() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let policy = ErrorPolicy::Retry {
            retries: 1,
            backoff: Duration::from_millis(1),
        };
        let mut delivery = delivery(&held, policy);
        delivery.checkpointing = Checkpointing::Manual;
        let flusher = delivery.checkpointer.clone();
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(started("shard-1", epoch)).unwrap();
        sender.send(chunk("shard-1", epoch, &[("1", "a")])).unwrap();
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let (gate, gate_rx) = crossbeam_channel::unbounded::<()>();
        let thread = std::thread::spawn(move || {
            let mut ticker = Ticker::new(&records, delivery);
            ticker.run(&mut |batch: Batch<String>| {
                if batch.is_empty() {
                    return Ok(());
                }
                let values: Vec<String> = batch.messages().map(|m| m.value().clone()).collect();
                entered_tx.send(values.clone()).unwrap();
                gate_rx.recv_timeout(Duration::from_secs(10))?;
                match values.iter().any(|v| v == "poison") {
                    true => Err("poison".into()),
                    false => Ok(()),
                }
            })
        });
        let entered = || entered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(entered(), ["a"]);
        // The batch handler runs on another thread: nothing accepted yet.
        flusher.checkpoint("shard-1").unwrap();
        gate.send(()).unwrap();
        sender
            .send(chunk("shard-1", epoch, &[("2", "poison")]))
            .unwrap();
        // Inside the failing call, then inside its retry: only "a".
        for _ in 0..2 {
            assert_eq!(entered(), ["poison"]);
            flusher.checkpoint("shard-1").unwrap();
            gate.send(()).unwrap();
        }
        let result = thread.join().unwrap();
        assert!(matches!(&result, Err(Error::Handler(_))), "{result:?}");
        assert_eq!(
            *written.lock().unwrap(),
            [("shard-1".to_owned(), "1".to_owned())]
        );
    }

    #[test]
    fn a_last_checkpoint_that_fails_is_tried_again_at_shutdown() {
        // The write after the batch and the first last one are refused.
        let refuse = Arc::new(AtomicUsize::new(2));
        let (_server, held, written) = held_leases_noting(refuse);
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let result = run_until(
            delivery(&held, ErrorPolicy::Stop),
            vec![
                started("shard-1", epoch),
                chunk("shard-1", epoch, &[("1", "a"), ("2", "b")]),
            ],
            |_| Ok(()),
        );
        assert!(result.is_ok(), "{result:?}");
        let written = written.lock().unwrap().clone();
        let shard = |what: &str| ("shard-1".to_owned(), what.to_owned());
        assert_eq!(written, [shard("refused"), shard("refused"), shard("2")]);
        assert_eq!(
            held.holding("shard-1", epoch),
            Holding::Current,
            "released by the coordinator next"
        );
    }

    #[test]
    fn a_last_checkpoint_never_written_fails_run_naming_the_shard_and_its_lease_is_not_released() {
        let (_server, held, written) = held_leases_noting(Arc::new(AtomicUsize::new(usize::MAX)));
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let result = run_until(
            delivery(&held, ErrorPolicy::Stop),
            vec![
                started("shard-1", epoch),
                chunk("shard-1", epoch, &[("1", "a")]),
            ],
            |_| Ok(()),
        );
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
    fn a_shutdown_during_retries_ends_them_and_hands_on_the_last_batch() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let policy = ErrorPolicy::Retry {
            retries: 100,
            backoff: Duration::from_millis(20),
        };
        let delivery = delivery(&held, policy);
        let shutdown = delivery.shutdown.clone();
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(started("shard-1", epoch)).unwrap();
        sender.send(chunk("shard-1", epoch, &[("1", "a")])).unwrap();
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || {
            let mut ticker = Ticker::new(&records, delivery);
            let mut last_batches = 0;
            let result = ticker.run(&mut |batch: Batch<String>| {
                last_batches += usize::from(batch.is_last());
                let values: Vec<String> = batch.messages().map(|m| m.value().clone()).collect();
                if values.is_empty() {
                    return Ok(());
                }
                entered_tx.send(values.clone()).unwrap();
                match values.iter().any(|v| v == "poison") {
                    true => Err("poison".into()),
                    false => Ok(()),
                }
            });
            (result, last_batches)
        });
        let entered = || entered.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(entered(), ["a"]);
        sender
            .send(chunk("shard-1", epoch, &[("2", "poison")]))
            .unwrap();
        assert_eq!(entered(), ["poison"]);
        assert_eq!(entered(), ["poison"], "retried");
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        let (result, last_batches) = thread.join().unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(last_batches, 1, "the last batch was handed on");
        // "a" is checkpointed, the failed batch is not.
        let written = written.lock().unwrap().clone();
        assert_eq!(
            written.last(),
            Some(&("shard-1".to_owned(), "1".to_owned()))
        );
        assert!(!written.iter().any(|(_, c)| c == "2"), "{written:?}");
    }

    #[test]
    fn an_end_not_checkpointed_is_warned_about_every_interval_until_it_is() {
        let every = Duration::from_secs(60);
        let start = Instant::now();
        let mut waiting: HashMap<Arc<str>, Instant> = HashMap::new();
        waiting.insert(Arc::from("a"), start + every);
        waiting.insert(Arc::from("b"), start + every * 2);
        let none = |_: &str| false;
        assert!(ends_to_warn(&mut waiting, start, every, none).is_empty());
        let at = start + every;
        assert_eq!(
            ends_to_warn(&mut waiting, at, every, none),
            [Arc::from("a")]
        );
        assert!(
            ends_to_warn(&mut waiting, at, every, none).is_empty(),
            "spaced out"
        );
        let at = start + every * 2;
        assert_eq!(
            ends_to_warn(&mut waiting, at, every, none),
            [Arc::from("a"), Arc::from("b")]
        );
        // Checkpointed: never again.
        let at = start + every * 3;
        assert_eq!(
            ends_to_warn(&mut waiting, at, every, |s| s == "a"),
            [Arc::from("b")]
        );
        assert_eq!(waiting.len(), 1);
    }

    #[test]
    fn an_ended_shard_never_checkpointed_is_warned_about_and_counted() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        delivery.checkpointing = Checkpointing::Manual;
        delivery.metrics =
            crate::metrics::Metrics::new(crate::MetricsLevel::Summary, &[], "me", "stream");
        let (metrics, shutdown) = (delivery.metrics.clone(), delivery.shutdown.clone());
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(started("shard-1", epoch)).unwrap();
        let ReaderOutput::Chunk(mut end) = chunk("shard-1", epoch, &[("1", "a")]) else {
            unreachable!()
        };
        end.shard_end = true;
        sender.send(ReaderOutput::Chunk(end)).unwrap();
        let thread = std::thread::spawn(move || {
            let mut ticker = Ticker::new(&records, delivery);
            ticker.end_warning_every = Duration::from_millis(100);
            // The handler never checkpoints the shard's end.
            ticker.run(&mut |_: Batch<String>| Ok(()))
        });
        let warnings = || -> f64 {
            metrics
                .snapshot()
                .iter()
                .filter(|s| s.name == "ShardEndsNotCheckpointed")
                .map(|s| s.statistics.sum)
                .sum()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while warnings() < 2.0 {
            assert!(Instant::now() < deadline, "no warnings");
            std::thread::sleep(Duration::from_millis(10));
        }
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        thread.join().unwrap().unwrap();
    }

    /// A manual batch handler: notes what it sees (events, values, last),
    /// checkpoints each shard it is told is shutting down, and, when
    /// `ahead`, checkpoints a position after its records.
    fn manual_handler(
        checkpointer: crate::Checkpointer,
        ahead: bool,
        seen: &mut Vec<(Vec<ShardEvent>, Vec<String>, bool)>,
    ) -> impl FnMut(&Batch<String>) -> HandlerResult + '_ {
        move |batch| {
            let values = batch.messages().map(|m| m.value().clone()).collect();
            seen.push((batch.events().to_vec(), values, batch.is_last()));
            for shard in batch.shards() {
                if ahead {
                    checkpointer.checkpoint_at(shard.shard_id(), &position("9"))?;
                }
            }
            for event in batch.events() {
                if let ShardEvent::ShutdownRequested { shard_id } = event {
                    checkpointer.checkpoint(shard_id)?;
                }
            }
            Ok(())
        }
    }

    fn position(sequence: &str) -> crate::record::ExtendedSequenceNumber {
        crate::testing::position(sequence, 0)
    }

    #[test]
    fn the_test_kit_s_batch_harness_hands_on_and_refuses_what_the_ticker_does() {
        for ahead in [false, true] {
            let (_server, held, written) = held_leases_noting(Arc::default());
            let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
            let mut delivery = delivery(&held, ErrorPolicy::Stop);
            delivery.checkpointing = Checkpointing::Manual;
            let mut by_ticker = Vec::new();
            let result = run_until(
                delivery.clone(),
                vec![
                    started("shard-1", epoch),
                    chunk("shard-1", epoch, &[("1", "a"), ("2", "b")]),
                ],
                manual_handler(delivery.checkpointer.clone(), ahead, &mut by_ticker),
            );

            let mut harness = crate::testing::BatchHarness::with_message_handler(|r| {
                String::from_utf8_lossy(r.data()).into_owned()
            })
            .checkpointing(Checkpointing::Manual);
            let mut by_kit = Vec::new();
            let mut handler = manual_handler(harness.checkpointer(), ahead, &mut by_kit);
            let records = harness.records("shard-1", ["a", "b"]);
            let kit_result = harness
                .handle(records, |batch: Batch<String>| handler(&batch))
                .and_then(|()| harness.shutdown(|batch: Batch<String>| handler(&batch)));
            drop(handler);

            assert_eq!(by_kit, by_ticker);
            match (result, kit_result) {
                (Ok(()), Ok(())) => {
                    assert!(!ahead);
                    let kit: Vec<(String, String)> = harness
                        .checkpoints()
                        .into_iter()
                        .map(|(shard, c)| (shard, c.to_columns().0.to_owned()))
                        .collect();
                    assert_eq!(kit, *written.lock().unwrap());
                    assert_eq!(kit, [("shard-1".to_owned(), "2".to_owned())]);
                }
                (Err(by_ticker), Err(by_kit)) => {
                    assert!(ahead);
                    assert!(
                        by_ticker.to_string().contains("was not handed on"),
                        "{by_ticker}"
                    );
                    assert_eq!(by_kit.to_string(), by_ticker.to_string());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// What the handler accepted, what was dead-lettered, the checkpoints
    /// written, and whether shard-1 is still held.
    type Poisoned = (Vec<String>, Vec<String>, Vec<(String, String)>, bool);

    /// Runs a ticker under the dead-letter policy over a batch of two
    /// shards, shard-1 holding a record the handler rejects ("bad"), with
    /// a dead-letter handler that fails if `dead_letter_fails`, until the
    /// handler accepted "b" and "x" or 2 s passed.
    fn poisoned_batch(dead_letter_fails: bool) -> Poisoned {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let one = held.take("shard-1", 0, false).unwrap().unwrap();
        let two = held.take("shard-2", 0, false).unwrap().unwrap();
        let mut delivery = delivery(
            &held,
            ErrorPolicy::RetryThenDeadLetter {
                retries: 1,
                backoff: Duration::from_millis(1),
            },
        );
        let dead = Arc::new(std::sync::Mutex::new(Vec::new()));
        let noted = dead.clone();
        delivery.dead_letter = Some(Arc::new(move |records: &[Record], _: &Error| {
            if dead_letter_fails {
                return Err("queue down".into());
            }
            let mut noted = noted.lock().unwrap();
            noted.extend(
                records
                    .iter()
                    .map(|r| String::from_utf8_lossy(r.data()).into_owned()),
            );
            Ok(())
        }));
        let (sender, records) = crossbeam_channel::unbounded();
        for output in [
            started("shard-1", one),
            started("shard-2", two),
            chunk("shard-1", one, &[("1", "a"), ("2", "bad"), ("3", "b")]),
            chunk("shard-2", two, &[("1", "x")]),
        ] {
            sender.send(output).unwrap();
        }
        let shutdown = delivery.shutdown.clone();
        let until = Instant::now() + Duration::from_secs(2);
        let mut accepted = Vec::new();
        let mut ticker = Ticker::new(&records, delivery);
        let result = ticker.run(&mut |batch: Batch<String>| {
            let values: Vec<String> = batch.messages().map(|m| m.value().clone()).collect();
            if values.iter().any(|v| v == "bad") {
                return Err("rejected".into());
            }
            accepted.extend(values);
            let done = ["b", "x"].iter().all(|v| accepted.iter().any(|a| a == v));
            if done || Instant::now() > until {
                shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        });
        assert!(result.is_ok(), "{result:?}");
        let written = written.lock().unwrap().clone();
        let dead = dead.lock().unwrap().clone();
        (accepted, dead, written, held.is_current("shard-1", one))
    }

    #[test]
    fn a_poison_record_is_dead_lettered_and_the_rest_handed_on_in_order() {
        let (accepted, dead, written, _) = poisoned_batch(false);
        assert_eq!(accepted, ["a", "b", "x"]);
        assert_eq!(dead, ["bad"]);
        let at = |shard: &str, what: &str| (shard.to_owned(), what.to_owned());
        assert!(written.contains(&at("shard-1", "3")), "{written:?}");
        assert!(written.contains(&at("shard-2", "1")), "{written:?}");
    }

    #[test]
    fn a_failing_dead_letter_handler_stops_its_shard_before_the_record() {
        let (accepted, dead, written, still_held) = poisoned_batch(true);
        assert!(dead.is_empty());
        // shard-1 stopped before "bad": "b" never handed on, the lease given up.
        assert_eq!(accepted, ["a", "x"]);
        assert!(!still_held);
        let shard_1: Vec<&str> = written
            .iter()
            .filter(|(shard, _)| shard == "shard-1")
            .map(|(_, c)| c.as_str())
            .collect();
        assert_eq!(shard_1, ["1"], "{written:?}");
        assert!(written.contains(&("shard-2".to_owned(), "1".to_owned())));
    }

    #[test]
    fn events_no_isolating_call_accepted_come_with_the_next_batch() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(
            &held,
            ErrorPolicy::RetryThenDeadLetter {
                retries: 0,
                backoff: Duration::ZERO,
            },
        );
        delivery.dead_letter = Some(Arc::new(|_: &[Record], _: &Error| Ok(())));
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(started("shard-1", epoch)).unwrap();
        sender
            .send(chunk("shard-1", epoch, &[("1", "bad")]))
            .unwrap();
        let shutdown = delivery.shutdown.clone();
        let mut accepted_events = Vec::new();
        let mut ticker = Ticker::new(&records, delivery);
        let result = ticker.run(&mut |batch: Batch<String>| {
            if batch.messages().any(|m| m.value() == "bad") {
                return Err("rejected".into());
            }
            accepted_events.extend(batch.events().iter().cloned());
            shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
        assert!(result.is_ok(), "{result:?}");
        let gained = accepted_events
            .iter()
            .filter(|e| matches!(e, ShardEvent::Gained { .. }))
            .count();
        assert_eq!(gained, 1, "{accepted_events:?}");
    }

    #[test]
    fn a_shutdown_during_isolation_checkpoints_what_was_done_and_gives_nothing_up() {
        let (_server, held, written) = held_leases_noting(Arc::default());
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        let mut delivery = delivery(
            &held,
            ErrorPolicy::RetryThenDeadLetter {
                retries: 0,
                backoff: Duration::ZERO,
            },
        );
        let dead_lettered = Arc::new(AtomicUsize::new(0));
        let counted = dead_lettered.clone();
        delivery.dead_letter = Some(Arc::new(move |_: &[Record], _: &Error| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }));
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(started("shard-1", epoch)).unwrap();
        let read = [("1", "a"), ("2", "bad"), ("3", "b")];
        sender.send(chunk("shard-1", epoch, &read)).unwrap();
        let shutdown = delivery.shutdown.clone();
        let mut last_events = Vec::new();
        let mut ticker = Ticker::new(&records, delivery);
        let result = ticker.run(&mut |batch: Batch<String>| {
            if batch.is_last() {
                last_events = batch.events().to_vec();
                return Ok(());
            }
            if batch.messages().any(|m| m.value() == "bad") {
                return Err("rejected".into());
            }
            // "a" accepted alone: the search is cut here.
            shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(dead_lettered.load(std::sync::atomic::Ordering::SeqCst), 0);
        let written = written.lock().unwrap().clone();
        assert_eq!(written, [("shard-1".to_owned(), "1".to_owned())]);
        assert_eq!(
            last_events,
            [ShardEvent::ShutdownRequested {
                shard_id: "shard-1".into()
            }],
            "shut down, not lost"
        );
        assert!(
            held.is_current("shard-1", epoch),
            "not released by the ticker"
        );
    }

    /// Issue 27's window at a graceful handoff: the lease is asked for
    /// while the handler is inside a batch of its records, and the
    /// checkpoint through them is not due yet (a long interval). That
    /// checkpoint is written before the release that names the asker (the
    /// taker starts right after it), and a read of the shard already
    /// waiting is never handed on: no record reaches both workers.
    #[test]
    fn a_lease_asked_for_during_a_batch_of_its_records_is_released_after_their_checkpoint() {
        let writes: Arc<Mutex<Vec<String>>> = Arc::default();
        let noted = writes.clone();
        let (_server, held) = held_leases_answering(move |request| {
            let body: serde_json::Value = serde_json::from_str(&request.body).unwrap_or_default();
            let values = &body["ExpressionAttributeValues"];
            // The lease's writes; not the notice to the peers after them.
            let write = match (
                values[":checkpoint"]["S"].as_str(),
                values[":to"]["S"].as_str(),
            ) {
                (Some(checkpoint), _) => Some(format!("checkpoint {checkpoint}")),
                (None, Some(to)) => Some(format!("release to {to}")),
                _ => None,
            };
            noted.lock().unwrap().extend(write);
            (
                200,
                r#"{"Attributes":{"leaseCounter":{"N":"1"}}}"#.to_owned(),
            )
        });
        let epoch = held.take("shard-1", 0, false).unwrap().unwrap();
        writes.lock().unwrap().clear();
        let mut delivery = delivery(&held, ErrorPolicy::Stop);
        delivery.checkpoint_interval = Duration::from_secs(3600);
        let shutdown = delivery.shutdown.clone();
        let (sender, records) = crossbeam_channel::unbounded();
        sender.send(started("shard-1", epoch)).unwrap();
        sender
            .send(chunk("shard-1", epoch, &[("1", "a"), ("2", "b")]))
            .unwrap();
        let (entered_tx, calls) = crossbeam_channel::unbounded();
        let (gate, gate_rx) = crossbeam_channel::unbounded::<()>();
        let seen: Arc<Mutex<Vec<ShardEvent>>> = Arc::default();
        let events = seen.clone();
        let thread = std::thread::spawn(move || {
            let mut ticker = Ticker::new(&records, delivery);
            ticker.run(&mut |batch: Batch<String>| {
                events
                    .lock()
                    .unwrap()
                    .extend(batch.events().iter().cloned());
                if batch.is_empty() {
                    return Ok(());
                }
                let values: Vec<String> = batch.messages().map(|m| m.value().clone()).collect();
                entered_tx.send(values).unwrap();
                gate_rx.recv_timeout(Duration::from_secs(10))?;
                Ok(())
            })
        });
        let entered = || calls.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(entered(), ["a", "b"]);
        gate.send(()).unwrap();
        sender
            .send(chunk("shard-1", epoch, &[("3", "c"), ("4", "d")]))
            .unwrap();
        assert_eq!(entered(), ["c", "d"]);
        // Asked for inside the call; a read made before the reader stopped
        // waits in the channel.
        assert!(held.hand_over("shard-1", "peer"));
        sender.send(chunk("shard-1", epoch, &[("5", "e")])).unwrap();
        gate.send(()).unwrap();
        let released = || {
            writes
                .lock()
                .unwrap()
                .iter()
                .any(|w| w.starts_with("release"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !released() {
            assert!(Instant::now() < deadline, "no release: {writes:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        thread.join().unwrap().unwrap();
        assert_eq!(
            *writes.lock().unwrap(),
            ["checkpoint 2", "checkpoint 4", "release to peer"]
        );
        assert!(
            seen.lock()
                .unwrap()
                .contains(&ShardEvent::ShutdownRequested {
                    shard_id: "shard-1".into()
                }),
            "{seen:?}"
        );
        assert!(calls.try_recv().is_err(), "e is the taker's to read");
    }
}
