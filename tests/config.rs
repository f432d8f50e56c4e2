//! Client settings from a TOML file, as a user would keep them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use std::time::Duration;

use idempotent_retry::{ClientConfig, IdempotentClient, Jitter, KeyFormat, RetryPolicy};
use idempotent_retry_mock::MockServer;

const FILE: &str = r#"
# How our checkout service retries payments.
attempt_timeout = "750ms"
key_header = "X-Idempotency-Key"
key_format = "bare"

[retry_policy]
max_attempts = 4
initial_delay = "5ms"
multiplier = 2.0
max_delay = "20ms"
jitter = "equal"
deadline = "10s"
jitter_seed = 7

[retry_budget]
capacity = 40
transient_cost = 2
"#;

#[test]
fn a_toml_file_sets_every_option() {
    let config: ClientConfig = toml::from_str(FILE).unwrap();
    assert_eq!(config.attempt_timeout, Duration::from_millis(750));
    assert_eq!(config.key_header, "x-idempotency-key");
    assert_eq!(config.key_format, KeyFormat::Bare);
    let policy = RetryPolicy::exponential()
        .max_attempts(4)
        .initial_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
        .jitter(Jitter::Equal)
        .deadline(Duration::from_secs(10))
        .jitter_seed(7);
    assert_eq!(config.retry_policy, policy);
    // The schedule the file describes: three retries, equal jitter on 5, 10, 20 ms.
    let delays: Vec<Duration> = config.retry_policy.delays().collect();
    assert_eq!(delays.len(), 3, "{delays:?}");
    for (delay, d) in delays.iter().zip([5, 10, 20].map(Duration::from_millis)) {
        assert!(
            *delay >= d / 2 && *delay <= d,
            "{delay:?} outside [{:?}, {d:?}]",
            d / 2
        );
    }
}

#[tokio::test]
async fn a_client_built_from_the_file_uses_its_key_header_and_policy() {
    let server = MockServer::builder()
        .require_key(true)
        .start()
        .await
        .unwrap();
    let config: ClientConfig = toml::from_str(FILE).unwrap();
    let client = IdempotentClient::builder().config(&config).build().unwrap();
    // The mock server reads the standard header; a client configured for another one
    // sends none the server sees, so the server's 400 proves the header came from the
    // file. Then the standard header, set the same way, works.
    let resp = client.post_idempotent(server.uri()).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    let config: ClientConfig =
        toml::from_str(&FILE.replace("X-Idempotency-Key", "Idempotency-Key")).unwrap();
    server.inject(
        idempotent_retry_mock::Fault::StatusBeforeProcessing(http::StatusCode::SERVICE_UNAVAILABLE),
        3,
    );
    let client = IdempotentClient::builder().config(&config).build().unwrap();
    let resp = client.post_idempotent(server.uri()).send().await.unwrap();
    // Three 503s, then success: the file's four attempts, not the default three.
    assert_eq!((resp.status().as_u16(), resp.attempts()), (201, 4));
}

#[test]
fn a_bad_file_names_the_field() {
    let cases = [
        (
            "attempt_timeout = \"750\"",
            "attempt_timeout: \"750\" is not a duration: time unit needed",
        ),
        (
            "[retry_policy]\nmax_delay = \"5 lightyears\"",
            "retry_policy.max_delay: \"5 lightyears\" is not a duration: unknown time unit",
        ),
        (
            "[retry_policy]\nmax_attempts = 0",
            "retry_policy.max_attempts: must be at least 1",
        ),
        (
            "[retry_policy]\nmax_atempts = 3",
            "unknown field `max_atempts`",
        ),
        (
            "[retry_budget]\ncapacity = -1",
            "retry_budget.capacity: invalid value",
        ),
        (
            "key_format = \"quoted\"",
            "key_format: unknown variant `quoted`",
        ),
    ];
    for (text, expected) in cases {
        let message = toml::from_str::<ClientConfig>(text)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(expected),
            "{text}\n  gave {message}\n  wanted {expected:?}"
        );
    }
}

/// An application's own file, with the client's settings nested in it, as users keep
/// them.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // Only parsed.
struct AppFile {
    payments: Payments,
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // Only parsed.
struct Payments {
    port: u16,
    http: ClientConfig,
}

const NESTED: &str = r#"[payments]
port = 8080

[payments.http]
attempt_timeout = "2s"

[payments.http.retry_policy]
max_attempts = 3
max_delay = "5 lightyears"
"#;

#[test]
fn a_bad_value_in_a_nested_config_is_reported_at_the_value_with_one_path() {
    let message = toml::from_str::<AppFile>(NESTED).unwrap_err().to_string();
    // Line 9, column 13: the value itself, as for any plain serde error in the file,
    // not the table header on line 7.
    assert!(
        message.starts_with("TOML parse error at line 9, column 13"),
        "{message}"
    );
    assert!(
        message.contains("max_delay = \"5 lightyears\""),
        "{message}"
    );
    // The path once, from the client's settings down, and no "in `…`" trail.
    assert_eq!(message.matches("max_delay").count(), 2, "{message}");
    assert!(
        message.contains(
            "retry_policy.max_delay: \"5 lightyears\" is not a duration: unknown time unit"
        ),
        "{message}"
    );
    assert!(!message.contains("in `"), "{message}");

    // A value of the wrong type is placed the same way.
    let wrong_type = NESTED.replace("max_attempts = 3", "max_attempts = \"three\"");
    let message = toml::from_str::<AppFile>(&wrong_type)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("TOML parse error at line 8, column 16"),
        "{message}"
    );
    assert!(
        message.contains("retry_policy.max_attempts: invalid type: string \"three\""),
        "{message}"
    );
}

#[test]
fn the_journal_settings_and_the_clients_journal_headers_come_from_a_file() {
    use idempotent_retry::journal::{Journal, JournalConfig, MemoryJournal};
    use std::time::Duration;
    let journal: JournalConfig = toml::from_str(
        r#"
        lease_duration = "12s"
        max_resume_age = "10h"
        max_resumes = 4
        completed_retention = "2d"
        "#,
    )
    .unwrap();
    let memory: &dyn Journal = &MemoryJournal::new().config(&journal);
    assert_eq!(memory.lease_duration(), Duration::from_secs(12));
    assert_eq!(memory.max_resume_age(), Duration::from_secs(36_000));
    assert_eq!(memory.max_resumes(), 4);
    assert_eq!(
        memory.completed_retention(),
        Duration::from_secs(2 * 86_400)
    );

    let client: idempotent_retry::ClientConfig = toml::from_str(
        r#"
        sensitive_headers = ["x-api-key"]
        scope_headers = ["x-tenant"]
        "#,
    )
    .unwrap();
    assert_eq!(client.sensitive_headers, ["x-api-key"]);
    assert_eq!(client.scope_headers, ["x-tenant"]);
    let bad = toml::from_str::<idempotent_retry::ClientConfig>(r#"scope_headers = ["x y"]"#);
    assert!(bad.unwrap_err().to_string().contains("scope_headers"));
}
