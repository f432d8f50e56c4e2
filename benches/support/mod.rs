//! Shared by the client's benchmarks: the load generator and statistics (`load.rs`, which
//! the mock server's benchmarks share), and the HTTP clients compared.
#![allow(dead_code)]

mod load;

pub use load::*;

use std::time::Duration;

/// `POST /orders` played by a route whose template reads the body, as a user's stub
/// file would: the routed counterpart of the mock's built-in answer.
pub fn orders_route() -> idempotent_retry_mock::Route {
    idempotent_retry_mock::Route::post("/orders")
        .status(201)
        .id_prefix("ord_")
        .body(r#"{"id": "{{id}}", "path": "/orders", "pad": "{{body.pad}}"}"#)
}

/// The request body: about 200 bytes of JSON, built by each client from this value.
#[derive(serde::Serialize)]
pub struct Order {
    sku: &'static str,
    quantity: u32,
    note: String,
}

/// The HTTP clients compared, each making a POST the way its users would.
#[derive(Clone)]
pub enum Client {
    /// Plain reqwest: the baseline.
    Raw(reqwest::Client),
    /// Raw reqwest with a per-request timeout, as every attempt of ours has.
    RawTimeout(reqwest::Client),
    /// Raw reqwest with a per-request timeout and a fresh UUIDv4 key header: one
    /// attempt of what this crate does, written by hand. The floor for any client that
    /// bounds each attempt and mints keys from the OS.
    RawKeyed(reqwest::Client),
    /// This crate.
    Ours(idempotent_retry::IdempotentClient),
    /// This crate with the circuit breaker, the adaptive rate limiter and hedging (POST
    /// included, after 1 s) on: what holding back costs when nothing fails.
    OursHoldingBack(idempotent_retry::IdempotentClient),
    /// reqwest-middleware with reqwest-retry's transient-error retries.
    Retry(reqwest_middleware::ClientWithMiddleware),
    /// reqwest-retry as it must be used for safe POST retries: a timeout on each attempt
    /// and one key per operation, minted before the retry layer.
    RetryKeyed(reqwest_middleware::ClientWithMiddleware),
}

impl Client {
    /// Its name in tables.
    pub fn name(&self) -> &'static str {
        match self {
            Client::Raw(_) => "raw reqwest",
            Client::RawTimeout(_) => "raw reqwest + timeout",
            Client::RawKeyed(_) => "raw reqwest + timeout + key",
            Client::Ours(_) => "IdempotentClient",
            Client::OursHoldingBack(_) => "IdempotentClient + breaker + limiter + hedging",
            Client::Retry(_) => "reqwest-retry",
            Client::RetryKeyed(_) => "reqwest-retry + timeout + key",
        }
    }

    /// Its name on the command line (`--profile NAME N`).
    pub fn slug(&self) -> &'static str {
        match self {
            Client::Raw(_) => "raw",
            Client::RawTimeout(_) => "raw-timeout",
            Client::RawKeyed(_) => "raw-keyed",
            Client::Ours(_) => "ours",
            Client::OursHoldingBack(_) => "ours-holding-back",
            Client::Retry(_) => "retry",
            Client::RetryKeyed(_) => "retry-keyed",
        }
    }

    /// One POST, its `201` checked and its body read, as a caller would.
    pub async fn post(&self, url: &str, order: &Order) -> bytes::Bytes {
        let response = match self {
            Client::Raw(c) => c.post(url).json(order).send().await.unwrap(),
            Client::RawTimeout(c) => c
                .post(url)
                .json(order)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap(),
            Client::RawKeyed(c) => c
                .post(url)
                .json(order)
                .timeout(Duration::from_secs(10))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .send()
                .await
                .unwrap(),
            Client::Retry(c) => c.post(url).json(order).send().await.unwrap(),
            Client::RetryKeyed(c) => c
                .post(url)
                .json(order)
                .timeout(Duration::from_secs(10))
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .send()
                .await
                .unwrap(),
            Client::Ours(c) | Client::OursHoldingBack(c) => {
                let response = c.post_idempotent(url).json(order).send().await.unwrap();
                assert_eq!(response.status(), 201);
                return response.bytes().await.unwrap();
            }
        };
        assert_eq!(response.status(), 201);
        response.bytes().await.unwrap()
    }
}

/// The request body every client sends.
pub fn order() -> Order {
    Order {
        sku: "tea-earl-grey-250g",
        quantity: 2,
        note: "x".repeat(150),
    }
}

impl Client {
    /// The seven clients, raw reqwest first, each with its own connection pool.
    pub fn all() -> Vec<Client> {
        use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
        let retrying = || {
            reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                .with(RetryTransientMiddleware::new_with_policy(
                    ExponentialBackoff::builder().build_with_max_retries(2),
                ))
                .build()
        };
        vec![
            Client::Raw(reqwest::Client::new()),
            Client::RawTimeout(reqwest::Client::new()),
            Client::RawKeyed(reqwest::Client::new()),
            Client::Ours(idempotent_retry::IdempotentClient::new()),
            Client::OursHoldingBack(
                idempotent_retry::IdempotentClient::builder()
                    .circuit_breaker(idempotent_retry::CircuitBreaker::new())
                    .adaptive_rate_limit(idempotent_retry::AdaptiveRateLimit::new())
                    .hedging(
                        idempotent_retry::Hedging::after(std::time::Duration::from_secs(1))
                            .keyed_methods(true),
                    )
                    .build()
                    .expect("valid settings"),
            ),
            Client::Retry(retrying()),
            Client::RetryKeyed(retrying()),
        ]
    }
}
