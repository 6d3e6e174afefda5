//! Any shared config or credentials file: the parser returns profiles,
//! never panics; keys are lowercased and non-empty, profile names are
//! non-empty and without whitespace.
#![no_main]

use kinesis_consumer::__fuzz::parse_profile_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for config in [true, false] {
        for (name, profile) in parse_profile_file(&text, config) {
            assert!(!name.is_empty() && !name.contains(char::is_whitespace), "{name:?}");
            for key in profile.keys() {
                assert!(!key.is_empty(), "empty key in {name}");
                assert_eq!(key, &key.to_ascii_lowercase());
            }
        }
    }
});
