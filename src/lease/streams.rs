//! The shards of several streams as one lease table sees them: every
//! shard, parent and child named by its multi-stream lease key, so that
//! lineage, balancing and handoff work across streams unchanged. The list
//! of streams can change while running (see [`StreamsHandle`]); a stream
//! deleted and recreated under its name is a new stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::aws::kinesis::{KinesisClient, Shard};
use crate::error::{Error, Result};
use crate::lease::Checkpoint;
use crate::lease::coordinator::ShardSource;
use crate::stream::{Layout, StreamConfig, StreamIdentifier, resolve_streams, split_lease_key};
use crate::sync::lock;

/// One stream of a multi-stream consumer, as the lease logic needs it.
#[derive(Clone, Debug)]
pub(crate) struct LeasedStream {
    pub id: StreamIdentifier,
    /// How Kinesis requests name it: its name or its ARN.
    pub request: String,
    /// Where its new leases start.
    pub initial: Checkpoint,
}

/// How Kinesis requests name each stream, by serialized stream
/// identifier; shared with the readers.
pub(crate) type RequestNames = Arc<RwLock<HashMap<String, String>>>;

/// A change asked for through a [`StreamsHandle`].
#[derive(Debug)]
enum Change {
    Add(LeasedStream),
    Remove(String),
}

/// Adds and removes streams of a running multi-stream consumer, from any
/// thread; get it from
/// [`Consumer::streams_handle`](crate::Consumer::streams_handle).
///
/// Changes apply at the next shard sync. A removed stream's leases held
/// by this worker are released once what was handed on is checkpointed
/// (as at a handoff: the handler sees them about to be released), and
/// its rows are deleted only after
/// [`former_stream_retention`](crate::ConsumerBuilder::former_stream_retention):
/// a stream added back before then resumes at its checkpoints. Every
/// worker of the application keeps its own list: change it on each, or a
/// worker still reading the stream takes the released leases.
#[derive(Clone, Debug)]
pub struct StreamsHandle {
    changes: Arc<Mutex<Vec<Change>>>,
    kinesis: KinesisClient,
    initial: crate::InitialPosition,
}

impl StreamsHandle {
    /// A handle whose streams take `initial` when they have no initial
    /// position of their own.
    pub(crate) fn new(kinesis: KinesisClient, initial: crate::InitialPosition) -> StreamsHandle {
        StreamsHandle {
            changes: Arc::default(),
            kinesis,
            initial,
        }
    }

    /// Starts reading another stream (by name or ARN, as in
    /// [`streams`](crate::ConsumerBuilder::streams)): it is described
    /// here (an unknown stream is an error) and read from the next shard
    /// sync.
    pub fn add(&self, stream: impl Into<StreamConfig>) -> Result<()> {
        let target = resolve_streams(&[stream.into()], self.initial)?.remove(0);
        let described = self.kinesis.describe_stream_summary(&target.request)?;
        lock(&self.changes).push(Change::Add(LeasedStream {
            id: described.stream_identifier()?,
            request: target.request,
            initial: target.initial,
        }));
        Ok(())
    }

    /// Stops reading the stream named `name` (see the type's description).
    pub fn remove(&self, name: &str) {
        lock(&self.changes).push(Change::Remove(name.to_owned()));
    }
}

/// The shards of several streams.
pub(crate) struct MultiStreamShards {
    kinesis: KinesisClient,
    streams: Mutex<Vec<LeasedStream>>,
    requests: RequestNames,
    changes: Arc<Mutex<Vec<Change>>>,
    /// Streams no longer read since the last `take_retired`.
    retired: Mutex<Vec<StreamIdentifier>>,
    /// Streams of the list the service does not have now (deleted): each
    /// sync looks for them again, and one recreated is read as new.
    missing: Mutex<Vec<LeasedStream>>,
}

impl MultiStreamShards {
    pub(crate) fn new(
        kinesis: KinesisClient,
        streams: Vec<LeasedStream>,
        handle: &StreamsHandle,
    ) -> MultiStreamShards {
        let requests: HashMap<String, String> = streams
            .iter()
            .map(|s| (s.id.to_string(), s.request.clone()))
            .collect();
        MultiStreamShards {
            kinesis,
            streams: Mutex::new(streams),
            requests: Arc::new(RwLock::new(requests)),
            changes: handle.changes.clone(),
            retired: Mutex::new(Vec::new()),
            missing: Mutex::new(Vec::new()),
        }
    }

