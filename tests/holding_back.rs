//! Holding back per origin over real sockets, against the bundled mock server. The
//! circuit breaker: a sick origin trips it and is refused before any I/O while a healthy
//! one is not, a refusal tells truthfully whether the operation may have executed,
//! manual circuits work without a breaker, and a cancelled probe does not wedge a
//! circuit. The adaptive rate limiter: off until a throttle, then a turn too far off is
//! refused before any I/O. `origin_stats` counts both.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::time::Duration;

use http::StatusCode;
use idempotent_retry::{
    AdaptiveRateLimit, CircuitBreaker, CircuitState, Error, IdempotencyKey, IdempotentClient,
};
use idempotent_retry_mock::{Fault, MockServer};
use serde_json::json;
use support::{fast_builder, fast_policy};

/// A breaker that opens after four outcomes, half of them failures, for a minute.
fn breaker() -> CircuitBreaker {
    CircuitBreaker::new()
        .failure_ratio(0.5)
        .minimum_throughput(4)
        .break_duration(Duration::from_secs(60))
        .max_break_duration(Duration::from_secs(60))
}

fn client(breaker: CircuitBreaker, attempts: u32) -> IdempotentClient {
    fast_builder()
        .retry_policy(fast_policy().max_attempts(attempts))
        .circuit_breaker(breaker)
        .build()
        .unwrap()
}

/// Waits, bounded (2 s), until the break of `url`'s circuit has ended.
async fn half_open(client: &IdempotentClient, url: &str) {
    let mut polls = 0;
    while client.circuit_state(url).unwrap() != CircuitState::HalfOpen {
        polls += 1;
        assert!(polls < 400, "the break never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One order to `server`: the whole answer.
async fn order(
    client: &IdempotentClient,
    server: &MockServer,
) -> Result<idempotent_retry::IdempotentResponse, Error> {
    client
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&json!({"sku": "tea"}))
        .send()
        .await
}

/// One order to `server`: its status.
async fn send(client: &IdempotentClient, server: &MockServer) -> Result<u16, Error> {
    order(client, server).await.map(|r| r.status().as_u16())
}

#[tokio::test]
async fn a_sick_origin_is_refused_before_any_io_and_a_healthy_one_is_not() {
    let sick = MockServer::start().await;
    let healthy = MockServer::start().await;
    sick.inject(
        Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
        1_000,
    );
    let client = client(breaker(), 2);

    // Two operations of two attempts each: four failures, and the circuit opens.
    for _ in 0..2 {
        let err = send(&client, &sick).await.unwrap_err();
        assert_eq!(err.attempts(), 2, "{err}");
        assert!(!err.is_circuit_open());
    }
    let sick_url = sick.uri();
    assert_eq!(client.circuit_state(&sick_url).unwrap(), CircuitState::Open);
    let seen = sick.requests().len();

    // A fresh key, refused: nothing sent, so it did not execute.
    let err = send(&client, &sick).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(err.attempts(), 0);
    assert!(!err.is_outcome_unknown());
    assert!(!err.may_have_executed(), "{err}");
    assert_eq!(sick.requests().len(), seen, "no request reached the server");

    // The caller's own key, refused: an earlier call may have sent it.
    let key = IdempotencyKey::parse("order-17").unwrap();
    let err = client
        .post_idempotent(format!("{sick_url}/orders"))
        .idempotency_key(key)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_circuit_open());
    assert!(err.is_outcome_unknown() && err.may_have_executed(), "{err}");
    assert_eq!(sick.requests().len(), seen);

    let stats = client.origin_stats(&sick_url).unwrap();
    assert_eq!(stats.circuit, CircuitState::Open);
    assert_eq!(stats.refused_circuit_open, 2);

    // The healthy origin, through the same client, is not held back.
    assert_eq!(send(&client, &healthy).await.unwrap(), 201);
    let mut expected = vec![
        (healthy.uri(), CircuitState::Closed),
        (sick.uri(), CircuitState::Open),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(client.circuits(), expected);
}

#[tokio::test]
async fn a_retry_refused_after_an_attempt_that_executed_is_outcome_unknown() {
    let server = MockServer::start().await;
    // Every request executes, then answers 500: a failure that may have executed.
    server.inject(
        Fault::StatusAfterProcessing(StatusCode::INTERNAL_SERVER_ERROR),
        1_000,
    );
    let client = client(breaker().minimum_throughput(2), 5);
    let err = send(&client, &server).await.unwrap_err();
    // Two failures opened the circuit; the third attempt was refused.
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(err.attempts(), 2);
    assert!(err.is_outcome_unknown(), "the first two attempts executed");
    assert_eq!(server.executions(), 1, "one key, one execution");
}

#[tokio::test]
async fn circuits_opened_by_hand_work_without_a_breaker_and_reading_makes_none() {
    let server = MockServer::start().await;
    let client = fast_builder().build().unwrap();
    let url = server.uri();
    assert_eq!(client.circuit_state(&url).unwrap(), CircuitState::Closed);
    assert!(client.circuits().is_empty(), "reading made no circuit");

    client.open_circuit(&url).unwrap();
    let err = send(&client, &server).await.unwrap_err();
    assert!(err.is_circuit_open() && !err.may_have_executed(), "{err}");
    assert!(server.requests().is_empty());
    assert_eq!(client.circuits(), [(url.clone(), CircuitState::Open)]);

    client.close_circuit(&url).unwrap();
    assert_eq!(send(&client, &server).await.unwrap(), 201);

    let err = client.circuit_state("not a url").unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn a_cancelled_half_open_probe_does_not_wedge_the_circuit() {
    let server = MockServer::start().await;
    let breaker = breaker()
        .minimum_throughput(2)
        .break_duration(Duration::from_millis(30))
        .half_open_probes(1);
    let client = client(breaker, 2);
    server.inject(
        Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
        2,
    );
    send(&client, &server).await.unwrap_err();
    let url = server.uri();
    assert_eq!(client.circuit_state(&url).unwrap(), CircuitState::Open);

    // The break ends 30 ms after the opening.
    half_open(&client, &url).await;

    // The probe stalls; its caller gives up and drops it.
    server.inject(Fault::DelayBeforeProcessing(Duration::from_secs(5)), 1);
    let probe = send(&client, &server);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), probe)
            .await
            .is_err()
    );

    // Its slot came back: the next operation is the probe, succeeds and closes it.
    assert_eq!(send(&client, &server).await.unwrap(), 201);
    assert_eq!(client.circuit_state(&url).unwrap(), CircuitState::Closed);
}

