//! Any GetRecords reply body: the decoder returns records or an error,
//! never panics, and agrees with serde_json alone (the oracle) on what it
//! accepts and what it decodes. Inputs are also wrapped as the `Data` of a record and as a
//! sequence number, to get past the JSON layer into base64 and sequence
//! number parsing.
#![no_main]

use kinesis_consumer::__fuzz::{decode_get_records, decode_get_records_with_serde};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    let text = String::from_utf8_lossy(data);
    let as_data = serde_json::json!({
        "Records": [{"SequenceNumber": "1", "PartitionKey": "k", "Data": text}],
        "NextShardIterator": "it"
    });
    check(as_data.to_string().as_bytes());
    let as_sequence = serde_json::json!({
        "Records": [{"SequenceNumber": text, "PartitionKey": "k", "Data": "", "ApproximateArrivalTimestamp": data.len() as f64 * 1e15}],
        "ChildShards": [{"ShardId": text, "ParentShards": null}]
    });
    check(as_sequence.to_string().as_bytes());
});

fn check(body: &[u8]) {
    let ours = decode_get_records(body);
    let oracle = decode_get_records_with_serde(body);
    assert_eq!(ours.is_ok(), oracle.is_ok(), "{ours:?} vs {oracle:?}");
    let (Ok(out), Ok(expected)) = (ours, oracle) else {
        return;
    };
    // An empty iterator means "none": never handed on as a string.
    assert!(out.next_shard_iterator.as_deref() != Some(""));
    assert_eq!(out.next_shard_iterator, expected.next_shard_iterator);
    assert_eq!(out.millis_behind_latest, expected.millis_behind_latest);
    assert_eq!(out.child_shards, expected.child_shards);
    assert_eq!(out.records.len(), expected.records.len());
    for (r, e) in out.records.iter().zip(&expected.records) {
        assert!(!r.sequence_number().as_str().is_empty());
        assert_eq!(r.sequence_number(), e.sequence_number());
        assert_eq!(r.partition_key(), e.partition_key());
        assert_eq!(r.data(), e.data());
        // serde_json and Rust's float parser may differ in the last bit.
        let gap = match (r.approximate_arrival_timestamp(), e.approximate_arrival_timestamp()) {
            (Some(a), Some(b)) => a.duration_since(b).or(b.duration_since(a)).map_or(0, |d| d.as_micros()),
            (a, b) => {
                assert_eq!(a, b);
                0
            }
        };
        assert!(gap <= 1, "arrival times differ by {gap} µs");
    }
}
