//! The consumer's settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::aws::ClientConfig;
use crate::aws::cloudwatch::CloudWatchClient;
use crate::aws::credentials::{
    AssumeRole, AssumeRoleProvider, DefaultCredentialsChain, ProvideCredentials,
};
use crate::aws::dynamodb::DynamoDbClient;
use crate::aws::kinesis::KinesisClient;
use crate::error::{Error, HandlerResult, Result};
use crate::lease::{BalanceBy, BillingMode, Coordination, TableOptions};
use crate::metrics::{MetricsDimension, MetricsLevel};
use crate::record::{Payload, Record};
use crate::stream::{StreamConfig, StreamTarget, initial_checkpoint, resolve_streams};
use crate::worker::dead_letter::DeadLetterHandler;
use crate::worker::processing::{Checkpointing, ErrorPolicy};
use crate::worker::{Clients, Consumer, ConsumerSettings, MessageHandler, ShutdownHandle};

/// Where to start reading a shard that has no checkpoint yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InitialPosition {
    /// The oldest record still in the stream.
    TrimHorizon,
    /// Only records put after the consumer started.
    Latest,
    /// Records that arrived at or after the given time.
    AtTimestamp(SystemTime),
}

/// Reads `trim-horizon`, `latest` (any case, `_` for `-`) or an RFC 3339
/// time such as `2024-05-01T12:00:00Z` (`AtTimestamp`), as a command line
/// or a configuration file would give it. The error is [`Error::Config`]
/// for setting `initial_position`.
impl std::str::FromStr for InitialPosition {
    type Err = Error;

    fn from_str(text: &str) -> Result<InitialPosition> {
        let name = text.trim().to_ascii_lowercase().replace('_', "-");
        match name.as_str() {
            "trim-horizon" => Ok(InitialPosition::TrimHorizon),
            "latest" => Ok(InitialPosition::Latest),
            _ => crate::time::parse_iso8601(text)
                // RFC 3339 needs a zone: `Z` or an offset after the time.
                .filter(|_| {
                    text.trim()
                        .get(19..)
                        .is_some_and(|zone| zone.contains(['Z', 'z', '+', '-']))
                })
                .map(InitialPosition::AtTimestamp)
                .ok_or_else(|| {
                    Error::config(
                        "initial_position",
                        format!(
                            "{text:?} is not trim-horizon, latest or an RFC 3339 time such as \
                             2024-05-01T12:00:00Z"
                        ),
                    )
                }),
        }
    }
}

/// Builds a [`Consumer`]; get one from [`Consumer::builder`].
///
/// Only the application name and the stream name are required; every other
/// setting documents its default.
pub struct ConsumerBuilder<T> {
    pub(crate) settings: Settings,
    pub(crate) message_handler: MessageHandler<T>,
}

/// Every setting but the message handler, whose type it does not depend on.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) app_name: Option<String>,
    pub(crate) stream_name: Option<String>,
    pub(crate) stream_arn: Option<String>,
    pub(crate) streams: Vec<StreamConfig>,
    pub(crate) former_stream_retention: Duration,
    pub(crate) coordination: Coordination,
    pub(crate) balance_by: BalanceBy,
    pub(crate) max_throughput_per_worker: Option<f64>,
    /// Region, credentials, timeouts and retries of every service, and the
    /// endpoint of those without an override below.
    pub(crate) client: ClientConfig,
    pub(crate) kinesis_endpoint_url: Option<String>,
    pub(crate) dynamodb_endpoint_url: Option<String>,
    pub(crate) cloudwatch_endpoint_url: Option<String>,
    pub(crate) dynamodb_credentials: Option<Arc<dyn ProvideCredentials>>,
    pub(crate) cloudwatch_credentials: Option<Arc<dyn ProvideCredentials>>,
    pub(crate) assume_role: Option<AssumeRole>,
    pub(crate) kinesis_assume_role: Option<AssumeRole>,
    pub(crate) dynamodb_assume_role: Option<AssumeRole>,
    pub(crate) cloudwatch_assume_role: Option<AssumeRole>,
    pub(crate) initial_position: InitialPosition,
    pub(crate) batch_interval: Duration,
    pub(crate) checkpoint_interval: Option<Duration>,
    pub(crate) checkpointing: Checkpointing,
    pub(crate) error_policy: ErrorPolicy,
    pub(crate) dead_letter: Option<DeadLetterHandler>,
    pub(crate) fan_out_consumer: Option<String>,
    pub(crate) metrics_level: MetricsLevel,
    pub(crate) metrics_dimensions: Vec<MetricsDimension>,
    pub(crate) metrics_namespace: Option<String>,
    pub(crate) metrics_period: Duration,
    pub(crate) publish_metrics: bool,
    pub(crate) buffer_bytes: u64,
    pub(crate) buffer_records: u64,
    pub(crate) worker_id: Option<String>,
    pub(crate) max_records_per_read: u32,
    pub(crate) idle_time_between_reads: Duration,
    pub(crate) failover_time: Duration,
    pub(crate) shard_sync_interval: Duration,
    pub(crate) max_leases_per_worker: usize,
    pub(crate) max_unavailable: Option<Duration>,
    pub(crate) read_memory: Option<u64>,
    pub(crate) pace_reads: bool,
    pub(crate) lease_table: TableOptions,
}

impl<T> fmt::Debug for ConsumerBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("app_name", &self.settings.app_name)
            .field("stream_name", &self.settings.stream_name)
            .field("stream_arn", &self.settings.stream_arn)
            .field("streams", &self.settings.streams)
            .field("client", &self.settings.client)
            .field(
                "kinesis_endpoint_url",
                &self
                    .settings
                    .kinesis_endpoint_url
                    .as_deref()
                    .map(crate::aws::endpoint::redact_url),
            )
            .field("initial_position", &self.settings.initial_position)
            .field("batch_interval", &self.settings.batch_interval)
            .field("checkpoint_interval", &self.settings.checkpoint_interval)
            .field("worker_id", &self.settings.worker_id)
            .field("max_unavailable", &self.settings.max_unavailable)
            .finish_non_exhaustive()
    }
}

impl Consumer<Payload> {
    /// Starts configuring a consumer.
    pub fn builder() -> ConsumerBuilder<Payload> {
        ConsumerBuilder::new()
    }
}

impl ConsumerBuilder<Payload> {
    pub(crate) fn new() -> Self {
        ConsumerBuilder {
            message_handler: Arc::new(Record::payload),
            settings: Settings {
                app_name: None,
                stream_name: None,
                stream_arn: None,
                streams: Vec::new(),
                former_stream_retention: Duration::from_secs(3600),
                coordination: Coordination::Leader,
                balance_by: BalanceBy::Load,
                max_throughput_per_worker: None,
                client: ClientConfig::new(),
                kinesis_endpoint_url: None,
                dynamodb_endpoint_url: None,
                cloudwatch_endpoint_url: None,
                dynamodb_credentials: None,
                cloudwatch_credentials: None,
                assume_role: None,
                kinesis_assume_role: None,
                dynamodb_assume_role: None,
                cloudwatch_assume_role: None,
                initial_position: InitialPosition::Latest,
                batch_interval: Duration::from_secs(1),
                checkpoint_interval: None,
                checkpointing: Checkpointing::Automatic,
                error_policy: ErrorPolicy::Stop,
                dead_letter: None,
                fan_out_consumer: None,
                metrics_level: MetricsLevel::None,
                metrics_dimensions: vec![MetricsDimension::Operation, MetricsDimension::ShardId],
                metrics_namespace: None,
                metrics_period: Duration::from_secs(60),
                publish_metrics: true,
                buffer_bytes: 64 * 1024 * 1024,
                buffer_records: 100_000,
                worker_id: None,
                max_records_per_read: 10_000,
                idle_time_between_reads: Duration::from_secs(1),
                failover_time: Duration::from_secs(10),
                shard_sync_interval: Duration::from_secs(60),
                max_leases_per_worker: usize::MAX,
                max_unavailable: None,
                read_memory: None,
                pace_reads: true,
                lease_table: TableOptions::default(),
            },
        }
    }
}