#[test]
fn settings_out_of_range_fail_the_build_naming_the_field() {
    let err = IdempotentClient::builder()
        .circuit_breaker(CircuitBreaker::new().failure_ratio(0.0))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    assert!(
        err.to_string().contains("circuit_breaker.failure_ratio"),
        "{err}"
    );
}

#[tokio::test]
async fn the_rate_limiter_is_off_until_a_throttle_then_refuses_a_turn_too_far_off() {
    let throttling = MockServer::start().await;
    let other = MockServer::start().await;
    let client = fast_builder()
        .retry_policy(fast_policy().max_attempts(1))
        .adaptive_rate_limit(AdaptiveRateLimit::new().max_wait(Duration::ZERO))
        .build()
        .unwrap();

    // Off: a burst goes through at once, however fast.
    for _ in 0..20 {
        assert_eq!(send(&client, &throttling).await.unwrap(), 201);
    }
    let url = throttling.uri();
    assert_eq!(client.origin_stats(&url).unwrap().rate_limit, None);

    // A 429 turns it on, at 70 % of the rate the client was sending (measured over
    // the burst), well above the 0.5 floor.
    throttling.inject(
        Fault::RateLimited {
            retry_after: Duration::from_secs(1),
        },
        1,
    );
    let err = send(&client, &throttling).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let rate = client.origin_stats(&url).unwrap().rate_limit.expect("on");
    assert!(rate > 1.0 && rate < 1_000.0, "{rate}");

    // The bucket starts empty: the next turn is 1/rate away, past a max_wait of zero.
    let seen = throttling.requests().len();
    let err = send(&client, &throttling).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert_eq!(err.attempts(), 0);
    assert!(!err.may_have_executed(), "a fresh key, never sent");
    assert_eq!(throttling.requests().len(), seen);
    assert_eq!(client.origin_stats(&url).unwrap().refused_rate_limited, 1);

    // Another origin is not paced.
    assert_eq!(send(&client, &other).await.unwrap(), 201);
    assert_eq!(client.origin_stats(&other.uri()).unwrap().rate_limit, None);
}

