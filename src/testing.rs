//! Unit tests for your own batch handler or [`ShardProcessor`]: records and
//! batches made by hand, and harnesses that play a shard's life through
//! your code with a [`Checkpointer`] that records what it was asked to
//! write. No AWS, no emulator, no thread, no wait: a plain `cargo test`.
//!
//! The harnesses' checkpointer is the consumer's own [`Checkpointer`], with
//! its writes kept in memory instead of sent to the lease table: a call
//! the consumer would refuse (a position not handed on, not accepted yet
//! or behind the shard's checkpoint, a shard whose lease is gone) is
//! refused here with the same [`Error`] and the same text. A processor
//! that returns from [`shard_ended`](ShardProcessor::shard_ended) without
//! checkpointing the end under manual checkpoints fails as in production.
//! Failures go through the [`ErrorPolicy`] as in production (retries
//! without the waits).
//!
//! - [`RecordBuilder`], [`record`], [`kpl_records`]: records as the
//!   consumer delivers them.
//! - [`message`], [`shard_batch`], [`BatchBuilder`]: what the batch
//!   handler and processors receive, events included.
//! - [`ProcessorHarness`]: one [`ShardProcessor`] through initialize,
//!   process, and lease lost, shard ended or shutdown requested.
//! - [`BatchHarness`]: a batch handler over scripted batches, shards
//!   gained, lost, ended and handed off, and the last batch at shutdown.
//!
//! Always compiled, with no feature to turn on: it adds no dependency, and
//! what of it your program does not call is not in your binary. Your
//! tests use it through the crate you already depend on.
//!
//! # A processor
//!
//! ```
//! use kinesis_consumer::testing::{ProcessorHarness, checkpoint_at};
//! use kinesis_consumer::{Checkpoint, Checkpointer, HandlerResult, Payload, ShardBatch, ShardProcessor};
//!
//! #[derive(Default)]
//! struct Count(usize);
//!
//! impl ShardProcessor<Payload> for Count {
//!     fn process(&mut self, records: ShardBatch<Payload>, c: &Checkpointer) -> HandlerResult {
//!         self.0 += records.messages().len();
//!         c.checkpoint(records.shard_id())?;
//!         Ok(())
//!     }
//!     fn shard_ended(&mut self, c: &Checkpointer) -> HandlerResult {
//!         Ok(c.checkpoint("shardId-000000000000")?)
//!     }
//! }
//!
//! let mut harness = ProcessorHarness::new(Count::default())
//!     .checkpointing(kinesis_consumer::Checkpointing::Manual);
//! harness.initialize(Checkpoint::TrimHorizon)?;
//! harness.process_data(["a", "b"])?;
//! harness.shard_ended()?;
//! assert_eq!(harness.processor().0, 2);
//! assert_eq!(harness.checkpoints(), [checkpoint_at("2", 0), Checkpoint::ShardEnd]);
//! # Ok::<(), kinesis_consumer::Error>(())
//! ```
//!
//! # A batch handler
//!
//! ```
//! use kinesis_consumer::testing::{BatchHarness, checkpoint_at};
//! use kinesis_consumer::{Batch, HandlerResult, Payload};
//!
//! let mut seen = Vec::new();
//! let mut handler = |batch: Batch<Payload>| -> HandlerResult {
//!     seen.extend(batch.messages().map(|m| m.value().to_vec()));
//!     Ok(())
//! };
//! let mut harness = BatchHarness::new();
//! let records = harness.records("shardId-0", ["a", "b"]);
//! harness.handle(records, &mut handler)?;
//! harness.shutdown(&mut handler)?;
//! assert_eq!(harness.checkpoints(), [("shardId-0".to_owned(), checkpoint_at("2", 0))]);
//! assert_eq!(seen, [b"a".to_vec(), b"b".to_vec()]);
//! # Ok::<(), kinesis_consumer::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::error::{Error, HandlerResult, Result};
use crate::lease::{Checkpoint, Holding};
use crate::metrics::Metrics;
use crate::record::{ExtendedSequenceNumber, Payload, Record, SequenceNumber, Shared, Span};
use crate::sync::lock;
use crate::worker::MessageHandler;
use crate::worker::batch::{Batch, GoesBack, Message, ShardBatch, ShardEvent};
use crate::worker::checkpointer::{CheckpointStore, Checkpointer};
use crate::worker::processing::{Called, Checkpointing, ErrorPolicy, KeptShard, call_with_policy};
use crate::worker::processor::{InitializationInput, ShardProcessor, end_checkpointed};

/// The shard id records and harnesses use unless told otherwise.
pub const DEFAULT_SHARD_ID: &str = "shardId-000000000000";

/// The partition key records get unless told otherwise.
pub const DEFAULT_PARTITION_KEY: &str = "partition-key";

/// A sequence number from its text, for positions made by hand.
///
/// # Panics
///
/// When `text` is not a decimal number of at most 129 digits.
fn sequence(text: &str) -> SequenceNumber {
    SequenceNumber::parse(text)
        .unwrap_or_else(|| panic!("{text:?} is not a sequence number (decimal digits)"))
}

/// The position of a user record: `sequence_number` and, for a record out
/// of a KPL aggregate, its index there (0 otherwise).
///
/// ```
/// let p = kinesis_consumer::testing::position("12", 3);
/// assert_eq!((p.sequence_number.as_str(), p.sub_sequence_number), ("12", 3));
/// ```
///
/// # Panics
///
/// When `sequence_number` is not a decimal number of at most 129 digits.
pub fn position(sequence_number: &str, sub_sequence_number: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber {
        sequence_number: sequence(sequence_number),
        sub_sequence_number,
    }
}

/// The checkpoint at a user record ([`Checkpoint::At`]), to compare with
/// what a harness recorded.
///
/// ```
/// use kinesis_consumer::{Checkpoint, testing};
/// assert_eq!(testing::checkpoint_at("7", 0), Checkpoint::At(testing::position("7", 0)));
/// ```
///
/// # Panics
///
/// When `sequence_number` is not a decimal number of at most 129 digits.
pub fn checkpoint_at(sequence_number: &str, sub_sequence_number: u64) -> Checkpoint {
    Checkpoint::At(position(sequence_number, sub_sequence_number))
}

/// Makes a [`Record`] as the consumer delivers it, field by field.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use kinesis_consumer::testing::RecordBuilder;
///
/// let arrived = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let record = RecordBuilder::new("49590338271490256608559692538361571095921575989136588898")
///     .shard_id("shardId-000000000003")
///     .partition_key("user-42")
///     .explicit_hash_key("170141183460469231731687303715884105728")
///     .sub_sequence_number(2)
///     .aggregated(true)
///     .arrival(arrived)
///     .data("hello")
///     .build();
/// assert_eq!(record.shard_id(), "shardId-000000000003");
/// assert_eq!(record.partition_key(), "user-42");
/// assert_eq!(record.sub_sequence_number(), 2);
/// assert!(record.is_aggregated());
/// assert_eq!(record.approximate_arrival_timestamp(), Some(arrived));
/// assert_eq!(record.data(), b"hello");
/// ```
#[derive(Clone, Debug)]
pub struct RecordBuilder {
    shard_id: String,
    position: ExtendedSequenceNumber,
    aggregated: bool,
    partition_key: String,
    explicit_hash_key: Option<String>,
    arrival: Option<SystemTime>,
    data: Vec<u8>,
}

impl RecordBuilder {
    /// A record with this sequence number (a decimal string, compared as
    /// an integer: "9" comes before "10").
    ///
    /// # Panics
    ///
    /// When `sequence_number` is not a decimal number of at most 129
    /// digits.
    pub fn new(sequence_number: &str) -> RecordBuilder {
        RecordBuilder {
            shard_id: DEFAULT_SHARD_ID.to_owned(),
            position: position(sequence_number, 0),
            aggregated: false,
            partition_key: DEFAULT_PARTITION_KEY.to_owned(),
            explicit_hash_key: None,
            arrival: None,
            data: Vec::new(),
        }
    }

    /// The shard it was read from. Defaults to [`DEFAULT_SHARD_ID`].
    pub fn shard_id(mut self, shard_id: &str) -> RecordBuilder {
        self.shard_id = shard_id.to_owned();
        self
    }

    /// Its index inside a KPL aggregate (see also
    /// [`aggregated`](Self::aggregated) and [`kpl_records`]). Defaults to 0.
    pub fn sub_sequence_number(mut self, sub_sequence_number: u64) -> RecordBuilder {
        self.position.sub_sequence_number = sub_sequence_number;
        self
    }

    /// Whether it came out of a KPL aggregate. Defaults to false.
    pub fn aggregated(mut self, aggregated: bool) -> RecordBuilder {
        self.aggregated = aggregated;
        self
    }

    /// Its partition key. Defaults to [`DEFAULT_PARTITION_KEY`].
    pub fn partition_key(mut self, partition_key: &str) -> RecordBuilder {
        self.partition_key = partition_key.to_owned();
        self
    }

    /// The explicit hash key the producer set. Defaults to none.
    pub fn explicit_hash_key(mut self, explicit_hash_key: &str) -> RecordBuilder {
        self.explicit_hash_key = Some(explicit_hash_key.to_owned());
        self
    }

    /// When Kinesis accepted it. Defaults to none.
    pub fn arrival(mut self, arrival: SystemTime) -> RecordBuilder {
        self.arrival = Some(arrival);
        self
    }

