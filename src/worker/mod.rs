//! The consumer: shard readers, the batch ticker, and the handle that stops
//! them. Leases come from the lease module; records from the wire layer.

pub(crate) mod batch;
mod bisect;
mod budget;
pub(crate) mod checkpointer;
pub(crate) mod dead_letter;
mod load;
pub(crate) mod processing;
pub(crate) mod processor;
mod reader;
#[cfg(test)]
mod simulation;
mod startup;
mod stream_consumers;
#[cfg(test)]
mod test_support;
mod ticker;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::aws::cloudwatch::CloudWatchClient;
use crate::aws::dynamodb::DynamoDbClient;
use crate::aws::kinesis::KinesisClient;
use crossbeam_channel::{Receiver, Sender};

use crate::aws::fan_out::SharedConsumer;
use crate::error::{Error, HandlerResult, Result};
use crate::lease::{
    Checkpoint, Clock, Coordinator, CoordinatorEvent, HeldLeases, LeaseTable, LeaseTimings,
    LeasedStream, MultiStreamShards, ShardSource, StreamShards, StreamsHandle,
};
use crate::metrics::{Metrics, MetricsHandle, Publisher};
use crate::metrics::{MetricsDimension, MetricsLevel};
use crate::record::Record;
use batch::{Batch, SpareBuffers};
use budget::Budget;
use checkpointer::Checkpointer;
use dead_letter::DeadLetterHandler;
use load::LoadMeter;
use processing::{Checkpointing, Delivery, ErrorPolicy};
use processor::ShardProcessor;
use reader::{ReaderContext, ReaderOutput, ReaderPool};
use startup::until_ready;
use ticker::Ticker;

/// How long a stopping consumer waits for its last metrics to reach
/// CloudWatch.
const METRICS_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How long startup waits for a newly registered stream consumer to
/// become ACTIVE, per attempt (startup retries for up to a minute).
const CONSUMER_ACTIVE_WAIT: Duration = Duration::from_secs(30);

/// On top of one request's connect and read timeouts: how long a stopping
/// consumer waits for a reader to see its request through.
const READER_STOP_MARGIN: Duration = Duration::from_secs(1);

/// Turns a record into the handler's value; the default handler returns a
/// `Payload` that shares the record's buffer, so it copies nothing.
pub(crate) type MessageHandler<T> = Arc<dyn Fn(&Record) -> T + Send + Sync>;

/// A built consumer's settings, every default resolved once by
/// `ConsumerBuilder::build` (see the builder for what each means).
pub(crate) struct ConsumerSettings {
    pub app_name: String,
    pub stream_name: String,
    /// How Kinesis requests name the stream: its name or its ARN.
    pub stream: String,
    /// A multi-stream consumer's streams (then `stream_name` and `stream`
    /// are empty); empty for a single-stream one.
    pub streams: Vec<crate::stream::StreamTarget>,
    /// The consumer's initial position, for streams added while running.
    pub initial_position: crate::InitialPosition,
    /// How long a former stream's rows are kept.
    pub former_stream_retention: Duration,
    /// How the workers share the leases.
    pub coordination: crate::lease::Coordination,
    /// How the leader balances leases.
    pub balance: crate::lease::FleetBalance,
    pub worker_id: String,
    /// Where a new lease starts, and the initial position's timestamp.
    pub initial: Checkpoint,
    pub start_timestamp: Option<std::time::SystemTime>,
    pub batch_interval: Duration,
    pub checkpoint_interval: Duration,
    pub metrics_level: MetricsLevel,
    pub metrics_dimensions: Vec<MetricsDimension>,
    pub metrics_namespace: String,
    pub metrics_period: Duration,
    pub publish_metrics: bool,
    pub buffer_bytes: u64,
    pub buffer_records: u64,
    pub read_memory: u64,
    /// `read_memory` was set: fan-out subscriptions reserve their stream
    /// window from it (unset, they are not held back).
    pub read_memory_set: bool,
    pub retry_wait: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_records_per_read: u32,
    pub idle_time_between_reads: Duration,
    pub failover_time: Duration,
    pub shard_sync_interval: Duration,
    pub max_leases_per_worker: usize,
    pub max_unavailable: Option<Duration>,
    pub pace_reads: bool,
    pub checkpointing: Checkpointing,
    pub error_policy: ErrorPolicy,
    /// Where rejected records go (see `ErrorPolicy::RetryThenDeadLetter`).
    pub dead_letter: Option<DeadLetterHandler>,
    /// Enhanced fan-out's consumer name; `None`: polling.
    pub fan_out_consumer: Option<String>,
    /// The lease table's name and how to create it.
    pub lease_table: crate::lease::TableOptions,
}

