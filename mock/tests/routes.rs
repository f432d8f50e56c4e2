//! The mock server playing the caller's own API: routes, templates and their answers,
//! with every idempotency rule and fault still applying.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use idempotent_retry::{IdempotencyKey, IdempotentResponse};
use idempotent_retry_mock::{Fault, MockError, MockServer, Route};
use serde_json::{Value, json};
use support::{fast_builder, fast_client};

/// A keyed POST of `body` as JSON, through a client that retries quickly.
async fn post_json(url: impl AsRef<str>, body: Value) -> IdempotentResponse {
    fast_client()
        .post_idempotent(url.as_ref())
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A Stripe-shaped payment intents API.
async fn payments() -> MockServer {
    MockServer::builder()
        .seed(7)
        .route(
            Route::post("/v1/payment_intents")
                .name("declined")
                .when("body.payment_method", "pm_card_declined")
                .status(402)
                .body(r#"{"error": {"type": "card_error", "code": "card_declined"}}"#),
        )
        .route(
            Route::post("/v1/payment_intents")
                .name("create")
                .id_prefix("pi_")
                .header("Request-Id", "req_{{seq}}")
                .body(
                    r#"{"id": "{{id}}", "object": "payment_intent", "amount": {{body.amount}},
                        "currency": "{{body.currency}}", "status": "succeeded"}"#,
                ),
        )
        .route(
            Route::get("/v1/customers/{id}").body(
                r#"{"id": "{{path.id}}", "object": "customer", "expand": "{{query.expand}}"}"#,
            ),
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_route_answers_with_its_rendered_template() {
    let server = payments().await;
    let resp = post_json(
        format!("{}/v1/payment_intents", server.uri()),
        json!({"amount": 2000, "currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["request-id"], "req_1");
    assert_eq!(resp.headers()["matched-route"], "create");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let intent: Value = resp.json().await.unwrap();
    assert_eq!(intent["amount"], 2000);
    assert_eq!(intent["currency"], "usd");
    assert_eq!(intent["status"], "succeeded");
    let id = intent["id"].as_str().unwrap();
    assert!(id.starts_with("pi_") && id.len() > 10, "{id}");
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn form_bodies_fill_placeholders_as_stripe_clients_send_them() {
    let server = payments().await;
    let resp = fast_client()
        .post_idempotent(format!("{}/v1/payment_intents", server.uri()))
        .form(&[
            ("amount", "1500"),
            ("currency", "eur"),
            ("payment_method", "pm_card_visa"),
        ])
        .send()
        .await
        .unwrap();
    let intent: Value = resp.json().await.unwrap();
    assert_eq!(
        intent["amount"], 1500,
        "a form's number stands bare as JSON"
    );
    assert_eq!(intent["currency"], "eur");
}

#[tokio::test]
async fn a_business_error_is_stored_and_replayed_like_a_success() {
    let server = payments().await;
    let url = format!("{}/v1/payment_intents", server.uri());
    let key = IdempotencyKey::parse("charge-declined-1").unwrap();
    let body = json!({"amount": 2000, "currency": "usd", "payment_method": "pm_card_declined"});
    let first = fast_client()
        .post_idempotent(&url)
        .json(&body)
        .idempotency_key(key.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 402);
    assert!(!first.is_replay());
    let again = fast_client()
        .post_idempotent(&url)
        .json(&body)
        .idempotency_key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 402);
    assert!(again.is_replay());
    assert_eq!(again.headers()["matched-route"], "declined");
    assert_eq!(first.bytes().await.unwrap(), again.bytes().await.unwrap());
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn a_lost_answer_on_a_route_is_replayed_byte_for_byte_once_executed() {
    let server = payments().await;
    server.inject(Fault::DropAfterProcessing, 1);
    let resp = post_json(
        format!("{}/v1/payment_intents", server.uri()),
        json!({"amount": 99, "currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.is_replay());
    assert_eq!(resp.attempts(), 2);
    assert_eq!(
        resp.headers()["request-id"],
        "req_1",
        "rendered once, stored, replayed"
    );
    assert_eq!(server.executions(), 1);
    assert!(server.duplicates().is_empty());
}

#[tokio::test]
async fn no_matching_route_is_a_404_naming_the_nearest_and_releases_the_key() {
    let server = payments().await;
    let client = fast_client();
    let key = IdempotencyKey::parse("order-404").unwrap();
    let resp = client
        .post_idempotent(format!("{}/v1/refunds", server.uri()))
        .idempotency_key(key.clone())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("POST /v1/refunds"),
        "{problem}"
    );
    // A GET on the customers route with a path too long: the nearest says why.
    let resp = reqwest::get(format!("{}/v1/customers/cus_1/extra", server.uri()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(server.executions(), 0);
    // The key was not stored: the same key may be used for a request that matches.
    let resp = client
        .post_idempotent(format!("{}/v1/payment_intents", server.uri()))
        .idempotency_key(key)
        .json(&json!({"amount": 1, "currency": "usd", "payment_method": "pm_card_visa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.is_replay());
}

#[tokio::test]
async fn a_field_the_request_lacks_is_a_400_naming_it_and_uses_no_seq() {
    let server = payments().await;
    let url = format!("{}/v1/payment_intents", server.uri());
    let resp = post_json(
        &url,
        json!({"currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let problem: Value = resp.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("body.amount"),
        "{problem}"
    );
    assert_eq!(server.executions(), 0);
    let resp = post_json(
        url,
        json!({"amount": 5, "currency": "usd", "payment_method": "pm_card_visa"}),
    )
    .await;
    assert_eq!(resp.headers()["request-id"], "req_1", "the 400 drew no seq");
}

#[tokio::test]
async fn a_get_route_is_a_read_answered_anew_and_never_executed() {
    let server = payments().await;
    let resp = reqwest::get(format!(
        "{}/v1/customers/cus_42?expand=sources",
        server.uri()
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let customer: Value = resp.json().await.unwrap();
    assert_eq!(
        customer,
        json!({"id": "cus_42", "object": "customer", "expand": "sources"})
    );
    assert_eq!(server.executions(), 0);
}

#[tokio::test]
async fn ids_come_from_the_seed() {
    let ids = |seed| async move {
        let server = MockServer::builder()
            .seed(seed)
            .route(
                Route::post("/p")
                    .id_prefix("x_")
                    .body(r#"{"id": "{{id}}"}"#),
            )
            .start()
            .await
            .unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let resp = fast_client()
                .post_idempotent(format!("{}/p", server.uri()))
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            ids.push(body["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    let a = ids(1).await;
    assert_eq!(a, ids(1).await);
    assert_ne!(a, ids(2).await);
    assert_eq!(a.iter().collect::<std::collections::HashSet<_>>().len(), 3);
}

#[tokio::test]
async fn a_malformed_route_is_refused_at_start_naming_it() {
    for (route, needles) in [
        (
            Route::post("/p").name("bad").body(r#"{"a": {{nope}}}"#),
            vec!["\"bad\"", "1:7", "unknown placeholder"],
        ),
        (
            Route::post("/p").name("open").body("{{id"),
            vec!["\"open\"", "never closed"],
        ),
        (
            Route::post("/p").name("bare").body(r#"{"id": {{id}}}"#),
            vec!["\"bare\"", "quote it"],
        ),
        (
            Route::post("/p/{x}")
                .name("param")
                .body(r#"{"y": "{{path.y}}"}"#),
            vec!["\"param\"", "{y}"],
        ),
        (
            Route::post("p").name("slash"),
            vec!["\"slash\"", "start with '/'"],
        ),
        (
            Route::post("/p").name("status").status(99),
            vec!["\"status\"", "99"],
        ),
        (
            Route::post("/p").name("header").header("bad name", "v"),
            vec!["\"header\"", "bad name"],
        ),
        (
            Route::post("/p").name("when").when("nope.x", "v"),
            vec!["\"when\"", "unknown placeholder"],
        ),
    ] {
        let err = MockServer::builder()
            .route(route)
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, MockError::InvalidConfig { .. }));
        let text = err.to_string();
        for needle in needles {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
    }
}

#[tokio::test]
async fn the_stripe_stub_file_plays_payment_intents() {
    let server = MockServer::builder()
        .stubs_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/stripe.toml"))
        .start()
        .await
        .unwrap();
    let url = format!("{}/v1/payment_intents", server.uri());
    let client = fast_client();
    // As Stripe's clients send it: a form.
    let resp = client
        .post_idempotent(&url)
        .bearer_auth("sk_test_123")
        .form(&[
            ("amount", "2000"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let intent: Value = resp.json().await.unwrap();
    assert_eq!(intent["object"], "payment_intent");
    assert_eq!(intent["amount"], 2000);
    let id = intent["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pi_"));

    let declined = client
        .post_idempotent(&url)
        .form(&[
            ("amount", "500"),
            ("currency", "usd"),
            ("payment_method", "pm_card_chargeDeclined"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(declined.status(), 402);
    let error: Value = declined.json().await.unwrap();
    assert_eq!(error["error"]["code"], "card_declined");

    let fetched: Value = reqwest::get(format!("{url}/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["id"], id.as_str());
    assert_eq!(server.executions(), 2, "the two POSTs; the GET is a read");
}

#[tokio::test]
async fn a_bad_stub_file_is_refused_at_start_naming_it() {
    let path = std::env::temp_dir().join(format!("bad-stubs-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[route]]\nmethod = \"POST\"\npath = \"/p\"\nbody = '{{nope}}'\n",
    )
    .unwrap();
    let err = MockServer::builder()
        .stubs_file(&path)
        .start()
        .await
        .unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let text = err.to_string();
    assert!(
        text.contains("bad-stubs") && text.contains("unknown placeholder"),
        "{text}"
    );
    assert!(
        MockServer::builder()
            .stubs_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/stripe.toml"))
            .check()
            .is_ok()
    );
}

#[tokio::test]
async fn a_created_resource_reads_back_for_its_caller_only() {
    // With routes: the customer route creates, no GET route exists, read-back answers.
    let server = MockServer::builder()
        .stubs_file(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/stripe.toml"))
        .start()
        .await
        .unwrap();
    let created: Value = fast_client()
        .post_idempotent(format!("{}/v1/customers", server.uri()))
        .bearer_auth("sk_test_a")
        .form(&[("email", "jo@example.com")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/customers/{id}", server.uri());
    let mine = http
        .get(&url)
        .bearer_auth("sk_test_a")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.status(), 200);
    assert_eq!(mine.json::<Value>().await.unwrap(), created);
    let theirs = http
        .get(&url)
        .bearer_auth("sk_test_b")
        .send()
        .await
        .unwrap();
    assert_eq!(
        theirs.status(),
        404,
        "another caller's resource is not there for them"
    );

    // Without routes: the built-in answer's id reads back too.
    let plain = MockServer::start().await;
    let created: Value = post_json(format!("{}/orders", plain.uri()), json!({"sku": "tea"}))
        .await
        .json()
        .await
        .unwrap();
    let read: Value = reqwest::get(format!("{}/orders/{}", plain.uri(), created["id"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read, created);
}

#[tokio::test]
async fn an_unstored_answer_executes_nothing_and_leaves_the_key_free() {
    let server = MockServer::builder()
        .route(
            Route::post("/v1/charges")
                .name("busy")
                .when("header.x-load", "high")
                .status(429)
                .store(false)
                .body(r#"{"error": "rate limited"}"#),
        )
        .route(
            Route::post("/v1/charges")
                .id_prefix("ch_")
                .body(r#"{"id": "{{id}}"}"#),
        )
        .start()
        .await
        .unwrap();
    let url = format!("{}/v1/charges", server.uri());
    let key = IdempotencyKey::parse("charge-unstored").unwrap();
    let busy = fast_client()
        .post_idempotent(&url)
        .header("x-load", "high")
        .idempotency_key(key.clone())
        .retry_policy(idempotent_retry::RetryPolicy::none())
        .send()
        .await
        .unwrap_err();
    assert_eq!(busy.status(), Some(reqwest::StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(server.executions(), 0);
    // The same key, now under normal load: it executes, nothing was stored for it.
    let resp = fast_client()
        .post_idempotent(&url)
        .idempotency_key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.is_replay());
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn a_route_rate_limit_answers_429_with_the_ietf_fields_and_leaves_faults_queued() {
    let server = MockServer::builder()
        .route(
            Route::post("/v1/charges")
                .name("charge")
                .status(201)
                .rate_limit(1, 2),
        )
        .route(
            Route::post("/v1/fast")
                .name("fast")
                .status(201)
                .rate_limit(1_000, 1),
        )
        .route(
            Route::post("/v1/refunds")
                .name("refund")
                .status(201)
                .rate_limit(1, 1)
                .rate_limit_retry_after(false),
        )
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let post = |path: &'static str, key: &'static str| {
        http.post(format!("{}{path}", server.uri()))
            .header("idempotency-key", key)
            .json(&json!({}))
            .send()
    };
    // The burst of two, then refused.
    assert_eq!(post("/v1/charges", "a").await.unwrap().status(), 201);
    assert_eq!(post("/v1/charges", "b").await.unwrap().status(), 201);
    server
        .inject_route("charge", Fault::DropAfterProcessing, 1)
        .unwrap();
    let refused = post("/v1/charges", "c").await.unwrap();
    assert_eq!(refused.status(), 429);
    let headers = refused.headers();
    assert_eq!(headers["ratelimit-policy"], "\"default\";q=2;w=2");
    assert_eq!(headers["ratelimit"], "\"default\";r=0;t=1");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(server.executions(), 2, "a 429 executes nothing");
    let stats = server.route_stats("charge").unwrap();
    assert_eq!((stats.requests, stats.executions), (3, 2));

    // A queued fault waits for a request the route processes: a fast route, refused,
    // then, one token (a millisecond) later, processed and faulted.
    assert_eq!(post("/v1/fast", "f1").await.unwrap().status(), 201);
    server
        .inject_route("fast", Fault::DropAfterProcessing, 1)
        .unwrap();
    assert_eq!(post("/v1/fast", "f2").await.unwrap().status(), 429);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(
        post("/v1/fast", "f3").await.is_err(),
        "the fault dropped it"
    );
    assert_eq!(server.executions_for("f3"), 1, "executed, then dropped");

    assert_eq!(post("/v1/refunds", "d").await.unwrap().status(), 201);
    let refused = post("/v1/refunds", "e").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_none());
    assert_eq!(refused.headers()["ratelimit"], "\"default\";r=0;t=1");
}

#[tokio::test]
async fn a_stub_file_sets_a_rate_limit() {
    let file = support::TempStub::new("stub-limit", "api.toml");
    let stub = |limit: &str| {
        file.write(&format!(
            "[[route]]\nmethod = \"POST\"\npath = \"/v1/charges\"\nrate_limit = {limit}\n"
        ));
    };
    // The file's limit is the one served: a burst of two, then a 429 without
    // Retry-After, as the file says.
    stub("{ per_second = 1, burst = 2, retry_after = false }");
    let server = MockServer::builder()
        .stubs_file(&file.path)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for key in ["a", "b", "c"] {
        let resp = http
            .post(format!("{}/v1/charges", server.uri()))
            .header("idempotency-key", key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        retry_after = resp.headers().get("retry-after").cloned();
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(retry_after, None, "retry_after = false");

    stub("{ per_second = 0, burst = 10 }");
    let err = MockServer::builder()
        .stubs_file(&file.path)
        .check()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("per_second and burst must be at least 1"),
        "{err}"
    );
}

#[tokio::test]
async fn a_route_streams_a_large_answer_that_the_client_bound_refuses() {
    // 64 KiB chunks and a last partial one, with no declared length.
    let size: u64 = 3 * 64 * 1024 + 3;
    let server = MockServer::builder()
        .route(Route::get("/v1/small").stream_body(size))
        .route(Route::get("/v1/exports").stream_body(256 << 20))
        .start()
        .await
        .unwrap();
    let resp = reqwest::get(format!("{}/v1/small", server.uri()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_none(), "streamed");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len() as u64, size);
    assert!(body.iter().all(|b| *b == b'x'));

    // 256 MiB offered to a client that buffers 1 MiB: too large, never retried.
    let client = fast_builder().max_response_bytes(1 << 20).build().unwrap();
    let err = client
        .request_idempotent(http::Method::GET, format!("{}/v1/exports", server.uri()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_response_too_large(), "{err:?}");
    assert_eq!(err.attempts(), 1);

    // A route whose answers are stored under their key cannot stream.
    let err = MockServer::builder()
        .route(Route::post("/v1/exports").stream_body(10))
        .check()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("stream_body is for a route that stores nothing"),
        "{err}"
    );
    MockServer::builder()
        .route(Route::post("/v1/exports").store(false).stream_body(10))
        .check()
        .unwrap();
}