    /// Its payload. Defaults to empty.
    pub fn data(mut self, data: impl AsRef<[u8]>) -> RecordBuilder {
        self.data = data.as_ref().to_vec();
        self
    }

    /// The record.
    pub fn build(self) -> Record {
        // The buffers a GetRecords reply's records share: the keys in
        // `text`, but in `bytes` with the data for a KPL user record (as
        // de-aggregation leaves them).
        let (mut bytes, mut text) = (Vec::new(), String::new());
        let put = |buffer: &mut Vec<u8>, part: &[u8]| {
            let start = buffer.len() as u32;
            buffer.extend_from_slice(part);
            Span {
                start,
                end: buffer.len() as u32,
            }
        };
        let mut put_key = |key: &str| match self.aggregated {
            true => put(&mut bytes, key.as_bytes()),
            false => {
                let start = text.len() as u32;
                text.push_str(key);
                Span {
                    start,
                    end: text.len() as u32,
                }
            }
        };
        let partition_key = put_key(&self.partition_key);
        let explicit_hash_key = self.explicit_hash_key.as_deref().map(&mut put_key);
        let data = put(&mut bytes, &self.data);
        Record {
            shared: Arc::new(Shared {
                shard_id: Arc::from(self.shard_id.as_str()),
                bytes,
                text,
                goes_back: None,
            }),
            position: self.position,
            aggregated: self.aggregated,
            partition_key,
            explicit_hash_key,
            arrival: self.arrival,
            data,
        }
    }
}

/// A plain record of `shard_id` at `sequence_number` holding `data`; see
/// [`RecordBuilder`] for the other fields.
///
/// ```
/// let r = kinesis_consumer::testing::record("shardId-1", "5", "hi");
/// assert_eq!((r.shard_id(), r.sequence_number().as_str(), r.data()), ("shardId-1", "5", &b"hi"[..]));
/// ```
///
/// # Panics
///
/// When `sequence_number` is not a decimal number of at most 129 digits.
pub fn record(shard_id: &str, sequence_number: &str, data: impl AsRef<[u8]>) -> Record {
    RecordBuilder::new(sequence_number)
        .shard_id(shard_id)
        .data(data)
        .build()
}

/// The user records the consumer delivers for one Kinesis record holding a
/// KPL aggregate of `user_records` (partition key, data), put at
/// `sequence_number` on `shard_id`: aggregated by [`kpl::Aggregator`] as
/// the KPL does, then decoded and de-aggregated by the consumer's own
/// code (its GetRecords decoder, then its readers' de-aggregation). They share the sequence number and have sub-sequence
/// numbers 0, 1, …; checkpoint them with
/// [`Checkpointer::checkpoint_record`].
///
/// ```
/// let records = kinesis_consumer::testing::kpl_records("shardId-0", "100", [("k1", "a"), ("k2", "b")]);
/// assert_eq!(records.len(), 2);
/// assert!(records.iter().all(|r| r.is_aggregated() && r.sequence_number().as_str() == "100"));
/// assert_eq!((records[1].sub_sequence_number(), records[1].partition_key(), records[1].data()), (1, "k2", &b"b"[..]));
/// ```
///
/// [`kpl::Aggregator`]: crate::kpl::Aggregator
///
/// # Panics
///
/// When `sequence_number` is not a decimal number, `user_records` is
/// empty, a partition key is not valid (1 to 256 characters), or the user
/// records do not fit one aggregate (1 MiB).
pub fn kpl_records<K, D>(
    shard_id: &str,
    sequence_number: &str,
    user_records: impl IntoIterator<Item = (K, D)>,
) -> Vec<Record>
where
    K: AsRef<str>,
    D: AsRef<[u8]>,
{
    use base64::Engine;
    sequence(sequence_number);
    let mut aggregator = crate::kpl::Aggregator::new();
    for (key, data) in user_records {
        let full = aggregator
            .add(key.as_ref(), None, data.as_ref())
            .unwrap_or_else(|e| panic!("cannot aggregate the user records: {e}"));
        assert!(full.is_none(), "the user records do not fit one aggregate");
    }
    let aggregate = aggregator.flush().expect("no user records to aggregate");
    let reply = serde_json::json!({
        "Records": [{
            "SequenceNumber": sequence_number,
            "PartitionKey": aggregate.partition_key,
            "Data": base64::engine::general_purpose::STANDARD.encode(&aggregate.data),
        }],
        "NextShardIterator": "iterator",
        "MillisBehindLatest": 0,
    });
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    let (records, _) = crate::aws::get_records::decode_reply(&body, &Arc::from(shard_id), None)
        .unwrap_or_else(|e| panic!("the aggregate did not decode: {e}"));
    let mut users = Vec::new();
    for record in records {
        crate::kpl::user_records_of(&record, |user| users.push(user))
            .unwrap_or_else(|e| panic!("the aggregate did not de-aggregate: {e}"));
    }
    users
}

/// A [`Message`]: `record` with the value the message handler made of it.
///
/// ```
/// let m = kinesis_consumer::testing::message(kinesis_consumer::testing::record("s", "1", "x"), 7);
/// assert_eq!(*m.value(), 7);
/// ```
pub fn message<T>(record: Record, value: T) -> Message<T> {
    Message { record, value }
}

/// The part of one shard in a batch (what [`ShardProcessor::process`] is
/// given): `messages`, in the order given.
///
/// ```
/// use kinesis_consumer::testing::{message, record, shard_batch};
/// let part = shard_batch("shardId-0", [message(record("shardId-0", "1", "a"), "a")]);
/// assert_eq!((part.shard_id(), part.messages().len(), part.shard_ended()), ("shardId-0", 1, false));
/// ```
pub fn shard_batch<T>(
    shard_id: &str,
    messages: impl IntoIterator<Item = Message<T>>,
) -> ShardBatch<T> {
    ShardBatch {
        shard_id: Arc::from(shard_id),
        messages: messages.into_iter().collect(),
        millis_behind_latest: None,
        shard_ended: false,
        epoch: 0,
        goes_back: GoesBack::nowhere(),
    }
}

/// Makes a [`Batch`] by hand: messages grouped by their records' shards
/// (in the order the shards first appear), shard ends, and events.
///
/// ```
/// use kinesis_consumer::testing::{BatchBuilder, record};
/// use kinesis_consumer::{Checkpoint, ShardEvent};
///
/// let batch = BatchBuilder::new()
///     .event(ShardEvent::Gained { shard_id: "s-1".into(), from: Checkpoint::TrimHorizon })
///     .records([record("s-1", "1", "a"), record("s-2", "1", "b"), record("s-1", "2", "c")])
///     .shard_ended("s-2")
///     .build();
/// assert_eq!(batch.len(), 3);
/// assert_eq!(batch.shards()[0].messages().len(), 2);
/// assert!(batch.shards()[1].shard_ended());
/// assert_eq!(batch.events()[1], ShardEvent::Ended { shard_id: "s-2".into() });
/// ```
#[derive(Clone, Debug)]
pub struct BatchBuilder<T> {
    batch: Batch<T>,
}

impl<T> Default for BatchBuilder<T> {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

impl<T> BatchBuilder<T> {
    /// An empty batch: no records, no events.
    pub fn new() -> BatchBuilder<T> {
        BatchBuilder {
            batch: Batch {
                time: SystemTime::now(),
                shards: Vec::new(),
                events: Vec::new(),
                last: false,
            },
        }
    }

    fn part(&mut self, shard_id: &str) -> &mut ShardBatch<T> {
        let shards = &mut self.batch.shards;
        let index = match shards.iter().position(|s| &*s.shard_id == shard_id) {
            Some(index) => index,
            None => {
                shards.push(shard_batch(shard_id, []));
                shards.len() - 1
            }
        };
        &mut shards[index]
    }

    /// Adds `record` with the value made of it to its shard's part.
    pub fn message(mut self, record: Record, value: T) -> BatchBuilder<T> {
        let shard_id = record.shard_id().to_owned();
        self.part(&shard_id).messages.push(message(record, value));
        self
    }

    /// Adds records, each with the value `handler` makes of it (as the
    /// consumer's message handler does).
    pub fn records_with(
        mut self,
        records: impl IntoIterator<Item = Record>,
        handler: impl Fn(&Record) -> T,
    ) -> BatchBuilder<T> {
        for record in records {
            let value = handler(&record);
            self = self.message(record, value);
        }
        self
    }

    /// Marks `shard_id`'s part as the end of the shard (adding an empty
    /// part if it has none) and adds its [`ShardEvent::Ended`], as the
    /// consumer does when it reads a closed shard's end.
    pub fn shard_ended(mut self, shard_id: &str) -> BatchBuilder<T> {
        self.part(shard_id).shard_ended = true;
        self.event(ShardEvent::Ended {
            shard_id: shard_id.to_owned(),
        })
    }

    /// Sets how far behind the tip `shard_id`'s last read was (adding an
    /// empty part if it has none). Defaults to none.
    pub fn millis_behind_latest(mut self, shard_id: &str, millis: u64) -> BatchBuilder<T> {
        self.part(shard_id).millis_behind_latest = Some(millis);
        self
    }

    /// Adds an event, after those added before.
    pub fn event(mut self, event: ShardEvent) -> BatchBuilder<T> {
        self.batch.events.push(event);
        self
    }

    /// The batch time. Defaults to when [`new`](Self::new) was called.
    pub fn time(mut self, time: SystemTime) -> BatchBuilder<T> {
        self.batch.time = time;
        self
    }

