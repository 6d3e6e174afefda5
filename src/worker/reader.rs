//! Shard readers: one blocking thread per shard being read. A reader gets
//! records with GetRecords within the shard's limits, de-aggregates them,
//! runs the message handler, and hands whole reads to the ticker.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use crate::aws::client::backoff;
use crate::aws::fan_out::{
    AfterSubscribeError, Polled, SharedConsumer, after_subscribe_error, in_use_wait,
};
use crate::aws::get_records::Records;
use crate::aws::kinesis::{GetRecordsOutput, IteratorPosition, KinesisClient};
use crate::error::{Error, Result};
use crate::kpl;
use crate::lease::{Checkpoint, ShardRunner};
use crate::metrics::{Metric, Metrics};
use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber};
use crate::stream::split_lease_key;
use crate::time::later;
use crate::worker::MessageHandler;
use crate::worker::batch::Message;
use crate::worker::budget::{Budget, Room, Share, within_share};
use crate::worker::stream_consumers::{Retrieval, StreamConsumers};

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_TIME_BETWEEN_READS: Duration = Duration::from_millis(200);
/// Kinesis allows 2 MiB per second of reads per shard.
const MAX_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;
/// How often a waiting reader looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// How often a reader waiting for its share of the buffer looks again.
const SHARE_CHECK: Duration = Duration::from_millis(5);

/// The records of one GetRecords call, ready for a batch.
#[derive(Debug)]
pub(crate) struct Chunk<T> {
    pub shard_id: Arc<str>,
    pub epoch: u64,
    pub messages: Vec<Message<T>>,
    pub millis_behind_latest: Option<u64>,
    pub shard_end: bool,
    pub bytes: u64,
    /// Data and partition key bytes of the messages (what Kinesis counts).
    pub data_bytes: u64,
    /// The buffer room the chunk holds once handed on (`bytes` and one per
    /// message), given back when the chunk is dropped, whoever drops it.
    pub room: Option<Room>,
}

/// What readers send to the ticker.
#[derive(Debug)]
pub(crate) enum ReaderOutput<T> {
    Chunk(Chunk<T>),
    /// The reader of `shard_id` under lease epoch `epoch` stopped on
    /// `error`; it counts only while that lease is still held under that
    /// epoch (a stale reader's failure must not stop the consumer).
    Failed {
        shard_id: Arc<str>,
        epoch: u64,
        error: Error,
    },
    /// A reader started on a lease just taken: the shard is gained, and
    /// will be read from `from`. Sent on the shared channel before anything
    /// the reader reads; with per-shard queues, `records` receives the rest.
    Started {
        shard_id: Arc<str>,
        epoch: u64,
        from: Checkpoint,
        records: Option<Receiver<ReaderOutput<T>>>,
    },
    /// The lease coordinator found that the consumer cannot go on.
    Fatal(Error),
}

/// Where a reader reads its shard: how Kinesis requests name the stream
/// and the shard, and the registered consumer when reading by fan-out.
struct Target {
    stream: String,
    shard_id: String,
    fan_out: Option<Arc<SharedConsumer>>,
}

impl<T> ReaderContext<T> {
    /// Where the shard of a lease key is read.
    fn target(&self, key: &str) -> Target {
        match split_lease_key(key) {
            Some((stream, shard_id)) => {
                let id = stream.to_string();
                let request = self.streams.read().map(|r| r.get(&id).cloned());
                Target {
                    stream: request
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| stream.name().to_owned()),
                    shard_id: shard_id.to_owned(),
                    // Its reader looks it up (see `Reader::retrieval`).
                    fan_out: None,
                }
            }
            None => Target {
                stream: self.stream.clone(),
                shard_id: key.to_owned(),
                fan_out: self.fan_out.clone(),
            },
        }
    }
}

/// What every reader of one consumer shares.
pub(crate) struct ReaderContext<T> {
    pub kinesis: KinesisClient,
    /// The stream as Kinesis requests name it: its name or its ARN.
    pub stream: String,
    /// A multi-stream consumer's streams: for each stream identifier (as
    /// its lease keys start), how Kinesis requests name the stream.
    pub streams: crate::lease::RequestNames,
    pub handler: MessageHandler<T>,
    pub sender: Sender<ReaderOutput<T>>,
    /// When set, each reader hands its chunks to a queue of its own of
    /// this many chunks (per-shard processors), not to `sender`: a slow
    /// shard then holds back only its own reader.
    pub shard_queue: Option<usize>,
    pub budget: Arc<Budget>,
    pub max_records: u32,
    pub idle_time: Duration,
    pub retry_wait: Duration,
    pub start_timestamp: Option<SystemTime>,
    /// Memory of reads in flight, across all readers (see `read_memory`).
    pub read_memory: Arc<Budget>,
    /// Enhanced fan-out: the registered consumer; readers subscribe to
    /// their shards instead of polling them.
    pub fan_out: Option<Arc<SharedConsumer>>,
    /// A multi-stream consumer's registered consumers, one per stream
    /// (registered by readers for streams added while running).
    pub fan_outs: StreamConsumers,
    pub pace_reads: bool,
    pub metrics: Metrics,
    /// How many readers run now (per-shard queues share the buffer evenly
    /// among them, see `within_share`).
    pub readers: AtomicUsize,
    /// How long `stop_all` waits for readers to finish: long enough for a
    /// reader inside one Kinesis request to see that request through (the
    /// consumer sets it to the connect and read timeouts plus a margin).
    /// A reader still in a request after that is left to finish it alone;
    /// told to stop, it calls no user code and hands nothing on.
    pub stop_timeout: Duration,
}

/// What a call in flight holds besides its reply: the HTTP connection's
/// read and write buffers (128 KiB each in ureq).
const CALL_COST: u64 = 256 * 1024;
/// The least a reader reserves before a call: a call with a small reply.
const MIN_READ_COST: u64 = CALL_COST + 64 * 1024;

/// The memory a GetRecords call with a reply of `body_bytes` holds while
/// the reply is read and decoded: the connection's buffers, the body, the
/// buffer its records' data is decoded into (three quarters of the body)
/// and the records' fields.
fn reply_cost(body_bytes: u64) -> u64 {
    CALL_COST.saturating_add(body_bytes.saturating_mul(2))
}

/// Memory of one read in `read_memory`, held from before the call until
/// its records are in the buffer; given back when dropped.
struct Reservation<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Reservation<'_> {
    /// Makes the reservation `bytes` before that much is allocated (the
    /// reply's body is not read yet): less gives back the difference; more
    /// is taken only if there is room at once and nobody waits. False
    /// (holding nothing) when there is not: the reply is then dropped
    /// unread, so no reader waits while holding memory. Replies rarely
    /// outgrow their reservation: reads ask for as many records as it
    /// holds.
    fn fit(&mut self, bytes: u64) -> bool {
        if bytes <= self.bytes {
            self.budget.release(self.bytes - bytes, 0);
            self.bytes = bytes;
            return true;
        }
        self.budget.release(self.bytes, 0);
        self.bytes = 0;
        if !self.budget.try_acquire(bytes, 0) {
            return false;
        }
        self.bytes = bytes;
        true
    }

    /// Counts `bytes` already in use (the decoded records): any more than
    /// reserved is taken at once, past the bound if need be, and later
    /// reads wait for it; any less is given back.
    fn account(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.budget.force(bytes - self.bytes, 0);
        } else {
            self.budget.release(self.bytes - bytes, 0);
        }
        self.bytes = bytes;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes, 0);
    }
}

/// A reader thread, as the pool sees it.
struct Running {
    shard_id: String,
    stop: Arc<AtomicBool>,
    /// Set by the reader when the service said the shard does not exist.
    not_found: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Running {
    /// Joins a finished reader thread (at once); logs a panic.
    fn join(self) {
        if self.handle.join().is_err() {
            log::error!("the reader of shard {} panicked", self.shard_id);
        }
    }
}

/// The size of a shard's next read: what it reserves before the call, and
/// what one record of the shard cost in the last read that brought any
/// (without the call's own cost).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ReadSize {
    reserve: u64,
    record_cost: Option<u64>,
}

impl ReadSize {
    /// Before a shard's first read.
    const FIRST: ReadSize = ReadSize {
        reserve: MIN_READ_COST,
        record_cost: None,
    };

    /// How many records to ask for, at most `max_records`: as many as the
    /// reservation holds at the last cost per record; one while that cost
    /// is unknown (a record may be 1 MiB).
    fn limit(&self, max_records: u32) -> u32 {
        let room = self.reserve.saturating_sub(CALL_COST);
        match self.record_cost {
            Some(cost) => (room / cost.max(1)).clamp(1, u64::from(max_records)) as u32,
            None => 1,
        }
    }

    /// After a reply of `cost` for `limit` records did not fit and was
    /// dropped unread: reserve all of it next time, and ask for no more
    /// records than this time (each costs at least its share of `cost`).
    fn dropped(self, cost: u64, limit: u32) -> ReadSize {
        let share = cost
            .saturating_sub(CALL_COST)
            .div_ceil(u64::from(limit.max(1)));
        ReadSize {
            reserve: self.reserve.max(cost),
            record_cost: Some(self.record_cost.unwrap_or(0).max(share)),
        }
    }

