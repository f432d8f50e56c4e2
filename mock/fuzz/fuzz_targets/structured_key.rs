//! The server's key decoding never panics, and only yields keys the client accepts too.
#![no_main]

use idempotent_retry::IdempotencyKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Ok(key)) = idempotent_retry_mock::fuzzing::decode_key(data) {
        assert!(IdempotencyKey::parse(&key).is_ok());
    }
});