    /// Makes it the last batch, the one handed on at shutdown
    /// ([`Batch::is_last`]). Defaults to false.
    pub fn last(mut self, last: bool) -> BatchBuilder<T> {
        self.batch.last = last;
        self
    }

    /// The batch.
    pub fn build(self) -> Batch<T> {
        self.batch
    }
}

impl BatchBuilder<Payload> {
    /// Adds records, their values their payloads (what the default message
    /// handler makes).
    pub fn records(self, records: impl IntoIterator<Item = Record>) -> BatchBuilder<Payload> {
        self.records_with(records, Record::payload)
    }
}

/// The store behind the harnesses' checkpointer: which leases are held,
/// and every write and refusal, in order.
#[derive(Default)]
struct Recording {
    state: Mutex<RecordingState>,
}

#[derive(Default)]
struct RecordingState {
    /// Each shard's lease: its epoch and where it stands.
    leases: HashMap<String, (u64, Holding)>,
    written: Vec<(String, Checkpoint)>,
    refused: Vec<String>,
}

impl Recording {
    fn set(&self, shard_id: &str, epoch: u64, holding: Holding) {
        lock(&self.state)
            .leases
            .insert(shard_id.to_owned(), (epoch, holding));
    }

    fn written(&self) -> Vec<(String, Checkpoint)> {
        lock(&self.state).written.clone()
    }

    fn refused_calls(&self) -> Vec<String> {
        lock(&self.state).refused.clone()
    }
}

impl CheckpointStore for Recording {
    fn holding(&self, shard_id: &str, epoch: u64) -> Holding {
        match lock(&self.state).leases.get(shard_id) {
            Some((held, holding)) if *held == epoch => *holding,
            _ => Holding::Gone,
        }
    }

    fn write(&self, shard_id: &str, epoch: u64, checkpoint: &Checkpoint) -> Result<bool> {
        if self.holding(shard_id, epoch) == Holding::Gone {
            return Ok(false);
        }
        lock(&self.state)
            .written
            .push((shard_id.to_owned(), checkpoint.clone()));
        Ok(true)
    }

    fn refused(&self, error: &Error) {
        lock(&self.state).refused.push(error.to_string());
    }
}

/// The sequence number after `checkpoint`'s, when it is a record's and
/// fits a `u128`.
fn after(checkpoint: &Checkpoint) -> Option<u128> {
    match checkpoint {
        Checkpoint::At(p) => p
            .sequence_number
            .as_str()
            .parse::<u128>()
            .ok()?
            .checked_add(1),
        _ => None,
    }
}

/// `policy` without its waits between retries.
fn without_waits(policy: ErrorPolicy) -> ErrorPolicy {
    match policy {
        ErrorPolicy::Stop => ErrorPolicy::Stop,
        ErrorPolicy::Retry { retries, .. } => ErrorPolicy::Retry {
            retries,
            backoff: Duration::ZERO,
        },
        ErrorPolicy::RetryThenReleaseShard { retries, .. } => ErrorPolicy::RetryThenReleaseShard {
            retries,
            backoff: Duration::ZERO,
        },
        ErrorPolicy::RetryThenDeadLetter { retries, .. } => ErrorPolicy::RetryThenDeadLetter {
            retries,
            backoff: Duration::ZERO,
        },
    }
}

/// Where a harnessed processor is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    New,
    Running,
    Over,
}

/// The lease epoch of a harnessed processor's shard.
const EPOCH: u64 = 1;

/// Drives one [`ShardProcessor`] through a scripted life, as
/// [`Consumer::run_processors`](crate::Consumer::run_processors) would:
/// [`initialize`](Self::initialize), then [`process`](Self::process) any
/// number of times, then one of [`lease_lost`](Self::lease_lost),
/// [`shard_ended`](Self::shard_ended) or
/// [`shutdown_requested`](Self::shutdown_requested). Calls run on the
/// test's thread, one at a time, in that order.
///
/// The processor gets a [`Checkpointer`] that makes the consumer's checks
/// and keeps what it writes ([`checkpoints`](Self::checkpoints)) and what
/// it refuses ([`refused`](Self::refused)). With automatic checkpoints
/// (the default), what each call accepted is checkpointed right after it
/// (as with a checkpoint interval that has always passed), and the end of
/// the shard after `shard_ended`.
///
/// A failing call is handled by the [`ErrorPolicy`] as in production,
/// retries without waits: under [`ErrorPolicy::Stop`] and
/// [`ErrorPolicy::Retry`] the consumer would stop, so the processor gets
/// its last call, `shutdown_requested` (after a failing `initialize` or
/// `process`); under [`ErrorPolicy::RetryThenReleaseShard`] the shard
/// alone is given up, the processor gets `lease_lost`. Either way what was
/// accepted before is checkpointed (automatic mode), the life is over,
/// and the call returns the failure (`Error::Handler` or
/// `Error::HandlerPanicked`; `run_processors` itself would return it
/// under the first two policies and go on under the third).
///
/// The script is yours to get right: a call out of order (such as
/// `process` before `initialize`, or anything after the end) panics.
///
/// ```
/// use kinesis_consumer::testing::ProcessorHarness;
/// use kinesis_consumer::{Checkpoint, Checkpointer, Checkpointing, HandlerResult, Payload, ShardBatch, ShardProcessor};
///
/// /// Forgets to checkpoint the end of its shard.
/// struct Forgetful;
/// impl ShardProcessor<Payload> for Forgetful {
///     fn process(&mut self, _: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult { Ok(()) }
/// }
///
/// let mut harness = ProcessorHarness::new(Forgetful).checkpointing(Checkpointing::Manual);
/// harness.initialize(Checkpoint::TrimHorizon).unwrap();
/// harness.process_data(["a"]).unwrap();
/// let error = harness.shard_ended().unwrap_err();
/// assert!(error.to_string().contains("returned without checkpointing the end of the shard"));
/// assert!(harness.checkpoints().is_empty());
/// ```
pub struct ProcessorHarness<T, P> {
    shard_id: Arc<str>,
    processor: P,
    handler: MessageHandler<T>,
    checkpointing: Checkpointing,
    policy: ErrorPolicy,
    store: Arc<Recording>,
    /// The consumer's side of the checkpointer (not pinned).
    base: Checkpointer,
    /// The processor's.
    checkpointer: Checkpointer,
    stage: Stage,
    /// Accepted, not yet written (automatic mode).
    pending: Option<Checkpoint>,
    /// The sequence number [`records`](Self::records) gives next.
    next_sequence: u128,
}

impl<T, P> std::fmt::Debug for ProcessorHarness<T, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorHarness")
            .field("shard_id", &self.shard_id)
            .field("checkpointing", &self.checkpointing)
            .field("error_policy", &self.policy)
            .field("checkpoints", &self.store.written())
            .finish_non_exhaustive()
    }
}

impl<P: ShardProcessor<Payload>> ProcessorHarness<Payload, P> {
    /// A harness for `processor`, its records' values their payloads (the
    /// default message handler's), its shard [`DEFAULT_SHARD_ID`].
    pub fn new(processor: P) -> Self {
        ProcessorHarness::with_message_handler(processor, Record::payload)
    }
}

impl<T, P: ShardProcessor<T>> ProcessorHarness<T, P> {
    /// A harness for `processor`, its records' values made by `handler`
    /// (as the consumer's [`message_handler`](crate::ConsumerBuilder::message_handler)).
    pub fn with_message_handler(
        processor: P,
        handler: impl Fn(&Record) -> T + Send + Sync + 'static,
    ) -> Self {
        let store = Arc::new(Recording::default());
        let base = Checkpointer::with_store(store.clone(), Metrics::default());
        let shard_id: Arc<str> = Arc::from(DEFAULT_SHARD_ID);
        ProcessorHarness {
            checkpointer: base.pinned(&shard_id, EPOCH),
            shard_id,
            processor,
            handler: Arc::new(handler),
            checkpointing: Checkpointing::default(),
            policy: ErrorPolicy::default(),
            store,
            base,
            stage: Stage::New,
            pending: None,
            next_sequence: 1,
        }
    }

    /// The shard the processor is made for. Defaults to
    /// [`DEFAULT_SHARD_ID`].
    ///
    /// # Panics
    ///
    /// After [`initialize`](Self::initialize).
    pub fn shard_id(mut self, shard_id: &str) -> Self {
        assert_eq!(self.stage, Stage::New, "set the shard before initialize");
        self.shard_id = Arc::from(shard_id);
        self.checkpointer = self.base.pinned(&self.shard_id, EPOCH);
        self
    }

    /// Who checkpoints, as [`ConsumerBuilder::checkpointing`](crate::ConsumerBuilder::checkpointing).
    /// Defaults to [`Checkpointing::Automatic`].
    pub fn checkpointing(mut self, checkpointing: Checkpointing) -> Self {
        self.checkpointing = checkpointing;
        self
    }

    /// What a failure does, as [`ConsumerBuilder::error_policy`](crate::ConsumerBuilder::error_policy)
    /// (without waiting between retries). Defaults to [`ErrorPolicy::Stop`].
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The processor.
    pub fn processor(&self) -> &P {
        &self.processor
    }

    /// The processor, to change or look into.
    pub fn processor_mut(&mut self) -> &mut P {
        &mut self.processor
    }

    /// Takes the processor.
    pub fn into_processor(self) -> P {
        self.processor
    }

    /// The processor's checkpointer (the one its calls are given), for
    /// checkpoints from elsewhere, such as a flusher thread.
    pub fn checkpointer(&self) -> &Checkpointer {
        &self.checkpointer
    }

