//! Thin wrappers around internal parsers for the fuzz targets in `fuzz/`
//! (feature `fuzzing`). Not a stable API.

use std::collections::HashMap;

pub use crate::aws::kinesis::GetRecordsOutput;

/// The GetRecords reply decoder.
pub fn decode_get_records(body: &[u8]) -> crate::Result<GetRecordsOutput> {
    crate::aws::get_records::decode_get_records(body, &std::sync::Arc::from("shardId-0"))
}

/// The same, with serde_json only: the oracle for the scanner.
pub fn decode_get_records_with_serde(body: &[u8]) -> crate::Result<GetRecordsOutput> {
    crate::aws::get_records::decode_get_records_with_serde(body, &std::sync::Arc::from("shardId-0"))
}

/// The error of a non-2xx reply, from its status, `x-amzn-ErrorType`
/// header and body.
pub fn service_error(status: u16, error_type: Option<&str>, body: &[u8]) -> crate::ServiceError {
    crate::aws::client::service_error("Fuzz", status, None, error_type.map(str::to_owned), body)
}

/// A reply body decoded as JSON, as every non-GetRecords call does.
pub fn decode_json(body: &[u8]) -> crate::Result<serde_json::Value> {
    crate::aws::client::decode("Fuzz", body)
}

/// A lease table row (DynamoDB JSON) to a lease, or why it is unusable.
pub fn parse_lease(item: &crate::aws::dynamodb::Item) -> Result<crate::Lease, String> {
    crate::lease::parse_lease(item).map_err(|why| why.to_string())
}

/// The stored form of a checkpoint, and back.
pub fn checkpoint_columns(checkpoint: &crate::Checkpoint) -> (String, u64) {
    let (text, sub) = checkpoint.to_columns();
    (text.to_owned(), sub)
}

/// Parses checkpoint columns (`timestamp`: the row's checkpointTimestamp).
pub fn checkpoint_from_columns(
    text: &str,
    sub: u64,
    timestamp: Option<std::time::SystemTime>,
) -> Option<crate::Checkpoint> {
    crate::Checkpoint::from_columns(text, sub, timestamp)
}

/// The shared config (`config = true`) or credentials file parser.
pub fn parse_profile_file(text: &str, config: bool) -> HashMap<String, HashMap<String, String>> {
    let kind = if config {
        crate::aws::FileKind::Config
    } else {
        crate::aws::FileKind::Credentials
    };
    crate::aws::parse_profile_file(text, kind)
}
