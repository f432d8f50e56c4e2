//! Exactly-once, proved against the mock server: a chaos soak, arbitrary fault scripts,
//! and resuming an operation whose outcome was unknown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_retry::{IdempotencyKey, IdempotentClient, Jitter, RetryBudget, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};
use proptest::prelude::*;
use serde_json::{Value, json};

fn chaos_client(seed: u64, attempt_timeout: Duration, max_attempts: u32) -> IdempotentClient {
    IdempotentClient::builder()
        .retry_policy(
            RetryPolicy::exponential()
                .max_attempts(max_attempts)
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(50))
                .jitter(Jitter::Full)
                .jitter_seed(seed)
                .max_retry_after(Duration::from_millis(20))
                .deadline(Duration::from_secs(20)),
        )
        .attempt_timeout(attempt_timeout)
        .retry_budget(RetryBudget::unlimited())
        .build()
        .unwrap()
}

/// How one soak operation ended.
enum Ended {
    Ok {
        id: u64,
    },
    Err {
        key: IdempotencyKey,
        outcome_unknown: bool,
        why: String,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_ten_thousand_operations_execute_exactly_once() {
    const OPS: u64 = 10_000;
    const CONCURRENCY: usize = 64;
    const RATE_PER_KIND: f64 = 0.04; // eleven kinds: 44 % of requests faulted
    let server = MockServer::builder()
        .seed(2026)
        .fault_rates(
            Fault::all_kinds(Duration::from_millis(250), Duration::from_secs(1))
                .into_iter()
                .map(|fault| (fault, RATE_PER_KIND)),
        )
        .start()
        .await
        .unwrap();
    let client = chaos_client(7, Duration::from_millis(100), 8);
    let url = format!("{}/orders", server.uri());
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let started = Instant::now();

    let soak = async {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..OPS {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let body = json!({ "op": n });
                let (result, mut attempts) =
                    match client.post_idempotent(&url).json(&body).send().await {
                        Ok(resp) => (Ok(resp), 0),
                        // Resume an unknown outcome once, with its key, as the docs say.
                        Err(e) if e.is_outcome_unknown() => {
                            let key = e.idempotency_key().unwrap().clone();
                            let resumed = client
                                .post_idempotent(&url)
                                .json(&body)
                                .idempotency_key(key)
                                .send()
                                .await;
                            (resumed, e.attempts())
                        }
                        Err(e) => (Err(e), 0),
                    };
                match result {
                    Ok(resp) => {
                        attempts += resp.attempts();
                        let created: Value = resp.json().await.unwrap();
                        assert_eq!(
                            created["body"]["op"], n,
                            "an operation got another's result"
                        );
                        (
                            Ended::Ok {
                                id: created["id"].as_u64().unwrap(),
                            },
                            attempts,
                        )
                    }
                    Err(e) => {
                        attempts += e.attempts();
                        let key = e
                            .idempotency_key()
                            .expect("send() errors carry the key")
                            .clone();
                        (
                            Ended::Err {
                                key,
                                outcome_unknown: e.is_outcome_unknown(),
                                why: format!("{:?}", e.give_up_reason()),
                            },
                            attempts,
                        )
                    }
                }
            });
        }
        let mut ended = Vec::new();
        while let Some(done) = tasks.join_next().await {
            ended.push(done.expect("no operation panicked"));
        }
        ended
    };
    let ended = tokio::time::timeout(Duration::from_secs(110), soak)
        .await
        .expect("the soak finished: no operation hung");

    let attempts: u64 = ended.iter().map(|(_, a)| u64::from(*a)).sum();
    let mut ids = HashSet::new();
    let mut failed = Vec::new();
    let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
    for (end, _) in &ended {
        match end {
            Ended::Ok { id } => assert!(ids.insert(*id), "two operations got result {id}"),
            Ended::Err {
                key,
                outcome_unknown,
                why,
            } => {
                failed.push((key.clone(), *outcome_unknown));
                *reasons.entry(why).or_default() += 1;
            }
        }
    }
    let executed_failures: u64 = failed
        .iter()
        .map(|(k, _)| server.executions_for(k.as_str()))
        .sum();
    let stats = server.stats();
    println!(
        "chaos soak: {OPS} operations, {CONCURRENCY} concurrent, 44 % faulted: {} ok, {} failed \
         {reasons:?}, {attempts} attempts ({} requests at the server), {} executions, {} replays, \
         {} conflicts, {} duplicates, {:.1} s",
        ids.len(),
        failed.len(),
        stats.requests,
        stats.executions,
        stats.replays,
        stats.conflicts,
        stats.duplicates.len(),
        started.elapsed().as_secs_f64()
    );