    /// Every checkpoint written, in order: what the lease table would have
    /// seen.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.store.written().into_iter().map(|(_, c)| c).collect()
    }

    /// The shard's checkpoint: the last written, if any.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoints().pop()
    }

    /// The application's checkpoint calls refused (`Error::LeaseLost`,
    /// `Error::InvalidCheckpoint`), as their error texts, in order.
    pub fn refused(&self) -> Vec<String> {
        self.store.refused_calls()
    }

    /// Records of the shard with the next sequence numbers (1, 2, … over
    /// the harness's life), holding `data`.
    pub fn records<D: AsRef<[u8]>>(&mut self, data: impl IntoIterator<Item = D>) -> Vec<Record> {
        data.into_iter()
            .map(|data| {
                let record = record(&self.shard_id, &self.next_sequence.to_string(), data);
                self.next_sequence += 1;
                record
            })
            .collect()
    }

    fn expect(&self, stage: Stage, call: &str) {
        let now = match self.stage {
            Stage::New => "the processor is not initialized",
            Stage::Running => "the processor is running",
            Stage::Over => "the processor's life is over",
        };
        assert_eq!(self.stage, stage, "{call} is out of order: {now}");
    }

    /// Calls the processor under the error policy.
    fn call(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut P, &Checkpointer) -> HandlerResult,
    ) -> Result<()> {
        let what = format!("the processor of shard {} ({what})", self.shard_id);
        let (processor, checkpointer) = (&mut self.processor, &self.checkpointer);
        let policy = without_waits(self.policy);
        call_with_policy(&policy, || false, &what, |_| call(processor, checkpointer))
            .and_then(Called::done)
    }

    fn automatic(&self) -> bool {
        self.checkpointing == Checkpointing::Automatic
    }

    fn gives_up_shard_alone(&self) -> bool {
        matches!(self.policy, ErrorPolicy::RetryThenReleaseShard { .. })
    }

    /// Writes what was accepted and not written yet (automatic mode).
    fn save_last(&mut self) {
        if let Some(checkpoint) = self.pending.take() {
            if let Err(e) = self.base.write(&self.shard_id, EPOCH, &checkpoint) {
                log::info!("not checkpointing {}: {e}", self.shard_id);
            }
        }
    }

    /// The processor's life is over: its checkpointer writes nothing more.
    fn close(&mut self) {
        self.base.closed(&self.shard_id, EPOCH);
        self.store.set(&self.shard_id, EPOCH, Holding::Gone);
        self.stage = Stage::Over;
    }

    /// What the consumer does after `initialize` or `process` failed.
    fn failed(&mut self, error: Error) -> Error {
        if self.gives_up_shard_alone() {
            self.processor.lease_lost();
        } else if let Err(e) = self.call("shutdown_requested", |p, c| p.shutdown_requested(c)) {
            log::warn!("shutting down the processor of {}: {e}", self.shard_id);
        }
        self.save_last();
        self.close();
        error
    }

    /// The shard was gained, to be read from `from`: calls
    /// [`ShardProcessor::initialize_with`] (by default
    /// [`ShardProcessor::initialize`]).
    ///
    /// # Panics
    ///
    /// When called twice.
    pub fn initialize(&mut self, from: Checkpoint) -> Result<()> {
        self.expect(Stage::New, "initialize");
        self.store.set(&self.shard_id, EPOCH, Holding::Current);
        self.base.gained(&self.shard_id, EPOCH, &from);
        self.stage = Stage::Running;
        if let Some(next) = after(&from) {
            self.next_sequence = self.next_sequence.max(next);
        }
        let input = InitializationInput::new(&self.shard_id, from);
        match self.call("initialize", |p, _| p.initialize_with(&input)) {
            Ok(()) => Ok(()),
            Err(error) => Err(self.failed(error)),
        }
    }

    /// Hands `records` (one read's worth, in sequence order) to
    /// [`ShardProcessor::process`]; an empty list calls nothing, as in
    /// production. Once it returns `Ok` they are accepted (and, in
    /// automatic mode, checkpointed).
    ///
    /// # Panics
    ///
    /// Before `initialize`, after the end, or when a record is of another
    /// shard.
    pub fn process(&mut self, records: impl IntoIterator<Item = Record>) -> Result<()> {
        self.expect(Stage::Running, "process");
        let records: Vec<Record> = records.into_iter().collect();
        for record in &records {
            assert_eq!(
                record.shard_id(),
                &*self.shard_id,
                "a record of another shard handed to the processor of {}",
                self.shard_id
            );
            if let Ok(n) = record.sequence_number().as_str().parse::<u128>() {
                self.next_sequence = self.next_sequence.max(n.saturating_add(1));
            }
        }
        let Some(last) = records.last() else {
            return Ok(());
        };
        let position = Checkpoint::At(last.position().clone());
        let handler = self.handler.clone();
        let shard = ShardBatch {
            shard_id: self.shard_id.clone(),
            messages: records
                .into_iter()
                .map(|record| {
                    let value = handler(&record);
                    message(record, value)
                })
                .collect(),
            millis_behind_latest: None,
            shard_ended: false,
            epoch: EPOCH,
            goes_back: GoesBack::nowhere(),
        };
        self.base.handing(&self.shard_id, EPOCH, position.clone());
        let kept = (self.policy != ErrorPolicy::Stop).then(|| KeptShard::of(&shard));
        let mut first = Some(shard);
        let result = self.call("process", |p, checkpointer| {
            let shard = match (first.take(), &kept) {
                (Some(shard), _) => shard,
                (None, Some(kept)) => kept.remake(&handler),
                (None, None) => return Err("no records kept for a retry".into()),
            };
            p.process(shard, checkpointer)
        });
        self.base.call_ended(&self.shard_id, EPOCH, result.is_ok());
        match result {
            Ok(()) => {
                if self.automatic() {
                    self.pending = Some(position);
                    self.save_last();
                }
                Ok(())
            }
            Err(error) => Err(self.failed(error)),
        }
    }

    /// [`process`](Self::process) of [`records`](Self::records) holding
    /// `data`.
    pub fn process_data<D: AsRef<[u8]>>(
        &mut self,
        data: impl IntoIterator<Item = D>,
    ) -> Result<()> {
        let records = self.records(data);
        self.process(records)
    }

    /// Another worker took the lease: calls [`ShardProcessor::lease_lost`].
    /// The processor's checkpointer writes nothing of the shard after this.
    ///
    /// # Panics
    ///
    /// Before `initialize`, or after the end.
    pub fn lease_lost(&mut self) {
        self.expect(Stage::Running, "lease_lost");
        self.store.set(&self.shard_id, EPOCH, Holding::Gone);
        self.processor.lease_lost();
        self.close();
    }

    /// The shard was read to its end: calls [`ShardProcessor::shard_ended`],
    /// which under manual checkpoints must checkpoint the end (or this
    /// fails, with the consumer's error text); in automatic mode the end is
    /// checkpointed once it returns `Ok`.
    ///
    /// # Panics
    ///
    /// Before `initialize`, or after the end.
    pub fn shard_ended(&mut self) -> Result<()> {
        self.expect(Stage::Running, "shard_ended");
        let shard_id = self.shard_id.clone();
        self.base.handing(&shard_id, EPOCH, Checkpoint::ShardEnd);
        let automatic = self.automatic();
        let result = self.call("shard_ended", |p, checkpointer| {
            p.shard_ended(checkpointer)?;
            end_checkpointed(automatic, checkpointer, &shard_id, EPOCH)
        });
        self.base.call_ended(&shard_id, EPOCH, result.is_ok());
        match result {
            Ok(()) => {
                if automatic {
                    self.pending = Some(Checkpoint::ShardEnd);
                }
                self.save_last();
                self.close();
                Ok(())
            }
            Err(error) => {
                if self.gives_up_shard_alone() {
                    self.save_last();
                }
                self.close();
                Err(error)
            }
        }
    }

    /// The worker shuts down, or another worker asked for the lease: calls
    /// [`ShardProcessor::shutdown_requested`], the last chance to
    /// checkpoint; then the lease is released (after the checkpoint due in
    /// automatic mode).
    ///
    /// # Panics
    ///
    /// Before `initialize`, or after the end.
    pub fn shutdown_requested(&mut self) -> Result<()> {
        self.expect(Stage::Running, "shutdown_requested");
        let result = self.call("shutdown_requested", |p, c| p.shutdown_requested(c));
        if result.is_ok() || self.gives_up_shard_alone() {
            self.save_last();
        }
        self.close();
        result
    }
}

/// A shard the batch harness told the handler it gained.
#[derive(Clone, Copy, Debug)]
struct Open {
    epoch: u64,
    /// Asked for by another worker: released after the next batch.
    closing: bool,
}

