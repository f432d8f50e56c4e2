//! An in-process idempotent HTTP server with fault injection, to test the whole
//! client-server loop and prove exactly-once effects (feature `mock`, off by default: test
//! tooling, for `[dev-dependencies]`).
//!
//! Any `POST` or `PATCH` (except under `/__admin/`) is an operation that creates a
//! resource: it answers `201` with `{"id": …, "path": …, "body": …}`. Requests with the
//! same `Idempotency-Key` (within one `Authorization` scope) execute at most once:
//!
//! | the key is… | answer |
//! |---|---|
//! | new (or expired) | execute once, store status + headers + body, answer |
//! | completed, same method + path + body | the stored answer again, byte for byte, plus `Idempotent-Replayed: true` |
//! | still executing | `409` |
//! | used for a different request | `422` |
//! | missing, with `require_key(true)` | `400` |
//! | empty, over 255 bytes, or not visible ASCII | `400` |
//!
//! With [`Route`]s (or a stub file, [`MockServerBuilder::stubs_file`]) it plays your
//! own API instead: the routes say what each request gets, and the rules above still
//! hold for operations (POST, PUT, PATCH, DELETE).
//!
//! A body over `max_body_bytes` gets `413`, an invalid JSON or form body `400`. Errors
//! are `application/problem+json` (RFC 9457). An operation, once started, completes and
//! is stored even if its client disconnects.
//!
//! ```
//! use idempotent_retry::IdempotentClient;
//! use idempotent_retry::mock::{Fault, MockServer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), idempotent_retry::Error> {
//! let server = MockServer::start().await;
//! // The first attempt executes, but its answer is lost; the retry gets the stored one.
//! server.inject(Fault::DropAfterProcessing, 1);
//!
//! let resp = IdempotentClient::new()
//!     .post_idempotent(format!("{}/orders", server.uri()))
//!     .json(&serde_json::json!({ "sku": "tea" }))
//!     .send()
//!     .await?;
//!
//! assert_eq!(resp.status(), 201);
//! assert!(resp.is_replay());
//! assert_eq!(server.executions(), 1);
//! assert!(server.duplicates().is_empty());
//! # Ok(())
//! # }
//! ```

mod admin;
mod builder;
mod error;
mod fault;
mod handler;
mod response;
mod route;
mod routed;
mod serve;
mod shared;
mod store;
mod stubs;
mod template;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::Method;
use serde::Serialize;

pub use builder::MockServerBuilder;
pub use error::MockError;
pub use fault::Fault;
pub use route::Route;

use shared::Shared;

/// Internal parsers, for the crate's `fuzzing` module.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    pub(crate) fn decode_key(bytes: &[u8]) -> Option<Result<crate::IdempotencyKey, String>> {
        let value = http::HeaderValue::from_bytes(bytes).ok()?;
        Some(super::wire::decode_key(&value))
    }

    pub(crate) fn fault_request(bytes: &[u8]) -> Option<Result<(super::Fault, usize), String>> {
        let request = serde_json::from_slice::<super::fault::FaultRequest>(bytes).ok()?;
        Some(request.into_fault())
    }
}

/// One request the server received (POST/PATCH, admin requests excluded).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReceivedRequest {
    /// `POST` or `PATCH`.
    pub method: Method,
    /// The URL path.
    pub path: String,
    /// The idempotency key as sent (decoded from the structured form), if any.
    pub key: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

/// The read-back figures, as `GET /__admin/stats` also gives them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Operations executed (side effects performed).
    pub executions: u64,
    /// POST/PATCH requests received.
    pub requests: u64,
    /// Stored answers sent again for a repeated key.
    pub replays: u64,
    /// `409`s: a key arrived again while still executing.
    pub conflicts: u64,
    /// `422`s: a key arrived again with a different request.
    pub mismatches: u64,
    /// Keys in the store now.
    pub stored_keys: usize,
    /// Scripted faults still queued.
    pub faults_queued: usize,
    /// Keys executed more than once. Must be empty.
    pub duplicates: Vec<String>,
}

/// A running mock server on 127.0.0.1. It runs on its own thread and runtime, so it
/// works from any test (`#[tokio::test]` of either flavour, or a plain `#[test]` with
/// [`MockServerBuilder::start_blocking`]). Dropping it shuts it down.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockServer {
    /// Starts a server with the default settings on a free port.
    ///
    /// # Panics
    ///
    /// If no port on 127.0.0.1 can be bound, as a test tool would; use
    /// [`MockServer::builder`] to get that as an error.
    pub async fn start() -> MockServer {
        match MockServer::builder().start_blocking() {
            Ok(server) => server,
            Err(e) => panic!("the mock server could not start: {e}"),
        }
    }

    /// A builder for the server's settings.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::default()
    }

    /// Base URL, such as `http://127.0.0.1:40123`.
    #[must_use]
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// Queues `fault` for the next `times` POST/PATCH requests, after faults already
    /// queued. A retry is a new request and takes the next fault.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.shared.inject(fault, times);
    }

    /// Operations executed so far.
    #[must_use]
    pub fn executions(&self) -> u64 {
        self.shared.executions()
    }

    /// How many times the operation with this key executed (all scopes together), for
    /// keys the server still remembers: within `max_keys`, and counting a re-execution
    /// after the key's TTL.
    #[must_use]
    pub fn executions_for(&self, key: &str) -> u64 {
        self.shared.executions_for(key)
    }

    /// Keys executed more than once, sorted. Empty when idempotency held. (A key that
    /// executes again after being evicted by `max_keys` cannot be told apart from a new
    /// one, as on a real server.)
    #[must_use]
    pub fn duplicates(&self) -> Vec<String> {
        self.shared.duplicates()
    }

    /// The POST/PATCH requests received, oldest first (the most recent
    /// `max_log` of them).
    #[must_use]
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests()
    }

    /// Stored answers sent again.
    #[must_use]
    pub fn replays(&self) -> u64 {
        self.shared.replays()
    }

    /// `409` answers (key still in flight).
    #[must_use]
    pub fn conflicts(&self) -> u64 {
        self.shared.conflicts()
    }

    /// `422` answers (key reused for a different request).
    #[must_use]
    pub fn mismatches(&self) -> u64 {
        self.shared.mismatches()
    }

    /// All the read-back figures at once.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Forgets stored keys, counts, the request log and queued faults.
    pub fn reset(&self) {
        self.shared.reset();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
