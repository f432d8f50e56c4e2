//! An idempotent HTTP server with fault injection, in your test process or as the
//! `idempotent-mock-server` binary, to test the whole client-server loop and prove
//! exactly-once effects. Test tooling, for `[dev-dependencies]`: the companion of the
//! [`idempotent-retry`](https://docs.rs/idempotent-retry) client, which it does not
//! depend on (any HTTP client can drive it).
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
//! use idempotent_retry_mock::{Fault, MockServer};
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
//!
//! # Cargo features
//!
//! | feature | default | what it does |
//! |---|---|---|
//! | `fuzzing` | no | internal: entry points for the source repository's `cargo fuzz` targets; no API promise |

mod admin;
mod auth;
mod builder;
mod closure;
mod duration;
mod error;
mod fault;
mod handler;
mod key;
mod keys;
mod log;
mod outage;
mod proxy;
mod response;
mod rng;
mod route;
mod routed;
mod serve;
mod shared;
mod socket;
mod stall;
mod store;
mod stubs;
mod template;
mod throttle;
mod upstream;
mod verify;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use auth::ADMIN_TOKEN_ENV;
pub use builder::MockServerBuilder;
pub use closure::{MockRequest, MockResponse};
pub use duration::parse_duration;
pub use error::MockError;
pub use fault::Fault;
/// The status type [`Fault`]'s status faults take: `StatusCode::SERVICE_UNAVAILABLE`,
/// or `StatusCode::from_u16(503)`.
pub use http::StatusCode;
pub use keys::{Exchange, KeyReport, Verdict};
pub use log::ReceivedRequest;
pub use outage::Outage;
pub use route::{Route, RouteStats};
pub use verify::{Check, CheckResult, Outcome, Verifier, VerifyReport};

use shared::Shared;

/// Entry points for the source repository's `cargo fuzz` targets (feature `fuzzing`). Not
/// part of the public API: no stability promise.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// The key header's decoding (bare or structured string): the key's text, or why
    /// the server refuses it.
    pub fn decode_key(bytes: &[u8]) -> Option<Result<String, String>> {
        let value = http::HeaderValue::from_bytes(bytes).ok()?;
        Some(crate::wire::decode_key(&value).map(|key| key.as_str().to_owned()))
    }

    /// `POST /__admin/faults` body parsing: the fault and how many times to apply it.
    pub fn fault_request(bytes: &[u8]) -> Option<Result<(crate::Fault, usize), String>> {
        let request = serde_json::from_slice::<crate::fault::FaultRequest>(bytes).ok()?;
        Some(request.into_fault())
    }
}

/// A key that executed more than once, as
/// [`MockServer::duplicate_details`] reports it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Duplicate {
    /// The key.
    pub key: String,
    /// Its executions, all scopes together.
    pub executions: u64,
    /// The scopes it executed in: one when it ran twice in one scope.
    pub scopes: Vec<String>,
}

/// The read-back figures, as `GET /__admin/stats` also gives them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Operations executed (side effects performed).
    pub executions: u64,
    /// Requests received (without routes, POST and PATCH; with routes, all of them).
    pub requests: u64,
    /// Stored answers sent again for a repeated key.
    pub replays: u64,
    /// `409`s: a key arrived again while still executing.
    pub conflicts: u64,
    /// `422`s: a key arrived again with a different request.
    pub mismatches: u64,
    /// Keys in the store now.
    pub stored_keys: usize,
    /// Scripted faults still queued, for all requests and for single routes together.
    pub faults_queued: usize,
    /// Keys executed more than once. Must be empty.
    pub duplicates: Vec<String>,
    /// Proxy mode: keys the upstream answered with two different successes, that is
    /// executed twice (see [`MockServer::keys`]). Must be 0.
    pub diverged_keys: usize,
    /// Requests held back by a stall before processing (see [`MockServer::stall`]).
    pub stalled: u64,
    /// Each route's figures, in route order (empty without routes).
    pub routes: Vec<RouteStats>,
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
    expectations: Mutex<Vec<Expectation>>,
}

/// What a route must have done by the time the server drops.
#[derive(Debug)]
struct Expectation {
    route: String,
    count: Count,
    times: u64,
}

/// What an expectation counts.
#[derive(Clone, Copy, Debug)]
enum Count {
    Executions,
    Requests,
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

