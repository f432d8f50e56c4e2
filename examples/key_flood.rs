//! Memory under a flood of distinct keys: the mock server's store is bounded, so its
//! memory must stay flat once the bound is reached.
//!
//! Sends N POSTs (default 1,000,000), each with a new key and a 200-byte JSON body, to a
//! mock server bounded at 100,000 keys, 64 at a time, and prints the process's resident
//! memory (Linux `VmRSS`) every 100,000 requests. Client and server share the process.
//!
//! ```text
//! cargo run --release --example key_flood -- [--keys 1000000] [--bound 100000]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use idempotent_retry_mock::MockServer;

const CONCURRENCY: u64 = 64;

/// Resident set size in KiB, from /proc (Linux); 0 elsewhere.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn flag(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a whole number")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = flag("--keys", 1_000_000)?;
    let bound = flag("--bound", 100_000)?;
    let server = MockServer::builder()
        .max_keys(bound as usize)
        .start()
        .await?;
    let http = reqwest::Client::new();
    let url = format!("{}/orders", server.uri());
    // 200 bytes of JSON body: {"pad":"xxx…"}.
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(200 - 10));
    assert_eq!(body.len(), 200);

    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    println!("keys sent | stored keys | RSS (MiB) | requests/s");
    println!("----------|-------------|-----------|-----------");
    println!(
        "{:>9} | {:>11} | {:>9.1} | {:>10}",
        0,
        0,
        rss_kib() as f64 / 1024.0,
        "-"
    );
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (http, url, body, sent) = (http.clone(), url.clone(), body.clone(), sent.clone());
        workers.spawn(async move {
            let mut n = worker;
            while n < keys {
                let resp = http
                    .post(&url)
                    .header("idempotency-key", format!("flood-{n:08}"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                if let Ok(resp) = resp {
                    let _ = resp.bytes().await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                n += CONCURRENCY;
            }
        });
    }
    let mut next_report = 100_000.min(keys);
    let mut last = (Instant::now(), 0u64);
    while next_report <= keys {
        let done = sent.load(Ordering::Relaxed);
        if done >= next_report {
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            println!(
                "{:>9} | {:>11} | {:>9.1} | {:>10.0}",
                done,
                server.stats().stored_keys,
                rss_kib() as f64 / 1024.0,
                rate
            );
            last = (Instant::now(), done);
            next_report += 100_000;
            continue;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    while workers.join_next().await.is_some() {}
    let stats = server.stats();
    println!(
        "\n{} requests in {:.1} s; {} executions, {} keys stored (bound {bound}), {} duplicates",
        stats.requests,
        started.elapsed().as_secs_f64(),
        stats.executions,
        stats.stored_keys,
        stats.duplicates.len()
    );
    Ok(())
}
