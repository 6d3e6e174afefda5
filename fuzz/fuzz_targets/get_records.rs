//! Any GetRecords reply body: the decoder returns records or an error,
//! never panics. Inputs are also wrapped as the `Data` of a record and as a
//! sequence number, to get past the JSON layer into base64 and sequence
//! number parsing.
#![no_main]

use kinesis_consumer::__fuzz::decode_get_records;
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
    if let Ok(out) = decode_get_records(body) {
        // An empty iterator means "none": never handed on as a string.
        assert!(out.next_shard_iterator.as_deref() != Some(""));
        for r in &out.records {
            assert!(!r.sequence_number().as_str().is_empty());
        }
    }
}