    /// Starts an outage now, for `duration`: every request but the admin API's is
    /// answered with the outage's status, or has its connection dropped, executing
    /// nothing; then the server serves again as before. A zero duration ends an outage.
    /// Also `POST /__admin/outage` (`{"status": 503, "duration": "5s"}` or
    /// `{"drop": true, "duration": "5s"}`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry_mock::{MockServer, Outage, StatusCode};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let server = MockServer::start().await;
    /// server.outage(Outage::Status(StatusCode::SERVICE_UNAVAILABLE), Duration::from_secs(5));
    /// # }
    /// ```
    pub fn outage(&self, outage: Outage, duration: std::time::Duration) {
        self.shared.outage.begin(outage, duration);
    }

    /// From now on, `share` of the requests the server processes (those a fault could
    /// act on: without routes, POST and PATCH with an acceptable key and body; with
    /// routes, any request a route answers) wait `duration` before processing, then go
    /// on as usual: the tail latency of a slow queue, for testing timeouts and hedging.
    /// Which requests stall is drawn from the server's seed. A zero share or duration
    /// ends stalls; [`reset`](Self::reset) leaves the setting and zeroes the count.
    /// Also `POST /__admin/stall` (`{"share": 0.02, "duration": "1s"}`), the builder's
    /// [`stall`](MockServerBuilder::stall) and a stub file's `[stall]` table.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry_mock::MockServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotent_retry_mock::MockError> {
    /// let server = MockServer::start().await;
    /// server.stall(0.02, Duration::from_secs(1))?; // 2 % of requests wait a second
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MockError::InvalidConfig`] for a share outside `[0, 1]`; nothing changes.
    pub fn stall(&self, share: f64, duration: std::time::Duration) -> Result<(), MockError> {
        self.shared
            .stalls
            .set(share, duration)
            .map_err(|reason| MockError::InvalidConfig { reason })
    }

    /// Requests that a stall held back before processing.
    #[must_use]
    pub fn stalled(&self) -> u64 {
        self.shared.stalls.stalled()
    }

    /// Queues `fault` for the next `times` requests the server processes, after faults
    /// already queued: without routes, POST and PATCH requests with an acceptable key
    /// and body; with routes, any request a route answers (a route's own queue, see
    /// [`inject_route`](Self::inject_route), comes first). A retry is a new request and
    /// takes the next fault.
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

    /// Keys executed more than once, sorted. Empty when idempotency held. A key counts
    /// whether it ran twice in one scope or once in each of two scopes (the
    /// [`scope_header`](MockServerBuilder::scope_header), `Authorization` by default):
    /// a client that re-sends an operation without its credential, or with a rotated
    /// token against a server that scopes keys by token, executes it again in a new
    /// scope, and that is a double execution all the same.
    /// [`duplicate_details`](Self::duplicate_details) says in which scopes. (A key that
    /// executes again after being evicted by `max_keys` cannot be told apart from a new
    /// one, as on a real server.)
    #[must_use]
    pub fn duplicates(&self) -> Vec<String> {
        self.shared.duplicates()
    }

    /// Each key of [`duplicates`](Self::duplicates) with its executions and the scopes
    /// it ran in, sorted by key. A scope is shown by its scheme and a short digest
    /// (`Bearer #3fa2c1d0`, `(no scope header)`), never the credential.
    #[must_use]
    pub fn duplicate_details(&self) -> Vec<Duplicate> {
        self.shared.duplicate_details()
    }

    /// Proxy mode ([`MockServerBuilder::upstream`]): per key and scope, each request
    /// forwarded to the upstream and what it answered, with a verdict on whether the
    /// upstream honoured the key ([`Verdict::Diverged`]: it executed twice). Sorted by
    /// key; empty without an upstream. `GET /__admin/keys` gives the same.
    #[must_use]
    pub fn keys(&self) -> Vec<KeyReport> {
        self.shared.keys()
    }

