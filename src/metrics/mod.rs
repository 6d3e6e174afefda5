//! Metrics: what the consumer measures, kept in-process and published to
//! CloudWatch, at the KCL's levels and with the dimensions the user chose.
//!
//! Three parts, one job each:
//!
//! - recording ([`Metrics`], crate-private): the readers, the ticker and the
//!   lease coordinator record a few values per GetRecords call, per batch or
//!   per lease round (never per record) into a shared map of series, one
//!   short lock per call; with [`MetricsLevel::None`] a recording call only
//!   updates the live figures (another short lock);
//! - aggregation: each series keeps a statistic set (sample count, sum,
//!   minimum, maximum) for the current period and one since the start,
//!   with its latest sample and, for durations, histogram buckets;
//! - publishing (its own threads): once per period the period's statistic
//!   sets go into a bounded queue, and a sender thread sends them with
//!   PutMetricData in requests within the API's limits. A full queue or a
//!   failed request drops data (counted in [`PublishStats`] and logged);
//!   nothing ever waits on CloudWatch except the publisher's own thread.
//!
//! The in-process view is a [`MetricsHandle`] from
//! [`Consumer::metrics`](crate::Consumer::metrics): cumulative statistics of
//! every series, for an exporter of your own (logs, say); the consumer's
//! live state (`live`: per-shard gauges of the leases held, the lease table
//! as last read, recent errors, health); the Prometheus text format of both
//! (`prometheus`), a status page (`status_page`), and a small HTTP endpoint
//! serving them (`endpoint`).

mod aggregate;
mod endpoint;
mod live;
mod prometheus;
mod publisher;
mod recorder;
mod status_page;

pub use aggregate::Statistics;
pub use endpoint::MetricsServer;
pub use live::{ConsumerStatus, LeaseLoad, RecentError, ShardStatus};
pub(crate) use live::{LeaseRow, LeaseView, LoadView};
pub(crate) use publisher::Publisher;
pub(crate) use recorder::Metrics;

/// How much the consumer reports to CloudWatch (as in the KCL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsLevel {
    /// Nothing.
    None,
    /// Totals per operation, without per-shard detail.
    Summary,
    /// Everything, per shard where it applies.
    Detailed,
}

/// A dimension CloudWatch metrics are broken down by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricsDimension {
    /// The operation, such as ProcessTask or RenewLease.
    Operation,
    /// The shard id.
    ShardId,
    /// The worker identifier.
    WorkerIdentifier,
    /// The stream name.
    StreamName,
}

/// A metric the consumer records, with the KCL's name where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Metric {
    /// Records handed to the batch handler that it accepted, per shard.
    RecordsProcessed,
    /// Bytes (data and partition keys, as read) of those records.
    DataBytesProcessed,
    /// How far behind the tip of the shard each read was.
    MillisBehindLatest,
    /// How long the batch handler took.
    ProcessTaskTime,
    /// Records per batch.
    BatchSize,
    /// 1 per successful GetRecords call, 0 per failed one.
    GetRecordsSuccess,
    /// How long each GetRecords call took.
    GetRecordsTime,
    /// 1 per throttled GetRecords call.
    GetRecordsThrottled,
    /// 1 per expired shard iterator.
    ExpiredIterators,
    /// 1 per SubscribeToShard call accepted, 0 per one refused or failed
    /// (enhanced fan-out).
    SubscribeToShardSuccess,
    /// How long each SubscribeToShard call took to be accepted.
    SubscribeToShardTime,
    /// 1 per subscription ended by an error after it was accepted: an
    /// exception event, a reset, GOAWAY, silence, a garbled event
    /// (enhanced fan-out; the reader subscribes again or, for the errors
    /// that cannot heal, stops).
    SubscribeToShardErrors,
    /// User records taken out of KPL aggregates.
    RecordsDeaggregated,
    /// Records that looked like KPL aggregates but were not valid and were
    /// delivered whole.
    AggregatesPassedThrough,
    /// 1 per checkpoint written, 0 per checkpoint failed or refused.
    CheckpointSuccess,
    /// How long each checkpoint write took.
    CheckpointTime,
    /// Leases held, sampled at each renewal round.
    LeasesHeld,
    /// Leases lost, per renewal round.
    LeasesLost,
    /// Unowned or expired leases taken, per take round.
    LeasesTaken,
    /// Leases stolen from busier workers, per take round.
    LeasesStolen,
    /// Workers seen in the lease table (this one included), per take round.
    Workers,
    /// Balance moves (asks for a lease to change workers) the leader
    /// planned, per round of a leader-run fleet.
    BalanceMoves,
    /// Held shards waiting for their parents to finish, per take round.
    ShardsBlockedOnParent,
    /// 1 per warning (every minute) about a shard read to its end whose end
    /// the application has not checkpointed (manual checkpoints): its
    /// children wait.
    ShardEndsNotCheckpointed,
    /// 1 per record passed to the dead-letter handler, which returned `Ok`.
    RecordsDeadLettered,
    /// 1 per retry of a handler call (batch handler, shard processor,
    /// a record being isolated).
    HandlerRetries,
}

