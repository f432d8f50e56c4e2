//! The payment step against idempotent-retry's mock server: lost answers, outages and a
//! declined card, and how many times the card was charged in each case.

use std::time::Duration;

use checkout::{Charge, ChargeError, Payments};
use idempotent_retry::mock::{Fault, MockServer};
use idempotent_retry::reqwest::StatusCode;
use idempotent_retry::{IdempotentClient, RetryPolicy};

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

#[tokio::test]
async fn lost_answers_charge_the_card_once() {
    let server = MockServer::start().await;
    // The charge is made, but its answer is lost twice on the way back.
    server.inject(Fault::DropAfterProcessing, 2);
    let payments = Payments::new(client(5), server.uri());

    let charge = payments.charge("order-1", 1999).await.unwrap();

    assert_eq!(
        charge,
        Charge {
            id: 1,
            replayed: true
        }
    );
    assert_eq!(server.executions(), 1, "charged once");
    assert!(server.duplicates().is_empty());
    assert_eq!(server.requests().len(), 3, "three attempts, one key");
}

#[tokio::test]
async fn a_declined_card_is_not_retried() {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(StatusCode::PAYMENT_REQUIRED),
        1,
    );
    let payments = Payments::new(client(5), server.uri());

    let err = payments.charge("order-2", 500).await.unwrap_err();

    assert!(
        matches!(err, ChargeError::Refused(StatusCode::PAYMENT_REQUIRED)),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.executions(), 0);
}

#[tokio::test]
async fn an_unknown_outcome_is_resumed_with_its_key_and_charged_once() {
    let server = MockServer::start().await;
    // Every answer of the first call is lost: its outcome is unknown.
    server.inject(Fault::DropAfterProcessing, 2);
    let payments = Payments::new(client(2), server.uri());

    let Err(ChargeError::Unknown(key)) = payments.charge("order-3", 4200).await else {
        panic!("expected an unknown outcome");
    };
    // The service stores the key with the order; later (a retry job, a restart) it
    // resumes the same charge.
    let saved = serde_json::to_string(&key).unwrap();
    let key = serde_json::from_str(&saved).unwrap();
    let charge = payments.resume(key, "order-3", 4200).await.unwrap();

    assert!(charge.replayed, "the API answered with the first charge");
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

    let err = payments.charge("order-4", 100).await.unwrap_err();

    assert!(matches!(err, ChargeError::NotCharged(_)), "{err:?}");
}
