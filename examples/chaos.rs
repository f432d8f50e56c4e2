//! Exactly-once under chaos: the same faulty server, a naive retrying client, and
//! `IdempotentClient`, side by side.
//!
//! Starts the bundled mock server with a seeded mix of every fault kind (503 before
//! processing, 500 after, a request stalled before and a response delayed after past the
//! client's timeout, connections dropped and reset before and after processing, 429 with
//! `Retry-After`, answers cut mid-body, garbage instead of an answer), then runs N logical
//! operations twice: once with plain reqwest, retried on error without a key (as many
//! applications do), once with `IdempotentClient`, resuming an unknown outcome with its
//! key as the README says (up to 4 rounds, half a second apart). The server's own count
//! decides: exits non-zero if the idempotent run executed any operation twice, or a
//! success not exactly once; an operation still unsettled after every resume is
//! reported as such.
//!
//! ```text
//! cargo run --release --example chaos -- [--ops 1000] [--fault-rate 0.3] [--seed 42] [--concurrency 32]
//! ```

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotent_retry::{IdempotencyKey, IdempotentClient, Jitter, RetryBudget, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};
use serde_json::json;
use tokio::sync::Semaphore;

/// Per-attempt timeout for both clients, and how late a delayed answer comes.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);
const FAULT_DELAY: Duration = Duration::from_millis(400);
const MAX_ATTEMPTS: u32 = 8;
/// Rounds of resuming an unknown outcome with its key, and the pause between them.
const MAX_RESUMES: u32 = 4;
const RESUME_PAUSE: Duration = Duration::from_millis(500);

struct Args {
    ops: u64,
    fault_rate: f64,
    seed: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        ops: 1000,
        fault_rate: 0.3,
        seed: 42,
        concurrency: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag} {value}: not a valid number");
        match flag.as_str() {
            "--ops" => args.ops = value.parse().map_err(bad)?,
            "--fault-rate" => {
                args.fault_rate = value
                    .parse()
                    .map_err(|_| format!("{flag} {value}: not a number"))?
            }
            "--seed" => args.seed = value.parse().map_err(bad)?,
            "--concurrency" => args.concurrency = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if !(0.0..=1.0).contains(&args.fault_rate) {
        return Err("--fault-rate must be between 0 and 1".into());
    }
    if args.concurrency == 0 || args.ops == 0 {
        return Err("--ops and --concurrency must be at least 1".into());
    }
    Ok(args)
}

