//! What the client logs. Alone in its own test binary: `tracing` caches per-callsite
//! interest process-wide, so thread-local subscribers at different levels are only
//! reliable when no other test hits the same callsites concurrently.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_retry::IdempotencyKey;
use support::{fast_builder, fast_policy, refusing_url, server_failing};
use tracing::Level;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The tests of this binary one at a time: see the module comment.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `tracing` subscriber that writes plain text into a buffer, for the current thread.
fn capture_logs(level: tracing::Level) -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn keys_are_logged_only_at_debug_level() {
    let _serial = SERIAL.lock().await;
    for (level, key_visible) in [(tracing::Level::INFO, false), (tracing::Level::DEBUG, true)] {
        let (logs, _guard) = capture_logs(level);
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let key = IdempotencyKey::new_v4();
        fast_builder()
            .retry_policy(fast_policy().max_attempts(2))
            .build()
            .unwrap()
            .post_idempotent(server.uri())
            .idempotency_key(key.clone())
            .send()
            .await
            .unwrap_err();
        let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("retrying") && text.contains("giving up"),
            "{level}: {text}"
        );
        assert_eq!(text.contains(key.as_str()), key_visible, "{level}: {text}");
    }
}

/// A span or an event as a subscriber saw it: level, name (the message, for events) and
/// every field as text, the span's as recorded when it closed.
#[derive(Clone, Debug)]
struct Seen {
    level: Level,
    name: String,
    fields: BTreeMap<String, String>,
    /// The metadata's target and module path.
    target: String,
    module: String,
    /// A span's own id; an event's current span's.
    span: Option<u64>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// Keeps every span (with the fields recorded on it later) and every event.
#[derive(Clone, Default)]
struct Recorder {
    spans: Arc<Mutex<BTreeMap<u64, Seen>>>,
    events: Arc<Mutex<Vec<Seen>>>,
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let seen = Seen {
            level: *attrs.metadata().level(),
            name: attrs.metadata().name().to_owned(),
            fields: fields.0,
            target: attrs.metadata().target().to_owned(),
            module: attrs
                .metadata()
                .module_path()
                .unwrap_or_default()
                .to_owned(),
            span: Some(id.into_u64()),
        };
        self.spans.lock().unwrap().insert(id.into_u64(), seen);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(span) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            span.fields.extend(fields.0);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = fields.0.remove("message").unwrap_or_default();
        self.events.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            name,
            fields: fields.0,
            target: event.metadata().target().to_owned(),
            module: event
                .metadata()
                .module_path()
                .unwrap_or_default()
                .to_owned(),
            span: ctx.current_span().id().map(tracing::span::Id::into_u64),
        });
    }
}

/// Runs `operation` with a [`Recorder`] at `level` for this thread; returns every span
/// and every event, from any crate.
async fn record_all<F: std::future::Future<Output = ()>>(
    level: Level,
    operation: F,
) -> (Vec<Seen>, Vec<Seen>) {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry()
        .with(recorder.clone())
        .with(tracing_subscriber::filter::LevelFilter::from_level(level));
    {
        let _guard = tracing::subscriber::set_default(subscriber);
        operation.await;
    }
    let spans = recorder.spans.lock().unwrap().values().cloned().collect();
    let events = recorder.events.lock().unwrap().clone();
    (spans, events)
}

/// Runs `operation` with a [`Recorder`] at `DEBUG` for this thread; returns the
/// crate's operation spans and the crate's events.
async fn record<F: std::future::Future<Output = ()>>(operation: F) -> (Vec<Seen>, Vec<Seen>) {
    let (spans, events) = record_all(Level::DEBUG, operation).await;
    let ours = ["sending", "attempt finished", "retrying", "giving up"];
    (
        spans
            .into_iter()
            .filter(|s| s.name == "idempotent_request")
            .collect(),
        events
            .into_iter()
            .filter(|e| ours.contains(&e.name.as_str()))
            .collect(),
    )
}

