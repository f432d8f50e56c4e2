//! What the server says about retrying, heard over real sockets: `Retry-After` is a
//! floor, never cut short, in both its forms, proven by the arrival times in the mock
//! server's request log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::time::Duration;

use idempotent_retry_mock::{Fault, MockServer};
use support::{fast_client, final_status};

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

/// An answer with this status and `Stripe-Should-Retry: hint`.
fn hinted(status: u16, hint: &str) -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(status).insert_header("stripe-should-retry", hint)
}

/// A wiremock server answering `first` (with `Stripe-Should-Retry: hint`) once, then 201.
async fn answering_with_hint(first: u16, hint: &str) -> wiremock::MockServer {
    support::server_failing(hinted(first, hint), 1).await
}

#[tokio::test]
async fn stripe_should_retry_false_makes_a_500_final() {
    let server = answering_with_hint(500, "false").await;
    let resp = fast_client()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500, "returned as the final answer");
    assert_eq!(
        support::keys_received(&server).await.len(),
        1,
        "not retried"
    );
}

#[tokio::test]
async fn stripe_should_retry_true_retries_a_400() {
    let server = answering_with_hint(400, "true").await;
    let resp = fast_client()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    support::assert_one_key(&support::keys_received(&server).await, 2);
}

#[tokio::test]
async fn the_hint_can_be_ignored_and_the_classifier_has_the_last_word() {
    // Off: the 500 is retried as its status says.
    let off = support::fast_builder()
        .ignore_should_retry_header()
        .build()
        .unwrap();
    assert_eq!(final_status(&off, hinted(500, "false")).await, 201);
    // A classifier sees the hint and may overrule it.
    let overruled = support::fast_builder()
        .classifier(|attempt| match attempt.should_retry_hint() {
            Some(false) => idempotent_retry::Decision::Retry,
            _ => idempotent_retry::default_classifier(attempt),
        })
        .build()
        .unwrap();
    assert_eq!(final_status(&overruled, hinted(500, "false")).await, 201);
    // Anything but true or false is ignored.
    assert_eq!(
        final_status(&fast_client(), hinted(500, "maybe")).await,
        201
    );
}

#[tokio::test]
async fn a_throttling_answer_without_retry_after_backs_off_from_its_own_base() {
    let (delays, hook) = support::retry_recorder(|attempt, delay| {
        let status = attempt.status().map(|s| s.as_u16());
        (status, attempt.is_throttling(), delay)
    });
    let client = support::fast_builder()
        .retry_policy(support::fast_policy().throttled_initial_delay(Duration::from_millis(15)))
        .on_retry(hook)
        .build()
        .unwrap();
    for status in [429, 503, 409] {
        let server = support::server_failing(wiremock::ResponseTemplate::new(status), 1).await;
        client.post_idempotent(server.uri()).send().await.unwrap();
    }
    // 429 and 409 throttle; a 503 without Retry-After is transient (5 ms base).
    assert_eq!(
        *delays.lock().unwrap(),
        [
            (Some(429), true, Duration::from_millis(15)),
            (Some(503), false, Duration::from_millis(5)),
            (Some(409), true, Duration::from_millis(15)),
        ]
    );
}

#[tokio::test]
async fn one_sick_origin_drains_its_own_budget_only() {
    let sick = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .mount(&sick)
        .await;
    let client = support::fast_builder()
        .retry_policy(support::fast_policy().max_attempts(10))
        // Two transient retries' worth (the default costs: 14 each).
        .retry_budget(idempotent_retry::RetryBudget::new().capacity(28))
        .build()
        .unwrap();
    let first = client.post_idempotent(sick.uri()).send().await.unwrap_err();
    assert_eq!(
        first.give_up_reason(),
        Some(idempotent_retry::GiveUpReason::BudgetExhausted)
    );
    assert_eq!(first.attempts(), 3);
    // A clone shares the per-origin state: the sick origin's bucket is empty for it too.
    let clone = client.clone();
    let again = clone.post_idempotent(sick.uri()).send().await.unwrap_err();
    assert_eq!(again.attempts(), 1, "no retry left for the sick origin");

    // A second, healthy origin that needs one retry still gets it, twenty times over.
    for _ in 0..20 {
        let healthy = support::server_failing(wiremock::ResponseTemplate::new(503), 1).await;
        let resp = clone.post_idempotent(healthy.uri()).send().await.unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.attempts(), 2);
    }
}

/// Scripts `server` to answer the next POST 503, then 201.
async fn one_503_then_201(server: &wiremock::MockServer) {
    server.reset().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(201))
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_retry_that_succeeds_gives_its_cost_back() {
    // Capacity for exactly one transient retry: if a successful retry did not give its
    // 14 tokens back, the second operation to the same origin could not retry.
    let client = support::fast_builder()
        .retry_budget(idempotent_retry::RetryBudget::new().capacity(14))
        .build()
        .unwrap();
    let server = wiremock::MockServer::start().await;
    for _ in 0..2 {
        one_503_then_201(&server).await;
        let resp = client.post_idempotent(server.uri()).send().await.unwrap();
        assert_eq!(resp.attempts(), 2);
    }
}
