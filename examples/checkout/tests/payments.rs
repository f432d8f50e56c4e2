//! The payment step against idempotent-retry's mock server playing a Stripe-shaped API
//! from a stub file: a payment that succeeds, a declined card, create-then-retrieve,
//! lost answers and an outage, and how many times the card was charged in each case.

use std::time::Duration;

use checkout::{ChargeError, Payments};
use idempotent_retry::{IdempotentClient, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};

/// A client with short delays, so the tests are quick.
fn client(max_attempts: u32) -> IdempotentClient {
    IdempotentClient::builder()
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(max_attempts)
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20)),
        )
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// The mock server playing the payments API of `mock/examples/stripe.toml`.
async fn stripe() -> MockServer {
    MockServer::builder()
        .stubs_file(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../mock/examples/stripe.toml"
        ))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_payment_succeeds_once() {
    let server = stripe().await;
    let payments = Payments::new(client(5), server.uri());

    let charge = payments.charge(1999, "eur", "pm_card_visa").await.unwrap();

    assert!(charge.id.starts_with("pi_"), "{charge:?}");
    assert_eq!(charge.status, "succeeded");
    assert!(!charge.replayed);
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn a_declined_card_is_the_apps_own_error_and_not_retried() {
    let server = stripe().await;
    let payments = Payments::new(client(5), server.uri());

    let err = payments
        .charge(500, "usd", "pm_card_chargeDeclined")
        .await
        .unwrap_err();

    assert!(
        matches!(&err, ChargeError::Declined(code) if code == "card_declined"),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1, "a decline is final");
}

#[tokio::test]
async fn a_payment_reads_back_after_it_is_made() {
    let server = stripe().await;
    let payments = Payments::new(client(5), server.uri());

    let charge = payments.charge(4200, "usd", "pm_card_visa").await.unwrap();
    let status = payments.retrieve(&charge.id).await.unwrap();

    assert_eq!(status, "succeeded");
    assert_eq!(server.executions(), 1, "the retrieve is a read");
}

#[tokio::test]
async fn lost_answers_on_the_charge_route_only_charge_the_card_once() {
    let server = stripe().await;
    // The payment is made, but its answer is lost twice on the way back; the retrieve
    // route is untouched. The server checks the expectation when it drops.
    server
        .inject_route("create", Fault::DropAfterProcessing, 2)
        .unwrap();
    server.expect("create", 1).unwrap();
    let payments = Payments::new(client(5), server.uri());

    let charge = payments.charge(1999, "eur", "pm_card_visa").await.unwrap();
    let status = payments.retrieve(&charge.id).await.unwrap();

    assert!(charge.replayed, "the API answered with the first payment");
    assert_eq!(status, "succeeded");
    assert_eq!(
        server.route_stats("create").unwrap().requests,
        3,
        "three attempts"
    );
    assert_eq!(
        server.route_stats("retrieve").unwrap().requests,
        1,
        "no fault, one read"
    );
    let attempts = server.received("create").unwrap();
    assert!(
        attempts.windows(2).all(|w| w[0].key == w[1].key),
        "one key on every attempt"
    );
    assert!(server.duplicates().is_empty());
}

#[tokio::test]
async fn an_unknown_outcome_is_resumed_with_its_key_and_charged_once() {
    let server = stripe().await;
    // Every answer of the first call is lost: its outcome is unknown.
    server.inject(Fault::DropAfterProcessing, 2);
    let payments = Payments::new(client(2), server.uri());

    let Err(ChargeError::Unknown(key)) = payments.charge(4200, "usd", "pm_card_visa").await else {
        panic!("expected an unknown outcome");
    };
    // The service stores the key with the order; later (a retry job, a restart) it
    // resumes the same charge.
    let saved = serde_json::to_string(&key).unwrap();
    let key = serde_json::from_str(&saved).unwrap();
    let charge = payments
        .resume(key, 4200, "usd", "pm_card_visa")
        .await
        .unwrap();

    assert!(charge.replayed, "the API answered with the first payment");
    assert_eq!(server.executions(), 1, "charged once");
}

#[tokio::test]
async fn an_unreachable_api_charges_nothing() {
    // A port nothing listens on: every attempt is refused before a byte is sent.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let payments = Payments::new(client(2), format!("http://127.0.0.1:{port}"));

    let err = payments
        .charge(100, "usd", "pm_card_visa")
        .await
        .unwrap_err();

    assert!(matches!(err, ChargeError::NotCharged(_)), "{err:?}");
}
