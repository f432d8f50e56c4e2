//! Resuming an operation whose outcome was unknown, with a key persisted in between.
//!
//! The first run of the operation loses every answer: the server may or may not have
//! executed it, and the error says so. The key is saved (here to a JSON file; in your
//! service, next to the order in your database). Later, the same operation is sent again
//! with that key: the server answers with the result of the first execution, and the
//! order is placed once.
//!
//! ```text
//! cargo run --features mock --example resume
//! ```

use std::time::Duration;

use idempotent_retry::mock::{Fault, MockServer};
use idempotent_retry::{IdempotencyKey, IdempotentClient, RetryPolicy};

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

    // 1. Every answer is lost on the way back.
    api.inject(Fault::DropAfterProcessing, 2);
    let Err(err) = client.post_idempotent(&url).json(&order).send().await else {
        return Err("expected every answer to be lost".into());
    };
    println!("first try: {err}");
    // What to keep: the key of an operation whose outcome is unknown.
    let (true, Some(key)) = (err.may_have_executed(), err.idempotency_key()) else {
        return Err(format!("expected an unknown outcome, got {err}").into());
    };
    std::fs::write(&saved, serde_json::to_string(key)?)?;
    println!("saved key {key} to {}", saved.display());

    // 2. Later (another process, after a restart): the same operation, the same key.
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
    std::fs::remove_file(&saved)?;
    Ok(())
}