/// What one run measured.
#[derive(Default)]
struct Report {
    ops: u64,
    succeeded: u64,
    failed: u64,
    resumed: u64,
    attempts: u64,
    executions: u64,
    /// Exact for keyed runs; for the naive run a lower bound (see `main`).
    duplicates: u64,
    latencies: Vec<Duration>,
    /// Keyed runs: each operation's last key, and whether it succeeded.
    keys: Vec<(bool, IdempotencyKey)>,
    /// Successes the server did not execute exactly once (must be 0).
    broken: u64,
    /// Operations whose outcome is still unknown after every resume, and how many of
    /// them the server did execute.
    unsettled: u64,
    unsettled_executed: u64,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

async fn faulty_server(args: &Args) -> Result<MockServer, idempotent_retry_mock::MockError> {
    let kinds = Fault::all_kinds(FAULT_DELAY, Duration::from_secs(1));
    let each = args.fault_rate / kinds.len() as f64;
    MockServer::builder()
        .seed(args.seed)
        .fault_rates(kinds.into_iter().map(|fault| (fault, each)))
        .start()
        .await
}

/// Draws a progress bar on stderr until `done` reaches `total`.
fn progress(label: &'static str, done: Arc<AtomicU64>, total: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let n = done.load(Ordering::Relaxed);
            let filled = (n * 30 / total) as usize;
            eprint!(
                "\r{label:>18} [{}{}] {n}/{total}",
                "#".repeat(filled),
                ".".repeat(30 - filled)
            );
            let _ = std::io::stderr().flush();
            if n >= total {
                eprintln!();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// How one operation ended.
struct Ended {
    succeeded: bool,
    attempts: u64,
    /// Whether it was sent again with its key after an unknown outcome.
    resumed: bool,
    /// Its last key (keyed runs), to ask the server what it executed.
    key: Option<IdempotencyKey>,
}

/// Runs `ops` operations through `op`, `concurrency` at a time.
async fn drive<F, Fut>(label: &'static str, args: &Args, op: F) -> Report
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Ended> + Send + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress(label, done.clone(), args.ops);
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.ops {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let future = op(n);
        let done = done.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let outcome = future.await;
            done.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            (outcome, started.elapsed())
        });
    }
    let mut report = Report {
        ops: args.ops,
        ..Report::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let Ok((ended, latency)) = joined else {
            continue;
        };
        report.succeeded += u64::from(ended.succeeded);
        report.failed += u64::from(!ended.succeeded);
        report.resumed += u64::from(ended.resumed);
        report.attempts += ended.attempts;
        report.latencies.push(latency);
        if let Some(key) = ended.key {
            report.keys.push((ended.succeeded, key));
        }
    }
    let _ = bar.await;
    report
}

/// The way many applications retry a POST: again on any error, with no key.
async fn naive(args: &Args) -> Result<Report, Box<dyn std::error::Error>> {
    let server = faulty_server(args).await?;
    let http = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .build()?;
    let url = format!("{}/orders", server.uri());
    let mut report = drive("naive retry", args, |n| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            for attempt in 1..=u64::from(MAX_ATTEMPTS) {
                let sent = http.post(&url).json(&json!({ "op": n })).send().await;
                if let Ok(resp) = sent {
                    if resp.status().is_success() && resp.bytes().await.is_ok() {
                        return Ended {
                            succeeded: true,
                            attempts: attempt,
                            resumed: false,
                            key: None,
                        };
                    }
                }
                tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
            }
            Ended {
                succeeded: false,
                attempts: u64::from(MAX_ATTEMPTS),
                resumed: false,
                key: None,
            }
        }
    })
    .await;
    report.executions = server.executions();
    // Without keys the server cannot tell which operation an execution belongs to;
    // with at most one legitimate execution per operation, the rest are duplicates.
    report.duplicates = report.executions.saturating_sub(report.ops);
    Ok(report)
}

