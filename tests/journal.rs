//! The operation journal: recorded before the first attempt, resumed with its key and
//! bytes, completed answers without I/O, mismatches refused before I/O, leases and
//! fencing, too-old operations left for a person, secrets never stored. Every rule is
//! checked on each store (memory, and SQLite with the `journal-sqlite` feature).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use idempotent_retry::journal::{
    Claimed, EntryState, Inserted, Journal, JournalEntry, JournalError, JournalFuture, Lease,
    MemoryJournal, RecordedAnswer, RecordedRequest, Release, Resolution,
};
use idempotent_retry::{Error, GiveUpReason, IdempotentClient, IdempotentClientBuilder};
use idempotent_retry_mock::{Fault, MockServer};
use serde_json::json;
use support::fast_builder;

fn client(journal: impl Journal) -> IdempotentClient {
    builder(journal).build().unwrap()
}

/// A client on `journal` that makes at most `attempts` attempts per send.
fn retrying(journal: impl Journal, attempts: u32) -> IdempotentClient {
    builder(journal)
        .retry_policy(support::fast_policy().max_attempts(attempts))
        .build()
        .unwrap()
}

/// Sends `body` to `url` as the operation `id`.
fn charge(
    client: &IdempotentClient,
    url: &str,
    id: &str,
    body: serde_json::Value,
) -> impl std::future::Future<Output = Result<idempotent_retry::IdempotentResponse, Error>> + use<>
{
    client
        .post_idempotent(url)
        .operation_id(id)
        .json(&body)
        .send()
}

fn builder(journal: impl Journal) -> IdempotentClientBuilder {
    fast_builder()
        .attempt_timeout(Duration::from_millis(500))
        .journal(journal)
}

/// A fresh SQLite file in the target directory, unique per test.
#[cfg(feature = "journal-sqlite")]
fn sqlite_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("idempotent-retry-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// Runs one scenario against each store.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(idempotent_retry::journal::MemoryJournal::new()).await;
                }
            )*
        }
        /// Every scenario against one throwaway PostgreSQL cluster, each in its own
        /// namespace.
        #[cfg(feature = "journal-postgres")]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn postgres() {
            let Some(cluster) = support::postgres::Cluster::start("journal") else {
                return;
            };
            $(
                let journal = idempotent_retry::journal::PostgresJournal::builder(&cluster.url)
                    .namespace(stringify!($name))
                    .connect()
                    .await
                    .unwrap();
                $name(journal).await;
            )*
            let journal = idempotent_retry::journal::PostgresJournal::builder(&cluster.url)
                .namespace("housekeeping")
                .completed_retention(std::time::Duration::from_millis(50))
                .connect()
                .await
                .unwrap();
            housekeeping_keeps_the_journal_bounded(journal).await;
        }
        #[cfg(feature = "journal-sqlite")]
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let path = super::sqlite_path(stringify!($name));
                    let journal = idempotent_retry::journal::SqliteJournal::open(&path).await.unwrap();
                    super::$name(journal).await;
                }
            )*
        }
    };
}

on_every_store!(
    sealed_bodies_are_never_stored_plain,
    a_persons_resolution_is_what_later_sends_get,
    a_wait_the_server_asked_for_holds_every_send_until_it_passes,
    a_completed_operation_answers_again_without_io,
    a_resume_reuses_the_recorded_key_and_executes_once,
    a_different_request_under_a_recorded_id_is_refused_before_io,
    resume_pending_completes_what_a_failed_run_left,
    secrets_are_never_recorded_and_resumes_get_them_back,
    a_dead_workers_lease_is_taken_over_when_it_runs_out,
);

/// A toy cipher for the test: a marker, then the bytes turned over with a key.
struct Toy(u8);

impl idempotent_retry::journal::BodySeal for Toy {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut sealed = b"TOY".to_vec();
        sealed.push(self.0);
        sealed.extend(plain.iter().map(|b| b ^ self.0));
        sealed
    }
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        match sealed {
            [b'T', b'O', b'Y', key, rest @ ..] if *key == self.0 => {
                Ok(rest.iter().map(|b| b ^ self.0).collect())
            }
            _ => Err("not sealed with this key".into()),
        }
    }
}

async fn sealed_bodies_are_never_stored_plain(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    server.inject(Fault::DropAfterProcessing, 1);
    let sealed = |key| {
        builder(journal.clone())
            .retry_policy(support::fast_policy().max_attempts(1))
            .seal_bodies(Toy(key))
            .build()
            .unwrap()
    };
    let url = format!("{}/v1/charges", server.uri());
    let card = json!({"card": "4242424242424242"});
    let send = |client: IdempotentClient| {
        let (url, card) = (url.clone(), card.clone());
        async move {
            client
                .post_idempotent(url)
                .operation_id("sealed")
                .json(&card)
                .send()
                .await
        }
    };
    assert!(send(sealed(0x5a)).await.is_err(), "the answer was lost");
    let stored = journal.find("sealed").await.unwrap().unwrap();
    assert!(stored.request.body.starts_with(b"TOY"), "sealed");
    assert!(!String::from_utf8_lossy(&stored.request.body).contains("4242"));
    let fingerprint = stored.request.fingerprint.unwrap();
    assert!(
        fingerprint.starts_with(b"TOY"),
        "a guessable body's hash is sealed too"
    );

    // Opened with the wrong key, it is refused, never sent with a wrong body.
    let err = send(sealed(0x33)).await.unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");
    assert_eq!(server.requests().len(), 1);

    let resp = send(sealed(0x5a)).await.unwrap();
    assert!(resp.is_replay());
    let sent = server.requests().pop().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(sent.body()).unwrap(),
        card
    );
    let EntryState::Completed(answer) = journal.find("sealed").await.unwrap().unwrap().state else {
        panic!("completed");
    };
    assert!(answer.body.starts_with(b"TOY"), "the answer is sealed too");
    let again = send(sealed(0x5a)).await.unwrap();
    assert_eq!(again.attempts(), 0);
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["body"],
        card
    );
    assert_eq!(server.executions(), 1);
}

