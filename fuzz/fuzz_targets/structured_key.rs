//! The mock server's key decoding never panics, and only yields valid keys.
#![no_main]

use idempotent_retry::IdempotencyKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Ok(key)) = idempotent_retry::fuzzing::decode_key(data) {
        assert!(IdempotencyKey::parse(key.as_str()).is_ok());
    }
});