    /// The size of the read after one that held `cost` bytes and brought
    /// `records` records of the `limit` asked for. After a full reply the
    /// next read reserves twice as much, after a partial one from a shard
    /// still `behind` as much again, otherwise what this one cost; within
    /// [`MIN_READ_COST`] and `most`, but always room for one record.
    fn next(self, cost: u64, records: usize, limit: u32, behind: bool, most: u64) -> ReadSize {
        let record_cost = if records > 0 {
            Some(cost.saturating_sub(CALL_COST).div_ceil(records as u64))
        } else {
            self.record_cost
        };
        let reserve = if records >= limit as usize {
            self.reserve.max(cost).saturating_mul(2)
        } else if records > 0 && behind {
            self.reserve.max(cost)
        } else {
            cost
        };
        let one_record = CALL_COST.saturating_add(record_cost.unwrap_or(0));
        ReadSize {
            reserve: reserve.min(most).max(MIN_READ_COST).max(one_record),
            record_cost,
        }
    }
}

/// The running readers; the lease coordinator starts and stops them.
pub(crate) struct ReaderPool<T> {
    context: Arc<ReaderContext<T>>,
    readers: HashMap<String, Running>,
    /// Readers told to stop that may still be inside a slow request. `stop`
    /// never waits for them (the coordinator must keep writing heartbeats);
    /// they are joined once finished, and `stop_all` waits for them.
    stopping: Vec<Running>,
}

impl<T: Send + 'static> ReaderPool<T> {
    pub(crate) fn new(context: ReaderContext<T>) -> ReaderPool<T> {
        ReaderPool {
            context: Arc::new(context),
            readers: HashMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Notes how many readers run, for their shares of the buffer.
    fn count_readers(&self) {
        let running = self.readers.len();
        self.context.readers.store(running, Ordering::Relaxed);
    }

    /// Joins the stopped readers that have finished.
    fn reap(&mut self) {
        let (finished, stopping) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(|r| r.handle.is_finished());
        self.stopping = stopping;
        finished.into_iter().for_each(Running::join);
    }
}

impl<T: Send + 'static> ShardRunner for ReaderPool<T> {
    fn start(&mut self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint) {
        self.stop(shard_id);
        let stop = Arc::new(AtomicBool::new(false));
        let not_found = Arc::new(AtomicBool::new(false));
        let (sender, records) = match self.context.shard_queue {
            Some(chunks) => {
                let (sender, records) = crossbeam_channel::bounded(chunks);
                (sender, Some(records))
            }
            None => (self.context.sender.clone(), None),
        };
        let target = self.context.target(shard_id);
        let reader = Reader {
            context: self.context.clone(),
            sender,
            shard_id: shard_id.into(),
            stream: target.stream,
            kinesis_shard_id: target.shard_id,
            fan_out: target.fan_out,
            epoch,
            stop: stop.clone(),
            not_found: not_found.clone(),
            warned_about_aggregates: false,
            read_size: ReadSize::FIRST,
            share: Arc::default(),
        };
        let checkpoint = checkpoint.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("kinesis-reader-{shard_id}"))
            .spawn(move || reader.run(checkpoint, records));
        match spawned {
            Ok(handle) => {
                let running = Running {
                    shard_id: shard_id.to_owned(),
                    stop,
                    not_found,
                    handle,
                };
                self.readers.insert(shard_id.to_owned(), running);
                self.count_readers();
            }
            Err(e) => {
                let error =
                    Error::Internal(format!("cannot start a reader thread for {shard_id}: {e}"));
                log::error!("{error}");
                // Never wait on the ticker here (this is the coordinator's
                // thread); the shard has no reader, so the next take round
                // tries again if the failure could not be reported.
                let _ = self.context.sender.try_send(ReaderOutput::Failed {
                    shard_id: shard_id.into(),
                    epoch,
                    error,
                });
            }
        }
    }

    fn stop(&mut self, shard_id: &str) {
        if let Some(running) = self.readers.remove(shard_id) {
            running.stop.store(true, Ordering::Relaxed);
            self.stopping.push(running);
        }
        self.count_readers();
        self.reap();
    }

    fn is_running(&self, shard_id: &str) -> bool {
        self.readers.contains_key(shard_id)
    }

    fn fail(&mut self, error: Error) {
        // Bounded: the coordinator must not hang on a ticker that is gone.
        let _ = self
            .context
            .sender
            .send_timeout(ReaderOutput::Fatal(error), Duration::from_secs(5));
    }

    fn take_not_found(&mut self) -> Vec<String> {
        self.readers
            .values()
            .filter(|r| r.not_found.swap(false, Ordering::Relaxed))
            .map(|r| r.shard_id.clone())
            .collect()
    }

    fn stop_all(&mut self) {
        let mut all: Vec<Running> = self.readers.drain().map(|(_, r)| r).collect();
        self.count_readers();
        all.append(&mut self.stopping);
        for r in &all {
            r.stop.store(true, Ordering::Relaxed);
        }
        let deadline = later(Instant::now(), self.context.stop_timeout);
        while Instant::now() < deadline && all.iter().any(|r| !r.handle.is_finished()) {
            std::thread::sleep(STOP_CHECK);
        }
        for r in all {
            if r.handle.is_finished() {
                r.join();
            } else {
                log::warn!(
                    "the reader of shard {} is still in a request after {:?}; leaving it to end by itself (told to stop, it calls no user code)",
                    r.shard_id,
                    self.context.stop_timeout
                );
            }
        }
    }
}

struct Reader<T> {
    context: Arc<ReaderContext<T>>,
    /// Where this reader's chunks and failure go (see `shard_queue`).
    sender: Sender<ReaderOutput<T>>,
    /// The shard as the consumer names it (its lease key).
    shard_id: Arc<str>,
    /// The stream and the shard as Kinesis requests name them.
    stream: String,
    kinesis_shard_id: String,
    /// The registered consumer of the shard's stream, when reading by
    /// enhanced fan-out.
    fan_out: Option<Arc<SharedConsumer>>,
    epoch: u64,
    stop: Arc<AtomicBool>,
    /// Set when the service says the shard does not exist (see `take_not_found`).
    not_found: Arc<AtomicBool>,
    warned_about_aggregates: bool,
    /// The size of the next read (see `read_memory`).
    read_size: ReadSize,
    /// The buffer room this reader's chunks hold (per-shard queues).
    share: Arc<Share>,
}

