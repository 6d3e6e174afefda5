//! The ticker: every batch interval it gathers what the readers handed on,
//! calls the user's batch handler, and checkpoints what the handler accepted.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::{Error, HandlerResult, Result};
use crate::lease::{Checkpoint, CoordinatorEvent, HeldLeases};
use crate::metrics::{Metric, Metrics};
use crate::worker::batch::{Batch, ShardBatch};
use crate::worker::budget::Budget;
use crate::worker::reader::{Chunk, ReaderOutput, panic_message};

/// How often a waiting ticker looks at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(50);

/// A checkpoint accepted by the handler but not yet written.
#[derive(Debug)]
struct Pending {
    epoch: u64,
    checkpoint: Checkpoint,
}

pub(crate) struct Ticker<'a, T> {
    pub records: &'a Receiver<ReaderOutput<T>>,
    pub held: &'a HeldLeases,
    pub budget: &'a Budget,
    pub coordinator: &'a Sender<CoordinatorEvent>,
    pub shutdown: &'a AtomicBool,
    pub batch_interval: Duration,
    pub checkpoint_interval: Duration,
    pub metrics: Metrics,
    pending: HashMap<Arc<str>, Pending>,
    last_written: HashMap<Arc<str>, Instant>,
}

impl<'a, T> Ticker<'a, T> {
    pub(crate) fn new(
        records: &'a Receiver<ReaderOutput<T>>,
        held: &'a HeldLeases,
        budget: &'a Budget,
        coordinator: &'a Sender<CoordinatorEvent>,
        shutdown: &'a AtomicBool,
        batch_interval: Duration,
        checkpoint_interval: Duration,
    ) -> Self {
        Ticker {
            records,
            held,
            budget,
            coordinator,
            shutdown,
            batch_interval,
            checkpoint_interval,
            metrics: Metrics::default(),
            pending: HashMap::new(),
            last_written: HashMap::new(),
        }
    }

    /// Records batch and checkpoint metrics in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs batches until shutdown or an error; on the way out writes every
    /// checkpoint the handler earned.
    pub(crate) fn run(&mut self, handler: &mut dyn FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        let result = self.batches(handler);
        self.write_checkpoints(true);
        result
    }

