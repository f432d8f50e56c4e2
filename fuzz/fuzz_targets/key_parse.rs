//! `IdempotencyKey::parse` accepts exactly 1..=255 visible ASCII bytes, and never panics.
#![no_main]

use idempotent_retry::IdempotencyKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let valid = (1..=255).contains(&text.len()) && text.bytes().all(|b| (0x21..=0x7E).contains(&b));
    match IdempotencyKey::parse(text) {
        Ok(key) => assert!(valid && key.as_str() == text),
        Err(_) => assert!(!valid),
    }
});
