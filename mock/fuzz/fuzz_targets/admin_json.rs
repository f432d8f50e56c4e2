//! `POST /__admin/faults` body parsing never panics, and bounds what it queues.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(Ok((_, times))) = idempotent_retry_mock::fuzzing::fault_request(data) {
        assert!(times <= 1_000_000);
    }
});
