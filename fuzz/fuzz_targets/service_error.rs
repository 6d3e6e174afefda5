//! Any error reply (status, `x-amzn-ErrorType` header, body): the parser
//! builds a service error, never panics, and the code it extracts has no
//! `prefix#` or `:suffix` left. Any reply body to the generic JSON decoder:
//! a value or a decode error, never a panic.
#![no_main]

use kinesis_consumer::__fuzz::{decode_json, service_error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, rest) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (500, data),
    };
    // The first line, if any, is the error-type header.
    let (header, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (Some(String::from_utf8_lossy(&rest[..i]).into_owned()), &rest[i + 1..]),
        None => (None, rest),
    };
    let e = service_error(status, header.as_deref(), body);
    assert!(!e.code.contains('#') && !e.code.contains(':'), "{:?}", e.code);
    assert_eq!(e.status, status);
    let _ = e.to_string();
    let _ = e.is_retryable();
    let _ = decode_json(body);
});
