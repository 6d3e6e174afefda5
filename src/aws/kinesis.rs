//! Typed Kinesis operations over the JSON protocol.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::aws::client::{Client, ClientConfig, KINESIS};
use crate::error::{Error, Result};
use crate::record::SequenceNumber;

/// A Kinesis client: the operations a consumer and a simple producer need.
#[derive(Clone, Debug)]
pub struct KinesisClient {
    client: Client,
}

/// One shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// One record as GetRecords returns it, before KPL de-aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisRecord {
    /// The record's sequence number.
    pub sequence_number: SequenceNumber,
    /// The partition key it was put with.
    pub partition_key: String,
    /// The payload, base64-decoded.
    pub data: Vec<u8>,
    /// When Kinesis accepted it.
    pub approximate_arrival_timestamp: Option<SystemTime>,
}

/// A child shard, as GetRecords reports at the end of a closed shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's shard id.
    pub shard_id: String,
    /// Its parents.
    pub parent_shards: Vec<String>,
}

/// The reply of GetRecords.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetRecordsOutput {
    /// The records, in sequence order.
    pub records: Vec<KinesisRecord>,
    /// The iterator for the next call; `None` at the end of a closed shard.
    pub next_shard_iterator: Option<String>,
    /// How far behind the tip of the shard the reply is.
    pub millis_behind_latest: Option<u64>,
    /// The shard's children, when the reply reaches the end of a closed shard.
    pub child_shards: Vec<ChildShard>,
}

/// What PutRecord returns.
#[derive(Clone, Debug, PartialEq, Eq)]
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

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn from_epoch_seconds(secs: f64) -> Option<SystemTime> {
    (secs.is_finite() && secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

fn bad_reply(operation: &'static str, message: impl Into<String>) -> Error {
    Error::Decode {
        operation,
        message: message.into(),
    }
}

fn parse_sequence(operation: &'static str, text: &str) -> Result<SequenceNumber> {
    SequenceNumber::parse(text)
        .ok_or_else(|| bad_reply(operation, format!("invalid sequence number {text:?}")))
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsJson<'a> {
    #[serde(borrow, default)]
    records: Option<Vec<RecordJson<'a>>>,
    next_shard_iterator: Option<String>,
    millis_behind_latest: Option<u64>,
    #[serde(default)]
    child_shards: Option<Vec<ChildShardJson>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordJson<'a> {
    #[serde(borrow)]
    sequence_number: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow)]
    data: Cow<'a, str>,
    approximate_arrival_timestamp: Option<f64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ChildShardJson {
    shard_id: String,
    #[serde(default)]
    parent_shards: Option<Vec<String>>,
}

/// Decodes a GetRecords reply. The usual shape (no escapes, no child
/// shards) goes through a single-pass scanner that decodes each record
/// straight from the body, with no intermediate list; anything else goes
/// through serde_json, which accepts every valid reply.
pub(crate) fn decode_get_records(body: &[u8]) -> Result<GetRecordsOutput> {
    match fast::get_records(body) {
        Some(out) => out,
        None => decode_get_records_serde(body),
    }
}

/// The general decoder, borrowing strings from the body where it can.
fn decode_get_records_serde(body: &[u8]) -> Result<GetRecordsOutput> {
    const OP: &str = "GetRecords";
    let reply: GetRecordsJson<'_> =
        serde_json::from_slice(body).map_err(|e| bad_reply(OP, e.to_string()))?;
    let records = reply.records.unwrap_or_default();
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        out.push(record_from_parts(
            &r.sequence_number,
            &r.partition_key,
            r.data.as_bytes(),
            r.approximate_arrival_timestamp,
        )?);
    }
    Ok(GetRecordsOutput {
        records: out,
        next_shard_iterator: reply.next_shard_iterator.filter(|s| !s.is_empty()),
        millis_behind_latest: reply.millis_behind_latest,
        child_shards: reply
            .child_shards
            .unwrap_or_default()
            .into_iter()
            .map(|c| ChildShard {
                shard_id: c.shard_id,
                parent_shards: c.parent_shards.unwrap_or_default(),
            })
            .collect(),
    })
}

