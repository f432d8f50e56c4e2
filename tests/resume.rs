//! Resumes as real applications run them: a resumed operation never goes out without
//! its credentials, never ends on an answer about the caller, a refused operation's
//! "not executed" stays true, and the journal counts attempts as they start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use idempotent_retry::journal::{Journal, MemoryJournal, PendingOperation, Resolution};
use idempotent_retry::{Error, Hedging, IdempotentClient, IdempotentClientBuilder};
use idempotent_retry_mock::{Fault, MockResponse, MockServer, Route};
use serde_json::json;

fn builder(journal: impl Journal) -> IdempotentClientBuilder {
    support::fast_builder()
        .retry_policy(support::fast_policy().max_attempts(1))
        .attempt_timeout(Duration::from_millis(500))
        .journal(journal)
}

/// A shipment that the first attempt creates, its answer lost on the way back.
async fn shipped_but_answer_lost(client: &IdempotentClient, server: &MockServer, id: &str) {
    server.inject(Fault::DropAfterProcessing, 1);
    let err = client
        .post_idempotent(format!("{}/v1/shipments", server.uri()))
        .operation_id(id)
        .bearer_auth("sk_original")
        .header("x-account", "acct_1")
        .json(&json!({"order": id}))
        .send()
        .await
        .unwrap_err();
    assert!(err.may_have_executed(), "{err}");
    assert_eq!(server.executions(), 1);
}

/// The bearer token a credentials provider gives: `Bearer <token>`.
fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    headers
}

#[tokio::test]
async fn a_resume_without_credentials_sends_nothing_and_names_the_missing_header() {
    let server = MockServer::start().await;
    let journal = MemoryJournal::new();
    // The journal's snippets without `resume_credentials`: what a new user writes.
    let client = builder(journal.clone()).build().unwrap();
    shipped_but_answer_lost(&client, &server, "op-5").await;
    let sent = server.requests().len();

    let report = client.resume_pending().await.unwrap();
    assert!(report.completed.is_empty(), "{report:?}");
    let [(id, err)] = &report.still_pending[..] else {
        panic!("{report:?}");
    };
    assert_eq!(id, "op-5");
    assert!(
        matches!(err, Error::CredentialsMissing { headers, .. } if headers == &["authorization"]),
        "{err:?}"
    );
    assert!(err.may_have_executed());
    assert!(err.to_string().contains("authorization"), "{err}");
    assert_eq!(
        server.requests().len(),
        sent,
        "nothing sent without Authorization"
    );
    // Still pending, resumable, and it says an attempt may have reached the server.
    let [pending] = &client.pending().await.unwrap()[..] else {
        panic!("one pending operation");
    };
    assert_eq!(pending.secret_headers, ["authorization"]);
    assert!(pending.may_have_reached_server && pending.attempts == 1);
    assert!(pending.needs_attention.is_none());

    // With credentials, the resume gets the server's replay: executed once.
    let client = builder(journal)
        .resume_credentials(|_: &PendingOperation| async { bearer("sk_original") })
        .build()
        .unwrap();
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.completed, ["op-5"], "{report:?}");
    assert_eq!(server.executions(), 1);
    assert!(server.duplicates().is_empty());
}

#[tokio::test]
async fn the_token_sent_at_a_resume_is_the_providers_latest() {
    let server = MockServer::builder()
        .scope_header("x-account")
        .log_credentials(true)
        .start()
        .await
        .unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let provider = asked.clone();
    let client = builder(MemoryJournal::new())
        .resume_credentials(move |_: &PendingOperation| {
            let n = provider.fetch_add(1, Ordering::SeqCst) + 1;
            async move { bearer(&format!("sk_rotated_{n}")) }
        })
        .build()
        .unwrap();
    shipped_but_answer_lost(&client, &server, "op-7").await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "not asked for a fresh send"
    );
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    client.resume_pending().await.unwrap();
    client.resume_pending().await.unwrap();
    let tokens: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        tokens,
        [
            "Bearer sk_original",
            "Bearer sk_rotated_1",
            "Bearer sk_rotated_2"
        ]
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "asked afresh for each resume"
    );
    assert_eq!(server.executions(), 1);
    assert!(server.duplicates().is_empty());
}