impl<T: Send + 'static> Reader<T> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `duration`, waking early when told to stop.
    fn pause(&self, duration: Duration) {
        let until = later(Instant::now(), duration);
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }

    fn run(mut self, checkpoint: Checkpoint, records: Option<Receiver<ReaderOutput<T>>>) {
        let started = ReaderOutput::Started {
            shard_id: self.shard_id.clone(),
            epoch: self.epoch,
            from: checkpoint.clone(),
            records,
        };
        if send(&self.context.sender, started, &self.stop).is_err() {
            return;
        }
        match self.read(checkpoint) {
            Ok(()) => {}
            // Not this reader's failure to report: the coordinator decides
            // what a shard the service does not know means for its lease.
            Err(e) if e.code() == Some("ResourceNotFoundException") || self.stream_leaving(&e) => {
                log::warn!(
                    "shard {}: the service does not know it; its reader stops: {e}",
                    self.shard_id
                );
                self.not_found.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                log::error!("reader of shard {} failed: {error}", self.shard_id);
                let _ = self.send(ReaderOutput::Failed {
                    shard_id: self.shard_id.clone(),
                    epoch: self.epoch,
                    error,
                });
            }
        }
    }

    /// How the shard is read: through the registered consumer of its
    /// stream (registered now for a stream added or recreated while
    /// running, retried while the service says to), or by polling. A
    /// registration the service refuses fails the reader, as it fails
    /// startup. `None` when told to stop meanwhile.
    fn retrieval(&self) -> Option<Retrieval> {
        if let Some(consumer) = &self.fan_out {
            return Some(Retrieval::FanOut(consumer.clone()));
        }
        let Some((stream, _)) = split_lease_key(&self.shard_id) else {
            return Some(Retrieval::Polling);
        };
        let mut failures = 0;
        while !self.stopped() {
            let context = &self.context;
            match context
                .fan_outs
                .retrieval(&context.kinesis, &stream, &self.stream)
            {
                Ok(retrieval) => return Some(retrieval),
                Err(e) if e.is_retryable() => {
                    self.back_off(&mut failures, Some(&e), Duration::from_millis(100));
                }
                Err(error) => {
                    log::error!("reader of shard {} failed: {error}", self.shard_id);
                    let _ = self.send(ReaderOutput::Failed {
                        shard_id: self.shard_id.clone(),
                        epoch: self.epoch,
                        error,
                    });
                    return None;
                }
            }
        }
        None
    }

    /// True when a multi-stream reader's stream is being deleted
    /// (`ResourceInUseException`: not ACTIVE or UPDATING): one stream of
    /// several leaving does not stop the consumer; the coordinator's next
    /// shard sync retires it (or finds it recreated).
    fn stream_leaving(&self, e: &Error) -> bool {
        e.code() == Some("ResourceInUseException") && split_lease_key(&self.shard_id).is_some()
    }

    /// Reads the shard from `checkpoint` until told to stop or its end is
    /// handed on. Each round: an iterator (a fresh one when there is none),
    /// a wait for the shard's pace, room for the read, one GetRecords
    /// call, then the reply handed on, or the failure waited out.
    fn read(&mut self, checkpoint: Checkpoint) -> Result<()> {
        let context = self.context.clone();
        let Some((start, resume_after)) = start_position(checkpoint, context.start_timestamp)
        else {
            return Ok(());
        };
        match self.retrieval() {
            Some(Retrieval::FanOut(consumer)) => {
                return self.subscribe(&consumer, start, resume_after);
            }
            Some(Retrieval::Polling) => {}
            Some(Retrieval::StreamGone) => {
                log::warn!(
                    "shard {}: its stream is gone (deleted or recreated); its reader stops",
                    self.shard_id
                );
                self.not_found.store(true, Ordering::Relaxed);
                return Ok(());
            }
            None => return Ok(()),
        }
        let mut progress = Progress {
            start,
            resume_after,
            last_handed_on: None,
            iterator: None,
            failures: 0,
            next_read: Instant::now(),
        };
        let p = &mut progress;
        while !self.stopped() {
            let current = match p.iterator.take() {
                Some(it) => it,
                None => match self.fresh_iterator(&mut p.start, p.last_handed_on.as_ref()) {
                    Ok(it) => it,
                    Err(e) if e.is_retryable() => {
                        self.back_off(&mut p.failures, Some(&e), Duration::from_millis(100));
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            self.pause(p.next_read.saturating_duration_since(Instant::now()));
            if self.stopped() {
                break;
            }
            // Bound the memory of reads in flight across all shards: hold a
            // reservation from before the call until the records are in the
            // buffer, ask for as many records as it holds, and fit it to the
            // reply's size before the reply is read.
            let Some(mut reserved) = self.reserve(&context.read_memory) else {
                break;
            };
            let limit = self.read_size.limit(context.max_records);
            let called_at = Instant::now();
            p.next_read = if context.pace_reads {
                called_at + MIN_TIME_BETWEEN_READS
            } else {
                called_at
            };
            let (result, too_large) = self.get_records(&mut reserved, &current, limit);
            let call_ms = called_at.elapsed().as_secs_f64() * 1000.0;
            // Told to stop during the call: the lease may be another
            // worker's by now and `run` may have returned; no user code.
            if self.stopped() {
                break;
            }
            let (records, reply) = match result {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    // Larger than reserved, with no room for it now: dropped
                    // unread. Ask again once room for all of it is reserved.
                    let cost = too_large.unwrap_or(reply_cost(0));
                    log::debug!(
                        "shard {}: a reply needing {cost} bytes did not fit; reading it again",
                        self.shard_id
                    );
                    self.read_size = self.read_size.dropped(cost, limit);
                    p.iterator = Some(current);
                    continue;
                }
                Err(e) => {
                    let (samples, known) = failed_call_samples(&e, call_ms);
                    context
                        .metrics
                        .record(Some(&self.shard_id), &samples[..known]);
                    context
                        .metrics
                        .live()
                        .error(format!("GetRecords on {} failed: {e}", self.shard_id));
                    match after_get_records_error(&e, p.failures + 1) {
                        AfterError::FreshIterator => log::info!(
                            "shard {}: iterator expired; getting a new one",
                            self.shard_id
                        ),
                        AfterError::Retry { same_iterator } => {
                            if same_iterator {
                                p.iterator = Some(current);
                            }
                            self.back_off(&mut p.failures, Some(&e), Duration::from_millis(200));
                        }
                        AfterError::Fail => return Err(e),
                    }
                    continue;
                }
            };
            // No next iterator: the end of a closed shard, or a broken reply
            // (a `{}` from a proxy) that must not finish an open shard.
            let shard_end = reply.next_shard_iterator.is_none();
            if shard_end && !self.end_confirmed(&reply) {
                context.metrics.record(
                    Some(&self.shard_id),
                    &[
                        (Metric::GetRecordsSuccess, 0.0),
                        (Metric::GetRecordsTime, call_ms),
                    ],
                );
                // Drop the reply; a fresh iterator goes on after the last
                // record handed on.
                self.back_off(&mut p.failures, None, Duration::from_millis(200));
                continue;
            }
            if p.failures > 0 {
                log::info!(
                    "shard {}: reading again after {} failed or throttled call(s)",
                    self.shard_id,
                    p.failures
                );
            }
            p.failures = 0;
            let read = Read {
                call_ms,
                called_at,
                limit,
                shard_end,
            };
            match self.hand_on_reply(p, records, reply, read, reserved)? {
                Next::Read => {}
                Next::Stop => break,
                Next::End => return Ok(()),
            }
        }
        Ok(())
    }

    /// A fresh iterator: after the last record handed on (replacing an
    /// expired one), else at `start`, which from then on no longer means
    /// LATEST (see [`restart_position`]).
    fn fresh_iterator(
        &self,
        start: &mut IteratorPosition,
        last_handed_on: Option<&SequenceNumber>,
    ) -> Result<String> {
        let position = match last_handed_on {
            Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
            None => start.clone(),
        };
        let asked_at = SystemTime::now();
        let context = &self.context;
        let iterator =
            context
                .kinesis
                .get_shard_iterator(&self.stream, &self.kinesis_shard_id, &position)?;
        *start = restart_position(start.clone(), asked_at);
        Ok(iterator)
    }

    /// One GetRecords call for up to `limit` records; `reserved` is fitted
    /// to the reply's size before the reply is read. `Ok(None)`: the reply
    /// did not fit, and the cost it needs.
    fn get_records(
        &self,
        reserved: &mut Reservation<'_>,
        iterator: &str,
        limit: u32,
    ) -> (Result<Option<(Records, GetRecordsOutput)>>, Option<u64>) {
        let context = &self.context;
        let mut too_large = None;
        let result = context.kinesis.get_records_of(
            Some(&self.stream),
            &self.shard_id,
            iterator,
            limit,
            |length| {
                let cost = reply_cost(length);
                let fits = reserved.fit(cost);
                if !fits {
                    too_large = Some(cost);
                }
                fits
            },
        );
        (result, too_large)
    }

    /// Counts one more failed (or throttled) call in a row and waits it
    /// out: the retry wait, at least `floor`, doubled per failure, with
    /// jitter. The one retry step of every failure the reader waits out.
    fn back_off(&self, failures: &mut u32, error: Option<&Error>, floor: Duration) {
        *failures += 1;
        if let Some(e) = error {
            self.log_retry(e, *failures);
        }
        self.pause(backoff(self.context.retry_wait.max(floor), *failures));
    }

    /// Hands on one reply's records (de-aggregated, past the checkpoint,
    /// mapped by the message handler), records the read's metrics, sizes
    /// and paces the next read, and says what comes next.
    fn hand_on_reply(
        &mut self,
        p: &mut Progress,
        records: Records,
        reply: GetRecordsOutput,
        read: Read,
        mut reserved: Reservation<'_>,
    ) -> Result<Next> {
        let context = self.context.clone();
        let empty = records.is_empty();
        let millis_behind = reply.millis_behind_latest;
        if let Some(last) = records.last_sequence_number() {
            p.last_handed_on = Some(last.clone());
        }
        let next_iterator = reply.next_shard_iterator.clone();
        let past_checkpoint =
            passes_checkpoint(p.resume_after.as_ref(), records.last_sequence_number());
        let record_count = records.len();
        let buffer_bytes = records.buffer_bytes();
        let (chunk, deaggregated, passed_through) = self.chunk(
            records.into_iter(),
            buffer_bytes,
            millis_behind,
            read.shard_end,
            p.resume_after.as_ref(),
        )?;
        if self.stopped() {
            // The chunk may be partial: the handler stopped being called.
            return Ok(Next::Stop);
        }
        let (samples, known) =
            read_samples(read.call_ms, deaggregated, passed_through, millis_behind);
        context
            .metrics
            .record(Some(&self.shard_id), &samples[..known]);
        if past_checkpoint {
            p.resume_after = None;
        }
        let cost = reserved.bytes.max(chunk.bytes);
        reserved.account(chunk.bytes);
        // No read reserves more than half of `read_memory`, so reads of
        // several shards fit at once.
        let most = context.read_memory.max_bytes() / 2;
        let behind = millis_behind.unwrap_or(0) > 0;
        self.read_size = self
            .read_size
            .next(cost, record_count, read.limit, behind, most);
        if context.pace_reads {
            p.next_read = paced(p.next_read, read.called_at, chunk.data_bytes);
        }
        if (!chunk.messages.is_empty() || read.shard_end) && !self.hand_on(chunk) {
            return Ok(Next::Stop);
        }
        if read.shard_end {
            log::info!("shard {} read to its end", self.shard_id);
            return Ok(Next::End);
        }
        p.iterator = next_iterator;
        if empty {
            p.next_read = p.next_read.max(later(Instant::now(), context.idle_time));
        }
        Ok(Next::Read)
    }

    /// Reads the shard through enhanced fan-out: subscribes from `start`
    /// (then after the last continuation), and hands each event's records
    /// on as a chunk, through the same de-aggregation, checkpoint skipping,
    /// message handler and buffer as polled replies. The service ends each
    /// subscription after 5 minutes: subscribe again.
    fn subscribe(
        &mut self,
        consumer: &SharedConsumer,
        mut start: IteratorPosition,
        mut resume_after: Option<ExtendedSequenceNumber>,
    ) -> Result<()> {
        let context = self.context.clone();
        let mut continuation: Option<SequenceNumber> = None;
        let mut failures = 0;
        let mut next_end_check = Instant::now();
        let mut last_subscribed: Option<Instant> = None;
        let mut last_call: Option<Instant> = None;
        while !self.stopped() {
            // SubscribeToShard: 1 call per second per consumer and shard.
            if let Some(at) = last_call {
                self.pause(subscribe_wait(at, Instant::now()));
                if self.stopped() {
                    break;
                }
            }
            let consumer_arn = consumer.arn();
            let position = match &continuation {
                Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
                None => start.clone(),
            };
            let asked_at = SystemTime::now();
            let called_at = Instant::now();
            last_call = Some(called_at);
            let subscribed = context.kinesis.subscribe_to_shard(
                &consumer_arn,
                &self.kinesis_shard_id,
                &position,
            );
            context.metrics.record(
                Some(&self.shard_id),
                &[
                    (
                        Metric::SubscribeToShardSuccess,
                        f64::from(u8::from(subscribed.is_ok())),
                    ),
                    (
                        Metric::SubscribeToShardTime,
                        called_at.elapsed().as_secs_f64() * 1000.0,
                    ),
                ],
            );
            let mut subscription = match subscribed {
                Ok(s) => s,
                Err(e) => {
                    let wait = self.after_subscription_failure(
                        consumer,
                        &consumer_arn,
                        e,
                        &mut failures,
                        last_subscribed,
                    )?;
                    self.pause(wait);
                    continue;
                }
            };
            subscription.tag_records(&self.shard_id);
            last_subscribed = Some(called_at);
            start = restart_position(start, asked_at);
            loop {
                if self.stopped() {
                    return Ok(());
                }
                let event = match subscription.poll(STOP_CHECK * 4) {
                    Ok(Polled::Event(event)) => event,
                    Ok(Polled::Idle) => continue,
                    // The service's 5 minutes are up: subscribe again.
                    Ok(Polled::Ended) => break,
                    Err(e) => {
                        drop(subscription);
                        context.metrics.record(
                            Some(&self.shard_id),
                            &[(Metric::SubscribeToShardErrors, 1.0)],
                        );
                        let wait = self.after_subscription_failure(
                            consumer,
                            &consumer_arn,
                            e,
                            &mut failures,
                            last_subscribed,
                        )?;
                        self.pause(wait);
                        break;
                    }
                };
                failures = 0;
                let caught_up = event.records.is_empty()
                    && event.millis_behind_latest.unwrap_or(0) == 0
                    && Instant::now() >= next_end_check;
                let last = event
                    .records
                    .last()
                    .map(|r| r.position.sequence_number.clone());
                let shard_end = if !event.child_shards.is_empty() {
                    true
                } else if event.continuation_sequence_number.is_none() || caught_up {
                    // No continuation without children is malformed; an
                    // empty event at the tip may be the end of a shard the
                    // service closed without saying (kinesis-local never
                    // sends ChildShards): reading after the continuation
                    // decides, now and then, as polling does.
                    next_end_check = later(Instant::now(), FAN_OUT_END_CHECK);
                    let after = event
                        .continuation_sequence_number
                        .as_ref()
                        .or(last.as_ref())
                        .or(continuation.as_ref());
                    self.fan_out_end_confirmed(after, &start)
                } else {
                    false
                };
                let past_checkpoint = passes_checkpoint(resume_after.as_ref(), last.as_ref());
                if let Some(seq) = event.continuation_sequence_number.clone() {
                    continuation = Some(seq);
                }
                let buffer_bytes = event
                    .records
                    .first()
                    .map_or(0, |r| r.shared.bytes.len() as u64);
                let (chunk, deaggregated, passed_through) = self.chunk(
                    event.records.into_iter(),
                    buffer_bytes,
                    event.millis_behind_latest,
                    shard_end,
                    resume_after.as_ref(),
                )?;
                if self.stopped() {
                    return Ok(());
                }
                context.metrics.record(
                    Some(&self.shard_id),
                    &[
                        (Metric::RecordsDeaggregated, deaggregated as f64),
                        (Metric::AggregatesPassedThrough, passed_through as f64),
                        (
                            Metric::MillisBehindLatest,
                            event.millis_behind_latest.unwrap_or(0) as f64,
                        ),
                    ],
                );
                if past_checkpoint {
                    resume_after = None;
                }
                if (!chunk.messages.is_empty() || shard_end) && !self.hand_on(chunk) {
                    return Ok(());
                }
                if shard_end {
                    log::info!("shard {} read to its end (fan-out)", self.shard_id);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// What to wait before subscribing again after a failed subscription
    /// or event (the `failures`-th in a row, counted here), or the error
    /// the reader fails with (see [`after_subscribe_error`]): exception
    /// events and broken connections are resubscribed with backoff,
    /// `ResourceInUseException` waits until 5 s after the last successful
    /// subscribe, `ResourceNotFoundException` looks the consumer up (and
    /// registers it again), the KMS errors that cannot heal fail.
    fn after_subscription_failure(
        &self,
        consumer: &SharedConsumer,
        tried: &str,
        e: Error,
        failures: &mut u32,
        last_subscribed: Option<Instant>,
    ) -> Result<Duration> {
        *failures += 1;
        let n = *failures;
        let spaced = n == 1 || n.is_power_of_two();
        let retry_wait = self.context.retry_wait;
        let shard = &self.shard_id;
        match after_subscribe_error(&e) {
            AfterSubscribeError::Resubscribe { floor, warn } => {
                let exception = matches!(&e, Error::Service(s) if s.status == 200);
                if warn && spaced {
                    log::warn!("shard {shard}: subscribing again ({n} failure(s) in a row): {e}");
                } else if exception || (e.is_throttling() && spaced) {
                    log::info!(
                        "shard {shard}: the subscription ended with {e}; subscribing again after its continuation"
                    );
                } else {
                    log::debug!("shard {shard}: subscribing again after {e}");
                }
                Ok(backoff(retry_wait.max(floor), n))
            }
            AfterSubscribeError::InUse => {
                log::debug!("shard {shard}: {e}; waiting until 5 s after the last subscribe");
                let floor = backoff(retry_wait.max(Duration::from_millis(200)), n);
                Ok(in_use_wait(last_subscribed, Instant::now(), floor))
            }
            AfterSubscribeError::CheckConsumer => {
                match consumer.refresh(&self.context.kinesis, tried) {
                    // Registered again (here or by another worker): at once.
                    Ok(Some(_)) => Ok(Duration::ZERO),
                    // The consumer is fine: the shard is what is missing.
                    Ok(None) => Err(e),
                    Err(refresh) if refresh.is_retryable() => {
                        log::warn!(
                            "shard {shard}: {e}; looking up the stream consumer failed, trying again: {refresh}"
                        );
                        Ok(backoff(retry_wait.max(Duration::from_millis(500)), n))
                    }
                    Err(refresh) => Err(refresh),
                }
            }
            AfterSubscribeError::Fail => Err(e),
        }
    }

    /// Whether a fan-out shard has ended after `after` (else at `start`),
    /// confirmed the way polling confirms it: an iterator from there whose
    /// GetRecords brings no record and no next iterator. Never from a
    /// listing: a record written between the subscription's last event and
    /// a ListShards that says "closed" would be lost. Records this read
    /// finds are not handed on (the subscription brings them).
    fn fan_out_end_confirmed(
        &self,
        after: Option<&SequenceNumber>,
        start: &IteratorPosition,
    ) -> bool {
        let position = after.map_or_else(
            || start.clone(),
            |seq| IteratorPosition::AfterSequenceNumber(seq.clone()),
        );
        let context = &self.context;
        let read = context
            .kinesis
            .get_shard_iterator(&self.stream, &self.kinesis_shard_id, &position)
            .and_then(|iterator| {
                context.kinesis.get_records_of(
                    Some(&self.stream),
                    &self.shard_id,
                    &iterator,
                    1,
                    |_| true,
                )
            });
        match read {
            Ok(Some((records, reply))) => {
                ends_shard(records.len(), reply.next_shard_iterator.as_deref())
            }
            Ok(None) => false,
            Err(e) => {
                log::debug!(
                    "shard {}: reading after {position:?} to see whether it ended failed: {e}",
                    self.shard_id
                );
                false
            }
        }
    }

    /// Waits in line for room for this shard's next read; `None` when told
    /// to stop.
    fn reserve<'a>(&self, memory: &'a Budget) -> Option<Reservation<'a>> {
        let bytes = self.read_size.reserve;
        memory
            .acquire(bytes, 0, || self.stopped())
            .then_some(Reservation {
                budget: memory,
                bytes,
            })
    }

    fn log_retry(&self, e: &Error, failures: u32) {
        if e.is_throttling() && (failures == 1 || failures.is_power_of_two()) {
            log::warn!(
                "shard {}: throttled {failures} time(s) in a row, backing off: {e}",
                self.shard_id
            );
        } else if failures >= 4 && failures.is_power_of_two() {
            // One failed call is weather; a run of them (Kinesis out of
            // reach, say) is something to look at, said less and less often.
            log::warn!(
                "shard {}: reading failed {failures} times in a row, still retrying: {e}",
                self.shard_id
            );
        } else {
            log::debug!("shard {}: retrying after {e}", self.shard_id);
        }
    }

    /// Turns one reply into messages: de-aggregates, skips what the
    /// checkpoint says was processed, and runs the message handler, one
    /// record at a time (no intermediate list).
    fn chunk(
        &mut self,
        kinesis_records: impl ExactSizeIterator<Item = Record>,
        buffer_bytes: u64,
        millis_behind_latest: Option<u64>,
        shard_end: bool,
        resume_after: Option<&ExtendedSequenceNumber>,
    ) -> Result<(Chunk<T>, u64, u64)> {
        let mut messages: Vec<Message<T>> = Vec::with_capacity(kinesis_records.len());
        let handler = &*self.context.handler;
        let stop = &*self.stop;
        let warned = &mut self.warned_about_aggregates;
        let (mut deaggregated, mut passed_through) = (0u64, 0u64);
        let mut data_bytes = 0u64;
        let mut deliver = |record: Record| {
            // Checked per record: once told to stop, no more handler calls.
            if stop.load(Ordering::Relaxed)
                || resume_after.is_some_and(|done| record.position <= *done)
            {
                return;
            }
            data_bytes += (record.data.len() + record.partition_key.len()) as u64;
            let value = handler(&record);
            messages.push(Message { record, value });
        };
        let mapped = catch_unwind(AssertUnwindSafe(|| {
            for r in kinesis_records {
                if kpl::is_aggregated(r.data()) {
                    match kpl::user_records_of(&r, &mut deliver) {
                        Ok(users) => {
                            deaggregated += users as u64;
                            continue;
                        }
                        Err(e) => {
                            passed_through += 1;
                            if !*warned {
                                *warned = true;
                                log::warn!(
                                    "shard {}: record {} looks KPL-aggregated but is not valid ({e:?}); delivering it whole (logged once per shard)",
                                    r.shard_id(),
                                    r.sequence_number()
                                );
                            }
                        }
                    }
                }
                deliver(r);
            }
        }));
        if let Err(panic) = mapped {
            return Err(Error::HandlerPanicked(format!(
                "the message handler panicked on shard {}: {}",
                self.shard_id,
                panic_message(&panic)
            )));
        }
        let chunk = Chunk {
            shard_id: self.shard_id.clone(),
            epoch: self.epoch,
            // The shared buffer once, and the messages.
            bytes: buffer_bytes + (messages.len() * std::mem::size_of::<Message<T>>()) as u64,
            messages,
            millis_behind_latest,
            shard_end,
            data_bytes,
            room: None,
        };
        Ok((chunk, deaggregated, passed_through))
    }

    /// Waits for room in the buffer and sends; false when told to stop first.
    fn hand_on(&self, mut chunk: Chunk<T>) -> bool {
        let records = chunk.messages.len() as u64;
        let budget = &self.context.budget;
        if self.context.shard_queue.is_some() && !self.wait_for_share(chunk.bytes, records) {
            return false;
        }
        let Some(room) = budget.take_room(chunk.bytes, records, || self.stopped()) else {
            return false;
        };
        chunk.room = Some(room.counted_in(&self.share));
        // A chunk not sent is dropped here, and its room with it.
        self.send(ReaderOutput::Chunk(chunk)).is_ok()
    }

    /// With a queue of its own (per-shard processors), waits, holding no
    /// buffer room, until the queue has a free place and this shard is
    /// within its even share of the buffer: a slow processor then holds
    /// back only its own reader, never the room the other shards need.
    /// False when told to stop first.
    fn wait_for_share(&self, bytes: u64, records: u64) -> bool {
        let budget = &self.context.budget;
        let max = (budget.max_bytes(), budget.max_records());
        loop {
            if self.stopped() {
                return false;
            }
            let readers = self.context.readers.load(Ordering::Relaxed);
            if !self.sender.is_full()
                && within_share(self.share.held(), (bytes, records), max, readers)
            {
                return true;
            }
            std::thread::sleep(SHARE_CHECK);
        }
    }

    /// Sends this reader's output (see [`send`]).
    fn send(&self, output: ReaderOutput<T>) -> std::result::Result<(), ReaderOutput<T>> {
        send(&self.sender, output, &self.stop)
    }

    /// Whether a reply without a next iterator really ends the shard: it
    /// names the shard's children, or ListShards lists the shard as closed
    /// (kinesis-local never sends ChildShards). Otherwise the reply is
    /// malformed (logged here); it must never lead to a SHARD_END checkpoint.
    fn end_confirmed(&self, reply: &GetRecordsOutput) -> bool {
        if !reply.child_shards.is_empty() {
            return true;
        }
        let context = &self.context;
        let why = match context.kinesis.list_shards(&self.stream, None) {
            Ok(shards) => match shards.iter().find(|s| s.shard_id == self.kinesis_shard_id) {
                Some(shard) if shard.is_closed() => return true,
                Some(_) => "ListShards lists it as open".to_owned(),
                None => "ListShards does not list it".to_owned(),
            },
            Err(e) => format!("ListShards failed: {e}"),
        };
        log::warn!(
            "shard {}: malformed GetRecords reply (no NextShardIterator, no ChildShards) and {why}; not the shard's end: reading again after the last record handed on",
            self.shard_id
        );
        false
    }
}

/// Sends on `sender`, waiting for room only while `stop` is not set:
/// nothing may drain the channel then (a failed startup, `run` returning).
/// Gives the output back when stopped or when the receiver is gone.
fn send<T>(
    sender: &Sender<ReaderOutput<T>>,
    mut output: ReaderOutput<T>,
    stop: &AtomicBool,
) -> std::result::Result<(), ReaderOutput<T>> {
    loop {
        match sender.send_timeout(output, STOP_CHECK) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(back)) if !stop.load(Ordering::Relaxed) => output = back,
            Err(SendTimeoutError::Timeout(back) | SendTimeoutError::Disconnected(back)) => {
                return Err(back);
            }
        }
    }
}

/// Where a reader is in its shard, carried from one call to the next.
struct Progress {
    /// Where a fresh iterator starts while no record was handed on.
    start: IteratorPosition,
    /// The checkpoint: records at or before it were processed and are
    /// skipped, until a reply goes past it.
    resume_after: Option<ExtendedSequenceNumber>,
    /// The last record handed on: a fresh iterator goes on after it.
    last_handed_on: Option<SequenceNumber>,
    /// The iterator of the next call; `None`: get a fresh one.
    iterator: Option<String>,
    /// Failed or throttled calls in a row.
    failures: u32,
    /// When the next call may start.
    next_read: Instant,
}

/// One successful GetRecords call, as the reply's handling needs it.
struct Read {
    call_ms: f64,
    called_at: Instant,
    /// The most records asked for.
    limit: u32,
    /// The reply ends the shard (confirmed).
    shard_end: bool,
}

/// What the read loop does after a reply was handled.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Read on.
    Read,
    /// Told to stop: return without reading on.
    Stop,
    /// The shard's end was handed on.
    End,
}

