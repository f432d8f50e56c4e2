//! Client overhead when nothing fails: raw `reqwest`, `IdempotentClient` and
//! `reqwest-middleware` + `reqwest-retry`, interleaved in one process against one bare
//! hyper server on loopback, sequential and 64 concurrent.
//!
//! ```text
//! cargo bench --bench overhead            # full run, about a minute
//! cargo bench --bench overhead -- --quick # a smoke run
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use idempotent_retry::IdempotentClient;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
use serde::Serialize;
use support::{quantile, us};

/// The request body: about 200 bytes of JSON, built by each client from this value.
#[derive(Serialize)]
struct Order {
    sku: &'static str,
    quantity: u32,
    note: String,
}

#[derive(Clone)]
enum Client {
    Raw(reqwest::Client),
    /// Raw reqwest with a per-request timeout, as every attempt of ours has.
    RawTimeout(reqwest::Client),
    Ours(IdempotentClient),
    Retry(ClientWithMiddleware),
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Raw(_) => "raw reqwest",
            Client::RawTimeout(_) => "raw reqwest + timeout",
            Client::Ours(_) => "IdempotentClient",
            Client::Retry(_) => "reqwest-retry",
        }
    }

    async fn post(&self, url: &str, order: &Order) -> Bytes {
        match self {
            Client::Raw(c) => {
                let response = c.post(url).json(order).send().await.unwrap();
                assert_eq!(response.status(), 201);
                response.bytes().await.unwrap()
            }
            Client::RawTimeout(c) => {
                let response = c
                    .post(url)
                    .json(order)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                response.bytes().await.unwrap()
            }
            Client::Ours(c) => {
                let response = c.post_idempotent(url).json(order).send().await.unwrap();
                assert_eq!(response.status(), 201);
                response.bytes().await.unwrap()
            }
            Client::Retry(c) => {
                let response = c.post(url).json(order).send().await.unwrap();
                assert_eq!(response.status(), 201);
                response.bytes().await.unwrap()
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

fn order() -> Order {
    Order {
        sku: "tea-earl-grey-250g",
        quantity: 2,
        note: "x".repeat(150),
    }
}

async fn sequential(client: &Client, url: &str, n: usize, tally: &mut Tally) {
    let order = order();
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client.post(url, &order).await;
        tally.latencies.push(t.elapsed());
    }
    tally.elapsed += started.elapsed();
}

async fn concurrent(client: &Client, url: &str, tasks: usize, per_task: usize, tally: &mut Tally) {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, url) = (client.clone(), url.to_owned());
        set.spawn(async move {
            let order = order();
            let mut latencies = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let t = Instant::now();
                client.post(&url, &order).await;
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    while let Some(latencies) = set.join_next().await {
        tally.latencies.extend(latencies.unwrap());
    }
    tally.elapsed += started.elapsed();
}

fn report(title: &str, clients: &[Client], tallies: &mut [Tally]) {
    println!("\n### {title}\n");
    println!("| client | requests | median µs | p99 µs | requests/s | median / raw |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut raw_median = None;
    for (client, tally) in clients.iter().zip(tallies.iter_mut()) {
        tally.latencies.sort_unstable();
        let median = quantile(&tally.latencies, 0.5);
        let raw = *raw_median.get_or_insert(median);
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.3} |",
            client.name(),
            tally.latencies.len(),
            us(median),
            us(quantile(&tally.latencies, 0.99)),
            tally.latencies.len() as f64 / tally.elapsed.as_secs_f64(),
            median.as_secs_f64() / raw.as_secs_f64(),
        );
    }
}

fn main() {
    let quick = support::quick();
    let (rounds, seq_batch, conc_per_task) = if quick { (2, 50, 5) } else { (200, 50, 4) };
    const TASKS: usize = 64;

    // The server gets one core, the clients (one thread, taking turns) the other.
    let addr = support::bare_hyper(1);
    let url = format!("http://{addr}/orders");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let clients = [
            Client::Raw(reqwest::Client::new()),
            Client::RawTimeout(reqwest::Client::new()),
            Client::Ours(IdempotentClient::new()),
            Client::Retry(
                reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                    .with(RetryTransientMiddleware::new_with_policy(
                        ExponentialBackoff::builder().build_with_max_retries(2),
                    ))
                    .build(),
            ),
        ];
        // Warm up: connections open, allocator and caches settled.
        for client in &clients {
            concurrent(client, &url, TASKS, 20, &mut Tally::default()).await;
        }

        let mut seq: Vec<Tally> = clients.iter().map(|_| Tally::default()).collect();
        let mut conc: Vec<Tally> = clients.iter().map(|_| Tally::default()).collect();
        for round in 0..rounds {
            // Rotate who goes first so no client always follows the same one.
            for i in 0..clients.len() {
                let c = (i + round) % clients.len();
                sequential(&clients[c], &url, seq_batch, &mut seq[c]).await;
            }
            for i in 0..clients.len() {
                let c = (i + round) % clients.len();
                concurrent(&clients[c], &url, TASKS, conc_per_task, &mut conc[c]).await;
            }
        }
        println!(
            "client overhead: {rounds} interleaved rounds; POST of ~200 bytes of JSON, 201 answer, bare hyper server on 1 thread, clients on 1 thread"
        );
        report("Sequential (one request at a time)", &clients, &mut seq);
        report("64 concurrent", &clients, &mut conc);
    });
}