#[tokio::test]
async fn spans_and_events_carry_opentelemetry_http_fields() {
    let _serial = SERIAL.lock().await;
    let server = server_failing(ResponseTemplate::new(503), 1).await;
    let key = IdempotencyKey::new_v4();
    let url = format!("{}/orders", server.uri());
    let (spans, events) = record(async {
        let resp = fast_builder()
            .build()
            .unwrap()
            .post_idempotent(&url)
            .idempotency_key(key.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.attempts(), 2);
    })
    .await;

    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.level, Level::INFO);
    assert_eq!(span.field("http.request.method"), Some("POST"));
    assert_eq!(span.field("url.full"), Some(url.as_str()));
    assert_eq!(span.field("server.address"), Some("127.0.0.1"));
    let port = server.address().port().to_string();
    assert_eq!(span.field("server.port"), Some(port.as_str()));
    assert_eq!(span.field("http.response.status_code"), Some("201"));
    assert_eq!(span.field("http.request.resend_count"), Some("1"));
    assert_eq!(span.field("error.type"), None, "{span:?}");

    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sending",
            "attempt finished",
            "retrying",
            "attempt finished"
        ],
        "{events:#?}"
    );
    let (first, retry, second) = (&events[1], &events[2], &events[3]);
    assert_eq!(first.level, Level::DEBUG);
    assert_eq!(first.field("http.request.resend_count"), Some("0"));
    assert_eq!(first.field("http.response.status_code"), Some("503"));
    assert_eq!(first.field("error.type"), Some("503"));
    assert_eq!(retry.level, Level::INFO);
    assert_eq!(retry.field("http.request.resend_count"), Some("0"));
    assert_eq!(retry.field("http.response.status_code"), Some("503"));
    assert_eq!(retry.field("error.type"), Some("503"));
    assert_eq!(second.field("http.request.resend_count"), Some("1"));
    assert_eq!(second.field("http.response.status_code"), Some("201"));
    assert_eq!(second.field("error.type"), None);

    // The key: on every debug event, on nothing above debug.
    for seen in events.iter().chain(&spans) {
        let has_key = seen.fields.values().any(|v| v.contains(key.as_str()));
        assert_eq!(has_key, seen.level == Level::DEBUG, "{seen:?}");
        if seen.level == Level::DEBUG {
            assert_eq!(seen.field("idempotency.key"), Some(key.as_str()));
        }
    }
}

#[tokio::test]
async fn a_failed_operation_records_its_error_type_and_urls_lose_their_credentials() {
    // reqwest moves URL credentials into an `Authorization` header, which is never
    // logged; `url.full` must not show them either.
    let _serial = SERIAL.lock().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(500)))
        .mount(&server)
        .await;
    let address = server.address();
    let url = format!("http://shop:s3cret@{address}/orders");
    let (spans, events) = record(async {
        let err = fast_builder()
            .retry_policy(fast_policy().max_attempts(2))
            .attempt_timeout(Duration::from_millis(50))
            .build()
            .unwrap()
            .post_idempotent(&url)
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    })
    .await;

    let span = &spans[0];
    assert_eq!(
        span.field("url.full"),
        Some(format!("http://{address}/orders").as_str())
    );
    assert_eq!(span.field("error.type"), Some("timeout"));
    assert_eq!(span.field("http.request.resend_count"), Some("1"));
    assert_eq!(span.field("http.response.status_code"), None);
    let give_up = events.iter().find(|e| e.name == "giving up").unwrap();
    assert_eq!(give_up.level, Level::WARN);
    assert_eq!(give_up.field("error.type"), Some("timeout"));
    assert_eq!(give_up.field("http.request.resend_count"), Some("1"));
    let everything = format!("{spans:?}{events:?}");
    assert!(!everything.contains("s3cret"), "{everything}");
}

#[tokio::test]
async fn everything_has_the_one_documented_target() {
    let _serial = SERIAL.lock().await;
    let server = server_failing(ResponseTemplate::new(503), 1).await;
    let (spans, events) = record_all(Level::TRACE, async {
        let resp = fast_builder()
            .build()
            .unwrap()
            .post_idempotent(server.uri())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.attempts(), 2);
    })
    .await;
    let ours: Vec<&Seen> = spans
        .iter()
        .chain(&events)
        .filter(|s| s.module.starts_with("idempotent_retry"))
        .collect();
    assert!(ours.len() >= 5, "{ours:#?}");
    for seen in ours {
        assert_eq!(seen.target, idempotent_retry::LOG_TARGET, "{seen:?}");
    }
    assert_eq!(idempotent_retry::LOG_TARGET, "idempotent_retry");
}

#[tokio::test]
async fn the_error_field_is_the_innermost_cause() {
    let _serial = SERIAL.lock().await;
    let url = refusing_url().await;
    let (_, events) = record(async {
        fast_builder()
            .retry_policy(fast_policy().max_attempts(2))
            .build()
            .unwrap()
            .post_idempotent(&url)
            .send()
            .await
            .unwrap_err();
    })
    .await;
    let retry = events.iter().find(|e| e.name == "retrying").unwrap();
    let error = retry.field("error").unwrap();
    assert!(!error.contains("error sending request"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
    let attempt = events
        .iter()
        .find(|e| e.name == "attempt finished")
        .unwrap();
    assert_eq!(attempt.field("error"), Some(error));
}

#[tokio::test]
async fn the_span_marks_a_replayed_answer() {
    let _serial = SERIAL.lock().await;
    for replayed in [false, true] {
        let server = MockServer::start().await;
        let mut answer = ResponseTemplate::new(201);
        if replayed {
            answer = answer.insert_header("Idempotent-Replayed", "true");
        }
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let (spans, _) = record(async {
            let resp = fast_builder()
                .build()
                .unwrap()
                .post_idempotent(server.uri())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.is_replay(), replayed);
        })
        .await;
        let marked = spans[0].field("idempotency.replayed");
        assert_eq!(marked, replayed.then_some("true"), "{spans:?}");
    }
}

#[tokio::test]
async fn log_keys_puts_the_key_on_info_events_and_the_span() {
    let _serial = SERIAL.lock().await;
    for log_keys in [false, true] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .mount(&server)
            .await;
        let key = IdempotencyKey::new_v4();
        let (spans, events) = record_all(Level::INFO, async {
            fast_builder()
                .retry_policy(fast_policy().max_attempts(2))
                .log_keys(log_keys)
                .build()
                .unwrap()
                .post_idempotent(server.uri())
                .idempotency_key(key.clone())
                .send()
                .await
                .unwrap_err();
        })
        .await;
        let span = spans
            .iter()
            .find(|s| s.name == "idempotent_request")
            .unwrap();
        let retry = events.iter().find(|e| e.name == "retrying").unwrap();
        let give_up = events.iter().find(|e| e.name == "giving up").unwrap();
        for seen in [span, retry, give_up] {
            let shown = log_keys.then_some(key.as_str());
            assert_eq!(seen.field("idempotency.key"), shown, "{seen:?}");
        }
    }
}

