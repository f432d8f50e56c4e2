//! Mock server throughput and growth, under a wrk-like raw-TCP load from the same
//! process: the idempotent mock (new keys, replays), `wiremock` 0.6 with one mounted
//! mock answering 201, and a bare hyper server answering 201 (the ceiling). Then the
//! mock's latency as stored keys grow to 1,000,000 and as connections go 1 → 256.
//!
//! ```text
//! cargo bench --bench mock_server            # full run, a few minutes
//! cargo bench --bench mock_server -- --quick # a smoke run
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

mod support;

use std::net::SocketAddr;

use idempotent_retry::mock::MockServer;
use support::{Keys, Run, load, quantile, us};

struct Target {
    name: &'static str,
    addr: SocketAddr,
    keys: Keys,
    tally: Vec<Run>,
}

fn summary(runs: &mut [Run]) -> (f64, f64, f64, u64, f64) {
    let mut all: Vec<_> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
    all.sort_unstable();
    let n = all.len() as f64;
    let secs: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let non_2xx = runs.iter().map(|r| r.non_2xx).sum();
    let cpu: f64 = runs.iter().map(|r| r.server_cpu.as_secs_f64()).sum();
    (
        n / secs,
        us(quantile(&all, 0.5)),
        us(quantile(&all, 0.99)),
        non_2xx,
        cpu * 1e6 / n,
    )
}

fn line(label: &str, run: &mut Run) {
    run.latencies.sort_unstable();
    println!(
        "| {label} | {} | {:.0} | {:.1} | {:.1} |",
        run.latencies.len(),
        run.rate(),
        us(quantile(&run.latencies, 0.5)),
        us(quantile(&run.latencies, 0.99)),
    );
    assert_eq!(run.non_2xx, 0, "{label}: every request should succeed");
}

async fn throughput(quick: bool, body: &str) {
    let (rounds, per_run) = if quick { (1, 2_000) } else { (10, 20_000) };
    let mock = MockServer::builder()
        .max_keys(1_000_000)
        .start()
        .await
        .unwrap();
    let wiremock = wiremock::MockServer::start().await;
    let wiremock_quiet = wiremock::MockServer::builder()
        .disable_request_recording()
        .start()
        .await;
    for server in [&wiremock, &wiremock_quiet] {
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(wiremock::ResponseTemplate::new(201).set_body_string("{\"id\":1}"))
            .mount(server)
            .await;
    }
    let bare = support::bare_hyper(2);
    let mut targets = [
        Target {
            name: "idempotent mock, new keys",
            addr: mock.address(),
            keys: Keys::Unique(0),
            tally: vec![],
        },
        Target {
            name: "idempotent mock, replays",
            addr: mock.address(),
            keys: Keys::PerConnection("replay"),
            tally: vec![],
        },
        Target {
            name: "wiremock 0.6 (default)",
            addr: *wiremock.address(),
            keys: Keys::None,
            tally: vec![],
        },
        Target {
            name: "wiremock 0.6 (recording off)",
            addr: *wiremock_quiet.address(),
            keys: Keys::None,
            tally: vec![],
        },
        Target {
            name: "bare hyper (ceiling)",
            addr: bare,
            keys: Keys::None,
            tally: vec![],
        },
    ];
    // Warm-up, then interleaved rounds.
    for t in &targets {
        load(t.addr, "/orders", body, Keys::None, 64, 2_000).await;
    }
    for round in 0..rounds {
        for i in 0..targets.len() {
            let t = &mut targets[(i + round) % 5];
            let keys = match t.keys {
                Keys::Unique(_) => Keys::Unique(10_000_000 + round as u64 * per_run),
                other => other,
            };
            let run = load(t.addr, "/orders", body, keys, 64, per_run).await;
            t.tally.push(run);
        }
    }
    println!(
        "\n### Throughput, 64 connections ({rounds} interleaved rounds of {per_run} requests each)\n"
    );
    println!(
        "| server | requests/s | median µs | p99 µs | server CPU µs/request | requests/s vs wiremock | vs bare hyper | CPU/request: wiremock ÷ this | bare hyper ÷ this |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rates: Vec<_> = targets
        .iter_mut()
        .map(|t| (t.name, summary(&mut t.tally)))
        .collect();
    let (wiremock_rate, wiremock_cpu) = (rates[2].1.0, rates[2].1.4);
    let (bare_rate, bare_cpu) = (rates[4].1.0, rates[4].1.4);
    for (name, (rate, p50, p99, non_2xx, cpu)) in &rates {
        assert_eq!(*non_2xx, 0, "{name}: every request should succeed");
        println!(
            "| {name} | {rate:.0} | {p50:.1} | {p99:.1} | {cpu:.1} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            rate / wiremock_rate,
            rate / bare_rate,
            wiremock_cpu / cpu,
            bare_cpu / cpu,
        );
    }
    let stats = mock.stats();
    assert_eq!(stats.duplicates.len(), 0);
    println!(
        "\n(mock: {} requests, {} executions, {} replays)",
        stats.requests, stats.executions, stats.replays
    );
}

async fn growth(quick: bool, body: &str) {
    let levels: &[u64] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    let probe = if quick { 2_000 } else { 20_000 };
    let mock = MockServer::builder()
        .max_keys(2_000_000)
        .start()
        .await
        .unwrap();
    println!("\n### Growth: stored keys (64 connections, {probe} requests per probe)\n");
    println!("| stored keys | probe | requests | requests/s | median µs | p99 µs |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut filled = 0;
    let mut next_key = 0;
    for &level in levels {
        // Fill with new keys up to the level.
        let fill = load(
            mock.address(),
            "/orders",
            body,
            Keys::Unique(next_key),
            64,
            level.saturating_sub(filled),
        )
        .await;
        assert_eq!(fill.non_2xx, 0);
        next_key += level.saturating_sub(filled);
        let stored = mock.stats().stored_keys;
        let mut replays = load(
            mock.address(),
            "/orders",
            body,
            Keys::PerConnection("growth"),
            64,
            probe,
        )
        .await;
        line(&format!("{stored} | replays"), &mut replays);
        // At most doubling the store, so each level is measured near its size.
        let inserts = probe.min(level);
        let mut new = load(
            mock.address(),
            "/orders",
            body,
            Keys::Unique(next_key),
            64,
            inserts,
        )
        .await;
        line(&format!("{stored} | new keys"), &mut new);
        next_key += inserts;
        filled = mock.stats().stored_keys as u64;
    }
    assert_eq!(mock.stats().duplicates.len(), 0);

    println!("\n### Growth: connections (new keys, fresh server, {probe} requests each)\n");
    println!("| connections | requests | requests/s | median µs | p99 µs |");
    println!("|---:|---:|---:|---:|---:|");
    let mock = MockServer::builder().start().await.unwrap();
    let mut next_key = 0;
    for connections in [1usize, 4, 16, 64, 256] {
        let mut run = load(
            mock.address(),
            "/orders",
            body,
            Keys::Unique(next_key),
            connections,
            probe,
        )
        .await;
        next_key += probe;
        line(&connections.to_string(), &mut run);
    }
}

fn main() {
    let quick = support::quick();
    let body = support::body_200();
    // The load generator runs on this one thread; the servers on their own threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "mock server: POST /orders with a 200-byte JSON body, raw-TCP keep-alive load from one thread"
        );
        throughput(quick, &body).await;
        growth(quick, &body).await;
    });
}