async fn a_persons_resolution_is_what_later_sends_get(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::BAD_GATEWAY),
        3,
    );
    let client = retrying(journal.clone(), 1);
    let url = format!("{}/v1/refunds", server.uri());
    let send = |id: &'static str| {
        client
            .post_idempotent(&url)
            .operation_id(id)
            .json(&json!({"refund": id}))
            .send()
    };
    for id in ["abandon", "complete", "resend"] {
        assert!(send(id).await.is_err(), "{id} is left pending");
    }
    let answer = RecordedAnswer {
        status: 200,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: bytes::Bytes::from_static(br#"{"refunded": "by hand"}"#),
    };
    let resolutions = [
        (
            "abandon",
            Resolution::Abandoned("refunded by the support desk".into()),
        ),
        ("complete", Resolution::Completed(answer)),
        ("resend", Resolution::Resend),
    ];
    for (id, resolution) in &resolutions {
        assert!(journal.resolve(id, resolution).await.unwrap(), "{id}");
    }
    let err = send("abandon").await.unwrap_err();
    assert!(
        matches!(&err, Error::Abandoned { reason, .. } if reason.contains("support desk")),
        "{err:?}"
    );
    let done = send("complete").await.unwrap();
    assert_eq!((done.status().as_u16(), done.attempts()), (200, 0));
    assert_eq!(done.text().await.unwrap(), r#"{"refunded": "by hand"}"#);
    assert_eq!(server.requests().len(), 3, "neither was sent");
    let resent = send("resend").await.unwrap();
    assert_eq!((resent.status().as_u16(), resent.attempts()), (201, 1));
    assert_eq!(server.executions(), 1);
    // A closed operation is not open to another resolution.
    assert!(
        !journal
            .resolve("complete", &Resolution::Resend)
            .await
            .unwrap()
    );
    assert!(
        !journal
            .resolve("unknown", &Resolution::Resend)
            .await
            .unwrap()
    );
    assert!(client.pending().await.unwrap().is_empty());
}

async fn a_wait_the_server_asked_for_holds_every_send_until_it_passes(
    journal: impl Journal + Clone,
) {
    let server = MockServer::start().await;
    // A first attempt whose answer is lost (executed: the key stays recorded), then a
    // 429 asking for 1 s, longer than this client waits: it stops at once.
    server.inject(Fault::DropAfterProcessing, 1);
    server.inject(
        Fault::RateLimited {
            retry_after: Duration::from_secs(1),
        },
        1,
    );
    let client = builder(journal.clone())
        .retry_policy(support::fast_policy().max_retry_after(Duration::from_millis(10)))
        .build()
        .unwrap();
    let url = format!("{}/v1/charges", server.uri());
    let send = || charge(&client, &url, "order-0/charge", json!({"amount": 1}));
    let err = send().await.unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::RetryAfterTooLong));
    let entry = journal.find("order-0/charge").await.unwrap().unwrap();
    assert!(
        entry
            .not_before
            .is_some_and(|w| w > Duration::from_millis(500))
    );

    // A re-run straight away sends nothing and says how long is left.
    let err = send().await.unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::NotYet));
    assert!(
        err.retry_after()
            .is_some_and(|w| w > Duration::from_millis(500))
    );
    assert_eq!(err.attempts(), 0);
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.still_pending.len(), 1);
    assert_eq!(
        server.requests().len(),
        2,
        "nothing sent before the wait passed"
    );

    tokio::time::sleep(err.retry_after().unwrap()).await;
    let resp = send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.is_replay(), "the first attempt's execution, replayed");
    assert_eq!(server.executions(), 1);
}

async fn a_completed_operation_answers_again_without_io(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    let client = client(journal.clone());
    let url = format!("{}/v1/charges", server.uri());
    let first = client
        .post_idempotent(&url)
        .operation_id("order-1/charge")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!((first.status().as_u16(), first.attempts()), (201, 1));
    let entry = journal.find("order-1/charge").await.unwrap().unwrap();
    assert_eq!(entry.request.key, first.idempotency_key().as_str());

    // The application runs again from the top: a new builder, a new minted key.
    let again = client
        .post_idempotent(&url)
        .operation_id("order-1/charge")
        .json(&json!({"amount": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.attempts(), 0, "answered from the journal");
    assert_eq!(again.status(), first.status());
    assert_eq!(again.idempotency_key(), first.idempotency_key());
    assert_eq!(
        again.headers()["content-type"],
        first.headers()["content-type"]
    );
    assert_eq!(again.bytes().await.unwrap(), first.bytes().await.unwrap());
    assert_eq!(server.requests().len(), 1, "no I/O the second time");
    assert!(client.pending().await.unwrap().is_empty());
}

async fn a_resume_reuses_the_recorded_key_and_executes_once(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    // Every answer of the first run is lost after the charge is made.
    server.inject(Fault::DropAfterProcessing, 2);
    let client = retrying(journal.clone(), 2);
    let url = format!("{}/v1/charges", server.uri());
    let send = || charge(&client, &url, "order-2/charge", json!({"amount": 200}));
    let err = send().await.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    let recorded = journal.find("order-2/charge").await.unwrap().unwrap();
    assert_eq!(
        err.idempotency_key().unwrap().as_str(),
        recorded.request.key
    );
    assert_eq!(recorded.attempts, 2);

    let resumed = send().await.unwrap();
    assert_eq!(resumed.idempotency_key().as_str(), recorded.request.key);
    assert!(resumed.is_replay(), "the server's stored answer");
    assert_eq!(server.executions(), 1);
    let keys: Vec<_> = server.requests().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, vec![Some(recorded.request.key.clone()); 3]);
}

async fn a_different_request_under_a_recorded_id_is_refused_before_io(
    journal: impl Journal + Clone,
) {
    let server = MockServer::start().await;
    let client = client(journal);
    let url = format!("{}/v1/charges", server.uri());
    client
        .post_idempotent(&url)
        .operation_id("order-3/charge")
        .json(&json!({"amount": 300, "currency": "eur"}))
        .send()
        .await
        .unwrap();
    // The same JSON with its keys in another order is the same request.
    let same = client
        .post_idempotent(&url)
        .operation_id("order-3/charge")
        .body(r#"{"currency":"eur","amount":300}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(same.attempts(), 0);
    for (request, needle) in [
        (
            client
                .post_idempotent(&url)
                .json(&json!({"amount": 301, "currency": "eur"})),
            "body",
        ),
        (
            client
                .post_idempotent(format!("{}/v1/refunds", server.uri()))
                .json(&json!({"amount": 300, "currency": "eur"})),
            "URL",
        ),
        (
            client
                .put_idempotent(&url)
                .json(&json!({"amount": 300, "currency": "eur"})),
            "method",
        ),
        (
            client
                .post_idempotent(&url)
                .json(&json!({"amount": 300, "currency": "eur"}))
                .idempotency_key(idempotent_retry::IdempotencyKey::parse("another").unwrap()),
            "key",
        ),
    ] {
        let err = request
            .operation_id("order-3/charge")
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::OperationMismatch { reason, .. } if reason.contains(needle)),
            "{needle}: {err:?}"
        );
        assert!(err.may_have_executed(), "the recorded one may have");
    }
    assert_eq!(server.requests().len(), 1, "nothing sent for a mismatch");
}

