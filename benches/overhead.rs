//! Client overhead when nothing fails: raw `reqwest`, `IdempotentClient` and
//! `reqwest-middleware` + `reqwest-retry`, interleaved in one process against one bare
//! hyper server on loopback, sequential and 64 concurrent.
//!
//! ```text
//! cargo bench --bench overhead            # full run, about a minute
//! cargo bench --bench overhead -- --quick # a smoke run
//! ```
//!
//! `-- --profile NAME N` makes N sequential requests with one client only (`raw`,
//! `raw-timeout`, `raw-keyed`, `ours`, `ours-holding-back`, `retry`, `retry-keyed`) and prints nothing: a
//! fixed workload to run under `valgrind --tool=callgrind` and count instructions per
//! request (BENCHMARKS.md says how).
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

mod support;

use std::time::Instant;

use support::{Client, Run, order};

async fn sequential(client: &Client, url: &str, n: usize, runs: &mut Run) {
    let order = order();
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client.post(url, &order).await;
        runs.latencies.push(t.elapsed());
    }
    runs.elapsed += started.elapsed();
}

async fn concurrent(client: &Client, url: &str, tasks: usize, per_task: usize, runs: &mut Run) {
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
        runs.latencies.extend(latencies.unwrap());
    }
    runs.elapsed += started.elapsed();
}

fn report(title: &str, clients: &[Client], runs: &mut [Run]) {
    println!("\n### {title}\n");
    println!("| client | requests | median µs | p99 µs | requests/s | median / raw |");
    println!("|---|---:|---:|---:|---:|---:|");
    let summaries: Vec<_> = runs.iter_mut().map(Run::summary).collect();
    // The first client is raw reqwest: the baseline.
    let raw = summaries[0].p50_us;
    for (client, s) in clients.iter().zip(&summaries) {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {:.3} |",
            client.name(),
            s.requests,
            s.p50_us,
            s.p99_us,
            s.rate,
            s.p50_us / raw,
        );
    }
}

/// `--profile NAME N`, when given.
fn profile_args() -> Option<(String, usize)> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--profile")?;
    let name = args.get(at + 1).expect("--profile NAME N").clone();
    let n = args.get(at + 2).and_then(|n| n.parse().ok());
    Some((name, n.expect("--profile NAME N: N requests")))
}

fn main() {
    if let Some((name, n)) = profile_args() {
        let addr = support::bare_hyper(1);
        let url = format!("http://{addr}/orders");
        support::runtime().block_on(async {
            let clients = Client::all();
            let client = clients.iter().find(|c| c.slug() == name);
            let client = client.unwrap_or_else(|| panic!("no client called {name}"));
            sequential(client, &url, n, &mut Run::default()).await;
        });
        return;
    }
    let quick = support::quick();
    let (rounds, seq_batch, conc_per_task) = if quick { (2, 50, 5) } else { (200, 50, 4) };
    const TASKS: usize = 64;

    // The server gets one core, the clients (one thread, taking turns) the other.
    let addr = support::bare_hyper(1);
    let url = format!("http://{addr}/orders");
    support::runtime().block_on(async {
        let clients = Client::all();
        // Warm up: connections open, allocator and caches settled.
        for client in &clients {
            concurrent(client, &url, TASKS, 20, &mut Run::default()).await;
        }

        let mut seq: Vec<Run> = clients.iter().map(|_| Run::default()).collect();
        let mut conc: Vec<Run> = clients.iter().map(|_| Run::default()).collect();
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