/// What a reader does after a failed GetRecords call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterError {
    /// The iterator expired: get a fresh one at once, after the last
    /// record handed on.
    FreshIterator,
    /// Wait and call again, with the same iterator or a fresh one.
    Retry { same_iterator: bool },
    /// Give up: the reader fails with this error.
    Fail,
}

/// Where a shard's reading starts for a lease's checkpoint, and the
/// checkpoint whose records are skipped; `None` for a shard read to its
/// end. A sequence-number checkpoint starts at the checkpointed record, not
/// after it, so the rest of a half-processed KPL aggregate is read again
/// (what was processed is skipped).
fn start_position(
    checkpoint: Checkpoint,
    start_timestamp: Option<SystemTime>,
) -> Option<(IteratorPosition, Option<ExtendedSequenceNumber>)> {
    Some(match checkpoint {
        Checkpoint::TrimHorizon => (IteratorPosition::TrimHorizon, None),
        Checkpoint::Latest => (IteratorPosition::Latest, None),
        Checkpoint::AtTimestamp(at) => match at.or(start_timestamp) {
            Some(at) => (IteratorPosition::AtTimestamp(at), None),
            None => (IteratorPosition::Latest, None),
        },
        Checkpoint::At(p) => (
            IteratorPosition::AtSequenceNumber(p.sequence_number.clone()),
            Some(p),
        ),
        Checkpoint::ShardEnd => return None,
    })
}

