//! `Retry-After` parsing never panics on any header value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = idempotent_retry::fuzzing::retry_after(data);
});
