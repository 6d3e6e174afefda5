//! Enhanced fan-out retrieval: SubscribeToShard through the registered
//! consumer, each event a batch; subscribes again after its continuation
//! when a subscription ends (the service ends each after 5 minutes) or
//! fails.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{Batch, Held, Retrieval, STOP_CHECK, Shard, restart_position};
use crate::aws::client::backoff;
use crate::aws::fan_out::{
    AfterSubscribeError, Polled, SharedConsumer, Subscription, after_subscribe_error, in_use_wait,
};
use crate::aws::http2::STREAM_WINDOW;
use crate::aws::kinesis::IteratorPosition;
use crate::error::{Error, Result};
use crate::metrics::Metric;
use crate::record::SequenceNumber;
use crate::time::later;
use crate::worker::budget::{Budget, Room};

/// AWS allows one SubscribeToShard call per second per consumer and shard.
const MIN_TIME_BETWEEN_SUBSCRIBES: Duration = Duration::from_secs(1);

/// How often an idle fan-out reader reads after its continuation to see
/// whether its shard was closed without the service saying so.
const FAN_OUT_END_CHECK: Duration = Duration::from_secs(10);

/// Reads one shard through enhanced fan-out.
pub(super) struct FanOut {
    consumer: Arc<SharedConsumer>,
    /// Where the first subscription starts (see [`restart_position`]).
    start: IteratorPosition,
    /// The continuation of the last event: the next subscription starts
    /// after it.
    continuation: Option<SequenceNumber>,
    /// The open subscription, and the consumer ARN it was made with.
    subscription: Option<(Subscription, Arc<str>)>,
    /// Failed subscriptions or events in a row.
    failures: u32,
    /// When an empty event at the tip next leads to an end check.
    next_end_check: Instant,
    /// The last successful SubscribeToShard call.
    last_subscribed: Option<Instant>,
    /// The last SubscribeToShard call.
    last_call: Option<Instant>,
    /// `read_memory`, when subscriptions reserve their window from it.
    memory: Option<Arc<Budget>>,
    /// The window the open subscription (or the one being made) holds in
    /// `memory`.
    room: Option<Room>,
    /// The last event was empty at the shard's tip: the subscription may
    /// give its room to a reader waiting in line.
    caught_up: bool,
}

impl FanOut {
    /// Reads through `consumer` from `start`; with `memory`, each open
    /// subscription reserves its stream window from it.
    pub(super) fn new(
        consumer: Arc<SharedConsumer>,
        start: IteratorPosition,
        memory: Option<Arc<Budget>>,
    ) -> FanOut {
        FanOut {
            consumer,
            start,
            continuation: None,
            subscription: None,
            failures: 0,
            next_end_check: Instant::now(),
            last_subscribed: None,
            last_call: None,
            memory,
            room: None,
            caught_up: false,
        }
    }

    /// Ends the open subscription and gives its room back.
    fn close(&mut self) {
        self.subscription = None;
        self.room = None;
        self.caught_up = false;
    }

    /// Whether a caught-up subscription should make way for readers
    /// waiting in line for room in `read_memory` (see [`gives_way`]).
    fn should_give_way(&self) -> bool {
        let waiting = self.memory.as_ref().map_or(0, |m| m.waiting());
        gives_way(self.caught_up, self.room.is_some(), waiting)
    }

