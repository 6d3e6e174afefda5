//! Any bytes from an HTTP/2 server: the frame reader and the payload
//! parsers return frames or errors, never panic; the HPACK decoder, fed the
//! same bytes as header blocks (split at every 0xFF) with one dynamic
//! table, returns fields or an error, never panics.
#![no_main]

use kinesis_consumer::__fuzz::{hpack_blocks, http2_frames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames = http2_frames(data);
    assert!(frames <= data.len() / 9 + 1);
    let blocks: Vec<&[u8]> = data.split(|b| *b == 0xFF).collect();
    for result in hpack_blocks(&blocks) {
        if let Ok(fields) = result {
            let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            assert!(size <= 64 * 1024, "a header list over its limit: {size}");
        }
    }
});