impl Metric {
    /// The metric's name in CloudWatch.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Metric::RecordsProcessed => "RecordsProcessed",
            Metric::DataBytesProcessed => "DataBytesProcessed",
            Metric::MillisBehindLatest => "MillisBehindLatest",
            Metric::ProcessTaskTime => "ProcessTask.Time",
            Metric::BatchSize => "BatchSize",
            Metric::GetRecordsSuccess => "GetRecords.Success",
            Metric::GetRecordsTime => "GetRecords.Time",
            Metric::GetRecordsThrottled => "GetRecords.Throttled",
            Metric::ExpiredIterators => "ExpiredIterators",
            Metric::SubscribeToShardSuccess => "SubscribeToShard.Success",
            Metric::SubscribeToShardTime => "SubscribeToShard.Time",
            Metric::SubscribeToShardErrors => "SubscribeToShard.Errors",
            Metric::RecordsDeaggregated => "RecordsDeaggregated",
            Metric::AggregatesPassedThrough => "AggregatesPassedThrough",
            Metric::CheckpointSuccess => "Checkpoint.Success",
            Metric::CheckpointTime => "Checkpoint.Time",
            Metric::LeasesHeld => "LeasesHeld",
            Metric::LeasesLost => "LeasesLost",
            Metric::LeasesTaken => "LeasesTaken",
            Metric::LeasesStolen => "LeasesStolen",
            Metric::Workers => "Workers",
            Metric::BalanceMoves => "BalanceMoves",
            Metric::ShardsBlockedOnParent => "ShardsBlockedOnParent",
            Metric::ShardEndsNotCheckpointed => "ShardEndsNotCheckpointed",
            Metric::RecordsDeadLettered => "RecordsDeadLettered",
            Metric::HandlerRetries => "HandlerRetries",
        }
    }

    /// The value of the `Operation` dimension.
    pub(crate) fn operation(self) -> &'static str {
        use Metric::*;
        match self {
            RecordsProcessed | DataBytesProcessed | MillisBehindLatest | ProcessTaskTime
            | BatchSize | RecordsDeadLettered | HandlerRetries => "ProcessTask",
            GetRecordsSuccess
            | GetRecordsTime
            | GetRecordsThrottled
            | ExpiredIterators
            | RecordsDeaggregated
            | AggregatesPassedThrough => "GetRecords",
            SubscribeToShardSuccess | SubscribeToShardTime | SubscribeToShardErrors => {
                "SubscribeToShard"
            }
            CheckpointSuccess | CheckpointTime | ShardEndsNotCheckpointed => "Checkpoint",
            LeasesHeld | LeasesLost => "RenewAllLeases",
            LeasesTaken | LeasesStolen | Workers | ShardsBlockedOnParent | BalanceMoves => {
                "TakeLeases"
            }
        }
    }

    pub(crate) fn unit(self) -> MetricUnit {
        use Metric::*;
        match self {
            DataBytesProcessed => MetricUnit::Bytes,
            MillisBehindLatest | ProcessTaskTime | GetRecordsTime | SubscribeToShardTime
            | CheckpointTime => MetricUnit::Milliseconds,
            _ => MetricUnit::Count,
        }
    }

    /// True for the durations (counted in histogram buckets too).
    pub(crate) fn is_duration(self) -> bool {
        use Metric::*;
        matches!(
            self,
            ProcessTaskTime | GetRecordsTime | SubscribeToShardTime | CheckpointTime
        )
    }

    /// True for metrics recorded per shard (they get the `ShardId`
    /// dimension at the detailed level).
    pub(crate) fn per_shard(self) -> bool {
        use Metric::*;
        !matches!(
            self,
            ProcessTaskTime
                | BatchSize
                | HandlerRetries
                | LeasesHeld
                | LeasesLost
                | LeasesTaken
                | LeasesStolen
                | Workers
                | BalanceMoves
                | ShardsBlockedOnParent
        )
    }

    /// The lowest level that publishes the metric.
    pub(crate) fn level(self) -> MetricsLevel {
        use Metric::*;
        match self {
            GetRecordsTime
            | SubscribeToShardTime
            | RecordsDeaggregated
            | CheckpointTime
            | ShardsBlockedOnParent => MetricsLevel::Detailed,
            _ => MetricsLevel::Summary,
        }
    }
}

/// The unit of a metric, as CloudWatch names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetricUnit {
    /// A number of things.
    Count,
    /// A duration in milliseconds.
    Milliseconds,
    /// A number of bytes.
    Bytes,
}

impl MetricUnit {
    /// CloudWatch's name of the unit: `Count`, `Milliseconds` or `Bytes`.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricUnit::Count => "Count",
            MetricUnit::Milliseconds => "Milliseconds",
            MetricUnit::Bytes => "Bytes",
        }
    }
}