async fn resume_pending_completes_what_a_failed_run_left(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        4,
    );
    let client = retrying(journal.clone(), 2);
    for n in 0..2 {
        let err = client
            .post_idempotent(format!("{}/v1/charges", server.uri()))
            .operation_id(format!("order-4/charge-{n}"))
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Failed { .. }), "{err}");
    }
    let pending = client.pending().await.unwrap();
    assert_eq!(pending.len(), 2);
    assert!(
        pending
            .iter()
            .all(|p| p.needs_attention.is_none() && p.holder.is_none())
    );

    let report = client.resume_pending().await.unwrap();
    let mut completed = report.completed.clone();
    completed.sort();
    assert_eq!(completed, ["order-4/charge-0", "order-4/charge-1"]);
    assert!(report.still_pending.is_empty() && report.needs_attention.is_empty());
    assert!(client.pending().await.unwrap().is_empty());
    assert_eq!(server.executions(), 2);
    assert!(server.duplicates().is_empty());
}

async fn secrets_are_never_recorded_and_resumes_get_them_back(journal: impl Journal + Clone) {
    let server = MockServer::builder()
        .log_credentials(true)
        .start()
        .await
        .unwrap();
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        2,
    );
    let client = builder(journal.clone())
        .retry_policy(support::fast_policy().max_attempts(2))
        .sensitive_header("x-api-key")
        .resume_headers(|_| {
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", "Bearer sk_resumed".parse().unwrap());
            headers
        })
        .build()
        .unwrap();
    // The request with all its secrets at hand, as the application sends it.
    let send = || {
        client
            .post_idempotent(format!("{}/v1/charges", server.uri()))
            .operation_id("order-5/charge")
            .bearer_auth("sk_live_secret")
            .header("x-api-key", "ak_secret")
            .header("x-trace", "kept")
            .header("cookie", "session=secret")
            .json(&json!({"amount": 500}))
            .send()
    };
    send().await.unwrap_err();
    let recorded = journal.find("order-5/charge").await.unwrap().unwrap();
    let names: Vec<&str> = recorded
        .request
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(names.contains(&"x-trace"), "{names:?}");
    for secret in ["authorization", "x-api-key", "cookie"] {
        assert!(!names.contains(&secret), "{secret} recorded: {names:?}");
    }
    let sent = server.requests();
    assert_eq!(
        sent[0].header("authorization"),
        Some("Bearer sk_live_secret")
    );

    let mut secrets = recorded.request.secret_headers.clone();
    secrets.sort();
    assert_eq!(
        secrets,
        ["authorization", "cookie", "x-api-key"],
        "names only"
    );

    // resume_headers gives Authorization alone: the two others have no value, so the
    // resume sends nothing and says which are missing.
    let sent = server.requests().len();
    let report = client.resume_pending().await.unwrap();
    let [(id, err)] = &report.still_pending[..] else {
        panic!("{report:?}");
    };
    assert_eq!(id, "order-5/charge");
    let Error::CredentialsMissing { headers, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(headers, &["x-api-key", "cookie"]);
    assert!(err.may_have_executed());
    assert_eq!(server.requests().len(), sent, "nothing sent");

    // A re-run with the request at hand carries them all.
    let resumed = send().await.unwrap();
    assert_eq!(resumed.status(), 201);
    let resumed = server.requests().pop().unwrap();
    assert_eq!(
        resumed.header("authorization"),
        Some("Bearer sk_live_secret")
    );
    assert_eq!(resumed.header("x-api-key"), Some("ak_secret"));
    assert_eq!(resumed.header("x-trace"), Some("kept"));
    assert_eq!(server.executions(), 1);
}

