//! Any bytes as an event stream, split anywhere: the decoder returns
//! messages or an error (a bad checksum is always an error), never panics.
//! The input is also wrapped in a message with valid checksums, to get past
//! them into header and payload parsing. Every SubscribeToShardEvent
//! payload decodes as serde_json alone decodes it (the hook panics on a
//! difference); the input itself is tried as a payload too.
#![no_main]

use kinesis_consumer::__fuzz::{crc32, event_stream, subscribe_event_agrees_with_serde};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().copied().unwrap_or(0) as usize;
    let _ = event_stream(data, split);
    assert_eq!(subscribe_event_agrees_with_serde(data), Ok(()));
    // The input as headers (first half) and payload (second half).
    let (headers, payload) = data.split_at(data.len() / 2);
    let total = (12 + headers.len() + payload.len() + 4) as u32;
    let mut message = total.to_be_bytes().to_vec();
    message.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(headers);
    message.extend_from_slice(payload);
    let crc = crc32(&message);
    message.extend_from_slice(&crc.to_be_bytes());
    let _ = event_stream(&message, split);
    // A flipped bit is never accepted as the same message silently.
    if let Some(last) = message.last_mut() {
        *last ^= 1;
        assert!(event_stream(&message, split).is_err());
    }
});
