//! The bundled mock server over real sockets: its idempotency rules, faults, read-back,
//! and the client against it end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::time::Duration;

use http::StatusCode;
use idempotent_retry::{IdempotencyKey, RetryPolicy};
use idempotent_retry_mock::{Fault, MockServer};
use serde_json::{Value, json};
use support::{fast_builder, fast_policy};

/// A plain reqwest POST with a key and no retries.
async fn post(
    http: &reqwest::Client,
    server: &MockServer,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = http
        .post(format!("{}/orders", server.uri()))
        .timeout(Duration::from_secs(5))
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

async fn problem_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    (status, body)
}

#[tokio::test]
async fn first_request_executes_and_echoes() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    let resp = post(&http, &server, Some("k1"), &json!({"sku": "tea", "qty": 2})).await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/orders");
    assert_eq!(body["body"], json!({"sku": "tea", "qty": 2}));
    assert!(body["id"].is_u64());
    assert_eq!(server.executions(), 1);
    assert_eq!(server.executions_for("k1"), 1);
}

#[tokio::test]
async fn a_replay_is_byte_identical() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    let first = post(&http, &server, Some("k1"), &json!({"a": 1})).await;
    let (first_headers, first_body) = (first.headers().clone(), first.bytes().await.unwrap());
    let again = post(&http, &server, Some("k1"), &json!({"a": 1})).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["content-type"], "application/json");
    for (name, value) in &first_headers {
        if name != "content-length" {
            assert_eq!(again.headers().get(name), Some(value), "{name}");
        }
    }
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!((server.executions(), server.replays()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_with_one_key_execute_once() {
    let server = MockServer::builder()
        .processing_delay(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/orders", server.uri());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let request = client
            .post(&url)
            .header("idempotency-key", "same")
            .json(&json!({"n": 1}));
        tasks.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&201));
    assert_eq!(server.executions(), 1);
    assert_eq!(server.executions_for("same"), 1);
    let created = statuses.iter().filter(|s| **s == 201).count() as u64;
    assert_eq!(created, 1 + server.replays());
    assert_eq!(server.conflicts(), 100 - created);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_422() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    post(&http, &server, Some("k"), &json!({"a": 1})).await;
    let (status, _) = problem_of(post(&http, &server, Some("k"), &json!({"a": 2})).await).await;
    assert_eq!(status, 422);
    let other_path = reqwest::Client::new()
        .post(format!("{}/elsewhere", server.uri()))
        .header("idempotency-key", "k")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_path.status(), 422);
    assert_eq!((server.executions(), server.mismatches()), (1, 2));
}

