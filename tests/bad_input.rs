//! The bad-input table of the README, one test per row: each input gets a typed client
//! error or a 4xx, the server keeps serving, and nothing stored is lost or corrupted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use idempotent_retry::{Error, IdempotencyKey, KeyFormat, RetryPolicy};
use idempotent_retry_mock::MockServer;
use serde_json::{Value, json};
use support::{fast_builder, fast_client, server_failing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

// ---- client side -------------------------------------------------------------------

fn assert_invalid_key(text: &str) {
    assert!(
        matches!(IdempotencyKey::parse(text), Err(Error::InvalidKey { .. })),
        "{text:?} was accepted"
    );
}

#[test]
fn c01_empty_key() {
    assert_invalid_key("");
}

#[test]
fn c02_key_of_256_chars() {
    assert_invalid_key(&"k".repeat(256));
}

#[test]
fn c03_key_with_control_characters() {
    for key in ["a\nb", "a\rb", "a\0b", "tab\there", "del\u{7f}"] {
        assert_invalid_key(key);
    }
}

#[test]
fn c04_non_ascii_key() {
    assert_invalid_key("clé-1");
    assert_invalid_key("ключ");
}

/// Sends `request` to a server that would answer 201, and checks it never got there.
async fn rejected_before_io(
    build: impl FnOnce(&str) -> idempotent_retry::IdempotentRequestBuilder,
) -> Error {
    let server = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&server)
        .await;
    let err = build(&server.uri()).send().await.unwrap_err();
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        0,
        "a request was sent"
    );
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
    assert_eq!(err.attempts(), 0);
    err
}

#[tokio::test]
async fn c05_key_with_quotes_in_structured_form() {
    let client = fast_builder()
        .key_format(KeyFormat::StructuredString)
        .build()
        .unwrap();
    let key = IdempotencyKey::parse("say\"hi\"").unwrap();
    rejected_before_io(|url| client.post_idempotent(url).idempotency_key(key)).await;
}

#[tokio::test]
async fn c06_key_header_set_by_hand() {
    rejected_before_io(|url| {
        fast_client()
            .post_idempotent(url)
            .header("idempotency-key", "mine")
    })
    .await;
}

#[tokio::test]
async fn c07_malformed_header() {
    rejected_before_io(|url| {
        fast_client()
            .post_idempotent(url)
            .header("x-note", "line\r\nbreak")
    })
    .await;
    rejected_before_io(|url| fast_client().post_idempotent(url).header("bad name", "v")).await;
}

#[tokio::test]
async fn c08_body_that_cannot_be_serialized_as_json() {
    let mut map = HashMap::new();
    map.insert((1, 2), "tuple keys are not JSON object keys");
    let err = rejected_before_io(|url| fast_client().post_idempotent(url).json(&map)).await;
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn c09_invalid_url() {
    let err = fast_client()
        .post_idempotent("http://")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err:?}");
}

/// The delay the client chose after a 503 carrying this `Retry-After`.
async fn delay_after(retry_after: &str, cap: Duration) -> Duration {
    let first = ResponseTemplate::new(503).insert_header("retry-after", retry_after);
    let server = server_failing(first, 1).await;
    let (delays, hook) = support::delay_recorder();
    let resp = fast_builder()
        .retry_policy(support::fast_policy().max_retry_after(cap))
        .on_retry(hook)
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let delays = delays.lock().unwrap();
    delays[0]
}

const BACKOFF: Duration = Duration::from_millis(5);

#[tokio::test]
async fn c10_negative_retry_after_falls_back_to_backoff() {
    assert_eq!(delay_after("-30", Duration::from_secs(5)).await, BACKOFF);
}

#[tokio::test]
async fn c11_enormous_retry_after_stops_at_once_and_says_when() {
    let first = ResponseTemplate::new(503).insert_header("retry-after", "99999999999999999999999");
    let server = server_failing(first, 1).await;
    let err = fast_client()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.give_up_reason(),
        Some(idempotent_retry::GiveUpReason::RetryAfterTooLong)
    );
    assert_eq!(err.attempts(), 1, "no earlier attempt");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(u64::MAX)));
    assert_eq!(err.retry_at(), None, "an instant no SystemTime can hold");
}

#[tokio::test]
async fn c12_garbage_retry_after_falls_back_to_backoff() {
    for garbage in ["soon", "1e3", "5 s", "Tue, 99 Foo 2026 99:99:99 GMT"] {
        assert_eq!(
            delay_after(garbage, Duration::from_secs(5)).await,
            BACKOFF,
            "{garbage}"
        );
    }
}

