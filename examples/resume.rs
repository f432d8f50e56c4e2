//! Resuming an operation whose outcome was unknown, with its key written ahead.
//!
//! The key is saved *before* anything is sent (here to a JSON file; in your service,
//! next to the order in your database), so that even a crash inside `send()` cannot
//! lose it. The first run of the operation loses every answer: the server may or may
//! not have executed it, and the error says so. Later, the same operation is sent again
//! with the saved key: the server answers with the result of the first execution, and
//! the order is placed once. A final answer clears the saved key.
//!
//! ```text
//! cargo run --example resume
//! ```

use std::time::Duration;

use idempotent_retry::{IdempotencyKey, IdempotentClient, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = MockServer::start().await;
    let client = IdempotentClient::builder()
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(2)
                .initial_delay(Duration::from_millis(50)),
        )
        .build()?;
    let url = format!("{}/orders", api.uri());
    let order = serde_json::json!({ "sku": "tea", "qty": 2 });
    let saved = std::env::temp_dir().join(format!(
        "idempotent-retry-resume-{}.json",
        std::process::id()
    ));

    // 1. Write ahead: the key is durable before the request leaves.
    let request = client.post_idempotent(&url).json(&order);
    std::fs::write(&saved, serde_json::to_string(request.key())?)?;
    println!("saved key {} to {}", request.key(), saved.display());

    // 2. Every answer is lost on the way back.
    api.inject(Fault::DropAfterProcessing, 2);
    let Err(err) = request.send().await else {
        return Err("expected every answer to be lost".into());
    };
    println!("first try: {err}");
    if !err.may_have_executed() {
        return Err(format!("expected an unknown outcome, got {err}").into());
    }

    // 3. Later (another process, after a restart): the same operation, the saved key.
    let key: IdempotencyKey = serde_json::from_str(&std::fs::read_to_string(&saved)?)?;
    let resp = client
        .post_idempotent(&url)
        .json(&order)
        .idempotency_key(key)
        .send()
        .await?;
    println!(
        "resumed: {} (replayed: {}), {}",
        resp.status(),
        resp.is_replay(),
        resp.text().await?
    );
    println!("the server executed the order {} time(s)", api.executions());
    assert_eq!(api.executions(), 1);
    // 4. A final answer: nothing left to resume.
    std::fs::remove_file(&saved)?;
    Ok(())
}