/// A carrier API behind a bearer token: `Bearer good` creates the shipment, anything
/// else is refused with 401.
async fn carrier() -> MockServer {
    MockServer::builder()
        .route(
            Route::post("/v1/shipments")
                .name("create")
                .when("header.authorization", "Bearer good")
                .status(201)
                .id_prefix("shp_")
                .body(r#"{"id": "{{id}}"}"#),
        )
        .route(
            Route::post("/v1/shipments")
                .name("refused")
                .status(401)
                .store(false)
                .body(r#"{"error": "invalid_token"}"#),
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_resumed_401_is_not_the_outcome_the_operation_needs_attention_with_it() {
    let server = carrier().await;
    let url = format!("{}/v1/shipments", server.uri());
    let journal = MemoryJournal::new();
    let token = Arc::new(std::sync::Mutex::new("expired"));
    let current = token.clone();
    let client = builder(journal.clone())
        .resume_credentials(move |_: &PendingOperation| {
            let token = *current.lock().unwrap();
            async move { bearer(token) }
        })
        .build()
        .unwrap();
    server.inject(Fault::DropAfterProcessing, 1);
    let send = || {
        client
            .post_idempotent(&url)
            .operation_id("ship-1")
            .json(&json!({"order": 1}))
    };
    send().bearer_auth("good").send().await.unwrap_err();
    server.expect("create", 1).unwrap();

    // The resume goes out with an expired token: 401, which says nothing about the
    // shipment the first attempt created.
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.needs_attention, ["ship-1"], "{report:?}");
    assert!(report.completed.is_empty());
    let [pending] = &client.pending().await.unwrap()[..] else {
        panic!("listed");
    };
    assert!(pending.needs_attention.is_some());
    assert_eq!(pending.last_status, Some(401));
    let answer = client.recorded_answer("ship-1").await.unwrap().unwrap();
    assert_eq!(answer.status, 401);
    assert!(
        format!("{answer:?}").contains("\"content-type\""),
        "{answer:?}"
    );

    // A later send with the id: no I/O, may have executed, the answer attached.
    let requests = server.requests().len();
    let err = send().bearer_auth("good").send().await.unwrap_err();
    assert!(matches!(err, Error::NeedsAttention { .. }), "{err:?}");
    assert!(err.may_have_executed());
    assert_eq!(err.last_response().map(|r| r.status().as_u16()), Some(401));
    assert_eq!(server.requests().len(), requests);

    // The operator fixes the credential and re-sends: the same key gets the shipment.
    *token.lock().unwrap() = "good";
    assert!(
        journal
            .resolve("ship-1", &Resolution::Resend)
            .await
            .unwrap()
    );
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.completed, ["ship-1"], "{report:?}");
    let resp = send().bearer_auth("good").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    server.expect("create", 1).unwrap();
    assert!(server.duplicates().is_empty());
}

/// A classifier that calls a 404 an answer about the caller (a wrong base URL).
fn not_found_is_unresolved(attempt: &idempotent_retry::Attempt<'_>) -> idempotent_retry::Decision {
    match attempt.status() {
        Some(http::StatusCode::NOT_FOUND) => idempotent_retry::Decision::Unresolved,
        _ => idempotent_retry::default_classifier(attempt),
    }
}

#[tokio::test]
async fn a_classifier_can_call_an_answer_unresolved() {
    let server = MockServer::builder()
        .route(Route::post("/v1/orders").status(404))
        .start()
        .await
        .unwrap();
    let client = builder(MemoryJournal::new())
        .classifier(not_found_is_unresolved)
        .build()
        .unwrap();
    let err = client
        .post_idempotent(format!("{}/v1/orders", server.uri()))
        .operation_id("order-404")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NeedsAttention { .. }), "{err:?}");
    assert!(err.may_have_executed());
    assert_eq!(err.last_response().map(|r| r.status().as_u16()), Some(404));
    let pending = client.pending().await.unwrap();
    assert_eq!(pending[0].last_status, Some(404));

    // Without a journal: an error keeping the answer, not an `Ok(404)`.
    let plain = support::fast_builder()
        .classifier(not_found_is_unresolved)
        .build()
        .unwrap();
    let err = plain
        .post_idempotent(format!("{}/v1/orders", server.uri()))
        .json(&json!({"n": 2}))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.give_up_reason(),
        Some(idempotent_retry::GiveUpReason::Unresolved)
    );
    assert!(err.may_have_executed());
    assert_eq!(err.last_response().map(|r| r.status().as_u16()), Some(404));
}

