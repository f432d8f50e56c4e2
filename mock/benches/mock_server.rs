//! Mock server throughput and growth, under a wrk-like raw-TCP load from the same
//! process: the idempotent mock (new keys, a route's templated answer, replays), `wiremock` 0.6 with one mounted
//! mock answering 201, and a bare hyper server answering 201 (the ceiling). Then the
//! mock's latency as stored keys grow to 1,000,000 and as connections go 1 → 256.
//!
//! ```text
//! cargo bench --bench mock_server            # full run, a few minutes
//! cargo bench --bench mock_server -- --quick # a smoke run
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

#[path = "../../benches/support/load.rs"]
mod support;

use std::net::SocketAddr;

use idempotent_retry_mock::{MockServer, Route};
use support::{Keys, Run, load};

/// `POST /orders` played by a route whose template reads the body, as a user's stub
/// file would: the routed counterpart of the built-in answer.
fn orders_route() -> Route {
    Route::post("/orders")
        .status(201)
        .id_prefix("ord_")
        .body(r#"{"id": "{{id}}", "path": "/orders", "pad": "{{body.pad}}"}"#)
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    keys: Keys,
    runs: Run,
}

impl Target {
    fn new(name: &'static str, addr: SocketAddr, keys: Keys) -> Self {
        Self {
            name,
            addr,
            keys,
            runs: Run::default(),
        }
    }
}

/// One table row: requests, rate, median and p99.
fn line(label: &str, mut run: Run) {
    assert_eq!(run.non_2xx, 0, "{label}: every request should succeed");
    let s = run.summary();
    println!(
        "| {label} | {} | {:.0} | {:.1} | {:.1} |",
        s.requests, s.rate, s.p50_us, s.p99_us
    );
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
    // The same operation played by a route: its answer rendered from a template that
    // reads the body, as a user's stub file would.
    let routed = MockServer::builder()
        .max_keys(1_000_000)
        .route(orders_route())
        .start()
        .await
        .unwrap();
    let bare = support::bare_hyper(2);
    const WIREMOCK: usize = 3;
    const BARE: usize = 5;
    let mut targets = [
        Target::new("idempotent mock, new keys", mock.address(), Keys::Unique(0)),
        Target::new(
            "idempotent mock with a route, new keys",
            routed.address(),
            Keys::Unique(0),
        ),
        Target::new(
            "idempotent mock, replays",
            mock.address(),
            Keys::PerConnection("replay"),
        ),
        Target::new("wiremock 0.6 (default)", *wiremock.address(), Keys::None),
        Target::new(
            "wiremock 0.6 (recording off)",
            *wiremock_quiet.address(),
            Keys::None,
        ),
        Target::new("bare hyper (ceiling)", bare, Keys::None),
    ];
    // Warm-up, then interleaved rounds.
    for t in &targets {
        load(t.addr, "/orders", body, Keys::None, 64, 2_000).await;
    }
    for round in 0..rounds {
        for i in 0..targets.len() {
            let n = targets.len();
            let t = &mut targets[(i + round) % n];
            let keys = match t.keys {
                Keys::Unique(_) => Keys::Unique(10_000_000 + round as u64 * per_run),
                other => other,
            };
            let run = load(t.addr, "/orders", body, keys, 64, per_run).await;
            t.runs.merge(run);
        }
    }
    println!(
        "\n### Throughput, 64 connections ({rounds} interleaved rounds of {per_run} requests each)\n"
    );
    println!(
        "| server | requests/s | median µs | p99 µs | server CPU µs/request | requests/s vs wiremock | vs bare hyper | CPU/request: wiremock ÷ this | bare hyper ÷ this |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in &targets {
        assert_eq!(
            t.runs.non_2xx, 0,
            "{}: every request should succeed",
            t.name
        );
    }
    let summaries: Vec<_> = targets.iter_mut().map(|t| t.runs.summary()).collect();
    let (wiremock, bare) = (&summaries[WIREMOCK], &summaries[BARE]);
    for (t, s) in targets.iter().zip(&summaries) {
        let cpu = s.server_cpu_us_per_request;
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {cpu:.1} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            t.name,
            s.rate,
            s.p50_us,
            s.p99_us,
            s.rate / wiremock.rate,
            s.rate / bare.rate,
            wiremock.server_cpu_us_per_request / cpu,
            bare.server_cpu_us_per_request / cpu,
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
        let replays = load(
            mock.address(),
            "/orders",
            body,
            Keys::PerConnection("growth"),
            64,
            probe,
        )
        .await;
        line(&format!("{stored} | replays"), replays);
        // At most doubling the store, so each level is measured near its size.
        let inserts = probe.min(level);
        let new = load(
            mock.address(),
            "/orders",
            body,
            Keys::Unique(next_key),
            64,
            inserts,
        )
        .await;
        line(&format!("{stored} | new keys"), new);
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
        let run = load(
            mock.address(),
            "/orders",
            body,
            Keys::Unique(next_key),
            connections,
            probe,
        )
        .await;
        next_key += probe;
        line(&connections.to_string(), run);
    }
}

fn main() {
    let quick = support::quick();
    let body = support::body_200();
    support::runtime().block_on(async {
        println!(
            "mock server: POST /orders with a 200-byte JSON body, raw-TCP keep-alive load from one thread"
        );
        throughput(quick, &body).await;
        growth(quick, &body).await;
    });
}