/// One record from its JSON fields: checks the sequence number, decodes
/// the base64 data into a buffer of exactly the right size.
fn record_from_parts(
    sequence_number: &str,
    partition_key: &str,
    data: &[u8],
    arrival: Option<f64>,
) -> Result<KinesisRecord> {
    const OP: &str = "GetRecords";
    let sequence_number = parse_sequence(OP, sequence_number)?;
    let mut decoded = Vec::with_capacity(data.len() / 4 * 3 + 3);
    BASE64.decode_vec(data, &mut decoded).map_err(|e| {
        bad_reply(
            OP,
            format!("record {sequence_number} has invalid base64 data: {e}"),
        )
    })?;
    Ok(KinesisRecord {
        sequence_number,
        partition_key: partition_key.to_owned(),
        data: decoded,
        approximate_arrival_timestamp: arrival.and_then(from_epoch_seconds),
    })
}

/// A scanner for the common shape of a GetRecords reply. It gives up
/// (`None`) on anything it does not expect, such as an escaped string,
/// child shards or an unknown nested field, and the caller falls back to
/// serde_json; a reply it accepts decodes exactly as serde_json would.
mod fast {
    use super::{GetRecordsOutput, KinesisRecord, record_from_parts};
    use crate::error::Result;

    struct Scanner<'a> {
        body: &'a [u8],
        at: usize,
    }

    impl<'a> Scanner<'a> {
        fn skip_ws(&mut self) {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.body.get(self.at) {
                self.at += 1;
            }
        }

        /// The next non-space byte, consumed.
        fn next(&mut self) -> Option<u8> {
            self.skip_ws();
            let b = *self.body.get(self.at)?;
            self.at += 1;
            Some(b)
        }

        fn peek(&mut self) -> Option<u8> {
            self.skip_ws();
            self.body.get(self.at).copied()
        }

        fn expect(&mut self, byte: u8) -> Option<()> {
            (self.next()? == byte).then_some(())
        }

        /// A string without escapes, as raw bytes (the opening quote next).
        fn raw_string(&mut self) -> Option<&'a [u8]> {
            self.expect(b'"')?;
            let start = self.at;
            let len = self.body[start..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
            let end = start + len;
            if self.body[end] != b'"' {
                return None;
            }
            self.at = end + 1;
            Some(&self.body[start..end])
        }

        fn string(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.raw_string()?).ok()
        }

        fn is_null(&mut self) -> bool {
            self.skip_ws();
            if self.body[self.at..].starts_with(b"null") {
                self.at += 4;
                true
            } else {
                false
            }
        }

        fn number_text(&mut self) -> Option<&'a str> {
            self.skip_ws();
            let start = self.at;
            while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.body.get(self.at)
            {
                self.at += 1;
            }
            std::str::from_utf8(&self.body[start..self.at]).ok()
        }

        fn f64(&mut self) -> Option<Option<f64>> {
            if self.is_null() {
                return Some(None);
            }
            let v: f64 = self.number_text()?.parse().ok()?;
            v.is_finite().then_some(Some(v))
        }

        fn u64(&mut self) -> Option<Option<u64>> {
            if self.is_null() {
                return Some(None);
            }
            Some(Some(self.number_text()?.parse().ok()?))
        }

        /// A string or null.
        fn opt_string(&mut self) -> Option<Option<&'a str>> {
            if self.is_null() {
                return Some(None);
            }
            self.string().map(Some)
        }

        /// Walks an object, calling `field` with each key; `field` reads the
        /// value.
        fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
            self.expect(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                let key = self.raw_string()?;
                self.expect(b':')?;
                field(self, key)?;
                match self.next()? {
                    b',' => continue,
                    b'}' => return Some(()),
                    _ => return None,
                }
            }
        }
    }

    pub(super) fn get_records(body: &[u8]) -> Option<Result<GetRecordsOutput>> {
        let mut s = Scanner { body, at: 0 };
        let mut out = GetRecordsOutput::default();
        let mut failed = None;
        s.object(|s, key| {
            match key {
                b"Records" => {
                    if s.is_null() {
                        return Some(());
                    }
                    s.expect(b'[')?;
                    if s.peek()? == b']' {
                        s.at += 1;
                        return Some(());
                    }
                    loop {
                        let record = record(s)?;
                        match record {
                            Ok(r) => out.records.push(r),
                            Err(e) => {
                                failed.get_or_insert(e);
                            }
                        }
                        match s.next()? {
                            b',' => continue,
                            b']' => return Some(()),
                            _ => return None,
                        }
                    }
                }
                b"NextShardIterator" => {
                    out.next_shard_iterator =
                        s.opt_string()?.filter(|t| !t.is_empty()).map(str::to_owned);
                    Some(())
                }
                b"MillisBehindLatest" => {
                    out.millis_behind_latest = s.u64()?;
                    Some(())
                }
                b"ChildShards" => {
                    // Only at the end of a closed shard: leave it to serde.
                    if s.is_null() {
                        return Some(());
                    }
                    s.expect(b'[')?;
                    s.expect(b']')
                }
                _ => None,
            }
        })?;
        if s.peek().is_some() {
            return None;
        }
        Some(match failed {
            Some(e) => Err(e),
            None => Ok(out),
        })
    }

    /// One record object; the inner `Err` is a record that is well-formed
    /// JSON but not a valid record (bad sequence number or base64).
    fn record(s: &mut Scanner<'_>) -> Option<Result<KinesisRecord>> {
        let (mut seq, mut key, mut data, mut arrival) = (None, None, None, None);
        s.object(|s, field| {
            match field {
                b"SequenceNumber" => seq = Some(s.string()?),
                b"PartitionKey" => key = Some(s.string()?),
                b"Data" => data = Some(s.raw_string()?),
                b"ApproximateArrivalTimestamp" => arrival = s.f64()?,
                b"EncryptionType" => {
                    s.opt_string()?;
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(record_from_parts(seq?, key?, data?, arrival))
    }
}

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
            let page: ListShardsJson = self.client.call("ListShards", &input)?;
            let before = shards.len();
            for s in page.shards.unwrap_or_default() {
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
            match page.next_token.filter(|t| !t.is_empty()) {
                Some(token) if shards.len() > before => next_token = Some(token),
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
        }
        let reply: Reply = self
            .client
            .call("DescribeStreamSummary", &json!({"StreamName": stream}))?;
        let s = reply.stream_description_summary;
        Ok(StreamSummary {
            stream_name: s.stream_name,
            stream_arn: s.stream_arn.unwrap_or_default(),
            stream_status: s.stream_status,
            open_shard_count: s.open_shard_count.unwrap_or_default(),
            retention_period_hours: s.retention_period_hours.unwrap_or(24),
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
        let reply: Reply = self.client.call("GetShardIterator", &input)?;
        reply
            .shard_iterator
            .ok_or_else(|| bad_reply("GetShardIterator", "no ShardIterator in the reply"))
    }

    /// Reads up to `limit` records (1 to 10,000) from `iterator`.
    pub fn get_records(&self, iterator: &str, limit: u32) -> Result<GetRecordsOutput> {
        let body = serde_json::to_vec(&json!({"ShardIterator": iterator, "Limit": limit}))
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.client
            .call_with("GetRecords", &body, decode_get_records)
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
        let reply: Reply = self.client.call("PutRecord", &input)?;
        Ok(PutRecordOutput {
            shard_id: reply.shard_id,
            sequence_number: parse_sequence("PutRecord", &reply.sequence_number)?,
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
        let reply: Reply = self.client.call(
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
                    sequence_number: parse_sequence("PutRecords", &seq)?,
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
        let deadline = Instant::now() + timeout;
        loop {
            let summary = self.describe_stream_summary(stream)?;
            if summary.stream_status == "ACTIVE" {
                return Ok(summary);
            }
            if Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "stream {stream} is still {} after {timeout:?}",
                    summary.stream_status
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn unit(&self, operation: &'static str, input: serde_json::Value) -> Result<()> {
        let _: serde_json::Value = self.client.call(operation, &input)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_get_records_with_emulator_quirks() {
        let body = br#"{"Records":[
            {"SequenceNumber":"0","PartitionKey":"a","Data":"aGk=","ApproximateArrivalTimestamp":1700000000},
            {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","PartitionKey":"b\u00e9",
             "Data":"","ApproximateArrivalTimestamp":1700000000.25,"EncryptionType":null}],
            "NextShardIterator":null,"MillisBehindLatest":null,"ChildShards":null}"#;
        let out = decode_get_records(body).unwrap();
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].data, b"hi");
        assert_eq!(
            out.records[0].approximate_arrival_timestamp,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(out.records[1].partition_key, "bé");
        assert_eq!(
            out.records[1].approximate_arrival_timestamp,
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_250))
        );
        assert!(out.next_shard_iterator.is_none() && out.millis_behind_latest.is_none());
        assert!(out.child_shards.is_empty());
    }

    #[test]
    fn get_records_rejects_bad_data_and_sequence_numbers() {
        let bad_b64 = br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"!!"}]}"#;
        assert!(matches!(
            decode_get_records(bad_b64),
            Err(Error::Decode { .. })
        ));
        let bad_seq = br#"{"Records":[{"SequenceNumber":"x1","PartitionKey":"a","Data":""}]}"#;
        assert!(
            decode_get_records(bad_seq)
                .unwrap_err()
                .to_string()
                .contains("x1")
        );
        assert!(decode_get_records(b"{\"Records\":[").is_err());
    }

    #[test]
    fn decodes_child_shards() {
        let body = br#"{"Records":[],"NextShardIterator":null,"MillisBehindLatest":0,
            "ChildShards":[{"ShardId":"shardId-2","ParentShards":["shardId-0","shardId-1"],
            "HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#;
        let out = decode_get_records(body).unwrap();
        assert_eq!(
            out.child_shards,
            vec![ChildShard {
                shard_id: "shardId-2".into(),
                parent_shards: vec!["shardId-0".into(), "shardId-1".into()]
            }]
        );
        assert_eq!(out.millis_behind_latest, Some(0));
    }

    #[test]
    fn fast_scanner_agrees_with_serde_or_steps_aside() {
        let bodies: [&[u8]; 9] = [
            br#"{"Records":[{"SequenceNumber":"12","ApproximateArrivalTimestamp":1.700000000123E9,"Data":"aGVsbG8=","PartitionKey":"k1"},{"SequenceNumber":"13","Data":"","PartitionKey":"k2","EncryptionType":"KMS"}],"NextShardIterator":"it","MillisBehindLatest":5}"#,
            b" { \"Records\" : [ { \"Data\" : \"YQ==\" , \"PartitionKey\":\"p\",\"SequenceNumber\":\"7\",\"ApproximateArrivalTimestamp\":null } ] ,\n\"NextShardIterator\":\"\" } ",
            br#"{"Records":[],"NextShardIterator":"x","MillisBehindLatest":0,"ChildShards":[]}"#,
            br#"{"Records":null}"#,
            br#"{}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"aGk\/"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a"}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"aGk="}]} x"#,
            br#"{"Records":[{"SequenceNumber":"1","PartitionKey":"a","Data":"aGk=","Extra":{"x":1}}],"Other":[1]}"#,
        ];
        for body in bodies {
            let text = String::from_utf8_lossy(body);
            let general = decode_get_records_serde(body);
            match fast::get_records(body) {
                Some(Ok(out)) => assert_eq!(Ok(&out), general.as_ref().map_err(|_| ()), "{text}"),
                Some(Err(_)) => assert!(general.is_err(), "{text}"),
                None => {}
            }
            assert_eq!(
                decode_get_records(body).map_err(|e| e.to_string()),
                general.map_err(|e| e.to_string()),
                "{text}"
            );
        }
        assert!(
            fast::get_records(bodies[0]).is_some(),
            "the usual shape is scanned"
        );
        assert!(
            fast::get_records(bodies[5]).is_none(),
            "escapes go to serde"
        );
    }
}
