//! The client against wiremock over loopback: exact per-attempt scripts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use idempotent_retry::{
    Decision, Error, GiveUpReason, IdempotencyKey, IdempotentClient, KeyFormat, RetryBudget,
    RetryPolicy, default_classifier,
};
use support::{
    assert_one_key, delay_recorder, fast_builder, fast_client, fast_policy, header_received,
    keys_received, server_failing,
};
use wiremock::matchers::{body_json, body_string, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn same_key_on_every_attempt_of_503_503_201() {
    let server = server_failing(ResponseTemplate::new(503), 2).await;
    let resp = fast_client()
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&serde_json::json!({"sku": "tea"}))
        .send()
        .await
        .unwrap();

    assert_eq!(resp.status(), 201);
    assert_eq!(resp.attempts(), 3);
    let key = assert_one_key(&keys_received(&server).await, 3);
    assert_eq!(resp.idempotency_key().as_str(), key);
    let uuid = uuid::Uuid::parse_str(&key).expect("minted keys are UUIDs");
    assert_eq!(uuid.get_version_num(), 4);
    // The body was sent again, identical, on every attempt.
    let bodies: HashSet<Vec<u8>> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies.len(), 1);
    let order: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(order["id"], "ord_1");
}

#[tokio::test]
async fn thousand_operations_get_thousand_distinct_keys() {
    let server = server_failing(ResponseTemplate::new(201), 0).await;
    let client = fast_client();
    let url = format!("{}/orders", server.uri());
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..10 {
        for _ in 0..100 {
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move {
                client
                    .post_idempotent(url)
                    .body("{}")
                    .send()
                    .await
                    .map(|r| r.idempotency_key().clone())
            });
        }
        // Bounded concurrency: finish each batch of 100 before the next.
        while let Some(done) = tasks.join_next().await {
            done.unwrap()
                .unwrap_or_else(|e| panic!("batch {batch}: {e}"));
        }
    }
    let keys = keys_received(&server).await;
    assert_eq!(keys.len(), 1000);
    let distinct: HashSet<_> = keys.into_iter().map(|k| k.expect("key sent")).collect();
    assert_eq!(distinct.len(), 1000);
}

#[tokio::test]
async fn final_statuses_are_sent_once_and_returned_ok() {
    for status in [200, 201, 204, 400, 401, 403, 404, 422] {
        let server = server_failing(ResponseTemplate::new(status), 1).await;
        let resp = fast_client()
            .post_idempotent(server.uri())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{status} should be Ok: {e}"));
        assert_eq!(resp.status(), status);
        assert_eq!(resp.attempts(), 1);
        assert_eq!(
            keys_received(&server).await.len(),
            1,
            "{status} was retried"
        );
    }
}

#[tokio::test]
async fn each_retryable_status_is_retried_with_the_same_key() {
    for status in [408, 409, 429, 500, 502, 503, 504] {
        let server = server_failing(ResponseTemplate::new(status), 1).await;
        let resp = fast_client()
            .post_idempotent(server.uri())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{status}: {e}"));
        assert_eq!(resp.status(), 201, "after {status}");
        assert_eq!(resp.attempts(), 2, "after {status}");
        assert_one_key(&keys_received(&server).await, 2);
    }
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried_with_the_same_key() {
    let slow = ResponseTemplate::new(201).set_delay(Duration::from_millis(2_000));
    let server = server_failing(slow, 1).await;
    let resp = fast_builder()
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.attempts(), 2);
    assert_one_key(&keys_received(&server).await, 2);
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_known_not_executed() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is dropped: nothing listens on `port` any more.
    let (delays, hook) = delay_recorder();
    let err = fast_builder()
        .retry_policy(fast_policy().max_attempts(3))
        .on_retry(hook)
        .build()
        .unwrap()
        .post_idempotent(format!("http://127.0.0.1:{port}/orders"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::AttemptsExhausted));
    assert!(
        !err.is_outcome_unknown(),
        "no byte was sent, so nothing can have executed"
    );
    assert!(matches!(&err, Error::Failed { source: Some(e), .. } if e.is_connect()));
    assert_eq!(*delays.lock().unwrap(), [5, 10].map(Duration::from_millis));
}