/// Runs a batch handler over scripted batches, as
/// [`Consumer::run`](crate::Consumer::run) would: records of several
/// shards, shards gained, lost, ended and handed off, the last batch at
/// shutdown, with a [`Checkpointer`] that makes the consumer's checks and
/// keeps what it writes ([`checkpoints`](Self::checkpoints)).
///
/// Each [`handle`](Self::handle) hands on one batch: the events scripted
/// since the last one ([`gain`](Self::gain), [`lose`](Self::lose),
/// [`hand_off`](Self::hand_off), [`end_shard`](Self::end_shard)) and the
/// records given, grouped by shard. A shard whose records come without a
/// [`gain`](Self::gain) is gained at [`Checkpoint::TrimHorizon`] in that
/// batch (its [`ShardEvent::Gained`] comes first). Records of a shard
/// handed off in an earlier batch are left out, as the consumer does. A
/// shard whose end was checkpointed is released before the next batch,
/// with no event (its children may start).
///
/// In automatic mode (the default) what each batch accepted is
/// checkpointed right after it returns `Ok` (as with a checkpoint interval
/// that has always passed). In manual mode take the checkpointer from
/// [`checkpointer`](Self::checkpointer) before, as from
/// [`Consumer::checkpointer`](crate::Consumer::checkpointer).
///
/// A failing batch is handled by the [`ErrorPolicy`] as in production
/// (retries without the waits; [`ErrorPolicy::RetryThenReleaseShard`] is
/// [`ErrorPolicy::Retry`] here): when the policy gives up, the checkpoints
/// earned before are written, the harness is done, and `handle` returns
/// what `run` would. [`shutdown`](Self::shutdown) hands on the last batch
/// and ends the run.
///
/// ```
/// use kinesis_consumer::testing::{BatchHarness, checkpoint_at};
/// use kinesis_consumer::{Batch, Checkpoint, Checkpointing, HandlerResult, Payload, ShardEvent};
///
/// let mut harness = BatchHarness::new().checkpointing(Checkpointing::Manual);
/// let checkpointer = harness.checkpointer();
/// // Checkpoints every shard it is told is ending or shutting down.
/// let mut handler = |batch: Batch<Payload>| -> HandlerResult {
///     for event in batch.events() {
///         if let ShardEvent::Ended { shard_id } | ShardEvent::ShutdownRequested { shard_id } = event {
///             checkpointer.checkpoint(shard_id)?;
///         }
///     }
///     Ok(())
/// };
/// let records = harness.records("shardId-1", ["a", "b"]);
/// harness.handle(records, &mut handler)?;
/// assert!(harness.checkpoints().is_empty(), "manual: nothing yet");
/// harness.end_shard("shardId-1");
/// let records = harness.records("shardId-2", ["c"]);
/// harness.handle(records, &mut handler)?;
/// harness.shutdown(&mut handler)?;
/// assert_eq!(harness.checkpoint("shardId-1"), Some(Checkpoint::ShardEnd));
/// assert_eq!(harness.checkpoint("shardId-2"), Some(checkpoint_at("1", 0)));
/// # Ok::<(), kinesis_consumer::Error>(())
/// ```
pub struct BatchHarness<T> {
    handler: MessageHandler<T>,
    checkpointing: Checkpointing,
    policy: ErrorPolicy,
    store: Arc<Recording>,
    checkpointer: Checkpointer,
    open: BTreeMap<Arc<str>, Open>,
    /// Events for the next batch.
    events: Vec<ShardEvent>,
    /// Shards whose end the next batch reaches.
    ending: Vec<String>,
    /// Shards whose end was handed on in a batch the handler accepted.
    ended: Vec<String>,
    /// Accepted, not yet written (automatic mode).
    pending: BTreeMap<Arc<str>, (u64, Checkpoint)>,
    next_epoch: u64,
    /// The sequence number [`records`](Self::records) gives next, per shard.
    next_sequence: HashMap<String, u128>,
    over: bool,
}

impl<T> std::fmt::Debug for BatchHarness<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHarness")
            .field("checkpointing", &self.checkpointing)
            .field("error_policy", &self.policy)
            .field("checkpoints", &self.checkpoints())
            .finish_non_exhaustive()
    }
}

impl Default for BatchHarness<Payload> {
    fn default() -> Self {
        BatchHarness::new()
    }
}

impl BatchHarness<Payload> {
    /// A harness whose messages' values are their records' payloads (the
    /// default message handler's).
    pub fn new() -> Self {
        BatchHarness::with_message_handler(Record::payload)
    }
}

impl<T> BatchHarness<T> {
    /// A harness whose messages' values `handler` makes (as the consumer's
    /// [`message_handler`](crate::ConsumerBuilder::message_handler)).
    pub fn with_message_handler(handler: impl Fn(&Record) -> T + Send + Sync + 'static) -> Self {
        let store = Arc::new(Recording::default());
        BatchHarness {
            handler: Arc::new(handler),
            checkpointing: Checkpointing::default(),
            policy: ErrorPolicy::default(),
            checkpointer: Checkpointer::with_store(store.clone(), Metrics::default()),
            store,
            open: BTreeMap::new(),
            events: Vec::new(),
            ending: Vec::new(),
            ended: Vec::new(),
            pending: BTreeMap::new(),
            next_epoch: 1,
            next_sequence: HashMap::new(),
            over: false,
        }
    }

    /// Who checkpoints, as [`ConsumerBuilder::checkpointing`](crate::ConsumerBuilder::checkpointing).
    /// Defaults to [`Checkpointing::Automatic`].
    pub fn checkpointing(mut self, checkpointing: Checkpointing) -> Self {
        self.checkpointing = checkpointing;
        self
    }

    /// What a failure does, as [`ConsumerBuilder::error_policy`](crate::ConsumerBuilder::error_policy)
    /// (without waiting between retries). Defaults to [`ErrorPolicy::Stop`].
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The checkpointer, as [`Consumer::checkpointer`](crate::Consumer::checkpointer)
    /// gives it: for the handler to capture.
    pub fn checkpointer(&self) -> Checkpointer {
        self.checkpointer.clone()
    }

    /// Every checkpoint written, in order, with its shard: what the lease
    /// table would have seen.
    pub fn checkpoints(&self) -> Vec<(String, Checkpoint)> {
        self.store.written()
    }

    /// The checkpoint of `shard_id`: the last written, if any.
    pub fn checkpoint(&self, shard_id: &str) -> Option<Checkpoint> {
        let mut written = self.store.written();
        written.retain(|(id, _)| id == shard_id);
        written.pop().map(|(_, c)| c)
    }

    /// The application's checkpoint calls refused (`Error::LeaseLost`,
    /// `Error::InvalidCheckpoint`), as their error texts, in order.
    pub fn refused(&self) -> Vec<String> {
        self.store.refused_calls()
    }

    /// The shards whose end was handed on in a batch the handler accepted
    /// and is not checkpointed: with manual checkpoints, the consumer warns
    /// about each every minute (and counts `ShardEndsNotCheckpointed`),
    /// and their children are never read.
    pub fn ends_not_checkpointed(&self) -> Vec<String> {
        let written = self.store.written();
        let mut waiting: Vec<String> = self
            .ended
            .iter()
            .filter(|id| !written.contains(&((*id).clone(), Checkpoint::ShardEnd)))
            .cloned()
            .collect();
        waiting.sort();
        waiting.dedup();
        waiting
    }

    /// Records of `shard_id` with its next sequence numbers (1, 2, … per
    /// shard over the harness's life), holding `data`.
    pub fn records<D: AsRef<[u8]>>(
        &mut self,
        shard_id: &str,
        data: impl IntoIterator<Item = D>,
    ) -> Vec<Record> {
        let next = self.next_sequence.entry(shard_id.to_owned()).or_insert(1);
        data.into_iter()
            .map(|data| {
                let record = record(shard_id, &next.to_string(), data);
                *next += 1;
                record
            })
            .collect()
    }

    fn expect_running(&self) {
        assert!(!self.over, "the run is over (after shutdown or a failure)");
    }

