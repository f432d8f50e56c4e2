//! `IdempotencyMiddleware` in a `reqwest-middleware` client: one key per logical request,
//! retried with our policy, in any position among other layers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use http::{Extensions, HeaderValue};
use idempotent_retry::{Error, IdempotencyKey, IdempotencyMiddleware, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer as IdempotentMock};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use support::{assert_one_key, fast_builder, fast_policy, keys_received, server_failing};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ours() -> IdempotencyMiddleware {
    fast_builder().build_middleware().unwrap()
}

fn client(layers: impl FnOnce(ClientBuilder) -> ClientBuilder) -> ClientWithMiddleware {
    layers(ClientBuilder::new(reqwest::Client::new())).build()
}

/// reqwest-retry with millisecond delays and up to 3 retries.
fn reqwest_retry() -> RetryTransientMiddleware<ExponentialBackoff> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(3);
    RetryTransientMiddleware::new_with_policy(policy)
}

/// Posts through `client` to a server that answers 503 twice, then 201; returns the
/// response and the key of every request the server received.
async fn through_two_503s(client: ClientWithMiddleware) -> (Response, Vec<Option<String>>) {
    let server = server_failing(ResponseTemplate::new(503), 2).await;
    let resp = client.post(server.uri()).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    (resp, keys_received(&server).await)
}

#[tokio::test]
async fn every_attempt_carries_one_key_which_the_response_gives_back() {
    let (resp, keys) = through_two_503s(client(|c| c.with(ours()))).await;
    let sent = assert_one_key(&keys, 3);
    let key = resp.extensions().get::<IdempotencyKey>().unwrap();
    assert_eq!(key.as_str(), sent);
}

/// The pitfall: a layer that mints a key per call, inside a retry layer.
struct MintKeyPerCall;

#[async_trait::async_trait]
impl Middleware for MintKeyPerCall {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let key = IdempotencyKey::new_v4();
        let value = HeaderValue::from_str(key.as_str()).unwrap();
        request.headers_mut().insert("idempotency-key", value);
        next.run(request, extensions).await
    }
}

#[tokio::test]
async fn a_key_minted_inside_a_retry_layer_changes_on_every_attempt() {
    // Not our code: this shows the pitfall is real in the setup the next test uses.
    let (_, keys) =
        through_two_503s(client(|c| c.with(reqwest_retry()).with(MintKeyPerCall))).await;
    let distinct: HashSet<_> = keys
        .iter()
        .map(|k| k.as_deref().expect("key sent"))
        .collect();
    assert_eq!((keys.len(), distinct.len()), (3, 3), "{keys:?}");
}

#[tokio::test]
async fn ours_inside_a_retry_layer_keeps_one_key() {
    // Our own retries off, so that every retry is reqwest-retry's, each one a new pass
    // through our layer.
    let layer = fast_builder()
        .retry_policy(RetryPolicy::none())
        .build_middleware()
        .unwrap();
    let (_, keys) = through_two_503s(client(|c| c.with(reqwest_retry()).with(layer))).await;
    assert_one_key(&keys, 3);
}

#[tokio::test]
async fn a_stream_body_is_refused_before_any_io() {
    let server = server_failing(ResponseTemplate::new(503), 0).await;
    let err = client(|c| c.with(ours()))
        .post(server.uri())
        .body(reqwest::Body::wrap(String::from("streamed")))
        .send()
        .await
        .unwrap_err();
    let ours = Error::from_middleware_error(&err).expect("our error");
    assert!(matches!(ours, Error::InvalidRequest { .. }), "{ours:?}");
    assert!(ours.to_string().contains("stream"), "{ours}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_key_set_in_the_header_is_kept_and_a_bad_one_refused() {
    let server = server_failing(ResponseTemplate::new(503), 1).await;
    let http = client(|c| c.with(ours()));
    let resp = http
        .post(server.uri())
        .header("Idempotency-Key", "order-1234")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let keys = keys_received(&server).await;
    assert_eq!(
        keys,
        [Some("order-1234".to_owned()), Some("order-1234".to_owned())]
    );

    let err = http
        .post(server.uri())
        .header("Idempotency-Key", "two words")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let ours = Error::from_middleware_error(&err).expect("our error");
    assert!(matches!(ours, Error::InvalidKey { .. }), "{ours:?}");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        2,
        "nothing more sent"
    );
}