#[tokio::test]
async fn retry_after_seconds_replaces_the_backoff_delay() {
    let server = server_failing(
        ResponseTemplate::new(503).insert_header("retry-after", "1"),
        1,
    )
    .await;
    let (delays, hook) = delay_recorder();
    let started = Instant::now();
    let resp = fast_builder()
        .on_retry(hook)
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.attempts(), 2);
    assert_eq!(*delays.lock().unwrap(), [Duration::from_secs(1)]);
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_beyond_the_cap_stops_at_once_and_says_when() {
    let server = server_failing(
        ResponseTemplate::new(429).insert_header("retry-after", "3600"),
        1,
    )
    .await;
    let (delays, hook) = delay_recorder();
    let started = std::time::SystemTime::now();
    let err = fast_builder()
        .retry_policy(fast_policy().max_retry_after(Duration::from_millis(50)))
        .on_retry(hook)
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::RetryAfterTooLong));
    assert_eq!(err.attempts(), 1, "no retry 3,550 s early");
    assert!(delays.lock().unwrap().is_empty(), "no sleep either");
    assert_eq!(keys_received(&server).await.len(), 1);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    let at = err.retry_at().unwrap();
    let from_start = at.duration_since(started).unwrap();
    assert!(
        from_start >= Duration::from_secs(3600) && from_start < Duration::from_secs(3610),
        "{from_start:?}"
    );
}

#[tokio::test]
async fn retry_after_http_date_is_honoured_and_capped() {
    let in_two_s = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    let server = server_failing(
        ResponseTemplate::new(503).insert_header("retry-after", in_two_s.as_str()),
        1,
    )
    .await;
    let (delays, hook) = delay_recorder();
    fast_builder()
        .on_retry(hook)
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    let delay = delays.lock().unwrap()[0];
    // Read against the answer's Date (whole seconds both): 1 or 2 s, never a fraction
    // cut short by our clock, and far from the 5 ms backoff.
    assert!(
        delay == Duration::from_secs(1) || delay == Duration::from_secs(2),
        "{delay:?}"
    );

    let in_an_hour =
        httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let server = server_failing(
        ResponseTemplate::new(503).insert_header("retry-after", in_an_hour.as_str()),
        1,
    )
    .await;
    let err = fast_builder()
        .retry_policy(fast_policy().max_retry_after(Duration::from_millis(80)))
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::RetryAfterTooLong));
    let wait = err.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600),
        "{wait:?}"
    );
}

#[tokio::test]
async fn unusable_retry_after_falls_back_to_backoff() {
    for value in ["soon", "-5", "1.5", "Sun, 06 Nov 1994 08:49:37 GMT"] {
        let server = server_failing(
            ResponseTemplate::new(503).insert_header("retry-after", value),
            1,
        )
        .await;
        let (delays, hook) = delay_recorder();
        fast_builder()
            .on_retry(hook)
            .build()
            .unwrap()
            .post_idempotent(server.uri())
            .send()
            .await
            .unwrap();
        // A date in the past asks for no extra wait: the backoff alone, as for garbage.
        assert_eq!(
            *delays.lock().unwrap(),
            [Duration::from_millis(5)],
            "Retry-After: {value}"
        );
    }
}

#[tokio::test]
async fn retry_after_past_the_deadline_stops_at_once() {
    let server = server_failing(
        ResponseTemplate::new(503).insert_header("retry-after", "30"),
        1,
    )
    .await;
    let started = Instant::now();
    let err = fast_builder()
        .retry_policy(
            fast_policy()
                .deadline(Duration::from_secs(2))
                .max_retry_after(Duration::from_secs(60)),
        )
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::DeadlineExceeded));
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.status(), Some(http::StatusCode::SERVICE_UNAVAILABLE));
    // It did not wait for the deadline, let alone the 30 s.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(keys_received(&server).await.len(), 1);
}

