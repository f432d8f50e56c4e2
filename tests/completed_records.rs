//! Completed records shrink: after a 2xx answer a record keeps the request's fingerprint,
//! not its body; past `keep_answers` it keeps a tombstone (key, fingerprint, final status
//! and headers) until `completed_retention`, and a re-run under its id is told, never
//! sent. Each rule on each store (memory, SQLite, PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::time::Duration;

use idempotent_retry::journal::{EntryState, Journal, MemoryJournal};
use idempotent_retry::{Error, IdempotentClient, IdempotentResponse};
use idempotent_retry_mock::{Fault, MockServer};
use support::fast_builder;

/// How long a tombstone stays in the scenarios that remove one.
const RETENTION: Duration = Duration::from_millis(800);

fn client(journal: impl Journal) -> IdempotentClient {
    fast_builder().journal(journal).build().unwrap()
}

/// Sends `json`, as written, to `url` as the operation `id`.
async fn send(
    client: &IdempotentClient,
    url: &str,
    id: &str,
    json: &'static str,
) -> Result<IdempotentResponse, Error> {
    client
        .post_idempotent(url)
        .operation_id(id)
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
}

async fn a_completed_record_keeps_its_fingerprint_not_its_body(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    let client = client(journal.clone());
    let url = format!("{}/v1/charges", server.uri());
    let order = |json: &'static str| send(&client, &url, "order-1", json);
    let first = order(r#"{"amount": 100, "currency": "eur"}"#)
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let key = first.idempotency_key().clone();
    let answer = first.bytes().await.unwrap();
    let entry = journal.find("order-1").await.unwrap().unwrap();
    assert!(entry.request.body.is_empty(), "the body goes after a 2xx");
    assert_eq!(entry.request.fingerprint.map(|f| f.len()), Some(32));

    // The same request with its fields in another order: the recorded answer, no I/O.
    let again = order(r#"{"currency":"eur","amount":100}"#).await.unwrap();
    assert_eq!((again.attempts(), again.idempotency_key()), (0, &key));
    assert_eq!(again.bytes().await.unwrap(), answer);
    // Another amount under the same id is refused before I/O.
    let other = order(r#"{"amount": 100.0, "currency": "eur"}"#).await;
    assert!(
        matches!(other, Err(Error::OperationMismatch { .. })),
        "{other:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

async fn a_refused_operation_keeps_its_body_for_a_resend(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::UNPROCESSABLE_ENTITY),
        1,
    );
    let client = client(journal.clone());
    let url = format!("{}/v1/charges", server.uri());
    let refused = send(&client, &url, "order-2", r#"{"amount": 7}"#)
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let entry = journal.find("order-2").await.unwrap().unwrap();
    assert!(matches!(entry.state, EntryState::Completed(ref a) if a.status == 422));
    assert_eq!(
        entry.request.body, r#"{"amount": 7}"#,
        "a person may resend it"
    );
}

/// `journal` keeps answers for no time at all and records for [`RETENTION`].
async fn past_keep_answers_a_rerun_is_told_and_nothing_is_sent(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    let client = client(journal.clone());
    let url = format!("{}/v1/charges", server.uri());
    let first = send(&client, &url, "order-3", r#"{"amount": 300}"#)
        .await
        .unwrap();
    assert_eq!(journal.housekeep().await.unwrap(), 0, "a tombstone stays");
    let entry = journal.find("order-3").await.unwrap().unwrap();
    assert!(
        matches!(entry.state, EntryState::AnswerExpired { status: 201, .. }),
        "{:?}",
        entry.state
    );
    assert!(entry.request.body.is_empty() && entry.request.fingerprint.is_some());

    let err = send(&client, &url, "order-3", r#"{ "amount": 300 }"#)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AnswerExpired { .. }), "{err:?}");
    assert_eq!(err.status(), Some(http::StatusCode::CREATED));
    assert_eq!(err.idempotency_key(), Some(first.idempotency_key()));
    assert_eq!(
        err.headers().unwrap().get("content-type"),
        first.headers().get("content-type")
    );
    assert!(err.may_have_executed() && !err.is_outcome_unknown());
    let other = send(&client, &url, "order-3", r#"{"amount": 301}"#).await;
    assert!(
        matches!(other, Err(Error::OperationMismatch { .. })),
        "{other:?}"
    );
    assert_eq!(server.requests().len(), 1, "nothing sent again");
    assert!(client.pending().await.unwrap().is_empty());

    tokio::time::sleep(RETENTION).await;
    assert_eq!(journal.housekeep().await.unwrap(), 1);
    assert!(journal.find("order-3").await.unwrap().is_none());
}

mod memory {
    use super::*;

    #[tokio::test]
    async fn a_completed_record_keeps_its_fingerprint_not_its_body() {
        super::a_completed_record_keeps_its_fingerprint_not_its_body(MemoryJournal::new()).await;
    }

    #[tokio::test]
    async fn a_refused_operation_keeps_its_body_for_a_resend() {
        super::a_refused_operation_keeps_its_body_for_a_resend(MemoryJournal::new()).await;
    }

    #[tokio::test]
    async fn past_keep_answers_a_rerun_is_told_and_nothing_is_sent() {
        let journal = MemoryJournal::new()
            .completed_retention(RETENTION)
            .keep_answers(Duration::ZERO);
        super::past_keep_answers_a_rerun_is_told_and_nothing_is_sent(journal).await;
    }
}

#[cfg(feature = "journal-sqlite")]
mod sqlite {
    use super::*;
    use idempotent_retry::journal::{Inserted, RecordedRequest, SqliteJournal};
    use std::path::PathBuf;

    /// A fresh SQLite file, unique per test.
    fn path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("idempotent-retry-shrink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_completed_record_keeps_its_fingerprint_not_its_body() {
        let journal = SqliteJournal::open(path("fingerprint")).await.unwrap();
        super::a_completed_record_keeps_its_fingerprint_not_its_body(journal).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_operation_keeps_its_body_for_a_resend() {
        let journal = SqliteJournal::open(path("refused")).await.unwrap();
        super::a_refused_operation_keeps_its_body_for_a_resend(journal).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_keep_answers_a_rerun_is_told_and_nothing_is_sent() {
        let journal = SqliteJournal::builder(path("tombstone"))
            .completed_retention(RETENTION)
            .keep_answers(Duration::ZERO)
            .open()
            .await
            .unwrap();
        super::past_keep_answers_a_rerun_is_told_and_nothing_is_sent(journal).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_answers_longer_than_retention_is_refused_before_io() {
        let path = path("too-long");
        let err = SqliteJournal::builder(&path)
            .completed_retention(Duration::from_secs(60))
            .keep_answers(Duration::from_secs(61))
            .open()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
        assert!(err.to_string().contains("keep_answers"), "{err}");
        assert!(!path.exists(), "no file was made");
    }

    /// A file from before fingerprints (schema 2) is migrated on open; its records,
    /// which have none, keep their bodies and compare by them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_schema_2_file_is_migrated_and_its_records_compare_by_body() {
        let server = MockServer::start().await;
        let url = format!("{}/v1/charges", server.uri());
        let path = path("schema-2");
        let key = uuid::Uuid::new_v4().to_string();
        {
            // A worker of the older version recorded the operation and died.
            let journal = SqliteJournal::open(&path).await.unwrap();
            let request = RecordedRequest {
                method: "POST".into(),
                url: url.clone(),
                key_value: key.clone().into_bytes(),
                key: key.clone(),
                key_header: "idempotency-key".into(),
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                secret_headers: Vec::new(),
                body: bytes::Bytes::from_static(br#"{"amount": 5, "currency": "eur"}"#),
                fingerprint: None,
            };
            let recorded = journal
                .insert("order-5", &request, "dead", Duration::from_millis(1))
                .await
                .unwrap();
            assert!(matches!(recorded, Inserted::Recorded(_)));
        }
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "ALTER TABLE operations DROP COLUMN fingerprint; PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(old);

        let journal = SqliteJournal::open(&path).await.unwrap();
        let client = client(journal.clone());
        let resumed = send(&client, &url, "order-5", r#"{"currency":"eur","amount":5}"#)
            .await
            .unwrap();
        assert_eq!(resumed.idempotency_key().as_str(), key);
        let entry = journal.find("order-5").await.unwrap().unwrap();
        assert_eq!(
            (entry.request.fingerprint, entry.request.body.len()),
            (None, 32)
        );
        let again = send(&client, &url, "order-5", r#"{"amount":5,"currency":"eur"}"#)
            .await
            .unwrap();
        assert_eq!(again.attempts(), 0);
        assert_eq!(server.executions(), 1);
        let version: i32 = rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }
}

/// Every scenario against one throwaway PostgreSQL cluster, each in its own namespace.
#[cfg(feature = "journal-postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    use idempotent_retry::journal::PostgresJournal;
    let Some(cluster) = support::postgres::Cluster::start("completed-records") else {
        return;
    };
    let journal =
        |namespace: &'static str| PostgresJournal::builder(&cluster.url).namespace(namespace);
    a_completed_record_keeps_its_fingerprint_not_its_body(
        journal("fingerprint").connect().await.unwrap(),
    )
    .await;
    a_refused_operation_keeps_its_body_for_a_resend(journal("refused").connect().await.unwrap())
        .await;
    let tombstones = journal("tombstone")
        .completed_retention(RETENTION)
        .keep_answers(Duration::ZERO)
        .connect()
        .await
        .unwrap();
    past_keep_answers_a_rerun_is_told_and_nothing_is_sent(tombstones).await;
}