/// The decision after a failed GetRecords call, the `failures`-th in a
/// row. Throttling says nothing about the iterator; repeated other
/// failures may mean it went bad, so every third gets a fresh one.
fn after_get_records_error(e: &Error, failures: u32) -> AfterError {
    if e.code() == Some("ExpiredIteratorException") {
        AfterError::FreshIterator
    } else if e.is_retryable() {
        AfterError::Retry {
            same_iterator: e.is_throttling() || failures % 3 != 0,
        }
    } else {
        AfterError::Fail
    }
}

/// The metrics of a failed GetRecords call (the first `.1` of them): no
/// success, its time, and an expired iterator or a throttled call when it
/// was one.
fn failed_call_samples(e: &Error, call_ms: f64) -> ([(Metric, f64); 3], usize) {
    let expired = e.code() == Some("ExpiredIteratorException");
    let event = if expired {
        Metric::ExpiredIterators
    } else {
        Metric::GetRecordsThrottled
    };
    let samples = [
        (Metric::GetRecordsSuccess, 0.0),
        (Metric::GetRecordsTime, call_ms),
        (event, 1.0),
    ];
    (samples, if expired || e.is_throttling() { 3 } else { 2 })
}

/// The metrics of a successful read (the first `.1` of them):
/// `MillisBehindLatest` only when the reply had it.
fn read_samples(
    call_ms: f64,
    deaggregated: u64,
    passed_through: u64,
    millis_behind: Option<u64>,
) -> ([(Metric, f64); 5], usize) {
    let samples = [
        (Metric::GetRecordsSuccess, 1.0),
        (Metric::GetRecordsTime, call_ms),
        (Metric::RecordsDeaggregated, deaggregated as f64),
        (Metric::AggregatesPassedThrough, passed_through as f64),
        (
            Metric::MillisBehindLatest,
            millis_behind.unwrap_or(0) as f64,
        ),
    ];
    (samples, if millis_behind.is_some() { 5 } else { 4 })
}

/// Whether a reply whose last record is `last` goes past the checkpoint
/// being resumed from (after it, nothing needs skipping).
fn passes_checkpoint(
    resume_after: Option<&ExtendedSequenceNumber>,
    last: Option<&SequenceNumber>,
) -> bool {
    resume_after.is_some_and(|done| last.is_some_and(|last| *last > done.sequence_number))
}

