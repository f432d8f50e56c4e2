//! Transport failures wiremock cannot produce, and the deadline, against a raw scripted
//! HTTP server over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotent_retry::{GiveUpReason, RetryPolicy};
use support::{Action, ScriptedServer, fast_builder, fast_client, fast_policy};

fn assert_same_key(seen: &[support::Seen], expected_len: usize) {
    assert_eq!(seen.len(), expected_len, "{seen:?}");
    let first = seen[0].key.clone().expect("key sent");
    assert!(
        seen.iter()
            .all(|s| s.key.as_deref() == Some(first.as_str())),
        "{seen:?}"
    );
}

#[tokio::test]
async fn reset_mid_response_and_close_without_response_are_retried_with_one_key() {
    let server = ScriptedServer::start(vec![
        Action::ResetMidResponse,
        Action::CloseWithoutResponse,
        Action::Respond(201),
    ])
    .await;
    let resp = fast_client()
        .post_idempotent(server.url("/orders"))
        .json(&serde_json::json!({"sku": "tea"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.attempts(), 3);
    assert_same_key(&server.seen(), 3);
    assert_eq!(resp.text().await.unwrap(), "{\"status\":201}");
}

#[tokio::test]
async fn bodies_in_any_number_of_chunks_arrive_whole() {
    // The client reads the body chunk by chunk: none, one, two and more must all come
    // back exactly as sent.
    let cases: [&'static [&'static str]; 4] = [
        &[],
        &["{\"id\":1}"],
        &["{\"id\":", "2}"],
        &["{\"id\"", ":", "3,\"note\":\"", "four chunks\"}"],
    ];
    for chunks in cases {
        let server = ScriptedServer::start(vec![Action::RespondChunked(chunks)]).await;
        let resp = fast_client()
            .post_idempotent(server.url("/orders"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.attempts(), 1);
        assert_eq!(resp.text().await.unwrap(), chunks.concat(), "{chunks:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_with_the_same_key() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Nothing listens on `addr` now: the first attempt is refused. The server comes up
    // during the first backoff, so the second attempt reaches it.
    let server = Arc::new(Mutex::new(None));
    let slot = server.clone();
    let resp = fast_builder()
        .on_retry(move |attempt, _| {
            assert!(attempt.error().is_some_and(|e| e.is_connect()));
            slot.lock()
                .unwrap()
                .get_or_insert_with(|| ScriptedServer::bind(addr, vec![Action::Respond(201)]));
        })
        .build()
        .unwrap()
        .post_idempotent(format!("http://{addr}/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (201, 2));
    let seen = server.lock().unwrap().as_ref().unwrap().seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].key.as_deref(),
        Some(resp.idempotency_key().as_str())
    );
}

#[tokio::test]
async fn lost_responses_leave_the_outcome_unknown() {
    let server = ScriptedServer::start(vec![Action::ResetMidResponse]).await;
    let err = fast_builder()
        .retry_policy(fast_policy().max_attempts(3))
        .build()
        .unwrap()
        .post_idempotent(server.url("/orders"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert!(
        err.is_outcome_unknown(),
        "the server read the request; it may have executed it"
    );
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::AttemptsExhausted));
    assert_same_key(&server.seen(), 3);
}

#[tokio::test]
async fn no_attempt_starts_after_the_deadline() {
    let server = ScriptedServer::start(vec![Action::Respond(503)]).await;
    let deadline = Duration::from_millis(300);
    let policy = RetryPolicy::exponential()
        .max_attempts(100)
        .initial_delay(Duration::from_millis(40))
        .multiplier(1.0)
        .max_delay(Duration::from_millis(40))
        .jitter(idempotent_retry::Jitter::None)
        .deadline(deadline);
    let started = Instant::now();
    let err = fast_builder()
        .retry_policy(policy)
        .build()
        .unwrap()
        .post_idempotent(server.url("/orders"))
        .send()
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let seen = server.seen();

    assert_eq!(err.give_up_reason(), Some(GiveUpReason::DeadlineExceeded));
    // An attempt started with a few milliseconds left may time out before its request
    // is even written, so the server can see fewer attempts than the client made.
    assert!(seen.len() <= err.attempts() as usize);
    assert!(
        seen.len() >= 2,
        "it did retry within the deadline: {}",
        seen.len()
    );
    assert!(
        err.attempts() <= 8,
        "40 ms apart, at most 8 attempts fit in 300 ms: {}",
        err.attempts()
    );
    // The server records an attempt when it has read the request, which on a loaded
    // 2-core machine can lag the client's start by tens of milliseconds. Without the
    // deadline the run would go on for 100 attempts 40 ms apart (4 s), so a 100 ms
    // allowance still tells the two apart.
    let slack = Duration::from_millis(100);
    for s in &seen {
        let at = s.at - started;
        assert!(
            at < deadline + slack,
            "an attempt arrived {at:?} after the start"
        );
    }
    // It gave up when the next sleep would have crossed the deadline.
    assert!(elapsed < deadline + slack, "{elapsed:?}");
}

#[tokio::test]
async fn the_last_attempt_timeout_shrinks_to_the_deadline() {
    let server =
        ScriptedServer::start(vec![Action::RespondAfter(201, Duration::from_secs(5))]).await;
    let started = Instant::now();
    let err = fast_builder()
        .attempt_timeout(Duration::from_secs(30))
        .retry_policy(fast_policy().deadline(Duration::from_millis(200)))
        .build()
        .unwrap()
        .post_idempotent(server.url("/slow"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        err.is_outcome_unknown(),
        "a timed-out request may still execute"
    );
    assert_eq!(err.attempts(), 1);
    assert_eq!(server.seen().len(), 1);
    // Bounded by the 200 ms deadline, not the 30 s attempt timeout nor the 5 s server.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn timeouts_then_success_return_the_result() {
    let server = ScriptedServer::start(vec![
        Action::RespondAfter(201, Duration::from_secs(5)),
        Action::RespondAfter(201, Duration::from_secs(5)),
        Action::Respond(201),
    ])
    .await;
    let resp = fast_client()
        .post_idempotent(server.url("/orders"))
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (201, 3));
    assert_same_key(&server.seen(), 3);
}

#[tokio::test]
async fn the_client_attempt_timeout_bounds_each_attempt_with_our_reqwest_client_or_yours() {
    // Two ways the timeout reaches reqwest: built into the reqwest client we make (when
    // no per-request timeout or deadline shrinks it), or set on each request (a client
    // you bring). Both must cut a stalled attempt short.
    let clients = [
        ("our reqwest client", fast_builder()),
        (
            "your reqwest client",
            fast_builder().reqwest_client(idempotent_retry::reqwest::Client::new()),
        ),
    ];
    for (which, builder) in clients {
        let server = ScriptedServer::start(vec![
            Action::RespondAfter(201, Duration::from_secs(5)),
            Action::Respond(201),
        ])
        .await;
        let started = Instant::now();
        let resp = builder
            .attempt_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
            .post_idempotent(server.url("/orders"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            (resp.status().as_u16(), resp.attempts()),
            (201, 2),
            "{which}"
        );
        assert_same_key(&server.seen(), 2);
        // Bounded by the 100 ms attempt timeout, not the 5 s the server stalls.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{which}: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn an_answer_past_max_response_bytes_ends_the_operation_unread() {
    // 256 MiB offered, 1 MiB read: chunked (found while reading) and declared (found
    // from content-length, before reading).
    const OFFERED: usize = 256 << 20;
    for declared in [false, true] {
        let server = ScriptedServer::start(vec![Action::StreamBody {
            bytes: OFFERED,
            declared,
        }])
        .await;
        let request = fast_builder()
            .max_response_bytes(1 << 20)
            .build()
            .unwrap()
            .post_idempotent(server.url("/exports"));
        let key = request.key().clone();
        let err = request.send().await.unwrap_err();
        assert!(err.is_response_too_large(), "{err:?}");
        assert_eq!(err.attempts(), 1, "never retried");
        assert_eq!(
            err.status(),
            Some(idempotent_retry::reqwest::StatusCode::OK)
        );
        assert!(err.headers().is_some());
        assert_eq!(err.idempotency_key(), Some(&key));
        assert!(err.is_outcome_unknown() && err.may_have_executed());
        assert_eq!(server.seen().len(), 1);
        // The client stopped reading and closed the connection, so the server cannot
        // have pushed more than what was read plus what loopback's socket buffers hold
        // (a few MiB): memory did not follow the offered 256 MiB.
        let written = server.body_bytes_written();
        assert!(
            written < 32 << 20,
            "{declared}: the server wrote {written} bytes"
        );
    }
}
