//! Safe retries for HTTP calls that must happen exactly once.
//!
//! `idempotent-retry` wraps [`reqwest`] so that a `POST` for a payment, an order or a
//! provisioning step can be retried over a network that drops, stalls and fails, without
//! ever running twice on a server that honours idempotency keys (Stripe, Adyen, and
//! servers following the IETF draft "The Idempotency-Key HTTP Header Field").
//!
//! # Quick start
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use idempotent_retry_mock::{Fault, MockServer};
//! use idempotent_retry::{IdempotentClient, Jitter, RetryPolicy};
//!
//! // The bundled idempotent server, with its first answer lost after the work was done.
//! let server = MockServer::start().await;
//! server.inject(Fault::DropAfterProcessing, 1);
//! let url = format!("{}/orders", server.uri());
//!
//! let client = IdempotentClient::builder()
//!     .retry_policy(
//!         RetryPolicy::exponential()
//!             .max_attempts(5)
//!             .initial_delay(Duration::from_millis(10))
//!             .jitter(Jitter::Full)
//!             .deadline(Duration::from_secs(10)),
//!     )
//!     .attempt_timeout(Duration::from_secs(2))
//!     .build()?;
//!
//! // One logical operation: one key, minted here and sent on every attempt.
//! let resp = client
//!     .post_idempotent(&url)
//!     .json(&serde_json::json!({ "sku": "tea", "qty": 2 }))
//!     .send()
//!     .await?;
//!
//! assert_eq!(resp.status(), 201);
//! assert_eq!(resp.attempts(), 2); // the first answer was lost
//! assert!(resp.is_replay()); // the second attempt got the stored result...
//! assert_eq!(server.executions(), 1); // ...of the one execution
//! let order: serde_json::Value = resp.json().await?;
//! assert_eq!(order["path"], "/orders");
//! # Ok(())
//! # }
//! ```
//!
//! The server in this example is the crate's companion test tooling,
//! [`idempotent-retry-mock`](https://docs.rs/idempotent-retry-mock), for your
//! `[dev-dependencies]`.
//!
//! # Keys
//!
//! Each call to [`send`](IdempotentRequestBuilder::send) is one logical operation. It
//! gets one [`IdempotencyKey`], minted before the first attempt from the OS CSPRNG
//! (UUIDv4 through the `uuid` crate and `getrandom`) and sent unchanged on every attempt
//! in the `Idempotency-Key` header. Supply your own with
//! [`idempotency_key`](IdempotentRequestBuilder::idempotency_key) to resume an operation
//! later; bad keys are rejected before any I/O. The header name and the value form
//! ([`KeyFormat`]) are configurable.
//!
//! # When it retries
//!
//! Timeouts, failed connects, connections reset or closed before the whole response
//! arrived, and statuses 408, 409, 429, 500, 502, 503 and 504 ([`default_classifier`]).
//! Any other response is returned as `Ok`, as reqwest would. A `Retry-After` header
//! (seconds, or an HTTP-date read against the answer's `Date`) is a floor, never cut
//! short; one beyond [`RetryPolicy::max_retry_after`] ends the operation at once, and
//! [`Error::retry_at`] says when to come back. Replace the decision with a
//! [classifier](IdempotentClientBuilder::classifier) of your own.
//!
//! # How long it waits
//!
//! [`RetryPolicy`]: exponential backoff with [`Jitter`] (none, full, equal,
//! decorrelated), a cap per delay, and a deadline for the whole operation: no sleep that
//! would end past it, and the last attempt's timeout shrinks to what remains.
//! [`RetryPolicy::delays`] shows the schedule; a seed makes it deterministic.
//!
//! # How much it retries
//!
//! A [`RetryBudget`] per origin, shared by a client's clones, caps retry traffic when a
//! dependency is down: retries spend tokens, successes refund them, and one sick origin
//! drains its own bucket only.
//!
//! # When it gives up
//!
//! [`Error`] says why, carries the key and the number of attempts, and answers the
//! question every error must: may this operation have executed
//! ([`Error::may_have_executed`])? If so, keep the key and send the same operation again
//! later with it; never start over with a new key. To survive a crash inside `send()`,
//! store [`IdempotentRequestBuilder::key`] before sending (write-ahead).
//!
//! # Configuration files
//!
//! [`ClientConfig`], [`RetryPolicy`] and [`RetryBudget`] deserialize with serde (TOML,
//! JSON, YAML, …), durations written `"250ms"` or `"30s"`; every error names the field.
//! Apply one with [`IdempotentClientBuilder::config`].
//!
//! # Observability
//!
//! With [`tracing`], under the OpenTelemetry HTTP semantic conventions' field names, so an
//! OpenTelemetry layer exports them as dashboards expect. Everything has the one target
//! [`LOG_TARGET`] (`idempotent_retry`), whatever module it comes from: filter with
//! `RUST_LOG=idempotent_retry=debug`.
//!
//! | what | level | fields |
//! |---|---|---|
//! | span `idempotent_request`, one per operation (a resumed one too) | `info` | `http.request.method`, `url.full`, `server.address`, `server.port`, `operation_id` for a journalled send; when it ends `http.response.status_code`, `http.request.resend_count` (attempts − 1, if any), `error.type`, and `idempotency.replayed` = `true` when the final answer was a stored one sent again |
//! | event `sending`, at the start | `debug` | `idempotency.key` |
//! | event `attempt finished` | `debug` | `attempt`, `http.request.resend_count`, `http.response.status_code`, `error.type`, `error`, `idempotency.key`, `decision` |
//! | event `retrying` | `info` | `attempt`, `http.request.resend_count`, `http.response.status_code`, `error.type`, `error`, `delay_ms` |
//! | event `giving up` | `warn` | `attempts`, `http.request.resend_count`, `error.type`, `reason`, `outcome_unknown` |
//! | events `circuit opened`, `circuit half-open`, `circuit closed` (and `… by hand`) | `info` | `origin`, and `break_ms` on opening |
//! | event `waiting for a rate-limit turn` | `debug` | `wait_ms` |
//! | event `hedge started` | `debug` | `hedge` (this operation's hedges so far), `idempotency.key` |
//! | events `operation recorded`, `resuming a recorded operation`, `operation completed`, `operation withdrawn: no attempt reached the server` (journal) | `info` | `operation_id`; `age_s` on resuming, `status` on completing |
//! | events `operation needs attention`, `operation too old to resume`, `lease lost to another worker`, and the journal's own failures (`could not …`) | `warn` | `operation_id`; `reason` and `status` for attention, `error` for failures |
//!
//! `error.type` is the status code for a 4xx or 5xx answer, else `timeout`, `connect`,
//! `connection_closed`, `malformed_response`, `redirect`, `body`, `response_too_large` or
//! `_OTHER`. `error` is the transport error's innermost cause ("Connection refused (os
//! error 111)", "operation timed out"), not reqwest's outer "error sending request for
//! url". The key is only ever on `debug` events, unless the client is built with
//! [`log_keys(true)`](IdempotentClientBuilder::log_keys): then `idempotency.key` is on
//! the span and on the `retrying` and `giving up` events too, to match your logs to a
//! provider's dashboard. [`IdempotentClientBuilder::on_retry`] is a hook for metrics.
//!
//! # Already on reqwest-middleware?
//!
//! With the `middleware` feature, `IdempotencyMiddleware` gives a `ClientWithMiddleware`
//! the same keys and retries as one layer, safe in any position among other layers (see
//! its docs for the ordering pitfall it avoids). `IdempotentClientBuilder::build_middleware`
//! makes one with the same settings as a client.
//!
//! # Surviving a crash of the process
//!
//! The server remembers keys; a process that dies forgets them. With a
//! [journal] (`IdempotentClientBuilder::journal`), a request given an
//! `operation_id` is recorded durably before its first attempt and completed with its
//! final answer: run the same code again after a crash and it finds the record, returns
//! a completed answer without I/O or re-sends the pending operation with its recorded key
//! and bytes. Credentials are never journalled: give the client
//! `resume_credentials` (or `resume_headers`) next to its journal, or a resume of an
//! operation that carried `Authorization` sends nothing and says which header it lacks.
//!
//! ```no_run
//! use idempotent_retry::IdempotentClient;
//! use idempotent_retry::journal::{MemoryJournal, PendingOperation};
//! use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
//!
//! # async fn run() -> Result<(), idempotent_retry::Error> {
//! let client = IdempotentClient::builder()
//!     .journal(MemoryJournal::new()) // SqliteJournal or PostgresJournal in production
//!     .resume_credentials(|_op: &PendingOperation| async {
//!         let mut headers = HeaderMap::new();
//!         headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk_test_123"));
//!         headers
//!     })
//!     .build()?;
//! let report = client.resume_pending().await?; // at start: finish what a crash left
//! # drop(report);
//! # Ok(())
//! # }
//! ```
//!
//! # Testing with the mock server
//!
//! The companion crate [`idempotent-retry-mock`](https://docs.rs/idempotent-retry-mock)
//! is an idempotent HTTP server with fault injection that runs in your test process. Add
//! it to your `[dev-dependencies]` (your production build then compiles no HTTP server),
//! point your code at its `uri()`, inject lost responses, drops, 5xx and 429, and read
//! back how many times each operation executed. Its `idempotent-mock-server` binary
//! (`cargo install idempotent-retry-mock`) serves the same engine to clients in any
//! language. It does not depend on this crate.
//!
//! # Cargo features
//!
//! | feature | default | what it does |
//! |---|---|---|
//! | `default-tls` | yes | reqwest's default TLS (rustls), for `https://` URLs |
//! | `http2` | yes | HTTP/2 in the default reqwest client |
//! | `middleware` | no | `IdempotencyMiddleware`: the same safe retries as one `reqwest-middleware` 0.5 layer |
//! | `journal-sqlite` | no | `journal::SqliteJournal`: the [operation journal](mod@journal) in one SQLite file (bundled), so exactly-once survives a crash of the process. It builds `rusqlite` 0.40 with SQLite bundled, and only one crate in a build may link SQLite (`links = "sqlite3"`): an application on another `rusqlite` gets a link conflict, so use the one re-exported as `journal::rusqlite` |
//! | `journal-conformance` | no | `journal::conformance::check`: the rules exactly-once needs, checked against any `Journal`, for the tests of a journal on your own database |
//! | `journal-postgres` | no | `journal::PostgresJournal`: the operation journal in PostgreSQL, shared by a fleet of workers on many machines (TLS with rustls) |
//! | `fuzzing` | no | internal: entry points for the source repository's `cargo fuzz` targets; no API promise |
//!
//! Every combination of them builds (CI checks the whole powerset).
//!
//! For another TLS stack (native-tls, custom roots), turn `default-tls` off, enable it
//! on your own `reqwest` dependency, and pass your client to
//! [`IdempotentClientBuilder::reqwest_client`].
//!
//! # Minimum supported Rust version
//!
//! Rust 1.85, the same as reqwest 0.13.

