//! One POST, one idempotency key, retried through a 503 and a lost response.
//!
//! Starts a local HTTP server (wiremock on 127.0.0.1) that answers the first request
//! with 503, holds the second past the client's attempt timeout, and creates the order
//! on the third. Prints what the client decided and what the server received.
//!
//! ```text
//! cargo run --example demo
//! ```

use std::process::ExitCode;
use std::time::Duration;

use idempotent_retry::{IdempotentClient, Jitter, RetryPolicy};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(1_500)))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(serde_json::json!({"id": "ord_1", "status": "created"})),
        )
        .mount(&server)
        .await;

    println!("idempotent-retry demo: one POST, one key, retried through faults");
    println!(
        "server {}: 503, then an answer slower than the 300 ms attempt timeout, then 201\n",
        server.uri()
    );

    let client = IdempotentClient::builder()
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(5)
                .initial_delay(Duration::from_millis(100))
                .jitter(Jitter::Full)
                .deadline(Duration::from_secs(10)),
        )
        .attempt_timeout(Duration::from_millis(300))
        .on_retry(|attempt, delay| {
            let what = match (attempt.status(), attempt.error()) {
                (Some(status), _) => status.to_string(),
                (None, Some(e)) if e.is_timeout() => "timed out".to_owned(),
                (None, Some(e)) => format!("transport error: {e}"),
                (None, None) => "no outcome".to_owned(),
            };
            println!(
                "  attempt {} -> {what}; retrying in {delay:?}",
                attempt.number()
            );
        })
        .build()?;

    let resp = client
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&serde_json::json!({"sku": "tea", "qty": 2}))
        .send()
        .await?;
    println!("  attempt {} -> {}\n", resp.attempts(), resp.status());

    let requests = server.received_requests().await.unwrap_or_default();
    println!("server received {} requests:", requests.len());
    let mut keys = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        let key = request
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<none>")
            .to_owned();
        println!(
            "  #{} {} {}  Idempotency-Key: {key}",
            n + 1,
            request.method,
            request.url.path()
        );
        keys.push(key);
    }

    let key = resp.idempotency_key().to_string();
    let attempts = resp.attempts();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    println!("\nresult: {status} after {attempts} attempts, body {body}");
    let one_key = keys.len() == attempts as usize && keys.iter().all(|k| *k == key);
    println!(
        "one key on every attempt: {}",
        if one_key { "yes" } else { "NO" }
    );
    Ok(if one_key {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
