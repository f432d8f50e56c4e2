//! Proxy mode: the mock server in front of a real API (here, other mock servers
//! playing a correct one and one that executes every request), forwarding every
//! request, applying faults on either side of it, and telling per key what the
//! upstream did.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idempotent_retry_mock::{
    Fault, MockError, MockResponse, MockServer, Route, StatusCode, Verdict,
};
use serde_json::{Value, json};
use support::fast_client;

/// A proxy in front of `upstream`, comparing answers by their `/id`.
async fn proxy_for(upstream: &MockServer) -> MockServer {
    MockServer::builder()
        .upstream(upstream.uri())
        .id_pointer("/id")
        .start()
        .await
        .unwrap()
}

/// One keyed POST through plain reqwest: status, replay header, body.
async fn post(url: &str, key: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("idempotency-key", key)
        .json(&json!({ "sku": "tea" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        replayed,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_upstreams_answer_comes_back_as_it_came_and_the_proxy_stores_nothing() {
    let upstream = MockServer::start().await;
    let proxy = proxy_for(&upstream).await;
    let url = format!("{}/orders", proxy.uri());

    let (status, replayed, first) = post(&url, "k-1").await;
    assert_eq!((status, replayed), (201, None));
    assert_eq!(first["path"], "/orders", "the upstream's own answer");
    let (status, replayed, again) = post(&url, "k-1").await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first);

    assert_eq!(upstream.executions(), 1);
    assert_eq!(proxy.executions(), 0, "the proxy executes nothing itself");
    let keys = proxy.keys();
    assert_eq!(keys.len(), 1);
    let report = &keys[0];
    assert_eq!(report.key, "k-1");
    assert_eq!(report.verdict, Verdict::Consistent);
    assert_eq!(report.exchanges.len(), 2);
    let ids: Vec<_> = report
        .exchanges
        .iter()
        .map(|e| e.resource_id.clone())
        .collect();
    assert_eq!(ids, [Some("1".to_owned()), Some("1".to_owned())]);
    assert_eq!(report.exchanges[1].replayed.as_deref(), Some("true"));
    assert_eq!(
        report.exchanges[0].body_digest,
        report.exchanges[1].body_digest
    );
    assert_eq!(proxy.stats().diverged_keys, 0);
}

#[tokio::test]
async fn a_lost_answer_after_the_upstream_processed_it_is_retried_and_replayed() {
    let upstream = MockServer::start().await;
    let proxy = proxy_for(&upstream).await;
    proxy.inject(Fault::DropAfterProcessing, 1);

    let response = fast_client()
        .post_idempotent(format!("{}/orders", proxy.uri()))
        .json(&json!({ "sku": "tea" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(response.is_replay(), "the upstream's stored answer");
    assert_eq!(response.attempts(), 2);
    assert_eq!(upstream.executions(), 1, "the upstream ran it once");

    let keys = proxy.keys();
    assert_eq!(keys.len(), 1);
    let exchanges = &keys[0].exchanges;
    assert_eq!(exchanges[0].fault.as_deref(), Some("drop_after_processing"));
    assert_eq!(exchanges[0].status, Some(201), "the upstream had answered");
    assert_eq!(exchanges[1].fault, None);
    assert_eq!(keys[0].verdict, Verdict::Consistent);
}

#[tokio::test]
async fn a_fault_before_processing_forwards_nothing() {
    let upstream = MockServer::start().await;
    let proxy = proxy_for(&upstream).await;
    proxy.inject(
        Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
        1,
    );
    let (status, _, _) = post(&format!("{}/orders", proxy.uri()), "k-before").await;
    assert_eq!(status, 503);
    assert_eq!(upstream.stats().requests, 0, "nothing reached the upstream");
    assert!(proxy.keys().is_empty());
}

#[tokio::test]
async fn an_upstream_that_executes_every_request_is_caught_diverging() {
    let executed = Arc::new(AtomicU64::new(0));
    let counter = executed.clone();
    // A server with no idempotency store: every request creates a new order.
    let upstream = MockServer::builder()
        .route(Route::post("/orders").store(false).handler(move |_| {
            let id = counter.fetch_add(1, Ordering::Relaxed) + 1;
            MockResponse::json(201, &json!({ "id": format!("ord_{id}") }))
        }))
        .start()
        .await
        .unwrap();
    let proxy = proxy_for(&upstream).await;
    let url = format!("{}/orders", proxy.uri());
    post(&url, "k-twice").await;
    post(&url, "k-twice").await;
    post(&url, "k-once").await;

    assert_eq!(executed.load(Ordering::Relaxed), 3);
    let keys = proxy.keys();
    let verdicts: Vec<_> = keys.iter().map(|k| (k.key.as_str(), k.verdict)).collect();
    assert_eq!(
        verdicts,
        [("k-once", Verdict::Unknown), ("k-twice", Verdict::Diverged)]
    );
    let twice = &keys[1].exchanges;
    assert_eq!(twice[0].resource_id.as_deref(), Some("ord_1"));
    assert_eq!(twice[1].resource_id.as_deref(), Some("ord_2"));
    assert_eq!(proxy.stats().diverged_keys, 1);

    // The same read-back over the admin API.
    let admin: Value = reqwest::get(format!("{}/__admin/keys", proxy.uri()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(admin[1]["key"], "k-twice");
    assert_eq!(admin[1]["verdict"], "diverged");
    let stats: Value = reqwest::get(format!("{}/__admin/stats", proxy.uri()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["diverged_keys"], 1);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_recorded_as_no_answer() {
    let gone = MockServer::start().await;
    let uri = gone.uri();
    drop(gone);
    let proxy = MockServer::builder().upstream(uri).start().await.unwrap();
    let (status, _, body) = post(&format!("{}/orders", proxy.uri()), "k-gone").await;
    assert_eq!(status, 502);
    assert!(
        body["detail"].as_str().unwrap().contains("no answer"),
        "{body}"
    );
    let keys = proxy.keys();
    assert_eq!(keys[0].exchanges[0].status, None);
    assert!(keys[0].exchanges[0].error.is_some());
}

#[tokio::test]
async fn bad_proxy_settings_are_refused_before_start() {
    let refused = |builder: idempotent_retry_mock::MockServerBuilder| match builder.start_blocking()
    {
        Err(MockError::InvalidConfig { reason, .. }) => reason,
        other => panic!("expected InvalidConfig, got {other:?}"),
    };
    let not_http = refused(MockServer::builder().upstream("ftp://example.com"));
    assert!(not_http.contains("http:// or https://"), "{not_http}");
    let not_a_url = refused(MockServer::builder().upstream("127.0.0.1:8080"));
    assert!(not_a_url.contains("upstream"), "{not_a_url}");
    let alone = refused(MockServer::builder().id_pointer("/id"));
    assert!(alone.contains("set upstream"), "{alone}");
    let pointer = refused(
        MockServer::builder()
            .upstream("http://127.0.0.1:1")
            .id_pointer("id"),
    );
    assert!(pointer.contains("starts with '/'"), "{pointer}");
}

#[tokio::test]
async fn routes_bring_their_own_faults_and_rate_limits_in_proxy_mode() {
    let upstream = MockServer::start().await;
    let proxy = MockServer::builder()
        .upstream(upstream.uri())
        .route(Route::post("/orders").name("orders"))
        .route(Route::post("/limited").rate_limit(1, 1))
        .start()
        .await
        .unwrap();
    proxy
        .inject_route(
            "orders",
            Fault::StatusAfterProcessing(StatusCode::BAD_GATEWAY),
            1,
        )
        .unwrap();
    // Another path takes no route and no fault.
    let (status, _, _) = post(&format!("{}/other", proxy.uri()), "k-other").await;
    assert_eq!(status, 201);
    let (status, _, _) = post(&format!("{}/orders", proxy.uri()), "k-orders").await;
    assert_eq!(status, 502, "the route's fault, after the upstream ran it");
    assert_eq!(upstream.executions_for("k-orders"), 1);
    assert_eq!(proxy.route_stats("orders").unwrap().requests, 1);

    let url = format!("{}/limited", proxy.uri());
    assert_eq!(post(&url, "k-l1").await.0, 201);
    assert_eq!(
        post(&url, "k-l2").await.0,
        429,
        "past the route's rate limit"
    );
    assert_eq!(
        upstream.executions_for("k-l2"),
        0,
        "refused before forwarding"
    );
}

#[tokio::test]
async fn a_correct_upstream_under_every_fault_never_diverges() {
    // The chaos demo's mix, on the proxy: 30 % of requests faulted, every kind.
    let upstream = MockServer::start().await;
    let proxy = MockServer::builder()
        .upstream(upstream.uri())
        .id_pointer("/id")
        .seed(42)
        .fault_rate(0.3)
        .start()
        .await
        .unwrap();
    let client = support::fast_builder()
        .retry_policy(support::fast_policy().max_attempts(10))
        .build()
        .unwrap();
    let url = format!("{}/orders", proxy.uri());
    // 20 workers, 10 operations each.
    let workers = (0..20).map(|worker| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut succeeded = 0;
            for n in 0..10 {
                let sent = client
                    .post_idempotent(&url)
                    .json(&json!({ "worker": worker, "n": n }))
                    .send()
                    .await;
                succeeded += u32::from(sent.is_ok_and(|r| r.status() == 201));
            }
            succeeded
        })
    });
    let mut succeeded = 0;
    for worker in workers.collect::<Vec<_>>() {
        succeeded += worker.await.unwrap();
    }
    let keys = proxy.keys();
    assert_eq!(keys.len(), 200, "one key per operation, each forwarded");
    assert!(keys.iter().all(|k| k.verdict != Verdict::Diverged));
    assert_eq!(proxy.stats().diverged_keys, 0);
    assert!(upstream.duplicates().is_empty());
    println!("{succeeded} of 200 succeeded");
    assert!(succeeded >= 190, "{succeeded} of 200 succeeded");
    let faulted = keys
        .iter()
        .flat_map(|k| &k.exchanges)
        .filter(|e| e.fault.is_some())
        .count();
    assert!(faulted > 0, "after-processing faults were applied");
}
