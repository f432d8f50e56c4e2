//! The day a dependency is sick: three clients side by side on the bundled mock server,
//! through three scenes.
//!
//! - (a) reqwest-middleware + reqwest-retry with its documented setup (3 retries,
//!   exponential backoff), given one key per operation so executions can be counted;
//! - (b) `IdempotentClient` with its defaults;
//! - (c) `IdempotentClient` with the circuit breaker, the adaptive rate limiter and
//!   hedging (POST included) on.
//!
//! Scenes: an outage of one origin (every request answered 503) while another stays
//! healthy, under steady load; an origin rate-limited to R requests a second, offered
//! four times that; 2 % of requests stalling a second. A table per scene; the verdict
//! "executions per key" is the servers' own count.
//!
//! ```text
//! cargo run --release --example storm -- [--quick] [--plot storm.svg]
//! ```
//!
//! `--plot FILE.svg` draws the requests per second the sick origin received over time,
//! one line per client, in the outage scene.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A demo stops on any failure.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;
use idempotent_retry::{
    AdaptiveRateLimit, CircuitBreaker, Hedging, IdempotencyKey, IdempotentClient,
};
use idempotent_retry_mock::{MockServer, Outage, Route};
use reqwest_middleware::ClientWithMiddleware;
use serde_json::json;

/// Workers offering load, each one operation per `PACE`.
const WORKERS: usize = 16;
const PACE: Duration = Duration::from_millis(25);

/// The three clients' names, in the order of [`Client::all`].
const NAMES: [&str; 3] = [
    "(a) reqwest-retry",
    "(b) ours, defaults",
    "(c) ours, holding back",
];

/// The three clients.
#[derive(Clone)]
enum Client {
    Retry(ClientWithMiddleware),
    Ours(IdempotentClient),
}

impl Client {
    fn all() -> Vec<(&'static str, Client)> {
        use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
        let retry = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(RetryTransientMiddleware::new_with_policy(
                ExponentialBackoff::builder().build_with_max_retries(3),
            ))
            .build();
        let holding_back = IdempotentClient::builder()
            // Breaks of 1 s doubling to 2 s (defaults 5 s and 60 s), so that the scene
            // shows the recovery within its length.
            .circuit_breaker(
                CircuitBreaker::new()
                    .break_duration(Duration::from_secs(1))
                    .max_break_duration(Duration::from_secs(2)),
            )
            .adaptive_rate_limit(AdaptiveRateLimit::new())
            .hedging(Hedging::after(Duration::from_millis(100)).keyed_methods(true))
            .build()
            .unwrap();
        let clients = [
            Client::Retry(retry),
            Client::Ours(IdempotentClient::new()),
            Client::Ours(holding_back),
        ];
        NAMES.into_iter().zip(clients).collect()
    }

    /// One operation: a POST with one key for all its attempts. `Ok` on a 2xx.
    async fn post(&self, url: &str) -> bool {
        let body = json!({"sku": "tea"});
        match self {
            Client::Retry(c) => {
                let key = IdempotencyKey::new_v4();
                let sent = c
                    .post(url)
                    .header("idempotency-key", key.as_str())
                    .timeout(Duration::from_secs(10))
                    .json(&body)
                    .send()
                    .await;
                sent.is_ok_and(|r| r.status().is_success())
            }
            Client::Ours(c) => {
                let sent = c.post_idempotent(url).json(&body).send().await;
                sent.is_ok_and(|r| r.status().is_success())
            }
        }
    }
}

/// What one operation did: when it started (from the scene's start), how long it took,
/// whether it succeeded.
#[derive(Clone, Copy)]
struct Op {
    start: Duration,
    took: Duration,
    ok: bool,
}

