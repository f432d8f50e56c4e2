//! Faults of the journal's own store: PostgreSQL restarted with 64 operations in
//! flight, a statement timeout on a claim, every connection slot taken; SQLite's disk
//! full during a group of writes. Each ends with a typed error; nothing is sent for an
//! operation whose record did not commit, nothing is sent twice and nothing is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use idempotent_retry::journal::{EntryState, Journal};
use idempotent_retry::{Error, GiveUpReason, IdempotentClient};
use idempotent_retry_mock::MockServer;
use serde_json::json;

/// Sends operation `n` (id `op-{n}`) to `url`.
async fn charge(
    client: IdempotentClient,
    url: String,
    n: usize,
) -> Result<idempotent_retry::IdempotentResponse, Error> {
    client
        .post_idempotent(url)
        .operation_id(format!("op-{n}"))
        .json(&json!({ "n": n }))
        .send()
        .await
}

/// Whether `e` is the journal's own failure, before or between attempts.
fn journals_own(e: &Error) -> bool {
    matches!(
        e,
        Error::Journal { .. }
            | Error::Failed {
                reason: GiveUpReason::JournalFailed,
                ..
            }
    )
}

/// What the journal says of every operation, and that it holds every key the server
/// executed (nothing lost), the server executing none twice.
async fn every_sent_key_is_recorded(
    journal: &impl Journal,
    server: &MockServer,
    ops: usize,
) -> Vec<Option<EntryState>> {
    let mut recorded_keys = HashSet::new();
    let mut states = Vec::new();
    for n in 0..ops {
        let entry = journal.find(&format!("op-{n}")).await.unwrap();
        if let Some(entry) = &entry {
            recorded_keys.insert(entry.request.key.clone());
        }
        states.push(entry.map(|e| e.state));
    }
    for request in server.requests() {
        let key = request.key.expect("every request carries its key");
        assert!(
            recorded_keys.contains(&key),
            "{key} was sent but not recorded"
        );
    }
    assert!(server.duplicates().is_empty(), "{:?}", server.duplicates());
    states
}

#[cfg(feature = "journal-postgres")]
mod postgres {
    use super::*;
    use idempotent_retry::journal::PostgresJournal;
    use support::postgres::Cluster;

    /// 64 workers, each sending its operations one after another, and PostgreSQL
    /// stopped at once (as if it crashed) and started again while they run. Each
    /// operation ends completed, or with an error and either recorded as pending with
    /// its key or never sent; a resume then completes every recorded one, each executed
    /// once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_with_64_in_flight_loses_nothing_and_sends_nothing_twice() {
        let Some(cluster) = Cluster::start("restart") else {
            return;
        };
        let server = MockServer::builder()
            .processing_delay(Duration::from_millis(2))
            .start()
            .await
            .unwrap();
        let url = format!("{}/v1/charges", server.uri());
        let journal = PostgresJournal::builder(&cluster.url)
            .lease_duration(Duration::from_millis(2500))
            .connect()
            .await
            .unwrap();
        let client = support::fast_builder()
            .attempt_timeout(Duration::from_secs(1))
            .journal(journal.clone())
            .build()
            .unwrap();
        let (workers, each) = (64, 20);
        let ops = workers * each;
        let tasks: Vec<_> = (0..workers)
            .map(|worker| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    for n in worker * each..(worker + 1) * each {
                        outcomes.push(charge(client.clone(), url.clone(), n).await);
                    }
                    outcomes
                })
            })
            .collect();
        // Restart once the operations are under way: the writes in flight then, and
        // those tried while the server is down, fail.
        for _ in 0..1000 {
            if server.executions() >= 64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(server.executions() >= 64, "the operations got under way");
        let _cluster = tokio::task::spawn_blocking(move || {
            cluster.restart();
            cluster
        })
        .await
        .unwrap();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.extend(task.await.unwrap());
        }
        let mut failed = 0;
        for e in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert!(journals_own(e), "{e:?}");
            failed += 1;
        }
        assert!(failed > 0, "the restart cut some operations short");
        let states = every_sent_key_is_recorded(&journal, &server, ops).await;
        for (n, (outcome, state)) in outcomes.iter().zip(&states).enumerate() {
            match (outcome, state) {
                // Answered; if its answer could not be recorded, it stays pending and
                // a resume gets the server's replay.
                (Ok(_), Some(EntryState::Completed(_) | EntryState::Pending)) => {}
                // Recorded and maybe sent (resumed below), or never recorded and so
                // never sent (every sent key is recorded).
                (Err(_), Some(EntryState::Pending | EntryState::Completed(_)) | None) => {}
                other => panic!("op-{n}: {other:?}"),
            }
        }
        // A resume (again while another worker's lease runs out) completes each
        // recorded one; none executes twice.
        let mut pending = journal.pending().await.unwrap().len();
        println!(
            "restart: {failed} of {ops} operations failed, {pending} left pending, {} recorded",
            states.iter().filter(|s| s.is_some()).count()
        );
        for _ in 0..50 {
            if pending == 0 {
                break;
            }
            client.resume_pending().await.unwrap();
            pending = journal.pending().await.unwrap().len();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(pending, 0, "every recorded operation completed");
        let states = every_sent_key_is_recorded(&journal, &server, ops).await;
        let recorded = states.iter().filter(|s| s.is_some()).count() as u64;
        assert_eq!(server.executions(), recorded);
    }
}