async fn a_dead_workers_lease_is_taken_over_when_it_runs_out(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    let url = format!("{}/v1/charges", server.uri());
    let client = client(journal.clone());
    // A worker records the operation, takes its lease for 300 ms and dies.
    let key = client.post_idempotent(&url).key().clone();
    let request = RecordedRequest {
        method: "POST".into(),
        url: url.clone(),
        key: key.as_str().into(),
        key_header: "idempotency-key".into(),
        key_value: key.as_str().as_bytes().to_vec(),
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        secret_headers: Vec::new(),
        body: bytes::Bytes::from_static(br#"{"amount":600}"#),
        fingerprint: None,
    };
    let Inserted::Recorded(dead) = journal
        .insert(
            "order-6/charge",
            &request,
            "dead-worker",
            Duration::from_millis(300),
        )
        .await
        .unwrap()
    else {
        panic!("a new id is recorded");
    };

    let started = std::time::Instant::now();
    let resp = client
        .post_idempotent(&url)
        .operation_id("order-6/charge")
        .json(&json!({"amount": 600}))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it waited for the lease to run out"
    );
    assert_eq!(resp.idempotency_key(), &key);
    assert_eq!(server.executions(), 1);
    // The dead worker's token is fenced off: its late writes are refused.
    let answer = RecordedAnswer {
        status: 500,
        headers: Vec::new(),
        body: bytes::Bytes::new(),
    };
    assert!(matches!(
        journal.complete(&dead, &answer).await,
        Err(JournalError::LeaseLost { .. })
    ));
    assert!(matches!(
        journal.start_attempt(&dead, Duration::from_secs(1)).await,
        Err(JournalError::LeaseLost { .. })
    ));
    assert_eq!(
        journal
            .claim("order-6/charge", "late", Duration::from_secs(1))
            .await
            .unwrap(),
        Claimed::NotPending
    );
}

/// Housekeeping removes closed operations past their retention, nothing else.
async fn housekeeping_keeps_the_journal_bounded(journal: impl Journal + Clone) {
    let server = MockServer::start().await;
    let client = client(journal.clone());
    let url = format!("{}/orders", server.uri());
    for n in 0..3 {
        client
            .post_idempotent(&url)
            .operation_id(format!("done-{n}"))
            .json(&json!({"n": n}))
            .send()
            .await
            .unwrap();
    }
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::BAD_GATEWAY),
        5,
    );
    let open = retrying(journal.clone(), 1)
        .post_idempotent(&url)
        .operation_id("open")
        .json(&json!({"n": "open"}))
        .send()
        .await;
    assert!(open.is_err());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(journal.housekeep().await.unwrap(), 3);
    assert!(journal.find("done-0").await.unwrap().is_none());
    assert!(
        journal.find("open").await.unwrap().is_some(),
        "open ones stay"
    );
    assert_eq!(journal.housekeep().await.unwrap(), 0);
}

#[tokio::test]
async fn housekeeping_in_memory() {
    housekeeping_keeps_the_journal_bounded(
        MemoryJournal::new().completed_retention(Duration::from_millis(50)),
    )
    .await;
}

#[cfg(feature = "journal-sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_in_sqlite() {
    let journal = idempotent_retry::journal::SqliteJournal::builder(sqlite_path("housekeeping"))
        .completed_retention(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    housekeeping_keeps_the_journal_bounded(journal).await;
}

#[tokio::test]
async fn an_operation_taken_up_too_often_needs_attention() {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::BAD_GATEWAY),
        10,
    );
    let client = fast_builder()
        .attempt_timeout(Duration::from_millis(300))
        .retry_policy(support::fast_policy().max_attempts(1))
        .journal(MemoryJournal::new().max_resumes(2))
        .build()
        .unwrap();
    let send = || {
        client
            .post_idempotent(format!("{}/v1/charges", server.uri()))
            .operation_id("order-10/charge")
            .json(&json!({"amount": 10}))
            .send()
    };
    for _ in 0..3 {
        assert!(matches!(send().await, Err(Error::Failed { .. })));
    }
    let err = send().await.unwrap_err();
    assert!(
        matches!(&err, Error::NeedsAttention { reason, .. } if reason.contains("3 times")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 3, "the fourth run sent nothing");
    let pending = client.pending().await.unwrap();
    assert_eq!(pending[0].attempts, 3);
    assert!(pending[0].needs_attention.is_some());
}

#[tokio::test]
async fn an_operation_too_old_to_resume_is_reported_not_sent() {
    let server = MockServer::start().await;
    server.inject(Fault::DropAfterProcessing, 1);
    let journal = MemoryJournal::new().max_resume_age(Duration::from_millis(400));
    let client = fast_builder()
        .attempt_timeout(Duration::from_millis(300))
        .retry_policy(support::fast_policy().max_attempts(1))
        .journal(journal.clone())
        .build()
        .unwrap();
    let url = format!("{}/v1/charges", server.uri());
    let send = || charge(&client, &url, "order-7/charge", json!({"amount": 700}));
    assert!(send().await.unwrap_err().is_outcome_unknown());
    // 150 ms later, an attempt could end past 400 ms of age: the server may have
    // forgotten the key by then, so the operation is not sent again.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let err = send().await.unwrap_err();
    let Error::NeedsAttention {
        operation_id, age, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(operation_id, "order-7/charge");
    assert!(*age >= Duration::from_millis(150));
    assert!(err.may_have_executed());
    assert_eq!(server.requests().len(), 1, "not re-sent");
    let pending = client.pending().await.unwrap();
    assert!(pending[0].needs_attention.is_some());
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.needs_attention, ["order-7/charge"]);
    assert!(matches!(send().await, Err(Error::NeedsAttention { .. })));
    assert_eq!(server.requests().len(), 1);
}

/// A journal whose store is down: every call fails.
#[derive(Clone)]
struct Down;

impl Journal for Down {
    fn find<'a>(&'a self, _: &'a str) -> JournalFuture<'a, Option<JournalEntry>> {
        Box::pin(async { Err(down()) })
    }
    fn insert<'a>(
        &'a self,
        _: &'a str,
        _: &'a RecordedRequest,
        _: &'a str,
        _: Duration,
    ) -> JournalFuture<'a, Inserted> {
        Box::pin(async { Err(down()) })
    }
    fn claim<'a>(&'a self, _: &'a str, _: &'a str, _: Duration) -> JournalFuture<'a, Claimed> {
        Box::pin(async { Err(down()) })
    }
    fn start_attempt<'a>(&'a self, _: &'a Lease, _: Duration) -> JournalFuture<'a, ()> {
        Box::pin(async { Err(down()) })
    }
    fn withdraw<'a>(&'a self, _: &'a Lease) -> JournalFuture<'a, ()> {
        Box::pin(async { Err(down()) })
    }
    fn complete<'a>(&'a self, _: &'a Lease, _: &'a RecordedAnswer) -> JournalFuture<'a, ()> {
        Box::pin(async { Err(down()) })
    }
    fn release<'a>(&'a self, _: &'a Lease, _: &'a Release) -> JournalFuture<'a, ()> {
        Box::pin(async { Err(down()) })
    }
    fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>> {
        Box::pin(async { Err(down()) })
    }
    fn resolve<'a>(&'a self, _: &'a str, _: &'a Resolution) -> JournalFuture<'a, bool> {
        Box::pin(async { Err(down()) })
    }
    fn cancel<'a>(&'a self, _: &'a str) -> JournalFuture<'a, bool> {
        Box::pin(async { Err(down()) })
    }
    fn housekeep(&self) -> JournalFuture<'_, u64> {
        Box::pin(async { Err(down()) })
    }
}