#[tokio::test]
async fn safe_methods_pass_through_untouched() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let resp = client(|c| c.with(ours()))
        .get(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(keys_received(&server).await, [None]);
}

#[tokio::test]
async fn lost_responses_end_in_our_error_with_the_key_and_an_unknown_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(400)))
        .mount(&server)
        .await;
    let layer = fast_builder()
        .retry_policy(fast_policy().max_attempts(2))
        .attempt_timeout(Duration::from_millis(50))
        .build_middleware()
        .unwrap();
    let err = client(|c| c.with(layer))
        .post(server.uri())
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let ours = Error::from_middleware_error(&err).expect("our error");
    assert!(ours.is_timeout() && ours.is_outcome_unknown(), "{ours:?}");
    assert_eq!(ours.attempts(), 2);
    let keys = keys_received(&server).await;
    assert_eq!(
        keys[0].as_deref(),
        ours.idempotency_key().map(IdempotencyKey::as_str)
    );
}

#[tokio::test]
async fn exactly_once_against_the_idempotent_mock_with_lost_responses() {
    let mock = IdempotentMock::start().await;
    mock.inject(Fault::DropAfterProcessing, 2);
    let resp = client(|c| c.with(ours()))
        .post(format!("{}/payments", mock.uri()))
        .json(&serde_json::json!({ "amount": 1999 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(mock.executions(), 1);
    assert!(mock.duplicates().is_empty());
}

#[tokio::test]
async fn two_different_requests_through_one_extensions_map_get_two_keys() {
    let server = server_failing(ResponseTemplate::new(503), 0).await;
    let client = client(|c| c.with(ours()));
    let mut extensions = Extensions::new();
    for body in ["{\"sku\":\"tea\"}", "{\"sku\":\"cake\"}"] {
        let request = client.post(server.uri()).body(body).build().unwrap();
        client
            .execute_with_extensions(request, &mut extensions)
            .await
            .unwrap();
    }
    let keys = keys_received(&server).await;
    assert_eq!(keys.len(), 2);
    assert_ne!(
        keys[0], keys[1],
        "one key for two different charges: {keys:?}"
    );
}

#[tokio::test]
async fn a_429_after_an_attempt_that_may_have_executed_says_so() {
    // The first attempt times out after the server did the work; then the server
    // throttles until the attempts run out. The 429 alone would read "not executed".
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(500)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&server)
        .await;
    let layer = fast_builder()
        .retry_policy(fast_policy().max_attempts(3))
        .attempt_timeout(Duration::from_millis(100))
        .build_middleware()
        .unwrap();
    let resp = client(|c| c.with(layer))
        .post(server.uri())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let report = idempotent_retry::OperationReport::of(&resp).unwrap();
    assert_eq!(report.attempts(), 3);
    assert_eq!(
        report.give_up_reason(),
        Some(idempotent_retry::GiveUpReason::AttemptsExhausted)
    );
    assert!(
        report.is_outcome_unknown(),
        "the timed-out attempt may have executed"
    );
    let sent = assert_one_key(&keys_received(&server).await, 3);
    assert_eq!(report.idempotency_key().as_str(), sent);
}

/// A layer inside ours that fails on its second call, after the first went out.
struct FailsOnRetry(std::sync::atomic::AtomicU32);

#[async_trait::async_trait]
impl Middleware for FailsOnRetry {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(reqwest_middleware::Error::middleware(
                std::io::Error::other("token refresh failed"),
            ));
        }
        next.run(request, extensions).await
    }
}

