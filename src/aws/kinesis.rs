//! Typed Kinesis operations over the JSON protocol.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aws::client::{Client, ClientConfig, KINESIS, wait_until_active};
use crate::aws::get_records::{Records, decode_reply};
use crate::error::{Error, Result};
use crate::record::{Record, SequenceNumber};
use crate::spares::Spares;

/// A Kinesis client: the operations a consumer and a simple producer need.
///
/// Every `stream` argument is a stream name or a stream ARN
/// (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`); an ARN is sent as
/// `StreamARN`, which reaches a stream of another account through its
/// resource policy.
#[derive(Clone, Debug)]
pub struct KinesisClient {
    client: Client,
}

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shard {
    /// The shard id, such as `shardId-000000000000`.
    pub shard_id: String,
    /// The shard this one was split from, or the first of two merged ones.
    pub parent_shard_id: Option<String>,
    /// The second parent of a merged shard.
    pub adjacent_parent_shard_id: Option<String>,
    /// The lowest hash key (decimal) the shard holds.
    pub starting_hash_key: String,
    /// The highest hash key (decimal) the shard holds.
    pub ending_hash_key: String,
    /// The first sequence number of the shard.
    pub starting_sequence_number: String,
    /// The last sequence number, set once the shard is closed by a reshard.
    pub ending_sequence_number: Option<String>,
}

impl Shard {
    /// The shard's parents: none, one (split) or two (merge).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id
            .iter()
            .chain(&self.adjacent_parent_shard_id)
            .map(String::as_str)
    }

    /// True once a reshard closed the shard; it is finished when read to its end.
    pub fn is_closed(&self) -> bool {
        self.ending_sequence_number.is_some()
    }
}

/// Which shards ListShards returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardFilter {
    /// Shards open at the tip of the stream.
    AtLatest,
    /// Every shard that still holds data.
    AtTrimHorizon,
    /// Shards open at the given time.
    AtTimestamp(SystemTime),
    /// Shards that are open now or were open after the given time.
    FromTimestamp(SystemTime),
    /// Shards after the given shard id.
    AfterShardId(String),
    /// Shards open at the trim horizon, then every descendant.
    FromTrimHorizon,
}

/// Where a shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IteratorPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Just after the newest record: only records put from now on.
    Latest,
    /// At the record with this sequence number.
    AtSequenceNumber(SequenceNumber),
    /// Just after the record with this sequence number.
    AfterSequenceNumber(SequenceNumber),
    /// At the first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

/// A summary of a stream from DescribeStreamSummary.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream name.
    pub stream_name: String,
    /// The stream ARN.
    pub stream_arn: String,
    /// CREATING, DELETING, ACTIVE or UPDATING.
    pub stream_status: String,
    /// The number of open shards.
    pub open_shard_count: u32,
    /// How long records are kept, in hours.
    pub retention_period_hours: u32,
    /// When the stream was created (`StreamCreationTimestamp`), if the
    /// service said.
    pub stream_creation_timestamp: Option<SystemTime>,
}

impl StreamSummary {
    /// The stream's identity in a multi-stream lease table: the account
    /// of its ARN, its name and its creation time in whole seconds. An
    /// error names what the summary lacks.
    pub fn stream_identifier(&self) -> Result<crate::StreamIdentifier> {
        let bad = |message: String| Error::Decode {
            operation: "DescribeStreamSummary",
            message,
        };
        let arn = parse_stream_arn(&self.stream_arn).map_err(|e| bad(e.to_string()))?;
        let created = self.stream_creation_timestamp.ok_or_else(|| {
            bad(format!(
                "stream {} has no StreamCreationTimestamp",
                self.stream_name
            ))
        })?;
        let epoch = created
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        crate::StreamIdentifier::new(arn.account, &self.stream_name, epoch).map_err(bad)
    }
}

/// A child shard, as GetRecords reports at the end of a closed shard.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildShard {
    /// The child's shard id.
    pub shard_id: String,
    /// Its parents.
    pub parent_shards: Vec<String>,
}

/// The reply of GetRecords.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetRecordsOutput {
    /// The records, in sequence order, not de-aggregated.
    pub records: Vec<Record>,
    /// The iterator for the next call; `None` at the end of a closed shard.
    pub next_shard_iterator: Option<String>,
    /// How far behind the tip of the shard the reply is.
    pub millis_behind_latest: Option<u64>,
    /// The shard's children, when the reply reaches the end of a closed shard.
    pub child_shards: Vec<ChildShard>,
}

