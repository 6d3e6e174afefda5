//! Polling retrieval: GetRecords calls within the shard's limits, each
//! holding its memory in `read_memory` from before the call until its
//! records are handed on.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Batch, Held, Retrieval, Shard, restart_position};
use crate::aws::get_records::Records;
use crate::aws::kinesis::{GetRecordsOutput, IteratorPosition};
use crate::error::{Error, Result};
use crate::metrics::Metric;
use crate::record::SequenceNumber;
use crate::time::later;
use crate::worker::budget::Budget;

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_TIME_BETWEEN_READS: Duration = Duration::from_millis(200);
/// Kinesis allows 2 MiB per second of reads per shard.
const MAX_BYTES_PER_SECOND: f64 = 2.0 * 1024.0 * 1024.0;

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
#[derive(Debug)]
pub(super) struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
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

impl Drop for Reservation {
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

/// What polling needs besides the shard: the reader's settings.
pub(super) struct PollingSettings {
    /// Memory of reads in flight, across all readers (see `read_memory`).
    pub read_memory: Arc<Budget>,
    pub max_records: u32,
    pub idle_time: Duration,
    pub pace_reads: bool,
}

/// Polls one shard with GetRecords.
pub(super) struct Polling {
    settings: PollingSettings,
    /// Where a fresh iterator starts while no record was handed on.
    start: IteratorPosition,
    /// The last record handed on: a fresh iterator goes on after it.
    last_handed_on: Option<SequenceNumber>,
    /// The iterator of the next call; `None`: get a fresh one.
    iterator: Option<String>,
    /// Failed or throttled calls in a row.
    failures: u32,
    /// When the next call may start.
    next_read: Instant,
    /// The size of the next read (see `read_memory`).
    read_size: ReadSize,
    /// The last call whose records are being mapped, for sizing and
    /// pacing the next one.
    last_read: Option<Read>,
}

/// One successful GetRecords call, as sizing the next one needs it.
struct Read {
    called_at: Instant,
    /// The most records asked for.
    limit: u32,
    /// How many records the reply brought.
    records: usize,
    /// The shard was behind its tip.
    behind: bool,
}

impl Polling {
    pub(super) fn new(settings: PollingSettings, start: IteratorPosition) -> Polling {
        Polling {
            settings,
            start,
            last_handed_on: None,
            iterator: None,
            failures: 0,
            next_read: Instant::now(),
            read_size: ReadSize::FIRST,
            last_read: None,
        }
    }

    /// A fresh iterator: after the last record handed on (replacing an
    /// expired one), else at `start`, which from then on no longer means
    /// LATEST (see [`restart_position`]).
    fn fresh_iterator(&mut self, shard: &Shard) -> Result<String> {
        let position = match &self.last_handed_on {
            Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
            None => self.start.clone(),
        };
        let asked_at = SystemTime::now();
        let iterator =
            shard
                .kinesis
                .get_shard_iterator(&shard.stream, &shard.kinesis_shard_id, &position)?;
        self.start = restart_position(self.start.clone(), asked_at);
        Ok(iterator)
    }

    /// Waits in line for room for this shard's next read; `None` when told
    /// to stop.
    fn reserve(&self, shard: &Shard) -> Option<Reservation> {
        let bytes = self.read_size.reserve;
        let memory = &self.settings.read_memory;
        memory
            .acquire(bytes, 0, || shard.stopped())
            .then(|| Reservation {
                budget: memory.clone(),
                bytes,
            })
    }