#[tokio::test]
async fn a_hedge_is_an_event() {
    let _serial = SERIAL.lock().await;
    // The first request stalls; the hedge 50 ms later is answered at once.
    let stalled = ResponseTemplate::new(201).set_delay(Duration::from_millis(500));
    let server = server_failing(stalled, 1).await;
    let key = IdempotencyKey::new_v4();
    let (_, events) = record_all(Level::DEBUG, async {
        let resp = fast_builder()
            .hedging(
                idempotent_retry::Hedging::after(Duration::from_millis(50)).keyed_methods(true),
            )
            .build()
            .unwrap()
            .post_idempotent(server.uri())
            .idempotency_key(key.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.hedges(), 1);
    })
    .await;
    let hedges: Vec<&Seen> = events
        .iter()
        .filter(|e| e.name == "hedge started")
        .collect();
    assert_eq!(hedges.len(), 1, "{events:#?}");
    assert_eq!(hedges[0].level, Level::DEBUG);
    assert_eq!(hedges[0].field("hedge"), Some("1"));
    assert_eq!(hedges[0].field("idempotency.key"), Some(key.as_str()));
}

#[tokio::test]
async fn a_wait_for_a_rate_limit_turn_is_an_event() {
    let _serial = SERIAL.lock().await;
    // A 429 after 450 ms turns the limiter on at 70 % of the ~2 requests a second it
    // measured: the next operation waits about 0.6 s for its turn.
    let throttled = ResponseTemplate::new(429)
        .insert_header("retry-after", "0")
        .set_delay(Duration::from_millis(450));
    let server = server_failing(throttled, 1).await;
    let client = fast_builder()
        .retry_policy(fast_policy().max_attempts(1))
        .adaptive_rate_limit(idempotent_retry::AdaptiveRateLimit::new())
        .build()
        .unwrap();
    let (_, events) = record_all(Level::DEBUG, async {
        let throttled = client.post_idempotent(server.uri()).send().await;
        assert!(throttled.unwrap_err().retry_after().is_some());
        let resp = client.post_idempotent(server.uri()).send().await.unwrap();
        assert_eq!(resp.status(), 201);
    })
    .await;
    let waits: Vec<&Seen> = events
        .iter()
        .filter(|e| e.name == "waiting for a rate-limit turn")
        .collect();
    assert_eq!(waits.len(), 1, "{events:#?}");
    assert_eq!(waits[0].level, Level::DEBUG);
    let wait_ms: u64 = waits[0].field("wait_ms").unwrap().parse().unwrap();
    assert!((100..=2000).contains(&wait_ms), "{wait_ms}");
}

#[tokio::test]
async fn a_resumed_operation_runs_in_a_span_that_names_its_operation_id() {
    let _serial = SERIAL.lock().await;
    let server = server_failing(ResponseTemplate::new(503), 1).await;
    let url = format!("{}/orders", server.uri());
    let client = fast_builder()
        .retry_policy(fast_policy().max_attempts(1))
        .journal(idempotent_retry::journal::MemoryJournal::new())
        .build()
        .unwrap();
    let (spans, events) = record(async {
        client
            .post_idempotent(&url)
            .operation_id("op-5")
            .body("{}")
            .send()
            .await
            .unwrap_err();
        let report = client.resume_pending().await.unwrap();
        assert_eq!(report.completed, ["op-5"]);
    })
    .await;
    // The fresh send and the resume: each in an operation span with the id.
    assert_eq!(spans.len(), 2, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.field("operation_id"), Some("op-5"), "{span:?}");
    }
    let finished: Vec<&Seen> = events
        .iter()
        .filter(|e| e.name == "attempt finished")
        .collect();
    assert_eq!(finished.len(), 2);
    for event in finished {
        let span = spans.iter().find(|s| s.span == event.span);
        assert!(span.is_some(), "{event:?} is in an operation span");
    }
}