#[tokio::test]
async fn resend_reopens_an_operation_completed_with_a_404_under_the_same_key() {
    // A wrong base path in a bad deploy: 404 until the deploy is fixed, from a layer
    // in front of the API's idempotency store (nothing is stored for the key).
    let fixed = Arc::new(AtomicBool::new(false));
    let live = fixed.clone();
    let server = MockServer::builder()
        .route(
            Route::post("/v1/orders")
                .store(false)
                .handler(move |request| {
                    if live.load(Ordering::SeqCst) {
                        MockResponse::json(201, &json!({"id": request.id}))
                    } else {
                        MockResponse::json(404, &json!({"error": "no such route"}))
                    }
                }),
        )
        .start()
        .await
        .unwrap();
    let url = format!("{}/v1/orders", server.uri());
    let journal = MemoryJournal::new();
    let client = builder(journal.clone()).build().unwrap();
    let send = || {
        client
            .post_idempotent(&url)
            .operation_id("order-9")
            .json(&json!({"n": 9}))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 404);
    let again = send().await.unwrap();
    assert_eq!((again.status().as_u16(), again.attempts()), (404, 0));

    fixed.store(true, Ordering::SeqCst);
    assert!(
        journal
            .resolve("order-9", &Resolution::Resend)
            .await
            .unwrap()
    );
    let resent = send().await.unwrap();
    assert_eq!((resent.status().as_u16(), resent.attempts()), (201, 1));
    assert_eq!(resent.idempotency_key(), first.idempotency_key());
    let keys: Vec<Option<String>> = server.requests().iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the same key");
    // A 2xx completion is final for good.
    assert!(
        !journal
            .resolve("order-9", &Resolution::Resend)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn an_attempt_cut_off_mid_flight_is_counted_in_pending() {
    let server = MockServer::start().await;
    server.inject(Fault::DelayAfterProcessing(Duration::from_millis(400)), 1);
    let client = builder(MemoryJournal::new()).build().unwrap();
    // The process stops while the first attempt is in flight (a timeout wrapper here,
    // a SIGKILL in production): nothing after the attempt's start is written.
    let cut = tokio::time::timeout(
        Duration::from_millis(150),
        client
            .post_idempotent(format!("{}/v1/charges", server.uri()))
            .operation_id("op-cut")
            .json(&json!({"amount": 1}))
            .send(),
    )
    .await;
    assert!(cut.is_err(), "cut off");
    let [pending] = &client.pending().await.unwrap()[..] else {
        panic!("listed");
    };
    assert_eq!(pending.attempts, 1, "{pending:?}");
    assert!(pending.may_have_reached_server);
}

#[tokio::test]
async fn an_operation_no_attempt_of_which_left_is_withdrawn_and_never_resumed() {
    // Every connection refused: nothing reached a server, and the error says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/charges", closed.local_addr().unwrap());
    drop(closed);
    let journal = MemoryJournal::new();
    let client = support::fast_builder()
        .retry_policy(support::fast_policy().max_attempts(2))
        .attempt_timeout(Duration::from_millis(500))
        .journal(journal.clone())
        .build()
        .unwrap();
    let err = client
        .post_idempotent(&url)
        .operation_id("order-refused")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap_err();
    assert!(!err.may_have_executed(), "{err}");
    // True for good: no record is left for a resume to send.
    assert!(journal.find("order-refused").await.unwrap().is_none());
    let report = client.resume_pending().await.unwrap();
    assert!(report.completed.is_empty() && report.still_pending.is_empty());
}

#[tokio::test]
async fn a_hedge_starts_only_while_the_lease_covers_it() {
    let hedges = |lease: Duration| async move {
        let server = MockServer::start().await;
        // The first attempt's answer comes late: a hedge is due at 50 ms.
        server.inject(Fault::DelayAfterProcessing(Duration::from_millis(250)), 1);
        let client = support::fast_builder()
            .retry_policy(support::fast_policy().max_attempts(1))
            .attempt_timeout(Duration::from_millis(150))
            .hedging(Hedging::after(Duration::from_millis(50)).keyed_methods(true))
            .journal(MemoryJournal::new().lease_duration(lease))
            .build()
            .unwrap();
        let result = client
            .post_idempotent(format!("{}/v1/charges", server.uri()))
            .operation_id("hedged")
            .json(&json!({"amount": 1}))
            .send()
            .await;
        let hedges = match &result {
            Ok(resp) => resp.hedges(),
            Err(_) => u32::try_from(server.requests().len()).unwrap() - 1,
        };
        assert!(server.duplicates().is_empty());
        hedges
    };
    // The attempt (150 ms) and the 1 s margin fit a 1.2 s lease from its renewal; a
    // hedge 50 ms later, with its own 150 ms, would end past it: no hedge.
    assert_eq!(hedges(Duration::from_millis(1_200)).await, 0);
    // With room, the same operation hedges.
    assert_eq!(hedges(Duration::from_secs(30)).await, 1);
}

#[tokio::test]
async fn a_hedges_409_is_never_the_recorded_answer_even_when_a_classifier_calls_409_final() {
    // Every operation takes 300 ms inside the server: the hedge finds the key in flight.
    let server = MockServer::builder()
        .processing_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let journal = MemoryJournal::new();
    let client = builder(journal.clone())
        .hedging(Hedging::after(Duration::from_millis(50)).keyed_methods(true))
        .classifier(|attempt| match attempt.status() {
            Some(http::StatusCode::CONFLICT) => idempotent_retry::Decision::Final,
            _ => idempotent_retry::default_classifier(attempt),
        })
        .build()
        .unwrap();
    let resp = client
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .operation_id("hedged-409")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "the first attempt's answer, not the 409"
    );
    assert_eq!(server.conflicts(), 1, "the hedge was answered 409");
    let recorded = client.recorded_answer("hedged-409").await.unwrap().unwrap();
    assert_eq!(recorded.status, 201);
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn another_accounts_request_under_a_recorded_id_is_refused_before_io() {
    let server = MockServer::start().await;
    let client = builder(MemoryJournal::new())
        .scope_header("x-tenant")
        .build()
        .unwrap();
    let url = format!("{}/v1/charges", server.uri());
    let send = |account: &str, tenant: &str| {
        client
            .post_idempotent(&url)
            .operation_id("charge-1")
            .header("stripe-account", account)
            .header("x-tenant", tenant)
            .json(&json!({"amount": 20.0}))
            .send()
    };
    send("acct_1", "t1").await.unwrap();
    for (account, tenant) in [("acct_2", "t1"), ("acct_1", "t2")] {
        let err = send(account, tenant).await.unwrap_err();
        assert!(matches!(err, Error::OperationMismatch { .. }), "{err:?}");
    }
    // An amount that only reads the same as a float is another amount.
    let err = client
        .post_idempotent(&url)
        .operation_id("charge-1")
        .header("stripe-account", "acct_1")
        .header("x-tenant", "t1")
        .header("content-type", "application/json")
        .body(r#"{"amount": 19.999999999999999}"#)
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OperationMismatch { .. }), "{err:?}");
    assert_eq!(server.requests().len(), 1, "nothing sent after the first");
    assert_eq!(
        send("acct_1", "t1").await.unwrap().attempts(),
        0,
        "the record"
    );
}

#[tokio::test]
async fn rounds_that_send_nothing_do_not_count_toward_max_resumes() {
    let server = MockServer::start().await;
    let url = format!("{}/v1/shipments", server.uri());
    let client = builder(MemoryJournal::new().max_resumes(2))
        .resume_credentials(|_: &PendingOperation| async { bearer("sk_original") })
        .build()
        .unwrap();
    shipped_but_answer_lost(&client, &server, "op-outage").await;
    // A long outage: the circuit is open through many resume rounds.
    client.open_circuit(&url).unwrap();
    for _ in 0..5 {
        let report = client.resume_pending().await.unwrap();
        assert_eq!(report.still_pending.len(), 1, "{report:?}");
        assert!(report.needs_attention.is_empty(), "{report:?}");
    }
    client.close_circuit(&url).unwrap();
    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.completed, ["op-outage"], "{report:?}");
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn extreme_durations_are_errors_or_waits_never_panics() {
    // A server's absurd Retry-After, after an attempt that may have executed: the
    // operation stays pending with a wait that never ends, and send() returns.
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            wiremock::ResponseTemplate::new(429).insert_header("retry-after", "99999999999999999"),
        )
        .mount(&server)
        .await;
    let journal = MemoryJournal::new();
    let client = support::fast_builder()
        .retry_policy(support::fast_policy().max_attempts(3))
        .attempt_timeout(Duration::from_millis(500))
        .journal(journal.clone())
        .build()
        .unwrap();
    let err = client
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .operation_id("huge-wait")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap_err();
    assert!(err.may_have_executed(), "{err}");
    let entry = journal.find("huge-wait").await.unwrap().unwrap();
    assert!(
        entry
            .not_before
            .is_some_and(|w| w > Duration::from_secs(365 * 24 * 3600))
    );

    // A timeout too long to add a margin to: build() says so.
    let built = support::fast_builder()
        .attempt_timeout(Duration::MAX)
        .journal(MemoryJournal::new())
        .build();
    assert!(matches!(built, Err(Error::InvalidConfig { .. })));

    // A request's own timeout as long: refused before any I/O.
    let err = client
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .operation_id("huge-timeout")
        .timeout(Duration::MAX)
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
}