    /// The request names the readers look streams up in.
    pub(crate) fn requests(&self) -> RequestNames {
        self.requests.clone()
    }

    fn retire(&self, stream: &LeasedStream) {
        log::info!("no longer reading stream {}", stream.id);
        lock(&self.retired).push(stream.id.clone());
    }

    fn add(&self, stream: LeasedStream) {
        lock(&self.missing).retain(|s| s.id.name() != stream.id.name());
        let mut streams = lock(&self.streams);
        if let Some(same) = streams.iter().position(|s| s.id.name() == stream.id.name()) {
            let old = streams.remove(same);
            if old.id != stream.id {
                self.retire(&old);
            }
        }
        log::info!("reading stream {}", stream.id);
        self.requests
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream.id.to_string(), stream.request.clone());
        streams.push(stream);
    }

    /// Looks for the deleted streams of the list again: one recreated
    /// under its name is read as a new stream.
    fn find_missing(&self) -> Result<()> {
        let missing = std::mem::take(&mut *lock(&self.missing));
        for stream in missing {
            match self.kinesis.describe_stream_summary(&stream.request) {
                Ok(now) => {
                    let id = now.stream_identifier()?;
                    log::warn!(
                        "stream {} was deleted and recreated as {id}: reading the new stream from its initial position",
                        stream.id
                    );
                    self.add(LeasedStream { id, ..stream });
                }
                Err(e) => {
                    let not_found = is_not_found(&e);
                    lock(&self.missing).push(stream);
                    if !not_found {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies the changes asked for through the handle.
    fn apply_changes(&self) {
        let changes = std::mem::take(&mut *lock(&self.changes));
        for change in changes {
            match change {
                Change::Add(stream) => self.add(stream),
                Change::Remove(name) => {
                    lock(&self.missing).retain(|s| s.id.name() != name);
                    let mut streams = lock(&self.streams);
                    if let Some(i) = streams.iter().position(|s| s.id.name() == name) {
                        let old = streams.remove(i);
                        self.retire(&old);
                    }
                }
            }
        }
    }

    /// The shards of one stream, keyed; `None` when the service no longer
    /// has the stream (it is retired). Its identity is checked first: a
    /// stream deleted and recreated under its name (a new creation time)
    /// is a new stream, whose shards are never read from the old one's
    /// leases, even when both lists of shards look alike.
    fn list_stream(&self, stream: &LeasedStream) -> Result<Option<Vec<Shard>>> {
        let stream = match self.kinesis.describe_stream_summary(&stream.request) {
            Ok(now) => {
                let id = now.stream_identifier()?;
                if id == stream.id {
                    stream.clone()
                } else {
                    log::warn!(
                        "stream {} was deleted and recreated as {id}: reading the new stream from its initial position",
                        stream.id
                    );
                    let new = LeasedStream {
                        id,
                        ..stream.clone()
                    };
                    self.add(new.clone());
                    new
                }
            }
            Err(e) if is_not_found(&e) => {
                log::warn!("stream {} was deleted", stream.id);
                lock(&self.streams).retain(|s| s.id != stream.id);
                self.retire(stream);
                lock(&self.missing).push(stream.clone());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match self.kinesis.list_shards(&stream.request, None) {
            Ok(shards) => Ok(Some(
                shards.into_iter().map(|s| stream.id.key_shard(s)).collect(),
            )),
            // Deleted since it was described: retired at the next sync.
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `f` of the stream of a lease key, if this source reads it.
    fn with_stream<R>(&self, key: &str, f: impl FnOnce(&LeasedStream) -> R) -> Option<R> {
        let (id, _) = split_lease_key(key)?;
        lock(&self.streams).iter().find(|s| s.id == id).map(f)
    }
}

fn is_not_found(e: &Error) -> bool {
    e.code() == Some("ResourceNotFoundException")
}

impl ShardSource for MultiStreamShards {
    fn list_shards(&self) -> Result<(Vec<Shard>, Option<SystemTime>)> {
        self.apply_changes();
        self.find_missing()?;
        let streams = lock(&self.streams).clone();
        let mut all = Vec::new();
        for stream in &streams {
            all.extend(self.list_stream(stream)?.unwrap_or_default());
        }
        Ok((all, self.kinesis.service_time()))
    }

    fn layout(&self) -> Layout {
        Layout::MultiStream
    }

    fn owns(&self, key: &str) -> bool {
        self.with_stream(key, |_| ()).is_some()
    }

    fn initial_of(&self, key: &str) -> Option<Checkpoint> {
        self.with_stream(key, |s| s.initial.clone())
    }

    fn take_retired(&self) -> Vec<StreamIdentifier> {
        std::mem::take(&mut *lock(&self.retired))
    }

    fn apply_stream_changes(&self) {
        self.apply_changes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::ClientConfig;
    use crate::aws::credentials::Credentials;

    fn leased(name: &str, epoch: u64) -> LeasedStream {
        LeasedStream {
            id: StreamIdentifier::new("1", name, epoch).unwrap(),
            request: name.into(),
            initial: Checkpoint::TrimHorizon,
        }
    }

    /// A source of `streams` and its handle (no request is sent).
    fn source(streams: Vec<LeasedStream>) -> (MultiStreamShards, StreamsHandle) {
        let config = ClientConfig::new()
            .region("us-east-1")
            .endpoint_url("http://127.0.0.1:9")
            .credentials(Credentials::new("a", "b"));
        let kinesis = KinesisClient::new(&config).unwrap();
        let handle = StreamsHandle::new(kinesis.clone(), crate::InitialPosition::Latest);
        (MultiStreamShards::new(kinesis, streams, &handle), handle)
    }

    #[test]
    fn removed_streams_are_retired_once_and_added_back_owned_again() {
        let (source, handle) = source(vec![leased("orders", 5), leased("clicks", 6)]);
        let key = "1:orders:5:shardId-0";
        assert!(source.owns(key) && source.owns("1:clicks:6:shardId-0"));
        assert!(
            !source.owns("1:payments:7:shardId-0"),
            "not a stream it reads"
        );
        assert!(!source.owns("shardId-0"));
        assert_eq!(source.initial_of(key), Some(Checkpoint::TrimHorizon));
        handle.remove("orders");
        source.apply_changes();
        assert!(!source.owns(key) && source.owns("1:clicks:6:shardId-0"));
        assert_eq!(source.take_retired(), [leased("orders", 5).id]);
        assert!(source.take_retired().is_empty(), "told once");
        lock(&handle.changes).push(Change::Add(leased("orders", 5)));
        source.apply_changes();
        assert!(source.owns(key));
        let requests = source.requests();
        assert_eq!(
            requests
                .read()
                .unwrap()
                .get("1:orders:5")
                .map(String::as_str),
            Some("orders")
        );
    }

    #[test]
    fn a_stream_recreated_under_its_name_retires_the_old_one() {
        let (source, _) = source(vec![leased("orders", 5)]);
        source.add(leased("orders", 9));
        assert!(!source.owns("1:orders:5:shardId-0"));
        assert!(source.owns("1:orders:9:shardId-0"));
        assert_eq!(source.take_retired(), [leased("orders", 5).id]);
        // Added again as it is: nothing retired.
        source.add(leased("orders", 9));
        assert!(source.take_retired().is_empty());
    }

    #[test]
    fn a_shard_and_its_parents_are_keyed_by_their_stream() {
        let stream = StreamIdentifier::new("1", "orders", 7).unwrap();
        let shard = Shard {
            shard_id: "shardId-2".into(),
            parent_shard_id: Some("shardId-0".into()),
            adjacent_parent_shard_id: Some("shardId-1".into()),
            starting_hash_key: "0".into(),
            ending_hash_key: "9".into(),
            starting_sequence_number: "1".into(),
            ending_sequence_number: None,
        };
        let keyed = stream.key_shard(shard);
        assert_eq!(keyed.shard_id, "1:orders:7:shardId-2");
        assert_eq!(
            keyed.parents().collect::<Vec<_>>(),
            ["1:orders:7:shardId-0", "1:orders:7:shardId-1"]
        );
    }
}
