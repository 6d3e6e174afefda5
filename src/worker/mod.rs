//! The consumer: shard readers, the batch ticker, and the handle that stops
//! them. Leases come from the lease module; records from the wire layer.

pub(crate) mod batch;
mod budget;
mod reader;
mod startup;
mod ticker;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::aws::cloudwatch::CloudWatchClient;
use crate::aws::dynamodb::DynamoDbClient;
use crate::aws::kinesis::KinesisClient;
use crate::config::{ConsumerBuilder, InitialPosition};
use crate::error::{Error, HandlerResult, Result};
use crate::lease::{
    Checkpoint, Clock, Coordinator, CoordinatorEvent, HeldLeases, LeaseTable, LeaseTimings,
    StreamShards,
};
use crate::metrics::{Metrics, MetricsHandle, Publisher};
use crate::record::Payload;
use batch::Batch;
use budget::Budget;
use reader::{ReaderContext, ReaderPool};
use startup::until_ready;
use ticker::Ticker;

/// How long a stopping consumer waits for its last metrics to reach
/// CloudWatch.
const METRICS_SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// On top of one request's connect and read timeouts: how long a stopping
/// consumer waits for a reader to see its request through.
const READER_STOP_MARGIN: Duration = Duration::from_secs(1);

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
/// none). `run` then finishes the batch in the handler, writes checkpoints,
/// releases the leases and returns.
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
    builder: ConsumerBuilder<T>,
    app_name: String,
    stream_name: String,
    /// How Kinesis requests name the stream: its name or its ARN.
    stream: String,
    worker_id: String,
    kinesis: KinesisClient,
    dynamodb: DynamoDbClient,
    cloudwatch: CloudWatchClient,
    metrics: Metrics,
    shutdown: ShutdownHandle,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("app_name", &self.app_name)
            .field("stream_name", &self.stream_name)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Consumer<Payload> {
    /// Starts configuring a consumer.
    pub fn builder() -> ConsumerBuilder<Payload> {
        ConsumerBuilder::new()
    }
}