#[tokio::test]
async fn an_open_circuits_break_is_recorded_as_a_wait_for_every_worker() {
    let server = MockServer::start().await;
    let url = format!("{}/v1/shipments", server.uri());
    let journal = MemoryJournal::new();
    let client = builder(journal.clone())
        .circuit_breaker(
            idempotent_retry::CircuitBreaker::new()
                .minimum_throughput(2)
                .failure_ratio(0.5)
                .break_duration(Duration::from_secs(5)),
        )
        .resume_credentials(|_: &PendingOperation| async { bearer("sk_original") })
        .build()
        .unwrap();
    shipped_but_answer_lost(&client, &server, "op-break").await;
    // A second failure opens the circuit for 5 s.
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    client
        .post_idempotent(&url)
        .bearer_auth("sk_original")
        .json(&json!({"other": 1}))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        client.circuit_state(&url).unwrap(),
        idempotent_retry::CircuitState::Open
    );
    // The resume is refused at the circuit, and its record now says "not before" the
    // end of the break, which another worker (with its own, closed circuit) honours.
    let report = client.resume_pending().await.unwrap();
    assert!(report.still_pending[0].1.is_circuit_open(), "{report:?}");
    let entry = journal.find("op-break").await.unwrap().unwrap();
    assert!(
        entry
            .not_before
            .is_some_and(|w| w > Duration::from_secs(3) && w <= Duration::from_secs(5)),
        "{:?}",
        entry.not_before
    );
    let other_worker = builder(journal)
        .resume_credentials(|_: &PendingOperation| async { bearer("sk_original") })
        .build()
        .unwrap();
    let sent = server.requests().len();
    let report = other_worker.resume_pending().await.unwrap();
    let err = &report.still_pending[0].1;
    assert_eq!(
        err.give_up_reason(),
        Some(idempotent_retry::GiveUpReason::NotYet),
        "{err}"
    );
    assert_eq!(server.requests().len(), sent, "nothing sent");
}

