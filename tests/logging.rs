//! What the client logs. Alone in its own test binary: `tracing` caches per-callsite
//! interest process-wide, so thread-local subscribers at different levels are only
//! reliable when no other test hits the same callsites concurrently.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

mod support;

use std::sync::{Arc, Mutex};

use idempotent_retry::IdempotencyKey;
use support::{fast_builder, fast_policy};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

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
