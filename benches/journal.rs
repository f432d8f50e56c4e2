//! What the operation journal costs: operations per second and latency with no journal,
//! with SQLite (durable: WAL, `synchronous=FULL`) and with PostgreSQL (synchronous
//! commits; a throwaway cluster started here when PostgreSQL is installed), at 1 and 64
//! operations in flight, against the in-process mock server.
//!
//! Every journalled operation writes three times (its record, its first attempt, its
//! answer), each synced to disk, so the disk's sync rate bounds it unless writes are
//! committed in groups. A last row runs three processes at once against the one
//! PostgreSQL cluster, 64 operations in flight each, as a small fleet does.
//!
//! ```text
//! cargo bench --all-features --bench journal            # full run
//! cargo bench --all-features --bench journal -- --quick # a smoke run
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

mod support;

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)] // The benchmark needs no TLS cluster.
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_retry::journal::{PostgresJournal, SqliteJournal};
use idempotent_retry::{IdempotentClient, IdempotentClientBuilder, RetryBudget};
use idempotent_retry_mock::MockServer;

struct Row {
    ops: u64,
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `ops` operations, `concurrency` at a time; in round `Some(r)`, each with its own
/// operation id (journalled), in `None` without (the plain path).
async fn run(
    client: &IdempotentClient,
    url: &str,
    (ops, concurrency): (u64, usize),
    round: Option<u64>,
) -> Row {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(ops as usize);
    for n in 0..ops {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let began = Instant::now();
            let mut request = client
                .post_idempotent(url)
                .json(&serde_json::json!({ "n": n }));
            if let Some(round) = round {
                request = request.operation_id(format!("bench-{round}-{n}"));
            }
            request.send().await.unwrap();
            began.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Row {
        ops,
        rate: ops as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// Makes a client with one of the journals.
type MakeClient = Box<dyn Fn() -> IdempotentClientBuilder>;

fn builder() -> IdempotentClientBuilder {
    IdempotentClient::builder()
        .attempt_timeout(Duration::from_secs(5))
        .retry_budget(RetryBudget::unlimited())
}

/// Set in the processes of the fleet row: the cluster's URL.
const FLEET: &str = "IDEMPOTENT_RETRY_BENCH_FLEET";

/// One process of the fleet row: 64 operations in flight against the cluster at `url`,
/// its own mock server; prints its operations per second.
fn fleet_member(url: String, ops: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::builder()
            .max_keys(1_000_000)
            .max_log(0)
            .start()
            .await
            .unwrap();
        let journal = PostgresJournal::connect(url).await.unwrap();
        let client = builder().journal(journal).build().unwrap();
        let target = format!("{}/orders", server.uri());
        let round = u64::from(std::process::id()) * 1_000;
        let row = run(&client, &target, (ops, 64), Some(round)).await;
        assert!(server.duplicates().is_empty());
        println!("{:.0} {:.2}", row.rate, row.p99.as_secs_f64() * 1e3);
    });
}

/// The fleet row: three processes at once, each [`fleet_member`]; their total operations
/// per second (over the wall time of all three) and the worst p99.
fn fleet(url: &str, ops: u64) -> (f64, f64) {
    let started = Instant::now();
    let members: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .env(FLEET, url)
                .env("IDEMPOTENT_RETRY_BENCH_OPS", ops.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut p99: f64 = 0.0;
    for member in members {
        let out = member.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut fields = text.split_whitespace().skip(1);
        p99 = p99.max(fields.next().unwrap().parse().unwrap());
    }
    ((3 * ops) as f64 / started.elapsed().as_secs_f64(), p99)
}

fn main() {
    let quick = support::quick();
    if let Ok(url) = std::env::var(FLEET) {
        let ops = std::env::var("IDEMPOTENT_RETRY_BENCH_OPS")
            .unwrap()
            .parse()
            .unwrap();
        return fleet_member(url, ops);
    }
    let ops: u64 = if quick { 300 } else { 5_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("idempotent-retry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = postgres::Cluster::start("bench");
    runtime.block_on(async {
        let server = MockServer::builder()
            .max_keys(1_000_000)
            .max_log(0)
            .start()
            .await
            .unwrap();
        let url = format!("{}/orders", server.uri());
        let mut journals: Vec<(&str, Option<MakeClient>)> = vec![("no journal", None)];
        let sqlite = SqliteJournal::open(dir.join("bench.db")).await.unwrap();
        journals.push((
            "SQLite (synchronous=FULL)",
            Some(Box::new(move || builder().journal(sqlite.clone()))),
        ));
        if let Some(cluster) = &cluster {
            let pg = PostgresJournal::connect(cluster.url.clone()).await.unwrap();
            journals.push((
                "PostgreSQL (synchronous_commit=on)",
                Some(Box::new(move || builder().journal(pg.clone()))),
            ));
        }

        println!("### Journalled operations against the in-process mock server ({ops} per row)\n");
        println!("| journal | in flight | operations/s | vs no journal | p50 ms | p99 ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut round = 0;
        for concurrency in [1usize, 64] {
            let mut baseline = None;
            for (name, make) in &journals {
                round += 1;
                let row = match make {
                    None => run(&builder().build().unwrap(), &url, (ops, concurrency), None).await,
                    Some(make) => {
                        let client = make().build().unwrap();
                        run(&client, &url, (ops, concurrency), Some(round)).await
                    }
                };
                let base = *baseline.get_or_insert(row.rate);
                println!(
                    "| {name} | {concurrency} | {:.0} | {:.2}× | {:.2} | {:.2} |",
                    row.rate,
                    row.rate / base,
                    row.p50.as_secs_f64() * 1e3,
                    row.p99.as_secs_f64() * 1e3,
                );
                assert_eq!(row.ops, ops);
            }
        }
        assert!(server.duplicates().is_empty());
        if cluster.is_none() {
            println!("\n(PostgreSQL is not installed here: its rows are missing.)");
        }
    });
    if let Some(cluster) = &cluster {
        let (rate, p99) = fleet(&cluster.url, ops);
        println!(
            "\n| PostgreSQL, 3 processes at once | 64 each | {rate:.0} in all | | | {p99:.2} (worst) |"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