impl<T: Send + 'static> ConsumerBuilder<T> {
    /// The application name: the lease table's name and, unless
    /// [`metrics_namespace`](Self::metrics_namespace) says otherwise, the
    /// CloudWatch namespace. Consumers with the same name share the work; consumers
    /// with different names each see every record. Required.
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.settings.app_name = Some(name.into());
        self
    }

    /// The stream to read, by name. This or
    /// [`stream_arn`](Self::stream_arn) is required.
    pub fn stream_name(mut self, name: impl Into<String>) -> Self {
        self.settings.stream_name = Some(name.into());
        self
    }

    /// The stream to read, by ARN
    /// (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`), as an alternative to
    /// [`stream_name`](Self::stream_name): every Kinesis request then
    /// names the stream by `StreamARN`, so a consumer in one account reads a
    /// stream in another through the stream's resource policy. Kinesis
    /// requests go to the ARN's region; DynamoDB and CloudWatch use
    /// [`region`](Self::region), else the environment's region, else the
    /// ARN's. Leases and metrics use the stream's name (the end of the
    /// ARN). With both set, the names must agree. Defaults to none.
    pub fn stream_arn(mut self, arn: impl Into<String>) -> Self {
        self.settings.stream_arn = Some(arn.into());
        self
    }

    /// Several streams to read in one consumer, by name or ARN, each with
    /// its own optional initial position (see [`StreamConfig`]): one lease
    /// table, one set of threads and heartbeats for all of them. Leases
    /// are keyed in the KCL 3's multi-stream layout
    /// (`<account>:<stream>:<creationEpochSeconds>:<shardId>`), so a KCL 3
    /// multi-stream application's table is continued from; a table of
    /// single-stream leases is refused (see `docs/multi-stream.md`). All
    /// streams are in one region. With
    /// [`enhanced_fan_out`](Self::enhanced_fan_out), the consumer name is
    /// registered on each stream. Not combined with
    /// [`stream_name`](Self::stream_name) or
    /// [`stream_arn`](Self::stream_arn), which keep the single-stream
    /// layout. Defaults to none.
    ///
    /// ```
    /// use kinesis_consumer::{Consumer, InitialPosition, StreamConfig};
    ///
    /// let consumer = Consumer::builder()
    ///     .app_name("orders-and-clicks")
    ///     .region("us-east-1")
    ///     .streams([
    ///         StreamConfig::new("orders").initial_position(InitialPosition::TrimHorizon),
    ///         StreamConfig::new("arn:aws:kinesis:us-east-1:111122223333:stream/clicks"),
    ///     ])
    ///     .build();
    /// assert!(consumer.is_ok()); // nothing is sent to AWS before `run`
    /// ```
    pub fn streams<S: Into<StreamConfig>>(mut self, streams: impl IntoIterator<Item = S>) -> Self {
        self.settings.streams = streams.into_iter().map(Into::into).collect();
        self
    }

    /// How long the lease rows of a stream this consumer no longer reads
    /// (removed through [`StreamsHandle`](crate::StreamsHandle), deleted,
    /// or recreated under its name) are kept before they are deleted; a
    /// stream added back meanwhile resumes from its checkpoints. Only free
    /// rows are deleted: a row still owned by a worker reading the stream
    /// stays. Defaults to 1 hour.
    pub fn former_stream_retention(mut self, retention: Duration) -> Self {
        self.settings.former_stream_retention = retention;
        self
    }

    /// How the workers of this application share the leases: through one
    /// workers row that every worker writes and reads
    /// ([`Coordination::WorkersRow`]), or through one item per worker
    /// and an elected leader ([`Coordination::Leader`]), for fleets of
    /// hundreds to thousands of workers. Every worker of one application
    /// must use the same: a leader that sees a workers-row worker beat on
    /// its table stops its whole fleet with an [`Error::Config`] naming
    /// that worker. Defaults to [`Coordination::Leader`].
    pub fn coordination(mut self, coordination: Coordination) -> Self {
        self.settings.coordination = coordination;
        self
    }

    /// What the leader of a leader-run fleet ([`Coordination::Leader`])
    /// evens out between workers: [`BalanceBy::Load`], the sum of the
    /// leases' loads (bytes read per second, measured by their owners and
    /// left on the rows at each checkpoint), so that hot shards spread and
    /// cold ones pack together (the KCL 3 too balances load by default,
    /// not lease counts: its workers' CPU; ours is the load that moves
    /// with a lease); or [`BalanceBy::LeaseCount`], the number of leases. By
    /// load, nothing moves while every worker is within 10% of its fair
    /// share, a worker gives at most 60% of its surplus per round, at most
    /// 50 leases move per round, and a lease moved stays 5 rounds; every
    /// move is a graceful handoff. The leader's setting applies to the
    /// fleet. With [`Coordination::WorkersRow`] leases are balanced by
    /// count whatever this says. Defaults to [`BalanceBy::Load`]
    /// (docs/many-workers.md, "Balance by load").
    pub fn balance_by(mut self, by: BalanceBy) -> Self {
        self.settings.balance_by = by;
        self
    }

    /// The most load, in bytes read per second, the leader of a
    /// leader-run fleet ([`Coordination::Leader`]) gives any worker: a
    /// lease that would put a worker over it is not given to it (it stays
    /// free when no worker has room). The leader's setting applies to the
    /// fleet; the workers-row mode ignores it. The KCL 3's
    /// `maxThroughputPerHostKBps` is in KiB/s: multiply by 1,024.
    /// Defaults to no limit.
    pub fn max_throughput_per_worker(mut self, bytes_per_second: f64) -> Self {
        self.settings.max_throughput_per_worker = Some(bytes_per_second);
        self
    }

    /// How every service is reached: region, credentials, timeouts,
    /// retries, and an endpoint URL for the services that have no endpoint
    /// of their own ([`endpoint_url`](Self::endpoint_url),
    /// [`dynamodb_endpoint_url`](Self::dynamodb_endpoint_url),
    /// [`cloudwatch_endpoint_url`](Self::cloudwatch_endpoint_url)).
    /// Replaces what [`region`](Self::region),
    /// [`credentials`](Self::credentials), [`retry_wait`](Self::retry_wait),
    /// [`max_attempts`](Self::max_attempts),
    /// [`connect_timeout`](Self::connect_timeout) and
    /// [`read_timeout`](Self::read_timeout) set before; those setters change
    /// this configuration. Defaults to [`ClientConfig::new`].
    pub fn client(mut self, client: ClientConfig) -> Self {
        self.settings.client = client;
        self
    }

    /// The AWS region ([`ClientConfig::region`]). Defaults to `AWS_REGION`,
    /// then `AWS_DEFAULT_REGION`, then the active profile's region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.settings.client = self.settings.client.region(region);
        self
    }

    /// The Kinesis endpoint URL (Spark's `endpointUrl`). Defaults to the
    /// [`client`](Self::client)'s endpoint URL, then
    /// `AWS_ENDPOINT_URL_KINESIS`, then `AWS_ENDPOINT_URL`, then the
    /// region's standard endpoint.
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.settings.kinesis_endpoint_url = Some(url.into());
        self
    }

    /// The DynamoDB endpoint URL. Defaults to the [`client`](Self::client)'s
    /// endpoint URL, then `AWS_ENDPOINT_URL_DYNAMODB`, then `AWS_ENDPOINT_URL`, then the region's standard endpoint.
    pub fn dynamodb_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.settings.dynamodb_endpoint_url = Some(url.into());
        self
    }

    /// The CloudWatch endpoint URL. Defaults to the [`client`](Self::client)'s
    /// endpoint URL, then `AWS_ENDPOINT_URL_CLOUDWATCH`, then `AWS_ENDPOINT_URL`, then the region's standard endpoint.
    pub fn cloudwatch_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.settings.cloudwatch_endpoint_url = Some(url.into());
        self
    }

    /// Credentials for every service ([`ClientConfig::credentials`]).
    /// Defaults to the standard chain (environment, shared files, web
    /// identity, container, EC2 metadata), one for all services of the
    /// consumer.
    pub fn credentials(mut self, credentials: impl ProvideCredentials + 'static) -> Self {
        self.settings.client = self.settings.client.credentials(credentials);
        self
    }

    /// Credentials for the lease table. Defaults to those of
    /// [`credentials`](Self::credentials).
    pub fn dynamodb_credentials(mut self, credentials: impl ProvideCredentials + 'static) -> Self {
        self.settings.dynamodb_credentials = Some(Arc::new(credentials));
        self
    }

    /// Credentials for CloudWatch. Defaults to those of
    /// [`credentials`](Self::credentials).
    pub fn cloudwatch_credentials(
        mut self,
        credentials: impl ProvideCredentials + 'static,
    ) -> Self {
        self.settings.cloudwatch_credentials = Some(Arc::new(credentials));
        self
    }

    /// Assume this IAM role for every service (Kinesis, the DynamoDB lease
    /// table, CloudWatch), as Spark's `stsCredentials`: each service's
    /// requests are signed with the role's temporary credentials, obtained
    /// from STS `AssumeRole` with that service's credentials (see
    /// [`credentials`](Self::credentials)) and renewed before they expire.
    /// The per-service setters override it for their service. Defaults to
    /// no role.
    pub fn assume_role(mut self, role: AssumeRole) -> Self {
        self.settings.assume_role = Some(role);
        self
    }

    /// Assume this role for Kinesis requests only (a stream in another
    /// account, say, while the lease table and metrics stay in this one).
    /// Defaults to [`assume_role`](Self::assume_role)'s role, if any.
    pub fn kinesis_assume_role(mut self, role: AssumeRole) -> Self {
        self.settings.kinesis_assume_role = Some(role);
        self
    }

    /// Assume this role for lease-table requests, on top of
    /// [`dynamodb_credentials`](Self::dynamodb_credentials). Defaults to
    /// [`assume_role`](Self::assume_role)'s role, if any.
    pub fn dynamodb_assume_role(mut self, role: AssumeRole) -> Self {
        self.settings.dynamodb_assume_role = Some(role);
        self
    }

    /// Assume this role for CloudWatch requests, on top of
    /// [`cloudwatch_credentials`](Self::cloudwatch_credentials). Defaults to
    /// [`assume_role`](Self::assume_role)'s role, if any.
    pub fn cloudwatch_assume_role(mut self, role: AssumeRole) -> Self {
        self.settings.cloudwatch_assume_role = Some(role);
        self
    }

    /// Where to start in shards that have no checkpoint. A checkpoint always
    /// wins. Defaults to [`InitialPosition::Latest`].
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.settings.initial_position = position;
        self
    }

    /// How often the batch handler is called with what arrived. Defaults to 1 s.
    pub fn batch_interval(mut self, interval: Duration) -> Self {
        self.settings.batch_interval = interval;
        self
    }

    /// The shortest time between two checkpoint writes of a shard. Defaults
    /// to the batch interval.
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.settings.checkpoint_interval = Some(interval);
        self
    }

    /// Who writes checkpoints: the consumer after each batch the handler
    /// accepted, or only the application through its
    /// [`Checkpointer`](crate::Checkpointer). Defaults to
    /// [`Checkpointing::Automatic`].
    pub fn checkpointing(mut self, checkpointing: Checkpointing) -> Self {
        self.settings.checkpointing = checkpointing;
        self
    }

    /// What a failing batch handler or shard processor leads to. Defaults
    /// to [`ErrorPolicy::Stop`]: `run` returns the error.
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.settings.error_policy = policy;
        self
    }

    /// Where records the handler keeps rejecting go under
    /// [`ErrorPolicy::RetryThenDeadLetter`] (required by it, refused with
    /// any other policy): `handler(records, error)` is given the rejected
    /// records (today one user record per call, a KPL sub-record alone)
    /// and the error of their last rejection. It must make them durable
    /// (a file, another stream, a queue) before returning `Ok`: the shard's
    /// checkpoint then moves past them. An error or a panic stops the
    /// shard before the record. It may be called again with the same
    /// record (after a restart, or another worker took the shard), and
    /// runs on the thread that calls the handler. Defaults to none.
    pub fn dead_letter(
        mut self,
        handler: impl Fn(&[Record], &Error) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.settings.dead_letter = Some(Arc::new(handler));
        self
    }

    /// Reads through enhanced fan-out as the stream consumer
    /// `consumer_name` (registered at startup if it does not exist, then
    /// shared by every worker of the application; the application name is
    /// the usual choice): each shard's records are pushed over HTTP/2 with
    /// SubscribeToShard, with 2 MiB/s per shard of its own rather than
    /// shared with the stream's other readers. The consumer is never
    /// deregistered by the library (other workers may be using it; the
    /// `leases` example's `--deregister-consumer` does it). TLS for it can
    /// be set with [`ClientConfig::fan_out_tls`](crate::aws::ClientConfig::fan_out_tls).
    /// Defaults to polling with GetRecords.
    pub fn enhanced_fan_out(mut self, consumer_name: impl Into<String>) -> Self {
        self.settings.fan_out_consumer = Some(consumer_name.into());
        self
    }

    /// How much the consumer measures, as in the KCL: `Summary` keeps
    /// totals per operation (no `ShardId` dimension, summary metrics only),
    /// `Detailed` adds per-shard series and the detailed metrics. Metrics
    /// are aggregated into statistic sets and sent to CloudWatch once per
    /// [`metrics_period`](Self::metrics_period) on a thread of their own
    /// (see [`publish_metrics`](Self::publish_metrics)), and are visible
    /// in-process through [`Consumer::metrics`]. A slow or failing
    /// CloudWatch never holds up reading or checkpointing. Defaults to
    /// [`MetricsLevel::None`]: nothing is recorded or sent.
    pub fn metrics_level(mut self, level: MetricsLevel) -> Self {
        self.settings.metrics_level = level;
        self
    }

    /// The dimensions metrics are broken down by, in this order. `ShardId`
    /// applies only at [`MetricsLevel::Detailed`] and only to per-shard
    /// metrics. Defaults to `Operation` and `ShardId`, the KCL's defaults.
    pub fn metrics_dimensions(mut self, dimensions: &[MetricsDimension]) -> Self {
        self.settings.metrics_dimensions = dimensions.to_vec();
        self
    }

    /// The CloudWatch namespace metrics are published in. Defaults to the
    /// application name (as the KCL).
    pub fn metrics_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings.metrics_namespace = Some(namespace.into());
        self
    }

    /// How often metrics are aggregated and sent to CloudWatch: each period
    /// gives one statistic set (sample count, sum, minimum, maximum) per
    /// series. Defaults to 60 s (CloudWatch's standard resolution).
    pub fn metrics_period(mut self, period: Duration) -> Self {
        self.settings.metrics_period = period;
        self
    }

    /// Whether metrics are sent to CloudWatch; with `false` they are only
    /// recorded for [`Consumer::metrics`]. Has no effect at
    /// [`MetricsLevel::None`]. Defaults to `true`.
    pub fn publish_metrics(mut self, publish: bool) -> Self {
        self.settings.publish_metrics = publish;
        self
    }

    /// The most memory held by records read but not yet handled (the
    /// analogue of Spark's storage level). Readers wait when it is reached.
    /// A read counts the buffer its records share (their data and keys)
    /// and its messages; memory that values of a custom message handler
    /// own besides (a copied `Vec`, a parsed struct's strings) is not
    /// counted. Defaults to 64 MiB.
    pub fn buffer_bytes(mut self, bytes: u64) -> Self {
        self.settings.buffer_bytes = bytes;
        self
    }

    /// The most records read but not yet handled. Defaults to 100,000.
    pub fn buffer_records(mut self, records: u64) -> Self {
        self.settings.buffer_records = records;
        self
    }

    /// Turns each record into the value the batch handler sees. It runs on
    /// the shard reader threads, in parallel across shards. Defaults to the
    /// record's [`Payload`], which shares the reply's buffer (no copy).
    pub fn message_handler<U: Send + 'static>(
        self,
        handler: impl Fn(&Record) -> U + Send + Sync + 'static,
    ) -> ConsumerBuilder<U> {
        ConsumerBuilder {
            message_handler: Arc::new(handler),
            settings: self.settings,
        }
    }

    /// The base wait before retrying a failed AWS request; it doubles per
    /// attempt, with jitter ([`ClientConfig::retry_wait`]). Defaults to
    /// 100 ms (Spark's default).
    pub fn retry_wait(mut self, wait: Duration) -> Self {
        self.settings.client = self.settings.client.retry_wait(wait);
        self
    }

    /// How many times an AWS request is tried before its error counts
    /// ([`ClientConfig::max_attempts`]). Defaults to 3 (Spark's default).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.client = self.settings.client.max_attempts(attempts);
        self
    }

    /// How long to wait for a connection to an AWS endpoint
    /// ([`ClientConfig::connect_timeout`]). Defaults to 3 s (lease-table
    /// requests use at most a tenth of the failover time).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.client = self.settings.client.connect_timeout(timeout);
        self
    }

    /// How long to wait for each reply from AWS before the request counts
    /// as failed (and is retried; [`ClientConfig::read_timeout`]). Defaults
    /// to 10 s. Lease-table requests use at most a tenth of the failover
    /// time (1 s by default), so that one hung DynamoDB connection cannot
    /// outlast a lease.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.settings.client = self.settings.client.read_timeout(timeout);
        self
    }

    /// This worker's name in the lease table; must differ between workers.
    /// Defaults to the host name, the process id and a random suffix.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.settings.worker_id = Some(id.into());
        self
    }

    /// The most records one GetRecords call returns (1 to 10,000). Defaults
    /// to 10,000.
    pub fn max_records_per_read(mut self, records: u32) -> Self {
        self.settings.max_records_per_read = records;
        self
    }

    /// How long a reader waits after a read that returned nothing. Defaults
    /// to 1 s (the KCL waits 1.5 s).
    pub fn idle_time_between_reads(mut self, idle: Duration) -> Self {
        self.settings.idle_time_between_reads = idle;
        self
    }

    /// How long a worker's heartbeat may stand still before other workers
    /// take its leases. Each worker writes its heartbeat (one write that
    /// keeps all its leases) every third of it, and reads the lease table
    /// when the heartbeats show a change (a worker joined, left or died,
    /// leases were freed or asked for), or every six failover times.
    /// Defaults to 10 s (as the KCL).
    pub fn failover_time(mut self, failover: Duration) -> Self {
        self.settings.failover_time = failover;
        self
    }

    /// How often the stream's shard list is read to find new shards.
    /// Defaults to 60 s; a shard reaching its end triggers one at once.
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.settings.shard_sync_interval = interval;
        self
    }

    /// Stop when the lease table is out of reach this long: when no
    /// heartbeat (a write to the lease table) has landed for `bound`,
    /// [`run`](crate::Consumer::run) (and `run_processors`) returns
    /// [`Error::LeaseTableUnavailable`], checked once a heartbeat period
    /// (a third of the [failover time](Self::failover_time)), so it
    /// returns up to about a heartbeat period after the bound.
    ///
    /// For programs that prefer to exit and be restarted by their
    /// supervisor (systemd, Kubernetes) over running on without leases:
    /// without the bound a consumer whose DynamoDB is gone drops its
    /// leases after the fencing window and then delivers empty batches
    /// until the table is back, as the KCL does. A bound shorter than the
    /// failover time stops the consumer while its leases are still valid.
    ///
    /// Defaults to off (`None`: retry for ever).
    pub fn max_unavailable(mut self, bound: Duration) -> Self {
        self.settings.max_unavailable = Some(bound);
        self
    }

    /// The most leases this worker holds. Defaults to no limit.
    pub fn max_leases_per_worker(mut self, leases: usize) -> Self {
        self.settings.max_leases_per_worker = leases;
        self
    }

    /// The most memory GetRecords calls and replies being fetched and
    /// decoded may hold at once, across all shards, on top of
    /// [`buffer_bytes`](Self::buffer_bytes). Before each call a reader
    /// reserves room for its read (at most half of this) and asks for only
    /// as many records as that room holds at its shard's last size per
    /// record (one record while the size is unknown). A reply whose headers
    /// show it larger than reserved is read only if there is room for it at
    /// once; otherwise it is dropped unread and asked for again with all of
    /// it reserved. Decoded records stay counted until they are in the
    /// buffer. Readers wait for room in arrival order, so a large read is
    /// not starved by small ones. A single reply larger than this bound (a
    /// 1 MiB record with a small bound) is read alone. Memory the allocator
    /// keeps after replies are freed is not counted (see docs/settings.md).
    /// With enhanced fan-out, when set, each open subscription reserves
    /// its 4 MiB HTTP/2 stream window from it while open, so at most
    /// `bytes / 4 MiB` subscriptions (at least one) are open at once; a
    /// caught-up subscription gives its room to a reader waiting for it
    /// (docs/fan-out.md, Memory). Unset, subscriptions are not held back.
    /// Defaults to an eighth of `buffer_bytes`, at least 8 MiB (8 MiB with
    /// the default buffer).
    pub fn read_memory(mut self, bytes: u64) -> Self {
        self.settings.read_memory = Some(bytes);
        self
    }

    /// Whether each reader keeps its shard under Kinesis's read limits
    /// (5 GetRecords calls and 2 MiB per second) by pacing itself, rather
    /// than reading as fast as it can and backing off when throttled. Turn it
    /// off only for servers without those limits (emulators, benchmarks).
    /// Defaults to `true`.
    pub fn pace_reads(mut self, pace: bool) -> Self {
        self.settings.pace_reads = pace;
        self
    }

    /// Checks every setting and builds the consumer. Nothing is sent to AWS
    /// yet; an invalid setting gives [`Error::Config`] naming it.
    pub fn build(self) -> Result<Consumer<T>> {
        let app_name = self
            .settings
            .app_name
            .clone()
            .ok_or_else(|| Error::config("app_name", "is required"))?;
        check_name("app_name", &app_name, 3, 255)?;
        check_dead_letter(&self.settings)?;
        if let Some(name) = &self.settings.fan_out_consumer {
            // Kinesis's rule for consumer names.
            check_name("enhanced_fan_out", name, 1, 128)?;
        }
        let streams = resolve_streams(&self.settings.streams, self.settings.initial_position)?;
        if !streams.is_empty() {
            return self.build_multi_stream(app_name, streams);
        }
        if self.settings.stream_name.is_none() && self.settings.stream_arn.is_none() {
            return Err(Error::config(
                "stream_name",
                "is required (or stream_arn, or streams)",
            ));
        }
        let arn = match &self.settings.stream_arn {
            Some(arn) => Some(
                crate::aws::kinesis::parse_stream_arn(arn)
                    .map_err(|e| Error::config("stream_arn", e.to_string()))?,
            ),
            None => None,
        };
        self.build_with(app_name, arn, Vec::new())
    }

    /// Builds a consumer of several streams (see [`streams`](Self::streams)).
    fn build_multi_stream(
        self,
        app_name: String,
        streams: Vec<StreamTarget>,
    ) -> Result<Consumer<T>> {
        if self.settings.stream_name.is_some() || self.settings.stream_arn.is_some() {
            return Err(Error::config(
                "streams",
                "cannot be combined with stream_name or stream_arn: list every stream in streams",
            ));
        }
        // Kinesis is where the streams given by ARN are.
        let arn = streams
            .iter()
            .find(|t| t.region.is_some())
            .map(|t| crate::aws::kinesis::parse_stream_arn(&t.request))
            .transpose()
            .map_err(|e| Error::config("streams", e.to_string()))?;
        self.build_with(app_name, arn, streams)
    }

    /// Builds the consumer: the single stream `stream_name` or
    /// `stream_arn` names, or `streams` when not empty; `arn` is a stream
    /// ARN whose region Kinesis requests go to.
    fn build_with(
        self,
        app_name: String,
        arn: Option<crate::aws::kinesis::StreamArn>,
        streams: Vec<StreamTarget>,
    ) -> Result<Consumer<T>> {
        let multi = !streams.is_empty();
        let stream_name = match (&self.settings.stream_name, &arn) {
            _ if multi => String::new(),
            (Some(name), Some(arn)) if *name != arn.name => {
                return Err(Error::config(
                    "stream_arn",
                    format!("names stream {:?}, but stream_name is {name:?}", arn.name),
                ));
            }
            (Some(name), _) => name.clone(),
            (None, Some(arn)) => arn.name.clone(),
            (None, None) => {
                return Err(Error::config("stream_name", "is required (or stream_arn)"));
            }
        };
        if !multi {
            check_name(
                if self.settings.stream_name.is_some() {
                    "stream_name"
                } else {
                    "stream_arn"
                },
                &stream_name,
                1,
                128,
            )?;
        }
        // How Kinesis requests name the stream.
        let stream = self
            .settings
            .stream_arn
            .clone()
            .unwrap_or_else(|| stream_name.clone());
        // Kinesis is where the stream is; the other services are where
        // the region settings say, else there too.
        let kinesis_region = arn
            .as_ref()
            .map(|arn| arn.region.clone())
            .or_else(|| self.settings.client.region.clone());
        let other_region = match (&self.settings.client.region, &arn) {
            (Some(region), _) => Some(region.clone()),
            (None, Some(arn)) if crate::aws::endpoint::resolve_region(None).is_err() => {
                Some(arn.region.clone())
            }
            _ => None,
        };
        for (setting, value) in [
            ("batch_interval", self.settings.batch_interval),
            (
                "checkpoint_interval",
                self.settings
                    .checkpoint_interval
                    .unwrap_or(self.settings.batch_interval),
            ),
            (
                "idle_time_between_reads",
                self.settings.idle_time_between_reads,
            ),
            ("shard_sync_interval", self.settings.shard_sync_interval),
            ("metrics_period", self.settings.metrics_period),
        ] {
            if value.is_zero() {
                return Err(Error::config(setting, "must be greater than zero"));
            }
        }
        if self.settings.failover_time < Duration::from_millis(300) {
            return Err(Error::config("failover_time", "must be at least 300 ms"));
        }
        if !(1..=10_000).contains(&self.settings.max_records_per_read) {
            return Err(Error::config(
                "max_records_per_read",
                "must be between 1 and 10,000",
            ));
        }
        if self.settings.buffer_bytes == 0 {
            return Err(Error::config("buffer_bytes", "must be greater than zero"));
        }
        if self.settings.buffer_records == 0 {
            return Err(Error::config("buffer_records", "must be greater than zero"));
        }
        if self.settings.read_memory == Some(0) {
            return Err(Error::config("read_memory", "must be greater than zero"));
        }
        if self
            .settings
            .max_throughput_per_worker
            .is_some_and(|max| !(max.is_finite() && max > 0.0))
        {
            return Err(Error::config(
                "max_throughput_per_worker",
                "must be a finite number of bytes per second above zero",
            ));
        }
        if self.settings.max_leases_per_worker == 0 {
            return Err(Error::config("max_leases_per_worker", "must be at least 1"));
        }
        if self.settings.max_unavailable == Some(Duration::ZERO) {
            return Err(Error::config("max_unavailable", "must be more than zero"));
        }
        if self.settings.metrics_level != MetricsLevel::None
            && self.settings.metrics_dimensions.is_empty()
        {
            return Err(Error::config(
                "metrics_dimensions",
                "must not be empty when metrics are on",
            ));
        }
        if let Some(namespace) = &self.settings.metrics_namespace {
            check_namespace(namespace)?;
        }
        let worker_id = match &self.settings.worker_id {
            Some(id) if id.trim().is_empty() => {
                return Err(Error::config("worker_id", "must not be empty"));
            }
            Some(id) => id.clone(),
            None => default_worker_id(),
        };
        let mut shared = RoleProviders::default();
        let kinesis_credentials = self.credentials_with_role(
            &None,
            &self.settings.kinesis_assume_role,
            "kinesis_assume_role",
            &mut shared,
        )?;
        let dynamodb_credentials = self.credentials_with_role(
            &self.settings.dynamodb_credentials,
            &self.settings.dynamodb_assume_role,
            "dynamodb_assume_role",
            &mut shared,
        )?;
        let cloudwatch_credentials = self.credentials_with_role(
            &self.settings.cloudwatch_credentials,
            &self.settings.cloudwatch_assume_role,
            "cloudwatch_assume_role",
            &mut shared,
        )?;
        // Each service's configuration is the shared one with that service's
        // endpoint, credentials and region.
        let base = |(setting, endpoint): (&'static str, &Option<String>),
                    credentials: &Arc<dyn ProvideCredentials>| {
            let mut c = self.settings.client.clone();
            c.region = other_region.clone();
            if self.settings.client.region.is_none() {
                // The region, if any, is the stream ARN's.
                c.region_setting = "stream_arn";
            }
            if endpoint.is_some() {
                c.endpoint_url = endpoint.clone();
                c.endpoint_setting = setting;
            }
            c.credentials = Some(credentials.clone());
            c
        };
        // Once shutdown is asked for, a failed Kinesis request is not tried
        // again, so `run` returns within one request's timeout. Lease-table
        // writes keep their retries: the last checkpoints and releases
        // happen after shutdown, and their timeouts are short.
        let shutdown = ShutdownHandle::default();
        let mut kinesis_config = base(
            ("endpoint_url", &self.settings.kinesis_endpoint_url),
            &kinesis_credentials,
        );
        kinesis_config.region = kinesis_region;
        if arn.is_some() {
            kinesis_config.region_setting = "stream_arn";
        }
        kinesis_config.stop_retrying = Some(shutdown.flag());
        let kinesis = KinesisClient::new(&kinesis_config)?;
        // Lease-table requests give up well within a heartbeat period, so a
        // hung connection puts only the lease it concerns at risk (a
        // request and its retries take about a third of the failover time).
        let lease_timeout = (self.settings.failover_time / 10).max(Duration::from_millis(100));
        let client = &self.settings.client;
        let dynamodb = DynamoDbClient::new(
            &base(
                (
                    "dynamodb_endpoint_url",
                    &self.settings.dynamodb_endpoint_url,
                ),
                &dynamodb_credentials,
            )
            .connect_timeout(client.connect_timeout.min(lease_timeout))
            .read_timeout(client.read_timeout.min(lease_timeout)),
        )?;
        // Resolved even when metrics are off, so a bad setting fails here.
        // Short timeouts: a slow CloudWatch only delays the publisher thread,
        // but it should not hold unsent metrics for long.
        let cloudwatch = CloudWatchClient::new(
            &base(
                (
                    "cloudwatch_endpoint_url",
                    &self.settings.cloudwatch_endpoint_url,
                ),
                &cloudwatch_credentials,
            )
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(Duration::from_secs(5)),
        )?;
        let s = &self.settings;
        let initial = initial_checkpoint(s.initial_position);
        let start_timestamp = match s.initial_position {
            InitialPosition::AtTimestamp(t) => Some(t),
            _ => None,
        };
        let settings = ConsumerSettings {
            metrics_namespace: s
                .metrics_namespace
                .clone()
                .unwrap_or_else(|| app_name.clone()),
            lease_table: lease_table(&s.lease_table, &app_name)?,
            app_name,
            stream_name,
            stream,
            streams,
            initial_position: s.initial_position,
            former_stream_retention: s.former_stream_retention,
            coordination: s.coordination,
            balance: crate::lease::FleetBalance::new(s.balance_by, s.max_throughput_per_worker),
            worker_id,
            initial,
            start_timestamp,
            batch_interval: s.batch_interval,
            checkpoint_interval: s.checkpoint_interval.unwrap_or(s.batch_interval),
            checkpointing: s.checkpointing,
            error_policy: s.error_policy,
            dead_letter: s.dead_letter.clone(),
            fan_out_consumer: s.fan_out_consumer.clone(),
            metrics_level: s.metrics_level,
            metrics_dimensions: s.metrics_dimensions.clone(),
            metrics_period: s.metrics_period,
            publish_metrics: s.publish_metrics,
            buffer_bytes: s.buffer_bytes,
            buffer_records: s.buffer_records,
            read_memory_set: s.read_memory.is_some(),
            read_memory: s
                .read_memory
                .unwrap_or((s.buffer_bytes / 8).max(8 * 1024 * 1024)),
            retry_wait: client.retry_wait,
            connect_timeout: client.connect_timeout,
            read_timeout: client.read_timeout,
            max_records_per_read: s.max_records_per_read,
            idle_time_between_reads: s.idle_time_between_reads,
            failover_time: s.failover_time,
            shard_sync_interval: s.shard_sync_interval,
            max_leases_per_worker: s.max_leases_per_worker,
            max_unavailable: s.max_unavailable,
            pace_reads: s.pace_reads,
        };
        Ok(Consumer::new(
            settings,
            self.message_handler,
            Clients {
                kinesis,
                dynamodb,
                cloudwatch,
                shutdown,
            },
        ))
    }

    /// The lease table's name. Defaults to the application name (as the
    /// KCL's and Spark's); set it to keep the application name for
    /// CloudWatch while the leases live elsewhere, or to follow a naming
    /// policy.
    pub fn lease_table_name(mut self, name: impl Into<String>) -> Self {
        self.settings.lease_table.name = name.into();
        self
    }

    /// How the lease table is billed if this consumer creates it (an
    /// existing table is left as it is). Defaults to
    /// [`BillingMode::OnDemand`].
    pub fn lease_table_billing_mode(mut self, mode: BillingMode) -> Self {
        self.settings.lease_table.billing = mode;
        self
    }

    /// Tags (key, value) put on the lease table as this consumer creates it,
    /// for accounts whose policies refuse untagged tables (up to 50; keys 1
    /// to 128 characters, not starting with `aws:`; values up to 256).
    /// Replaces tags given before. Defaults to none.
    pub fn lease_table_tags<K: Into<String>, V: Into<String>>(
        mut self,
        tags: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.settings.lease_table.tags = tags
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Whether point-in-time recovery is turned on for the lease table
    /// once this consumer has created it (an extra UpdateContinuousBackups
    /// call; an existing table is left as it is). Defaults to false.
    pub fn lease_table_point_in_time_recovery(mut self, enabled: bool) -> Self {
        self.settings.lease_table.point_in_time_recovery = enabled;
        self
    }

    /// Whether the lease table is created with deletion protection (it then
    /// refuses DeleteTable until that is turned off). Defaults to false.
    pub fn lease_table_deletion_protection(mut self, enabled: bool) -> Self {
        self.settings.lease_table.deletion_protection = enabled;
        self
    }
}

/// The lease table settings, checked, with the name resolved.
fn lease_table(options: &TableOptions, app_name: &str) -> Result<TableOptions> {
    let mut options = options.clone();
    if options.name.is_empty() {
        options.name = app_name.to_owned();
    }
    check_name("lease_table_name", &options.name, 3, 255)?;
    if let BillingMode::Provisioned {
        read_capacity_units: read,
        write_capacity_units: write,
    } = options.billing
        && (read == 0 || write == 0)
    {
        return Err(Error::config(
            "lease_table_billing_mode",
            "provisioned read and write capacity units must each be at least 1",
        ));
    }
    if options.tags.len() > 50 {
        return Err(Error::config("lease_table_tags", "at most 50 tags"));
    }
    for (key, value) in &options.tags {
        if key.is_empty() || key.chars().count() > 128 || key.starts_with("aws:") {
            return Err(Error::config(
                "lease_table_tags",
                format!("tag key {key:?} must be 1 to 128 characters and not start with \"aws:\""),
            ));
        }
        if value.chars().count() > 256 {
            return Err(Error::config(
                "lease_table_tags",
                format!("the value of tag {key:?} is longer than 256 characters"),
            ));
        }
    }
    Ok(options)
}

type SharedProvider = Arc<dyn ProvideCredentials>;

/// The credential providers built so far, shared between services.
#[derive(Default)]
struct RoleProviders {
    /// The standard chain of every service given no credentials, and the
    /// source of their roles: one per consumer, so an SSO token is renewed
    /// (or a credential_process run) once, not once per service.
    default_chain: Option<Arc<dyn ProvideCredentials>>,
    /// (role, source, provider) of each role assumed.
    built: Vec<(AssumeRole, SharedProvider, SharedProvider)>,
}

impl<T> ConsumerBuilder<T> {
    /// A service's credentials: its own provider (else the shared one, else
    /// the default chain, one for all services), with its role (else the
    /// shared role) assumed on top. Services with the same role over the
    /// same source share one provider (`shared`), so the role is assumed
    /// once.
    fn credentials_with_role(
        &self,
        own: &Option<Arc<dyn ProvideCredentials>>,
        own_role: &Option<AssumeRole>,
        setting: &'static str,
        shared: &mut RoleProviders,
    ) -> Result<Arc<dyn ProvideCredentials>> {
        let source = match own.as_ref().or(self.settings.client.credentials.as_ref()) {
            Some(source) => source.clone(),
            None => shared
                .default_chain
                .get_or_insert_with(|| Arc::new(DefaultCredentialsChain::new()))
                .clone(),
        };
        let (role, setting) = match (own_role, &self.settings.assume_role) {
            (Some(role), _) => (role, setting),
            (None, Some(role)) => (role, "assume_role"),
            (None, None) => return Ok(source),
        };
        role.validate(setting)?;
        if let Some((_, _, provider)) = shared
            .built
            .iter()
            .find(|(r, s, _)| r == role && Arc::ptr_eq(s, &source))
        {
            return Ok(provider.clone());
        }
        let mut provider = AssumeRoleProvider::new(role.clone(), source.clone())?;
        if let Some(region) = &self.settings.client.region {
            provider = provider.region(region);
        }
        let provider: Arc<dyn ProvideCredentials> = Arc::new(provider);
        shared.built.push((role.clone(), source, provider.clone()));
        Ok(provider)
    }
}

/// Table and stream names: the characters AWS allows, within its lengths.
/// The dead-letter policy and handler go together.
fn check_dead_letter(s: &Settings) -> Result<()> {
    match (s.error_policy.dead_letters(), s.dead_letter.is_some()) {
        (true, false) => Err(Error::config(
            "error_policy",
            "ErrorPolicy::RetryThenDeadLetter needs a dead-letter handler (ConsumerBuilder::dead_letter)",
        )),
        (false, true) => Err(Error::config(
            "dead_letter",
            "a dead-letter handler is only called under ErrorPolicy::RetryThenDeadLetter",
        )),
        _ => Ok(()),
    }
}

fn check_name(setting: &'static str, name: &str, min: usize, max: usize) -> Result<()> {
    if name.len() < min || name.len() > max {
        return Err(Error::config(
            setting,
            format!("{name:?} must be {min} to {max} characters long"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(Error::config(
            setting,
            format!("{name:?} contains {c:?}; use letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

/// CloudWatch namespaces: 1 to 255 printable ASCII characters, not `AWS/…`.
fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.is_empty() || namespace.len() > 255 {
        return Err(Error::config(
            "metrics_namespace",
            format!("{namespace:?} must be 1 to 255 characters long"),
        ));
    }
    if let Some(c) = namespace
        .chars()
        .find(|c| !c.is_ascii_graphic() && *c != ' ')
    {
        return Err(Error::config(
            "metrics_namespace",
            format!("{namespace:?} contains {c:?}; use printable ASCII"),
        ));
    }
    if namespace.starts_with(':') || namespace.starts_with("AWS/") {
        return Err(Error::config(
            "metrics_namespace",
            format!("{namespace:?} is reserved: it must not start with ':' or 'AWS/'"),
        ));
    }
    Ok(())
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        crate::random::next_u64() as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::credentials::Credentials;

    fn valid() -> ConsumerBuilder<Payload> {
        ConsumerBuilder::new()
            .app_name("app")
            .stream_name("stream")
            .region("us-east-1")
            .endpoint_url("http://127.0.0.1:1")
            .dynamodb_endpoint_url("http://127.0.0.1:2")
            .credentials(Credentials::new("a", "b"))
    }

    fn setting_of(b: ConsumerBuilder<Payload>) -> &'static str {
        match b.build() {
            Err(Error::Config { setting, .. }) => setting,
            Err(e) => panic!("expected a config error, got {e}"),
            Ok(_) => panic!("expected a config error, got a consumer"),
        }
    }

    #[test]
    fn several_streams_build_alone() {
        let multi = || {
            ConsumerBuilder::new()
                .app_name("app")
                .region("us-east-1")
                .endpoint_url("http://127.0.0.1:1")
                .credentials(Credentials::new("a", "b"))
                .streams(["orders", "clicks"])
        };
        assert!(multi().build().is_ok());
        assert_eq!(setting_of(multi().stream_name("x")), "streams");
        assert!(multi().enhanced_fan_out("c").build().is_ok());
        assert_eq!(setting_of(multi().streams(["a", "a"])), "streams");
        let none = ConsumerBuilder::new().app_name("app").region("us-east-1");
        assert_eq!(setting_of(none), "stream_name");
    }

    #[test]
    fn valid_settings_build() {
        assert!(valid().build().is_ok());
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        assert_eq!(setting_of(valid().app_name("")), "app_name");
        assert_eq!(setting_of(valid().app_name("has space")), "app_name");
        assert_eq!(setting_of(valid().stream_name("")), "stream_name");
        assert_eq!(
            setting_of(valid().stream_name("x".repeat(129))),
            "stream_name"
        );
        assert_eq!(
            setting_of(valid().batch_interval(Duration::ZERO)),
            "batch_interval"
        );
        assert_eq!(
            setting_of(valid().checkpoint_interval(Duration::ZERO)),
            "checkpoint_interval"
        );
        assert_eq!(
            setting_of(valid().idle_time_between_reads(Duration::ZERO)),
            "idle_time_between_reads"
        );
        assert_eq!(
            setting_of(valid().failover_time(Duration::ZERO)),
            "failover_time"
        );
        assert_eq!(
            setting_of(valid().max_records_per_read(0)),
            "max_records_per_read"
        );
        assert_eq!(
            setting_of(valid().max_records_per_read(10_001)),
            "max_records_per_read"
        );
        assert_eq!(setting_of(valid().buffer_bytes(0)), "buffer_bytes");
        assert_eq!(setting_of(valid().buffer_records(0)), "buffer_records");
        assert_eq!(setting_of(valid().max_attempts(0)), "max_attempts");
        assert_eq!(setting_of(valid().worker_id(" ")), "worker_id");
        assert_eq!(
            setting_of(valid().max_leases_per_worker(0)),
            "max_leases_per_worker"
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                setting_of(valid().max_throughput_per_worker(bad)),
                "max_throughput_per_worker",
                "{bad}"
            );
        }
        assert_eq!(setting_of(valid().endpoint_url("ftp://x")), "endpoint_url");
        assert_eq!(
            setting_of(valid().metrics_period(Duration::ZERO)),
            "metrics_period"
        );
        for bad in ["", "AWS/Kinesis", ":x", "tab\there"] {
            assert_eq!(
                setting_of(valid().metrics_namespace(bad)),
                "metrics_namespace",
                "{bad:?}"
            );
        }
        assert!(valid().metrics_namespace("My App/metrics").build().is_ok());
        assert_eq!(
            setting_of(
                valid()
                    .metrics_level(MetricsLevel::Summary)
                    .metrics_dimensions(&[])
            ),
            "metrics_dimensions"
        );
        assert_eq!(
            setting_of(valid().cloudwatch_endpoint_url("nonsense")),
            "cloudwatch_endpoint_url"
        );
        assert_eq!(
            setting_of(valid().dynamodb_endpoint_url("nonsense")),
            "dynamodb_endpoint_url"
        );
        assert_eq!(setting_of(valid().enhanced_fan_out("")), "enhanced_fan_out");
        assert_eq!(
            setting_of(valid().enhanced_fan_out("no spaces")),
            "enhanced_fan_out"
        );
        assert!(valid().enhanced_fan_out("my-app.v2").build().is_ok());
        let no_app = ConsumerBuilder::new().stream_name("s");
        assert_eq!(setting_of(no_app), "app_name");
    }

    #[test]
    fn one_client_configuration_with_per_service_endpoints() {
        let client = || {
            ClientConfig::new()
                .region("us-east-1")
                .endpoint_url("http://127.0.0.1:3")
                .credentials(Credentials::new("a", "b"))
        };
        let bare = || ConsumerBuilder::new().app_name("app").stream_name("stream");
        // The client's endpoint serves every service without its own.
        assert!(bare().client(client()).build().is_ok());
        assert!(
            bare()
                .client(client())
                .dynamodb_endpoint_url("http://127.0.0.1:4")
                .build()
                .is_ok()
        );
        // Errors name the setting that holds the bad value.
        assert_eq!(
            setting_of(bare().client(client().endpoint_url("nonsense"))),
            "endpoint_url"
        );
        assert_eq!(
            setting_of(bare().client(client()).dynamodb_endpoint_url("nonsense")),
            "dynamodb_endpoint_url"
        );
        assert_eq!(
            setting_of(bare().client(client().max_attempts(0))),
            "max_attempts"
        );
        // The setters change the client configuration; `client` replaces it.
        let b = valid().max_attempts(7).read_timeout(Duration::from_secs(4));
        assert_eq!(b.settings.client.max_attempts, 7);
        assert_eq!(b.settings.client.read_timeout, Duration::from_secs(4));
        let b = b.client(ClientConfig::new());
        assert_eq!(b.settings.client.max_attempts, 3);
        assert_eq!(b.settings.client.region, None);
    }

    #[test]
    fn more_invalid_names_intervals_and_timeouts() {
        assert_eq!(setting_of(valid().app_name("ab")), "app_name");
        assert_eq!(setting_of(valid().app_name("a".repeat(256))), "app_name");
        assert_eq!(setting_of(valid().app_name("tab\tle")), "app_name");
        assert_eq!(setting_of(valid().app_name("tablé")), "app_name");
        assert_eq!(setting_of(valid().stream_name("a/b")), "stream_name");
        assert_eq!(setting_of(valid().stream_name("a\0b")), "stream_name");
        assert_eq!(
            setting_of(valid().shard_sync_interval(Duration::ZERO)),
            "shard_sync_interval"
        );
        assert_eq!(
            setting_of(valid().failover_time(Duration::from_millis(299))),
            "failover_time"
        );
        assert_eq!(
            setting_of(valid().read_timeout(Duration::ZERO)),
            "read_timeout"
        );
        assert_eq!(
            setting_of(valid().connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(
            setting_of(
                valid()
                    .metrics_level(MetricsLevel::Summary)
                    .metrics_dimensions(&[])
            ),
            "metrics_dimensions"
        );
        assert_eq!(setting_of(valid().region("")), "region");
        // The longest names AWS allows are fine.
        assert!(valid().app_name("a".repeat(255)).build().is_ok());
        assert!(valid().stream_name("s".repeat(128)).build().is_ok());
    }

    #[test]
    fn assume_role_settings_are_checked_per_service() {
        use crate::aws::credentials::AssumeRole;
        let good = || AssumeRole::new("arn:aws:iam::123456789012:role/reader", "session-1");
        assert!(valid().assume_role(good()).build().is_ok());
        assert!(
            valid()
                .kinesis_assume_role(good().external_id("x"))
                .dynamodb_assume_role(good())
                .cloudwatch_assume_role(good())
                .build()
                .is_ok()
        );
        let bad = || AssumeRole::new("reader", "session-1");
        assert_eq!(setting_of(valid().assume_role(bad())), "assume_role");
        assert_eq!(
            setting_of(valid().kinesis_assume_role(bad())),
            "kinesis_assume_role"
        );
        assert_eq!(
            setting_of(valid().dynamodb_assume_role(bad())),
            "dynamodb_assume_role"
        );
        assert_eq!(
            setting_of(valid().cloudwatch_assume_role(bad())),
            "cloudwatch_assume_role"
        );
        // A per-service role overrides the shared one (which is not used).
        assert!(
            valid()
                .assume_role(bad())
                .kinesis_assume_role(good())
                .dynamodb_assume_role(good())
                .cloudwatch_assume_role(good())
                .build()
                .is_ok()
        );
    }

    #[test]
    fn stream_arn_instead_of_stream_name() {
        const ARN: &str = "arn:aws:kinesis:eu-west-1:111122223333:stream/orders";
        let no_name = || {
            let mut b = valid();
            b.settings.stream_name = None;
            b
        };
        assert!(no_name().stream_arn(ARN).build().is_ok());
        assert!(
            valid()
                .stream_name("orders")
                .stream_arn(ARN)
                .build()
                .is_ok()
        );
        assert_eq!(setting_of(valid().stream_arn(ARN)), "stream_arn");
        assert_eq!(setting_of(no_name().stream_arn("orders")), "stream_arn");
        assert_eq!(
            setting_of(no_name().stream_arn("arn:aws:kinesis:eu-west-1:1:stream/x")),
            "stream_arn"
        );
        assert_eq!(
            setting_of(
                no_name().stream_arn("arn:aws:kinesis:eu-west-1:111122223333:stream/bad name")
            ),
            "stream_arn"
        );
        assert_eq!(setting_of(no_name()), "stream_name");
    }

    #[test]
    fn initial_positions_parse() {
        use std::time::UNIX_EPOCH;
        assert_eq!(
            "trim-horizon".parse::<InitialPosition>().unwrap(),
            InitialPosition::TrimHorizon
        );
        assert_eq!(
            "TRIM_HORIZON".parse::<InitialPosition>().unwrap(),
            InitialPosition::TrimHorizon
        );
        assert_eq!(
            "latest".parse::<InitialPosition>().unwrap(),
            InitialPosition::Latest
        );
        assert_eq!(
            "2024-05-01T12:00:00.5+02:00"
                .parse::<InitialPosition>()
                .unwrap(),
            InitialPosition::AtTimestamp(UNIX_EPOCH + Duration::from_millis(1_714_557_600_500))
        );
        for bad in [
            "yesterday",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.5",
        ] {
            match bad.parse::<InitialPosition>() {
                Err(Error::Config { setting, .. }) => assert_eq!(setting, "initial_position"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn default_worker_ids_differ() {
        assert_ne!(default_worker_id(), default_worker_id());
    }
}
