//! Shard readers: one blocking thread per shard being read. A reader gets
//! records with GetRecords within the shard's limits, de-aggregates them,
//! runs the message handler, and hands whole reads to the ticker.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{SendTimeoutError, Sender};

use crate::aws::client::backoff;
use crate::aws::get_records::Records;
use crate::aws::kinesis::{GetRecordsOutput, IteratorPosition, KinesisClient};
use crate::config::MessageHandler;
use crate::error::{Error, Result};
use crate::kpl;
use crate::lease::{Checkpoint, ShardRunner};
use crate::metrics::{Metric, Metrics};
use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber, Span};
use crate::worker::batch::Message;
use crate::worker::budget::Budget;

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_TIME_BETWEEN_READS: Duration = Duration::from_millis(200);
/// Kinesis allows 2 MiB per second of reads per shard.
const MAX_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;
/// How often a waiting reader looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

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
}

/// What readers send to the ticker.
#[derive(Debug)]
pub(crate) enum ReaderOutput<T> {
    Chunk(Chunk<T>),
    Failed(Error),
}

/// What every reader of one consumer shares.
pub(crate) struct ReaderContext<T> {
    pub kinesis: KinesisClient,
    pub stream: String,
    pub handler: MessageHandler<T>,
    pub sender: Sender<ReaderOutput<T>>,
    pub budget: Arc<Budget>,
    pub max_records: u32,
    pub idle_time: Duration,
    pub retry_wait: Duration,
    pub start_timestamp: Option<SystemTime>,
    /// Memory of reads in flight, across all readers (see `read_memory`).
    pub read_memory: Arc<Budget>,
    pub pace_reads: bool,
    pub metrics: Metrics,
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
    readers: HashMap<String, (Arc<AtomicBool>, JoinHandle<()>)>,
}

impl<T: Send + 'static> ReaderPool<T> {
    pub(crate) fn new(context: ReaderContext<T>) -> ReaderPool<T> {
        ReaderPool {
            context: Arc::new(context),
            readers: HashMap::new(),
        }
    }
}

impl<T: Send + 'static> ShardRunner for ReaderPool<T> {
    fn start(&mut self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint) {
        self.stop(shard_id);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            context: self.context.clone(),
            shard_id: shard_id.into(),
            epoch,
            stop: stop.clone(),
            warned_about_aggregates: false,
            read_size: ReadSize::FIRST,
        };
        let checkpoint = checkpoint.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("kinesis-reader-{shard_id}"))
            .spawn(move || reader.run(checkpoint));
        match spawned {
            Ok(handle) => {
                self.readers.insert(shard_id.to_owned(), (stop, handle));
            }
            Err(e) => {
                let error =
                    Error::Internal(format!("cannot start a reader thread for {shard_id}: {e}"));
                let _ = self.context.sender.send(ReaderOutput::Failed(error));
            }
        }
    }

    fn stop(&mut self, shard_id: &str) {
        if let Some((stop, handle)) = self.readers.remove(shard_id) {
            stop.store(true, Ordering::Relaxed);
            // Not joined here: it may be blocked on a slow request; it exits
            // by itself and whatever it still sends is dropped as stale.
            drop(handle);
        }
    }

    fn is_running(&self, shard_id: &str) -> bool {
        self.readers.contains_key(shard_id)
    }

    fn take_not_found(&mut self) -> Vec<String> {
        Vec::new()
    }

    fn stop_all(&mut self) {
        for (stop, _) in self.readers.values() {
            stop.store(true, Ordering::Relaxed);
        }
        for (_, (_, handle)) in self.readers.drain() {
            let _ = handle.join();
        }
    }
}

struct Reader<T> {
    context: Arc<ReaderContext<T>>,
    shard_id: Arc<str>,
    epoch: u64,
    stop: Arc<AtomicBool>,
    warned_about_aggregates: bool,
    /// The size of the next read (see `read_memory`).
    read_size: ReadSize,
}

