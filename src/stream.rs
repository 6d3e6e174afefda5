//! Which stream a lease, a record or a batch belongs to, and the lease keys
//! of the KCL 3's multi-stream layout (pure data).
//!
//! A multi-stream lease table keys each shard's lease
//! `<account>:<stream>:<creationEpochSeconds>:<shardId>`; a single-stream
//! table keys it by the bare shard id. The creation time tells apart a
//! stream deleted and recreated under the same name.

use std::fmt;

use crate::InitialPosition;
use crate::aws::kinesis::{Shard, is_valid_shard_id, parse_stream_arn};
use crate::lease::Checkpoint;

/// One stream of a multi-stream consumer: its account, name and creation
/// time, as the KCL 3's `StreamIdentifier` (serialized
/// `<account>:<stream>:<creationEpochSeconds>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIdentifier {
    account: String,
    name: String,
    creation_epoch: u64,
}

impl StreamIdentifier {
    /// A stream identifier, or why the parts cannot make one: `account`
    /// is decimal digits, `name` a Kinesis stream name (1 to 128 letters,
    /// digits, `_`, `.`, `-`).
    pub fn new(
        account: impl Into<String>,
        name: impl Into<String>,
        creation_epoch: u64,
    ) -> Result<StreamIdentifier, String> {
        let (account, name) = (account.into(), name.into());
        if account.is_empty() || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("account {account:?} is not decimal digits"));
        }
        if !is_stream_name(&name) {
            return Err(format!(
                "{name:?} is not a stream name (1 to 128 letters, digits, '_', '.', '-')"
            ));
        }
        Ok(StreamIdentifier {
            account,
            name,
            creation_epoch,
        })
    }

    /// Parses the serialized form `<account>:<stream>:<creationEpochSeconds>`.
    pub fn parse(text: &str) -> Result<StreamIdentifier, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let [account, name, epoch] = parts[..] else {
            return Err(format!(
                "{text:?} is not <account>:<stream>:<creationEpochSeconds>"
            ));
        };
        let epoch = match epoch.parse::<u64>() {
            Ok(e) if epoch.bytes().all(|b| b.is_ascii_digit()) => e,
            _ => {
                return Err(format!(
                    "{text:?}: creation epoch {epoch:?} is not a number"
                ));
            }
        };
        StreamIdentifier::new(account, name, epoch).map_err(|e| format!("{text:?}: {e}"))
    }

    /// The AWS account that owns the stream.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the stream was created, in seconds since the Unix epoch
    /// (DescribeStreamSummary's `StreamCreationTimestamp`).
    pub fn creation_epoch(&self) -> u64 {
        self.creation_epoch
    }

    /// The stream of a multi-stream lease key (also what
    /// [`Record::shard_id`](crate::Record::shard_id) and the processors'
    /// `shard_id` are in a multi-stream consumer); `None` for a bare shard
    /// id.
    pub fn of_lease_key(key: &str) -> Option<StreamIdentifier> {
        split_lease_key(key).map(|(stream, _)| stream)
    }

    /// The lease key of `shard_id` of this stream in a multi-stream table.
    pub fn lease_key(&self, shard_id: &str) -> String {
        format!("{self}:{shard_id}")
    }

    /// `shard` (as [`list_shards`](crate::aws::kinesis::KinesisClient::list_shards)
    /// gives it) with its id and its parents' ids turned into lease keys
    /// of this stream: the listing a multi-stream table's leases are
    /// judged against (by [`inspect_leases`](crate::inspect_leases) and
    /// [`reset_stream_positions`](crate::reset_stream_positions)).
    pub fn key_shard(&self, mut shard: Shard) -> Shard {
        shard.shard_id = self.lease_key(&shard.shard_id);
        for parent in [
            &mut shard.parent_shard_id,
            &mut shard.adjacent_parent_shard_id,
        ]
        .into_iter()
        .flatten()
        {
            *parent = self.lease_key(parent);
        }
        shard
    }
}

/// The serialized form, `<account>:<stream>:<creationEpochSeconds>`.
impl fmt::Display for StreamIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.account, self.name, self.creation_epoch)
    }
}

/// True when `name` can be a Kinesis stream name.
pub(crate) fn is_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A multi-stream lease key split into its stream and its bare shard id;
/// `None` for anything else (a bare shard id among them).
pub(crate) fn split_lease_key(key: &str) -> Option<(StreamIdentifier, &str)> {
    let (stream, shard_id) = key.rsplit_once(':')?;
    let stream = StreamIdentifier::parse(stream).ok()?;
    is_valid_shard_id(shard_id).then_some((stream, shard_id))
}

/// The bare shard id of a lease key of either layout.
pub(crate) fn shard_id_of(key: &str) -> &str {
    match split_lease_key(key) {
        Some((_, shard_id)) => shard_id,
        None => key,
    }
}

/// How a lease table keys its leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// The bare shard id: one stream per table.
    SingleStream,
    /// `<account>:<stream>:<creationEpochSeconds>:<shardId>`.
    MultiStream,
}

