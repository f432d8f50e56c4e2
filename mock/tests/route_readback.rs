//! Faults aimed at one route, per-route read-back and expectations, the request log,
//! and the admin API that exposes them to tests in any language.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use idempotent_retry_mock::{Fault, MockError, MockServer, Route};
use serde_json::{Value, json};
use support::fast_client;

/// Charges and refunds: two operation routes and a read.
fn api() -> idempotent_retry_mock::MockServerBuilder {
    MockServer::builder()
        .seed(3)
        .route(
            Route::post("/v1/charges")
                .name("charge")
                .id_prefix("ch_")
                .body(r#"{"id": "{{id}}", "amount": {{body.amount}}}"#),
        )
        .route(
            Route::post("/v1/refunds")
                .name("refund")
                .id_prefix("re_")
                .body(r#"{"id": "{{id}}", "charge": "{{body.charge}}"}"#),
        )
        .route(
            Route::get("/v1/balance")
                .name("balance")
                .body(r#"{"available": 100}"#),
        )
}

async fn post(server: &MockServer, path: &str, body: Value) -> Value {
    let resp = fast_client()
        .post_idempotent(format!("{}{path}", server.uri()))
        .header("authorization", "Bearer sk_test_secret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_fault_aimed_at_a_route_hits_only_that_route() {
    let server = api().start().await.unwrap();
    server
        .inject_route("charge", Fault::DropAfterProcessing, 1)
        .unwrap();
    // The refund comes first and must not take the charge's fault.
    post(&server, "/v1/refunds", json!({"charge": "ch_x"})).await;
    assert_eq!(server.route_stats("refund").unwrap().requests, 1);

    post(&server, "/v1/charges", json!({"amount": 500})).await;
    let charge = server.route_stats("charge").unwrap();
    assert_eq!(
        (charge.requests, charge.executions),
        (2, 1),
        "lost answer, then the replay"
    );
    assert_eq!(server.replays(), 1);
    assert!(server.duplicates().is_empty());
}

#[tokio::test]
async fn a_route_takes_its_own_fault_before_the_servers() {
    let server = api().start().await.unwrap();
    server.inject(
        Fault::StatusBeforeProcessing(http::StatusCode::BAD_GATEWAY),
        1,
    );
    server
        .inject_route("POST /v1/charges", Fault::DropBeforeProcessing, 1)
        .unwrap();
    post(&server, "/v1/charges", json!({"amount": 1})).await;
    // Three attempts: the route's drop, then the server's 502, then the answer.
    assert_eq!(server.route_stats("charge").unwrap().requests, 3);
    assert_eq!(server.executions(), 1);
    assert_eq!(server.stats().faults_queued, 0);
}

#[tokio::test]
async fn a_request_no_route_answers_takes_no_fault() {
    let server = api().start().await.unwrap();
    server.inject(Fault::DropBeforeProcessing, 1);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/nowhere", server.uri()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(server.stats().faults_queued, 1, "the fault is still queued");
}

#[tokio::test]
async fn an_unknown_route_is_a_typed_error_listing_the_routes() {
    let server = api().start().await.unwrap();
    let err = server
        .inject_route("charges", Fault::DropAfterProcessing, 1)
        .unwrap_err();
    let MockError::UnknownRoute { route, known, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(route, "charges");
    assert_eq!(known, &["charge", "refund", "balance"]);
    assert!(err.to_string().contains("\"charge\""), "{err}");
    assert!(server.expect("GET /v1/nothing", 1).is_err());
}

/// Fault draws of the route named `charge`, at a 50 % rate, with or without another
/// route listed before it.
async fn charge_faults(with_other_route: bool) -> Vec<u64> {
    let mut builder = MockServer::builder().seed(11);
    if with_other_route {
        builder = builder.route(Route::post("/v1/other").fault_rate(0.5));
    }
    let server = builder
        .route(Route::post("/v1/charges").name("charge").fault_rates([(
            Fault::StatusBeforeProcessing(http::StatusCode::BAD_GATEWAY),
            0.5,
        )]))
        .start()
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let resp = client
            .post(format!("{}/v1/charges", server.uri()))
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(u64::from(resp.status().as_u16()));
    }
    statuses
}

#[tokio::test]
async fn a_routes_random_faults_depend_on_the_seed_and_its_name_alone() {
    let alone = charge_faults(false).await;
    assert_eq!(alone, charge_faults(true).await);
    let faulted = alone.iter().filter(|s| **s == 502).count();
    assert!((10..=30).contains(&faulted), "{faulted} of 40: {alone:?}");
}

#[tokio::test]
async fn the_log_keeps_headers_and_bodies_with_credentials_redacted() {
    let server = api().start().await.unwrap();
    post(&server, "/v1/charges", json!({"amount": 700})).await;
    let received = server.received("charge").unwrap();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.route(), Some("charge"));
    assert_eq!(request.header("authorization"), Some("[redacted]"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        serde_json::from_slice::<Value>(request.body()).unwrap(),
        json!({"amount": 700})
    );
    assert!(request.key.is_some());
    assert!(server.received("refund").unwrap().is_empty());

    let kept = api().log_credentials(true).start().await.unwrap();
    post(&kept, "/v1/charges", json!({"amount": 700})).await;
    assert_eq!(
        kept.received("charge").unwrap()[0].header("authorization"),
        Some("Bearer sk_test_secret")
    );
}

#[tokio::test]
async fn the_log_stays_within_max_log_bytes() {
    let server = api().max_log_bytes(2_000).start().await.unwrap();
    for amount in 0..50 {
        post(
            &server,
            "/v1/charges",
            json!({"amount": amount, "pad": "x".repeat(100)}),
        )
        .await;
    }
    let log = server.requests();
    assert!(!log.is_empty());
    assert!(log.len() < 50, "{} entries kept", log.len());
    let newest = serde_json::from_slice::<Value>(log.last().unwrap().body()).unwrap();
    assert_eq!(newest["amount"], 49, "the newest entries are the ones kept");
    assert_eq!(
        server.stats().requests,
        50,
        "the count is not bounded by the log"
    );
}

#[tokio::test]
async fn an_unmet_expectation_panics_on_drop_listing_what_arrived() {
    let server = api().start().await.unwrap();
    server.expect("charge", 2).unwrap();
    server.expect("refund", 0).unwrap();
    post(&server, "/v1/charges", json!({"amount": 42})).await;
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(server)));
    let message = *dropped.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("route \"charge\": expected 2 executions, got 1"),
        "{message}"
    );
    assert!(message.contains("POST /v1/charges"), "{message}");
    assert!(message.contains("\"amount\":42"), "{message}");
    assert!(
        !message.contains("refund"),
        "a met expectation is not listed: {message}"
    );
}

#[tokio::test]
async fn met_expectations_pass_and_count_executions_not_replays() {
    let server = api().start().await.unwrap();
    server
        .inject_route("charge", Fault::DropAfterProcessing, 2)
        .unwrap();
    server.expect("charge", 1).unwrap();
    server.expect_requests("charge", 3).unwrap();
    server.expect("balance", 0).unwrap();
    post(&server, "/v1/charges", json!({"amount": 42})).await;
    drop(server);
}

#[test]
fn an_expectation_does_not_panic_while_already_unwinding() {
    let outcome = std::panic::catch_unwind(|| {
        let server = api().start_blocking().unwrap();
        server.expect("charge", 5).unwrap();
        panic!("the test's own failure");
    });
    let message = *outcome.unwrap_err().downcast::<&str>().unwrap();
    assert_eq!(message, "the test's own failure");
}

async fn admin(server: &MockServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}/__admin/{path}", server.uri());
    let request = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    let request = match body {
        Some(body) => request.body(body.to_string()),
        None => request,
    };
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn the_admin_api_adds_and_lists_routes_aims_faults_and_serves_the_log() {
    // No routes at start: the built-in answer, until routes are added.
    let server = MockServer::start().await;
    let (status, added) = admin(
        &server,
        "POST",
        "routes",
        Some(
            json!({"name": "charge", "method": "POST", "path": "/v1/charges",
                    "id_prefix": "ch_", "body": "{\"id\": \"{{id}}\"}"}),
        ),
    )
    .await;
    assert_eq!((status, added), (201, json!({"added": 1, "routes": 1})));
    let (status, _) = admin(
        &server,
        "POST",
        "routes",
        Some(json!({"route": [{"name": "charge", "method": "GET", "path": "/x"}]})),
    )
    .await;
    assert_eq!(status, 400, "a name already taken");
    let (_, routes) = admin(&server, "GET", "routes", None).await;
    assert_eq!(routes[0]["name"], "charge");
    assert_eq!(routes[0]["path"], "/v1/charges");

    let (status, queued) = admin(
        &server,
        "POST",
        "faults",
        Some(json!({"fault": "drop_after_processing", "route": "POST /v1/charges"})),
    )
    .await;
    assert_eq!((status, queued["queued"].clone()), (200, json!(1)));
    let (status, _) = admin(
        &server,
        "POST",
        "faults",
        Some(json!({"fault": "drop_after_processing", "route": "nope"})),
    )
    .await;
    assert_eq!(status, 404);

    let created = post(&server, "/v1/charges", json!({"amount": 9})).await;
    assert!(created["id"].as_str().unwrap().starts_with("ch_"));
    let (_, stats) = admin(&server, "GET", "stats", None).await;
    assert_eq!(stats["routes"][0]["requests"], 2);
    assert_eq!(stats["routes"][0]["executions"], 1);
    let (_, log) = admin(&server, "GET", "requests", None).await;
    assert_eq!(log.as_array().unwrap().len(), 2);
    assert_eq!(log[0]["route"], "charge");
    assert_eq!(log[0]["body"], "{\"amount\":9}");
    assert_eq!(log[0]["headers"]["authorization"], "[redacted]");
    assert!(log[1]["ms"].as_u64().unwrap() >= log[0]["ms"].as_u64().unwrap());
}

#[tokio::test]
async fn faults_queued_counts_every_routes_queue_too() {
    let server = MockServer::builder()
        .route(Route::post("/v1/a").name("a"))
        .route(Route::post("/v1/b").name("b"))
        .start()
        .await
        .unwrap();
    server.inject(Fault::DropAfterProcessing, 1);
    server
        .inject_route("a", Fault::DropAfterProcessing, 2)
        .unwrap();
    server
        .inject_route("b", Fault::DropBeforeProcessing, 3)
        .unwrap();
    assert_eq!(server.stats().faults_queued, 6);
}