/// When the next call may start after a paced read of `data_bytes` called
/// at `called_at`: not before `next_read`, and late enough that the shard
/// stays under 2 MiB/s (a large read buys a longer pause).
fn paced(next_read: Instant, called_at: Instant, data_bytes: u64) -> Instant {
    let read_time = Duration::from_secs_f64(data_bytes as f64 / MAX_BYTES_PER_SECOND);
    next_read.max(called_at + read_time)
}

/// AWS allows one SubscribeToShard call per second per consumer and shard.
const MIN_TIME_BETWEEN_SUBSCRIBES: Duration = Duration::from_secs(1);

/// How long to wait at `now` before the next SubscribeToShard call of a
/// shard whose last call was at `last_call`.
fn subscribe_wait(last_call: Instant, now: Instant) -> Duration {
    (last_call + MIN_TIME_BETWEEN_SUBSCRIBES).saturating_duration_since(now)
}

/// Whether a GetRecords reply from after a subscription's continuation
/// ends the shard: no record and no next iterator (the end of a closed
/// shard, as polling reads it).
fn ends_shard(records: usize, next_iterator: Option<&str>) -> bool {
    records == 0 && next_iterator.is_none()
}

/// How often an idle fan-out reader reads after its continuation to see
/// whether its shard was closed without the service saying so (see
/// `Reader::subscribe`).
const FAN_OUT_END_CHECK: Duration = Duration::from_secs(10);

