//! A classifier of your own, falling back to the crate's for everything it does not
//! change: this API answers `404` for a moment after a related write (worth another
//! try), and `500` only for requests it will never accept (not worth one).
//!
//! ```text
//! cargo run --example custom_classifier
//! ```

use std::time::Duration;

use http::StatusCode;
use idempotent_retry::{Attempt, Decision, IdempotentClient, RetryPolicy, default_classifier};
use idempotent_retry_mock::{Fault, MockServer};

fn classify(attempt: &Attempt<'_>) -> Decision {
    match attempt.status() {
        Some(StatusCode::NOT_FOUND) => Decision::Retry,
        Some(StatusCode::INTERNAL_SERVER_ERROR) => Decision::Final,
        _ => default_classifier(attempt),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = MockServer::start().await;
    let client = IdempotentClient::builder()
        .retry_policy(RetryPolicy::exponential().initial_delay(Duration::from_millis(50)))
        .classifier(classify)
        .on_retry(|attempt, delay| {
            println!(
                "  attempt {} got {:?}; retrying in {delay:?}",
                attempt.number(),
                attempt.status()
            );
        })
        .build()?;
    let url = format!("{}/shipments", api.uri());

    println!("404 twice, then the shipment exists:");
    api.inject(Fault::StatusBeforeProcessing(StatusCode::NOT_FOUND), 2);
    let resp = client
        .post_idempotent(&url)
        .json(&serde_json::json!({"order": 1}))
        .send()
        .await?;
    println!("  {} after {} attempts", resp.status(), resp.attempts());
    assert_eq!((resp.status(), resp.attempts()), (StatusCode::CREATED, 3));

    println!("500, which this API means as final:");
    api.inject(
        Fault::StatusBeforeProcessing(StatusCode::INTERNAL_SERVER_ERROR),
        1,
    );
    // A final answer is `Ok`, whatever its status, as with reqwest.
    let resp = client
        .post_idempotent(&url)
        .json(&serde_json::json!({"order": 2}))
        .send()
        .await?;
    println!(
        "  {} after {} attempt, not retried",
        resp.status(),
        resp.attempts()
    );
    assert_eq!(
        (resp.status(), resp.attempts()),
        (StatusCode::INTERNAL_SERVER_ERROR, 1)
    );

    println!("503, left to the default classifier, is retried:");
    api.inject(
        Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    let resp = client
        .post_idempotent(&url)
        .json(&serde_json::json!({"order": 3}))
        .send()
        .await?;
    println!("  {} after {} attempts", resp.status(), resp.attempts());
    assert_eq!(resp.attempts(), 2);
    Ok(())
}