mod builder;
mod client;
mod config;
mod duration;
mod error;
mod inner;
pub mod journal;
mod journaled;
mod key;
#[cfg(feature = "middleware")]
mod middleware;
mod operation;
mod request;
mod response;
mod retry;
mod rng;
mod settings;
mod table;
mod telemetry;

pub use builder::IdempotentClientBuilder;
pub use client::IdempotentClient;
pub use config::ClientConfig;
pub use duration::parse_duration;
pub use error::{Error, GiveUpReason};
pub use key::{IdempotencyKey, KeyFormat};
#[cfg(feature = "middleware")]
pub use middleware::{IdempotencyMiddleware, OperationReport};
pub use request::IdempotentRequestBuilder;
pub use response::IdempotentResponse;
pub use retry::backoff::Jitter;
pub use retry::breaker::{CircuitBreaker, CircuitState};
pub use retry::budget::RetryBudget;
pub use retry::classify::{
    Attempt, Decision, default_classifier, is_retryable_error, is_retryable_status,
};
pub use retry::hedging::Hedging;
pub use retry::limiter::AdaptiveRateLimit;
pub use retry::origins::OriginStats;
pub use retry::policy::{Delays, RetryPolicy};
pub use settings::DEFAULT_KEY_HEADER;
pub use telemetry::TARGET as LOG_TARGET;

/// The reqwest this crate is built on, for [`IdempotentClientBuilder::reqwest_client`]
/// and types such as `reqwest::Method` and `reqwest::StatusCode`.
pub use reqwest;

/// The reqwest-middleware [`IdempotencyMiddleware`] plugs into (feature `middleware`).
#[cfg(feature = "middleware")]
pub use reqwest_middleware;

/// Entry points for the source repository's `cargo fuzz` targets (feature `fuzzing`). Not part
/// of the public API: no stability promise.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// `Retry-After` parsing, against a fixed "now" and, when `date` is given, against
    /// that answer's `Date`.
    pub fn retry_after(bytes: &[u8], date: Option<&[u8]>) -> Option<std::time::Duration> {
        let value = http::HeaderValue::from_bytes(bytes).ok()?;
        let date = match date {
            Some(d) => Some(http::HeaderValue::from_bytes(d).ok()?),
            None => None,
        };
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        crate::retry::retry_after::parse(&value, date.as_ref(), now)
    }
}

/// The README's examples, compiled and run as doctests so that they cannot drift. (They
/// use the mock server, a dev-dependency, which doctests can use.)
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
