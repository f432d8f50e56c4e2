//! Jitter under an outage: 1,000 simulated clients against a server that fails every
//! call for a fixed window and then serves a limited number of calls per 100 ms, one
//! run per jitter kind. Virtual time, so the run is exact and takes milliseconds; the
//! delays are the crate's own (`RetryPolicy::delays`, seeded per client).
//!
//! ```text
//! cargo bench --bench jitter
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use idempotent_retry::{Jitter, RetryPolicy};

const CLIENTS: u64 = 1_000;
/// Every call fails until then.
const OUTAGE: Duration = Duration::from_secs(2);
/// After the outage the server completes this many calls per bucket; the rest fail.
const CAPACITY_PER_BUCKET: u32 = 50;
const BUCKET: Duration = Duration::from_millis(100);
/// First attempts spread over this much time.
const ARRIVALS: Duration = Duration::from_millis(100);

struct Outcome {
    calls: u64,
    peak: u32,
    peak_after_outage: u32,
    done: Duration,
    gave_up: u64,
}

fn simulate(jitter: Jitter) -> Outcome {
    let policy = RetryPolicy::exponential()
        .max_attempts(30)
        .initial_delay(Duration::from_millis(100))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(5))
        .deadline(Duration::from_secs(600))
        .jitter(jitter);
    // Each client's schedule: its sleeps after 1, 2, … failures.
    let mut schedules: Vec<_> = (0..CLIENTS)
        .map(|i| policy.jitter_seed(0x5eed_0000 + i).delays())
        .collect();
    // (time of the call in µs, client), earliest first; arrivals spread evenly.
    let mut queue: BinaryHeap<Reverse<(u128, u64)>> = (0..CLIENTS)
        .map(|i| {
            Reverse((
                ARRIVALS.as_micros() * u128::from(i) / u128::from(CLIENTS),
                i,
            ))
        })
        .collect();
    let mut calls_per_bucket: Vec<u32> = Vec::new();
    let mut served_per_bucket: Vec<u32> = Vec::new();
    let mut outcome = Outcome {
        calls: 0,
        peak: 0,
        peak_after_outage: 0,
        done: Duration::ZERO,
        gave_up: 0,
    };
    while let Some(Reverse((at, client))) = queue.pop() {
        let bucket = (at / BUCKET.as_micros()) as usize;
        if calls_per_bucket.len() <= bucket {
            calls_per_bucket.resize(bucket + 1, 0);
            served_per_bucket.resize(bucket + 1, 0);
        }
        calls_per_bucket[bucket] += 1;
        outcome.calls += 1;
        let up = at >= OUTAGE.as_micros();
        if up && served_per_bucket[bucket] < CAPACITY_PER_BUCKET {
            served_per_bucket[bucket] += 1;
            outcome.done = outcome.done.max(Duration::from_micros(at as u64));
            continue;
        }
        match schedules[client as usize].next() {
            Some(delay) => queue.push(Reverse((at + delay.as_micros(), client))),
            None => outcome.gave_up += 1,
        }
    }
    let first_after = (OUTAGE.as_micros() / BUCKET.as_micros()) as usize;
    outcome.peak = calls_per_bucket.iter().copied().max().unwrap_or(0);
    outcome.peak_after_outage = calls_per_bucket
        .iter()
        .skip(first_after)
        .copied()
        .max()
        .unwrap_or(0);
    outcome
}

fn main() {
    println!(
        "### Jitter under an outage\n\n{CLIENTS} clients arrive over {} ms; every call fails for {} s, then the server completes {CAPACITY_PER_BUCKET} calls per {} ms and fails the rest. Backoff 100 ms × 2ⁿ, capped at 5 s, up to 30 attempts.\n",
        ARRIVALS.as_millis(),
        OUTAGE.as_secs(),
        BUCKET.as_millis()
    );
    println!(
        "| jitter | total calls | calls per client | peak calls / 100 ms | peak after the outage | all done at (s) | gave up |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, jitter) in [
        ("none", Jitter::None),
        ("full", Jitter::Full),
        ("equal", Jitter::Equal),
        ("decorrelated", Jitter::Decorrelated),
    ] {
        let o = simulate(jitter);
        println!(
            "| {name} | {} | {:.2} | {} | {} | {:.2} | {} |",
            o.calls,
            o.calls as f64 / CLIENTS as f64,
            o.peak,
            o.peak_after_outage,
            o.done.as_secs_f64(),
            o.gave_up
        );
    }
}