/// `workers` workers, each one operation to `url` per `pace`, until `length` has passed.
async fn load(
    client: &Client,
    url: &str,
    workers: usize,
    pace: Duration,
    length: Duration,
) -> Vec<Op> {
    let scene_start = Instant::now();
    let ops = Arc::new(Mutex::new(Vec::new()));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (client, url, ops) = (client.clone(), url.to_owned(), ops.clone());
        set.spawn(async move {
            while scene_start.elapsed() < length {
                let started = Instant::now();
                let ok = client.post(&url).await;
                let op = Op {
                    start: started - scene_start,
                    took: started.elapsed(),
                    ok,
                };
                ops.lock().unwrap().push(op);
                if let Some(rest) = pace.checked_sub(started.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Arc::try_unwrap(ops).ok().unwrap().into_inner().unwrap()
}

fn percentile(ops: &[Op], p: f64) -> Duration {
    let mut took: Vec<Duration> = ops.iter().map(|o| o.took).collect();
    took.sort();
    if took.is_empty() {
        return Duration::ZERO;
    }
    took[((took.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Executions per key across `servers`: 1 when no key executed twice.
fn executions_per_key(servers: &[&MockServer]) -> &'static str {
    if servers.iter().all(|s| s.duplicates().is_empty()) {
        "1"
    } else {
        "more than 1"
    }
}

fn table(title: &str, rows: &[&str], columns: &[Vec<String>]) {
    println!("\n### {title}\n");
    println!("| | {} |", NAMES.join(" | "));
    println!("|---|{}", "---:|".repeat(NAMES.len()));
    for (i, row) in rows.iter().enumerate() {
        print!("| {row} |");
        for column in columns {
            print!(" {} |", column[i]);
        }
        println!();
    }
}

/// Scene 1: the sick origin's requests per second over time, per client, for the plot.
type Series = Vec<(String, Vec<(f64, f64)>)>;

async fn outage(quick: bool) -> (bool, Series) {
    let (before, down, after) = if quick {
        (
            Duration::from_millis(500),
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
    } else {
        (
            Duration::from_secs(2),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
    };
    let length = before + down + after;
    let mut columns = Vec::new();
    let mut series = Vec::new();
    let mut exact = true;
    for (name, client) in Client::all() {
        let sick = MockServer::builder().threads(1).start().await.unwrap();
        let healthy = MockServer::builder().threads(1).start().await.unwrap();
        let start = Instant::now();
        let outage_at = start + before;
        let sick_url = format!("{}/orders", sick.uri());
        let healthy_url = format!("{}/orders", healthy.uri());
        let sick_server = &sick;
        let outage = async {
            tokio::time::sleep_until(outage_at.into()).await;
            sick_server.outage(Outage::Status(StatusCode::SERVICE_UNAVAILABLE), down);
        };
        let (sick_ops, healthy_ops, ()) = tokio::join!(
            load(&client, &sick_url, WORKERS / 2, PACE, length),
            load(&client, &healthy_url, WORKERS / 2, PACE, length),
            outage,
        );
        // During the outage: operations offered to the sick origin, requests it got.
        let requests = sick.requests();
        let window = before..before + down;
        let offered = sick_ops
            .iter()
            .filter(|o| window.contains(&o.start))
            .count();
        let received = requests
            .iter()
            .filter(|r| window.contains(&r.at.saturating_duration_since(start)))
            .count();
        let per_op = received as f64 / offered.max(1) as f64;
        // Recovery: from the outage's end to the first success that started after it.
        let end = before + down;
        let recovery = sick_ops
            .iter()
            .filter(|o| o.ok && o.start >= end)
            .map(|o| o.start + o.took - end)
            .min();
        let failed_after = sick_ops
            .iter()
            .filter(|o| !o.ok && o.start >= end + Duration::from_secs(1))
            .count();
        exact &= sick.duplicates().is_empty() && healthy.duplicates().is_empty();
        columns.push(vec![
            offered.to_string(),
            received.to_string(),
            format!("{per_op:.2}"),
            recovery.map_or("never".to_owned(), ms),
            failed_after.to_string(),
            ms(percentile(&healthy_ops, 0.5)),
            ms(percentile(&healthy_ops, 0.99)),
            executions_per_key(&[&sick, &healthy]).to_owned(),
        ]);
        // Requests per second at the sick origin, in 100 ms buckets.
        let buckets = (length.as_millis() / 100) as usize + 1;
        let mut counts = vec![0u32; buckets];
        for request in &requests {
            let at = request.at.saturating_duration_since(start).as_millis() as usize / 100;
            if at < buckets {
                counts[at] += 1;
            }
        }
        let points = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64 / 10.0, f64::from(*n) * 10.0))
            .collect();
        series.push((name.to_owned(), points));
    }
    table(
        &format!(
            "Outage: one origin answers 503 for {} s; another stays healthy ({} workers, one operation each per {} ms, half to each)",
            down.as_secs_f64(),
            WORKERS,
            PACE.as_millis()
        ),
        &[
            "operations offered to the sick origin during the outage",
            "requests it received during the outage",
            "requests per offered operation",
            "recovery after the outage (first success)",
            "failures from 1 s after the outage",
            "healthy origin p50",
            "healthy origin p99",
            "executions per key",
        ],
        &columns,
    );
    (exact, series)
}

async fn rate_limited(quick: bool) -> bool {
    const RATE: u32 = 100;
    let (warm_up, length) = if quick {
        (Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (Duration::from_secs(5), Duration::from_secs(20))
    };
    let mut columns = Vec::new();
    let mut exact = true;
    for (_, client) in Client::all() {
        let server = MockServer::builder()
            .threads(1)
            .route(
                Route::post("/orders")
                    .name("orders")
                    .status(201)
                    .rate_limit(RATE, RATE),
            )
            .start()
            .await
            .unwrap();
        let url = format!("{}/orders", server.uri());
        // Four times the rate: 16 workers, one operation each per 40 ms.
        let server_ref = &server;
        let snapshot = async {
            tokio::time::sleep(warm_up).await;
            server_ref.route_stats("orders").unwrap()
        };
        let (ops, at_warm_up) = tokio::join!(
            load(&client, &url, WORKERS, Duration::from_millis(40), length),
            snapshot,
        );
        let end = server.route_stats("orders").unwrap();
        let requests = end.requests - at_warm_up.requests;
        let executions = end.executions - at_warm_up.executions;
        let throttled = requests.saturating_sub(executions);
        let seconds = (length - warm_up).as_secs_f64();
        exact &= server.duplicates().is_empty();
        columns.push(vec![
            format!("{:.0}", ops.len() as f64 / length.as_secs_f64()),
            format!("{:.1} %", 100.0 * throttled as f64 / requests.max(1) as f64),
            format!(
                "{:.0} /s ({:.0} % of R)",
                executions as f64 / seconds,
                100.0 * executions as f64 / seconds / f64::from(RATE)
            ),
            ms(percentile(&ops, 0.5)),
            executions_per_key(&[&server]).to_owned(),
        ]);
    }
    table(
        &format!(
            "Rate limit: the origin allows R = {RATE} requests a second (burst R), offered 4 R (figures after a warm-up)"
        ),
        &[
            "operations completed per second",
            "429 share of requests",
            "goodput",
            "p50 latency",
            "executions per key",
        ],
        &columns,
    );
    exact
}

async fn stalls(quick: bool) -> bool {
    let length = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(6)
    };
    let mut columns = Vec::new();
    let mut exact = true;
    for (_, client) in Client::all() {
        let server = MockServer::builder()
            .threads(2)
            .seed(7)
            .stall(0.02, Duration::from_secs(1))
            .route(Route::post("/orders").status(201))
            .start()
            .await
            .unwrap();
        let url = format!("{}/orders", server.uri());
        let ops = load(&client, &url, WORKERS, PACE, length).await;
        let extra = server.requests().len() as f64 / ops.len().max(1) as f64 - 1.0;
        exact &= server.duplicates().is_empty();
        columns.push(vec![
            ops.len().to_string(),
            ms(percentile(&ops, 0.5)),
            ms(percentile(&ops, 0.99)),
            format!("{:.1} %", 100.0 * extra),
            executions_per_key(&[&server]).to_owned(),
        ]);
    }
    table(
        "Stalls: 2 % of requests wait 1 s before processing",
        &[
            "operations",
            "p50 latency",
            "p99 latency",
            "extra requests",
            "executions per key",
        ],
        &columns,
    );
    exact
}

fn plot(path: &str, series: &Series) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Requests per second at the sick origin (outage scene)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests / s")
        .draw()?;
    let colors = [RED, BLUE, GREEN];
    for ((name, points), color) in series.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let plot_to = args
        .iter()
        .position(|a| a == "--plot")
        .and_then(|i| args.get(i + 1).cloned());
    println!(
        "storm: {} workers; clients (a) reqwest-retry, (b) IdempotentClient defaults, (c) with breaker, limiter and hedging{}",
        WORKERS,
        if quick { " (quick run)" } else { "" }
    );
    let (outage_exact, series) = outage(quick).await;
    let limited_exact = rate_limited(quick).await;
    let stalls_exact = stalls(quick).await;
    if let Some(path) = plot_to {
        if let Err(e) = plot(&path, &series) {
            eprintln!("storm: could not draw {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("\nplot written to {path}");
    }
    if outage_exact && limited_exact && stalls_exact {
        println!("\nOK: every key executed at most once in every scene, for every client.");
        ExitCode::SUCCESS
    } else {
        println!("\nFAIL: some key executed more than once.");
        ExitCode::FAILURE
    }
}
