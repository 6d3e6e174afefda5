//! A synchronous Amazon Kinesis Data Streams consumer, for programs that are
//! not async: shard leases and checkpoints in DynamoDB (in the KCL's table
//! layout), one blocking thread per shard, records handed to your code once
//! per batch interval, the way Spark Streaming's Kinesis integration does.
//!
//! ```no_run
//! use std::time::Duration;
//! use kinesis_consumer::{Consumer, InitialPosition};
//!
//! fn main() {
//!     if let Err(e) = consume() {
//!         eprintln!("error: {e}"); // the readable (Display) form
//!         std::process::exit(1);
//!     }
//! }
//!
//! fn consume() -> Result<(), Box<dyn std::error::Error>> {
//!     let consumer = Consumer::builder()
//!         .app_name("word-count")          // the lease table's name
//!         .stream_name("words")
//!         .initial_position(InitialPosition::TrimHorizon)
//!         .batch_interval(Duration::from_secs(2))
//!         .message_handler(|r| String::from_utf8_lossy(r.data()).into_owned())
//!         .build()?;
//!     // The crate installs no signal handler: Ctrl-C (and SIGTERM, with the
//!     // `ctrlc` crate's "termination" feature) stops it gracefully, the
//!     // batch in hand checkpointed and the leases released.
//!     let stop = consumer.shutdown_handle(); // clonable, for any thread
//!     ctrlc::set_handler(move || stop.shutdown())?;
//!     consumer.run(|batch| {
//!         for message in batch.messages() {
//!             let record = message.record(); // shard, sequence number, key, data
//!             println!("{} {}: {}", record.shard_id(), record.sequence_number(), message.value());
//!         }
//!         Ok(())         // Ok: the batch is checkpointed
//!     })?;
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees
//!
//! - At least once: a record is checkpointed only after the batch handler
//!   returned `Ok` for the batch that held it; after a crash, records after
//!   the last checkpoint are delivered again, nothing before it.
//! - In order per shard, and per partition key across a reshard: a child
//!   shard is read only once its parents were read to their end and
//!   checkpointed there.
//! - Checkpoint writes are conditional on still holding the lease; a worker
//!   that lost a lease never moves that shard's checkpoint.
//! - KPL aggregates are de-aggregated; checkpoints are kept per user record
//!   (sequence and sub-sequence number). A record that looks aggregated but
//!   is not valid is delivered whole, never dropped.
//!
//! # Processing models
//!
//! The batch handler above is Spark's model. For the KCL's:
//! [`ConsumerBuilder::checkpointing`] with [`Checkpointing::Manual`] and a
//! [`Checkpointer`] from [`Consumer::checkpointer`] for checkpoints the
//! application writes when its sink is durable; [`Batch::events`]
//! ([`ShardEvent`]) for shards gained, lost, ended and shut down;
//! [`Consumer::run_processors`] for one [`ShardProcessor`] per shard on its
//! own thread; [`ConsumerBuilder::error_policy`] ([`ErrorPolicy`]) for
//! retries and giving up one shard. [`ConsumerBuilder::enhanced_fan_out`]
//! reads through enhanced fan-out (HTTP/2 `SubscribeToShard`) instead of
//! polling.
//!
//! # Modules
//!
//! [`aws`] holds what reaching AWS takes ([`aws::ClientConfig`],
//! [`aws::credentials`]) and a small Kinesis client
//! ([`aws::kinesis::KinesisClient`]) for producers and tools, for example
//! to put records. [`kpl`] packs and unpacks KPL aggregates.
//! [`list_leases`] and [`inspect_leases`] read a consumer's lease table,
//! [`worker_heartbeats`] its workers' heartbeats. [`testing`] unit-tests
//! your batch handler or [`ShardProcessor`] without AWS or an emulator:
//! records and batches made by hand, and harnesses that play a shard's
//! life through your code with a checkpointer that records its writes.
//!
//! # Metrics
//!
//! With [`ConsumerBuilder::metrics_level`] set to `Summary` or `Detailed`,
//! the consumer records the KCL's metrics (`RecordsProcessed`,
//! `MillisBehindLatest`, `GetRecords.Success`, `LeasesHeld`, …), publishes
//! them to CloudWatch once per [`ConsumerBuilder::metrics_period`] as
//! statistic sets, and shows them in-process through
//! [`Consumer::metrics`] ([`MetricsHandle::snapshot`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Every example in the docs (and the README's) must compile without a
// warning: users copy them.
#![doc(test(attr(deny(warnings))))]
#![warn(unreachable_pub)]

pub mod aws;
mod config;
mod error;
pub mod kpl;
mod lease;
mod metrics;
mod random;
mod record;
mod spares;
mod stream;
mod sync;
pub mod testing;
mod time;
mod worker;

/// Hooks for the fuzz targets in `fuzz/` (feature `fuzzing`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz_hooks.rs"]
pub mod __fuzz;

/// Internals for this crate's integration tests and benchmarks; not a
/// stable API.
#[doc(hidden)]
#[path = "test_support.rs"]
pub mod __test_support;

// The README's Rust blocks are compiled as doc tests (`cargo test --doc`):
// its complete program must keep building against the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

// The same for the guide pages under docs/, one item per page.
macro_rules! guide_doctests {
    ($($name:ident = $path:literal),* $(,)?) => {
        $(
            #[cfg(doctest)]
            #[doc = include_str!($path)]
            pub struct $name;
        )*
    };
}
guide_doctests! {
    CredentialsDoctests = "../docs/credentials.md",
    DeployDoctests = "../docs/deploy.md",
    DevelopmentDoctests = "../docs/development.md",
    FanOutDoctests = "../docs/fan-out.md",
    LeaseLifecycleDoctests = "../docs/lease-lifecycle.md",
    LocalDoctests = "../docs/local.md",
    ManyWorkersDoctests = "../docs/many-workers.md",
    MultiStreamDoctests = "../docs/multi-stream.md",
    MetricsDoctests = "../docs/metrics.md",
    MigratingDoctests = "../docs/migrating-from-kcl.md",
    ObservabilityDoctests = "../docs/observability.md",
    OperationsDoctests = "../docs/operations.md",
    PoisonRecordsDoctests = "../docs/poison-records.md",
    ProcessingDoctests = "../docs/processing.md",
    SettingsDoctests = "../docs/settings.md",
    TestingDoctests = "../docs/testing.md",
}

pub use config::{ConsumerBuilder, InitialPosition};
pub use error::{Error, HandlerResult, Result, ServiceError, TransportKind};
pub use lease::StreamsHandle;
pub use lease::{
    BalanceBy, BillingMode, Checkpoint, Coordination, Lease, LeaseStanding, ResetChange,
    ResetReport, ResetTo, Standing, export_checkpoints, import_checkpoints, inspect_leases,
    list_leases, reset_positions, reset_stream_positions, worker_heartbeats,
};
pub use metrics::{
    ConsumerStatus, LeaseLoad, MetricSample, MetricUnit, MetricsDimension, MetricsHandle,
    MetricsLevel, MetricsServer, PublishStats, RecentError, ShardStatus, Statistics,
};
pub use record::{ExtendedSequenceNumber, Payload, Record, SequenceNumber};
pub use stream::{StreamConfig, StreamIdentifier};
pub use worker::batch::{Batch, Message, ShardBatch, ShardEvent};
pub use worker::checkpointer::Checkpointer;
pub use worker::processing::{Checkpointing, ErrorPolicy};
pub use worker::processor::{InitializationInput, ShardProcessor};
pub use worker::{Consumer, ShutdownHandle};