/// One series of the in-process view: a metric with its dimensions and its
/// statistics since the consumer was built.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MetricSample {
    /// The metric's name, such as `RecordsProcessed` or `GetRecords.Time`.
    pub name: &'static str,
    /// The dimensions (`Operation`, `ShardId`, `WorkerIdentifier`,
    /// `StreamName`) as published to CloudWatch: those chosen with
    /// [`metrics_dimensions`](crate::ConsumerBuilder::metrics_dimensions)
    /// that apply to the metric at the level set.
    pub dimensions: Vec<(&'static str, String)>,
    /// The unit.
    pub unit: MetricUnit,
    /// Every sample since the start, summed up.
    pub statistics: Statistics,
}

impl MetricSample {
    /// The value of a dimension, if the sample has it.
    pub fn dimension(&self, name: &str) -> Option<&str> {
        self.dimensions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How CloudWatch publishing went, since the consumer was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishStats {
    /// PutMetricData requests that succeeded.
    pub requests: u64,
    /// PutMetricData requests that failed (after their retries).
    pub failed_requests: u64,
    /// Metric data (statistic sets) CloudWatch accepted.
    pub datums_sent: u64,
    /// Metric data dropped: their request failed, the queue to the
    /// publisher was full, or they were still unsent at shutdown.
    pub datums_dropped: u64,
}

/// The in-process view of a consumer's metrics; get one with
/// [`Consumer::metrics`](crate::Consumer::metrics) before calling `run`.
///
/// Cheap to clone and safe to use from any thread, during and after `run`.
/// It sees what CloudWatch would be sent: the series of the configured
/// [`MetricsLevel`] and dimensions, whether or not publishing to CloudWatch
/// is on. With [`MetricsLevel::None`] nothing is recorded and
/// [`snapshot`](Self::snapshot) is empty.
///
/// ```no_run
/// # fn main() -> Result<(), kinesis_consumer::Error> {
/// use kinesis_consumer::{Consumer, MetricsLevel};
///
/// let consumer = Consumer::builder()
///     .app_name("word-count")
///     .stream_name("words")
///     .metrics_level(MetricsLevel::Summary)
///     .publish_metrics(false) // only the in-process view
///     .build()?;
/// let metrics = consumer.metrics();
/// std::thread::spawn(move || loop {
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     for s in metrics.snapshot() {
///         println!("{} {:?}: sum {} ({} samples)", s.name, s.dimensions,
///             s.statistics.sum, s.statistics.sample_count);
///     }
/// });
/// consumer.run(|_batch| Ok(()))
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MetricsHandle {
    pub(crate) metrics: Metrics,
}

impl MetricsHandle {
    /// Every series recorded so far with its cumulative statistics, sorted
    /// by metric and shard. Counters are sums (`RecordsProcessed`: the sum
    /// is the number of records); times and gauges are best read as
    /// average, minimum and maximum.
    pub fn snapshot(&self) -> Vec<MetricSample> {
        self.metrics.snapshot()
    }

    /// How CloudWatch publishing went so far.
    pub fn publish_stats(&self) -> PublishStats {
        self.metrics.publish_stats()
    }

    /// The level metrics are recorded at.
    pub fn level(&self) -> MetricsLevel {
        self.metrics.level()
    }

    /// The dimensions metrics are broken down by.
    pub fn dimensions(&self) -> Vec<MetricsDimension> {
        self.metrics.dimensions()
    }

    /// The consumer as it is now: its leases (with lag, owner and
    /// checkpoint per shard), health and recent errors. Kept at every
    /// [`MetricsLevel`], `None` included.
    pub fn status(&self) -> ConsumerStatus {
        self.metrics.live().status()
    }

    /// Every metric in the Prometheus text exposition format (0.0.4):
    /// the recorded series (those of the configured level; at
    /// [`MetricsLevel::None`] none) and the per-shard gauges of the leases
    /// held now. See `docs/observability.md` for the names.
    pub fn prometheus(&self) -> String {
        let status = self.status();
        prometheus::render(&self.metrics.totals(), &status)
    }

    /// Serves `/metrics` (Prometheus), `/status` (an HTML page),
    /// `/status.json` and `/healthz` on `addr`, from a thread of its own,
    /// until the returned server is dropped. A bare port (`"9464"`) binds
    /// 127.0.0.1; give an address (`"0.0.0.0:9464"`) to listen elsewhere.
    /// `/healthz` answers 200 while the consumer runs and its heartbeat in
    /// the lease table is current, 503 otherwise.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), kinesis_consumer::Error> {
    /// let consumer = kinesis_consumer::Consumer::builder()
    ///     .app_name("word-count")
    ///     .stream_name("words")
    ///     .metrics_level(kinesis_consumer::MetricsLevel::Detailed)
    ///     .publish_metrics(false)
    ///     .build()?;
    /// let _endpoint = consumer.metrics().serve("9464")?;
    /// consumer.run(|_batch| Ok(()))
    /// # }
    /// ```
    pub fn serve(&self, addr: &str) -> crate::Result<MetricsServer> {
        endpoint::serve(self.clone(), addr)
    }
}