    /// The shard was gained, to be read from `from`: the next batch
    /// carries [`ShardEvent::Gained`]. A shard held already is lost first
    /// (a [`ShardEvent::Lost`] before it), as when its lease lapsed and
    /// was taken again.
    ///
    /// # Panics
    ///
    /// After the run is over.
    pub fn gain(&mut self, shard_id: &str, from: Checkpoint) {
        self.expect_running();
        if self.open.contains_key(shard_id) {
            self.lose(shard_id);
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        if let Some(next) = after(&from) {
            let sequence = self.next_sequence.entry(shard_id.to_owned()).or_insert(1);
            *sequence = (*sequence).max(next);
        }
        let shard: Arc<str> = Arc::from(shard_id);
        self.store.set(shard_id, epoch, Holding::Current);
        self.checkpointer.gained(&shard, epoch, &from);
        self.open.insert(
            shard,
            Open {
                epoch,
                closing: false,
            },
        );
        self.events.push(ShardEvent::Gained {
            shard_id: shard_id.to_owned(),
            from,
        });
    }

    /// Another worker took the lease: from now on nothing of the shard can
    /// be checkpointed; the next batch carries [`ShardEvent::Lost`].
    ///
    /// # Panics
    ///
    /// When the shard is not held, or after the run is over.
    pub fn lose(&mut self, shard_id: &str) {
        self.expect_running();
        let open = self.forget(shard_id);
        assert!(open.is_some(), "shard {shard_id} is not held");
        self.events.push(ShardEvent::Lost {
            shard_id: shard_id.to_owned(),
        });
    }

    /// Another worker asked for the lease: the next batch carries
    /// [`ShardEvent::ShutdownRequested`] (the last chance to checkpoint
    /// the shard), and after it the lease is released (once the checkpoint
    /// due in automatic mode is written).
    ///
    /// # Panics
    ///
    /// When the shard is not held, or after the run is over.
    pub fn hand_off(&mut self, shard_id: &str) {
        self.expect_running();
        let open = self.open.get_mut(shard_id);
        let open = open.unwrap_or_else(|| panic!("shard {shard_id} is not held"));
        if open.closing {
            return;
        }
        open.closing = true;
        let epoch = open.epoch;
        self.store.set(shard_id, epoch, Holding::HandingOff);
        self.events.push(ShardEvent::ShutdownRequested {
            shard_id: shard_id.to_owned(),
        });
    }

    /// The next batch reaches the end of the shard (after the records
    /// given for it, if any): its part is marked
    /// [`shard_ended`](ShardBatch::shard_ended) and it carries
    /// [`ShardEvent::Ended`].
    ///
    /// # Panics
    ///
    /// After the run is over.
    pub fn end_shard(&mut self, shard_id: &str) {
        self.expect_running();
        self.ending.push(shard_id.to_owned());
    }

    /// Forgets the shards whose end was checkpointed, with no event: the
    /// consumer releases their leases (their children start).
    fn leave_finished(&mut self) {
        let finished: Vec<Arc<str>> = self
            .open
            .iter()
            .filter(|(id, o)| self.checkpointer.is_finished(id, o.epoch))
            .map(|(id, _)| id.clone())
            .collect();
        for shard_id in finished {
            self.forget(&shard_id);
        }
    }

    /// Stops tracking a shard; its checkpointer writes nothing of it now.
    fn forget(&mut self, shard_id: &str) -> Option<Open> {
        let open = self.open.remove(shard_id)?;
        self.pending.remove(shard_id);
        self.checkpointer.closed(shard_id, open.epoch);
        self.store.set(shard_id, open.epoch, Holding::Gone);
        Some(open)
    }

    /// Hands on one batch: the events scripted since the last, and
    /// `records` grouped by shard; returns what `run` would on failure
    /// (then the run is over).
    ///
    /// # Panics
    ///
    /// After the run is over.
    pub fn handle(
        &mut self,
        records: impl IntoIterator<Item = Record>,
        handler: impl FnMut(Batch<T>) -> HandlerResult,
    ) -> Result<()> {
        self.expect_running();
        self.leave_finished();
        let mut shards: Vec<ShardBatch<T>> = Vec::new();
        let mut part = |this: &mut Self, shard_id: &str| -> Option<usize> {
            if !this.open.contains_key(shard_id) {
                this.gain(shard_id, Checkpoint::TrimHorizon);
            }
            let open = this.open[shard_id];
            if open.closing {
                return None;
            }
            Some(match shards.iter().position(|s| &*s.shard_id == shard_id) {
                Some(i) => i,
                None => {
                    let mut shard = shard_batch(shard_id, []);
                    shard.epoch = open.epoch;
                    shards.push(shard);
                    shards.len() - 1
                }
            })
        };
        let mut parts = Vec::new();
        for record in records {
            if let Some(i) = part(self, record.shard_id()) {
                parts.push((i, record));
            }
        }
        let mut ended = Vec::new();
        for shard_id in std::mem::take(&mut self.ending) {
            if let Some(i) = part(self, &shard_id) {
                ended.push(i);
            }
        }
        for (i, record) in parts {
            let value = (self.handler)(&record);
            shards[i].messages.push(message(record, value));
        }
        for i in ended {
            shards[i].shard_ended = true;
            self.events.push(ShardEvent::Ended {
                shard_id: shards[i].shard_id.to_string(),
            });
        }
        let mut ends = Vec::new();
        for s in &shards {
            let handed = if s.shard_ended {
                Some(Checkpoint::ShardEnd)
            } else {
                s.messages
                    .last()
                    .map(|m| Checkpoint::At(m.record.position.clone()))
            };
            if let Some(position) = handed {
                self.checkpointer
                    .handing(&s.shard_id, s.epoch, position.clone());
                ends.push((s.shard_id.clone(), s.epoch, position));
            }
        }
        let batch = Batch {
            time: SystemTime::now(),
            shards,
            events: std::mem::take(&mut self.events),
            last: false,
        };
        let result = self.hand_on(batch, handler);
        for (shard_id, epoch, _) in &ends {
            self.checkpointer
                .call_ended(shard_id, *epoch, result.is_ok());
        }
        if let Err(error) = result {
            self.stop();
            return Err(error);
        }
        for (shard_id, _, position) in &ends {
            if *position == Checkpoint::ShardEnd {
                self.ended.push(shard_id.to_string());
            }
        }
        if self.checkpointing == Checkpointing::Automatic {
            for (shard_id, epoch, checkpoint) in ends {
                self.pending.insert(shard_id, (epoch, checkpoint));
            }
            self.write_pending(None);
        }
        let closing: Vec<Arc<str>> = self
            .open
            .iter()
            .filter(|(_, o)| o.closing)
            .map(|(id, _)| id.clone())
            .collect();
        for shard_id in closing {
            self.write_pending(Some(&shard_id));
            self.forget(&shard_id);
        }
        Ok(())
    }

    /// Writes the pending checkpoints (of `only` that shard).
    fn write_pending(&mut self, only: Option<&str>) {
        let shards: Vec<Arc<str>> = self
            .pending
            .keys()
            .filter(|id| only.is_none_or(|only| ***id == *only))
            .cloned()
            .collect();
        for shard_id in shards {
            if let Some((epoch, checkpoint)) = self.pending.remove(&shard_id) {
                if let Err(e) = self.checkpointer.write(&shard_id, epoch, &checkpoint) {
                    log::info!("not checkpointing {shard_id}: {e}");
                }
            }
        }
    }

    /// Calls the handler under the error policy.
    fn hand_on(
        &mut self,
        batch: Batch<T>,
        mut handler: impl FnMut(Batch<T>) -> HandlerResult,
    ) -> Result<()> {
        let policy = match without_waits(self.policy) {
            // One handler for every shard: no shard to give up alone.
            ErrorPolicy::RetryThenReleaseShard { retries, backoff } => {
                ErrorPolicy::Retry { retries, backoff }
            }
            other => other,
        };
        let kept = (policy != ErrorPolicy::Stop).then(|| {
            let shards: Vec<KeptShard> = batch.shards.iter().map(KeptShard::of).collect();
            (batch.time, shards, batch.events.clone(), batch.last)
        });
        let message_handler = self.handler.clone();
        let mut first = Some(batch);
        call_with_policy(
            &policy,
            || false,
            "the batch handler",
            |_| match (first.take(), &kept) {
                (Some(batch), _) => handler(batch),
                (None, Some((time, shards, events, last))) => handler(Batch {
                    time: *time,
                    shards: shards.iter().map(|k| k.remake(&message_handler)).collect(),
                    events: events.clone(),
                    last: *last,
                }),
                (None, None) => Err("no records kept for a retry".into()),
            },
        )
        .and_then(Called::done)
    }

    /// The end of the run: writes what was earned, closes every shard.
    fn stop(&mut self) {
        self.write_pending(None);
        let open: Vec<Arc<str>> = self.open.keys().cloned().collect();
        for shard_id in open {
            self.forget(&shard_id);
        }
        self.over = true;
    }

    /// Shutdown: hands on the last batch (no records,
    /// [`Batch::is_last`], a [`ShardEvent::ShutdownRequested`] for each
    /// shard held and not handed off, after any events scripted since the
    /// last batch), writes the checkpoints earned, and ends the run;
    /// returns what `run` would.
    ///
    /// # Panics
    ///
    /// After the run is over.
    pub fn shutdown(&mut self, handler: impl FnMut(Batch<T>) -> HandlerResult) -> Result<()> {
        self.expect_running();
        self.leave_finished();
        for (shard_id, open) in &self.open {
            if !open.closing {
                self.events.push(ShardEvent::ShutdownRequested {
                    shard_id: shard_id.to_string(),
                });
            }
        }
        let batch = Batch {
            time: SystemTime::now(),
            shards: Vec::new(),
            events: std::mem::take(&mut self.events),
            last: true,
        };
        let result = self.hand_on(batch, handler);
        self.stop();
        result
    }

    /// [`handle`](Self::handle) for each of `batches` (each the records of
    /// one batch), then [`shutdown`](Self::shutdown): a whole
    /// [`Consumer::run`](crate::Consumer::run). Returns what `run` would.
    pub fn run(
        &mut self,
        batches: impl IntoIterator<Item = Vec<Record>>,
        mut handler: impl FnMut(Batch<T>) -> HandlerResult,
    ) -> Result<()> {
        for records in batches {
            self.handle(records, &mut handler)?;
        }
        self.shutdown(handler)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a scripted processor does in each call.
    #[derive(Default)]
    struct Script {
        /// `process` checkpoints each record it is given.
        checkpoint_records: bool,
        /// `process` checkpoints this position (of the harness's shard).
        checkpoint_at: Option<&'static str>,
        /// `process` fails this many times before it succeeds.
        process_failures: u32,
        /// `shard_ended` checkpoints the end.
        checkpoint_end: bool,
        /// `shutdown_requested` checkpoints the shard.
        checkpoint_at_shutdown: bool,
    }

    #[derive(Default)]
    struct Probe {
        script: Script,
        calls: Vec<String>,
        kept: Option<Checkpointer>,
        errors: Vec<String>,
    }

    impl ShardProcessor<Payload> for Probe {
        fn initialize(&mut self, shard_id: &str, from: &Checkpoint) -> HandlerResult {
            self.calls.push(format!("initialize {shard_id} {from:?}"));
            Ok(())
        }

        fn process(&mut self, records: ShardBatch<Payload>, c: &Checkpointer) -> HandlerResult {
            let data: Vec<String> = records
                .messages()
                .iter()
                .map(|m| String::from_utf8_lossy(m.value()).into_owned())
                .collect();
            self.calls.push(format!("process {}", data.join(",")));
            self.kept = Some(c.clone());
            if self.script.process_failures > 0 {
                self.script.process_failures -= 1;
                return Err("poison".into());
            }
            if self.script.checkpoint_records {
                for m in records.messages() {
                    c.checkpoint_record(m.record())?;
                }
            }
            if let Some(at) = self.script.checkpoint_at {
                c.checkpoint_at(records.shard_id(), &position(at, 0))?;
            }
            Ok(())
        }

        fn lease_lost(&mut self) {
            self.calls.push("lease_lost".into());
        }

        fn shard_ended(&mut self, c: &Checkpointer) -> HandlerResult {
            self.calls.push("shard_ended".into());
            if self.script.checkpoint_end {
                c.checkpoint(DEFAULT_SHARD_ID)?;
            }
            Ok(())
        }

        fn shutdown_requested(&mut self, c: &Checkpointer) -> HandlerResult {
            self.calls.push("shutdown_requested".into());
            if self.script.checkpoint_at_shutdown {
                if let Err(e) = c.checkpoint(DEFAULT_SHARD_ID) {
                    self.errors.push(e.to_string());
                    return Err(e.into());
                }
            }
            Ok(())
        }
    }

    fn harness(script: Script) -> ProcessorHarness<Payload, Probe> {
        ProcessorHarness::new(Probe {
            script,
            ..Probe::default()
        })
    }

    #[test]
    fn records_are_built_with_every_field() {
        let r = RecordBuilder::new("0042")
            .shard_id("s")
            .partition_key("pk")
            .explicit_hash_key("12")
            .sub_sequence_number(3)
            .data([1u8, 2])
            .build();
        assert_eq!(r.sequence_number(), &sequence("42"));
        assert_eq!(r.position(), &position("42", 3));
        assert_eq!(r.explicit_hash_key(), Some("12"));
        assert_eq!((r.partition_key(), r.data()), ("pk", &[1u8, 2][..]));
        assert_eq!(&*r.payload(), &[1u8, 2][..]);
        let plain = record("s", "1", "");
        assert_eq!(plain.explicit_hash_key(), None);
        assert_eq!(plain.approximate_arrival_timestamp(), None);
        assert!(!plain.is_aggregated());
    }

    #[test]
    #[should_panic(expected = "is not a sequence number")]
    fn a_sequence_number_that_is_not_one_panics() {
        RecordBuilder::new("12a");
    }

    #[test]
    fn kpl_records_come_out_as_the_consumer_delivers_them() {
        let users = kpl_records("s", "77", [("a", "one"), ("b", "two"), ("a", "three")]);
        let got: Vec<(u64, &str, &[u8])> = users
            .iter()
            .map(|r| (r.sub_sequence_number(), r.partition_key(), r.data()))
            .collect();
        assert_eq!(
            got,
            [
                (0, "a", &b"one"[..]),
                (1, "b", &b"two"[..]),
                (2, "a", &b"three"[..])
            ]
        );
        assert!(
            users
                .iter()
                .all(|r| r.is_aggregated() && r.shard_id() == "s")
        );
        // A processor checkpointing them one by one, sub-sequences included.
        let mut h = harness(Script {
            checkpoint_records: true,
            ..Script::default()
        })
        .shard_id("s")
        .checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.process(users).unwrap();
        assert_eq!(
            h.checkpoints(),
            [
                checkpoint_at("77", 0),
                checkpoint_at("77", 1),
                checkpoint_at("77", 2)
            ]
        );
    }

    /// Keeps what `initialize_with` was told.
    #[derive(Default)]
    struct Told(Option<InitializationInput>);

    impl ShardProcessor<Payload> for Told {
        fn initialize_with(&mut self, input: &InitializationInput) -> HandlerResult {
            self.0 = Some(input.clone());
            Ok(())
        }

        fn process(&mut self, _: ShardBatch<Payload>, _: &Checkpointer) -> HandlerResult {
            Ok(())
        }
    }

    #[test]
    fn initialize_with_is_told_the_stream_of_a_multi_stream_shard() {
        let key = "111122223333:orders:1700000000:shardId-000000000004";
        let mut h = ProcessorHarness::new(Told::default()).shard_id(key);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        let input = h.processor().0.clone().expect("initialize_with called");
        assert_eq!(input.shard_id(), key);
        assert_eq!(input.kinesis_shard_id(), "shardId-000000000004");
        assert_eq!(input.checkpoint(), &Checkpoint::TrimHorizon);
        let stream = input
            .stream()
            .expect("a multi-stream shard names its stream");
        assert_eq!(
            (stream.account(), stream.name(), stream.creation_epoch()),
            ("111122223333", "orders", 1_700_000_000)
        );
        // A single-stream shard has no stream; its id is the bare one.
        let mut h = ProcessorHarness::new(Told::default());
        h.initialize(Checkpoint::Latest).unwrap();
        let input = h.processor().0.clone().unwrap();
        assert_eq!(input.stream(), None);
        assert_eq!(input.kinesis_shard_id(), DEFAULT_SHARD_ID);
    }

    #[test]
    fn a_processor_lives_initialize_process_shard_end_in_automatic_mode() {
        let mut h = harness(Script::default());
        h.initialize(Checkpoint::Latest).unwrap();
        h.process_data(["a", "b"]).unwrap();
        h.process([]).unwrap();
        h.process_data(["c"]).unwrap();
        h.shard_ended().unwrap();
        assert_eq!(
            h.processor().calls,
            [
                format!("initialize {DEFAULT_SHARD_ID} Latest"),
                "process a,b".into(),
                "process c".into(),
                "shard_ended".into()
            ]
        );
        assert_eq!(
            h.checkpoints(),
            [
                checkpoint_at("2", 0),
                checkpoint_at("3", 0),
                Checkpoint::ShardEnd
            ]
        );
        assert_eq!(h.checkpoint(), Some(Checkpoint::ShardEnd));
    }

    #[test]
    fn a_position_never_handed_on_is_refused_as_in_production() {
        let mut h = harness(Script {
            checkpoint_at: Some("9"),
            ..Script::default()
        })
        .checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        let error = h.process_data(["a", "b"]).unwrap_err();
        let expected = format!(
            "the handler failed: cannot checkpoint shard {DEFAULT_SHARD_ID}: sequence number 9 (sub-sequence 0) was not handed on (the last position handed on is sequence number 2 (sub-sequence 0))"
        );
        assert_eq!(error.to_string(), expected);
        assert!(matches!(error, Error::Handler(_)));
        assert_eq!(h.refused().len(), 1);
        assert!(h.checkpoints().is_empty());
        // The consumer would stop: the processor had its last call.
        assert_eq!(h.processor().calls.last().unwrap(), "shutdown_requested");
    }

    #[test]
    fn a_position_behind_the_checkpoint_is_refused() {
        let mut h = harness(Script {
            checkpoint_at: Some("1"),
            ..Script::default()
        })
        .checkpointing(Checkpointing::Manual);
        h.initialize(checkpoint_at("5", 0)).unwrap();
        let records = vec![record(DEFAULT_SHARD_ID, "1", "old")];
        let error = h.process(records).unwrap_err();
        assert!(
            error.to_string().contains(
                "sequence number 1 (sub-sequence 0) is behind the shard's checkpoint, sequence number 5 (sub-sequence 0)"
            ),
            "{error}"
        );
    }

    #[test]
    fn nothing_is_checkpointed_after_the_lease_is_lost() {
        let mut h = harness(Script::default()).checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.process_data(["a"]).unwrap();
        h.lease_lost();
        assert_eq!(h.processor().calls.last().unwrap(), "lease_lost");
        // The processor kept its checkpointer (a flusher thread, say).
        let kept = h.processor().kept.clone().unwrap();
        let error = kept.checkpoint(DEFAULT_SHARD_ID).unwrap_err();
        assert!(matches!(error, Error::LeaseLost { .. }), "{error}");
        assert_eq!(
            error.to_string(),
            format!(
                "cannot checkpoint shard {DEFAULT_SHARD_ID}: its lease is not held by this worker"
            )
        );
        let error = h
            .checkpointer()
            .checkpoint_at(DEFAULT_SHARD_ID, &position("1", 0));
        assert!(matches!(error, Err(Error::LeaseLost { .. })));
        assert!(h.checkpoints().is_empty());
        assert_eq!(h.refused().len(), 2);
    }

    #[test]
    fn a_processor_that_forgets_the_shard_end_fails_with_the_consumer_s_text() {
        let mut h = harness(Script::default()).checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.process_data(["a"]).unwrap();
        let error = h.shard_ended().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the handler failed: shard_ended of shard {DEFAULT_SHARD_ID} returned without checkpointing the end of the shard (call Checkpointer::checkpoint): its children cannot start until it does"
            )
        );
        assert!(h.checkpoints().is_empty());
        // One that remembers it passes.
        let mut h = harness(Script {
            checkpoint_end: true,
            ..Script::default()
        })
        .checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.process_data(["a"]).unwrap();
        h.shard_ended().unwrap();
        assert_eq!(h.checkpoints(), [Checkpoint::ShardEnd]);
    }