impl Layout {
    /// The layout a lease key is written in.
    pub(crate) fn of(key: &str) -> Layout {
        if split_lease_key(key).is_some() {
            Layout::MultiStream
        } else {
            Layout::SingleStream
        }
    }
}

/// Refuses a table whose leases are keyed in the other layout than the
/// consumer's: its checkpoints would silently not be found (the KCL's
/// behaviour) and every shard read again from the initial position.
pub(crate) fn check_layout<'a>(
    expected: Layout,
    keys: impl IntoIterator<Item = &'a str>,
) -> crate::Result<()> {
    let Some(other) = keys.into_iter().find(|k| Layout::of(k) != expected) else {
        return Ok(());
    };
    let reason = match expected {
        Layout::MultiStream => format!(
            "the lease table holds single-stream leases (such as {other:?}) and this \
             consumer reads several streams; to migrate, give the consumer a new \
             lease_table_name, or stop every worker and rewrite each leaseKey as \
             <account>:<stream>:<creationEpochSeconds>:<shardId> (see docs/multi-stream.md)"
        ),
        Layout::SingleStream => format!(
            "the lease table holds multi-stream leases (such as {other:?}) and this \
             consumer reads one stream with stream_name; to continue them use \
             streams([...]) instead, or give the consumer a new lease_table_name \
             (see docs/multi-stream.md)"
        ),
    };
    let setting = match expected {
        Layout::MultiStream => "streams",
        Layout::SingleStream => "stream_name",
    };
    Err(crate::Error::config(setting, reason))
}

/// One stream of a multi-stream consumer, as given to
/// [`ConsumerBuilder::streams`](crate::ConsumerBuilder::streams): its name
/// or ARN, and where its new shards start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    stream: String,
    initial_position: Option<InitialPosition>,
}

impl StreamConfig {
    /// The stream by name, or by ARN
    /// (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`, for a stream of
    /// another account the credentials can read).
    pub fn new(name_or_arn: impl Into<String>) -> StreamConfig {
        StreamConfig {
            stream: name_or_arn.into(),
            initial_position: None,
        }
    }

    /// Where this stream's shards without a checkpoint start. Defaults to
    /// the consumer's [`initial_position`](crate::ConsumerBuilder::initial_position).
    pub fn initial_position(mut self, position: InitialPosition) -> StreamConfig {
        self.initial_position = Some(position);
        self
    }
}

impl From<&str> for StreamConfig {
    fn from(name_or_arn: &str) -> StreamConfig {
        StreamConfig::new(name_or_arn)
    }
}

impl From<String> for StreamConfig {
    fn from(name_or_arn: String) -> StreamConfig {
        StreamConfig::new(name_or_arn)
    }
}

/// A stream of a multi-stream consumer as built: how requests name it,
/// its name and where its new shards start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamTarget {
    /// The name or the ARN, as Kinesis requests name the stream.
    pub request: String,
    pub name: String,
    /// The ARN's region, if given by ARN.
    pub region: Option<String>,
    pub initial: Checkpoint,
}

/// Checks the streams given to `streams` and resolves each one's initial
/// position (`default` where it has none of its own).
pub(crate) fn resolve_streams(
    streams: &[StreamConfig],
    default: InitialPosition,
) -> crate::Result<Vec<StreamTarget>> {
    let bad = |reason: String| crate::Error::config("streams", reason);
    let mut targets: Vec<StreamTarget> = Vec::new();
    for config in streams {
        let (name, region) = if config.stream.starts_with("arn:") {
            let arn = parse_stream_arn(&config.stream).map_err(|e| bad(e.to_string()))?;
            (arn.name, Some(arn.region))
        } else {
            (config.stream.clone(), None)
        };
        if !is_stream_name(&name) {
            return Err(bad(format!(
                "{:?} is not a stream name or ARN (names are 1 to 128 letters, digits, '_', '.', '-')",
                config.stream
            )));
        }
        if targets.iter().any(|t| t.name == name) {
            return Err(bad(format!("stream {name:?} is listed twice")));
        }
        let other = targets.iter().find_map(|t| t.region.as_ref());
        if let (Some(region), Some(other)) =
            (&region, other.filter(|o| Some(*o) != region.as_ref()))
        {
            return Err(bad(format!(
                "{:?} is in region {region} and another stream in {other}: one consumer reads one region",
                config.stream
            )));
        }
        targets.push(StreamTarget {
            request: config.stream.clone(),
            name,
            region,
            initial: initial_checkpoint(config.initial_position.unwrap_or(default)),
        });
    }
    Ok(targets)
}