/// What PutRecord returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutRecordOutput {
    /// The shard the record went to.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: SequenceNumber,
}

/// One entry of a PutRecords call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordsEntry {
    /// The partition key.
    pub partition_key: String,
    /// An explicit hash key, to choose the shard directly.
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Vec<u8>,
}

/// Why one record of a PutRecords call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutRecordsFailure {
    /// The error code, such as `ProvisionedThroughputExceededException`.
    pub code: String,
    /// The message.
    pub message: String,
}

impl PutRecordsFailure {
    /// True when sending the record again later may work.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code.as_str(),
            "ProvisionedThroughputExceededException" | "InternalFailure" | "ServiceUnavailable"
        )
    }
}

/// The body of a GetRecords request; a stream given by ARN (`stream`) is
/// sent as `StreamARN`.
fn get_records_input(stream: Option<&str>, iterator: &str, limit: u32) -> Result<Vec<u8>> {
    let mut input = json!({"ShardIterator": iterator, "Limit": limit});
    if let Some(arn) = stream.filter(|s| is_stream_arn(s)) {
        input["StreamARN"] = json!(arn);
    }
    serde_json::to_vec(&input).map_err(|e| Error::InvalidRequest {
        operation: "GetRecords",
        reason: format!("cannot be encoded as JSON: {e}"),
    })
}

/// True for a stream ARN (`arn:…:kinesis:…:stream/NAME`); stream names
/// cannot contain `:`.
pub(crate) fn is_stream_arn(stream: &str) -> bool {
    stream.starts_with("arn:")
}

/// A stream ARN taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamArn {
    pub(crate) region: String,
    pub(crate) account: String,
    pub(crate) name: String,
}

/// Why a text is not a stream ARN; its `Display` quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamArnError {
    /// Not `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`.
    Shape(String),
    /// The ARN and its account, which is not 12 digits.
    Account(String, String),
}

impl fmt::Display for StreamArnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamArnError::Shape(arn) => write!(
                f,
                "{arn:?} is not a stream ARN such as arn:aws:kinesis:us-east-1:123456789012:stream/NAME"
            ),
            StreamArnError::Account(arn, account) => {
                write!(f, "{arn:?}: the account {account:?} is not 12 digits")
            }
        }
    }
}

/// Parses `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`.
pub(crate) fn parse_stream_arn(arn: &str) -> std::result::Result<StreamArn, StreamArnError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let shape = || StreamArnError::Shape(arn.to_owned());
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(shape());
    };
    let name = resource.strip_prefix("stream/").ok_or_else(shape)?;
    if prefix != "arn" || partition.is_empty() || service != "kinesis" || region.is_empty() {
        return Err(shape());
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StreamArnError::Account(arn.to_owned(), account.to_owned()));
    }
    Ok(StreamArn {
        region: region.to_string(),
        account: account.to_string(),
        name: name.to_string(),
    })
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The longest shard id Kinesis accepts.
const MAX_SHARD_ID_LEN: usize = 128;

/// True when `id` can be a Kinesis shard id: 1 to 128 ASCII letters,
/// digits, `_`, `.` and `-` (Kinesis's own alphabet), and neither `.` nor
/// `..`. Shard ids from a server are checked with it before they name a
/// file, a metric or a log line, so a compromised or malicious endpoint
/// cannot point a path elsewhere (`../x`) or write control characters.
pub fn is_valid_shard_id(id: &str) -> bool {
    (1..=MAX_SHARD_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && id != "."
        && id != ".."
}

/// A decode error of `operation` for the first of `ids` (shard ids from
/// its reply) that is not a shard id.
pub(crate) fn check_shard_ids<'a>(
    operation: &'static str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    match ids.into_iter().find(|id| !is_valid_shard_id(id)) {
        Some(id) => Err(bad_reply(
            operation,
            format!(
                "{} is not a shard id (1 to {MAX_SHARD_ID_LEN} letters, digits, '_', '.' or '-')",
                shown_id(id)
            ),
        )),
        None => Ok(()),
    }
}

