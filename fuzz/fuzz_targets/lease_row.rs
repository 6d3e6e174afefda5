//! Any lease table row (as DynamoDB JSON): the row parser returns a lease or
//! says why the row is unusable, never panics. A parsed lease has a counter
//! that can be bumped without overflow, and its checkpoint survives the
//! trip to the stored columns and back.
#![no_main]

use kinesis_consumer::__fuzz::{checkpoint_columns, checkpoint_from_columns, parse_lease};
use kinesis_consumer::__test_support::Item;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(item) = serde_json::from_slice::<Item>(data) else {
        return;
    };
    let Ok(lease) = parse_lease(&item) else {
        return;
    };
    assert!(lease.counter < u64::MAX);
    assert!(!lease.shard_id.is_empty() || item.contains_key("leaseKey"));
    let (text, sub) = checkpoint_columns(&lease.checkpoint);
    let timestamp = match lease.checkpoint {
        kinesis_consumer::Checkpoint::AtTimestamp(at) => at,
        _ => None,
    };
    assert_eq!(
        checkpoint_from_columns(&text, sub, timestamp),
        Some(lease.checkpoint)
    );
});