    fn batches(&mut self, handler: &mut dyn FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        let mut tick = Instant::now() + self.batch_interval;
        loop {
            let Some(chunks) = self.gather_until(tick)? else {
                return Ok(());
            };
            tick += self.batch_interval;
            if tick < Instant::now() {
                // The handler took longer than an interval: do not try to catch up.
                tick = Instant::now() + self.batch_interval;
            }
            let (batch, bytes, count, shard_bytes) = self.build(chunks);
            let ends: Vec<(Arc<str>, u64, Checkpoint)> = batch
                .shards
                .iter()
                .filter_map(|s| {
                    let checkpoint = if s.shard_ended {
                        Checkpoint::ShardEnd
                    } else {
                        Checkpoint::At(s.messages.last()?.record.position.clone())
                    };
                    Some((s.shard_id.clone(), s.epoch, checkpoint))
                })
                .collect();
            let processed: Vec<(Arc<str>, usize, u64)> = if self.metrics.is_on() {
                batch
                    .shards
                    .iter()
                    .zip(shard_bytes)
                    .map(|(s, bytes)| (s.shard_id.clone(), s.messages.len(), bytes))
                    .collect()
            } else {
                Vec::new()
            };
            let batch_size = batch.len();
            let started = Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| handler(batch)));
            self.metrics.record(
                None,
                &[
                    (Metric::ProcessTaskTime, millis(started.elapsed())),
                    (Metric::BatchSize, batch_size as f64),
                ],
            );
            self.budget.release(bytes, count);
            match outcome {
                Ok(Ok(())) => {
                    for (shard_id, records, bytes) in &processed {
                        self.metrics.record(
                            Some(shard_id),
                            &[
                                (Metric::RecordsProcessed, *records as f64),
                                (Metric::DataBytesProcessed, *bytes as f64),
                            ],
                        );
                    }
                }
                Ok(Err(e)) => return Err(Error::Handler(e)),
                Err(panic) => {
                    return Err(Error::HandlerPanicked(format!(
                        "the batch handler panicked: {}",
                        panic_message(&panic)
                    )));
                }
            }
            for (shard_id, epoch, checkpoint) in ends {
                self.pending.insert(shard_id, Pending { epoch, checkpoint });
            }
            self.write_checkpoints(false);
            self.finish_handoffs();
        }
    }

    /// Collects chunks until `tick`; `None` when shutdown was asked for.
    fn gather_until(&mut self, tick: Instant) -> Result<Option<Vec<Chunk<T>>>> {
        let mut chunks = Vec::new();
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                self.drop_chunks(chunks);
                return Ok(None);
            }
            // Past the tick, still take what already waits (a slow handler
            // or checkpoint write must not leave it for a batch later).
            let now = Instant::now();
            let wait = tick.saturating_duration_since(now).min(SHUTDOWN_CHECK);
            match self.records.recv_timeout(wait) {
                Ok(ReaderOutput::Chunk(chunk)) => {
                    if self.held.is_current(&chunk.shard_id, chunk.epoch) {
                        chunks.push(chunk);
                    } else {
                        // Read under a lease we no longer hold: the next owner reads it again.
                        self.budget
                            .release(chunk.bytes, chunk.messages.len() as u64);
                    }
                }
                Ok(ReaderOutput::Failed {
                    shard_id,
                    epoch,
                    error,
                }) => {
                    if self.held.is_current(&shard_id, epoch) {
                        self.drop_chunks(chunks);
                        return Err(error);
                    }
                    // A reader of a lease given up since: its failure
                    // concerns the shard's next reader, not this consumer.
                    log::info!("ignoring the failure of a stale reader of {shard_id}: {error}");
                }
                Ok(ReaderOutput::Fatal(error)) => {
                    self.drop_chunks(chunks);
                    return Err(error);
                }
                Err(RecvTimeoutError::Timeout) if now >= tick => return Ok(Some(chunks)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Internal("every reader is gone".into()));
                }
            }
        }
    }

    fn drop_chunks(&self, chunks: Vec<Chunk<T>>) {
        for c in chunks {
            self.budget.release(c.bytes, c.messages.len() as u64);
        }
    }

    /// Groups chunks by shard, in the order they were read, leaving out
    /// shards whose lease was lost meanwhile. Also returns the bytes and
    /// records of every chunk (for the buffer budget) and the data bytes
    /// of each shard of the batch.
    fn build(&self, chunks: Vec<Chunk<T>>) -> (Batch<T>, u64, u64, Vec<u64>) {
        let mut shards: Vec<ShardBatch<T>> = Vec::new();
        let mut shard_bytes: Vec<u64> = Vec::new();
        let (mut bytes, mut count) = (0, 0);
        for chunk in chunks {
            bytes += chunk.bytes;
            count += chunk.messages.len() as u64;
            if !self.held.is_current(&chunk.shard_id, chunk.epoch) {
                continue;
            }
            match shards
                .iter_mut()
                .enumerate()
                .find(|(_, s)| s.shard_id == chunk.shard_id && s.epoch == chunk.epoch)
            {
                Some((i, s)) => {
                    shard_bytes[i] += chunk.data_bytes;
                    s.messages.extend(chunk.messages);
                    s.millis_behind_latest = chunk.millis_behind_latest.or(s.millis_behind_latest);
                    s.shard_ended |= chunk.shard_end;
                }
                None => {
                    shard_bytes.push(chunk.data_bytes);
                    shards.push(ShardBatch {
                        shard_id: chunk.shard_id,
                        messages: chunk.messages,
                        millis_behind_latest: chunk.millis_behind_latest,
                        shard_ended: chunk.shard_end,
                        epoch: chunk.epoch,
                    });
                }
            }
        }
        (
            Batch {
                time: SystemTime::now(),
                shards,
            },
            bytes,
            count,
            shard_bytes,
        )
    }

    /// Hands over the leases another worker asked for: no batch is in the
    /// handler now, so checkpoint what was delivered, then pass the lease on.
    /// The next owner starts right after it: nothing is delivered twice.
    fn finish_handoffs(&mut self) {
        for shard_id in self.held.handoffs() {
            let key: Arc<str> = shard_id.as_str().into();
            if let Some(pending) = self.pending.remove(&key) {
                if let Err(e) = self
                    .held
                    .checkpoint(&shard_id, pending.epoch, &pending.checkpoint)
                {
                    log::warn!(
                        "checkpoint of {shard_id} before handing it over failed; it stays ours for now: {e}"
                    );
                    self.pending.insert(key, pending);
                    continue;
                }
            }
            if let Err(e) = self.held.release(&shard_id) {
                log::warn!("handing lease {shard_id} over failed: {e}");
            }
        }
    }

    /// Writes the checkpoints that are due (all of them when `all`); a
    /// shard's end is written at once so its children can start.
    fn write_checkpoints(&mut self, all: bool) {
        let now = Instant::now();
        // Forget shards no longer held: over a long run, many come and go.
        let held: std::collections::HashSet<String> =
            self.held.shards().into_iter().map(|(id, _)| id).collect();
        self.last_written.retain(|id, _| held.contains(&**id));
        let due: Vec<Arc<str>> = self
            .pending
            .iter()
            .filter(|(shard_id, p)| {
                all || p.checkpoint == Checkpoint::ShardEnd
                    || self
                        .last_written
                        .get(*shard_id)
                        .is_none_or(|t| now.duration_since(*t) >= self.checkpoint_interval)
            })
            .map(|(shard_id, _)| shard_id.clone())
            .collect();
        for shard_id in due {
            let Some(pending) = self.pending.remove(&shard_id) else {
                continue;
            };
            let started = Instant::now();
            let result = self
                .held
                .checkpoint(&shard_id, pending.epoch, &pending.checkpoint);
            self.metrics.record(
                Some(&shard_id),
                &[
                    (
                        Metric::CheckpointSuccess,
                        f64::from(u8::from(matches!(result, Ok(true)))),
                    ),
                    (Metric::CheckpointTime, millis(started.elapsed())),
                ],
            );
            match result {
                Ok(true) => {
                    self.last_written.insert(shard_id.clone(), now);
                    log::debug!("checkpointed {shard_id} at {:?}", pending.checkpoint);
                    if pending.checkpoint == Checkpoint::ShardEnd {
                        let _ = self
                            .coordinator
                            .send(CoordinatorEvent::ShardFinished(shard_id.to_string()));
                    }
                }
                Ok(false) => {
                    log::info!("not checkpointing {shard_id}: its lease is no longer ours")
                }
                Err(e) => {
                    log::warn!("checkpoint of {shard_id} failed, will retry: {e}");
                    self.pending.entry(shard_id).or_insert(pending);
                }
            }
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ClientConfig;
    use crate::aws::credentials::Credentials;
    use crate::aws::dynamodb::DynamoDbClient;
    use crate::aws::test_server::FakeServer;
    use crate::lease::{Clock, LeaseTable};

    /// Held leases over a fake DynamoDB where every lease write succeeds:
    /// enough to hold leases. The server lives as long as the leases.
    fn held_leases() -> (FakeServer, HeldLeases) {
        let server = FakeServer::start(|_| {
            (
                200,
                r#"{"Attributes":{"leaseCounter":{"N":"1"}}}"#.to_owned(),
            )
        });
        let config = ClientConfig::new()
            .region("us-east-1")
            .endpoint_url(&server.url)
            .credentials(Credentials::new("AKIDTEST", "secret"));
        let table = LeaseTable::new(DynamoDbClient::new(&config).unwrap(), "app");
        let held = HeldLeases::new(
            Arc::new(table),
            "me".into(),
            Duration::from_secs(60),
            Clock::system(),
        );
        (server, held)
    }

    /// Calls `f` with a ticker over `records` (batches every 50 ms).
    fn with_ticker<R>(
        records: &Receiver<ReaderOutput<()>>,
        held: &HeldLeases,
        f: impl FnOnce(&mut Ticker<'_, ()>) -> R,
    ) -> R {
        let budget = Budget::new(1 << 20, 1000);
        let (events, _) = crossbeam_channel::unbounded();
        let shutdown = AtomicBool::new(false);
        let interval = Duration::from_millis(50);
        f(&mut Ticker::new(
            records, held, &budget, &events, &shutdown, interval, interval,
        ))
    }

    #[test]
    fn chunks_already_waiting_at_a_late_tick_make_the_batch() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0).unwrap().unwrap();
        let (sender, records) = crossbeam_channel::unbounded();
        let chunk = |n: u64| {
            ReaderOutput::<()>::Chunk(Chunk {
                shard_id: "shard-1".into(),
                epoch,
                messages: Vec::new(),
                millis_behind_latest: Some(n),
                shard_end: false,
                bytes: 0,
                data_bytes: 0,
            })
        };
        sender.send(chunk(1)).unwrap();
        sender.send(chunk(2)).unwrap();
        // The handler or a checkpoint write overran: the tick is long past.
        let late = Instant::now() - Duration::from_secs(1);
        let chunks = with_ticker(&records, &held, |t| t.gather_until(late))
            .unwrap()
            .unwrap();
        assert_eq!(chunks.len(), 2, "what waited is in this batch");
    }

    #[test]
    fn only_a_current_readers_failure_stops_the_consumer() {
        let (_server, held) = held_leases();
        let epoch = held.take("shard-1", 0).unwrap().unwrap();
        let (sender, records) = crossbeam_channel::unbounded();
        let failed = |shard: &str, epoch, what: &str| ReaderOutput::<()>::Failed {
            shard_id: shard.into(),
            epoch,
            error: Error::Internal(what.into()),
        };
        sender
            .send(failed("shard-1", epoch + 1, "stale epoch"))
            .unwrap();
        sender.send(failed("shard-2", epoch, "not held")).unwrap();
        sender.send(failed("shard-1", epoch, "current")).unwrap();
        let result = with_ticker(&records, &held, |t| t.run(&mut |_: Batch<()>| Ok(())));
        assert!(
            matches!(&result, Err(Error::Internal(m)) if m == "current"),
            "{result:?}"
        );
    }
}
