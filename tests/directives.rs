//! What the server says about retrying, heard over real sockets: `Retry-After` is a
//! floor, never cut short, in both its forms, proven by the arrival times in the mock
//! server's request log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::time::Duration;

use idempotent_retry::mock::{Fault, MockServer};
use support::fast_client;

/// The gap between the first two requests the server received, after one 429 that
/// asked for `wait`.
async fn gap_after_a_429(server: MockServer, wait: Duration) -> Duration {
    server.inject(Fault::RateLimited { retry_after: wait }, 1);
    let resp = fast_client()
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&serde_json::json!({ "sku": "tea" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    log[1].at.duration_since(log[0].at)
}

#[tokio::test]
async fn retry_after_in_seconds_is_never_cut_short() {
    let server = MockServer::builder().start().await.unwrap();
    let gap = gap_after_a_429(server, Duration::from_secs(1)).await;
    assert!(gap >= Duration::from_secs(1), "came back after {gap:?}");
}

#[tokio::test]
async fn retry_after_as_a_date_is_read_against_date_and_never_cut_short() {
    // The answer says `Date: D` and `Retry-After: D + 1 s`, whole seconds both. Read
    // against our clock, which is a fraction of a second past D, the wait would be
    // that fraction short.
    let server = MockServer::builder()
        .retry_after_dates(true)
        .start()
        .await
        .unwrap();
    let gap = gap_after_a_429(server, Duration::from_secs(1)).await;
    assert!(gap >= Duration::from_secs(1), "came back after {gap:?}");
}