#[tokio::test]
async fn an_inner_layers_error_on_a_retry_comes_back_with_key_and_outcome() {
    let server = server_failing(ResponseTemplate::new(503), 5).await;
    let inner = FailsOnRetry(std::sync::atomic::AtomicU32::new(0));
    let err = client(|c| c.with(ours()).with(inner))
        .post(server.uri())
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let ours = Error::from_middleware_error(&err).unwrap();
    assert!(matches!(ours, Error::MiddlewareLayer { .. }), "{ours:?}");
    assert_eq!(ours.attempts(), 2);
    assert!(ours.is_outcome_unknown() && ours.may_have_executed());
    let sent = assert_one_key(&keys_received(&server).await, 1);
    assert_eq!(ours.idempotency_key().unwrap().as_str(), sent);
    let source = std::error::Error::source(ours).unwrap().to_string();
    assert!(source.contains("token refresh failed"), "{source}");
}

#[tokio::test]
async fn the_answer_body_is_bounded_and_the_response_keeps_its_url() {
    let layer = fast_builder()
        .max_response_bytes(1 << 20)
        .build_middleware()
        .unwrap();
    let client = client(|c| c.with(layer));
    // Chunked (bounded while read) and declared past the bound (bounded too: only a
    // declared length within it goes unwrapped).
    for declared in [false, true] {
        let huge = support::ScriptedServer::start(vec![support::Action::StreamBody {
            bytes: 256 << 20,
            declared,
        }])
        .await;
        let resp = client
            .post(huge.url("/exports"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.url().as_str(), huge.url("/exports"));
        assert!(
            resp.bytes().await.is_err(),
            "{declared}: reading past the bound fails"
        );
        let written = huge.body_bytes_written();
        assert!(
            written < 32 << 20,
            "{declared}: memory did not follow ({written})"
        );
    }

    let (resp, _) = through_two_503s(client).await;
    assert!(resp.url().as_str().starts_with("http://127.0.0.1:"));
    assert_eq!(resp.text().await.unwrap(), "{\"id\":\"ord_1\"}");
}

#[tokio::test]
async fn a_circuit_opened_on_the_layer_refuses_before_any_io() {
    let server = IdempotentMock::start().await;
    let layer = fast_builder()
        .circuit_breaker(idempotent_retry::CircuitBreaker::new())
        .build_middleware()
        .unwrap();
    layer.open_circuit(&server.uri()).unwrap();
    assert_eq!(
        layer.circuit_state(&server.uri()).unwrap(),
        idempotent_retry::CircuitState::Open
    );
    let client = client(|c| c.with(layer.clone()));
    let err = client
        .post(format!("{}/orders", server.uri()))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let ours = Error::from_middleware_error(&err).expect("our error");
    assert!(ours.is_circuit_open(), "{ours}");
    assert!(!ours.may_have_executed(), "{ours}");
    assert!(server.requests().is_empty(), "nothing reached the server");

    layer.close_circuit(&server.uri()).unwrap();
    let resp = client
        .post(format!("{}/orders", server.uri()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn safe_methods_pass_through_the_circuit_and_are_refused_while_it_is_open() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let layer = ours();
    layer.open_circuit(&server.uri()).unwrap();
    let http = client(|c| c.with(layer.clone()));
    let err = http.get(server.uri()).send().await.unwrap_err();
    let ours = Error::from_middleware_error(&err).unwrap();
    assert!(ours.is_circuit_open(), "{ours}");
    assert!(
        keys_received(&server).await.is_empty(),
        "refused before any I/O"
    );
    // Closed again: passed on once, with no key, no report, never retried.
    layer.close_circuit(&server.uri()).unwrap();
    let resp = http.get(server.uri()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.extensions().get::<IdempotencyKey>().is_none());
    assert!(idempotent_retry::OperationReport::of(&resp).is_none());
    assert_eq!(keys_received(&server).await, [None]);
}