impl<T: Send + 'static> Reader<T> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `duration`, waking early when told to stop.
    fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }

    fn run(mut self, checkpoint: Checkpoint) {
        if let Err(e) = self.read(checkpoint) {
            log::error!("reader of shard {} failed: {e}", self.shard_id);
            let _ = self.context.sender.send(ReaderOutput::Failed(e));
        }
    }

    fn read(&mut self, checkpoint: Checkpoint) -> Result<()> {
        let context = self.context.clone();
        let (start, mut resume_after) = match checkpoint {
            Checkpoint::TrimHorizon => (IteratorPosition::TrimHorizon, None),
            Checkpoint::Latest => (IteratorPosition::Latest, None),
            Checkpoint::AtTimestamp(at) => match at.or(context.start_timestamp) {
                Some(at) => (IteratorPosition::AtTimestamp(at), None),
                None => (IteratorPosition::Latest, None),
            },
            // Start at the checkpointed record, not after it, so the rest of a
            // half-processed KPL aggregate is read again; what was processed
            // is skipped below.
            Checkpoint::At(p) => (
                IteratorPosition::AtSequenceNumber(p.sequence_number.clone()),
                Some(p),
            ),
            Checkpoint::ShardEnd => return Ok(()),
        };
        let mut last_handed_on: Option<SequenceNumber> = None;
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        let mut next_read = Instant::now();
        while !self.stopped() {
            let current = match iterator.take() {
                Some(it) => it,
                None => {
                    // After an expired iterator, go on after the last record handed on.
                    let position = match &last_handed_on {
                        Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
                        None => start.clone(),
                    };
                    match context.kinesis.get_shard_iterator(
                        &context.stream,
                        &self.shard_id,
                        &position,
                    ) {
                        Ok(it) => it,
                        Err(e) if e.is_retryable() => {
                            failures += 1;
                            self.log_retry(&e, failures);
                            self.pause(backoff(
                                context.retry_wait.max(Duration::from_millis(100)),
                                failures,
                            ));
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            self.pause(next_read.saturating_duration_since(Instant::now()));
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
            next_read = if context.pace_reads {
                called_at + MIN_TIME_BETWEEN_READS
            } else {
                called_at
            };
            let mut too_large = None;
            let result =
                context
                    .kinesis
                    .get_records_of(&self.shard_id, &current, limit, |length| {
                        let cost = reply_cost(length);
                        let fits = reserved.fit(cost);
                        if !fits {
                            too_large = Some(cost);
                        }
                        fits
                    });
            let call_ms = called_at.elapsed().as_secs_f64() * 1000.0;
            if let Err(e) = &result {
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
                let known = if expired || e.is_throttling() { 3 } else { 2 };
                context
                    .metrics
                    .record(Some(&self.shard_id), &samples[..known]);
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
                    iterator = Some(current);
                    continue;
                }
                Err(e) if e.code() == Some("ExpiredIteratorException") => {
                    log::info!(
                        "shard {}: iterator expired; getting a new one",
                        self.shard_id
                    );
                    continue;
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    self.log_retry(&e, failures);
                    // Throttling says nothing about the iterator; repeated
                    // other failures may mean it went bad: get a fresh one.
                    if e.is_throttling() || failures % 3 != 0 {
                        iterator = Some(current);
                    }
                    self.pause(backoff(
                        context.retry_wait.max(Duration::from_millis(200)),
                        failures,
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if failures > 0 {
                log::info!(
                    "shard {}: reading again after {failures} failed or throttled call(s)",
                    self.shard_id
                );
            }
            failures = 0;
            let empty = records.is_empty();
            let millis_behind = reply.millis_behind_latest;
            if let Some(last) = records.last_sequence_number() {
                last_handed_on = Some(last.clone());
            }
            let next_iterator = reply.next_shard_iterator.clone();
            let past_checkpoint = resume_after.as_ref().is_some_and(|done| {
                records
                    .last_sequence_number()
                    .is_some_and(|last| *last > done.sequence_number)
            });
            let record_count = records.len();
            let (chunk, deaggregated, passed_through) =
                self.chunk(records, reply, resume_after.as_ref())?;
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
            let known = if millis_behind.is_some() { 5 } else { 4 };
            context
                .metrics
                .record(Some(&self.shard_id), &samples[..known]);
            if past_checkpoint {
                resume_after = None;
            }
            let cost = reserved.bytes.max(chunk.bytes);
            reserved.account(chunk.bytes);
            // No read reserves more than half of `read_memory`, so reads of
            // several shards fit at once.
            let most = context.read_memory.max_bytes() / 2;
            let behind = millis_behind.unwrap_or(0) > 0;
            self.read_size = self.read_size.next(cost, record_count, limit, behind, most);
            if context.pace_reads {
                // Stay under 2 MiB/s: a large read buys a longer pause.
                let read_time =
                    Duration::from_secs_f64(chunk.data_bytes as f64 / MAX_BYTES_PER_SECOND);
                next_read = next_read.max(called_at + read_time);
            }
            let shard_end = chunk.shard_end;
            if (!chunk.messages.is_empty() || shard_end) && !self.hand_on(chunk) {
                break;
            }
            if shard_end {
                log::info!("shard {} read to its end", self.shard_id);
                return Ok(());
            }
            iterator = next_iterator;
            if empty {
                next_read = next_read.max(Instant::now() + context.idle_time);
            }
        }
        Ok(())
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
        } else {
            log::debug!("shard {}: retrying after {e}", self.shard_id);
        }
    }

    /// Turns one reply into messages: de-aggregates, skips what the
    /// checkpoint says was processed, and runs the message handler, one
    /// record at a time (no intermediate list).
    fn chunk(
        &mut self,
        kinesis_records: Records,
        reply: GetRecordsOutput,
        resume_after: Option<&ExtendedSequenceNumber>,
    ) -> Result<(Chunk<T>, u64, u64)> {
        let buffer_bytes = kinesis_records.buffer_bytes();
        let kinesis_records = kinesis_records.into_iter();
        let mut messages: Vec<Message<T>> = Vec::with_capacity(kinesis_records.len());
        let handler = &*self.context.handler;
        let warned = &mut self.warned_about_aggregates;
        let (mut deaggregated, mut passed_through) = (0u64, 0u64);
        let mut data_bytes = 0u64;
        let mut deliver = |record: Record| {
            if resume_after.is_some_and(|done| record.position <= *done) {
                return;
            }
            data_bytes += (record.data.len() + record.partition_key.len()) as u64;
            let value = handler(&record);
            messages.push(Message { record, value });
        };
        let mapped = catch_unwind(AssertUnwindSafe(|| {
            for r in kinesis_records {
                if kpl::is_aggregated(r.data()) {
                    match kpl::deaggregate(r.data()) {
                        Ok(users) => {
                            deaggregated += users.len() as u64;
                            let span = |part: &[u8]| Span::within(&r.shared.bytes, part);
                            for (i, u) in users.iter().enumerate() {
                                deliver(Record {
                                    shared: r.shared.clone(),
                                    position: ExtendedSequenceNumber {
                                        sequence_number: r.position.sequence_number.clone(),
                                        sub_sequence_number: i as u64,
                                    },
                                    aggregated: true,
                                    partition_key: span(u.partition_key.as_bytes()),
                                    explicit_hash_key: u
                                        .explicit_hash_key
                                        .map(|k| span(k.as_bytes())),
                                    arrival: r.arrival,
                                    data: span(u.data),
                                });
                            }
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
            millis_behind_latest: reply.millis_behind_latest,
            shard_end: reply.next_shard_iterator.is_none(),
            data_bytes,
        };
        Ok((chunk, deaggregated, passed_through))
    }

    /// Waits for room in the buffer and sends; false when told to stop first.
    fn hand_on(&self, chunk: Chunk<T>) -> bool {
        let records = chunk.messages.len() as u64;
        let budget = &self.context.budget;
        if !budget.acquire(chunk.bytes, records, || self.stopped()) {
            return false;
        }
        let (bytes, mut output) = (chunk.bytes, ReaderOutput::Chunk(chunk));
        loop {
            match self.context.sender.send_timeout(output, STOP_CHECK) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) if !self.stopped() => output = back,
                Err(_) => {
                    self.context.budget.release(bytes, records);
                    return false;
                }
            }
        }
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