    /// The requests received, oldest first, with their headers and bodies (the most
    /// recent, within `max_log` and `max_log_bytes`): without routes, POST and PATCH
    /// requests; with routes, every request.
    #[must_use]
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.shared.requests()
    }

    /// Requests answered from the store (a replay of a stored result), counted when the
    /// server decides so, as [`executions`](Self::executions) counts an execution:
    /// an answer that an after-processing fault then drops or spoils on the wire still
    /// counts, because the server did replay it. Two `DropAfterProcessing` faults and a
    /// client that retries three times give 1 execution and 2 replays.
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

    /// Forgets stored keys, counts, the request log and queued faults (the server's
    /// and every route's); expectations stay. A key whose operation is in flight at that
    /// moment stays in flight until it completes, and is stored then: forgetting it
    /// would let its retry execute the operation a second time, unseen.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Queues `fault` for the next `times` requests that `route` answers, ahead of the
    /// server's own queue. `route` is a route's name, or `"METHOD path"` for every
    /// route with that method and path (each gets `times`).
    ///
    /// # Errors
    ///
    /// [`MockError::UnknownRoute`] if no route has that name or method and path.
    pub fn inject_route(&self, route: &str, fault: Fault, times: usize) -> Result<(), MockError> {
        for route in self.shared.select(route)? {
            shared::lock(&route.faults).inject(fault.clone(), times);
        }
        Ok(())
    }

    /// The read-back figures of `route` (a name, or `"METHOD path"`: then the sums over
    /// every route with that method and path).
    ///
    /// # Errors
    ///
    /// [`MockError::UnknownRoute`] if no route has that name or method and path.
    pub fn route_stats(&self, route: &str) -> Result<RouteStats, MockError> {
        let chosen = self.shared.select(route)?;
        let mut stats = RouteStats {
            name: route.to_owned(),
            route: String::new(),
            requests: 0,
            executions: 0,
        };
        for one in &chosen {
            let one = one.stats();
            stats.route = one.route;
            stats.requests += one.requests;
            stats.executions += one.executions;
        }
        if let [only] = chosen.as_slice() {
            stats.name = only.name.to_string();
        }
        Ok(stats)
    }

    /// The logged requests `route` answered, oldest first (bodies and headers
    /// included, within `max_log` and `max_log_bytes`).
    ///
    /// # Errors
    ///
    /// [`MockError::UnknownRoute`] if no route has that name or method and path.
    pub fn received(&self, route: &str) -> Result<Vec<ReceivedRequest>, MockError> {
        let chosen = self.shared.select(route)?;
        Ok(self.shared.requests_to(&chosen))
    }

    /// Expects `route` to have executed exactly `times` times (see
    /// [`RouteStats::executions`]) when the server is dropped, as wiremock's `expect`
    /// does: otherwise the drop panics with what the route received, unless the thread
    /// is already panicking. `reset` does not clear expectations.
    ///
    /// ```
    /// use idempotent_retry_mock::{MockServer, Route};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = MockServer::builder()
    ///     .route(Route::post("/v1/charges").name("charge").body(r#"{"id": "{{id}}"}"#))
    ///     .start()
    ///     .await?;
    /// server.expect("charge", 1)?;
    /// idempotent_retry::IdempotentClient::new()
    ///     .post_idempotent(format!("{}/v1/charges", server.uri()))
    ///     .json(&serde_json::json!({"amount": 100}))
    ///     .send()
    ///     .await?;
    /// drop(server); // checked here
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MockError::UnknownRoute`] if no route has that name or method and path.
    pub fn expect(&self, route: &str, times: u64) -> Result<(), MockError> {
        self.expect_count(route, Count::Executions, times)
    }

    /// Expects `route` to have been sent exactly `times` requests (replays and faulted
    /// ones included) when the server is dropped; see [`expect`](Self::expect).
    ///
    /// # Errors
    ///
    /// [`MockError::UnknownRoute`] if no route has that name or method and path.
    pub fn expect_requests(&self, route: &str, times: u64) -> Result<(), MockError> {
        self.expect_count(route, Count::Requests, times)
    }

    fn expect_count(&self, route: &str, count: Count, times: u64) -> Result<(), MockError> {
        self.shared.select(route)?;
        shared::lock(&self.expectations).push(Expectation {
            route: route.to_owned(),
            count,
            times,
        });
        Ok(())
    }

    /// Every expectation that does not hold, as one message.
    fn unmet(&self) -> Option<String> {
        let expectations = std::mem::take(&mut *shared::lock(&self.expectations));
        let mut message = String::new();
        for expected in expectations {
            let Ok(stats) = self.route_stats(&expected.route) else {
                continue;
            };
            let (got, what) = match expected.count {
                Count::Executions => (stats.executions, "executions"),
                Count::Requests => (stats.requests, "requests"),
            };
            if got == expected.times {
                continue;
            }
            let received = self.received(&expected.route).unwrap_or_default();
            message.push_str(&format!(
                "route {:?}: expected {} {what}, got {got}; it received {} request(s){}\n",
                expected.route,
                expected.times,
                stats.requests,
                if received.is_empty() { "" } else { ":" },
            ));
            for request in received {
                message.push_str(&format!("  {}\n", request.line()));
            }
        }
        (!message.is_empty()).then_some(message)
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
        if let Some(unmet) = self.unmet() {
            if !std::thread::panicking() {
                panic!("mock server expectations not met:\n{unmet}");
            }
        }
    }
}

/// The README's examples, compiled and run as doctests so that they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
