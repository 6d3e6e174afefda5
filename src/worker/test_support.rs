//! What the ticker's and the processors' unit tests share: leases held
//! over a fake DynamoDB, a delivery, and readers' outputs made by hand.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::aws::ClientConfig;
use crate::aws::credentials::Credentials;
use crate::aws::dynamodb::DynamoDbClient;
use crate::aws::test_server::{FakeServer, Request};
use crate::lease::{Checkpoint, Clock, HeldLeases, LeaseTable};
use crate::metrics::Metrics;
use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber, Shared, Span};
use crate::worker::batch::Message;
use crate::worker::budget::Budget;
use crate::worker::checkpointer::Checkpointer;
use crate::worker::processing::{Checkpointing, Delivery, ErrorPolicy};
use crate::worker::reader::{Chunk, ReaderOutput};

/// A lease write's answer: it landed.
const LANDED: &str = r#"{"Attributes":{"leaseCounter":{"N":"1"}}}"#;

/// Held leases over a fake DynamoDB where every lease write succeeds:
/// enough to hold leases. The server lives as long as the leases.
pub(crate) fn held_leases() -> (FakeServer, Arc<HeldLeases>) {
    held_leases_answering(|_| (200, LANDED.to_owned()))
}

/// Held leases over a fake DynamoDB that answers with `answer`.
pub(crate) fn held_leases_answering(
    answer: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
) -> (FakeServer, Arc<HeldLeases>) {
    let server = FakeServer::start(answer);
    let config = ClientConfig::new()
        .region("us-east-1")
        .endpoint_url(&server.url)
        .credentials(Credentials::new("AKIDTEST", "secret"))
        // One request per write: tests count them.
        .max_attempts(1);
    let table = LeaseTable::new(DynamoDbClient::new(&config).unwrap(), "app");
    let held = HeldLeases::new(
        Arc::new(table),
        "me".into(),
        Duration::from_secs(60),
        Clock::system(),
    );
    // Its one heartbeat keeps the leases for the tests' length.
    held.heartbeat(None).1.unwrap();
    (server, Arc::new(held))
}

/// Checkpoint writes through a fake DynamoDB, in order: shard and
/// checkpoint column, or shard and "refused".
pub(crate) type Written = Arc<Mutex<Vec<(String, String)>>>;

/// Held leases over a fake DynamoDB that notes each checkpoint write and
/// refuses (with a 500) as many as `refuse` says, counting it down; every
/// other write lands.
pub(crate) fn held_leases_noting(
    refuse: Arc<AtomicUsize>,
) -> (FakeServer, Arc<HeldLeases>, Written) {
    let written: Written = Arc::default();
    let noted = written.clone();
    let (server, held) = held_leases_answering(move |request| {
        let body: serde_json::Value = serde_json::from_str(&request.body).unwrap_or_default();
        let checkpoint = body["ExpressionAttributeValues"][":checkpoint"]["S"].as_str();
        if let Some(checkpoint) = checkpoint {
            let shard = body["Key"]["leaseKey"]["S"].as_str().unwrap_or_default();
            let refused = refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let what = if refused { "refused" } else { checkpoint };
            noted
                .lock()
                .unwrap()
                .push((shard.to_owned(), what.to_owned()));
            if refused {
                return (500, r#"{"__type":"InternalServerError"}"#.to_owned());
            }
        }
        (200, LANDED.to_owned())
    });
    (server, held, written)
}

/// What a ticker or the processors need, batches every 50 ms; records
/// become their data as text.
pub(crate) fn delivery(held: &Arc<HeldLeases>, policy: ErrorPolicy) -> Delivery<String> {
    let (coordinator, _) = crossbeam_channel::unbounded();
    Delivery {
        held: held.clone(),
        budget: Arc::new(Budget::new(1 << 20, 1000)),
        checkpointer: Checkpointer::new(held.clone(), coordinator.clone(), Metrics::default()),
        coordinator,
        shutdown: Arc::new(AtomicBool::new(false)),
        metrics: Metrics::default(),
        load: Arc::default(),
        spare_buffers: crate::worker::batch::SpareBuffers::new(1 << 20),
        message_handler: Arc::new(|r: &Record| String::from_utf8_lossy(r.data()).into()),
        batch_interval: Duration::from_millis(50),
        checkpoint_interval: Duration::from_millis(50),
        checkpointing: Checkpointing::Automatic,
        error_policy: policy,
        dead_letter: None,
        last_checkpoint_time: Duration::from_secs(1),
    }
}

pub(crate) fn record(shard: &str, sequence: &str, data: &str) -> Record {
    Record {
        shared: Arc::new(Shared {
            shard_id: shard.into(),
            bytes: data.as_bytes().to_vec(),
            text: String::new(),
            goes_back: None,
        }),
        position: ExtendedSequenceNumber {
            sequence_number: SequenceNumber::parse(sequence).unwrap(),
            sub_sequence_number: 0,
        },
        aggregated: false,
        partition_key: Span::default(),
        explicit_hash_key: None,
        arrival: None,
        data: Span {
            start: 0,
            end: data.len() as u32,
        },
    }
}

/// A read's records (sequence number, data) without buffer room.
pub(crate) fn chunk(shard: &str, epoch: u64, records: &[(&str, &str)]) -> ReaderOutput<String> {
    let messages = records
        .iter()
        .map(|(sequence, data)| Message {
            record: record(shard, sequence, data),
            value: (*data).to_owned(),
        })
        .collect();
    ReaderOutput::Chunk(Chunk {
        shard_id: shard.into(),
        epoch,
        messages,
        millis_behind_latest: Some(0),
        shard_end: false,
        bytes: 0,
        data_bytes: 0,
        room: None,
    })
}

/// A read's records holding room in `budget` as a reader's do: 100 bytes
/// and one per record (waits for the room, up to 5 s; None if it never
/// came).
pub(crate) fn chunk_in(
    budget: &Arc<Budget>,
    shard: &str,
    epoch: u64,
    records: &[(&str, &str)],
) -> Option<ReaderOutput<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let room = budget.take_room(100, records.len() as u64, || {
        std::time::Instant::now() >= deadline
    })?;
    let ReaderOutput::Chunk(mut chunk) = chunk(shard, epoch, records) else {
        unreachable!()
    };
    chunk.bytes = 100;
    chunk.room = Some(room);
    Some(ReaderOutput::Chunk(chunk))
}

/// A reader's start on a shared channel (the ticker's).
pub(crate) fn started(shard: &str, epoch: u64) -> ReaderOutput<String> {
    ReaderOutput::Started {
        shard_id: shard.into(),
        epoch,
        from: Checkpoint::TrimHorizon,
        records: None,
    }
}

/// A reader's start with a queue of its own (the processors').
pub(crate) fn started_with(
    shard: &str,
    epoch: u64,
    queue: Receiver<ReaderOutput<String>>,
) -> ReaderOutput<String> {
    ReaderOutput::Started {
        shard_id: shard.into(),
        epoch,
        from: Checkpoint::TrimHorizon,
        records: Some(queue),
    }
}
