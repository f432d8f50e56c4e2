//! Closure handlers: a route answered by the caller's code, inside the operation, once
//! per key, with every idempotency rule and fault still applying.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use idempotent_retry_mock::{Fault, MockResponse, MockServer, Route};
use serde_json::{Value, json};
use support::fast_client;

#[tokio::test]
async fn a_handler_runs_once_per_key_and_its_answer_is_replayed_byte_for_byte() {
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let server = MockServer::builder()
        .seed(5)
        .route(
            Route::post("/v1/accounts/{account}/transfers")
                .name("transfer")
                .id_prefix("tr_")
                .handler(move |request| {
                    let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                    MockResponse::json(
                        201,
                        &json!({
                            "id": request.id,
                            "seq": request.seq,
                            "account": request.param("account"),
                            "currency": request.query("currency"),
                            "amount": request.body["amount"],
                            "call": n,
                        }),
                    )
                    .header("Request-Id", format!("req_{n}"))
                }),
        )
        .start()
        .await
        .unwrap();
    server
        .inject_route("transfer", Fault::DropAfterProcessing, 2)
        .unwrap();
    let resp = fast_client()
        .post_idempotent(format!(
            "{}/v1/accounts/acct_9/transfers?currency=eur",
            server.uri()
        ))
        .json(&json!({"amount": 250}))
        .send()
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), resp.attempts()), (201, 3));
    assert!(resp.is_replay());
    assert_eq!(resp.headers()["request-id"], "req_1");
    assert_eq!(resp.headers()["matched-route"], "transfer");
    let body: Value = resp.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("tr_"), "{body}");
    assert_eq!(
        (
            &body["seq"],
            &body["account"],
            &body["currency"],
            &body["amount"],
            &body["call"]
        ),
        (
            &json!(1),
            &json!("acct_9"),
            &json!("eur"),
            &json!(250),
            &json!(1)
        )
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "once per key");
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn a_panicking_handler_answers_500_stores_nothing_and_the_retry_executes() {
    let panicked = Arc::new(AtomicBool::new(false));
    let flag = panicked.clone();
    let server = MockServer::builder()
        .route(
            Route::post("/v1/charges")
                .name("charge")
                .handler(move |request| {
                    if !flag.swap(true, Ordering::SeqCst) {
                        panic!("the handler's own bug");
                    }
                    MockResponse::json(200, &json!({"amount": request.body["amount"]}))
                }),
        )
        .start()
        .await
        .unwrap();
    let resp = fast_client()
        .post_idempotent(format!("{}/v1/charges", server.uri()))
        .form(&[("amount", "300")])
        .send()
        .await
        .unwrap();
    // The 500 was retried with the same key, which was free again, and executed.
    assert_eq!((resp.status().as_u16(), resp.attempts()), (200, 2));
    assert!(!resp.is_replay());
    assert!(panicked.load(Ordering::SeqCst));
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"amount": "300"})
    );
    assert_eq!(server.executions(), 1);
    let charge = server.route_stats("charge").unwrap();
    assert_eq!((charge.requests, charge.executions), (2, 1));
}

#[tokio::test]
async fn an_answer_http_cannot_carry_is_a_500_naming_the_route() {
    let server = MockServer::builder()
        .route(
            Route::post("/bad-header")
                .name("bad")
                .handler(|_| MockResponse::new(200).header("X-Bad", "line\nbreak")),
        )
        .route(Route::get("/bad-status").handler(|_| MockResponse::new(99)))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/bad-header", server.uri()))
        .header("idempotency-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let problem: Value = resp.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("\"bad\"") && detail.contains("X-Bad"),
        "{detail}"
    );
    let resp = http
        .get(format!("{}/bad-status", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await.unwrap().contains("status 99"));
    assert_eq!(server.executions(), 0);
}

#[tokio::test]
async fn a_read_handler_answers_every_request_from_the_callers_state() {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let server = MockServer::builder()
        .route(Route::get("/v1/balance").name("balance").handler(move |_| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            MockResponse::json(200, &json!({"reads": n}))
        }))
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    for n in 1..=3 {
        let body: Value = http
            .get(format!("{}/v1/balance", server.uri()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body, json!({"reads": n}));
    }
    assert_eq!(server.route_stats("balance").unwrap().executions, 3);
}
