//! What a completed operation costs on disk: operations recorded, counted and completed
//! through each journal (a 200-byte JSON request, a 300-byte JSON answer), then bytes per
//! operation: SQLite's file (its log checkpointed, as when the last handle closes), and
//! PostgreSQL's table with its indexes and TOAST (after `VACUUM FULL`: the live rows).
//! Each store twice: with whole answers kept (the default), and with `keep_answers`
//! passed and housekeeping run, so that every record is a tombstone; SQLite also after
//! `VACUUM` (space a deleted or shrunk row frees is reused, not given back).
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
    println!("| journal | completed records keep | bytes | bytes per operation |");
    println!("|---|---|---:|---:|");
    for tombstones in [false, true] {
        let kept = if tombstones {
            "a tombstone (`keep_answers` passed, housekept)"
        } else {
            "the answer (default)"
        };
        let path = dir.join(format!("size-{tombstones}.db"));
        runtime.block_on(async {
            let mut builder = SqliteJournal::builder(&path);
            if tombstones {
                builder = builder.keep_answers(Duration::ZERO);
            }
            let sqlite = Arc::new(builder.open().await.unwrap());
            completed(sqlite.clone(), ops).await;
            if tombstones {
                sqlite.housekeep().await.unwrap();
            }
        });
        row("SQLite (file and log)", kept, closed_size(&path), ops);
        let vacuumed = rusqlite::Connection::open(&path).unwrap();
        vacuumed.execute_batch("VACUUM").unwrap();
        drop(vacuumed);
        let kept_vacuumed = format!("{kept}, after `VACUUM`");
        row("SQLite (file)", &kept_vacuumed, closed_size(&path), ops);
        if let Some(cluster) = &cluster {
            let namespace = format!("size-{tombstones}");
            let bytes = runtime.block_on(postgres_size(&cluster.url, &namespace, tombstones, ops));
            row(
                "PostgreSQL (table, indexes, TOAST, after `VACUUM FULL`)",
                kept,
                bytes,
                ops,
            );
        }
    }
    if cluster.is_none() {
        println!("\n(PostgreSQL is not installed here: its rows are missing.)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SQLite file's size once every handle is gone (the last connection checkpoints
/// the log into the file), with any log left.
fn closed_size(path: &std::path::Path) -> u64 {
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    for _ in 0..500 {
        if !wal.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::metadata(path).unwrap().len() + std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0)
}

/// The table's size after `ops` operations in `namespace` (alone in the table: the
/// rows before are deleted), housekept into tombstones if `tombstones`.
async fn postgres_size(url: &str, namespace: &str, tombstones: bool, ops: usize) -> u64 {
    let mut builder = PostgresJournal::builder(url).namespace(namespace);
    if tombstones {
        builder = builder.keep_answers(Duration::ZERO);
    }
    let pg = Arc::new(builder.connect().await.unwrap());
    let (session, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    session
        .execute(
            "DELETE FROM idempotent_retry_operations WHERE namespace <> $1",
            &[&namespace],
        )
        .await
        .unwrap();
    completed(pg.clone(), ops).await;
    if tombstones {
        pg.housekeep().await.unwrap();
    }
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
    bytes as u64
}

fn row(journal: &str, kept: &str, bytes: u64, ops: usize) {
    println!(
        "| {journal} | {kept} | {bytes} | {:.0} |",
        bytes as f64 / ops as f64
    );
}