impl<T: Send + 'static> Consumer<T> {
    pub(crate) fn new(
        builder: ConsumerBuilder<T>,
        app_name: String,
        stream_name: String,
        stream: String,
        worker_id: String,
        clients: Clients,
    ) -> Consumer<T> {
        let Clients {
            kinesis,
            dynamodb,
            cloudwatch,
            shutdown,
        } = clients;
        let metrics = Metrics::new(
            builder.settings.metrics_level,
            &builder.settings.metrics_dimensions,
            &worker_id,
            &stream_name,
        );
        Consumer {
            builder,
            app_name,
            stream_name,
            stream,
            worker_id,
            kinesis,
            dynamodb,
            cloudwatch,
            metrics,
            shutdown,
        }
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
        &self.worker_id
    }

    /// Reads the stream and calls `handler` once per batch interval until
    /// shut down or until something fails; blocks meanwhile.
    ///
    /// An unknown stream or a refused request fails `run` at once; at
    /// startup, failures that may pass (throttling, 5xx, resets) are retried
    /// for up to a minute first.
    ///
    /// The handler is called every batch interval, with an empty batch when
    /// nothing arrived. When it returns `Ok(())`, the batch's records are
    /// checkpointed (no more often than the checkpoint interval). It may
    /// fail with any error type (`?` converts it into the boxed error of
    /// [`HandlerResult`]); when it fails or panics, nothing of that batch is
    /// checkpointed and `run` returns the error ([`Error::Handler`] or
    /// [`Error::HandlerPanicked`]), after writing earlier checkpoints and
    /// releasing its leases.
    ///
    /// Once `run` has returned, the message handler is not called again.
    /// `run` waits up to the connect timeout plus the read timeout plus 1 s
    /// for readers inside a GetRecords call; a reader still in its call
    /// then ends by itself later without calling user code.
    pub fn run(self, mut handler: impl FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        let s = &self.builder.settings;
        // A missing stream fails here, in AWS's own words.
        let described = until_ready("describing the stream", &self.shutdown.flag, || {
            self.kinesis.describe_stream_summary(&self.stream)
        })?;
        if described.is_none() {
            return Ok(());
        }
        let publisher = if s.publish_metrics {
            let namespace = s
                .metrics_namespace
                .clone()
                .unwrap_or_else(|| self.app_name.clone());
            Publisher::start(
                &self.metrics,
                self.cloudwatch.clone(),
                namespace,
                s.metrics_period,
            )?
        } else {
            None
        };
        let result = self.consume(&mut handler);
        if let Some(publisher) = publisher {
            publisher.stop(METRICS_SHUTDOWN_GRACE);
        }
        result
    }

    fn consume(&self, handler: &mut impl FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        let s = &self.builder.settings;
        let table = LeaseTable::new(self.dynamodb.clone(), &self.app_name);
        let held = Arc::new(HeldLeases::new(
            Arc::new(table),
            self.worker_id.clone(),
            s.failover_time,
            Clock::system(),
        ));
        let budget = Arc::new(Budget::new(s.buffer_bytes, s.buffer_records));
        // Chunks are whole GetRecords replies; the budget bounds their size.
        let (sender, records) = crossbeam_channel::bounded(1024);
        let (initial, start_timestamp) = match s.initial_position {
            InitialPosition::TrimHorizon => (Checkpoint::TrimHorizon, None),
            InitialPosition::Latest => (Checkpoint::Latest, None),
            InitialPosition::AtTimestamp(t) => (Checkpoint::AtTimestamp(Some(t)), Some(t)),
        };
        let readers = ReaderPool::new(ReaderContext {
            kinesis: self.kinesis.clone(),
            stream: self.stream.clone(),
            handler: self.builder.message_handler.clone(),
            sender,
            budget: budget.clone(),
            max_records: s.max_records_per_read,
            idle_time: s.idle_time_between_reads,
            retry_wait: s.retry_wait,
            start_timestamp,
            metrics: self.metrics.clone(),
            read_memory: Arc::new(Budget::new(
                s.read_memory
                    .unwrap_or((s.buffer_bytes / 8).max(8 * 1024 * 1024)),
                u64::MAX,
            )),
            pace_reads: s.pace_reads,
            stop_timeout: s.connect_timeout + s.read_timeout + READER_STOP_MARGIN,
        });
        let timings = LeaseTimings {
            failover: s.failover_time,
            renew_interval: s.failover_time / 3,
            take_interval: s.failover_time / 3,
            shard_sync_interval: s.shard_sync_interval,
            max_leases_per_worker: s.max_leases_per_worker,
        };
        log::info!(
            "worker {} starting on stream {} for application {}",
            self.worker_id,
            self.stream,
            self.app_name
        );
        let mut coordinator = Coordinator::new(
            held.clone(),
            Box::new(StreamShards {
                kinesis: self.kinesis.clone(),
                stream: self.stream.clone(),
            }),
            &self.stream_name,
            initial,
            timings,
            readers,
            self.metrics.clone(),
        );
        let (events, event_receiver) = crossbeam_channel::unbounded();
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
        let checkpoint_interval = s.checkpoint_interval.unwrap_or(s.batch_interval);
        let result = Ticker::new(
            &records,
            &held,
            &budget,
            &events,
            &self.shutdown.flag,
            s.batch_interval,
            checkpoint_interval,
        )
        .with_metrics(self.metrics.clone())
        .run(handler);
        let _ = events.send(CoordinatorEvent::Stop);
        // A reader blocked on a full channel now fails its send and exits.
        drop(records);
        if coordinator_thread.join().is_err() {
            log::error!("the lease coordinator panicked");
        }
        log::info!("worker {} stopped", self.worker_id);
        result
    }
}