#[tokio::test]
async fn the_breaker_opens_in_an_outage_and_a_probe_closes_it_after() {
    use idempotent_retry_mock::Outage;
    let server = MockServer::start().await;
    let url = server.uri();
    let client = client(breaker().break_duration(Duration::from_millis(30)), 2);
    server.outage(Outage::Drop, Duration::from_secs(60));
    for _ in 0..2 {
        assert!(
            send(&client, &server)
                .await
                .unwrap_err()
                .is_outcome_unknown()
        );
    }
    assert_eq!(client.circuit_state(&url).unwrap(), CircuitState::Open);
    let during = server.requests().len();
    assert!(send(&client, &server).await.unwrap_err().is_circuit_open());
    assert_eq!(server.requests().len(), during, "refused before any I/O");

    server.outage(Outage::Drop, Duration::ZERO);
    half_open(&client, &url).await;
    assert_eq!(send(&client, &server).await.unwrap(), 201);
    assert_eq!(client.circuit_state(&url).unwrap(), CircuitState::Closed);
}

fn hedging_client(hedging: idempotent_retry::Hedging) -> IdempotentClient {
    fast_builder().hedging(hedging).build().unwrap()
}

fn keyed_hedging() -> idempotent_retry::Hedging {
    idempotent_retry::Hedging::after(Duration::from_millis(50)).keyed_methods(true)
}

#[tokio::test]
async fn a_hedge_wins_over_a_stalled_attempt_and_the_operation_executes_once() {
    let server = MockServer::start().await;
    // The first request stalls before processing; the hedge, 50 ms later, does not.
    server.inject(Fault::DelayBeforeProcessing(Duration::from_secs(3)), 1);
    let client = hedging_client(keyed_hedging());
    let resp = order(&client, &server).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!((resp.attempts(), resp.hedges()), (2, 1));
    let key = resp.idempotency_key().as_str().to_owned();
    assert_eq!(server.executions_for(&key), 1, "one key, one execution");
    let stats = client.origin_stats(&server.uri()).unwrap();
    assert_eq!((stats.hedges_sent, stats.hedges_won), (1, 1));
}

#[tokio::test]
async fn a_hedges_409_is_awaited_never_returned() {
    // Every operation takes 300 ms inside the server: the hedge finds the key in flight.
    let server = MockServer::builder()
        .processing_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let client = hedging_client(keyed_hedging());
    let resp = order(&client, &server).await.unwrap();
    assert_eq!(
        resp.status(),
        201,
        "the first attempt's answer, not the 409"
    );
    assert!(!resp.is_replay());
    assert_eq!((resp.attempts(), resp.hedges()), (2, 1));
    assert_eq!(server.conflicts(), 1, "the hedge was answered 409");
    assert_eq!(server.executions(), 1);
    let stats = client.origin_stats(&server.uri()).unwrap();
    assert_eq!((stats.hedges_sent, stats.hedges_won), (1, 0));
}

#[tokio::test]
async fn post_hedges_only_with_keyed_methods_and_get_hedges_by_default() {
    let server = MockServer::builder()
        .route(idempotent_retry_mock::Route::get("/v1/items").name("items"))
        .route(idempotent_retry_mock::Route::post("/v1/items").status(201))
        .processing_delay(Duration::from_millis(150))
        .start()
        .await
        .unwrap();
    let plain = idempotent_retry::Hedging::after(Duration::from_millis(50));
    let client = hedging_client(plain);
    let url = format!("{}/v1/items", server.uri());
    let resp = client.post_idempotent(&url).send().await.unwrap();
    assert_eq!(
        (resp.attempts(), resp.hedges()),
        (1, 0),
        "POST: not without keyed_methods"
    );

    server
        .inject_route(
            "items",
            Fault::DelayBeforeProcessing(Duration::from_secs(3)),
            1,
        )
        .unwrap();
    let resp = client
        .request_idempotent(http::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!((resp.attempts(), resp.hedges()), (2, 1), "GET hedges");
}

#[test]
fn a_hedge_delay_not_below_the_attempt_timeout_fails_the_build() {
    let err = IdempotentClient::builder()
        .attempt_timeout(Duration::from_secs(1))
        .hedging(idempotent_retry::Hedging::after(Duration::from_secs(1)))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("hedging.delay"), "{err}");
    let err = IdempotentClient::builder()
        .hedging(idempotent_retry::Hedging::after(Duration::from_millis(10)).max_hedges(0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("hedging.max_hedges"), "{err}");
}

#[tokio::test]
async fn no_hedge_after_a_throttling_answer_or_while_the_circuit_is_half_open() {
    // A 429 first (Retry-After 0), then a stalled attempt: the operation already heard
    // "too many", so the stalled retry is not hedged.
    let server = MockServer::start().await;
    server.inject(
        Fault::RateLimited {
            retry_after: Duration::ZERO,
        },
        1,
    );
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(300)), 1);
    let client = hedging_client(keyed_hedging());
    let resp = order(&client, &server).await.unwrap();
    assert_eq!((resp.attempts(), resp.hedges()), (2, 0));

    // A half-open probe is not hedged: the circuit lets one attempt through.
    let server = MockServer::start().await;
    let client = fast_builder()
        .retry_policy(fast_policy().max_attempts(2))
        .circuit_breaker(
            breaker()
                .minimum_throughput(2)
                .break_duration(Duration::from_millis(30)),
        )
        .hedging(keyed_hedging())
        .build()
        .unwrap();
    server.inject(
        Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
        2,
    );
    send(&client, &server).await.unwrap_err();
    let url = server.uri();
    half_open(&client, &url).await;
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(300)), 1);
    let resp = order(&client, &server).await.unwrap();
    assert_eq!(
        (resp.attempts(), resp.hedges()),
        (1, 0),
        "the probe went alone"
    );
    assert_eq!(client.circuit_state(&url).unwrap(), CircuitState::Closed);
}