async fn idempotent(args: &Args) -> Result<Report, Box<dyn std::error::Error>> {
    let server = faulty_server(args).await?;
    let client = IdempotentClient::builder()
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(MAX_ATTEMPTS)
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(100))
                .jitter(Jitter::Full)
                .jitter_seed(args.seed)
                // The server's 429s ask for 1 s: a Retry-After is a floor, never cut
                // short, so the cap must let the client wait that long.
                .max_retry_after(Duration::from_secs(2))
                .deadline(Duration::from_secs(10)),
        )
        .attempt_timeout(ATTEMPT_TIMEOUT)
        // A sustained 30 % failure rate is exactly what a budget exists to stop; this
        // demo wants every operation through, so it turns the budget off.
        .retry_budget(RetryBudget::unlimited())
        .build()?;
    let url = format!("{}/orders", server.uri());
    let mut report = drive("idempotent-retry", args, |n| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = json!({ "op": n });
            let (mut attempts, mut resumes) = (0, 0);
            let mut key: Option<IdempotencyKey> = None;
            // What the README tells users to do: an operation that may have executed is
            // sent again with its key until it is settled (a few rounds, with a pause);
            // one that did not execute may start over.
            loop {
                let mut request = client.post_idempotent(&url).json(&body);
                if let Some(key) = &key {
                    request = request.idempotency_key(key.clone());
                }
                let sent_key = request.key().clone();
                match request.send().await {
                    Ok(resp) => {
                        return Ended {
                            succeeded: true,
                            attempts: attempts + u64::from(resp.attempts()),
                            resumed: resumes > 0,
                            key: Some(sent_key),
                        };
                    }
                    Err(e) => {
                        attempts += u64::from(e.attempts());
                        key = e.may_have_executed().then_some(sent_key.clone());
                        if resumes == MAX_RESUMES {
                            return Ended {
                                succeeded: false,
                                attempts,
                                resumed: resumes > 0,
                                key: Some(sent_key),
                            };
                        }
                        resumes += 1;
                        let pause = e.retry_after().unwrap_or(RESUME_PAUSE).max(RESUME_PAUSE);
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    })
    .await;
    report.executions = server.executions();
    report.duplicates = server
        .duplicates()
        .iter()
        .map(|key| server.executions_for(key) - 1)
        .sum();
    // The server's truth, operation by operation: a success executed exactly once; an
    // operation still unsettled executed once or not at all.
    for (succeeded, key) in &report.keys {
        let executed = server.executions_for(key.as_str());
        if *succeeded && executed != 1 {
            report.broken += 1;
        }
        if !*succeeded {
            report.unsettled += 1;
            report.unsettled_executed += u64::from(executed == 1);
        }
    }
    Ok(report)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("chaos: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    println!(
        "{} operations, {} at a time, {:.0} % of requests faulted (seed {}): 503 before and 500 after \
         processing, requests stalled and answers delayed {} ms (timeout {} ms), connections \
         dropped and reset before and after processing, 429 with Retry-After, answers cut \
         mid-body, garbage instead of an answer.\n",
        args.ops,
        args.concurrency,
        args.fault_rate * 100.0,
        args.seed,
        FAULT_DELAY.as_millis(),
        ATTEMPT_TIMEOUT.as_millis()
    );
    let naive = naive(&args).await?;
    let ours = idempotent(&args).await?;

    let rows: [(&str, String, String); 10] = [
        ("operations", naive.ops.to_string(), ours.ops.to_string()),
        (
            "succeeded",
            naive.succeeded.to_string(),
            ours.succeeded.to_string(),
        ),
        ("failed", naive.failed.to_string(), ours.failed.to_string()),
        ("needed a resume", "-".into(), ours.resumed.to_string()),
        (
            "attempts (requests)",
            naive.attempts.to_string(),
            ours.attempts.to_string(),
        ),
        (
            "server executions",
            naive.executions.to_string(),
            ours.executions.to_string(),
        ),
        (
            "duplicate executions",
            format!(">= {}", naive.duplicates),
            ours.duplicates.to_string(),
        ),
        (
            "p50 latency",
            ms(naive.percentile(0.5)),
            ms(ours.percentile(0.5)),
        ),
        (
            "p99 latency",
            ms(naive.percentile(0.99)),
            ms(ours.percentile(0.99)),
        ),
        (
            "max latency",
            ms(naive.percentile(1.0)),
            ms(ours.percentile(1.0)),
        ),
    ];
    println!(
        "\n| {:<22} | {:>14} | {:>16} |",
        "", "naive retry", "idempotent-retry"
    );
    println!("|{:-<24}|{:->16}|{:->18}|", "", "", "");
    for (name, a, b) in rows {
        println!("| {name:<22} | {a:>14} | {b:>16} |");
    }
    println!(
        "\nNaive requests carry no key, so the server cannot tell operations apart: its \
         duplicate count is a lower bound (executions minus operations)."
    );

    if ours.duplicates > 0 || ours.broken > 0 {
        println!(
            "\nFAIL: the idempotent run executed {} operation(s) twice and {} success(es) \
             not exactly once.",
            ours.duplicates, ours.broken
        );
        return Ok(ExitCode::FAILURE);
    }
    if ours.unsettled > 0 {
        println!(
            "\nOK, with {} operation(s) still unsettled: their outcome is unknown after {} \
             resumes with the same key ({} of them executed at the server, the others not); \
             none executed twice. Resume them later with their keys.",
            ours.unsettled, MAX_RESUMES, ours.unsettled_executed
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nOK: every operation executed exactly once with idempotent-retry.");
    Ok(ExitCode::SUCCESS)
}