#[cfg(feature = "journal-postgres")]
mod postgres_sessions {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use super::*;
    use idempotent_retry::journal::{
        Claimed, Inserted, JournalError, JournalFuture, Lease, PostgresJournal, RecordedRequest,
    };
    use support::postgres::Cluster;

    /// A request as a resume would send it, to `url`.
    fn request(url: &str) -> RecordedRequest {
        let key = uuid::Uuid::new_v4().to_string();
        RecordedRequest {
            method: "POST".into(),
            url: url.into(),
            key_value: key.clone().into_bytes(),
            key,
            key_header: "idempotency-key".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            secret_headers: Vec::new(),
            body: bytes::Bytes::from_static(b"{\"amount\":1}"),
            fingerprint: None,
        }
    }

    /// A second session on the database, outside the journal.
    async fn session(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// Records `id` under `holder`'s lease.
    async fn record(journal: &PostgresJournal, id: &str, holder: &str, lease: Duration) -> Lease {
        match journal
            .insert(id, &request("http://127.0.0.1:9/"), holder, lease)
            .await
        {
            Ok(Inserted::Recorded(lease)) => lease,
            other => panic!("{id}: {other:?}"),
        }
    }

    /// Polls each future once (each queues its write), then runs them all to the end.
    async fn queued_then_joined<T>(
        mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>,
        queued: impl Future<Output = ()>,
    ) -> Vec<T> {
        std::future::poll_fn(|cx| {
            for future in &mut futures {
                assert!(
                    future.as_mut().poll(cx).is_pending(),
                    "nothing answered yet"
                );
            }
            Poll::Ready(())
        })
        .await;
        queued.await;
        let mut outputs = Vec::new();
        for future in futures {
            outputs.push(future.await);
        }
        outputs
    }

    /// 31 writes committed in one group, one of them under a lease another worker has
    /// taken over: that one is refused (lease lost), the 30 others commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_in_a_group_fails_only_its_own_write() {
        let Some(cluster) = Cluster::start("fenced-group") else {
            return;
        };
        let journal = PostgresJournal::connect(&cluster.url).await.unwrap();
        let long = Duration::from_secs(30);
        let mut leases = Vec::new();
        for n in 0..30 {
            leases.push(record(&journal, &format!("op-{n}"), "me", long).await);
        }
        // op-stale's lease runs out and another worker takes it over.
        let stale = record(&journal, "op-stale", "me", Duration::from_millis(1)).await;
        for _ in 0..500 {
            if matches!(
                journal.claim("op-stale", "other", long).await.unwrap(),
                Claimed::Lease(_)
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The writer is held up on a row another session has locked, while the 31
        // writes queue behind it: they then go in one group.
        let blocker = record(&journal, "op-blocker", "me", long).await;
        let other = session(&cluster.url).await;
        other
            .batch_execute(
                "BEGIN; SELECT 1 FROM idempotent_retry_operations WHERE id = 'op-blocker' FOR UPDATE",
            )
            .await
            .unwrap();
        let held = {
            let journal = journal.clone();
            tokio::spawn(async move { journal.start_attempt(&blocker, long).await })
        };
        let watcher = session(&cluster.url).await;
        for _ in 0..1000 {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let writes: Vec<JournalFuture<'_, ()>> = std::iter::once(&stale)
            .chain(&leases)
            .map(|lease| journal.start_attempt(lease, long))
            .collect();
        let outcomes = queued_then_joined(writes, async {
            other.batch_execute("COMMIT").await.unwrap();
        })
        .await;
        held.await.unwrap().unwrap();
        assert!(
            matches!(&outcomes[0], Err(JournalError::LeaseLost { id, .. }) if id == "op-stale"),
            "{:?}",
            outcomes[0]
        );
        for (n, outcome) in outcomes[1..].iter().enumerate() {
            assert!(outcome.is_ok(), "op-{n}: {outcome:?}");
            let entry = journal.find(&format!("op-{n}")).await.unwrap().unwrap();
            assert_eq!(entry.attempts, 1, "op-{n}");
        }
        let entry = journal.find("op-stale").await.unwrap().unwrap();
        assert_eq!(entry.attempts, 0, "the refused write left op-stale alone");
    }

    /// A claim that waits on a row another session has locked, under the server's
    /// statement timeout: the resume reports it still pending with the journal's typed
    /// error and sends nothing; once the row is free, it sends once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_statement_timeout_on_a_claim_sends_nothing() {
        let Some(cluster) = Cluster::start("timeout") else {
            return;
        };
        let server = MockServer::start().await;
        let url = format!("{}/v1/charges", server.uri());
        // Every statement of this journal's sessions may run for 200 ms at most.
        let timed = format!("{}?options=-c%20statement_timeout%3D200", cluster.url);
        let journal = PostgresJournal::connect(&timed).await.unwrap();
        let gone = Duration::from_millis(1);
        let Ok(Inserted::Recorded(_)) = journal
            .insert("op-slow", &request(&url), "gone", gone)
            .await
        else {
            panic!("recorded");
        };
        for _ in 0..500 {
            if journal
                .find("op-slow")
                .await
                .unwrap()
                .unwrap()
                .holder
                .is_none()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let other = session(&cluster.url).await;
        other
            .batch_execute(
                "BEGIN; SELECT 1 FROM idempotent_retry_operations WHERE id = 'op-slow' FOR UPDATE",
            )
            .await
            .unwrap();
        let claim = journal
            .claim("op-slow", "me", Duration::from_secs(30))
            .await;
        let Err(JournalError::Storage {
            source: Some(source),
            ..
        }) = &claim
        else {
            panic!("{claim:?}");
        };
        assert!(
            format!("{source:?}").contains("statement timeout"),
            "{source:?}"
        );
        let client = support::fast_builder()
            .journal(journal.clone())
            .build()
            .unwrap();
        let report = client.resume_pending().await.unwrap();
        assert!(report.completed.is_empty(), "{report:?}");
        assert!(
            matches!(&report.still_pending[..], [(id, Error::Journal { .. })] if id == "op-slow"),
            "{report:?}"
        );
        assert!(server.requests().is_empty(), "nothing sent");
        other.batch_execute("COMMIT").await.unwrap();
        let report = client.resume_pending().await.unwrap();
        assert_eq!(report.completed, ["op-slow"]);
        assert_eq!(server.executions(), 1);
    }

    /// Every connection slot of the server taken: a send that needs a new connection
    /// fails with the journal's typed error and sends nothing; once slots are free again,
    /// the same operation runs, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_slot_taken_sends_nothing() {
        let Some(cluster) = Cluster::start("crowded") else {
            return;
        };
        let server = MockServer::start().await;
        let url = format!("{}/v1/charges", server.uri());
        // Connected (one session, for the schema); the group writer connects at its
        // first write.
        let journal = PostgresJournal::builder(&cluster.url)
            .connections(1)
            .connect()
            .await
            .unwrap();
        let client = support::fast_builder().journal(journal).build().unwrap();
        let mut crowd = Vec::new();
        for _ in 0..100 {
            match tokio_postgres::connect(&cluster.url, tokio_postgres::NoTls).await {
                Ok((session, connection)) => {
                    tokio::spawn(connection);
                    crowd.push(session);
                }
                Err(_) => break,
            }
        }
        assert!(crowd.len() < 100, "the server ran out of connection slots");
        let err = charge(client.clone(), url.clone(), 1).await.unwrap_err();
        assert!(matches!(err, Error::Journal { .. }), "{err:?}");
        assert!(format!("{err:?}").contains("too many clients"), "{err:?}");
        assert!(server.requests().is_empty(), "nothing sent");
        drop(crowd);
        // The crowd's sessions end in the server's own time.
        let mut outcome = Err(err);
        for _ in 0..100 {
            outcome = charge(client.clone(), url.clone(), 1).await;
            if outcome.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outcome.unwrap();
        assert_eq!(server.executions(), 1);
    }

    /// A row another session keeps locked holds up the group writer only as long as
    /// the URL's `lock_timeout` allows: the write on it fails with the journal's typed
    /// error, and the writes queued behind it then commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_timeout_bounds_a_wait_of_the_group_writer() {
        let Some(cluster) = Cluster::start("lock-timeout") else {
            return;
        };
        let timed = format!("{}?options=-c%20lock_timeout%3D200", cluster.url);
        let journal = PostgresJournal::connect(&timed).await.unwrap();
        let long = Duration::from_secs(30);
        let locked = record(&journal, "op-locked", "me", long).await;
        let free = record(&journal, "op-free", "me", long).await;
        let other = session(&cluster.url).await;
        other
            .batch_execute(
                "BEGIN; SELECT 1 FROM idempotent_retry_operations WHERE id = 'op-locked' FOR UPDATE",
            )
            .await
            .unwrap();
        let (stuck, behind) = tokio::join!(
            journal.start_attempt(&locked, long),
            journal.start_attempt(&free, long)
        );
        let Err(JournalError::Storage {
            source: Some(source),
            ..
        }) = &stuck
        else {
            panic!("{stuck:?}");
        };
        assert!(format!("{source:?}").contains("lock timeout"), "{source:?}");
        // Behind it (or in its group, which failed as a whole): committed, or refused
        // with the same typed error and then written.
        if behind.is_err() {
            journal.start_attempt(&free, long).await.unwrap();
        }
        assert_eq!(journal.find("op-free").await.unwrap().unwrap().attempts, 1);
        assert_eq!(
            journal.find("op-locked").await.unwrap().unwrap().attempts,
            0
        );
        other.batch_execute("COMMIT").await.unwrap();
        journal.start_attempt(&locked, long).await.unwrap();
    }

    /// An operation id PostgreSQL cannot store (a NUL character) is refused before any
    /// I/O, with the journal's typed error, and fails no other write of its group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_id_postgres_cannot_store_fails_alone() {
        let Some(cluster) = Cluster::start("nul") else {
            return;
        };
        let journal = PostgresJournal::connect(&cluster.url).await.unwrap();
        let url = "http://127.0.0.1:9/";
        let lease = Duration::from_secs(30);
        let (first, second) = (request(url), request(url));
        let (bad, good) = tokio::join!(
            journal.insert("op\0bad", &first, "me", lease),
            journal.insert("op-good", &second, "me", lease),
        );
        let Err(JournalError::Storage { reason, .. }) = &bad else {
            panic!("{bad:?}");
        };
        assert!(reason.contains("NUL"), "{reason}");
        assert!(matches!(good, Ok(Inserted::Recorded(_))), "{good:?}");
        assert!(journal.find("op-good").await.unwrap().is_some());
    }
}

#[cfg(feature = "journal-sqlite")]
mod sqlite {
    use super::*;
    use idempotent_retry::journal::SqliteJournal;

