//! "May this operation have executed?": the answer every error gives, for each way a
//! call, or a read of its answer, can stop. A wrong "no" is a double charge.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::time::Duration;

use idempotent_retry::{
    Decision, Error, GiveUpReason, IdempotencyKey, default_classifier, reqwest,
};
use support::{
    fast_builder, fast_client, fast_policy, keys_received, refusing_url, server_failing,
};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // Only its shape matters: the answers below do not have it.
struct Charge {
    id: String,
    amount: u64,
}

/// The answer of a default client to one POST that a server answers with `template`.
async fn answered(template: ResponseTemplate) -> idempotent_retry::IdempotentResponse {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&server)
        .await;
    fast_client()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fresh_key_refused_everywhere_was_not_sent() {
    let err = fast_client()
        .post_idempotent(refusing_url().await)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 5);
    assert!(!err.is_outcome_unknown());
    assert!(!err.may_have_executed(), "no byte of a fresh key ever left");
}

#[tokio::test]
async fn a_supplied_key_is_unknown_whatever_stopped_this_call() {
    // The persisted key of an operation an earlier process may have sent: refused
    // connections now say nothing about that first send.
    let key = IdempotencyKey::parse("charge-7").unwrap();
    let err = fast_client()
        .post_idempotent(refusing_url().await)
        .idempotency_key(key.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.give_up_reason(), Some(GiveUpReason::AttemptsExhausted));
    assert!(err.is_outcome_unknown());
    assert!(err.may_have_executed(), "starting over would charge twice");
    assert_eq!(err.idempotency_key(), Some(&key));
}

#[tokio::test]
async fn an_answer_that_does_not_decode_after_a_2xx_may_have_executed() {
    // One 503, then the charge is made and answered with a body of another shape.
    let server = server_failing(ResponseTemplate::new(503), 1).await;
    let response = fast_client()
        .post_idempotent(format!("{}/charges", server.uri()))
        .json(&serde_json::json!({ "amount": 100 }))
        .send()
        .await
        .unwrap();
    let key = response.idempotency_key().clone();
    let err = response.json::<Charge>().await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    // The serde reason is in the message itself, not only in `source()`.
    let message = err.to_string();
    assert!(message.contains("line 1 column"), "{message}");
    assert!(
        err.may_have_executed(),
        "the server said 201: the charge was made"
    );
    assert!(
        !err.is_outcome_unknown(),
        "the outcome is known: it executed"
    );
    assert_eq!(err.status(), Some(reqwest::StatusCode::CREATED));
    assert_eq!(err.attempts(), 2, "the real count, not 0");
    assert_eq!(err.idempotency_key(), Some(&key));
}

#[tokio::test]
async fn an_undecodable_refusal_did_not_execute() {
    let response = answered(ResponseTemplate::new(402).set_body_string("card declined")).await;
    let err = response.json::<Charge>().await.unwrap_err();
    assert_eq!(err.status(), Some(reqwest::StatusCode::PAYMENT_REQUIRED));
    assert!(!err.may_have_executed(), "a 4xx refusal is the server's no");
}

#[tokio::test]
async fn a_retried_202_or_404_may_have_executed() {
    for status in [202, 404] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status))
            .mount(&server)
            .await;
        let err = fast_builder()
            .retry_policy(fast_policy().max_attempts(2))
            .classifier(move |attempt| match attempt.status() {
                Some(s) if s.as_u16() == status => Decision::Retry,
                _ => default_classifier(attempt),
            })
            .build()
            .unwrap()
            .post_idempotent(server.uri())
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.attempts(), 2, "{status}");
        assert!(err.is_outcome_unknown(), "{status}: the server answered");
        assert!(err.may_have_executed(), "{status}");
    }
}

#[tokio::test]
async fn our_client_follows_no_redirect_a_303_is_final() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(303).insert_header("location", "/charges/1"))
        .mount(&server)
        .await;
    let response = fast_client()
        .post_idempotent(format!("{}/charges", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        303,
        "the 303 itself: the charge was made"
    );
    assert_eq!(
        keys_received(&server).await.len(),
        1,
        "one POST, nothing followed"
    );
}

