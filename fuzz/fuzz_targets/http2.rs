//! Any bytes from an HTTP/2 server: the frame reader and the payload
//! parsers return frames or errors, never panic; the connection state
//! machine, fed the bytes as everything a server sends on a connection
//! with a request open (its body sent as the server's windows allow), ends
//! with a connection error or not, never panics, buffers no more than the
//! stream's window, replies in whole frames and sends the body in order
//! within the connection's window;
//! the HPACK decoder, fed the same bytes as length-prefixed header blocks
//! (every byte value reachable) with one dynamic table, returns fields or
//! an error, never panics.
#![no_main]

use kinesis_consumer::__fuzz::{hpack_blocks, http2_connection, http2_frames, length_prefixed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frames = http2_frames(data);
    assert!(frames <= data.len() / 9 + 1);
    let (handled, _) = http2_connection(data);
    assert!(handled <= frames);
    for result in hpack_blocks(&length_prefixed(data)) {
        if let Ok(fields) = result {
            let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            assert!(size <= 64 * 1024, "a header list over its limit: {size}");
        }
    }
});
