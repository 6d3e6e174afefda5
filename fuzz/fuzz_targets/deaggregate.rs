//! Any input: `deaggregate` returns records or an error, never panics. When it
//! returns records, aggregating them again and de-aggregating the result gives
//! the same records.
//!
//! Mutated inputs almost never keep a valid MD5 digest, so each input is also
//! tried as the protobuf message of an aggregate: framed with the magic bytes
//! and its own digest, which takes it past the digest check into the parser.
#![no_main]

use kinesis_consumer::kpl::{AggregationError, Aggregator, MAGIC, UserRecord, deaggregate};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut framed = MAGIC.to_vec();
    framed.extend_from_slice(data);
    framed.extend_from_slice(&Md5::digest(data));
    check(&framed);
});

fn check(data: &[u8]) {
    let Ok(records) = deaggregate(data) else {
        return;
    };
    assert!(!records.is_empty(), "Ok with no records");

    let mut aggregator = Aggregator::new();
    let mut aggregates = Vec::new();
    for r in &records {
        match aggregator.add(r.partition_key, r.explicit_hash_key, r.data) {
            Ok(done) => aggregates.extend(done),
            // Aggregates from elsewhere may hold keys Kinesis would not accept
            // as a record's partition key; only those may be refused.
            Err(AggregationError::InvalidPartitionKey) => {
                let chars = r.partition_key.chars().count();
                assert!(chars == 0 || chars > 256, "valid key refused");
                return;
            }
            Err(e) => panic!("re-aggregating a de-aggregated record failed: {e}"),
        }
    }
    aggregates.extend(aggregator.flush());

    let mut again: Vec<UserRecord<'_>> = Vec::new();
    for a in &aggregates {
        assert!(a.data.len() + a.partition_key.len() <= 1_048_576);
        let part = deaggregate(&a.data).expect("our aggregate de-aggregates");
        assert_eq!(part.len(), a.user_records);
        again.extend(part);
    }
    assert_eq!(again, records);
}