/// An id that is not a shard id, as errors and logs show it: quoted, with
/// control characters escaped, and cut after 64 characters.
pub(crate) fn shown_id(id: &str) -> String {
    let mut chars = id.chars();
    let head: String = chars.by_ref().take(64).collect();
    match chars.next() {
        Some(_) => format!("{head:?}…"),
        None => format!("{head:?}"),
    }
}

pub(super) fn bad_reply(operation: &'static str, message: impl Into<String>) -> Error {
    Error::Decode {
        operation,
        message: message.into(),
    }
}

/// A sequence number from a reply (not yet known to be UTF-8).
pub(super) fn parse_sequence(operation: &'static str, text: &[u8]) -> Result<SequenceNumber> {
    SequenceNumber::from_bytes(text).ok_or_else(|| {
        let shown = String::from_utf8_lossy(text);
        bad_reply(operation, format!("invalid sequence number {shown:?}"))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardJson {
    shard_id: String,
    parent_shard_id: Option<String>,
    adjacent_parent_shard_id: Option<String>,
    hash_key_range: HashKeyRangeJson,
    sequence_number_range: SequenceRangeJson,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HashKeyRangeJson {
    starting_hash_key: String,
    ending_hash_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SequenceRangeJson {
    starting_sequence_number: String,
    ending_sequence_number: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsJson {
    #[serde(default)]
    shards: Option<Vec<ShardJson>>,
    next_token: Option<String>,
}

/// Pages in a row with no new shard after which a listing ends though the
/// service sent a token (see [`KinesisClient::list_shards`]).
const PAGES_WITHOUT_NEWS: u32 = 16;

impl KinesisClient {
    /// A client for the Kinesis endpoint that `config` resolves to.
    pub fn new(config: &ClientConfig) -> Result<KinesisClient> {
        Ok(KinesisClient {
            client: Client::new(KINESIS, config)?,
        })
    }

    /// The endpoint URL requests go to.
    pub fn endpoint_url(&self) -> &str {
        self.client.endpoint().url()
    }

    /// The service's clock as of the latest reply (its `Date` header, whole
    /// seconds), if a reply had one.
    pub(crate) fn service_time(&self) -> Option<SystemTime> {
        self.client.service_time()
    }

    /// Lists the stream's shards, following every page.
    pub fn list_shards(&self, stream: &str, filter: Option<&ShardFilter>) -> Result<Vec<Shard>> {
        let filter = filter.map(|f| match f {
            ShardFilter::AtLatest => json!({"Type": "AT_LATEST"}),
            ShardFilter::AtTrimHorizon => json!({"Type": "AT_TRIM_HORIZON"}),
            ShardFilter::FromTrimHorizon => json!({"Type": "FROM_TRIM_HORIZON"}),
            ShardFilter::AtTimestamp(t) => {
                json!({"Type": "AT_TIMESTAMP", "Timestamp": epoch_seconds(*t)})
            }
            ShardFilter::FromTimestamp(t) => {
                json!({"Type": "FROM_TIMESTAMP", "Timestamp": epoch_seconds(*t)})
            }
            ShardFilter::AfterShardId(id) => json!({"Type": "AFTER_SHARD_ID", "ShardId": id}),
        });
        let mut shards: Vec<Shard> = Vec::new();
        let mut next_token: Option<String> = None;
        // The service may answer a page with no shard and a token: only the
        // absence of a token ends the listing. Some emulators ignore paging
        // (the same shards, a token for ever): a token seen before, or many
        // pages in a row with nothing new, end it too.
        let mut tokens_seen: HashSet<String> = HashSet::new();
        let mut pages_without_news = 0;
        loop {
            let input = match &next_token {
                Some(token) => json!({"NextToken": token}),
                None => {
                    let mut input = json!({"StreamName": stream});
                    if let Some(f) = &filter {
                        input["ShardFilter"] = f.clone();
                    }
                    input
                }
            };
            let page: ListShardsJson = self.call("ListShards", &input)?;
            let before = shards.len();
            for s in page.shards.unwrap_or_default() {
                let ids = [&s.parent_shard_id, &s.adjacent_parent_shard_id];
                let ids = ids.into_iter().flatten().map(String::as_str);
                check_shard_ids("ListShards", ids.chain([s.shard_id.as_str()]))?;
                // Some emulators ignore paging and repeat shards: keep the first copy.
                if shards.iter().all(|known| known.shard_id != s.shard_id) {
                    shards.push(Shard {
                        shard_id: s.shard_id,
                        parent_shard_id: s.parent_shard_id,
                        adjacent_parent_shard_id: s.adjacent_parent_shard_id,
                        starting_hash_key: s.hash_key_range.starting_hash_key,
                        ending_hash_key: s.hash_key_range.ending_hash_key,
                        starting_sequence_number: s.sequence_number_range.starting_sequence_number,
                        ending_sequence_number: s.sequence_number_range.ending_sequence_number,
                    });
                }
            }
            pages_without_news = match shards.len() > before {
                true => 0,
                false => pages_without_news + 1,
            };
            match page.next_token.filter(|t| !t.is_empty()) {
                Some(token)
                    if pages_without_news < PAGES_WITHOUT_NEWS
                        && tokens_seen.insert(token.clone()) =>
                {
                    next_token = Some(token)
                }
                _ => return Ok(shards),
            }
        }
    }

    /// Describes the stream: status, ARN, open shards, retention.
    pub fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            stream_description_summary: SummaryJson,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct SummaryJson {
            stream_name: String,
            #[serde(rename = "StreamARN")]
            stream_arn: Option<String>,
            stream_status: String,
            open_shard_count: Option<u32>,
            retention_period_hours: Option<u32>,
            stream_creation_timestamp: Option<f64>,
        }
        let reply: Reply = self.call("DescribeStreamSummary", &json!({"StreamName": stream}))?;
        let s = reply.stream_description_summary;
        Ok(StreamSummary {
            stream_name: s.stream_name,
            stream_arn: s.stream_arn.unwrap_or_default(),
            stream_status: s.stream_status,
            open_shard_count: s.open_shard_count.unwrap_or_default(),
            retention_period_hours: s.retention_period_hours.unwrap_or(24),
            stream_creation_timestamp: s
                .stream_creation_timestamp
                .and_then(|t| Duration::try_from_secs_f64(t).ok())
                .and_then(|t| UNIX_EPOCH.checked_add(t)),
        })
    }

    /// Gets an iterator for reading `shard_id` from `position`.
    pub fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String> {
        let mut input = json!({"StreamName": stream, "ShardId": shard_id});
        let kind = match position {
            IteratorPosition::TrimHorizon => "TRIM_HORIZON",
            IteratorPosition::Latest => "LATEST",
            IteratorPosition::AtSequenceNumber(s) => {
                input["StartingSequenceNumber"] = json!(s.as_str());
                "AT_SEQUENCE_NUMBER"
            }
            IteratorPosition::AfterSequenceNumber(s) => {
                input["StartingSequenceNumber"] = json!(s.as_str());
                "AFTER_SEQUENCE_NUMBER"
            }
            IteratorPosition::AtTimestamp(t) => {
                input["Timestamp"] = json!(epoch_seconds(*t));
                "AT_TIMESTAMP"
            }
        };
        input["ShardIteratorType"] = json!(kind);
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            shard_iterator: Option<String>,
        }
        let reply: Reply = self.call("GetShardIterator", &input)?;
        reply
            .shard_iterator
            .ok_or_else(|| bad_reply("GetShardIterator", "no ShardIterator in the reply"))
    }

    /// Reads up to `limit` records (1 to 10,000) from `iterator`, an
    /// iterator of shard `shard_id` (the records carry that shard id).
    pub fn get_records(
        &self,
        shard_id: &str,
        iterator: &str,
        limit: u32,
    ) -> Result<GetRecordsOutput> {
        let shard_id = Arc::from(shard_id);
        let body = get_records_input(None, iterator, limit)?;
        let (records, out) = self.client.call_with("GetRecords", &body, |reply| {
            decode_reply(reply, &shard_id, None)
        })?;
        Ok(GetRecordsOutput {
            records: records.into_iter().collect(),
            ..out
        })
    }

    /// [`KinesisClient::get_records`] with the records left to be made one
    /// at a time (the output's `records` is empty). A stream given by ARN
    /// (`stream`) is sent as `StreamARN`. Before the reply's body is read,
    /// `admit` gets its length and may wait for memory, or return false to
    /// drop the reply unread (the result is then `None`). The records'
    /// data goes into a buffer from `spares` when one fits (see
    /// `decode_reply`).
    pub(crate) fn get_records_of(
        &self,
        stream: Option<&str>,
        shard_id: &Arc<str>,
        iterator: &str,
        limit: u32,
        spares: Option<&Arc<Spares<u8>>>,
        admit: impl FnMut(u64) -> bool,
    ) -> Result<Option<(Records, GetRecordsOutput)>> {
        let body = get_records_input(stream, iterator, limit)?;
        self.client
            .call_admitting("GetRecords", &body, admit, |reply| {
                decode_reply(reply, shard_id, spares)
            })
    }

    /// Puts one record.
    pub fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) -> Result<PutRecordOutput> {
        let mut input = json!({"StreamName": stream, "PartitionKey": partition_key, "Data": BASE64.encode(data)});
        if let Some(h) = explicit_hash_key {
            input["ExplicitHashKey"] = json!(h);
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            shard_id: String,
            sequence_number: String,
        }
        let reply: Reply = self.call("PutRecord", &input)?;
        Ok(PutRecordOutput {
            shard_id: reply.shard_id,
            sequence_number: parse_sequence("PutRecord", reply.sequence_number.as_bytes())?,
        })
    }

    /// Puts up to 500 records in one call. The result holds one entry per
    /// input record, in order: its shard and sequence number, or why it was
    /// refused (a call can partly fail).
    pub fn put_records(
        &self,
        stream: &str,
        entries: &[PutRecordsEntry],
    ) -> Result<Vec<std::result::Result<PutRecordOutput, PutRecordsFailure>>> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry<'a> {
            data: String,
            partition_key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            explicit_hash_key: Option<&'a str>,
        }
        let records: Vec<Entry<'_>> = entries
            .iter()
            .map(|e| Entry {
                data: BASE64.encode(&e.data),
                partition_key: &e.partition_key,
                explicit_hash_key: e.explicit_hash_key.as_deref(),
            })
            .collect();
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Reply {
            records: Vec<ResultJson>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct ResultJson {
            sequence_number: Option<String>,
            shard_id: Option<String>,
            error_code: Option<String>,
            error_message: Option<String>,
        }
        let reply: Reply = self.call(
            "PutRecords",
            &json!({"StreamName": stream, "Records": records}),
        )?;
        if reply.records.len() != entries.len() {
            return Err(bad_reply(
                "PutRecords",
                format!(
                    "{} results for {} records",
                    reply.records.len(),
                    entries.len()
                ),
            ));
        }
        reply
            .records
            .into_iter()
            .map(|r| match (r.error_code, r.sequence_number, r.shard_id) {
                (Some(code), _, _) => Ok(Err(PutRecordsFailure {
                    code,
                    message: r.error_message.unwrap_or_default(),
                })),
                (None, Some(seq), Some(shard_id)) => Ok(Ok(PutRecordOutput {
                    shard_id,
                    sequence_number: parse_sequence("PutRecords", seq.as_bytes())?,
                })),
                _ => Err(bad_reply(
                    "PutRecords",
                    "a result has neither an error nor a sequence number",
                )),
            })
            .collect()
    }

    /// Creates a provisioned stream with `shard_count` shards.
    pub fn create_stream(&self, stream: &str, shard_count: u32) -> Result<()> {
        self.unit(
            "CreateStream",
            json!({"StreamName": stream, "ShardCount": shard_count}),
        )
    }

    /// Deletes a stream.
    pub fn delete_stream(&self, stream: &str) -> Result<()> {
        self.unit(
            "DeleteStream",
            json!({"StreamName": stream, "EnforceConsumerDeletion": true}),
        )
    }

    /// Splits `shard_id` in two at `new_starting_hash_key` (decimal).
    pub fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: &str,
    ) -> Result<()> {
        let input = json!({"StreamName": stream, "ShardToSplit": shard_id, "NewStartingHashKey": new_starting_hash_key});
        self.unit("SplitShard", input)
    }

    /// Merges two adjacent shards into one.
    pub fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<()> {
        let input = json!({"StreamName": stream, "ShardToMerge": shard_id, "AdjacentShardToMerge": adjacent_shard_id});
        self.unit("MergeShards", input)
    }

    /// Scales the stream uniformly to `target_shard_count` open shards.
    pub fn update_shard_count(&self, stream: &str, target_shard_count: u32) -> Result<()> {
        let input = json!({"StreamName": stream, "TargetShardCount": target_shard_count, "ScalingType": "UNIFORM_SCALING"});
        self.unit("UpdateShardCount", input)
    }

    /// Polls DescribeStreamSummary until the stream is ACTIVE, for at most `timeout`.
    pub fn wait_until_active(&self, stream: &str, timeout: Duration) -> Result<StreamSummary> {
        wait_until_active(&format!("stream {stream}"), timeout, || {
            let summary = self.describe_stream_summary(stream)?;
            let status = summary.stream_status.clone();
            Ok((summary, status))
        })
    }

    fn unit(&self, operation: &'static str, input: serde_json::Value) -> Result<()> {
        let _: serde_json::Value = self.call(operation, &input)?;
        Ok(())
    }

    /// The signed JSON client underneath.
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Calls `operation`; a stream given by ARN is sent as `StreamARN`.
    pub(super) fn call<O: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        input: &serde_json::Value,
    ) -> Result<O> {
        match input.get("StreamName").and_then(|s| s.as_str()) {
            Some(stream) if is_stream_arn(stream) => {
                let mut input = input.clone();
                if let Some(fields) = input.as_object_mut() {
                    let arn = fields.remove("StreamName").unwrap_or_default();
                    fields.insert("StreamARN".into(), arn);
                }
                self.client.call(operation, &input)
            }
            _ => self.client.call(operation, input),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::credentials::Credentials;
    use crate::aws::test_server::FakeServer;

    const ARN: &str = "arn:aws:kinesis:eu-west-1:111122223333:stream/orders";

    #[test]
    fn parses_stream_arns() {
        assert_eq!(
            parse_stream_arn(ARN).unwrap(),
            StreamArn {
                region: "eu-west-1".into(),
                account: "111122223333".into(),
                name: "orders".into(),
            }
        );
        assert_eq!(
            parse_stream_arn("arn:aws-cn:kinesis:cn-north-1:111122223333:stream/a.b-c")
                .unwrap()
                .name,
            "a.b-c"
        );
        for bad in [
            "orders",
            "arn:aws:kinesis:eu-west-1:111122223333:orders",
            "arn:aws:sqs:eu-west-1:111122223333:stream/orders",
            "arn:aws:kinesis::111122223333:stream/orders",
            "arn:aws:kinesis:eu-west-1:1111:stream/orders",
            "arn:aws:kinesis:eu-west-1:111122223333",
        ] {
            assert!(parse_stream_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_summary_gives_the_multi_stream_identity() {
        let server = FakeServer::start(|_| {
            (
                200,
                format!(
                    r#"{{"StreamDescriptionSummary":{{"StreamName":"orders","StreamARN":"{ARN}",
                    "StreamStatus":"ACTIVE","OpenShardCount":1,"StreamCreationTimestamp":1700000000.75}}}}"#
                ),
            )
        });
        let summary = client_of(&server)
            .describe_stream_summary("orders")
            .unwrap();
        let id = summary.stream_identifier().unwrap();
        assert_eq!(id.to_string(), "111122223333:orders:1700000000");
        let mut undated = summary.clone();
        undated.stream_creation_timestamp = None;
        let e = undated.stream_identifier().unwrap_err().to_string();
        assert!(e.contains("StreamCreationTimestamp"), "{e}");
    }

    #[test]
    fn shard_ids_are_checked() {
        for good in [
            "shardId-000000000000",
            "a",
            "a.b_c-D9",
            &"x".repeat(128),
            "...",
        ] {
            assert!(is_valid_shard_id(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/x",
            "a\\b",
            "a b",
            "é",
            "a\u{1b}",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_shard_id(bad), "{bad:?}");
        }
        assert_eq!(shown_id("a\u{1b}b"), r#""a\u{1b}b""#);
        assert_eq!(shown_id(&"y".repeat(100)), format!("{:?}…", "y".repeat(64)));
    }

    #[test]
    fn list_shards_refuses_a_shard_id_that_could_name_another_path() {
        let server = FakeServer::start(|_| {
            (
                200,
                r#"{"Shards":[{"ShardId":"../x","HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"},
                   "SequenceNumberRange":{"StartingSequenceNumber":"0"}}]}"#
                    .into(),
            )
        });
        let client = client_of(&server);
        let err = client.list_shards("s", None).unwrap_err();
        assert!(
            matches!(&err, Error::Decode { operation: "ListShards", message } if message.contains(r#""../x" is not a shard id"#)),
            "{err:?}"
        );
    }

    /// A client of `server` that tries each call once.
    fn client_of(server: &FakeServer) -> KinesisClient {
        KinesisClient::new(
            &ClientConfig::new()
                .region("eu-west-1")
                .endpoint_url(&server.url)
                .max_attempts(1)
                .credentials(Credentials::new("AKID", "secret")),
        )
        .unwrap()
    }

    #[test]
    fn list_shards_pages_past_an_empty_page_until_no_token_and_stops_on_a_repeated_one() {
        let shard = |id: &str| {
            format!(
                r#"{{"ShardId":"{id}","HashKeyRange":{{"StartingHashKey":"0","EndingHashKey":"9"}},"SequenceNumberRange":{{"StartingSequenceNumber":"0"}}}}"#
            )
        };
        let (a, b) = (shard("shardId-a"), shard("shardId-b"));
        let server = FakeServer::start(move |r| {
            let page = match r.body.contains("NextToken") {
                false => format!(r#"{{"Shards":[{a}],"NextToken":"t1"}}"#),
                true if r.body.contains("t1") => r#"{"Shards":[],"NextToken":"t2"}"#.to_owned(),
                true => format!(r#"{{"Shards":[{b}]}}"#),
            };
            (200, page)
        });
        let client = client_of(&server);
        let ids: Vec<String> = client
            .list_shards("s", None)
            .unwrap()
            .into_iter()
            .map(|s| s.shard_id)
            .collect();
        assert_eq!(ids, ["shardId-a", "shardId-b"]);
        // An emulator that answers every page alike, token and all.
        let repeat = shard("shardId-a");
        let server = FakeServer::start(move |_| {
            (
                200,
                format!(r#"{{"Shards":[{repeat}],"NextToken":"same"}}"#),
            )
        });
        let client = client_of(&server);
        assert_eq!(client.list_shards("s", None).unwrap().len(), 1);
    }

    #[test]
    fn a_stream_given_by_arn_is_sent_as_stream_arn() {
        let server = FakeServer::start(|r| {
            match r.operation() {
            "DescribeStreamSummary" => (
                200,
                r#"{"StreamDescriptionSummary":{"StreamName":"orders","StreamStatus":"ACTIVE","OpenShardCount":1}}"#
                    .into(),
            ),
            "GetShardIterator" => (200, r#"{"ShardIterator":"it-1"}"#.into()),
            "GetRecords" => (200, r#"{"Records":[],"NextShardIterator":"it-2"}"#.into()),
            "ListShards" => (200, r#"{"Shards":[]}"#.into()),
            _ => (400, "{}".into()),
        }
        });
        let client = KinesisClient::new(
            &ClientConfig::new()
                .region("eu-west-1")
                .endpoint_url(&server.url)
                .credentials(Credentials::new("AKID", "secret")),
        )
        .unwrap();
        client.describe_stream_summary(ARN).unwrap();
        client
            .get_shard_iterator(ARN, "shardId-0", &IteratorPosition::TrimHorizon)
            .unwrap();
        client.list_shards(ARN, None).unwrap();
        client
            .get_records_of(Some(ARN), &Arc::from("shardId-0"), "it-1", 10, None, |_| {
                true
            })
            .unwrap();
        client.describe_stream_summary("orders").unwrap();
        client
            .get_records_of(
                Some("orders"),
                &Arc::from("shardId-0"),
                "it-1",
                10,
                None,
                |_| true,
            )
            .unwrap();
        let bodies: Vec<serde_json::Value> = server
            .requests()
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        for body in &bodies[..4] {
            assert_eq!(body["StreamARN"], ARN, "{body}");
            assert!(body.get("StreamName").is_none(), "{body}");
        }
        assert_eq!(bodies[4]["StreamName"], "orders");
        assert!(bodies[4].get("StreamARN").is_none());
        assert!(bodies[5].get("StreamARN").is_none());
    }
}