fn down() -> JournalError {
    JournalError::storage(
        "the database is down",
        std::io::Error::other("connection refused"),
    )
}

#[tokio::test]
async fn a_journal_that_cannot_record_means_nothing_is_sent() {
    let server = MockServer::start().await;
    let err = client(Down)
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .operation_id("order-8/charge")
        .json(&json!({"amount": 800}))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Journal { operation_id, .. } if operation_id == "order-8/charge")
    );
    // Nothing was sent, but the write may have landed with its answer lost (an
    // ambiguous commit), and a resume would send it: the error cannot say "not run".
    assert!(err.may_have_executed(), "a record may exist: {err}");
    assert!(err.to_string().contains("down"), "{err}");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn the_rules_around_a_journal_are_checked_before_io() {
    let server = MockServer::start().await;
    let url = format!("{}/v1/charges", server.uri());
    let err = support::fast_client()
        .post_idempotent(&url)
        .operation_id("no-journal")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::InvalidRequest { reason, .. } if reason.contains("journal")));
    let err = fast_builder()
        .attempt_timeout(Duration::from_secs(30))
        .journal(MemoryJournal::new())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("lease_duration"), "{err}");
    let err = fast_builder()
        .journal(MemoryJournal::new())
        .sensitive_header("bad header")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("sensitive_header"), "{err}");
    let err = client(MemoryJournal::new().lease_duration(Duration::from_secs(2)))
        .post_idempotent(&url)
        .operation_id("long")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidRequest { reason, .. } if reason.contains("lease_duration"))
    );
    assert!(server.requests().is_empty());
}

#[cfg(feature = "journal-sqlite")]
mod sqlite_file {
    use super::*;
    use idempotent_retry::journal::SqliteJournal;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recorded_operation_survives_closing_and_reopening_the_file() {
        let path = sqlite_path("survives");
        let server = MockServer::start().await;
        server.inject(Fault::DropAfterProcessing, 2);
        let url = format!("{}/v1/charges", server.uri());
        {
            let client = builder(SqliteJournal::open(&path).await.unwrap())
                .retry_policy(support::fast_policy().max_attempts(2))
                .build()
                .unwrap();
            client
                .post_idempotent(&url)
                .operation_id("order-9/charge")
                .json(&json!({"amount": 900}))
                .send()
                .await
                .unwrap_err();
        }
        // A new process, in effect: a new connection to the same file.
        let client = client(SqliteJournal::open(&path).await.unwrap());
        assert_eq!(client.pending().await.unwrap().len(), 1);
        let resp = client
            .post_idempotent(&url)
            .operation_id("order-9/charge")
            .json(&json!({"amount": 900}))
            .send()
            .await
            .unwrap();
        assert!(resp.is_replay());
        assert_eq!(server.executions(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_is_not_a_journal_is_refused() {
        let garbage = sqlite_path("garbage");
        std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
        let err = SqliteJournal::open(&garbage).await.unwrap_err();
        assert!(err.to_string().contains("not a SQLite database"), "{err}");

        let foreign = sqlite_path("foreign");
        rusqlite::Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY);")
            .unwrap();
        let err = SqliteJournal::open(&foreign).await.unwrap_err();
        assert!(err.to_string().contains("another application"), "{err}");

        let nowhere = PathBuf::from("/nonexistent-dir/ops.db");
        let err = SqliteJournal::open(&nowhere).await.unwrap_err();
        assert!(matches!(err, Error::Journal { .. }), "{err}");
        assert!(err.to_string().contains("ops.db"), "{err}");
    }
}

/// Where a worker died while driving one operation.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// Before anything was recorded.
    BeforeRecord,
    /// After the record, before any attempt.
    AfterRecord,
    /// After an attempt reached the server, before its answer came back.
    AfterSend,
    /// After the answer came back, before it was recorded.
    AfterAnswer,
    /// It did not die.
    None,
}

mod interleavings {
    use super::*;
    use proptest::prelude::*;

    fn crash_point() -> impl Strategy<Value = CrashPoint> {
        prop_oneof![
            Just(CrashPoint::BeforeRecord),
            Just(CrashPoint::AfterRecord),
            Just(CrashPoint::AfterSend),
            Just(CrashPoint::AfterAnswer),
            Just(CrashPoint::None),
        ]
    }