#[tokio::test]
async fn a_flagged_sensitive_header_and_an_answers_set_cookie_are_never_stored() {
    let server = MockServer::builder()
        .route(
            Route::post("/v1/sessions")
                .status(201)
                .header("set-cookie", "session=s3cr3t; HttpOnly")
                .body(r#"{"id": "{{id}}"}"#),
        )
        .start()
        .await
        .unwrap();
    let journal = MemoryJournal::new();
    let client = builder(journal.clone()).build().unwrap();
    let mut signature = http::HeaderValue::from_static("sig_abc");
    signature.set_sensitive(true);
    let resp = client
        .post_idempotent(format!("{}/v1/sessions", server.uri()))
        .operation_id("session-1")
        .header("x-signature", signature)
        .header("x-trace", "kept")
        .json(&json!({"user": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["set-cookie"], "session=s3cr3t; HttpOnly");
    let entry = journal.find("session-1").await.unwrap().unwrap();
    let names: Vec<&str> = entry
        .request
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(names.contains(&"x-trace"), "{names:?}");
    assert!(!names.contains(&"x-signature"), "{names:?}");
    assert_eq!(entry.request.secret_headers, ["x-signature"]);
    let answer = client.recorded_answer("session-1").await.unwrap().unwrap();
    assert!(
        answer.headers.iter().all(|(n, _)| n != "set-cookie"),
        "{answer:?}"
    );
    assert!(answer.headers.iter().any(|(n, _)| n == "content-type"));
}

/// A cipher that opens only what it sealed.
struct Marked;

impl idempotent_retry::journal::BodySeal for Marked {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        [b"SEALED:".as_slice(), plain].concat()
    }
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        sealed
            .strip_prefix(b"SEALED:")
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "not sealed here".to_owned())
    }
}