/// What reading needs beyond the settings, found at startup.
struct Prepared {
    /// Enhanced fan-out's registered consumer; `None`: polling.
    fan_out: Option<Arc<SharedConsumer>>,
    /// A multi-stream consumer's registered consumers by stream
    /// identifier; empty when polling.
    fan_outs: HashMap<String, Arc<SharedConsumer>>,
    /// A multi-stream consumer's streams; empty for a single-stream one.
    streams: Vec<LeasedStream>,
}

/// The service clients a built consumer uses, and the shutdown flag its
/// Kinesis client watches.
pub(crate) struct Clients {
    pub kinesis: KinesisClient,
    pub dynamodb: DynamoDbClient,
    pub cloudwatch: CloudWatchClient,
    pub shutdown: ShutdownHandle,
}

/// Stops a running [`Consumer`] from any thread.
///
/// [`shutdown`](Self::shutdown) only sets an atomic flag, so it is safe to
/// call from a signal handler the application installs (the library installs
/// none). `run` then finishes the batch in the handler, hands on a last
/// batch without records, writes checkpoints, releases the leases and
/// returns (`run_processors`: each processor's `shutdown_requested`).
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Asks the consumer to stop.
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// True once a shutdown was asked for.
    pub fn is_shutdown(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }
}

/// A Kinesis consumer: reads a stream's shards on its own threads and hands
/// what arrived to a batch handler once per batch interval, checkpointing in
/// DynamoDB what the handler accepted.
///
/// Build one with [`Consumer::builder`], then call [`run`](Self::run).
pub struct Consumer<T> {
    settings: ConsumerSettings,
    message_handler: MessageHandler<T>,
    kinesis: KinesisClient,
    cloudwatch: CloudWatchClient,
    metrics: Metrics,
    shutdown: ShutdownHandle,
    held: Arc<HeldLeases>,
    checkpointer: Checkpointer,
    /// Adds and removes streams of a multi-stream consumer.
    streams: StreamsHandle,
    /// What the ticker and the checkpointer tell the lease coordinator.
    events: (Sender<CoordinatorEvent>, Receiver<CoordinatorEvent>),
    /// Each held lease's load, measured by the readers and the handler's
    /// callers, shown by the metrics.
    load: Arc<LoadMeter>,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("app_name", &self.settings.app_name)
            .field("stream_name", &self.settings.stream_name)
            .field("worker_id", &self.settings.worker_id)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Consumer<T> {
    pub(crate) fn new(
        settings: ConsumerSettings,
        message_handler: MessageHandler<T>,
        clients: Clients,
    ) -> Consumer<T> {
        let Clients {
            kinesis,
            dynamodb,
            cloudwatch,
            shutdown,
        } = clients;
        let metrics = Metrics::new(
            settings.metrics_level,
            &settings.metrics_dimensions,
            &settings.worker_id,
            &settings.stream_name,
        );
        let table = LeaseTable::with_options(dynamodb, &settings.lease_table);
        let held = Arc::new(HeldLeases::new(
            Arc::new(table),
            settings.worker_id.clone(),
            settings.failover_time,
            Clock::system(),
        ));
        metrics.live().set_names(
            &settings.app_name,
            &settings.stream_name,
            &settings.worker_id,
        );
        metrics.live().set_leases(held.clone());
        let load = Arc::new(LoadMeter::default());
        metrics.live().set_loads(load.clone());
        held.publish_loads_from(load.clone());
        let events = crossbeam_channel::unbounded();
        let checkpointer = Checkpointer::new(held.clone(), events.0.clone(), metrics.clone());
        let streams = StreamsHandle::new(kinesis.clone(), settings.initial_position);
        Consumer {
            streams,
            settings,
            message_handler,
            kinesis,
            cloudwatch,
            metrics,
            shutdown,
            held,
            checkpointer,
            events,
            load,
        }
    }

    /// Checkpoints the shards this consumer holds, from any thread (see
    /// [`Checkpointer`]); the only way anything is checkpointed with
    /// [`Checkpointing::Manual`]. Get it before [`run`](Self::run).
    pub fn checkpointer(&self) -> Checkpointer {
        self.checkpointer.clone()
    }

    /// Adds and removes streams while a multi-stream consumer
    /// ([`streams`](crate::ConsumerBuilder::streams)) runs, from any
    /// thread; get it before [`run`](Self::run). A single-stream
    /// consumer ignores its changes.
    pub fn streams_handle(&self) -> StreamsHandle {
        self.streams.clone()
    }

    /// A handle that stops [`run`](Self::run) from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The in-process view of this consumer's metrics (empty at
    /// [`MetricsLevel::None`](crate::MetricsLevel::None)); get it before
    /// [`run`](Self::run), read it from any thread.
    pub fn metrics(&self) -> MetricsHandle {
        MetricsHandle {
            metrics: self.metrics.clone(),
        }
    }

    /// This worker's identifier in the lease table.
    pub fn worker_id(&self) -> &str {
        &self.settings.worker_id
    }

    /// Reads the stream and calls `handler` once per batch interval until
    /// shut down or until something fails; blocks meanwhile.
    ///
    /// An unknown stream or a refused request fails `run` at once; at
    /// startup, failures that may pass (throttling, 5xx, resets) are retried
    /// for up to a minute first.
    ///
    /// The handler is called every batch interval, with an empty batch when
    /// nothing arrived; [`Batch::events`] says which shards were gained,
    /// lost, ended or are about to be released. When it returns `Ok(())`,
    /// the batch's records are checkpointed (no more often than the
    /// checkpoint interval) unless checkpoints are
    /// [manual](Checkpointing::Manual). It may fail with any error type
    /// (`?` converts it into the boxed error of [`HandlerResult`]); when it
    /// fails or panics, nothing of that batch is checkpointed and, under the
    /// default [`ErrorPolicy::Stop`], `run` returns the error
    /// ([`Error::Handler`] or [`Error::HandlerPanicked`]), after writing
    /// earlier checkpoints and releasing its leases. A shutdown asked for
    /// while a failed batch is being retried ends the retries: that batch is
    /// not checkpointed, the last batch is still handed on, and `run`
    /// returns `Ok` (unless a last checkpoint could not be written).
    ///
    /// Once shutdown is asked for, the handler gets one last batch without
    /// records ([`Batch::is_last`]) whose events give each held shard its
    /// last chance to be checkpointed; then `run` writes the checkpoints
    /// due, releases the leases and returns. A last checkpoint whose write
    /// still fails after being tried again for up to the failover time makes
    /// `run` return [`Error::CheckpointsNotSaved`] naming its shards (their
    /// leases are left to expire, not released). Once `run` has returned, the
    /// message handler is not called again. `run` waits up to the connect
    /// timeout plus the read timeout plus 1 s for readers inside a
    /// GetRecords call; a reader still in its call then ends by itself
    /// later without calling user code.
    pub fn run(self, mut handler: impl FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        self.serve(None, |records, delivery| {
            Ticker::new(records, delivery).run(&mut handler)
        })
    }

    /// Reads the stream with one [`ShardProcessor`] per shard held, each
    /// on its own thread, made by `factory` when the shard is gained; blocks
    /// until shut down or until something fails. The KCL's processing
    /// model: see [`ShardProcessor`] for what is called when.
    ///
    /// Records reach each processor in sequence order, through a queue of
    /// a few reads per shard: a slow processor holds back only its own
    /// shard's reader. A shard's reads hold at most its even share of the
    /// buffer (`buffer_bytes` and `buffer_records` divided by the shards
    /// held), or one read, so a slow shard never holds the room the others
    /// need. Checkpoints, the error policy and shutdown work as
    /// for [`run`](Self::run), per shard:
    /// [`ErrorPolicy::RetryThenReleaseShard`] gives up a failing shard alone.
    pub fn run_processors<P, F>(self, factory: F) -> Result<()>
    where
        P: ShardProcessor<T> + 'static,
        F: Fn(&str) -> P + Send + Sync + 'static,
    {
        self.serve(Some(processor::SHARD_QUEUE), move |records, delivery| {
            processor::dispatch(records, delivery, factory)
        })
    }

    /// Describes the streams (a missing stream fails here, in AWS's own
    /// words) and registers the enhanced fan-out consumers; `None` when
    /// shut down meanwhile.
    fn prepare(&self) -> Result<Option<Prepared>> {
        let s = &self.settings;
        let flag = &self.shutdown.flag;
        if !s.streams.is_empty() {
            let Some(described) =
                until_ready("describing the streams", flag, || self.describe_streams())?
            else {
                return Ok(None);
            };
            let mut fan_outs = HashMap::new();
            if let Some(name) = &s.fan_out_consumer {
                for (stream, arn) in &described {
                    let Some(consumer) = self.register_fan_out(arn, name)? else {
                        return Ok(None);
                    };
                    fan_outs.insert(stream.id.to_string(), consumer);
                }
            }
            return Ok(Some(Prepared {
                fan_out: None,
                fan_outs,
                streams: described.into_iter().map(|(stream, _)| stream).collect(),
            }));
        }
        // A missing stream fails here, in AWS's own words.
        let described = until_ready("describing the stream", flag, || {
            self.kinesis.describe_stream_summary(&s.stream)
        })?;
        let Some(described) = described else {
            return Ok(None);
        };
        let fan_out = match &s.fan_out_consumer {
            Some(name) => match self.register_fan_out(&described.stream_arn, name)? {
                Some(consumer) => Some(consumer),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(Prepared {
            fan_out,
            fan_outs: HashMap::new(),
            streams: Vec::new(),
        }))
    }

    /// Enhanced fan-out: the application's registered consumer of the
    /// stream, made (or found) once; every worker of the application
    /// shares it. `None` when shut down meanwhile.
    fn register_fan_out(
        &self,
        stream_arn: &str,
        name: &str,
    ) -> Result<Option<Arc<SharedConsumer>>> {
        let flag = &self.shutdown.flag;
        let consumer = until_ready("registering the stream consumer", flag, || {
            self.kinesis
                .ensure_stream_consumer(stream_arn, name, CONSUMER_ACTIVE_WAIT)
        })?;
        let Some(consumer) = consumer else {
            return Ok(None);
        };
        // A certificate not trusted, or an endpoint that does not speak
        // HTTP/2, fails startup here (naming the endpoint and the reason)
        // rather than as readers retrying for ever.
        let checked = until_ready("connecting to the enhanced fan-out endpoint", flag, || {
            self.kinesis.check_fan_out_endpoint()
        })?;
        if checked.is_none() {
            return Ok(None);
        }
        log::info!(
            "reading {stream_arn} through enhanced fan-out as {}",
            consumer.consumer_arn
        );
        Ok(Some(Arc::new(SharedConsumer::new(
            stream_arn,
            name,
            &consumer.consumer_arn,
            CONSUMER_ACTIVE_WAIT,
        ))))
    }

    /// Each stream of a multi-stream consumer with its identity, and its ARN.
    fn describe_streams(&self) -> Result<Vec<(LeasedStream, String)>> {
        self.settings
            .streams
            .iter()
            .map(|target| {
                let described = self.kinesis.describe_stream_summary(&target.request)?;
                let stream = LeasedStream {
                    id: described.stream_identifier()?,
                    request: target.request.clone(),
                    initial: target.initial.clone(),
                };
                Ok((stream, described.stream_arn))
            })
            .collect()
    }

    /// Starts metrics publishing, the lease coordinator and the readers,
    /// and hands what they read to `deliver` until it returns.
    fn serve(
        self,
        shard_queue: Option<usize>,
        deliver: impl FnOnce(&Receiver<ReaderOutput<T>>, Delivery<T>) -> Result<()>,
    ) -> Result<()> {
        let s = &self.settings;
        let Some(prepared) = self.prepare()? else {
            return Ok(());
        };
        let publisher = if s.publish_metrics {
            Publisher::start(
                &self.metrics,
                self.cloudwatch.clone(),
                s.metrics_namespace.clone(),
                s.metrics_period,
            )?
        } else {
            None
        };
        self.metrics.live().set_running(true);
        let result = self.consume(shard_queue, prepared, deliver);
        self.metrics.live().set_running(false);
        if let Some(publisher) = publisher {
            publisher.stop(METRICS_SHUTDOWN_GRACE);
        }
        result
    }

    fn consume(
        &self,
        shard_queue: Option<usize>,
        prepared: Prepared,
        deliver: impl FnOnce(&Receiver<ReaderOutput<T>>, Delivery<T>) -> Result<()>,
    ) -> Result<()> {
        let s = &self.settings;
        let Prepared {
            fan_out,
            fan_outs,
            streams,
        } = prepared;
        let multi = (!streams.is_empty())
            .then(|| MultiStreamShards::new(self.kinesis.clone(), streams.clone(), &self.streams));
        let held = self.held.clone();
        let budget = Arc::new(Budget::new(s.buffer_bytes, s.buffer_records));
        // Chunks are whole GetRecords replies; the budget bounds their size.
        let (sender, records) = crossbeam_channel::bounded(1024);
        // Spares of up to a sixteenth of the buffer (4 MiB by default):
        // memory kept besides what the buffer bounds.
        let spare_buffers = SpareBuffers::new((s.buffer_bytes / 16) as usize);
        let readers = ReaderPool::new(ReaderContext {
            kinesis: self.kinesis.clone(),
            stream: s.stream.clone(),
            streams: multi
                .as_ref()
                .map(MultiStreamShards::requests)
                .unwrap_or_default(),
            handler: self.message_handler.clone(),
            spare_buffers: spare_buffers.clone(),
            sender,
            shard_queue,
            budget: budget.clone(),
            max_records: s.max_records_per_read,
            idle_time: s.idle_time_between_reads,
            retry_wait: s.retry_wait,
            start_timestamp: s.start_timestamp,
            metrics: self.metrics.clone(),
            load: self.load.clone(),
            read_memory: Arc::new(Budget::new(s.read_memory, u64::MAX)),
            subscriptions_reserve: s.read_memory_set,
            pace_reads: s.pace_reads,
            fan_out,
            fan_outs: stream_consumers::StreamConsumers::new(
                s.fan_out_consumer.clone(),
                fan_outs,
                CONSUMER_ACTIVE_WAIT,
            ),
            readers: std::sync::atomic::AtomicUsize::new(0),
            stop_timeout: s.connect_timeout + s.read_timeout + READER_STOP_MARGIN,
        });
        let timings = LeaseTimings {
            failover: s.failover_time,
            heartbeat_interval: s.failover_time / 3,
            shard_sync_interval: s.shard_sync_interval,
            max_leases_per_worker: s.max_leases_per_worker,
            max_unavailable: s.max_unavailable,
            former_stream_retention: s.former_stream_retention,
            coordination: s.coordination,
            balance: s.balance,
        };
        let names: Vec<String> = streams.iter().map(|l| l.id.to_string()).collect();
        let described = if streams.is_empty() {
            s.stream.clone()
        } else {
            names.join(", ")
        };
        log::info!(
            "worker {} starting on stream {described} for application {}",
            s.worker_id,
            s.app_name
        );
        let shards: Arc<dyn ShardSource> = match multi {
            Some(multi) => Arc::new(multi),
            None => Arc::new(StreamShards {
                kinesis: self.kinesis.clone(),
                stream: s.stream.clone(),
            }),
        };
        let mut coordinator = Coordinator::new(
            held.clone(),
            shards,
            &described,
            s.initial.clone(),
            timings,
            readers,
            self.metrics.clone(),
        );
        let (events, event_receiver) = self.events.clone();
        let started = until_ready(
            "starting the lease coordinator",
            &self.shutdown.flag,
            || coordinator.start(),
        );
        if !matches!(started, Ok(Some(()))) {
            // Failed, or shut down while starting. Nothing will drain the
            // readers' channel: close it so that no reader waits on it,
            // then stop any reader the first take started (bounded) and
            // release its lease.
            drop(records);
            let _ = events.send(CoordinatorEvent::Stop);
            coordinator.run(event_receiver);
            return started.map(|_| ());
        }
        let coordinator_thread = std::thread::Builder::new()
            .name("kinesis-lease-coordinator".into())
            .spawn(move || coordinator.run(event_receiver))
            .map_err(|e| {
                Error::Internal(format!("cannot start the lease coordinator thread: {e}"))
            })?;
        let delivery = Delivery {
            held,
            budget,
            coordinator: events.clone(),
            shutdown: self.shutdown.flag(),
            checkpointer: self.checkpointer.clone(),
            metrics: self.metrics.clone(),
            load: self.load.clone(),
            message_handler: self.message_handler.clone(),
            spare_buffers,
            batch_interval: s.batch_interval,
            checkpoint_interval: s.checkpoint_interval,
            checkpointing: s.checkpointing,
            error_policy: s.error_policy,
            dead_letter: s.dead_letter.clone(),
            last_checkpoint_time: s.failover_time,
        };
        let result = deliver(&records, delivery);
        let _ = events.send(CoordinatorEvent::Stop);
        // A reader blocked on a full channel now fails its send and exits.
        drop(records);
        if coordinator_thread.join().is_err() {
            log::error!("the lease coordinator panicked");
        }
        log::info!("worker {} stopped", s.worker_id);
        result
    }
}