#[tokio::test]
async fn no_hedge_without_a_rate_limiter_token() {
    let server = MockServer::start().await;
    let client = fast_builder()
        .retry_policy(fast_policy().max_attempts(1))
        .adaptive_rate_limit(AdaptiveRateLimit::new())
        .hedging(keyed_hedging())
        .build()
        .unwrap();
    // A slow first order (600 ms, not hedged) then a 429: the limiter turns on at 70 %
    // of the 1.6 requests per second it measured, about one token every 0.9 s.
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(600)), 1);
    let slow = client
        .post_idempotent(format!("{}/orders", server.uri()))
        .no_hedging()
        .send()
        .await
        .unwrap();
    assert_eq!(slow.attempts(), 1);
    server.inject(
        Fault::RateLimited {
            retry_after: Duration::ZERO,
        },
        1,
    );
    send(&client, &server).await.unwrap_err();
    let rate = client.origin_stats(&server.uri()).unwrap().rate_limit;
    assert!(rate.is_some_and(|r| r < 1.5), "{rate:?}");
    // The next order waits for its token, then stalls 300 ms: the hedge due after
    // 50 ms finds no token (a twentieth of one has come back) and does not start.
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(300)), 1);
    let resp = order(&client, &server).await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!((resp.attempts(), resp.hedges()), (1, 0));
    assert_eq!(server.executions(), 2);
}

#[tokio::test]
async fn a_request_hedges_on_its_own_or_not_at_all() {
    // A client without hedging: one request asks for it, and its hedge wins over a
    // stalled first attempt (through a second pool made at that first hedge).
    let server = MockServer::start().await;
    let client = support::fast_client();
    server.inject(Fault::DelayBeforeProcessing(Duration::from_secs(3)), 1);
    let resp = client
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&json!({"sku": "tea"}))
        .hedging(keyed_hedging())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!((resp.attempts(), resp.hedges()), (2, 1));
    assert_eq!(server.executions(), 1);

    // A client that hedges: one request opts out and waits for its stalled attempt.
    let client = hedging_client(keyed_hedging());
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(200)), 1);
    let resp = client
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&json!({"sku": "tea"}))
        .no_hedging()
        .send()
        .await
        .unwrap();
    assert_eq!((resp.attempts(), resp.hedges()), (1, 0));

    // A request's hedge delay must be below the request's timeout: refused before any
    // I/O, with nothing sent.
    let requests = server.requests().len();
    let err = client
        .post_idempotent(format!("{}/orders", server.uri()))
        .timeout(Duration::from_millis(100))
        .hedging(idempotent_retry::Hedging::after(Duration::from_millis(100)))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert!(err.to_string().contains("the request's timeout"), "{err}");
    assert!(!err.is_outcome_unknown());
    assert_eq!(server.requests().len(), requests);
}

#[tokio::test]
async fn a_hedges_429_while_its_sibling_is_in_flight_still_cuts_the_rate() {
    let server = MockServer::start().await;
    let client = fast_builder()
        .adaptive_rate_limit(AdaptiveRateLimit::new())
        .hedging(keyed_hedging())
        .build()
        .unwrap();
    // The first attempt stalls 300 ms; the hedge is told 429, which is awaited out.
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(300)), 1);
    server.inject(
        Fault::RateLimited {
            retry_after: Duration::ZERO,
        },
        1,
    );
    let resp = order(&client, &server).await.unwrap();
    assert_eq!(resp.status(), 201, "the first attempt's answer");
    assert_eq!((resp.attempts(), resp.hedges()), (2, 1));
    let stats = client.origin_stats(&server.uri()).unwrap();
    assert!(stats.rate_limit.is_some(), "the 429 turned the limiter on");
}
