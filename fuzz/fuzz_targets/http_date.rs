//! Any `Date` header: a time from 1970 up to the end of 9999, or none;
//! never a panic (a huge year used to overflow the day count).
#![no_main]

use kinesis_consumer::__fuzz::http_date_seconds;
use libfuzzer_sys::fuzz_target;

/// 10000-01-01T00:00:00Z in seconds since the epoch.
const YEAR_10000: u64 = 253_402_300_800;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(secs) = http_date_seconds(&text) {
        assert!(secs < YEAR_10000, "{text:?} read as {secs}");
    }
});