#[tokio::test]
async fn the_budget_stops_retries_when_empty_and_refills() {
    let server = MockServer::start().await;
    Mock::given(path("/down"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    Mock::given(path("/up"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let client = fast_builder()
        .retry_policy(fast_policy().max_attempts(10))
        .retry_budget(
            RetryBudget::new()
                .capacity(10)
                .transient_cost(5)
                .success_refund(5),
        )
        .build()
        .unwrap();
    let down = format!("{}/down", server.uri());
    let up = format!("{}/up", server.uri());

    let first = client.post_idempotent(&down).send().await.unwrap_err();
    assert_eq!(first.give_up_reason(), Some(GiveUpReason::BudgetExhausted));
    assert_eq!(first.attempts(), 3, "10 tokens pay for two retries");

    let second = client.post_idempotent(&down).send().await.unwrap_err();
    assert_eq!(second.give_up_reason(), Some(GiveUpReason::BudgetExhausted));
    assert_eq!(second.attempts(), 1, "an empty bucket allows no retry");

    for _ in 0..2 {
        assert_eq!(
            client.post_idempotent(&up).send().await.unwrap().status(),
            201
        );
    }
    let refilled = client.post_idempotent(&down).send().await.unwrap_err();
    assert_eq!(refilled.attempts(), 3, "two successes refilled the bucket");
    assert_eq!(keys_received(&server).await.len(), 3 + 1 + 2 + 3);
}

#[tokio::test]
async fn a_caller_key_is_sent_verbatim_on_every_attempt() {
    let server = server_failing(ResponseTemplate::new(503), 2).await;
    let key = IdempotencyKey::parse("order-42_ABC~!").unwrap();
    let resp = fast_client()
        .post_idempotent(server.uri())
        .idempotency_key(key.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.idempotency_key(), &key);
    assert_eq!(
        assert_one_key(&keys_received(&server).await, 3),
        "order-42_ABC~!"
    );
}

#[tokio::test]
async fn key_header_name_and_structured_form_are_configurable() {
    let server = server_failing(ResponseTemplate::new(502), 1).await;
    let client = fast_builder()
        .key_header("X-Request-Key")
        .key_format(KeyFormat::StructuredString)
        .build()
        .unwrap();
    let key = IdempotencyKey::parse("abc-123").unwrap();
    client
        .post_idempotent(server.uri())
        .idempotency_key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_received(&server, "x-request-key").await,
        vec![Some("\"abc-123\"".to_owned()); 2]
    );
    assert_eq!(keys_received(&server).await, vec![None, None]);
}

#[tokio::test]
async fn bad_requests_are_rejected_before_any_io() {
    let server = server_failing(ResponseTemplate::new(201), 0).await;
    let structured = fast_builder()
        .key_format(KeyFormat::StructuredString)
        .build()
        .unwrap();
    let quoted = IdempotencyKey::parse("has\"quote").unwrap();
    let cases: Vec<(&str, idempotent_retry::IdempotentRequestBuilder)> = vec![
        (
            "unquotable key",
            structured
                .post_idempotent(server.uri())
                .idempotency_key(quoted),
        ),
        (
            "key header by hand",
            fast_client()
                .post_idempotent(server.uri())
                .header("Idempotency-Key", "mine"),
        ),
        (
            "bad header value",
            fast_client()
                .post_idempotent(server.uri())
                .header("x-bad", "line\nbreak"),
        ),
        (
            "bad header name",
            fast_client()
                .post_idempotent(server.uri())
                .header("bad name", "v"),
        ),
        ("bad url", fast_client().post_idempotent("not a url")),
        (
            "invalid policy",
            fast_client()
                .post_idempotent(server.uri())
                .retry_policy(RetryPolicy::none().max_attempts(0)),
        ),
        (
            "zero timeout",
            fast_client()
                .post_idempotent(server.uri())
                .timeout(Duration::ZERO),
        ),
    ];
    for (case, request) in cases {
        let err = request.send().await.expect_err(case);
        assert!(
            matches!(err, Error::InvalidRequest { .. }),
            "{case}: {err:?}"
        );
        assert_eq!(err.attempts(), 0, "{case}");
        assert!(err.idempotency_key().is_some(), "{case}");
        // Nothing was sent; only a key of the caller's may have been sent before.
        let supplied = case == "unquotable key";
        assert_eq!(err.is_outcome_unknown(), supplied, "{case}");
        assert_eq!(err.may_have_executed(), supplied, "{case}");
    }
    for bad in ["", "with space", "tab\t", "caf\u{e9}", &"k".repeat(256)] {
        assert!(
            matches!(bad.parse::<IdempotencyKey>(), Err(Error::InvalidKey { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(
        keys_received(&server).await.len(),
        0,
        "nothing may reach the server"
    );
}

#[tokio::test]
async fn exhaustion_error_carries_key_attempts_and_last_response() {
    let server = server_failing(ResponseTemplate::new(503).set_body_string("down"), 100).await;
    let err = fast_builder()
        .retry_policy(fast_policy().max_attempts(4))
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    let key = assert_one_key(&keys_received(&server).await, 4);
    assert_eq!(err.idempotency_key().unwrap().as_str(), key);
    assert_eq!(err.attempts(), 4);
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::AttemptsExhausted));
    assert!(
        err.is_outcome_unknown(),
        "a 503 may come after the work was done"
    );
    let last = err.last_response().unwrap();
    assert_eq!(last.status(), 503);
    assert_eq!(last.clone().text().await.unwrap(), "down");
    let text = err.to_string();
    assert!(text.contains("4 attempt"), "{text}");
    // The key is read with idempotency_key(), never printed: it stays out of logs.
    assert!(!text.contains(&key), "{text}");
    assert_eq!(err.idempotency_key().unwrap().as_str(), key);
}

#[tokio::test]
async fn only_rate_limits_is_a_known_outcome() {
    let server = server_failing(ResponseTemplate::new(429), 100).await;
    let err = fast_builder()
        .retry_policy(fast_policy().max_attempts(3))
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert!(
        !err.is_outcome_unknown(),
        "429 means the request was not processed"
    );
}

#[tokio::test]
async fn a_final_status_after_retries_ends_the_operation() {
    let server = server_failing(ResponseTemplate::new(500), 1).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400))
        .with_priority(2)
        .mount(&server)
        .await;
    let resp = fast_client()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (400, 2));
}

#[tokio::test]
async fn every_method_carries_a_key() {
    let server = MockServer::start().await;
    Mock::given(header("idempotency-key", "k-method"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_client();
    let key = || IdempotencyKey::parse("k-method").unwrap();
    let url = server.uri();
    for request in [
        client.post_idempotent(&url),
        client.put_idempotent(&url),
        client.patch_idempotent(&url),
        client.delete_idempotent(&url),
        client.request_idempotent(http::Method::GET, &url),
    ] {
        assert_eq!(
            request
                .idempotency_key(key())
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let methods: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, ["POST", "PUT", "PATCH", "DELETE", "GET"]);
}

#[tokio::test]
async fn the_builder_mirrors_reqwest() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/json"))
        .and(query_param("expand", "all"))
        .and(header("authorization", "Bearer tok"))
        .and(header("x-tenant", "acme"))
        .and(body_json(serde_json::json!({"a": 1})))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/form"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("authorization", "Basic dTpw"))
        .and(body_string("amount=10&currency=eur"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let client = fast_client();
    let resp = client
        .post_idempotent(format!("{}/json", server.uri()))
        .query(&[("expand", "all")])
        .bearer_auth("tok")
        .header("x-tenant", "acme")
        .json(&serde_json::json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = client
        .patch_idempotent(format!("{}/form", server.uri()))
        .basic_auth("u", Some("p"))
        .form(&[("amount", "10"), ("currency", "eur")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_custom_classifier_overrides_and_falls_back() {
    let client = fast_builder()
        .classifier(|a| match a.status() {
            Some(s) if s == 404 => Decision::Retry,
            Some(s) if s == 500 => Decision::Final,
            _ => default_classifier(a),
        })
        .build()
        .unwrap();
    for (first, want, why) in [
        (404, (201, 2), "404 retried by the override"),
        (500, (500, 1), "500 made final by the override"),
        (503, (201, 2), "503 left to the default"),
    ] {
        let server = server_failing(ResponseTemplate::new(first), 1).await;
        let resp = client.post_idempotent(server.uri()).send().await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.attempts()), want, "{why}");
    }
}

#[tokio::test]
async fn a_per_request_policy_overrides_the_clients() {
    let server = server_failing(ResponseTemplate::new(503), 100).await;
    let err = fast_client()
        .post_idempotent(server.uri())
        .retry_policy(RetryPolicy::none())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 1);
    assert_eq!(keys_received(&server).await.len(), 1);
}

#[tokio::test]
async fn replays_are_recognised() {
    let server = server_failing(ResponseTemplate::new(502), 1).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).insert_header("idempotent-replayed", "true"))
        .with_priority(2)
        .mount(&server)
        .await;
    let resp = fast_client()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert!(resp.is_replay());
    let fresh = server_failing(ResponseTemplate::new(201), 0).await;
    assert!(
        !fast_client()
            .post_idempotent(fresh.uri())
            .send()
            .await
            .unwrap()
            .is_replay()
    );
}

#[tokio::test]
async fn default_client_uses_documented_defaults() {
    let server = server_failing(ResponseTemplate::new(503), 1).await;
    let (delays, hook) = delay_recorder();
    // Full jitter on a 500 ms base: the first delay is somewhere in [0, 500 ms].
    let client = IdempotentClient::builder().on_retry(hook).build().unwrap();
    let resp = client.post_idempotent(server.uri()).send().await.unwrap();
    assert_eq!(resp.attempts(), 2);
    assert!(delays.lock().unwrap()[0] <= Duration::from_millis(500));
}

#[tokio::test]
async fn enormous_delays_end_at_the_deadline_without_panicking() {
    let server = server_failing(ResponseTemplate::new(503), 100).await;
    let err = fast_builder()
        .retry_policy(
            fast_policy()
                .initial_delay(Duration::MAX)
                .max_delay(Duration::MAX)
                .deadline(Duration::from_secs(5)),
        )
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::DeadlineExceeded));
    assert_eq!(err.attempts(), 1);
}