    /// Set in the child run of the full-disk test.
    const CHILD: &str = "IDEMPOTENT_RETRY_FULL_DISK_CHILD";

    /// The journal's files may not grow past this many KiB (`ulimit -f`).
    const LIMIT_KIB: u32 = 2048;

    /// The disk fills while groups of 32 operations with 16 KiB bodies are written:
    /// every caller whose write did not commit gets the journal's typed error, nothing
    /// is sent for an operation that is not recorded, and nothing twice.
    ///
    /// It runs this test again in a child process whose files may not grow past
    /// `LIMIT_KIB` (SIGXFSZ ignored, so a write past it fails as on a full disk).
    #[test]
    fn a_full_disk_during_a_group_fails_each_caller_and_sends_nothing_unrecorded() {
        if std::env::var_os(CHILD).is_some() {
            return full_disk();
        }
        let test =
            "sqlite::a_full_disk_during_a_group_fails_each_caller_and_sends_nothing_unrecorded";
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "trap '' XFSZ; ulimit -f {LIMIT_KIB}; exec \"$0\" --exact {test} --nocapture"
            ))
            .arg(std::env::current_exe().unwrap())
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the child run failed");
        assert!(stdout.contains("full disk:"), "the child ran the test");
    }

    fn full_disk() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let dir = std::env::temp_dir().join(format!("idempotent-retry-full-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let server = MockServer::start().await;
            let url = format!("{}/v1/charges", server.uri());
            let journal = SqliteJournal::open(dir.join("journal.db")).await.unwrap();
            let client = support::fast_builder().journal(journal.clone()).build().unwrap();
            let padding = "x".repeat(16 * 1024);
            let (mut done, mut failed, mut rounds) = (0, 0, 0);
            let mut first_error = None;
            // Groups until well past the first failure (bounded: the limit is reached
            // within about 128 operations).
            while rounds < 40 && failed < 64 {
                let tasks: Vec<_> = (0..32)
                    .map(|i| {
                        let n = rounds * 32 + i;
                        let (client, url, padding) = (client.clone(), url.clone(), padding.clone());
                        tokio::spawn(async move {
                            client
                                .post_idempotent(url)
                                .operation_id(format!("op-{n}"))
                                .json(&json!({ "n": n, "padding": padding }))
                                .send()
                                .await
                        })
                    })
                    .collect();
                for task in tasks {
                    match task.await.unwrap() {
                        Ok(_) => done += 1,
                        Err(e) => {
                            assert!(journals_own(&e), "{e:?}");
                            failed += 1;
                            first_error.get_or_insert_with(|| format!("{e}"));
                        }
                    }
                }
                rounds += 1;
            }
            assert!(done > 0, "some operations were recorded before the disk filled");
            assert!(failed > 0, "the disk filled");
            // Reading needs no room: every key sent is recorded, none sent twice.
            let states = every_sent_key_is_recorded(&journal, &server, rounds * 32).await;
            let recorded = states.iter().filter(|s| s.is_some()).count();
            println!(
                "full disk: {done} answered, {failed} failed with the journal's error, {recorded} recorded, {} sent; the first error: {}",
                server.executions(),
                first_error.unwrap_or_default()
            );
            let _ = std::fs::remove_dir_all(&dir);
        });
    }
}
