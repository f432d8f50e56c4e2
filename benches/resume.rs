//! How long resuming 10,000 pending operations takes, one at a time and 16 at once, on
//! SQLite and on PostgreSQL (a throwaway cluster started here), against the in-process
//! mock server.
//!
//! The pending operations are what a worker killed right after recording them leaves: a
//! record each, no attempt, a lease that has run out (written through the journal's
//! own `insert`, by a holder that never comes back).
//!
//! ```text
//! cargo bench --all-features --bench resume            # 10,000 operations
//! cargo bench --all-features --bench resume -- --quick # 1,000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

mod support;

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)] // The benchmark needs no TLS cluster.
mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_retry::IdempotentClient;
use idempotent_retry::journal::{
    Inserted, Journal, PostgresJournal, RecordedRequest, SqliteJournal,
};
use idempotent_retry_mock::MockServer;

/// Records `ops` operations to `url` under a holder that is gone, 64 at a time.
async fn abandoned(journal: &Arc<impl Journal>, url: &str, ops: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(ops);
    for n in 0..ops {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (journal, url) = (journal.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let key = uuid::Uuid::new_v4().to_string();
            let request = RecordedRequest {
                method: "POST".into(),
                url,
                key_value: key.clone().into_bytes(),
                key,
                key_header: "idempotency-key".into(),
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                secret_headers: Vec::new(),
                body: format!("{{\"n\":{n}}}").into(),
                fingerprint: None,
            };
            let id = format!("resume-{n}");
            let inserted = journal
                .insert(&id, &request, "killed-worker", Duration::from_millis(1))
                .await
                .unwrap();
            assert!(matches!(inserted, Inserted::Recorded(_)));
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Every lease has run out.
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Resumes everything pending in `journal` with `concurrency` at once: the time taken.
async fn resume<J: Journal + Clone>(journal: J, concurrency: usize, ops: usize) -> Duration {
    let client = IdempotentClient::builder()
        .attempt_timeout(Duration::from_secs(5))
        .resume_concurrency(concurrency)
        .journal(journal)
        .build()
        .unwrap();
    let started = Instant::now();
    let report = client.resume_pending().await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.completed.len(), ops, "{report:?}");
    took
}

fn main() {
    let ops = if support::quick() { 1_000 } else { 10_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("idempotent-retry-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = postgres::Cluster::start("resume");
    runtime.block_on(async {
        let server = MockServer::builder()
            .max_keys(1_000_000)
            .max_log(0)
            .start()
            .await
            .unwrap();
        let url = format!("{}/orders", server.uri());
        println!("### Resuming {ops} pending operations against the in-process mock server\n");
        println!("| journal | resume_concurrency | seconds | operations/s |");
        println!("|---|---:|---:|---:|");
        for concurrency in [1, 16] {
            let path = dir.join(format!("resume-{concurrency}.db"));
            let sqlite = Arc::new(SqliteJournal::open(&path).await.unwrap());
            abandoned(&sqlite, &url, ops).await;
            let took = resume(SqliteJournal::clone(&sqlite), concurrency, ops).await;
            row("SQLite", concurrency, took, ops);
        }
        if let Some(cluster) = &cluster {
            for concurrency in [1, 16] {
                let pg = PostgresJournal::builder(cluster.url.clone())
                    .namespace(format!("resume-{concurrency}"))
                    .connect()
                    .await
                    .unwrap();
                let pg = Arc::new(pg);
                abandoned(&pg, &url, ops).await;
                let took = resume(PostgresJournal::clone(&pg), concurrency, ops).await;
                row("PostgreSQL", concurrency, took, ops);
            }
        } else {
            println!("\n(PostgreSQL is not installed here: its rows are missing.)");
        }
        assert!(server.duplicates().is_empty());
        assert_eq!(
            server.executions(),
            ops as u64 * if cluster.is_some() { 4 } else { 2 }
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn row(journal: &str, concurrency: usize, took: Duration, ops: usize) {
    println!(
        "| {journal} | {concurrency} | {:.2} | {:.0} |",
        took.as_secs_f64(),
        ops as f64 / took.as_secs_f64()
    );
}