    #[test]
    fn the_records_of_a_failed_call_are_never_checkpointed() {
        let mut h = harness(Script {
            process_failures: 1,
            checkpoint_at_shutdown: true,
            ..Script::default()
        })
        .checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        let error = h.process_data(["a"]).unwrap_err();
        assert!(error.to_string().contains("poison"), "{error}");
        // Its last call, shutdown_requested, checkpointed nothing.
        assert_eq!(
            h.processor().calls,
            [
                format!("initialize {DEFAULT_SHARD_ID} TrimHorizon"),
                "process a".into(),
                "shutdown_requested".into()
            ]
        );
        assert!(h.checkpoints().is_empty());
    }

    #[test]
    fn retries_hand_the_same_records_again_then_succeed() {
        let mut h = harness(Script {
            process_failures: 2,
            ..Script::default()
        })
        .error_policy(ErrorPolicy::Retry {
            retries: 2,
            backoff: Duration::from_secs(3600),
        });
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.process_data(["a", "b"]).unwrap();
        let calls = &h.processor().calls;
        assert_eq!(calls[1..], ["process a,b", "process a,b", "process a,b"]);
        assert_eq!(h.checkpoints(), [checkpoint_at("2", 0)]);
    }

    #[test]
    fn retry_then_release_shard_gives_up_the_shard_alone() {
        let mut h = harness(Script {
            process_failures: 5,
            ..Script::default()
        })
        .error_policy(ErrorPolicy::RetryThenReleaseShard {
            retries: 1,
            backoff: Duration::from_secs(3600),
        });
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.processor_mut().script.process_failures = 0;
        h.process_data(["a"]).unwrap();
        h.processor_mut().script.process_failures = 5;
        let error = h.process_data(["b"]).unwrap_err();
        assert!(matches!(error, Error::Handler(_)));
        let calls = &h.into_processor().calls;
        assert_eq!(
            calls[1..],
            ["process a", "process b", "process b", "lease_lost"]
        );
    }

