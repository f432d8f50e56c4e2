//! The README's quick start, runnable: one order placed through the bundled mock
//! server, whose first answer is lost on the way back.
//!
//! ```text
//! cargo run --example quick_start
//! ```

use std::time::Duration;

use idempotent_retry::{Error, IdempotentClient, Jitter, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};

#[derive(serde::Serialize)]
struct Order {
    sku: &'static str,
    qty: u32,
}

#[derive(serde::Deserialize)]
struct Created {
    id: u64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Stands in for your API: it places the order, then loses the answer once.
    let api = MockServer::start().await;
    api.inject(Fault::DropAfterProcessing, 1);

    let client = IdempotentClient::builder()
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(5) // total attempts, first included
                .initial_delay(Duration::from_millis(100))
                .multiplier(2.0)
                .max_delay(Duration::from_secs(5))
                .jitter(Jitter::Full)
                .deadline(Duration::from_secs(30)), // whole operation, sleeps included
        )
        .attempt_timeout(Duration::from_secs(2)) // one attempt, connect to last byte
        .build()?;

    match client
        .post_idempotent(format!("{}/orders", api.uri()))
        .bearer_auth("sk_test_123")
        .json(&Order { sku: "tea", qty: 2 })
        .send()
        .await
    {
        Ok(resp) => {
            println!(
                "{} after {} attempt(s), key {}, replayed: {}",
                resp.status(),
                resp.attempts(),
                resp.idempotency_key(),
                resp.is_replay()
            );
            let created: Created = resp.error_for_status()?.json().await?;
            println!(
                "order {} placed; the API executed it {} time(s)",
                created.id,
                api.executions()
            );
        }
        Err(e) if e.may_have_executed() => {
            // The order may exist. Store the key (it is serde-ready) and send the same
            // operation again later with `.idempotency_key(key)`; never a new key.
            eprintln!("may have been placed; resume later with the same key: {e}");
        }
        Err(e) => eprintln!("not placed, safe to start over: {e}"),
    }
    Ok(())
}