#[tokio::test]
async fn one_record_that_does_not_open_holds_up_no_other_resume() {
    let server = MockServer::start().await;
    let url = format!("{}/v1/charges", server.uri());
    let journal = MemoryJournal::new();
    let client = builder(journal.clone())
        .seal_bodies(Marked)
        .build()
        .unwrap();
    // One operation the client recorded (sealed), left pending by a 503.
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    client
        .post_idempotent(&url)
        .operation_id("good")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap_err();
    // And one written by something else, whose body this client's seal cannot open.
    let other = builder(journal.clone()).build().unwrap();
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    other
        .post_idempotent(&url)
        .operation_id("unreadable")
        .json(&json!({"amount": 2}))
        .send()
        .await
        .unwrap_err();

    let report = client.resume_pending().await.unwrap();
    assert_eq!(report.completed, ["good"], "{report:?}");
    assert_eq!(report.needs_attention, ["unreadable"], "{report:?}");
    assert_eq!(server.executions(), 1, "the unreadable one was not sent");
}

/// A journal that gauges a resume: how many leases are held at once, and it holds the
/// attempts that start until `gate` of them are in flight together (so a resume that
/// sent one at a time would wait here forever).
struct Gauged {
    inner: MemoryJournal,
    held: AtomicUsize,
    /// The most leases held at once, shared with the test.
    most: Arc<AtomicUsize>,
    gate: tokio::sync::Barrier,
}