#[tokio::test]
async fn c13_retry_after_in_the_past_means_no_extra_wait() {
    // The server's floor is already past: the backoff delay alone applies.
    assert_eq!(
        delay_after("Sun, 06 Nov 1994 08:49:37 GMT", Duration::from_secs(5)).await,
        BACKOFF
    );
}

#[test]
fn c14_invalid_retry_policy() {
    let err = fast_builder()
        .retry_policy(RetryPolicy::exponential().multiplier(f64::NAN))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }) && err.to_string().contains("multiplier"));
}

// ---- server side -------------------------------------------------------------------

/// A server holding one stored operation, to check after each bad input that the
/// server still serves and the stored result is intact, byte for byte.
struct Guarded {
    server: MockServer,
    http: reqwest::Client,
    stored: bytes::Bytes,
}

impl Guarded {
    async fn new(builder: idempotent_retry_mock::MockServerBuilder) -> Self {
        let server = builder.start().await.unwrap();
        // A new connection per request: the slowloris row shortens the header timeout,
        // which also closes idle keep-alive connections.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let stored = Self::good(&http, &server).await.bytes().await.unwrap();
        Self {
            server,
            http,
            stored,
        }
    }

    async fn start() -> Self {
        Self::new(MockServer::builder()).await
    }

    async fn good(http: &reqwest::Client, server: &MockServer) -> reqwest::Response {
        http.post(format!("{}/orders", server.uri()))
            .header("idempotency-key", "good-key")
            .json(&json!({"sku": "tea"}))
            .send()
            .await
            .unwrap()
    }

    fn url(&self) -> String {
        format!("{}/orders", self.server.uri())
    }

    /// POST with a raw key header value and a JSON body; the answer must be a 4xx
    /// problem with this status.
    async fn expect_problem(&self, request: reqwest::RequestBuilder, status: u16) -> Value {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], status);
        body
    }

    async fn check_intact(self) {
        let again = Self::good(&self.http, &self.server).await;
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(
            again.bytes().await.unwrap(),
            self.stored,
            "the stored result changed"
        );
        assert_eq!(self.server.executions_for("good-key"), 1);
        assert_eq!(self.server.executions(), 1, "a bad request executed");
    }

    /// Sends raw bytes over TCP and returns whatever the server answers until it closes.
    async fn raw(&self, bytes: &[u8]) -> String {
        self.raw_then(bytes, false).await
    }

    /// As `raw`, and with `hang_up` the client closes its sending side after the bytes.
    async fn raw_then(&self, bytes: &[u8], hang_up: bool) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.server.address())
            .await
            .unwrap();
        stream.write_all(bytes).await.unwrap();
        if hang_up {
            stream.shutdown().await.unwrap();
        }
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server did not close the connection");
        String::from_utf8_lossy(&answer).into_owned()
    }
}