#[tokio::test]
async fn missing_and_bad_keys_are_400() {
    let server = MockServer::builder()
        .require_key(true)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let (status, body) = problem_of(post(&http, &server, None, &json!({})).await).await;
    assert_eq!(status, 400);
    assert!(body["detail"].as_str().unwrap().contains("idempotency-key"));
    let long = "k".repeat(256);
    // (`"unterminated` would be a valid bare key: quotes are visible ASCII.)
    for bad in [
        "",
        "has space",
        "\"bad\\escape\"",
        "\"in\"side\"",
        long.as_str(),
    ] {
        let (status, _) = problem_of(post(&http, &server, Some(bad), &json!({})).await).await;
        assert_eq!(status, 400, "{bad:?}");
    }
    let non_ascii = reqwest::Client::new()
        .post(server.uri())
        .header(
            "idempotency-key",
            http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(non_ascii.status(), 400);
    assert_eq!(server.executions(), 0);
    // The server keeps serving good requests.
    assert_eq!(
        post(&http, &server, Some("fine"), &json!({}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn structured_and_bare_keys_are_the_same_key() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    assert_eq!(
        post(&http, &server, Some("abc"), &json!({})).await.status(),
        201
    );
    let again = post(&http, &server, Some("\"abc\""), &json!({})).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn oversized_and_invalid_bodies_are_rejected_without_executing() {
    let server = MockServer::builder()
        .max_body_bytes(100)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let big = json!({"pad": "x".repeat(200)});
    let (status, _) = problem_of(post(&http, &server, Some("big"), &big).await).await;
    assert_eq!(status, 413);
    let invalid = reqwest::Client::new()
        .post(server.uri())
        .header("idempotency-key", "bad-json")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, _) = problem_of(invalid).await;
    assert_eq!(status, 400);
    assert_eq!(server.executions(), 0);
    // Neither request left its key in flight.
    assert_eq!(
        post(&http, &server, Some("bad-json"), &json!({}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn every_kind_of_body_is_echoed() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    let cases: [(&str, Option<&str>, &str, Value); 6] = [
        // JSON is echoed as sent, whitespace and all.
        (
            "json",
            Some("application/json"),
            r#"{"a": 1,  "b":[1, 2]}"#,
            json!({"a": 1, "b": [1, 2]}),
        ),
        (
            "patch",
            Some("application/merge-patch+json; charset=utf-8"),
            r#"{"a":null}"#,
            json!({"a": null}),
        ),
        // Untyped or text bodies: JSON if they parse as JSON, else a string.
        ("untyped", None, "[1,2]", json!([1, 2])),
        (
            "text",
            Some("text/plain"),
            r#"say "hi" \ bye"#,
            json!(r#"say "hi" \ bye"#),
        ),
        ("number-text", Some("text/plain"), "42", json!(42)),
        ("empty", Some("application/json"), "", Value::Null),
    ];
    for (key, content_type, body, echoed) in cases {
        let mut request = http
            .post(format!("{}/orders", server.uri()))
            .header("idempotency-key", key)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 201, "{key}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{key}");
        let raw = resp.text().await.unwrap();
        if key == "json" {
            assert!(raw.starts_with(&format!(r#"{{"body":{body},"#)), "{raw}");
        }
        let created: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(created["body"], echoed, "{key}: {raw}");
        assert_eq!(created["path"], "/orders", "{key}");
        assert!(created["id"].is_u64(), "{key}");
    }
}

#[tokio::test]
async fn form_bodies_are_echoed_as_objects() {
    let server = MockServer::start().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/charges", server.uri()))
        .header("idempotency-key", "f")
        .form(&[("amount", "10"), ("currency", "eur")])
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["body"], json!({"amount": "10", "currency": "eur"}));
}

#[tokio::test]
async fn keys_are_scoped_by_authorization() {
    let server = MockServer::start().await;
    let send = |auth: &'static str, body: Value| {
        let url = server.uri();
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("authorization", auth)
                .header("idempotency-key", "guessable-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            (resp.json::<Value>().await.unwrap(), replayed)
        }
    };
    let (alice, _) = send("Bearer alice", json!({"card": "alice"})).await;
    let (mallory, replayed) = send("Bearer mallory", json!({"card": "alice"})).await;
    assert!(
        !replayed,
        "another scope must not see alice's stored response"
    );
    assert_ne!(alice["id"], mallory["id"]);
    let (alice_again, replayed) = send("Bearer alice", json!({"card": "alice"})).await;
    assert!(replayed);
    assert_eq!(alice_again, alice);
    assert_eq!(server.executions(), 2);
}

#[tokio::test]
async fn expired_keys_execute_again() {
    let ttl = Duration::from_millis(50);
    let server = MockServer::builder().key_ttl(ttl).start().await.unwrap();
    let http = reqwest::Client::new();
    post(&http, &server, Some("k"), &json!({})).await;
    assert_eq!(
        post(&http, &server, Some("k"), &json!({})).await.headers()["idempotent-replayed"],
        "true"
    );
    // Past the TTL by definition: the store compares against the time the key was stored.
    tokio::time::sleep(ttl * 2).await;
    let again = post(&http, &server, Some("k"), &json!({})).await;
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(server.executions_for("k"), 2);
}

#[tokio::test]
async fn the_store_bound_holds() {
    let server = MockServer::builder().max_keys(50).start().await.unwrap();
    let http = reqwest::Client::new();
    for i in 0..500 {
        assert_eq!(
            post(&http, &server, Some(&format!("key-{i}")), &json!({}))
                .await
                .status(),
            201
        );
    }
    assert_eq!(server.executions(), 500);
    assert!(server.stats().stored_keys <= 50, "{:?}", server.stats());
    // The newest keys are still remembered.
    assert_eq!(
        post(&http, &server, Some("key-499"), &json!({}))
            .await
            .headers()["idempotent-replayed"],
        "true"
    );
}

#[tokio::test]
async fn each_fault_does_what_it_says_on_the_wire() {
    let server = MockServer::start().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let send = |key: &'static str| {
        client
            .post(server.uri())
            .header("idempotency-key", key)
            .json(&json!({}))
            .send()
    };
    let cases: Vec<(Fault, u64)> = vec![
        (Fault::StatusBeforeProcessing(StatusCode::BAD_GATEWAY), 0),
        (
            Fault::StatusAfterProcessing(StatusCode::INTERNAL_SERVER_ERROR),
            1,
        ),
        (Fault::DelayAfterProcessing(Duration::from_secs(2)), 1),
        (Fault::DropBeforeProcessing, 0),
        (Fault::DropAfterProcessing, 1),
        (
            Fault::RateLimited {
                retry_after: Duration::from_millis(1500),
            },
            0,
        ),
    ];
    for (n, (fault, executed)) in cases.into_iter().enumerate() {
        server.reset();
        server.inject(fault.clone(), 1);
        let key: &'static str = ["k0", "k1", "k2", "k3", "k4", "k5"][n];
        let result = send(key).await;
        match &fault {
            Fault::StatusBeforeProcessing(s) | Fault::StatusAfterProcessing(s) => {
                assert_eq!(result.unwrap().status(), *s)
            }
            Fault::RateLimited { .. } => {
                let resp = result.unwrap();
                assert_eq!(resp.status(), 429);
                assert_eq!(resp.headers()["retry-after"], "2", "rounded up");
            }
            Fault::DelayAfterProcessing(_) => assert!(result.unwrap_err().is_timeout()),
            _ => assert!(result.is_err(), "{fault:?} should close the connection"),
        }
        assert_eq!(server.executions(), executed, "{fault:?}");
        // The next request (no fault left) gets the stored result, or executes now.
        let resp = send(key).await.unwrap();
        assert_eq!(resp.status(), 201, "{fault:?}");
        assert_eq!(
            resp.headers().contains_key("idempotent-replayed"),
            executed == 1,
            "{fault:?}"
        );
        assert_eq!(server.executions(), 1, "{fault:?}");
    }
}

#[tokio::test]
async fn the_client_gets_exactly_once_through_every_fault() {
    let server = MockServer::start().await;
    let client = fast_builder()
        .attempt_timeout(Duration::from_millis(200))
        .retry_policy(fast_policy())
        .build()
        .unwrap();
    // `Retry-After: 0` keeps this fast: a server's wait is honoured, never cut short.
    for fault in Fault::all_kinds(Duration::from_secs(1), Duration::ZERO) {
        server.reset();
        server.inject(fault.clone(), 2);
        let resp = client
            .post_idempotent(format!("{}/orders", server.uri()))
            .json(&json!({"fault": format!("{fault:?}")}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(resp.status(), 201, "{fault:?}");
        assert_eq!(resp.attempts(), 3, "{fault:?}");
        let key = resp.idempotency_key().as_str().to_owned();
        assert_eq!(server.executions_for(&key), 1, "{fault:?}");
        assert_eq!(server.executions(), 1, "{fault:?}");
        assert!(server.duplicates().is_empty());
        let after = !matches!(
            fault,
            Fault::StatusBeforeProcessing(_)
                | Fault::DropBeforeProcessing
                | Fault::RateLimited { .. }
                | Fault::DelayBeforeProcessing(_)
                | Fault::ResetBeforeProcessing
        );
        assert_eq!(resp.is_replay(), after, "{fault:?}");
        let created: Value = resp.json().await.unwrap();
        assert_eq!(created["path"], "/orders");
        // Every attempt the server logged carried the one key.
        let logged: Vec<_> = server.requests().into_iter().map(|r| r.key).collect();
        assert_eq!(logged, vec![Some(key); 3], "{fault:?}");
    }
}

#[tokio::test]
async fn a_stored_result_survives_a_client_that_gave_up() {
    let server = MockServer::builder()
        .processing_delay(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let key = IdempotencyKey::new_v4();
    let err = fast_builder()
        .attempt_timeout(Duration::from_millis(50))
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .idempotency_key(key.clone())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout() && err.is_outcome_unknown());
    // The operation goes on without its client; a retry meanwhile is told to wait (409)
    // and, once it is done, gets the stored result.
    let resp = fast_builder()
        .retry_policy(
            fast_policy()
                .max_attempts(20)
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(50)),
        )
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .idempotency_key(key.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.is_replay());
    assert!(
        resp.attempts() >= 2,
        "the first resumed attempt met the key in flight"
    );
    assert_eq!(server.executions_for(key.as_str()), 1);
    assert!(server.conflicts() >= 1);
}

#[tokio::test]
async fn the_request_log_and_reset() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    post(&http, &server, Some("logged"), &json!({})).await;
    let patch = reqwest::Client::new()
        .patch(format!("{}/items/7", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(patch.status(), 201);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (
            log[0].method.as_str(),
            log[0].path.as_str(),
            log[0].key.as_deref()
        ),
        ("POST", "/orders", Some("logged"))
    );
    assert_eq!(
        (
            log[1].method.as_str(),
            log[1].path.as_str(),
            log[1].key.as_deref()
        ),
        ("PATCH", "/items/7", None)
    );
    assert!(log[0].at <= log[1].at);
    server.reset();
    assert_eq!(server.stats().requests, 0);
    assert!(server.requests().is_empty());
    assert_eq!(
        post(&http, &server, Some("logged"), &json!({}))
            .await
            .status(),
        201
    );
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn admin_endpoints() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("{}/__admin/{path}", server.uri());
    for (body, queued) in [
        (json!({"fault": "drop_after_processing", "times": 2}), 2),
        (
            json!({"fault": "status_after_processing", "status": 503, "times": 1}),
            3,
        ),
        (
            json!({"fault": "delay_after_processing", "delay": "500ms", "times": 1}),
            4,
        ),
        (
            json!({"fault": "rate_limited", "retry_after": "1s", "times": 1}),
            5,
        ),
    ] {
        let resp = http.post(admin("faults")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{body}");
        assert_eq!(resp.json::<Value>().await.unwrap()["queued"], queued);
    }
    for bad in [
        json!({"fault": "explode"}),
        json!({"fault": "rate_limited"}),
        json!("drop"),
    ] {
        let resp = http.post(admin("faults")).json(&bad).send().await.unwrap();
        assert_eq!(problem_of(resp).await.0, 400, "{bad}");
    }
    let stats: Value = http
        .get(admin("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["faults_queued"], 5);
    assert_eq!(stats["executions"], 0);
    assert_eq!(stats["duplicates"], json!([]));
    assert_eq!(
        http.post(admin("reset")).send().await.unwrap().status(),
        200
    );
    assert_eq!(server.stats().faults_queued, 0);
    assert_eq!(
        http.get(admin("nothing")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        http.get(format!("{}/orders", server.uri()))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

#[test]
fn works_from_a_plain_test_and_stops_on_drop() {
    let server = MockServer::builder().start_blocking().unwrap();
    let addr = server.address();
    std::net::TcpStream::connect(addr).unwrap();
    drop(server);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}

#[test]
fn bad_builder_settings_are_errors() {
    let over = MockServer::builder().fault_rates([
        (Fault::DropAfterProcessing, 0.8),
        (Fault::DropBeforeProcessing, 0.8),
    ]);
    assert!(matches!(
        over.start_blocking(),
        Err(idempotent_retry_mock::MockError::InvalidConfig { .. })
    ));
    assert!(
        MockServer::builder()
            .key_header("bad header")
            .start_blocking()
            .is_err()
    );
    let taken = MockServer::builder().start_blocking().unwrap();
    let clash = MockServer::builder().addr(taken.address()).start_blocking();
    assert!(matches!(
        clash,
        Err(idempotent_retry_mock::MockError::Io { .. })
    ));
}

/// Kills the child process even when an assertion fails first.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Queues `fault` on a standalone server through its admin API.
async fn queue_fault(http: &reqwest::Client, base: &str, fault: Value) {
    let resp = http
        .post(format!("{base}/__admin/faults"))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{fault}");
}

/// Starts the standalone binary with `args` (its standard error piped), and returns it
/// with the base URL it prints once listening.
fn start_binary(args: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().strip_prefix("listening on ");
    let base = base.unwrap_or_else(|| panic!("{line}")).to_owned();
    (child, base)
}

#[tokio::test]
async fn the_standalone_binary_serves_and_takes_admin_faults() {
    let (_child, base) = start_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--require-key",
        "--key-ttl",
        "1h",
        "--seed",
        "3",
    ]);
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let http = reqwest::Client::new();
    let no_key = http
        .post(format!("{base}/orders"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400, "--require-key");
    // Each POST takes the next queued fault, so queue it only now.
    queue_fault(
        &http,
        &base,
        json!({"fault": "drop_after_processing", "times": 1}),
    )
    .await;

    let resp = fast_builder()
        .build()
        .unwrap()
        .post_idempotent(format!("{base}/orders"))
        .json(&json!({"sku": "tea"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.attempts(), resp.is_replay()),
        (201, 2, true)
    );

    let stats: Value = http
        .get(format!("{base}/__admin/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["executions"], 1);
    assert_eq!(stats["replays"], 1);
    assert_eq!(stats["duplicates"], json!([]));
}

#[test]
fn the_binary_rejects_bad_flags() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
        .args(["--fault-rate", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 0 and 1"));
}

#[tokio::test]
async fn guessed_keys_from_another_scope_neither_replay_nor_reveal() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    let send = |auth: &'static str, key: String, body: Value| {
        http.post(format!("{}/payments", server.uri()))
            .header("authorization", auth)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    for n in 0..20 {
        let body = json!({"to": "alice", "n": n});
        let resp = send("Bearer alice", format!("pay-{n}"), body)
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    // Mallory sends alice's exact keys, half with her own body, half with alice's.
    for n in 0..20 {
        let body = if n % 2 == 0 {
            json!({"to": "mallory"})
        } else {
            json!({"to": "alice", "n": n})
        };
        let resp = send("Bearer mallory", format!("pay-{n}"), body.clone())
            .await
            .unwrap();
        // A 409 or 422 would tell mallory the key exists; a replay would leak the result.
        assert_eq!(resp.status(), 201);
        assert!(!resp.headers().contains_key("idempotent-replayed"));
        let created: Value = resp.json().await.unwrap();
        assert_eq!(
            created["body"], body,
            "mallory got someone else's stored body"
        );
    }
    assert_eq!(
        server.replays() + server.conflicts() + server.mismatches(),
        0
    );
    assert_eq!(server.executions(), 40);
}

/// Sends one keyed POST over a raw connection and reads until the server closes it:
/// what came back, or the read error that ended it.
async fn raw_exchange(server: &MockServer, key: &str) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    let request = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{{\"sku\":\"tea\"}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

#[tokio::test]
async fn the_wire_faults_do_on_the_socket_what_they_say() {
    let server = MockServer::start().await;

    server.inject(Fault::ResetAfterProcessing, 1);
    let (got, error) = raw_exchange(&server, "reset").await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(error, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(server.executions_for("reset"), 1);

    server.inject(Fault::ResetBeforeProcessing, 1);
    let (_, error) = raw_exchange(&server, "reset-before").await;
    assert_eq!(error, Some(std::io::ErrorKind::ConnectionReset));
    assert_eq!(server.executions_for("reset-before"), 0);

    // A clean drop, for contrast, is an end of stream, not a reset.
    server.inject(Fault::DropAfterProcessing, 1);
    assert_eq!(raw_exchange(&server, "drop").await, (Vec::new(), None));

    server.inject(Fault::GarbageAfterProcessing, 1);
    let (got, _) = raw_exchange(&server, "garbage").await;
    assert!(!got.is_empty());
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    assert_eq!(server.executions_for("garbage"), 1);

    server.inject(Fault::TruncateAfterProcessing, 1);
    let (got, _) = raw_exchange(&server, "cut").await;
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 201"), "{head}");
    let declared: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !body.is_empty() && body.len() < declared,
        "{} of {declared}: {body}",
        body.len()
    );
    assert_eq!(server.executions_for("cut"), 1);

    // The same key afterwards gets the whole stored answer.
    let (got, error) = raw_exchange(&server, "cut").await;
    assert_eq!(error, None);
    assert!(
        String::from_utf8(got)
            .unwrap()
            .contains("idempotent-replayed: true")
    );
}

#[tokio::test]
async fn a_request_stalled_before_processing_executes_after_the_stall() {
    let server = MockServer::start().await;
    server.inject(Fault::DelayBeforeProcessing(Duration::from_millis(50)), 1);
    let started = std::time::Instant::now();
    let resp = fast_builder()
        .build()
        .unwrap()
        .post_idempotent(format!("{}/orders", server.uri()))
        .json(&json!({"sku": "tea"}))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!((resp.status().as_u16(), resp.attempts()), (201, 1));
    assert_eq!(server.executions(), 1);
}

/// Sends `head` and `body` on a raw connection without reading, then reads the answer's
/// status line, within a bound.
async fn status_after(server: &MockServer, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer, without the rest of the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body() {
    let server = MockServer::builder()
        .max_body_bytes(1024)
        .start()
        .await
        .unwrap();
    // 10 MB declared, 10 bytes sent: the server must not wait for the rest.
    let head = "POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: big\r\n\
                Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n";
    let status = status_after(&server, head, b"{\"pad\":\"x").await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    // A chunked body declares nothing: it is read up to the limit, then refused.
    let head = "POST /orders HTTP/1.1\r\nHost: x\r\nIdempotency-Key: chunked\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
    let status = status_after(&server, head, chunk.as_bytes()).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(server.executions(), 0);
}

#[tokio::test]
async fn a_queued_fault_waits_for_a_request_the_server_processes() {
    for routed in [false, true] {
        let mut builder = MockServer::builder().require_key(true);
        if routed {
            builder = builder.route(idempotent_retry_mock::Route::post("/orders").status(201));
        }
        let server = builder.start().await.unwrap();
        let http = reqwest::Client::new();
        server.inject(
            Fault::StatusBeforeProcessing(StatusCode::SERVICE_UNAVAILABLE),
            1,
        );

        // Refused before processing: no key, then a body that is not the JSON it claims.
        let resp = post(&http, &server, None, &json!({"sku": "tea"})).await;
        assert_eq!(resp.status(), 400, "routed: {routed}");
        let resp = http
            .post(format!("{}/orders", server.uri()))
            .header("idempotency-key", "bad-body")
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "routed: {routed}");

        // The fault is still queued for the first request the server processes.
        let resp = post(&http, &server, Some("k1"), &json!({"sku": "tea"})).await;
        assert_eq!(resp.status(), 503, "routed: {routed}");
        let resp = post(&http, &server, Some("k1"), &json!({"sku": "tea"})).await;
        assert_eq!(resp.status(), 201, "routed: {routed}");
        assert_eq!(server.executions(), 1, "routed: {routed}");
    }
}

#[tokio::test]
async fn replays_count_answers_from_the_store_even_when_a_fault_drops_them() {
    let server = MockServer::start().await;
    server.inject(Fault::DropAfterProcessing, 2);
    let http = reqwest::Client::new();
    let body = json!({"sku": "tea"});
    for _ in 0..2 {
        let sent = http
            .post(format!("{}/orders", server.uri()))
            .header("idempotency-key", "k1")
            .json(&body)
            .send()
            .await;
        assert!(sent.is_err(), "the answer was dropped");
    }
    let resp = post(&http, &server, Some("k1"), &body).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    // One execution; the second and third requests were answered from the store, and
    // the second of those answers was then dropped on the wire.
    assert_eq!(server.executions(), 1);
    assert_eq!(server.replays(), 2);
}

#[tokio::test]
async fn beyond_loopback_the_admin_api_needs_its_token() {
    let public: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = MockServer::builder()
        .addr(public)
        .start()
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("admin_token"), "{refused}");

    let server = MockServer::builder()
        .addr(public)
        .admin_token("s3cret-token")
        .start()
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", server.address().port());
    let http = reqwest::Client::new();
    let stats = |token: Option<&'static str>| {
        let mut request = http.get(format!("{base}/__admin/stats"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for wrong in [
        None,
        Some("s3cret"),
        Some("s3cret-token!"),
        Some("S3CRET-TOKEN"),
    ] {
        let resp = stats(wrong).await.unwrap();
        assert_eq!(resp.status(), 401, "{wrong:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    let resp = http
        .post(format!("{base}/__admin/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no reset without the token");
    assert_eq!(stats(Some("s3cret-token")).await.unwrap().status(), 200);

    // Operations need no token.
    let resp = http
        .post(format!("{base}/orders"))
        .header("idempotency-key", "k1")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(server.executions(), 1);
}

#[tokio::test]
async fn the_binary_logs_each_request_when_asked_and_tells_its_version() {
    use std::io::BufRead;
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!(
            "idempotent-mock-server {} (idempotent-retry-mock)",
            env!("CARGO_PKG_VERSION")
        )
    );

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_idempotent-mock-server"))
        .args(["--addr", "0.0.0.0:0"])
        .env_remove("IDEMPOTENT_MOCK_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("IDEMPOTENT_MOCK_ADMIN_TOKEN"), "{said}");

    let (mut child, base) = start_binary(&["--addr", "127.0.0.1:0", "--log-requests"]);
    let http = reqwest::Client::new();
    queue_fault(
        &http,
        &base,
        json!({"fault": "status_before_processing", "status": 503}),
    )
    .await;
    for _ in 0..3 {
        http.post(format!("{base}/orders"))
            .header("idempotency-key", "k1")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
    }
    let mut log = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut next = || log.next().unwrap().unwrap();
    assert_eq!(next(), "POST /__admin/faults key=- -> 200");
    assert_eq!(
        next(),
        "POST /orders key=k1 -> 503 fault=status_before_processing"
    );
    assert_eq!(next(), "POST /orders key=k1 -> 201");
    assert_eq!(next(), "POST /orders key=k1 -> 201 replayed");
}

#[tokio::test]
async fn an_outage_refuses_everything_but_the_admin_api_until_it_ends() {
    use idempotent_retry_mock::Outage;
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    server.outage(
        Outage::Status(StatusCode::SERVICE_UNAVAILABLE),
        Duration::from_secs(60),
    );
    let resp = post(&http, &server, Some("k1"), &json!({"sku": "tea"})).await;
    let (status, body) = problem_of(resp).await;
    assert_eq!(status, 503);
    assert_eq!(body["title"], "Outage");
    assert_eq!(server.executions(), 0, "nothing executes during an outage");
    // The admin API still answers, and the refused request is in the log.
    let stats = http
        .get(format!("{}/__admin/stats", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    assert_eq!(server.requests().len(), 1);

    // Dropped connections instead, through the admin API.
    let resp = http
        .post(format!("{}/__admin/outage", server.uri()))
        .json(&json!({"drop": true, "duration": "1m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = http
        .post(format!("{}/orders", server.uri()))
        .header("idempotency-key", "k1")
        .json(&json!({"sku": "tea"}))
        .send()
        .await;
    assert!(sent.is_err(), "the connection was dropped");

    // Ended: the same key executes once.
    server.outage(Outage::Drop, Duration::ZERO);
    let resp = post(&http, &server, Some("k1"), &json!({"sku": "tea"})).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(server.executions(), 1);

    // One that runs out by itself.
    server.outage(
        Outage::Status(StatusCode::BAD_GATEWAY),
        Duration::from_millis(20),
    );
    let mut polls = 0;
    loop {
        let resp = post(&http, &server, Some("k2"), &json!({"sku": "tea"})).await;
        if resp.status() == 201 {
            break;
        }
        assert_eq!(resp.status(), 502);
        polls += 1;
        assert!(polls < 200, "the outage never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.executions(), 2);
}

/// Whether each of `n` sequential orders to `server` was held back `stall` or longer.
async fn stalled_pattern(server: &MockServer, n: usize, stall: Duration) -> Vec<bool> {
    let http = reqwest::Client::new();
    let mut pattern = Vec::with_capacity(n);
    for i in 0..n {
        let started = std::time::Instant::now();
        let resp = post(
            &http,
            server,
            Some(&format!("s{i}")),
            &json!({"sku": "tea"}),
        )
        .await;
        assert_eq!(resp.status(), 201, "a stall delays, it does not fail");
        pattern.push(started.elapsed() >= stall);
    }
    pattern
}

#[tokio::test]
async fn a_share_of_requests_stalls_before_processing_drawn_from_the_seed() {
    let stall = Duration::from_millis(150);
    let start = || MockServer::builder().stall(0.5, stall).seed(11).start();
    let server = start().await.unwrap();
    let pattern = stalled_pattern(&server, 12, stall).await;
    let stalled = pattern.iter().filter(|s| **s).count() as u64;
    assert_eq!(
        server.stalled(),
        stalled,
        "each stall is counted: {pattern:?}"
    );
    assert!((1..12).contains(&stalled), "about half stall: {pattern:?}");
    assert_eq!(server.stats().stalled, stalled);
    assert_eq!(server.executions(), 12, "a stalled request still executes");

    // The same seed stalls the same requests.
    let again = start().await.unwrap();
    assert_eq!(stalled_pattern(&again, 12, stall).await, pattern);

    // Through the admin API: every request, then none.
    let http = reqwest::Client::new();
    let set = |body: Value| {
        let request = http.post(format!("{}/__admin/stall", again.uri()));
        async move { request.json(&body).send().await.unwrap() }
    };
    let on = set(json!({"share": 1.0, "duration": "20ms"})).await;
    assert_eq!(on.status(), 200);
    let before = again.stalled();
    assert_eq!(
        stalled_pattern(&again, 2, Duration::from_millis(20)).await,
        [true, true]
    );
    assert_eq!(again.stalled(), before + 2);
    let off = set(json!({"share": 0, "duration": "20ms"})).await;
    assert_eq!(off.status(), 200);
    stalled_pattern(&again, 2, Duration::from_millis(20)).await;
    assert_eq!(again.stalled(), before + 2, "a zero share ends stalls");
    let (status, body) = problem_of(set(json!({"share": 2, "duration": "1s"})).await).await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().contains("between 0 and 1"),
        "{body}"
    );
    assert!(again.stall(-0.1, stall).is_err());
}

#[tokio::test]
async fn a_stub_file_starts_the_server_in_an_outage_and_with_stalls() {
    let file = support::TempStub::new("stub-outage", "api.toml");
    let stub = |tables: &str| {
        file.write(&format!(
            "{tables}\n[[route]]\nmethod = \"POST\"\npath = \"/orders\"\nstatus = 201\n"
        ));
    };
    stub(
        "[outage]\nstatus = 503\nduration = \"1m\"\n\n[stall]\nshare = 1.0\nduration = \"30ms\"\n",
    );
    let server = MockServer::builder()
        .stubs_file(&file.path)
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let (status, body) = problem_of(post(&http, &server, Some("k1"), &json!({})).await).await;
    assert_eq!(
        (status, body["title"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("Outage"))
    );
    server.outage(idempotent_retry_mock::Outage::Drop, Duration::ZERO);
    assert_eq!(
        stalled_pattern(&server, 1, Duration::from_millis(30)).await,
        [true]
    );
    assert_eq!(server.stalled(), 1);

    stub("[stall]\nshare = 1.5\nduration = \"1s\"\n");
    let err = MockServer::builder()
        .stubs_file(&file.path)
        .check()
        .unwrap_err();
    assert!(err.to_string().contains("stall: stall share 1.5"), "{err}");
    stub("[outage]\nduration = \"1s\"\n");
    let err = MockServer::builder()
        .stubs_file(&file.path)
        .check()
        .unwrap_err();
    assert!(err.to_string().contains("outage: give either"), "{err}");
}

#[tokio::test]
async fn a_key_executed_in_two_scopes_is_a_duplicate() {
    let server = MockServer::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/orders", server.uri());
    // One key, sent with a credential and then without one (a resume that lost it):
    // each scope executes it once, which is twice for the operation.
    for auth in [Some("Bearer sk_one"), None] {
        let mut request = http
            .post(&url)
            .header("idempotency-key", "k-scoped")
            .json(&json!({}));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        assert_eq!(request.send().await.unwrap().status(), 201);
    }
    assert_eq!(server.executions(), 2);
    assert_eq!(server.duplicates(), ["k-scoped"]);
    let details = server.duplicate_details();
    assert_eq!(details.len(), 1);
    assert_eq!(details[0].executions, 2);
    let mut scopes = details[0].scopes.clone();
    scopes.sort();
    assert_eq!(scopes[0], "(no scope header)");
    assert!(scopes[1].starts_with("Bearer #"), "{scopes:?}");
    assert!(
        !scopes[1].contains("sk_one"),
        "the credential is never shown"
    );
    // The same key twice in one scope is still one execution and a replay.
    let again = http
        .post(&url)
        .header("idempotency-key", "k-scoped")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions(), 2);
}