    assert_eq!(ended.len() as u64, OPS, "every operation ended");
    assert!(
        stats.duplicates.is_empty(),
        "executed twice: {:?}",
        stats.duplicates
    );
    // Every success is one execution of its own; the only other executions belong to
    // operations that failed with an unknown outcome.
    assert_eq!(stats.executions, ids.len() as u64 + executed_failures);
    for (key, outcome_unknown) in &failed {
        if !outcome_unknown {
            assert_eq!(
                server.executions_for(key.as_str()),
                0,
                "{key} said not executed, but was"
            );
        }
    }
    assert!(
        stats.requests > OPS * 3 / 2,
        "the faults were real: {} requests",
        stats.requests
    );
}

fn fault_strategy() -> impl Strategy<Value = Fault> {
    prop_oneof![
        Just(Fault::StatusBeforeProcessing(
            http::StatusCode::SERVICE_UNAVAILABLE
        )),
        Just(Fault::StatusAfterProcessing(http::StatusCode::BAD_GATEWAY)),
        (60u64..120).prop_map(|ms| Fault::DelayAfterProcessing(Duration::from_millis(ms))),
        Just(Fault::DropBeforeProcessing),
        Just(Fault::DropAfterProcessing),
        Just(Fault::RateLimited {
            retry_after: Duration::from_secs(1)
        }),
        (60u64..120).prop_map(|ms| Fault::DelayBeforeProcessing(Duration::from_millis(ms))),
        Just(Fault::ResetBeforeProcessing),
        Just(Fault::ResetAfterProcessing),
        Just(Fault::TruncateAfterProcessing),
        Just(Fault::GarbageAfterProcessing),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any script of faults, any processing time, up to four concurrent copies of one
    /// operation: the key executes at most once, and exactly once if any copy says `Ok`.
    #[test]
    fn any_fault_script_executes_each_key_at_most_once(
        script in proptest::collection::vec(fault_strategy(), 0..10),
        processing_ms in 0u64..30,
        copies in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (executions, oks) = runtime.block_on(async {
            let server = MockServer::builder()
                .processing_delay(Duration::from_millis(processing_ms))
                .start()
                .await
                .unwrap();
            for fault in &script {
                server.inject(fault.clone(), 1);
            }
            let client = chaos_client(seed, Duration::from_millis(40), 6);
            let key = IdempotencyKey::new_v4();
            let url = format!("{}/payments", server.uri());
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..copies {
                let request = client.post_idempotent(&url).json(&json!({"amount": 100})).idempotency_key(key.clone());
                tasks.spawn(request.send());
            }
            let mut oks = 0;
            while let Some(done) = tasks.join_next().await {
                oks += usize::from(done.unwrap().is_ok());
            }
            (server.executions_for(key.as_str()), oks)
        });
        prop_assert!(executions <= 1, "executed {executions} times");
        if oks > 0 {
            prop_assert_eq!(executions, 1);
        }
    }
}

/// An operation whose every attempt timed out: the server executed it, the answers
/// were lost. The caller persists the key and resumes.
async fn lose_every_answer(server: &MockServer) -> String {
    server.inject(Fault::DelayAfterProcessing(Duration::from_millis(300)), 3);
    let err = chaos_client(1, Duration::from_millis(50), 3)
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&json!({"sku": "tea"}))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert!(err.is_timeout() && err.is_outcome_unknown(), "{err}");
    assert_eq!(server.executions(), 1, "the server did the work");
    // What an application writes to its database before giving up for now.
    serde_json::to_string(err.idempotency_key().unwrap()).unwrap()
}

async fn resume(server: &MockServer, persisted: &str) -> idempotent_retry::IdempotentResponse {
    let key: IdempotencyKey = serde_json::from_str(persisted).unwrap();
    chaos_client(2, Duration::from_secs(2), 3)
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&json!({"sku": "tea"}))
        .idempotency_key(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unknown_outcome_resumed_with_its_key_returns_the_original_result() {
    let server = MockServer::start().await;
    let persisted = lose_every_answer(&server).await;
    let resp = resume(&server, &persisted).await;
    assert!(resp.is_replay());
    let key = resp.idempotency_key().as_str().to_owned();
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["id"], 1, "the result of the one execution");
    assert_eq!(server.executions_for(&key), 1);
    assert!(server.duplicates().is_empty());
}

#[tokio::test]
async fn resuming_after_the_key_ttl_executes_again() {
    // The pitfall: the server forgets keys after its TTL (24 h by default on the mock,
    // Stripe: 24 h). Resume within it, or the operation runs twice.
    let ttl = Duration::from_millis(200);
    let server = MockServer::builder().key_ttl(ttl).start().await.unwrap();
    let persisted = lose_every_answer(&server).await;
    tokio::time::sleep(ttl).await; // past the TTL by definition: it started before
    let resp = resume(&server, &persisted).await;
    assert!(!resp.is_replay(), "the key was forgotten");
    let key = resp.idempotency_key().as_str().to_owned();
    assert_eq!(server.executions_for(&key), 2);
    assert_eq!(server.duplicates(), vec![key]);
}