    /// What a dead worker left behind for operation `id`, by where it died: the first
    /// worker records it (with a key of its own), a later one claims the record.
    async fn die_at(
        point: CrashPoint,
        journal: &MemoryJournal,
        server: &MockServer,
        id: &str,
        body: &serde_json::Value,
    ) {
        let url = format!("{}/orders", server.uri());
        let existing = journal.find(id).await.unwrap();
        let key = match &existing {
            Some(entry) => entry.request.key.clone(),
            None => idempotent_retry::IdempotencyKey::new_v4()
                .as_str()
                .to_owned(),
        };
        let request = RecordedRequest {
            method: "POST".into(),
            url: url.clone(),
            key: key.clone(),
            key_header: "idempotency-key".into(),
            key_value: key.as_bytes().to_vec(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            secret_headers: Vec::new(),
            body: bytes::Bytes::from(body.to_string()),
            fingerprint: None,
        };
        let dead_lease = Duration::from_millis(40);
        let take = || async {
            if existing.is_some() {
                // A live lease (another dead worker's) must run out first.
                loop {
                    match journal.claim(id, "dead", dead_lease).await.unwrap() {
                        Claimed::Lease(_) | Claimed::NotPending => return,
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            } else {
                journal
                    .insert(id, &request, "dead", dead_lease)
                    .await
                    .unwrap();
            }
        };
        let send = || async {
            // The dead worker's attempt, as it went on the wire.
            reqwest::Client::new()
                .post(&url)
                .header("idempotency-key", key.as_str())
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
        };
        match point {
            CrashPoint::BeforeRecord | CrashPoint::None => {}
            CrashPoint::AfterRecord => take().await,
            CrashPoint::AfterSend => {
                take().await;
                // The request reached the server; the worker died before the answer.
                server.inject(Fault::DropAfterProcessing, 1);
                let _ = send().await;
            }
            CrashPoint::AfterAnswer => {
                take().await;
                assert!(send().await.unwrap().status().is_success());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Workers die at any of the crash points, on any of the operations, one after
        /// another; a last worker runs every operation from the top. Every operation
        /// executes exactly once, with the key its first record holds.
        #[test]
        fn any_crash_point_on_any_operation_executes_each_once(
            crashes in proptest::collection::vec((0usize..4, crash_point()), 1..8),
            seed in any::<u64>(),
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let server = MockServer::builder().seed(seed).start().await.unwrap();
                let journal = MemoryJournal::new().lease_duration(Duration::from_millis(1_500));
                let client = fast_builder()
                    .attempt_timeout(Duration::from_millis(300))
                    .journal(journal.clone())
                    .build()
                    .unwrap();
                let body = |op: usize| json!({ "op": op });
                let id = |op: usize| format!("op-{op}");
                let mut first_keys = std::collections::HashMap::new();
                for (op, point) in &crashes {
                    if let CrashPoint::None = point {
                        // A worker that lives: it runs the operation to its end.
                        client
                            .post_idempotent(format!("{}/orders", server.uri()))
                            .operation_id(id(*op))
                            .json(&body(*op))
                            .send()
                            .await
                            .unwrap();
                    } else {
                        die_at(*point, &journal, &server, &id(*op), &body(*op)).await;
                    }
                    if let Some(entry) = journal.find(&id(*op)).await.unwrap() {
                        first_keys.entry(*op).or_insert(entry.request.key);
                    }
                }
                for op in 0..4 {
                    let resp = client
                        .post_idempotent(format!("{}/orders", server.uri()))
                        .operation_id(id(op))
                        .json(&body(op))
                        .send()
                        .await
                        .unwrap();
                    if let Some(key) = first_keys.get(&op) {
                        assert_eq!(resp.idempotency_key().as_str(), key, "op {op} kept its key");
                    }
                    assert_eq!(server.executions_for(resp.idempotency_key().as_str()), 1, "op {op}");
                }
                assert_eq!(server.executions(), 4, "{crashes:?}");
                assert!(server.duplicates().is_empty());
                assert!(client.pending().await.unwrap().is_empty());
            });
        }
    }
}

#[cfg(feature = "journal-conformance")]
mod conformance {
    use super::*;
    use idempotent_retry::journal::conformance::check;

    #[tokio::test]
    async fn the_memory_journal_keeps_every_rule() {
        check(&MemoryJournal::new()).await.unwrap();
    }

    #[cfg(feature = "journal-sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sqlite_journal_keeps_every_rule() {
        let journal = idempotent_retry::journal::SqliteJournal::open(sqlite_path("conformance"))
            .await
            .unwrap();
        check(&journal).await.unwrap();
    }

    #[cfg(feature = "journal-postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_journal_keeps_every_rule() {
        let Some(cluster) = support::postgres::Cluster::start("conformance") else {
            return;
        };
        let journal = idempotent_retry::journal::PostgresJournal::connect(&cluster.url)
            .await
            .unwrap();
        check(&journal).await.unwrap();
    }

    /// TLS: verified against the authority given; refused without it when required.
    #[cfg(feature = "journal-postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_postgres_journal_over_tls_keeps_every_rule() {
        use idempotent_retry::journal::PostgresJournal;
        let Some(cluster) = support::postgres::Cluster::start_tls("tls") else {
            return;
        };
        let url = format!("{}?sslmode=require", cluster.url);
        let journal = PostgresJournal::builder(&url)
            .tls_root_certificate(cluster.certificate.clone().unwrap())
            .connect()
            .await
            .unwrap();
        check(&journal).await.unwrap();
        // Its authority not given, the server's certificate is not trusted.
        let err = PostgresJournal::connect(&url).await.unwrap_err();
        assert!(matches!(err, Error::Journal { .. }), "{err}");
        let err = PostgresJournal::builder(&url)
            .tls_root_certificate(b"not a certificate".to_vec())
            .connect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("tls_root_certificate"), "{err}");
    }

    /// A journal that forgets fencing: it renews whatever token it is given.
    struct Unfenced(MemoryJournal);