    /// One SubscribeToShard call, a second after the last one; `Ok(None)`
    /// when told to stop, `Err` with the ARN it tried when it failed.
    fn subscribe(&mut self, shard: &Shard) -> std::result::Result<Option<()>, (Error, Arc<str>)> {
        // SubscribeToShard: 1 call per second per consumer and shard.
        if let Some(at) = self.last_call {
            shard.pause(subscribe_wait(at, Instant::now()));
            if shard.stopped() {
                return Ok(None);
            }
        }
        // The window the server may fill before we take anything out: held
        // in `read_memory` while the subscription is open; waits in line.
        if let (Some(memory), None) = (&self.memory, &self.room) {
            match memory.take_room(u64::from(STREAM_WINDOW), 0, || shard.stopped()) {
                Some(room) => self.room = Some(room),
                None => return Ok(None),
            }
        }
        let consumer_arn = self.consumer.arn();
        let position = match &self.continuation {
            Some(seq) => IteratorPosition::AfterSequenceNumber(seq.clone()),
            None => self.start.clone(),
        };
        let asked_at = SystemTime::now();
        let called_at = Instant::now();
        self.last_call = Some(called_at);
        let subscribed =
            shard
                .kinesis
                .subscribe_to_shard(&consumer_arn, &shard.kinesis_shard_id, &position);
        shard.metrics.record(
            Some(&shard.key),
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
                // No room held while the failure is waited out.
                self.room = None;
                return Err((e, consumer_arn));
            }
        };
        subscription.tag_records(&shard.key);
        self.last_subscribed = Some(called_at);
        self.start = restart_position(self.start.clone(), asked_at);
        self.subscription = Some((subscription, consumer_arn));
        Ok(Some(()))
    }

    /// What to wait before subscribing again after a failed subscription
    /// or event (the `failures`-th in a row, counted here), or the error
    /// the reader fails with (see [`after_subscribe_error`]): exception
    /// events and broken connections are resubscribed with backoff,
    /// `ResourceInUseException` waits until 5 s after the last successful
    /// subscribe, `ResourceNotFoundException` looks the consumer up (and
    /// registers it again), the KMS errors that cannot heal fail.
    fn after_failure(&mut self, shard: &Shard, tried: &str, e: Error) -> Result<Duration> {
        self.failures += 1;
        let n = self.failures;
        let spaced = n == 1 || n.is_power_of_two();
        let retry_wait = shard.retry_wait;
        let key = &shard.key;
        match after_subscribe_error(&e) {
            AfterSubscribeError::Resubscribe { floor, warn } => {
                let exception = matches!(&e, Error::Service(s) if s.status == 200);
                if warn && spaced {
                    log::warn!("shard {key}: subscribing again ({n} failure(s) in a row): {e}");
                } else if exception || (e.is_throttling() && spaced) {
                    log::info!(
                        "shard {key}: the subscription ended with {e}; subscribing again after its continuation"
                    );
                } else {
                    log::debug!("shard {key}: subscribing again after {e}");
                }
                Ok(backoff(retry_wait.max(floor), n))
            }
            AfterSubscribeError::InUse => {
                log::debug!("shard {key}: {e}; waiting until 5 s after the last subscribe");
                let floor = backoff(retry_wait.max(Duration::from_millis(200)), n);
                Ok(in_use_wait(self.last_subscribed, Instant::now(), floor))
            }
            AfterSubscribeError::CheckConsumer => {
                match self.consumer.refresh(&shard.kinesis, tried) {
                    // Registered again (here or by another worker): at once.
                    Ok(Some(_)) => Ok(Duration::ZERO),
                    // The consumer is fine: the shard is what is missing.
                    Ok(None) => Err(e),
                    Err(refresh) if refresh.is_retryable() => {
                        log::warn!(
                            "shard {key}: {e}; looking up the stream consumer failed, trying again: {refresh}"
                        );
                        Ok(backoff(retry_wait.max(Duration::from_millis(500)), n))
                    }
                    Err(refresh) => Err(refresh),
                }
            }
            AfterSubscribeError::Fail => Err(e),
        }
    }

    /// Whether an event with these fields ends the shard: it names the
    /// shard's children, or (no continuation, or an empty event at the
    /// tip now and then) a read after the continuation confirms it.
    fn ends_here(
        &mut self,
        shard: &Shard,
        children: bool,
        continuation: Option<&SequenceNumber>,
        empty_at_tip: bool,
        last: Option<&SequenceNumber>,
    ) -> bool {
        if children {
            return true;
        }
        let caught_up = empty_at_tip && Instant::now() >= self.next_end_check;
        if continuation.is_some() && !caught_up {
            return false;
        }
        // No continuation without children is malformed; an empty event at
        // the tip may be the end of a shard the service closed without
        // saying (kinesis-local never sends ChildShards): reading after
        // the continuation decides, now and then, as polling does.
        self.next_end_check = later(Instant::now(), FAN_OUT_END_CHECK);
        let after = continuation.or(last).or(self.continuation.as_ref());
        end_confirmed(shard, after, &self.start)
    }
}

