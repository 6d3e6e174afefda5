//! Internals this crate's own integration tests, benchmarks and fuzz
//! targets reach past the public API: the lease table's DynamoDB
//! operations (to stage and read rows), CloudWatch reads (to see what was
//! published), the SigV4 signer (to check it against an independent
//! one) and the two record decoders (for the decoder benchmark). Not a
//! stable API: anything here may change in any release.
//!
//! Always compiled (it only re-exports), so a bare `cargo test` builds the
//! tests without a feature flag.

pub use crate::aws::cloudwatch::{CloudWatchClient, Dimension, MetricDescription};
pub use crate::aws::dynamodb::{AttributeValue, DynamoDbClient, Expression, Item};
pub use crate::aws::sigv4::{SignableRequest, SigningOptions, sign};
/// The worker items and lock item of a leader-run fleet (issue 25).
pub use crate::lease::MemberItems;
/// The fleet benchmark on the simulated lease table (feature `simulation`).
#[cfg(feature = "simulation")]
pub use crate::lease::{FleetFigures, SkewedRound, simulate_fleet, simulate_skewed_fleet};

/// Decodes a GetRecords reply body as a polling reader does (the scanner,
/// serde_json for unusual shapes); its records, made one at a time.
pub fn decode_get_records_reply(body: &[u8]) -> crate::Result<Vec<crate::Record>> {
    let (records, _) =
        crate::aws::get_records::decode_reply(body, &std::sync::Arc::from("shardId-0"), None)?;
    Ok(records.into_iter().collect())
}

/// Decodes event-stream bytes as a fan-out subscription does once they
/// are in its decoder's buffer (in place: both CRCs, headers, then each
/// `SubscribeToShardEvent` payload); the records of every event, in
/// order. Other messages are skipped.
pub fn decode_subscribe_to_shard_events(mut bytes: &[u8]) -> crate::Result<Vec<crate::Record>> {
    let shard_id: std::sync::Arc<str> = std::sync::Arc::from("shardId-0");
    let mut all = Vec::new();
    while let Some((m, len)) =
        crate::aws::event_stream::split_message(bytes).map_err(|e| crate::Error::Decode {
            operation: "SubscribeToShard",
            message: e.to_string(),
        })?
    {
        if m.header_str(":message-type") == Some("event")
            && m.header_str(":event-type") == Some("SubscribeToShardEvent")
        {
            let (records, _) =
                crate::aws::get_records::decode_subscribe_event(m.payload, &shard_id)?;
            all.extend(records);
        }
        bytes = &bytes[len..];
    }
    Ok(all)
}

/// The CRC-32 of the event-stream encoding (to build messages).
pub fn event_stream_crc32(data: &[u8]) -> u32 {
    crate::aws::event_stream::crc32(data)
}

/// `time` as RFC 3339 with milliseconds, as the library writes times.
pub fn format_rfc3339(time: std::time::SystemTime) -> String {
    crate::time::format_rfc3339(time, true)
}
