//! What a completed operation costs on disk: operations recorded, counted and completed
//! through each journal (a 200-byte JSON request, a 300-byte JSON answer), then bytes per
//! operation: SQLite's file (its log checkpointed, as when the last handle closes), and
//! PostgreSQL's table with its indexes and TOAST (after `VACUUM FULL`: the live rows).
//!
//! ```text
//! cargo bench --all-features --bench journal_size            # 100,000 operations
//! cargo bench --all-features --bench journal_size -- --quick # 10,000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark stops on any failure.

mod support;

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)] // The benchmark needs no TLS cluster.
mod postgres;

use std::sync::Arc;
use std::time::Duration;

use idempotent_retry::journal::{
    Inserted, Journal, PostgresJournal, RecordedAnswer, RecordedRequest, SqliteJournal,
};

/// Records, counts one attempt of and completes `ops` operations, 64 at a time.
async fn completed(journal: Arc<impl Journal>, ops: usize) {
    let request_body = format!(
        "{{\"amount\":4200,\"currency\":\"eur\",\"customer\":\"cus_{:0>24}\",\"description\":\"{}\"}}",
        0,
        "x".repeat(90)
    );
    let answer_body = format!(
        "{{\"id\":\"ch_{:0>24}\",\"status\":\"succeeded\",\"detail\":\"{}\"}}",
        0,
        "y".repeat(230)
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(ops);
    for n in 0..ops {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let journal = journal.clone();
        let (request_body, answer_body) = (request_body.clone(), answer_body.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let key = uuid::Uuid::new_v4().to_string();
            let request = RecordedRequest {
                method: "POST".into(),
                url: "https://api.example.com/v1/charges".into(),
                key_value: key.clone().into_bytes(),
                key,
                key_header: "idempotency-key".into(),
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                secret_headers: vec!["authorization".into()],
                body: request_body.into(),
                // What the client records: a SHA-256 of the body.
                fingerprint: Some(bytes::Bytes::from_static(&[0x5a; 32])),
            };
            let id = format!("order-{n}/charge");
            let lease = Duration::from_secs(30);
            let Inserted::Recorded(lease_held) = journal
                .insert(&id, &request, "worker", lease)
                .await
                .unwrap()
            else {
                panic!("{id} was new");
            };
            journal.start_attempt(&lease_held, lease).await.unwrap();
            let answer = RecordedAnswer {
                status: 201,
                headers: vec![
                    ("content-type".into(), b"application/json".to_vec()),
                    ("request-id".into(), b"req_0123456789abcdef".to_vec()),
                ],
                body: answer_body.into(),
            };
            journal.complete(&lease_held, &answer).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn main() {
    let ops = if support::quick() { 10_000 } else { 100_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("idempotent-retry-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = postgres::Cluster::start("size");
    println!("### Bytes on disk per completed operation ({ops} operations)\n");
    println!("| journal | bytes | bytes per operation |");
    println!("|---|---:|---:|");
    let path = dir.join("size.db");
    runtime.block_on(async {
        let sqlite = Arc::new(SqliteJournal::open(&path).await.unwrap());
        completed(sqlite, ops).await;
    });
    // Every handle is gone: the last connection checkpoints the log into the file.
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let mut bytes = std::fs::metadata(&path).unwrap().len();
    for _ in 0..500 {
        if !wal.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bytes += std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    row("SQLite (file and log)", bytes, ops);
    if let Some(cluster) = &cluster {
        runtime.block_on(async {
            let pg = Arc::new(PostgresJournal::connect(cluster.url.clone()).await.unwrap());
            completed(pg, ops).await;
            let (session, connection) =
                tokio_postgres::connect(&cluster.url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            session
                .batch_execute("VACUUM FULL idempotent_retry_operations")
                .await
                .unwrap();
            let bytes: i64 = session
                .query_one(
                    "SELECT pg_total_relation_size('idempotent_retry_operations')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            row("PostgreSQL (table, indexes, TOAST)", bytes as u64, ops);
        });
    } else {
        println!("\n(PostgreSQL is not installed here: its row is missing.)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn row(journal: &str, bytes: u64, ops: usize) {
    println!("| {journal} | {bytes} | {:.0} |", bytes as f64 / ops as f64);
}