/// Where a new lease starts for an initial position.
pub(crate) fn initial_checkpoint(position: InitialPosition) -> Checkpoint {
    match position {
        InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
        InitialPosition::Latest => Checkpoint::Latest,
        InitialPosition::AtTimestamp(t) => Checkpoint::AtTimestamp(Some(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_kcl_multi_stream_keys() {
        let stream = StreamIdentifier::new("123456789012", "orders", 1_700_000_000).unwrap();
        let key = stream.lease_key("shardId-000000000003");
        assert_eq!(key, "123456789012:orders:1700000000:shardId-000000000003");
        let (parsed, shard) = split_lease_key(&key).unwrap();
        assert_eq!((parsed, shard), (stream, "shardId-000000000003"));
        assert_eq!(shard_id_of(&key), "shardId-000000000003");
        assert_eq!(shard_id_of("shardId-1"), "shardId-1");
    }

    #[test]
    fn stream_names_with_dots_and_dashes_round_trip() {
        let stream = StreamIdentifier::parse("000000000000:a.b-c_d:0").unwrap();
        assert_eq!(stream.name(), "a.b-c_d");
        assert_eq!(stream.account(), "000000000000");
        assert_eq!(stream.creation_epoch(), 0);
        assert_eq!(stream.to_string(), "000000000000:a.b-c_d:0");
    }

    #[test]
    fn malformed_stream_identifiers_say_what_is_wrong() {
        let e = StreamIdentifier::parse("12:orders").unwrap_err();
        assert!(
            e.contains("<account>:<stream>:<creationEpochSeconds>"),
            "{e}"
        );
        let e = StreamIdentifier::parse("12a:orders:1").unwrap_err();
        assert!(e.contains("account"), "{e}");
        let e = StreamIdentifier::parse("12:orders:+1").unwrap_err();
        assert!(e.contains("creation epoch"), "{e}");
        let e = StreamIdentifier::parse("12:or/ders:1").unwrap_err();
        assert!(e.contains("not a stream name"), "{e}");
        assert!(StreamIdentifier::new("1", "", 1).is_err());
    }

    #[test]
    fn only_whole_multi_stream_keys_are_split() {
        for key in [
            "shardId-000000000000",
            "orders:1:shardId-1",
            "1:orders:x:shardId-1",
            "1:orders:1:",
            "1:orders:1:shard/1",
            "1:orders:1:extra:shardId-1",
        ] {
            assert_eq!(split_lease_key(key), None, "{key}");
            assert_eq!(Layout::of(key), Layout::SingleStream, "{key}");
        }
        assert_eq!(Layout::of("1:orders:1:shardId-1"), Layout::MultiStream);
    }

    #[test]
    fn streams_resolve_with_their_own_initial_positions() {
        let arn = "arn:aws:kinesis:eu-west-1:111122223333:stream/clicks";
        let targets = resolve_streams(
            &[
                StreamConfig::from("orders"),
                StreamConfig::new(arn).initial_position(InitialPosition::TrimHorizon),
            ],
            InitialPosition::Latest,
        )
        .unwrap();
        assert_eq!(targets[0].name, "orders");
        assert_eq!(targets[0].initial, Checkpoint::Latest);
        assert_eq!(
            (targets[1].name.as_str(), targets[1].request.as_str()),
            ("clicks", arn)
        );
        assert_eq!(targets[1].region.as_deref(), Some("eu-west-1"));
        assert_eq!(targets[1].initial, Checkpoint::TrimHorizon);
    }

    #[test]
    fn bad_stream_lists_are_refused_naming_the_stream() {
        let error = |streams: &[&str]| {
            let configs: Vec<StreamConfig> = streams.iter().map(|s| (*s).into()).collect();
            resolve_streams(&configs, InitialPosition::Latest)
                .unwrap_err()
                .to_string()
        };
        let e = error(&["a", "b", "a"]);
        assert!(
            e.contains("`streams`") && e.contains("\"a\" is listed twice"),
            "{e}"
        );
        let e = error(&["a/b"]);
        assert!(e.contains("\"a/b\" is not a stream name or ARN"), "{e}");
        let e = error(&["arn:aws:kinesis:eu-west-1:1:stream/x"]);
        assert!(e.contains("`streams`"), "{e}");
        let e = error(&[
            "arn:aws:kinesis:eu-west-1:111122223333:stream/x",
            "arn:aws:kinesis:us-east-1:111122223333:stream/y",
        ]);
        assert!(e.contains("one consumer reads one region"), "{e}");
    }

    #[test]
    fn a_table_in_the_other_layout_is_refused_with_how_to_migrate() {
        let single = ["shardId-1", "shardId-2"];
        let multi = ["1:orders:5:shardId-1"];
        assert!(check_layout(Layout::SingleStream, single).is_ok());
        assert!(check_layout(Layout::MultiStream, multi).is_ok());
        assert!(check_layout(Layout::MultiStream, []).is_ok());
        let e = check_layout(Layout::MultiStream, single)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`streams`") && e.contains("\"shardId-1\""),
            "{e}"
        );
        assert!(
            e.contains("lease_table_name") && e.contains("rewrite each leaseKey"),
            "{e}"
        );
        let e = check_layout(Layout::SingleStream, multi)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`stream_name`") && e.contains("streams([...])"),
            "{e}"
        );
    }
}