impl Retrieval for FanOut {
    /// Waits for the next event of the open subscription (subscribing
    /// first when none is open) and hands its records on as a batch.
    fn next_batch(&mut self, shard: &Shard) -> Result<Option<Batch>> {
        while !shard.stopped() {
            if self.should_give_way() {
                log::debug!(
                    "shard {}: caught up; giving its subscription's room to a reader waiting for it",
                    shard.key
                );
                self.close();
            }
            let Some((subscription, consumer_arn)) = &mut self.subscription else {
                match self.subscribe(shard) {
                    Ok(Some(())) => {}
                    Ok(None) => break,
                    Err((e, tried)) => {
                        let wait = self.after_failure(shard, &tried, e)?;
                        shard.pause(wait);
                    }
                }
                continue;
            };
            let event = match subscription.poll(STOP_CHECK * 4) {
                Ok(Polled::Event(event)) => event,
                Ok(Polled::Idle) => continue,
                // The service's 5 minutes are up: subscribe again.
                Ok(Polled::Ended) => {
                    self.close();
                    continue;
                }
                Err(e) => {
                    let tried = consumer_arn.clone();
                    self.close();
                    shard
                        .metrics
                        .record(Some(&shard.key), &[(Metric::SubscribeToShardErrors, 1.0)]);
                    let wait = self.after_failure(shard, &tried, e)?;
                    shard.pause(wait);
                    continue;
                }
            };
            self.failures = 0;
            let last = event
                .records
                .last()
                .map(|r| r.position.sequence_number.clone());
            let empty_at_tip =
                event.records.is_empty() && event.millis_behind_latest.unwrap_or(0) == 0;
            self.caught_up = empty_at_tip;
            let shard_end = self.ends_here(
                shard,
                !event.child_shards.is_empty(),
                event.continuation_sequence_number.as_ref(),
                empty_at_tip,
                last.as_ref(),
            );
            if let Some(seq) = event.continuation_sequence_number {
                self.continuation = Some(seq);
            }
            let buffer_bytes = event
                .records
                .first()
                .map_or(0, |r| r.shared.bytes.len() as u64);
            // The event's records count until they are in the buffer.
            let memory = match &self.memory {
                Some(m) if buffer_bytes > 0 => Some(Held::Event {
                    _room: m.force_room(buffer_bytes),
                }),
                _ => None,
            };
            return Ok(Some(Batch {
                last_sequence_number: last,
                buffer_bytes,
                records: Box::new(event.records.into_iter()),
                millis_behind_latest: event.millis_behind_latest,
                shard_end,
                call_ms: None,
                memory,
            }));
        }
        // Told to stop: dropping the subscription cancels its stream.
        self.close();
        Ok(None)
    }
}

/// Whether a fan-out shard has ended after `after` (else at `start`),
/// confirmed the way polling confirms it: an iterator from there whose
/// GetRecords brings no record and no next iterator. Never from a
/// listing: a record written between the subscription's last event and
/// a ListShards that says "closed" would be lost. Records this read
/// finds are not handed on (the subscription brings them).
fn end_confirmed(shard: &Shard, after: Option<&SequenceNumber>, start: &IteratorPosition) -> bool {
    let position = after.map_or_else(
        || start.clone(),
        |seq| IteratorPosition::AfterSequenceNumber(seq.clone()),
    );
    let read = shard
        .kinesis
        .get_shard_iterator(&shard.stream, &shard.kinesis_shard_id, &position)
        .and_then(|iterator| {
            shard.kinesis.get_records_of(
                Some(&shard.stream),
                &shard.key,
                &iterator,
                1,
                None,
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
                shard.key
            );
            false
        }
    }
}

/// Whether a subscription gives its room in `read_memory` to the
/// `waiting` readers in line: only one holding room, and only once caught
/// up (its last event was empty at the tip), so no shard with records
/// waiting is held back by it and every reader gets its turn.
fn gives_way(caught_up: bool, holds_room: bool, waiting: usize) -> bool {
    caught_up && holds_room && waiting > 0
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn only_a_caught_up_subscription_holding_room_gives_way_to_waiting_readers() {
        assert!(gives_way(true, true, 1));
        assert!(!gives_way(true, true, 0), "nobody waiting");
        assert!(!gives_way(false, true, 3), "records still coming");
        assert!(
            !gives_way(true, false, 3),
            "holding nothing (read_memory unset)"
        );
    }

    #[test]
    fn open_subscriptions_hold_their_windows_within_read_memory() {
        // read_memory for two windows: a third subscription waits in line
        // until one of the first two gives its room back.
        let window = u64::from(STREAM_WINDOW);
        let memory = Arc::new(Budget::new(2 * window, u64::MAX));
        let first = memory.take_room(window, 0, || false).unwrap();
        let second = memory.take_room(window, 0, || false).unwrap();
        assert!(!memory.try_acquire(window, 0));
        std::thread::scope(|scope| {
            let third = scope.spawn(|| memory.take_room(window, 0, || false));
            while memory.waiting() == 0 {
                std::thread::yield_now();
            }
            assert!(!third.is_finished());
            drop(first);
            let third = third.join().unwrap().unwrap();
            assert_eq!(memory.used().0, 2 * window);
            drop((second, third));
        });
        assert_eq!(memory.used().0, 0);
        // An event's records are counted past the bound while handed on,
        // and later subscriptions wait for them.
        let held = memory.take_room(window, 0, || false).unwrap();
        let event = memory.force_room(2 * window);
        assert_eq!(memory.used().0, 3 * window);
        assert!(!memory.try_acquire(1, 0));
        drop((held, event));
        assert_eq!(memory.used().0, 0);
    }

    #[test]
    fn only_a_read_with_no_record_and_no_next_iterator_ends_a_fan_out_shard() {
        assert!(ends_shard(0, None));
        assert!(!ends_shard(1, None), "records after the continuation");
        assert!(!ends_shard(0, Some("AAAA")), "an open shard at its tip");
    }
}