#[tokio::test]
async fn s15_missing_key_when_required() {
    let g = Guarded::new(MockServer::builder().require_key(true)).await;
    g.expect_problem(g.http.post(g.url()).json(&json!({})), 400)
        .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s16_empty_key() {
    let g = Guarded::start().await;
    g.expect_problem(
        g.http
            .post(g.url())
            .header("idempotency-key", "")
            .json(&json!({})),
        400,
    )
    .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s17_key_over_255_bytes() {
    let g = Guarded::start().await;
    let long = "k".repeat(256);
    g.expect_problem(
        g.http
            .post(g.url())
            .header("idempotency-key", long)
            .json(&json!({})),
        400,
    )
    .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s18_key_with_a_control_character() {
    let g = Guarded::start().await;
    let answer = g
        .raw(b"POST /orders HTTP/1.1\r\nhost: x\r\nidempotency-key: a\tb\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    g.check_intact().await;
}

#[tokio::test]
async fn s19_non_ascii_key() {
    let g = Guarded::start().await;
    let value = reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap();
    g.expect_problem(
        g.http
            .post(g.url())
            .header("idempotency-key", value)
            .json(&json!({})),
        400,
    )
    .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s20_malformed_structured_string_key() {
    let g = Guarded::start().await;
    for bad in ["\"a\\x\"", "\"a\"b\"", "\"\""] {
        g.expect_problem(
            g.http
                .post(g.url())
                .header("idempotency-key", bad)
                .json(&json!({})),
            400,
        )
        .await;
    }
    g.check_intact().await;
}

#[tokio::test]
async fn s21_invalid_json_body() {
    let g = Guarded::start().await;
    let request = g
        .http
        .post(g.url())
        .header("idempotency-key", "k-json")
        .header("content-type", "application/json")
        .body("{\"sku\": ");
    g.expect_problem(request, 400).await;
    g.check_intact().await;
}

#[tokio::test]
async fn s22_body_over_the_limit() {
    let g = Guarded::new(MockServer::builder().max_body_bytes(1024)).await;
    let request = g
        .http
        .post(g.url())
        .header("idempotency-key", "k-big")
        .body(vec![b'x'; 4096]);
    g.expect_problem(request, 413).await;
    g.check_intact().await;
}

#[tokio::test]
async fn s23_huge_header() {
    let g = Guarded::start().await;
    let request = format!(
        "POST /orders HTTP/1.1\r\nhost: x\r\nx-huge: {}\r\ncontent-length: 0\r\n\r\n",
        "h".repeat(512 * 1024)
    );
    let answer = g.raw(request.as_bytes()).await;
    // The HTTP parser refuses it (431 from hyper, no body) and closes the connection.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    g.check_intact().await;
}

#[tokio::test]
async fn s24_too_many_headers() {
    let g = Guarded::start().await;
    let mut request = String::from("POST /orders HTTP/1.1\r\nhost: x\r\n");
    for i in 0..500 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("content-length: 0\r\n\r\n");
    let answer = g.raw(request.as_bytes()).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    g.check_intact().await;
}

#[tokio::test]
async fn s25_malformed_request_line() {
    let g = Guarded::start().await;
    let answer = g.raw(b"POST /orders HTTP/9.9 extra\r\n\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    let answer = g.raw(b"NOT-HTTP\r\n\r\n").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    g.check_intact().await;
}

#[tokio::test]
async fn s26_binary_garbage() {
    let g = Guarded::start().await;
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let answer = g.raw(&garbage).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    g.check_intact().await;
}

#[tokio::test]
async fn s27_slowloris_half_request() {
    let g =
        Guarded::new(MockServer::builder().header_read_timeout(Duration::from_millis(200))).await;
    let mut slow = tokio::net::TcpStream::connect(g.server.address())
        .await
        .unwrap();
    slow.write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\nidempotency-key: slow\r\n")
        .await
        .unwrap();
    // While the half request hangs, others are served.
    assert_eq!(Guarded::good(&g.http, &g.server).await.status(), 201);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the half request held its connection open");
    g.check_intact().await;
}

#[tokio::test]
async fn s28_unknown_admin_fault() {
    let g = Guarded::start().await;
    let url = format!("{}/__admin/faults", g.server.uri());
    let body = g
        .expect_problem(g.http.post(&url).json(&json!({"fault": "meteor"})), 400)
        .await;
    assert!(body["detail"].as_str().unwrap().contains("unknown fault"));
    g.expect_problem(
        g.http
            .post(&url)
            .json(&json!({"fault": "rate_limited", "retry_after": "-1s"})),
        400,
    )
    .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s29_malformed_admin_json() {
    let g = Guarded::start().await;
    let url = format!("{}/__admin/faults", g.server.uri());
    for bad in [
        "",
        "{",
        "null",
        "[]",
        "{\"fault\": 7}",
        "{\"fault\": \"drop_after_processing\", \"times\": -1}",
    ] {
        g.expect_problem(g.http.post(&url).body(bad), 400).await;
    }
    assert_eq!(g.server.stats().faults_queued, 0);
    g.check_intact().await;
}

#[tokio::test]
async fn s30_admin_body_over_the_limit() {
    let g = Guarded::start().await;
    let url = format!("{}/__admin/faults", g.server.uri());
    g.expect_problem(g.http.post(&url).body(vec![b' '; 100 * 1024]), 413)
        .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s31_method_that_is_not_an_operation() {
    let g = Guarded::start().await;
    g.expect_problem(g.http.get(g.url()), 405).await;
    g.expect_problem(
        g.http.delete(g.url()).header("idempotency-key", "good-key"),
        405,
    )
    .await;
    g.check_intact().await;
}

#[tokio::test]
async fn s32_body_shorter_than_its_content_length() {
    let g = Guarded::start().await;
    let request = b"POST /orders HTTP/1.1\r\nhost: x\r\nidempotency-key: cut\r\ncontent-length: 100\r\n\r\n{\"sku\":";
    let answer = g.raw_then(request, true).await;
    // The client hung up mid-body: nothing to answer, nothing executed.
    assert!(answer.is_empty(), "{answer}");
    assert_eq!(g.server.executions_for("cut"), 0);
    g.check_intact().await;
}

// ---- client side, rows added with the server's directives ---------------------------

#[tokio::test]
async fn c33_malformed_date_beside_a_retry_after_date_is_ignored() {
    // A Retry-After two seconds from now, next to a Date that does not parse: the date
    // is read against our clock, so the wait is at most two seconds, never a panic.
    let in_two_s = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(2));
    let first = ResponseTemplate::new(503)
        .insert_header("retry-after", in_two_s.as_str())
        .insert_header("date", "not a date");
    let server = server_failing(first, 1).await;
    let (delays, hook) = support::retry_recorder(|attempt, d| (attempt.retry_after(), d));
    let resp = fast_builder()
        .on_retry(hook)
        .build()
        .unwrap()
        .post_idempotent(server.uri())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (hint, delay) = delays.lock().unwrap()[0];
    assert!(
        hint.is_some_and(|h| h <= Duration::from_secs(2)),
        "{hint:?}"
    );
    assert!(delay <= Duration::from_secs(2), "{delay:?}");
}

#[tokio::test]
async fn c34_a_should_retry_hint_neither_true_nor_false_is_ignored() {
    for (value, status) in [("maybe", 500), ("", 500), ("yes", 400)] {
        let first = ResponseTemplate::new(status).insert_header("stripe-should-retry", value);
        // The status decides: a 500 is retried (201), a 400 is final.
        let want = if status == 500 { 201 } else { 400 };
        let got = support::final_status(&fast_client(), first).await;
        assert_eq!(got, want, "{value:?} on {status}");
    }
    let binary = ResponseTemplate::new(500).append_header(
        "stripe-should-retry",
        http::HeaderValue::from_bytes(b"\xfftrue").unwrap(),
    );
    assert_eq!(support::final_status(&fast_client(), binary).await, 201);
}

// ---- stub files: each refused at start with a clear error --------------------------

/// The error `check()` gives for a stub file with this name and text; every needle must
/// be in it, the file's name first.
fn bad_stubs(name: &str, text: &str, needles: &[&str]) {
    let dir = std::env::temp_dir().join(format!("bad-stubs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let err = MockServer::builder()
        .stubs_file(&path)
        .check()
        .expect_err(name)
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains(name), "{err} does not name the file");
    for needle in needles {
        assert!(err.contains(needle), "{name}: {err} lacks {needle:?}");
    }
}

const ROUTE: &str = "[[route]]\nname = \"r\"\nmethod = \"POST\"\npath = \"/p\"\n";

#[test]
fn s35_stub_with_an_unknown_field() {
    bad_stubs(
        "s35.toml",
        &format!("{ROUTE}colour = \"red\"\n"),
        &["unknown field", "colour"],
    );
}

#[test]
fn s36_stub_without_a_path() {
    bad_stubs(
        "s36.toml",
        "[[route]]\nmethod = \"POST\"\n",
        &["missing field", "path"],
    );
}

#[test]
fn s37_stub_file_that_is_not_toml() {
    bad_stubs("s37.toml", "[[route]\nmethod = POST\n", &["line 1"]);
}

#[test]
fn s38_stub_with_an_unknown_placeholder() {
    bad_stubs(
        "s38.toml",
        &format!("{ROUTE}body = '''\n{{\"a\": 1,\n \"b\": {{{{amount}}}}}}'''\n"),
        &["\"r\"", "(line 1)", "2:7", "unknown placeholder"],
    );
}

#[test]
fn s39_stub_with_an_unclosed_placeholder() {
    bad_stubs(
        "s39.toml",
        &format!("{ROUTE}body = '{{{{id'\n"),
        &["\"r\"", "never closed"],
    );
}

#[test]
fn s40_stub_with_a_bare_id() {
    bad_stubs(
        "s40.toml",
        &format!("{ROUTE}body = '{{\"id\": {{{{id}}}}}}'\n"),
        &["quote it"],
    );
}

#[test]
fn s41_stub_with_a_path_placeholder_the_path_lacks() {
    bad_stubs(
        "s41.toml",
        "[[route]]\nmethod = \"GET\"\npath = \"/p/{id}\"\nbody = '\"{{path.name}}\"'\n",
        &["{name}"],
    );
}

#[test]
fn s42_stub_with_a_status_that_is_not_final() {
    bad_stubs("s42.toml", &format!("{ROUTE}status = 99\n"), &["status 99"]);
}

#[test]
fn s43_stub_with_a_bad_header_name() {
    bad_stubs(
        "s43.toml",
        &format!("{ROUTE}headers = {{ \"bad name\" = \"v\" }}\n"),
        &["bad name"],
    );
}

#[test]
fn s44_json_stub_with_a_wrong_type() {
    bad_stubs(
        "s44.json",
        r#"{"route": [{"method": "POST", "path": "/p", "status": "ok"}]}"#,
        &["line 1", "invalid type"],
    );
}

#[test]
fn s45_stub_with_a_method_that_is_not_http() {
    bad_stubs(
        "s45.toml",
        "[[route]]\nmethod = \"NOT A METHOD\"\npath = \"/p\"\n",
        &["route 1", "not an HTTP method"],
    );
}
