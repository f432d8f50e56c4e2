//! One POST, one idempotency key, retried through a 503 and a lost response.
//!
//! Starts the bundled mock server, which answers the first attempt with 503 (nothing
//! executed) and executes the second but answers too late for the client's timeout (a
//! lost response). The third attempt gets the stored result, not a second execution.
//!
//! ```text
//! cargo run --example demo
//! ```

use std::process::ExitCode;
use std::time::Duration;

use http::StatusCode;
use idempotent_retry::{IdempotentClient, Jitter, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    server.inject(Fault::DelayAfterProcessing(Duration::from_millis(1_500)), 1);

    println!("idempotent-retry demo: one POST, one key, retried through faults");
    println!(
        "mock server {}: 503 first, then an answer slower than the 300 ms attempt timeout\n",
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
    let replay = if resp.is_replay() {
        " (stored result replayed)"
    } else {
        ""
    };
    println!(
        "  attempt {} -> {}{replay}\n",
        resp.attempts(),
        resp.status()
    );

    let requests = server.requests();
    println!("server received {} requests:", requests.len());
    for (n, request) in requests.iter().enumerate() {
        let key = request.key.as_deref().unwrap_or("<none>");
        println!(
            "  #{} {} {}  Idempotency-Key: {key}",
            n + 1,
            request.method,
            request.path
        );
    }
    let key = resp.idempotency_key().to_string();
    let one_key = requests
        .iter()
        .all(|r| r.key.as_deref() == Some(key.as_str()));
    let executions = server.executions_for(&key);

    let (status, attempts) = (resp.status(), resp.attempts());
    let body: serde_json::Value = resp.json().await?;
    println!("\nresult: {status} after {attempts} attempts, body {body}");
    println!(
        "one key on every attempt: {}",
        if one_key { "yes" } else { "NO" }
    );
    println!("server executions of the operation: {executions}");
    Ok(if one_key && executions == 1 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