    #[test]
    fn a_shutdown_checkpoints_what_was_accepted() {
        let mut h = harness(Script {
            checkpoint_at_shutdown: true,
            ..Script::default()
        })
        .checkpointing(Checkpointing::Manual);
        h.initialize(Checkpoint::TrimHorizon).unwrap();
        h.process_data(["a", "b"]).unwrap();
        assert!(h.checkpoints().is_empty());
        h.shutdown_requested().unwrap();
        assert_eq!(h.checkpoints(), [checkpoint_at("2", 0)]);
        assert!(h.processor().errors.is_empty());
    }

    #[test]
    #[should_panic(expected = "process is out of order: the processor is not initialized")]
    fn a_script_out_of_order_panics() {
        harness(Script::default()).process_data(["a"]).unwrap();
    }

    fn words(batch: &Batch<Payload>) -> Vec<String> {
        batch
            .messages()
            .map(|m| String::from_utf8_lossy(m.value()).into_owned())
            .collect()
    }

    #[test]
    fn a_batch_handler_sees_gains_records_ends_and_the_last_batch() {
        let mut seen = Vec::new();
        let mut h = BatchHarness::new();
        let mut handler = |batch: Batch<Payload>| -> HandlerResult {
            seen.push((words(&batch), batch.events().to_vec(), batch.is_last()));
            Ok(())
        };
        h.gain("s-1", checkpoint_at("10", 0));
        let mut records = h.records("s-1", ["a"]);
        records.extend(h.records("s-2", ["b", "c"]));
        h.handle(records, &mut handler).unwrap();
        h.end_shard("s-2");
        h.handle(Vec::new(), &mut handler).unwrap();
        h.shutdown(&mut handler).unwrap();
        let gained = |id: &str, from| ShardEvent::Gained {
            shard_id: id.into(),
            from,
        };
        assert_eq!(
            seen,
            [
                (
                    vec!["a".to_owned(), "b".into(), "c".into()],
                    vec![
                        gained("s-1", checkpoint_at("10", 0)),
                        gained("s-2", Checkpoint::TrimHorizon)
                    ],
                    false
                ),
                (
                    vec![],
                    vec![ShardEvent::Ended {
                        shard_id: "s-2".into()
                    }],
                    false
                ),
                (
                    vec![],
                    vec![ShardEvent::ShutdownRequested {
                        shard_id: "s-1".into()
                    }],
                    true
                ),
            ]
        );
        assert_eq!(
            h.checkpoints(),
            [
                ("s-1".to_owned(), checkpoint_at("11", 0)),
                ("s-2".to_owned(), checkpoint_at("2", 0)),
                ("s-2".to_owned(), Checkpoint::ShardEnd)
            ]
        );
    }

    #[test]
    fn a_lost_shard_is_told_and_refused_a_handed_off_one_is_saved_then_released() {
        let mut h = BatchHarness::new().checkpointing(Checkpointing::Manual);
        let checkpointer = h.checkpointer();
        let mut events = Vec::new();
        let mut handler = |batch: Batch<Payload>| -> HandlerResult {
            events.extend(batch.events().iter().cloned());
            for event in batch.events() {
                if let ShardEvent::ShutdownRequested { shard_id } = event {
                    checkpointer.checkpoint(shard_id)?;
                }
            }
            Ok(())
        };
        let mut records = h.records("s-1", ["a"]);
        records.extend(h.records("s-2", ["b"]));
        h.handle(records, &mut handler).unwrap();
        h.lose("s-1");
        h.hand_off("s-2");
        let error = h.checkpointer().checkpoint("s-1").unwrap_err();
        assert!(matches!(error, Error::LeaseLost { .. }), "{error}");
        // Records of s-2 after the handoff was asked for are left out.
        let late = h.records("s-2", ["late"]);
        h.handle(late, &mut handler).unwrap();
        assert_eq!(h.checkpoints(), [("s-2".to_owned(), checkpoint_at("1", 0))]);
        let error = h.checkpointer().checkpoint("s-2").unwrap_err();
        assert!(
            matches!(error, Error::LeaseLost { .. }),
            "released: {error}"
        );
        h.shutdown(&mut handler).unwrap();
        assert!(events.contains(&ShardEvent::Lost {
            shard_id: "s-1".into()
        }));
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, ShardEvent::ShutdownRequested { .. }))
                .count(),
            1,
            "nothing held at shutdown: {events:?}"
        );
        assert_eq!(h.refused().len(), 2);
    }

    #[test]
    fn an_end_the_handler_never_checkpoints_is_reported() {
        let mut h = BatchHarness::new().checkpointing(Checkpointing::Manual);
        // Skips empty batches without looking at their events: a mistake
        // the docs of `Batch::is_empty` warn about.
        let mut handler = |_: Batch<Payload>| -> HandlerResult { Ok(()) };
        let records = h.records("s", ["a"]);
        h.handle(records, &mut handler).unwrap();
        h.end_shard("s");
        h.handle(Vec::new(), &mut handler).unwrap();
        assert_eq!(h.ends_not_checkpointed(), ["s"]);
        h.checkpointer().checkpoint("s").unwrap();
        assert!(h.ends_not_checkpointed().is_empty());
        assert_eq!(h.checkpoints(), [("s".to_owned(), Checkpoint::ShardEnd)]);
    }

    #[test]
    fn a_failing_batch_is_retried_then_the_run_stops_with_earned_checkpoints_written() {
        let mut calls = 0;
        let mut handler = |batch: Batch<Payload>| -> HandlerResult {
            calls += 1;
            if words(&batch).contains(&"poison".to_owned()) {
                return Err("poison".into());
            }
            Ok(())
        };
        let mut h = BatchHarness::new().error_policy(ErrorPolicy::Retry {
            retries: 2,
            backoff: Duration::from_secs(3600),
        });
        let good = h.records("s", ["a"]);
        h.handle(good, &mut handler).unwrap();
        let bad = h.records("s", ["poison"]);
        let error = h.handle(bad, &mut handler).unwrap_err();
        assert!(matches!(error, Error::Handler(_)), "{error}");
        assert_eq!(calls, 4, "one good, then the bad one and two retries");
        assert_eq!(h.checkpoints(), [("s".to_owned(), checkpoint_at("1", 0))]);
        let error = h.checkpointer().checkpoint("s").unwrap_err();
        assert!(matches!(error, Error::LeaseLost { .. }), "{error}");
    }

    #[test]
    fn a_handler_checkpointing_a_failed_batch_s_records_is_refused() {
        let mut h = BatchHarness::new()
            .checkpointing(Checkpointing::Manual)
            .error_policy(ErrorPolicy::Retry {
                retries: 1,
                backoff: Duration::ZERO,
            });
        let checkpointer = h.checkpointer();
        let mut first = true;
        let mut handler = |_: Batch<Payload>| -> HandlerResult {
            if std::mem::take(&mut first) {
                return Err("flaky".into());
            }
            Ok(())
        };
        let records = h.records("s", ["a", "b"]);
        h.handle(records, &mut handler).unwrap();
        checkpointer.checkpoint_at("s", &position("2", 0)).unwrap();
        let error = checkpointer
            .checkpoint_at("s", &position("3", 0))
            .unwrap_err();
        assert!(error.to_string().contains("was not handed on"), "{error}");
        assert_eq!(h.checkpoints(), [("s".to_owned(), checkpoint_at("2", 0))]);
    }

    #[test]
    fn run_plays_a_whole_consumer_run() {
        let mut h = BatchHarness::with_message_handler(|r| r.data().len());
        let batches = vec![h.records("s", ["ab", "c"]), h.records("s", ["def"])];
        let mut sizes = Vec::new();
        h.run(batches, |batch: Batch<usize>| -> HandlerResult {
            sizes.extend(batch.messages().map(|m| *m.value()));
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, [2, 1, 3]);
        assert_eq!(h.checkpoint("s"), Some(checkpoint_at("3", 0)));
    }
}
