//! `Retry-After` parsing never panics on any header value, alone or read against any
//! `Date` value (the input split at its first NUL byte).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = idempotent_retry::fuzzing::retry_after(data, None);
    if let Some(split) = data.iter().position(|&b| b == 0) {
        let (value, date) = (&data[..split], &data[split + 1..]);
        let _ = idempotent_retry::fuzzing::retry_after(value, Some(date));
    }
});
