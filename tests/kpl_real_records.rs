//! De-aggregates records written by the real Kinesis Producer Library and
//! checks they yield exactly the user records listed with them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kinesis_consumer::kpl::{DeaggregationError, deaggregate, is_aggregated};
use serde_json::Value;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/kpl/real-kpl-records.json"
);

fn b64(value: &Value, what: &str) -> Vec<u8> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string"));
    STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("{what} is not base64: {e}"))
}

#[test]
fn real_kpl_records_deaggregate_as_listed() {
    let text = match std::fs::read_to_string(PATH) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("note: skipping, cannot read {PATH}: {e}");
            return;
        }
    };
    let json: Value = serde_json::from_str(&text).expect("test data is JSON");
    let cases = json["cases"].as_array().expect("`cases` is an array");

    let mut aggregated_checked = 0;
    let mut user_records_checked = 0;
    let mut plain_checked = 0;
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let blob = b64(&case["blob_base64"], name);
        if let Some(len) = case["blob_length"].as_u64() {
            assert_eq!(blob.len() as u64, len, "{name}: blob length");
        }
        match &case["expected"] {
            Value::String(s) if s == "not_aggregated" => {
                assert!(!is_aggregated(&blob), "{name}");
                assert_eq!(
                    deaggregate(&blob),
                    Err(DeaggregationError::NotAggregated),
                    "{name}"
                );
                plain_checked += 1;
            }
            Value::Array(expected) => {
                assert!(is_aggregated(&blob), "{name}");
                let records = deaggregate(&blob)
                    .unwrap_or_else(|e| panic!("{name}: deaggregate failed: {e}"));
                assert_eq!(records.len(), expected.len(), "{name}: record count");
                for (i, (got, want)) in records.iter().zip(expected).enumerate() {
                    assert_eq!(
                        got.partition_key,
                        want["partition_key"].as_str().expect("partition_key"),
                        "{name}[{i}]: partition key"
                    );
                    assert_eq!(
                        got.explicit_hash_key,
                        want["explicit_hash_key"].as_str(),
                        "{name}[{i}]: explicit hash key"
                    );
                    assert_eq!(
                        got.data,
                        b64(&want["data_base64"], name).as_slice(),
                        "{name}[{i}]: data"
                    );
                    if let Some(sub) = want["sub_sequence_number"].as_u64() {
                        assert_eq!(sub, i as u64, "{name}[{i}]: order");
                    }
                    user_records_checked += 1;
                }
                aggregated_checked += 1;
            }
            other => panic!("{name}: unexpected `expected`: {other}"),
        }
    }
    eprintln!(
        "checked {aggregated_checked} aggregated records ({user_records_checked} user records) \
         and {plain_checked} plain records"
    );
    assert!(aggregated_checked > 0);
}