    /// One GetRecords call for up to `limit` records; `reserved` is fitted
    /// to the reply's size before the reply is read. `Ok(None)`: the reply
    /// did not fit, and the cost it needs.
    fn get_records(
        shard: &Shard,
        reserved: &mut Reservation,
        iterator: &str,
        limit: u32,
    ) -> (Result<Option<(Records, GetRecordsOutput)>>, Option<u64>) {
        let mut too_large = None;
        let result = shard.kinesis.get_records_of(
            Some(&shard.stream),
            &shard.key,
            iterator,
            limit,
            Some(&shard.record_bytes),
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
}

impl Retrieval for Polling {
    /// Each round: an iterator (a fresh one when there is none), a wait
    /// for the shard's pace, room for the read, one GetRecords call, then
    /// the reply as a batch, or the failure waited out.
    fn next_batch(&mut self, shard: &Shard) -> Result<Option<Batch>> {
        while !shard.stopped() {
            let current = match self.iterator.take() {
                Some(it) => it,
                None => match self.fresh_iterator(shard) {
                    Ok(it) => it,
                    Err(e) if e.is_retryable() => {
                        shard.back_off(&mut self.failures, Some(&e), Duration::from_millis(100));
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            shard.pause(self.next_read.saturating_duration_since(Instant::now()));
            if shard.stopped() {
                break;
            }
            // Bound the memory of reads in flight across all shards: hold a
            // reservation from before the call until the records are in the
            // buffer, ask for as many records as it holds, and fit it to the
            // reply's size before the reply is read.
            let Some(mut reserved) = self.reserve(shard) else {
                break;
            };
            let limit = self.read_size.limit(self.settings.max_records);
            let called_at = Instant::now();
            self.next_read = if self.settings.pace_reads {
                called_at + MIN_TIME_BETWEEN_READS
            } else {
                called_at
            };
            let (result, too_large) = Self::get_records(shard, &mut reserved, &current, limit);
            let call_ms = called_at.elapsed().as_secs_f64() * 1000.0;
            // Told to stop during the call: the lease may be another
            // worker's by now and `run` may have returned; no user code.
            if shard.stopped() {
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
                        shard.key
                    );
                    self.read_size = self.read_size.dropped(cost, limit);
                    self.iterator = Some(current);
                    continue;
                }
                Err(e) => {
                    let (samples, known) = failed_call_samples(&e, call_ms);
                    shard.metrics.record(Some(&shard.key), &samples[..known]);
                    shard
                        .metrics
                        .live()
                        .error(format!("GetRecords on {} failed: {e}", shard.key));
                    match after_get_records_error(&e, self.failures + 1) {
                        AfterError::FreshIterator => {
                            log::info!("shard {}: iterator expired; getting a new one", shard.key)
                        }
                        AfterError::Retry { same_iterator } => {
                            if same_iterator {
                                self.iterator = Some(current);
                            }
                            shard.back_off(
                                &mut self.failures,
                                Some(&e),
                                Duration::from_millis(200),
                            );
                        }
                        AfterError::Fail => return Err(e),
                    }
                    continue;
                }
            };
            // No next iterator: the end of a closed shard, or a broken reply
            // (a `{}` from a proxy) that must not finish an open shard.
            let shard_end = reply.next_shard_iterator.is_none();
            if shard_end && !end_confirmed(shard, &reply) {
                shard.metrics.record(
                    Some(&shard.key),
                    &[
                        (Metric::GetRecordsSuccess, 0.0),
                        (Metric::GetRecordsTime, call_ms),
                    ],
                );
                // Drop the reply; a fresh iterator goes on after the last
                // record handed on.
                shard.back_off(&mut self.failures, None, Duration::from_millis(200));
                continue;
            }
            if self.failures > 0 {
                log::info!(
                    "shard {}: reading again after {} failed or throttled call(s)",
                    shard.key,
                    self.failures
                );
            }
            self.failures = 0;
            if let Some(last) = records.last_sequence_number() {
                self.last_handed_on = Some(last.clone());
            }
            if records.is_empty() {
                self.next_read = self
                    .next_read
                    .max(later(Instant::now(), self.settings.idle_time));
            }
            self.iterator = reply.next_shard_iterator;
            self.last_read = Some(Read {
                called_at,
                limit,
                records: records.len(),
                behind: reply.millis_behind_latest.unwrap_or(0) > 0,
            });
            return Ok(Some(Batch {
                last_sequence_number: records.last_sequence_number().cloned(),
                buffer_bytes: records.buffer_bytes(),
                records: Box::new(records.into_iter()),
                millis_behind_latest: reply.millis_behind_latest,
                shard_end,
                call_ms: Some(call_ms),
                memory: Some(Held::Read(reserved)),
            }));
        }
        Ok(None)
    }

    /// Counts the batch's messages in its reservation, sizes the next read
    /// by what this one cost, and paces it.
    fn mapped(&mut self, batch: &mut Batch, bytes: u64, data_bytes: u64) {
        let (Some(Held::Read(reserved)), Some(read)) =
            (batch.memory.as_mut(), self.last_read.take())
        else {
            return;
        };
        let cost = reserved.bytes.max(bytes);
        reserved.account(bytes);
        // No read reserves more than half of `read_memory`, so reads of
        // several shards fit at once.
        let most = self.settings.read_memory.max_bytes() / 2;
        self.read_size = self
            .read_size
            .next(cost, read.records, read.limit, read.behind, most);
        if self.settings.pace_reads {
            self.next_read = paced(self.next_read, read.called_at, data_bytes);
        }
    }
}

/// Whether a reply without a next iterator really ends the shard: it
/// names the shard's children, or ListShards lists the shard as closed
/// (kinesis-local never sends ChildShards). Otherwise the reply is
/// malformed (logged here); it must never lead to a SHARD_END checkpoint.
fn end_confirmed(shard: &Shard, reply: &GetRecordsOutput) -> bool {
    if !reply.child_shards.is_empty() {
        return true;
    }
    let why = match shard.kinesis.list_shards(&shard.stream, None) {
        Ok(shards) => match shards.iter().find(|s| s.shard_id == shard.kinesis_shard_id) {
            Some(listed) if listed.is_closed() => return true,
            Some(_) => "ListShards lists it as open".to_owned(),
            None => "ListShards does not list it".to_owned(),
        },
        Err(e) => format!("ListShards failed: {e}"),
    };
    log::warn!(
        "shard {}: malformed GetRecords reply (no NextShardIterator, no ChildShards) and {why}; not the shard's end: reading again after the last record handed on",
        shard.key
    );
    false
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

/// When the next call may start after a paced read of `data_bytes` called
/// at `called_at`: not before `next_read`, and late enough that the shard
/// stays under 2 MiB/s (a large read buys a longer pause).
fn paced(next_read: Instant, called_at: Instant, data_bytes: u64) -> Instant {
    let read_time = Duration::from_secs_f64(data_bytes as f64 / MAX_BYTES_PER_SECOND);
    next_read.max(called_at + read_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TransportKind;
    use crate::worker::reader::tests::service_error;

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
    fn failed_reads_record_their_metrics() {
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
        let budget = Arc::new(Budget::new(100, u64::MAX));
        let reserve = |bytes| {
            assert!(budget.acquire(bytes, 0, || false));
            Reservation {
                budget: budget.clone(),
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
        let budget = Arc::new(Budget::new(100, u64::MAX));
        assert!(budget.acquire(50, 0, || false));
        let mut r = Reservation {
            budget: budget.clone(),
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
        let budget = Arc::new(Budget::new(100, u64::MAX));
        assert!(budget.acquire(60, 0, || false));
        let mut r = Reservation {
            budget: budget.clone(),
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