#[tokio::test]
async fn with_a_client_that_follows_redirects_a_later_429_is_not_a_no() {
    // A POST answered 303 (it executed), whose target then throttles: every later
    // answer comes from another URL, so nothing here says "not executed".
    let target = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&target)
        .await;
    let origin = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(303).insert_header("location", format!("{}/done", target.uri())),
        )
        .mount(&origin)
        .await;
    let err = fast_builder()
        .retry_policy(fast_policy().max_attempts(3))
        .reqwest_client(reqwest::Client::new()) // follows redirects, as reqwest's default does
        .build()
        .unwrap()
        .post_idempotent(format!("{}/charges", origin.uri()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(
        keys_received(&origin).await.len(),
        3,
        "three POSTs executed"
    );
    assert!(err.is_outcome_unknown());
    assert!(err.may_have_executed());
}

#[tokio::test]
async fn a_panicking_classifier_or_hook_keeps_the_key_and_the_outcome() {
    let server = server_failing(ResponseTemplate::new(503), 10).await;
    let classifier_panics = fast_builder()
        .classifier(|_| panic!("a bug in the caller's classifier"))
        .build()
        .unwrap();
    let hook_panics = fast_builder()
        .on_retry(|_, _| panic!("a bug in the caller's metrics"))
        .build()
        .unwrap();
    for client in [classifier_panics, hook_panics] {
        let request = client.post_idempotent(server.uri());
        let key = request.key().clone();
        let err = request.send().await.unwrap_err();
        assert_eq!(err.give_up_reason(), Some(GiveUpReason::CallbackPanicked));
        assert_eq!(err.idempotency_key(), Some(&key));
        assert_eq!(err.attempts(), 1);
        assert!(
            err.may_have_executed(),
            "a 503 may come after the work was done"
        );
        assert_eq!(err.status(), Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    }
}

#[tokio::test]
async fn the_key_is_known_before_send_so_a_cancelled_call_loses_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let request = fast_client().post_idempotent(server.uri());
    // Write-ahead: the key is stored before anything is sent.
    let persisted = request.key().clone();
    let mut send = Box::pin(request.send());
    // The caller gives up (as a timeout wrapper would) once the request has arrived.
    let arrived = async {
        while keys_received(&server).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::select! {
        _ = &mut send => panic!("the answer is 5 s away"),
        waited = tokio::time::timeout(Duration::from_secs(4), arrived) => waited.unwrap(),
    }
    drop(send); // the future, and with it the operation, is gone
    let keys = keys_received(&server).await;
    assert_eq!(
        keys,
        [Some(persisted.as_str().to_owned())],
        "the request did go out"
    );
}

#[tokio::test]
async fn error_for_status_turns_a_refusal_into_an_error_that_keeps_the_answer() {
    let response = answered(ResponseTemplate::new(402).set_body_string("card declined")).await;
    let key = response.idempotency_key().clone();
    let err = response.error_for_status().unwrap_err();
    assert!(matches!(err, Error::Status { .. }), "{err:?}");
    assert_eq!(err.to_string(), "the server answered 402 Payment Required");
    assert_eq!(err.status(), Some(reqwest::StatusCode::PAYMENT_REQUIRED));
    assert_eq!(err.idempotency_key(), Some(&key));
    assert_eq!(err.attempts(), 1);
    assert!(!err.may_have_executed(), "a 4xx refusal is the server's no");
    let kept = err.last_response().expect("the answer is kept");
    assert_eq!(kept.clone().text().await.unwrap(), "card declined");
}

#[tokio::test]
async fn error_for_status_passes_a_success_and_flags_a_final_5xx() {
    let ok = answered(ResponseTemplate::new(201).set_body_string("{}"))
        .await
        .error_for_status()
        .unwrap();
    assert_eq!(ok.status(), 201);

    // A 500 the classifier makes final: the server failed somewhere, maybe after
    // executing.
    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let client = fast_builder()
        .classifier(|_| Decision::Final)
        .build()
        .unwrap();
    let err = client
        .post_idempotent(failing.uri())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap_err();
    assert_eq!(
        err.status(),
        Some(reqwest::StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert!(err.may_have_executed());
}