    impl Journal for Unfenced {
        fn find<'a>(&'a self, id: &'a str) -> JournalFuture<'a, Option<JournalEntry>> {
            self.0.find(id)
        }
        fn insert<'a>(
            &'a self,
            id: &'a str,
            request: &'a RecordedRequest,
            holder: &'a str,
            lease: Duration,
        ) -> JournalFuture<'a, Inserted> {
            self.0.insert(id, request, holder, lease)
        }
        fn claim<'a>(
            &'a self,
            id: &'a str,
            holder: &'a str,
            lease: Duration,
        ) -> JournalFuture<'a, Claimed> {
            self.0.claim(id, holder, lease)
        }
        fn start_attempt<'a>(
            &'a self,
            lease: &'a Lease,
            duration: Duration,
        ) -> JournalFuture<'a, ()> {
            // Counts its own attempts, but lets a lost lease through.
            Box::pin(async move {
                match self.0.start_attempt(lease, duration).await {
                    Err(JournalError::LeaseLost { .. }) => Ok(()),
                    other => other,
                }
            })
        }
        fn withdraw<'a>(&'a self, lease: &'a Lease) -> JournalFuture<'a, ()> {
            self.0.withdraw(lease)
        }
        fn complete<'a>(
            &'a self,
            lease: &'a Lease,
            answer: &'a RecordedAnswer,
        ) -> JournalFuture<'a, ()> {
            self.0.complete(lease, answer)
        }
        fn release<'a>(&'a self, lease: &'a Lease, release: &'a Release) -> JournalFuture<'a, ()> {
            self.0.release(lease, release)
        }
        fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>> {
            self.0.pending()
        }
        fn resolve<'a>(
            &'a self,
            id: &'a str,
            resolution: &'a Resolution,
        ) -> JournalFuture<'a, bool> {
            self.0.resolve(id, resolution)
        }
        fn cancel<'a>(&'a self, id: &'a str) -> JournalFuture<'a, bool> {
            self.0.cancel(id)
        }
        fn housekeep(&self) -> JournalFuture<'_, u64> {
            self.0.housekeep()
        }
    }

    #[tokio::test]
    async fn a_journal_without_fencing_is_caught() {
        let broken = check(&Unfenced(MemoryJournal::new())).await.unwrap_err();
        assert!(
            broken.contains("start_attempt") && broken.contains("LeaseLost"),
            "{broken}"
        );
    }
}

#[tokio::test]
async fn the_resumer_finishes_what_a_failed_run_left() {
    let server = MockServer::start().await;
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::BAD_GATEWAY),
        1,
    );
    let client = retrying(MemoryJournal::new(), 1);
    client
        .post_idempotent(format!("{}/orders", server.uri()))
        .operation_id("left-behind")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap_err();
    let resumer = tokio::spawn(client.resumer(Duration::from_millis(20)));
    let mut rounds = 0;
    while !client.pending().await.unwrap().is_empty() {
        rounds += 1;
        assert!(rounds < 100, "the resumer never finished it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    resumer.abort();
    assert_eq!(server.executions(), 1);
}

/// A resume after the credential changed (a rotated token), against a server that
/// scopes keys by `scope`: what executes.
async fn resume_after_rotation(server: &MockServer) -> u64 {
    server.inject(Fault::DropAfterProcessing, 1);
    let client = builder(MemoryJournal::new())
        .retry_policy(support::fast_policy().max_attempts(1))
        .resume_headers(|_| {
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", "Bearer rotated".parse().unwrap());
            headers
        })
        .build()
        .unwrap();
    client
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .operation_id("rotated")
        .bearer_auth("original")
        .header("x-account", "acct_1")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap_err();
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.completed, ["rotated"]);
    server.executions()
}

#[tokio::test]
async fn a_resume_after_token_rotation_is_safe_only_where_keys_are_scoped_by_account() {
    // Keys scoped by token: the rotated token makes the key new, and it runs again.
    // The docs warn about such servers.
    let by_token = MockServer::start().await;
    assert_eq!(resume_after_rotation(&by_token).await, 2);
    // And the mock says so: one key, executed once in each of two scopes.
    let [duplicate] = &by_token.duplicate_details()[..] else {
        panic!("{:?}", by_token.duplicate_details());
    };
    assert_eq!(by_token.duplicates(), std::slice::from_ref(&duplicate.key));
    assert_eq!(duplicate.executions, 2);
    assert_eq!(duplicate.scopes.len(), 2, "{duplicate:?}");
    assert!(
        duplicate.scopes.iter().all(|s| s.starts_with("Bearer #")),
        "{duplicate:?}"
    );
    // Keys scoped by account: the same resume gets the stored answer.
    let by_account = MockServer::builder()
        .scope_header("x-account")
        .start()
        .await
        .unwrap();
    assert_eq!(resume_after_rotation(&by_account).await, 1);
    assert!(by_account.duplicates().is_empty());
}

#[cfg(all(feature = "journal-sqlite", unix))]
mod os_locks {
    use super::*;
    use idempotent_retry::journal::SqliteJournal;

    fn request(url: &str) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            url: url.into(),
            key: "k-os".into(),
            key_header: "idempotency-key".into(),
            key_value: b"k-os".to_vec(),
            headers: Vec::new(),
            secret_headers: Vec::new(),
            body: bytes::Bytes::new(),
            fingerprint: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gone_process_lease_is_taken_over_at_once_a_live_ones_is_not() {
        let path = sqlite_path("os-locks");
        let first = SqliteJournal::open(&path).await.unwrap();
        let second = SqliteJournal::open(&path).await.unwrap();
        for id in ["alive", "gone"] {
            let inserted = first
                .insert(
                    id,
                    &request("http://127.0.0.1:9/x"),
                    "worker-1",
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
            assert!(matches!(inserted, Inserted::Recorded(_)));
        }
        // Its process lives: its 30 s lease holds.
        assert!(matches!(
            second
                .claim("alive", "worker-2", Duration::from_secs(30))
                .await
                .unwrap(),
            Claimed::Held { .. }
        ));
        // Its process is gone (here: its journal closed, its OS lock let go): taken at
        // once, not after its 30 s lease. (A process this test binary forks at that
        // moment, to start PostgreSQL for another test, shares the lock until it execs:
        // a few milliseconds. So the claim is asked again, for at most one second.)
        drop(first);
        let dropped = std::time::Instant::now();
        let mut claimed = None;
        for _ in 0..100 {
            let claim = second.claim("gone", "worker-2", Duration::from_secs(30));
            match claim.await.unwrap() {
                Claimed::Held { .. } => tokio::time::sleep(Duration::from_millis(10)).await,
                other => {
                    claimed = Some(other);
                    break;
                }
            }
        }
        assert!(
            matches!(claimed, Some(Claimed::Lease(_))),
            "{claimed:?} after {:?}",
            dropped.elapsed()
        );
        assert!(dropped.elapsed() < Duration::from_secs(2));
    }
}

/// PostgreSQL gone at send time: a typed error, and nothing sent.
#[cfg(feature = "journal-postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_send_time_means_nothing_is_sent() {
    let Some(cluster) = support::postgres::Cluster::start("down") else {
        return;
    };
    let journal = idempotent_retry::journal::PostgresJournal::builder(&cluster.url)
        .connections(1)
        .connect()
        .await
        .unwrap();
    let server = MockServer::start().await;
    let client = client(journal);
    drop(cluster); // the server stops, its data removed
    let err = client
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .operation_id("order-11/charge")
        .json(&json!({"amount": 11}))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Journal { .. }), "{err:?}");
    assert!(
        err.may_have_executed(),
        "the record may have been written: {err}"
    );
    assert!(server.requests().is_empty(), "nothing sent");
}