/// Where to read from when a fresh iterator is needed before any record was
/// handed on, once an iterator was got from `start` at `asked_at`. LATEST
/// again would skip whatever arrived since the first iterator (a KCL-written
/// `LATEST` checkpoint, or no initial timestamp): from then on it means the
/// time the first one was asked for. That time is taken before asking, so
/// it errs early (records from just before may be delivered), never late.
fn restart_position(start: IteratorPosition, asked_at: SystemTime) -> IteratorPosition {
    match start {
        IteratorPosition::Latest => IteratorPosition::AtTimestamp(asked_at),
        other => other,
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ClientConfig;
    use crate::error::TransportKind;
    use std::time::UNIX_EPOCH;

    fn service_error(status: u16, code: &str) -> Error {
        let body = format!(r#"{{"__type":"{code}","message":"m"}}"#);
        Error::Service(crate::aws::client::service_error(
            "GetRecords",
            status,
            None,
            None,
            body.as_bytes(),
        ))
    }

    #[test]
    fn reading_starts_where_the_checkpoint_says() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t2 = t + Duration::from_secs(60);
        let done = ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse("4950").unwrap(),
            sub_sequence_number: 2,
        };
        for (checkpoint, initial, expected) in [
            (
                Checkpoint::TrimHorizon,
                Some(t),
                Some((IteratorPosition::TrimHorizon, None)),
            ),
            (
                Checkpoint::Latest,
                Some(t),
                Some((IteratorPosition::Latest, None)),
            ),
            // A KCL-written AT_TIMESTAMP without a time takes the initial position's.
            (
                Checkpoint::AtTimestamp(None),
                Some(t),
                Some((IteratorPosition::AtTimestamp(t), None)),
            ),
            (
                Checkpoint::AtTimestamp(None),
                None,
                Some((IteratorPosition::Latest, None)),
            ),
            (
                Checkpoint::AtTimestamp(Some(t2)),
                Some(t),
                Some((IteratorPosition::AtTimestamp(t2), None)),
            ),
            // At the checkpointed record, not after it, skipping up to it.
            (
                Checkpoint::At(done.clone()),
                None,
                Some((
                    IteratorPosition::AtSequenceNumber(done.sequence_number.clone()),
                    Some(done.clone()),
                )),
            ),
            (Checkpoint::ShardEnd, Some(t), None),
        ] {
            assert_eq!(
                start_position(checkpoint.clone(), initial),
                expected,
                "{checkpoint:?}"
            );
        }
    }

    #[test]
    fn subscribe_calls_of_a_shard_are_a_second_apart() {
        let now = Instant::now();
        assert_eq!(
            subscribe_wait(now - Duration::from_millis(300), now),
            Duration::from_millis(700)
        );
        assert_eq!(
            subscribe_wait(now - Duration::from_secs(2), now),
            Duration::ZERO
        );
    }

    #[test]
    fn only_a_read_with_no_record_and_no_next_iterator_ends_a_fan_out_shard() {
        assert!(ends_shard(0, None));
        assert!(!ends_shard(1, None), "records after the continuation");
        assert!(!ends_shard(0, Some("AAAA")), "an open shard at its tip");
    }

    #[test]
    fn a_failed_read_is_retried_refreshed_or_fatal() {
        let throttled = service_error(400, "ProvisionedThroughputExceededException");
        let broken = Error::transport("GetRecords", "http://x", TransportKind::Broken, "reset");
        let same = AfterError::Retry {
            same_iterator: true,
        };
        let fresh = AfterError::Retry {
            same_iterator: false,
        };
        let expired = service_error(400, "ExpiredIteratorException");
        assert_eq!(
            after_get_records_error(&expired, 1),
            AfterError::FreshIterator
        );
        // Throttling never spends the iterator.
        for failures in 1..=6 {
            assert_eq!(after_get_records_error(&throttled, failures), same);
        }
        // Other retryable failures: every third one gets a fresh iterator.
        let decisions: Vec<_> = (1..=6)
            .map(|n| after_get_records_error(&broken, n))
            .collect();
        assert_eq!(decisions, [same, same, fresh, same, same, fresh]);
        let server = service_error(500, "InternalFailure");
        assert_eq!(after_get_records_error(&server, 3), fresh);
        let denied = service_error(400, "AccessDeniedException");
        assert_eq!(after_get_records_error(&denied, 1), AfterError::Fail);
    }

    #[test]
    fn failed_and_successful_reads_record_their_metrics() {
        let names = |samples: &[(Metric, f64)]| -> Vec<Metric> {
            samples.iter().map(|(m, _)| *m).collect()
        };
        let (s, n) = failed_call_samples(&service_error(400, "ExpiredIteratorException"), 7.0);
        assert_eq!(
            names(&s[..n]),
            [
                Metric::GetRecordsSuccess,
                Metric::GetRecordsTime,
                Metric::ExpiredIterators
            ]
        );
        let (s, n) = failed_call_samples(
            &service_error(400, "ProvisionedThroughputExceededException"),
            7.0,
        );
        assert_eq!(
            names(&s[..n]),
            [
                Metric::GetRecordsSuccess,
                Metric::GetRecordsTime,
                Metric::GetRecordsThrottled
            ]
        );
        assert_eq!((s[0].1, s[1].1), (0.0, 7.0));
        let (_, n) = failed_call_samples(&service_error(500, "InternalFailure"), 7.0);
        assert_eq!(n, 2);
        let (s, n) = read_samples(3.0, 10, 1, Some(250));
        assert_eq!(n, 5);
        assert_eq!(
            s.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [1.0, 3.0, 10.0, 1.0, 250.0]
        );
        // No MillisBehindLatest when the reply had none.
        assert_eq!(read_samples(3.0, 0, 0, None).1, 4);
    }

    #[test]
    fn a_reply_passes_the_checkpoint_only_past_its_sequence_number() {
        let seq = |s: &str| SequenceNumber::parse(s).unwrap();
        let done = ExtendedSequenceNumber {
            sequence_number: seq("100"),
            sub_sequence_number: 3,
        };
        assert!(!passes_checkpoint(None, Some(&seq("200"))));
        assert!(!passes_checkpoint(Some(&done), None));
        // The rest of the checkpointed aggregate is still being skipped.
        assert!(!passes_checkpoint(Some(&done), Some(&seq("100"))));
        assert!(!passes_checkpoint(Some(&done), Some(&seq("99"))));
        assert!(passes_checkpoint(Some(&done), Some(&seq("101"))));
    }

    #[test]
    fn paced_reads_stay_under_two_mib_per_second() {
        let called_at = Instant::now();
        let next = called_at + MIN_TIME_BETWEEN_READS;
        // A small read waits only the minimum time between calls.
        assert_eq!(paced(next, called_at, 1024), next);
        // 4 MiB buys two seconds.
        assert_eq!(
            paced(next, called_at, 4 * 1024 * 1024),
            called_at + Duration::from_secs(2)
        );
    }
    use crate::aws::credentials::Credentials;
    use crate::aws::test_server::{FakeServer, Request};
    use crossbeam_channel::{Receiver, TryRecvError};
    use std::sync::atomic::AtomicUsize;

    const SHARD: &str = "shardId-000000000000";
    const ITERATOR: &str = r#"{"ShardIterator":"it"}"#;
    const ONE_RECORD: &str = r#"{"Records":[{"SequenceNumber":"7","PartitionKey":"k","Data":"aGk="}],"NextShardIterator":"it","MillisBehindLatest":0}"#;

    fn ok(body: &str) -> (u16, String) {
        (200, body.to_owned())
    }

    fn aws_error(code: &str) -> (u16, String) {
        (
            400,
            format!(r#"{{"__type":"{code}","message":"from the test"}}"#),
        )
    }

    /// A ListShards reply naming the test's shard, closed or open.
    fn listed(closed: bool) -> (u16, String) {
        let end = if closed {
            r#","EndingSequenceNumber":"9""#
        } else {
            ""
        };
        ok(&format!(
            r#"{{"Shards":[{{"ShardId":"{SHARD}","HashKeyRange":{{"StartingHashKey":"0","EndingHashKey":"9"}},"SequenceNumberRange":{{"StartingSequenceNumber":"0"{end}}}}}]}}"#
        ))
    }

    /// A pool reading from `server`, with a channel of `capacity` outputs
    /// and a message handler that counts its calls.
    fn pool(
        server: &FakeServer,
        capacity: usize,
        stop_timeout: Duration,
    ) -> (
        ReaderPool<String>,
        Receiver<ReaderOutput<String>>,
        Arc<AtomicUsize>,
    ) {
        let config = ClientConfig::new()
            .region("us-east-1")
            .endpoint_url(&server.url)
            .credentials(Credentials::new("AKIDTEST", "secret"))
            .retry_wait(Duration::from_millis(1));
        let (sender, outputs) = crossbeam_channel::bounded(capacity);
        let handled = Arc::new(AtomicUsize::new(0));
        let calls = handled.clone();
        let context = ReaderContext {
            kinesis: KinesisClient::new(&config).unwrap(),
            stream: "stream".into(),
            streams: Arc::default(),
            handler: Arc::new(move |r: &Record| {
                calls.fetch_add(1, Ordering::SeqCst);
                String::from_utf8_lossy(r.data()).into_owned()
            }),
            sender,
            shard_queue: None,
            budget: Arc::new(Budget::new(1 << 20, 1000)),
            max_records: 100,
            idle_time: Duration::from_millis(10),
            retry_wait: Duration::from_millis(1),
            start_timestamp: None,
            read_memory: Arc::new(Budget::new(1 << 30, u64::MAX)),
            fan_out: None,
            fan_outs: StreamConsumers::polling(),
            pace_reads: false,
            metrics: Metrics::default(),
            readers: AtomicUsize::new(0),
            stop_timeout,
        };
        (ReaderPool::new(context), outputs, handled)
    }

    /// The next output after the reader's `Started`, which must come first.
    fn after_start(outputs: &Receiver<ReaderOutput<String>>) -> ReaderOutput<String> {
        let first = outputs.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(first, ReaderOutput::Started { .. }), "{first:?}");
        outputs.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    /// True when nothing but the reader's `Started` was sent.
    fn only_started(outputs: &Receiver<ReaderOutput<String>>) -> bool {
        matches!(outputs.try_recv(), Ok(ReaderOutput::Started { .. }))
            && matches!(outputs.try_recv(), Err(TryRecvError::Empty))
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn requests_of(server: &FakeServer, operation: &str) -> Vec<Request> {
        server
            .requests()
            .into_iter()
            .filter(|r| r.operation() == operation)
            .collect()
    }

    fn finished(pool: &ReaderPool<String>) -> bool {
        pool.readers[SHARD].handle.is_finished()
    }

    #[test]
    fn resource_not_found_ends_the_reader_quietly_and_is_reported_once() {
        for failing in ["GetShardIterator", "GetRecords"] {
            let server = FakeServer::start(move |r| match r.operation() {
                op if op == failing => aws_error("ResourceNotFoundException"),
                "GetShardIterator" => ok(ITERATOR),
                other => panic!("unexpected {other}"),
            });
            let (mut pool, outputs, _) = pool(&server, 4, Duration::from_secs(5));
            pool.start(SHARD, 1, &Checkpoint::TrimHorizon);
            wait_until("the reader to end", || finished(&pool));
            assert_eq!(pool.take_not_found(), vec![SHARD.to_owned()], "{failing}");
            assert!(pool.take_not_found().is_empty(), "reported once");
            assert!(pool.is_running(SHARD), "running until stopped");
            assert!(
                only_started(&outputs),
                "{failing}: nothing sent to the ticker"
            );
            pool.stop(SHARD);
            assert!(!pool.is_running(SHARD));
            pool.stop_all();
        }
    }

    #[test]
    fn a_reader_told_to_stop_during_get_records_never_calls_the_handler() {
        // The reply comes late, with a record; the first with a short
        // join bound (the reader is left behind), then with a long one.
        for stop_timeout in [Duration::from_millis(100), Duration::from_secs(5)] {
            let server = FakeServer::start(|r| match r.operation() {
                "GetShardIterator" => ok(ITERATOR),
                _ => {
                    std::thread::sleep(Duration::from_millis(600));
                    ok(ONE_RECORD)
                }
            });
            let (mut pool, outputs, handled) = pool(&server, 4, stop_timeout);
            pool.start(SHARD, 1, &Checkpoint::TrimHorizon);
            wait_until("a GetRecords call", || {
                !requests_of(&server, "GetRecords").is_empty()
            });
            let stopping = Instant::now();
            pool.stop(SHARD);
            assert!(
                stopping.elapsed() < Duration::from_millis(100),
                "stop does not wait for the reader: {:?}",
                stopping.elapsed()
            );
            assert_eq!(pool.stopping.len(), 1);
            let stopping = Instant::now();
            pool.stop_all();
            let waited = stopping.elapsed();
            assert!(
                waited >= stop_timeout.min(Duration::from_millis(500))
                    && waited < Duration::from_secs(2),
                "stop_all waited {waited:?} with a bound of {stop_timeout:?}"
            );
            assert!(pool.stopping.is_empty() && pool.readers.is_empty());
            // Long enough for the late reply to reach a reader left behind.
            std::thread::sleep(Duration::from_millis(800));
            assert_eq!(handled.load(Ordering::SeqCst), 0, "{stop_timeout:?}");
            assert!(
                outputs
                    .try_iter()
                    .all(|o| !matches!(o, ReaderOutput::Chunk(_))),
                "nothing handed on"
            );
        }
    }

    #[test]
    fn stopped_readers_are_joined_once_finished() {
        let server = FakeServer::start(|r| match r.operation() {
            "GetShardIterator" => ok(ITERATOR),
            _ => {
                std::thread::sleep(Duration::from_millis(300));
                ok(r#"{"Records":[],"NextShardIterator":"it"}"#)
            }
        });
        let (mut pool, _outputs, _) = pool(&server, 4, Duration::from_secs(5));
        pool.start(SHARD, 1, &Checkpoint::TrimHorizon);
        wait_until("a GetRecords call", || {
            !requests_of(&server, "GetRecords").is_empty()
        });
        pool.start(SHARD, 2, &Checkpoint::TrimHorizon);
        assert_eq!(
            pool.stopping.len(),
            1,
            "the first reader, still in its call"
        );
        wait_until("the first reader to end", || {
            pool.stopping[0].handle.is_finished()
        });
        pool.stop(SHARD);
        wait_until("the second reader to end", || {
            pool.stopping.iter().all(|r| r.handle.is_finished())
        });
        pool.stop("another shard");
        assert!(pool.stopping.is_empty(), "reaped");
    }

    #[test]
    fn a_failure_nothing_drains_ends_when_the_reader_is_stopped() {
        let server = FakeServer::start(|_| aws_error("AccessDeniedException"));
        let (mut pool, outputs, _) = pool(&server, 2, Duration::from_secs(5));
        // The channel fills up (with the reader's `Started`) and nothing
        // drains it (a failed startup).
        pool.context
            .sender
            .send(ReaderOutput::Chunk(Chunk {
                shard_id: "other".into(),
                epoch: 1,
                messages: Vec::new(),
                millis_behind_latest: None,
                shard_end: false,
                bytes: 0,
                data_bytes: 0,
                room: None,
            }))
            .unwrap();
        pool.start(SHARD, 1, &Checkpoint::TrimHorizon);
        wait_until("the failed call", || server.hits() > 0);
        std::thread::sleep(Duration::from_millis(200));
        assert!(!finished(&pool), "waiting for room to report its failure");
        let stopping = Instant::now();
        pool.stop_all();
        assert!(
            stopping.elapsed() < Duration::from_secs(1),
            "stop_all took {:?}",
            stopping.elapsed()
        );
        assert!(pool.readers.is_empty() && pool.stopping.is_empty());
        drop(outputs);
    }

    #[test]
    fn a_failure_is_sent_with_its_shard_and_epoch() {
        let server = FakeServer::start(|_| aws_error("AccessDeniedException"));
        let (mut pool, outputs, _) = pool(&server, 4, Duration::from_secs(5));
        pool.start(SHARD, 42, &Checkpoint::TrimHorizon);
        match after_start(&outputs) {
            ReaderOutput::Failed {
                shard_id,
                epoch,
                error,
            } => {
                assert_eq!((&*shard_id, epoch), (SHARD, 42));
                assert_eq!(error.code(), Some("AccessDeniedException"));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        pool.stop_all();
    }

    /// Reads the shard whose first GetRecords reply is `first` (later ones
    /// hold one record) and whose listing is `listing`; returns the first
    /// output and the ListShards and GetShardIterator calls made.
    fn first_output_after(
        first: &'static str,
        listing: (u16, String),
    ) -> (Chunk<String>, usize, usize) {
        let calls = AtomicUsize::new(0);
        let server = FakeServer::start(move |r| match r.operation() {
            "GetShardIterator" => ok(ITERATOR),
            "ListShards" => listing.clone(),
            _ if calls.fetch_add(1, Ordering::SeqCst) == 0 => ok(first),
            _ => ok(ONE_RECORD),
        });
        let (mut pool, outputs, _) = pool(&server, 4, Duration::from_secs(5));
        pool.start(SHARD, 1, &Checkpoint::TrimHorizon);
        let output = after_start(&outputs);
        pool.stop_all();
        let ReaderOutput::Chunk(chunk) = output else {
            panic!("expected a chunk, got {output:?}");
        };
        let count = |op| requests_of(&server, op).len();
        (chunk, count("ListShards"), count("GetShardIterator"))
    }

    #[test]
    fn a_reply_without_next_iterator_ends_only_a_shard_confirmed_closed() {
        // `{}` on an open shard: retried with a fresh iterator, no end.
        let (chunk, listings, iterators) = first_output_after("{}", listed(false));
        assert!(!chunk.shard_end);
        assert_eq!(chunk.messages.len(), 1);
        assert_eq!((listings, iterators), (1, 2));
        // Not listed at all, or the listing fails: not an end either.
        let (chunk, _, _) = first_output_after("{}", ok(r#"{"Shards":[]}"#));
        assert!(!chunk.shard_end);
        let (chunk, _, _) = first_output_after("{}", aws_error("AccessDeniedException"));
        assert!(!chunk.shard_end);
        // Listed closed (kinesis-local sends no ChildShards): the end.
        let (chunk, listings, iterators) = first_output_after("{}", listed(true));
        assert!(chunk.shard_end && chunk.messages.is_empty());
        assert_eq!((listings, iterators), (1, 1));
        // ChildShards in the reply: the end, without asking.
        let with_children = r#"{"Records":[],"NextShardIterator":null,"ChildShards":[{"ShardId":"shardId-000000000001","ParentShards":["shardId-000000000000"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#;
        let (chunk, listings, _) = first_output_after(with_children, listed(false));
        assert!(chunk.shard_end);
        assert_eq!(listings, 0);
    }

    #[test]
    fn a_fresh_iterator_after_latest_starts_when_the_first_was_asked_for() {
        let before = SystemTime::now();
        let expired = AtomicBool::new(false);
        let server = FakeServer::start(move |r| match r.operation() {
            "GetShardIterator" => ok(ITERATOR),
            _ if !expired.swap(true, Ordering::SeqCst) => aws_error("ExpiredIteratorException"),
            _ => ok(r#"{"Records":[],"NextShardIterator":"it"}"#),
        });
        let (mut pool, _outputs, _) = pool(&server, 4, Duration::from_secs(5));
        pool.start(SHARD, 1, &Checkpoint::Latest);
        wait_until("a second iterator", || {
            requests_of(&server, "GetShardIterator").len() >= 2
        });
        let after = SystemTime::now();
        pool.stop_all();
        let asked: Vec<serde_json::Value> = requests_of(&server, "GetShardIterator")
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        assert_eq!(asked[0]["ShardIteratorType"], "LATEST");
        assert_eq!(asked[1]["ShardIteratorType"], "AT_TIMESTAMP");
        let at = asked[1]["Timestamp"].as_f64().unwrap();
        let secs = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
        };
        assert!(
            secs(before) - 0.001 <= at && at <= secs(after),
            "{at} not between {:?} and {:?}",
            secs(before),
            secs(after)
        );
    }

    #[test]
    fn restart_position_pins_only_latest() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            restart_position(IteratorPosition::Latest, t),
            IteratorPosition::AtTimestamp(t)
        );
        let seq = SequenceNumber::parse("42").unwrap();
        for kept in [
            IteratorPosition::TrimHorizon,
            IteratorPosition::AtTimestamp(t - Duration::from_secs(60)),
            IteratorPosition::AtSequenceNumber(seq.clone()),
            IteratorPosition::AfterSequenceNumber(seq),
        ] {
            assert_eq!(restart_position(kept.clone(), t), kept);
        }
    }

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn a_shard_of_unknown_record_size_reads_one_record_then_grows_while_replies_are_full() {
        let most = 4 * MIB;
        let mut size = ReadSize::FIRST;
        assert_eq!(size.limit(10_000), 1);
        // One 1 KiB record: about 3 KB of memory while read.
        size = size.next(CALL_COST + 3_000, 1, 1, false, most);
        assert_eq!(size.reserve, 2 * MIN_READ_COST);
        assert_eq!(size.record_cost, Some(3_000));
        assert_eq!(size.limit(10_000), 131);
        let mut reserves = Vec::new();
        for _ in 0..8 {
            let limit = size.limit(10_000);
            let cost = CALL_COST + u64::from(limit) * 3_000;
            size = size.next(cost, limit as usize, limit, true, most);
            reserves.push(size.reserve / 1024);
        }
        assert_eq!(reserves, [1280, 2560, 4096, 4096, 4096, 4096, 4096, 4096]);
        assert_eq!(size.limit(10_000), ((most - CALL_COST) / 3_000) as u32);
        assert_eq!(size.limit(100), 100, "never more than max_records");
    }

    #[test]
    fn an_idle_shard_reserves_the_least_and_remembers_its_record_cost() {
        let busy = ReadSize {
            reserve: 4 * MIB,
            record_cost: Some(3_000),
        };
        let idle = busy.next(CALL_COST + 150, 0, 1310, false, 4 * MIB);
        assert_eq!(idle.reserve, MIN_READ_COST);
        assert_eq!(idle.record_cost, Some(3_000));
        // So a burst after idle starts small: 21 records of 3 KB fit.
        assert_eq!(idle.limit(10_000), 21);
    }

    #[test]
    fn a_partial_reply_keeps_the_reservation_while_behind_and_shrinks_to_it_when_caught_up() {
        let size = ReadSize {
            reserve: MIB,
            record_cost: Some(1_000),
        };
        assert_eq!(size.limit(10_000), 786);
        let behind = size.next(CALL_COST + 200_000, 200, 786, true, 4 * MIB);
        assert_eq!(behind.reserve, MIB);
        assert_eq!(behind.limit(10_000), 786);
        let caught_up = size.next(CALL_COST + 200_000, 200, 786, false, 4 * MIB);
        assert_eq!(caught_up.reserve, CALL_COST + 200_000);
        // Larger records than before: fewer asked for.
        let larger = size.next(CALL_COST + 500_000, 100, 786, true, 4 * MIB);
        assert_eq!(larger.record_cost, Some(5_000));
        assert_eq!(larger.limit(10_000), 157);
    }

    #[test]
    fn a_reply_that_outgrows_its_reservation_is_dropped_and_asked_for_again_smaller_or_equal() {
        let size = ReadSize {
            reserve: MIN_READ_COST,
            record_cost: Some(3_000),
        };
        assert_eq!(size.limit(10_000), 21);
        // The 21 records were 50 KB each.
        let cost = reply_cost(21 * 25_000);
        let again = size.dropped(cost, 21);
        assert_eq!(again.reserve, cost);
        assert_eq!(again.record_cost, Some(50_000));
        assert_eq!(again.limit(10_000), 21);
        // Before the shard's record size was known: one record asked for.
        let first = ReadSize::FIRST.dropped(reply_cost(1_400_000), 1);
        assert_eq!(first.reserve, reply_cost(1_400_000));
        assert_eq!(first.limit(10_000), 1);
    }

    #[test]
    fn a_read_always_has_room_for_one_record_even_past_half_of_read_memory() {
        // 1 MiB records (about 2.8 MB each while read) with read_memory 2 MiB.
        let size = ReadSize::FIRST.dropped(reply_cost(1_400_000), 1);
        let next = size.next(reply_cost(1_400_000), 1, 1, true, MIB);
        assert_eq!(next.reserve, reply_cost(1_400_000));
        assert_eq!(next.limit(10_000), 1);
    }

    #[test]
    fn a_reservation_follows_the_reply_and_never_waits_holding_memory() {
        let budget = Budget::new(100, u64::MAX);
        let reserve = |bytes| {
            assert!(budget.acquire(bytes, 0, || false));
            Reservation {
                budget: &budget,
                bytes,
            }
        };
        // A small reply gives back what it does not need.
        let mut a = reserve(40);
        assert!(a.fit(10));
        assert_eq!(budget.used(), (10, 0));
        assert!(a.fit(40));
        let mut b = reserve(40);
        assert_eq!(budget.used(), (80, 0));
        // Both replies turn out larger than reserved: 70 each. The first
        // finds no room: it gives back its 40 and its reply is dropped; the
        // second then fits.
        assert!(!a.fit(70));
        assert_eq!(a.bytes, 0);
        assert_eq!(budget.used(), (40, 0));
        assert!(b.fit(70));
        assert_eq!(budget.used(), (70, 0));
        drop(a);
        drop(b);
        assert_eq!(budget.used(), (0, 0));
        // Alone, a reply larger than the whole budget still fits.
        let mut c = reserve(40);
        assert!(c.fit(500));
        assert_eq!(budget.used(), (500, 0));
    }

    #[test]
    fn a_reservation_does_not_grow_past_readers_waiting_in_line() {
        let budget = Budget::new(100, u64::MAX);
        assert!(budget.acquire(50, 0, || false));
        let mut r = Reservation {
            budget: &budget,
            bytes: 0,
        };
        assert!(r.fit(20));
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| budget.acquire(40, 0, || false));
            std::thread::sleep(Duration::from_millis(50));
            // Room for 30 more, but a reader waits for 40: growing by 10
            // would pass it.
            assert!(!r.fit(30));
            assert!(waiter.join().unwrap());
        });
        assert_eq!(budget.used(), (90, 0));
    }

    #[test]
    fn decoded_records_are_accounted_past_the_bound() {
        let budget = Budget::new(100, u64::MAX);
        assert!(budget.acquire(60, 0, || false));
        let mut r = Reservation {
            budget: &budget,
            bytes: 0,
        };
        assert!(r.fit(40));
        // The records took more than the reply's estimate: counted at once.
        r.account(70);
        assert_eq!(budget.used(), (130, 0));
        r.account(20);
        assert_eq!(budget.used(), (80, 0));
        drop(r);
        assert_eq!(budget.used(), (60, 0));
    }
}
