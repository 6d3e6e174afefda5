//! Any reply body to every credential source's parser (credential_process
//! output, container and instance metadata JSON, STS XML, SSO role
//! credentials, OIDC CreateToken with its expiry added to now):
//! credentials or an error, never a panic, whatever number a server sends.
#![no_main]

use kinesis_consumer::__fuzz::credential_replies;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let accepted = credential_replies(data);
    assert!(accepted <= 5, "{accepted} parsers of 5 accepted it");
});