#[tokio::test]
async fn an_open_circuit_refuses_a_journalled_operation_and_a_resume_says_it_may_have_run() {
    let server = MockServer::start().await;
    let url = format!("{}/v1/charges", server.uri());
    let client = retrying(MemoryJournal::new(), 1);
    // A first try that ends without an answer: its key was sent, the entry pending.
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    charge(&client, &url, "order-9/charge", json!({"amount": 900}))
        .await
        .unwrap_err();
    // A new operation while the origin's circuit is open: refused before any I/O,
    // and its key, recorded but never sent, cannot have run.
    client.open_circuit(&url).unwrap();
    let err = charge(&client, &url, "order-10/charge", json!({"amount": 1000}))
        .await
        .unwrap_err();
    assert!(err.is_circuit_open() && !err.may_have_executed(), "{err}");
    // "Not executed" is true for good: its record is gone, so no resume sends it.
    assert!(
        client
            .pending()
            .await
            .unwrap()
            .iter()
            .all(|p| p.id != "order-10/charge")
    );
    // The resume of a journalled key is refused too, and says the operation may have
    // run: that key may have been sent by the run before.
    let requests = server.requests().len();
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.still_pending.len(), 1, "{report:?}");
    for (id, err) in &report.still_pending {
        assert_eq!(id, "order-9/charge");
        assert!(err.is_circuit_open(), "{id}: {err}");
        assert!(err.may_have_executed(), "{id}: a journalled key: {err}");
    }
    assert_eq!(server.requests().len(), requests, "nothing sent");
    // Closed again: the pending one completes; the refused one, started over as the
    // application was told it may, runs once.
    client.close_circuit(&url).unwrap();
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.completed, ["order-9/charge"], "{report:?}");
    charge(&client, &url, "order-10/charge", json!({"amount": 1000}))
        .await
        .unwrap();
    assert_eq!(server.executions(), 2);
    assert!(server.duplicates().is_empty());
}

/// A proxy in front of PostgreSQL that lets the operation's record reach the server and
/// commit, then drops the connection before the reply: the ambiguous commit. Returns
/// its port.
#[cfg(feature = "journal-postgres")]
async fn commit_then_cut(upstream: u16) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let (mut buf_c, mut buf_s) = (vec![0u8; 65536], vec![0u8; 65536]);
                // The group writer's connection prepares the INSERT when it connects;
                // on that connection, the first reply that says a transaction
                // committed is the one the client never hears.
                let mut writer = false;
                loop {
                    tokio::select! {
                        read = client.read(&mut buf_c) => {
                            let Ok(n @ 1..) = read else { return };
                            let chunk = &buf_c[..n];
                            let insert = b"INSERT INTO idempotent_retry_operations";
                            if chunk.windows(insert.len()).any(|w| w == insert) {
                                writer = true;
                            }
                            if server.write_all(chunk).await.is_err() {
                                return;
                            }
                        }
                        read = server.read(&mut buf_s) => {
                            let Ok(n @ 1..) = read else { return };
                            let committed = b"COMMIT\0";
                            if writer && buf_s[..n].windows(committed.len()).any(|w| w == committed) {
                                return;
                            }
                            if client.write_all(&buf_s[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// An INSERT that committed but whose answer was lost: the error says the operation
/// may have executed (a resume would send it), and a retry of the same id finds it.
#[cfg(feature = "journal-postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_commit_whose_answer_is_lost_may_have_executed() {
    use idempotent_retry::journal::PostgresJournal;
    let Some(cluster) = support::postgres::Cluster::start("ambiguous") else {
        return;
    };
    let upstream: u16 = cluster
        .url
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let proxied = cluster.url.replace(
        &format!(":{upstream}/"),
        &format!(":{}/", commit_then_cut(upstream).await),
    );
    let server = MockServer::start().await;
    let url = format!("{}/v1/charges", server.uri());
    let lease = Duration::from_secs(2);
    let cut = PostgresJournal::builder(&proxied)
        .connections(1)
        .lease_duration(lease)
        .connect()
        .await
        .unwrap();
    let err = charge(&client(cut), &url, "order-12/charge", json!({"amount": 12}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Journal { .. }), "{err:?}");
    assert!(err.may_have_executed(), "the record committed: {err}");
    assert!(server.requests().is_empty(), "nothing sent");
    // The record is there, under the lease the lost INSERT took: a retry of the same
    // id finds it, waits for that lease to run out (within its deadline), takes it
    // over and runs it once, with the recorded key.
    let journal = PostgresJournal::builder(&cluster.url)
        .lease_duration(lease)
        .connect()
        .await
        .unwrap();
    let recorded = journal.find("order-12/charge").await.unwrap().unwrap();
    let resp = charge(
        &client(journal),
        &url,
        "order-12/charge",
        json!({"amount": 12}),
    )
    .await
    .unwrap();
    assert_eq!(resp.idempotency_key().as_str(), recorded.request.key);
    assert_eq!(server.executions(), 1);
}
