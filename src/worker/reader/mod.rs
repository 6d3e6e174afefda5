//! Shard readers: one blocking thread per shard being read. A reader takes
//! batches of records from its retrieval ([`polling`] or [`fan_out`]),
//! de-aggregates them, runs the message handler, and hands whole batches
//! to the ticker.

mod fan_out;
mod polling;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};

use crate::aws::client::backoff;
use crate::aws::fan_out::SharedConsumer;
use crate::aws::kinesis::{IteratorPosition, KinesisClient};
use crate::error::{Error, Result};
use crate::kpl;
use crate::lease::{Checkpoint, ShardRunner};
use crate::metrics::{Metric, Metrics};
use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber};
use crate::spares::Spares;
use crate::stream::split_lease_key;
use crate::time::later;
use crate::worker::MessageHandler;
use crate::worker::batch::{Message, SpareBuffers};
use crate::worker::budget::{Budget, Room, Share, within_share};
use crate::worker::load::LoadMeter;
use crate::worker::stream_consumers::{ReadBy, StreamConsumers};
use fan_out::FanOut;
use polling::{Polling, PollingSettings};

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
    /// Spare message lists, shared with the ticker (see `Delivery`).
    pub spare_buffers: Arc<SpareBuffers<T>>,
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
    /// Each open fan-out subscription reserves its stream window from
    /// `read_memory` (set when `read_memory` was configured).
    pub subscriptions_reserve: bool,
    /// Enhanced fan-out: the registered consumer; readers subscribe to
    /// their shards instead of polling them.
    pub fan_out: Option<Arc<SharedConsumer>>,
    /// A multi-stream consumer's registered consumers, one per stream
    /// (registered by readers for streams added while running).
    pub fan_outs: StreamConsumers,
    pub pace_reads: bool,
    pub metrics: Metrics,
    /// Each lease's load: readers count what they read.
    pub load: Arc<LoadMeter>,
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
        self.context.load.started(&shard_id.into(), Instant::now());
        let reader = Reader {
            context: self.context.clone(),
            sender,
            shard: Shard {
                key: shard_id.into(),
                stream: target.stream,
                kinesis_shard_id: target.shard_id,
                stop: stop.clone(),
                kinesis: self.context.kinesis.clone(),
                record_bytes: self.context.spare_buffers.record_bytes.clone(),
                metrics: self.context.metrics.clone(),
                retry_wait: self.context.retry_wait,
            },
            fan_out: target.fan_out,
            epoch,
            not_found: not_found.clone(),
            warned_about_aggregates: false,
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

/// A shard being read, as a retrieval sees it: how Kinesis requests name
/// it, the client, and the reader's stop flag. Retrievals know nothing
/// of the message handler or the buffer.
pub(super) struct Shard {
    /// The shard as the consumer names it (its lease key).
    key: Arc<str>,
    /// The stream and the shard as Kinesis requests name them.
    stream: String,
    kinesis_shard_id: String,
    stop: Arc<AtomicBool>,
    kinesis: KinesisClient,
    /// Spare record buffers, shared by the consumer's readers.
    record_bytes: Arc<Spares<u8>>,
    metrics: Metrics,
    retry_wait: Duration,
}

impl Shard {
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

    /// Counts one more failed (or throttled) call in a row and waits it
    /// out: the retry wait, at least `floor`, doubled per failure, with
    /// jitter. The one retry step of every failure a reader waits out.
    fn back_off(&self, failures: &mut u32, error: Option<&Error>, floor: Duration) {
        *failures += 1;
        if let Some(e) = error {
            self.log_retry(e, *failures);
        }
        self.pause(backoff(self.retry_wait.max(floor), *failures));
    }

    fn log_retry(&self, e: &Error, failures: u32) {
        if e.is_throttling() && (failures == 1 || failures.is_power_of_two()) {
            log::warn!(
                "shard {}: throttled {failures} time(s) in a row, backing off: {e}",
                self.key
            );
        } else if failures >= 4 && failures.is_power_of_two() {
            // One failed call is weather; a run of them (Kinesis out of
            // reach, say) is something to look at, said less and less often.
            log::warn!(
                "shard {}: reading failed {failures} times in a row, still retrying: {e}",
                self.key
            );
        } else {
            log::debug!("shard {}: retrying after {e}", self.key);
        }
    }
}

/// The records a retrieval fetched in one go (one GetRecords reply, one
/// fan-out event), before de-aggregation and the message handler.
pub(super) struct Batch {
    records: Box<dyn ExactSizeIterator<Item = Record>>,
    last_sequence_number: Option<SequenceNumber>,
    /// The size of the buffer the records share.
    buffer_bytes: u64,
    millis_behind_latest: Option<u64>,
    /// The batch ends the shard (confirmed).
    shard_end: bool,
    /// A GetRecords call's time (polling).
    call_ms: Option<f64>,
    /// The batch's memory in `read_memory`, held until its messages are
    /// handed on.
    memory: Option<Held>,
}

/// Memory a batch holds in `read_memory`.
enum Held {
    /// A GetRecords call's reservation, fitted to its reply.
    Read(polling::Reservation),
    /// A fan-out event's records, counted past the bound if need be
    /// (held only to be given back when dropped).
    Event { _room: Room },
}

/// How a shard's records are fetched (the KCL's `RecordsPublisher`): the
/// reader asks for the next batch and does not know how it was fetched.
trait Retrieval {
    /// The next batch of the shard's records; `None` once told to stop.
    /// An error ends the reader (retryable failures are waited out here).
    fn next_batch(&mut self, shard: &Shard) -> Result<Option<Batch>>;

    /// Told what `batch` became once mapped: messages holding `bytes`,
    /// with `data_bytes` of data and partition keys.
    fn mapped(&mut self, _batch: &mut Batch, _bytes: u64, _data_bytes: u64) {}
}

struct Reader<T> {
    context: Arc<ReaderContext<T>>,
    /// Where this reader's chunks and failure go (see `shard_queue`).
    sender: Sender<ReaderOutput<T>>,
    shard: Shard,
    /// The registered consumer of the shard's stream, when reading by
    /// enhanced fan-out.
    fan_out: Option<Arc<SharedConsumer>>,
    epoch: u64,
    /// Set when the service says the shard does not exist (see `take_not_found`).
    not_found: Arc<AtomicBool>,
    warned_about_aggregates: bool,
    /// The buffer room this reader's chunks hold (per-shard queues).
    share: Arc<Share>,
}

impl<T: Send + 'static> Reader<T> {
    fn stopped(&self) -> bool {
        self.shard.stopped()
    }

    fn run(mut self, checkpoint: Checkpoint, records: Option<Receiver<ReaderOutput<T>>>) {
        let started = ReaderOutput::Started {
            shard_id: self.shard.key.clone(),
            epoch: self.epoch,
            from: checkpoint.clone(),
            records,
        };
        if send(&self.context.sender, started, &self.shard.stop).is_err() {
            return;
        }
        match self.read(checkpoint) {
            Ok(()) => {}
            // Not this reader's failure to report: the coordinator decides
            // what a shard the service does not know means for its lease.
            Err(e) if e.code() == Some("ResourceNotFoundException") || self.stream_leaving(&e) => {
                log::warn!(
                    "shard {}: the service does not know it; its reader stops: {e}",
                    self.shard.key
                );
                self.not_found.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                log::error!("reader of shard {} failed: {error}", self.shard.key);
                let _ = self.send(ReaderOutput::Failed {
                    shard_id: self.shard.key.clone(),
                    epoch: self.epoch,
                    error,
                });
            }
        }
    }

    /// True when a multi-stream reader's stream is being deleted
    /// (`ResourceInUseException`: not ACTIVE or UPDATING): one stream of
    /// several leaving does not stop the consumer; the coordinator's next
    /// shard sync retires it (or finds it recreated).
    fn stream_leaving(&self, e: &Error) -> bool {
        e.code() == Some("ResourceInUseException") && split_lease_key(&self.shard.key).is_some()
    }

    /// The retrieval of this reader's shard from `start`: through the
    /// registered consumer of its stream (registered now for a stream
    /// added or recreated while running, retried while the service says
    /// to), or by polling. A registration the service refuses is the
    /// error, as at startup. `None` when told to stop meanwhile, or when
    /// the shard's stream is gone (left to the coordinator, as a shard the
    /// service does not know).
    fn retrieval(&self, start: IteratorPosition) -> Result<Option<Box<dyn Retrieval>>> {
        let context = &self.context;
        let read_by = match &self.fan_out {
            Some(consumer) => ReadBy::FanOut(consumer.clone()),
            None => match self.stream_consumer()? {
                Some(read_by) => read_by,
                None => return Ok(None),
            },
        };
        Ok(Some(match read_by {
            ReadBy::FanOut(consumer) => {
                let memory = context
                    .subscriptions_reserve
                    .then(|| context.read_memory.clone());
                Box::new(FanOut::new(consumer, start, memory))
            }
            ReadBy::Polling => Box::new(Polling::new(
                PollingSettings {
                    read_memory: context.read_memory.clone(),
                    max_records: context.max_records,
                    idle_time: context.idle_time,
                    pace_reads: context.pace_reads,
                },
                start,
            )),
            ReadBy::StreamGone => {
                log::warn!(
                    "shard {}: its stream is gone (deleted or recreated); its reader stops",
                    self.shard.key
                );
                self.not_found.store(true, Ordering::Relaxed);
                return Ok(None);
            }
        }))
    }

    /// How a multi-stream shard is read (a single-stream consumer's
    /// readers are given their consumer, or poll); `None` once told to stop.
    fn stream_consumer(&self) -> Result<Option<ReadBy>> {
        let Some((stream, _)) = split_lease_key(&self.shard.key) else {
            return Ok(Some(ReadBy::Polling));
        };
        let mut failures = 0;
        while !self.stopped() {
            let context = &self.context;
            match context
                .fan_outs
                .retrieval(&context.kinesis, &stream, &self.shard.stream)
            {
                Err(e) if e.is_retryable() => {
                    self.shard
                        .back_off(&mut failures, Some(&e), Duration::from_millis(100));
                }
                other => return other.map(Some),
            }
        }
        Ok(None)
    }

    /// Reads the shard from `checkpoint` until told to stop or its end is
    /// handed on: each batch the retrieval fetches goes through the same
    /// de-aggregation, checkpoint skipping, message handler and buffer.
    fn read(&mut self, checkpoint: Checkpoint) -> Result<()> {
        let Some((start, mut resume_after)) =
            start_position(checkpoint, self.context.start_timestamp)
        else {
            return Ok(());
        };
        let Some(mut retrieval) = self.retrieval(start)? else {
            return Ok(());
        };
        while let Some(mut batch) = retrieval.next_batch(&self.shard)? {
            let past_checkpoint =
                passes_checkpoint(resume_after.as_ref(), batch.last_sequence_number.as_ref());
            let records = std::mem::replace(&mut batch.records, Box::new(std::iter::empty()));
            let (chunk, deaggregated, passed_through) = self.chunk(
                records,
                batch.buffer_bytes,
                batch.millis_behind_latest,
                batch.shard_end,
                resume_after.as_ref(),
            )?;
            if self.stopped() {
                // The chunk may be partial: the handler stopped being called.
                return Ok(());
            }
            let samples = read_samples(
                batch.call_ms,
                deaggregated,
                passed_through,
                batch.millis_behind_latest,
            );
            self.context.metrics.record(Some(&self.shard.key), &samples);
            self.context.load.read(
                &self.shard.key,
                chunk.messages.len(),
                chunk.data_bytes,
                Instant::now(),
            );
            if past_checkpoint {
                resume_after = None;
            }
            retrieval.mapped(&mut batch, chunk.bytes, chunk.data_bytes);
            let shard_end = batch.shard_end;
            if (!chunk.messages.is_empty() || shard_end) && !self.hand_on(chunk) {
                return Ok(());
            }
            if shard_end {
                log::info!("shard {} read to its end", self.shard.key);
                return Ok(());
            }
        }
        Ok(())
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
        let mut messages = self
            .context
            .spare_buffers
            .chunks
            .take(kinesis_records.len());
        let handler = &*self.context.handler;
        let stop = &*self.shard.stop;
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
                self.shard.key,
                panic_message(&panic)
            )));
        }
        let chunk = Chunk {
            shard_id: self.shard.key.clone(),
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
        send(&self.sender, output, &self.shard.stop)
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

/// The metrics of a batch handed on: a GetRecords call's success and time
/// (polling), then the records de-aggregated and passed through whole,
/// and `MillisBehindLatest` when the batch had it.
fn read_samples(
    call_ms: Option<f64>,
    deaggregated: u64,
    passed_through: u64,
    millis_behind: Option<u64>,
) -> Vec<(Metric, f64)> {
    let mut samples = Vec::with_capacity(5);
    if let Some(call_ms) = call_ms {
        samples.extend([
            (Metric::GetRecordsSuccess, 1.0),
            (Metric::GetRecordsTime, call_ms),
        ]);
    }
    samples.extend([
        (Metric::RecordsDeaggregated, deaggregated as f64),
        (Metric::AggregatesPassedThrough, passed_through as f64),
    ]);
    if let Some(behind) = millis_behind {
        samples.push((Metric::MillisBehindLatest, behind as f64));
    }
    samples
}

/// Whether a reply whose last record is `last` goes past the checkpoint
/// being resumed from (after it, nothing needs skipping).
fn passes_checkpoint(
    resume_after: Option<&ExtendedSequenceNumber>,
    last: Option<&SequenceNumber>,
) -> bool {
    resume_after.is_some_and(|done| last.is_some_and(|last| *last > done.sequence_number))
}

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
    use std::time::UNIX_EPOCH;

    pub(super) fn service_error(status: u16, code: &str) -> Error {
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
            spare_buffers: SpareBuffers::new(1 << 20),
            sender,
            shard_queue: None,
            budget: Arc::new(Budget::new(1 << 20, 1000)),
            max_records: 100,
            idle_time: Duration::from_millis(10),
            retry_wait: Duration::from_millis(1),
            start_timestamp: None,
            read_memory: Arc::new(Budget::new(1 << 30, u64::MAX)),
            subscriptions_reserve: false,
            fan_out: None,
            fan_outs: StreamConsumers::polling(),
            pace_reads: false,
            metrics: Metrics::default(),
            load: Arc::default(),
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

    #[test]
    fn handed_on_batches_record_their_metrics() {
        let values =
            |samples: Vec<(Metric, f64)>| -> Vec<f64> { samples.iter().map(|(_, v)| *v).collect() };
        assert_eq!(
            values(read_samples(Some(3.0), 10, 1, Some(250))),
            [1.0, 3.0, 10.0, 1.0, 250.0]
        );
        // No MillisBehindLatest when the batch had none.
        assert_eq!(read_samples(Some(3.0), 0, 0, None).len(), 4);
        // A fan-out event is no call.
        let event = read_samples(None, 2, 0, Some(0));
        assert_eq!(
            event.iter().map(|(m, _)| *m).collect::<Vec<_>>(),
            [
                Metric::RecordsDeaggregated,
                Metric::AggregatesPassedThrough,
                Metric::MillisBehindLatest
            ]
        );
    }
}