impl Gauged {
    fn let_go(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

mod gauged {
    use super::*;
    use idempotent_retry::journal::{
        Claimed, Inserted, JournalEntry, JournalFuture, Lease, RecordedAnswer, RecordedRequest,
        Release,
    };

    impl Journal for Gauged {
        fn find<'a>(&'a self, id: &'a str) -> JournalFuture<'a, Option<JournalEntry>> {
            self.inner.find(id)
        }
        fn insert<'a>(
            &'a self,
            id: &'a str,
            request: &'a RecordedRequest,
            holder: &'a str,
            lease: Duration,
        ) -> JournalFuture<'a, Inserted> {
            self.inner.insert(id, request, holder, lease)
        }
        fn claim<'a>(
            &'a self,
            id: &'a str,
            holder: &'a str,
            lease: Duration,
        ) -> JournalFuture<'a, Claimed> {
            Box::pin(async move {
                let claimed = self.inner.claim(id, holder, lease).await?;
                if let Claimed::Lease(_) = claimed {
                    let held = self.held.fetch_add(1, Ordering::SeqCst) + 1;
                    self.most.fetch_max(held, Ordering::SeqCst);
                }
                Ok(claimed)
            })
        }
        fn start_attempt<'a>(
            &'a self,
            lease: &'a Lease,
            duration: Duration,
        ) -> JournalFuture<'a, ()> {
            Box::pin(async move {
                self.inner.start_attempt(lease, duration).await?;
                self.gate.wait().await;
                Ok(())
            })
        }
        fn withdraw<'a>(&'a self, lease: &'a Lease) -> JournalFuture<'a, ()> {
            self.let_go();
            self.inner.withdraw(lease)
        }
        fn complete<'a>(
            &'a self,
            lease: &'a Lease,
            answer: &'a RecordedAnswer,
        ) -> JournalFuture<'a, ()> {
            self.let_go();
            self.inner.complete(lease, answer)
        }
        fn release<'a>(&'a self, lease: &'a Lease, release: &'a Release) -> JournalFuture<'a, ()> {
            self.let_go();
            self.inner.release(lease, release)
        }
        fn pending(&self) -> JournalFuture<'_, Vec<JournalEntry>> {
            self.inner.pending()
        }
        fn resolve<'a>(
            &'a self,
            id: &'a str,
            resolution: &'a Resolution,
        ) -> JournalFuture<'a, bool> {
            self.inner.resolve(id, resolution)
        }
        fn cancel<'a>(&'a self, id: &'a str) -> JournalFuture<'a, bool> {
            self.inner.cancel(id)
        }
        fn housekeep(&self) -> JournalFuture<'_, u64> {
            self.inner.housekeep()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_pending_sends_up_to_its_concurrency_at_once_each_under_its_lease() {
    let server = MockServer::start().await;
    let journal = MemoryJournal::new();
    let first = builder(journal.clone()).build().unwrap();
    server.inject(Fault::DropAfterProcessing, 20);
    for n in 0..20 {
        let lost = first
            .post_idempotent(format!("{}/orders", server.uri()))
            .operation_id(format!("op-{n:02}"))
            .json(&json!({ "n": n }))
            .send()
            .await;
        assert!(lost.is_err());
    }
    assert_eq!(server.executions(), 20);

    let most = Arc::new(AtomicUsize::new(0));
    let gauged = Gauged {
        inner: journal,
        held: AtomicUsize::new(0),
        most: most.clone(),
        gate: tokio::sync::Barrier::new(4),
    };
    let client = builder(gauged).resume_concurrency(4).build().unwrap();
    // Four at a time pass the gate together; one at a time would wait there forever.
    let report = tokio::time::timeout(Duration::from_secs(20), client.resume_pending())
        .await
        .expect("a resume that sends one at a time never passes the gate")
        .unwrap();
    assert_eq!(report.completed.len(), 20, "{report:?}");
    assert_eq!(most.load(Ordering::SeqCst), 4, "never more than 4 leases");
    assert_eq!(server.executions(), 20, "each resumed once, replayed");
    assert!(server.duplicates().is_empty());

    let refused = builder(MemoryJournal::new()).resume_concurrency(0).build();
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("resume_concurrency")
    );
}
