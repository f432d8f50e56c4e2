//! An in-process idempotent HTTP server with fault injection, to test the whole
//! client-server loop and prove exactly-once effects (feature `mock`, on by default).
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

mod fault;
mod server;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, Method};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;

pub use crate::duration::parse_duration;
pub use fault::Fault;

use crate::Error;
use fault::{Faults, RandomFaults};

/// Internal parsers, for the crate's `fuzzing` module.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing {
    pub(crate) fn decode_key(bytes: &[u8]) -> Option<Result<crate::IdempotencyKey, String>> {
        let value = http::HeaderValue::from_bytes(bytes).ok()?;
        Some(super::server::decode_key(&value))
    }

    pub(crate) fn fault_request(bytes: &[u8]) -> Option<Result<(super::Fault, usize), String>> {
        let request = serde_json::from_slice::<super::fault::FaultRequest>(bytes).ok()?;
        Some(request.into_fault())
    }
}
use server::{Config, Shared};

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
        server::lock(&self.shared.faults).inject(fault, times);
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

/// Settings for a [`MockServer`].
///
/// # Default
///
/// | setting | default |
/// |---|---|
/// | `require_key` | `false`: requests without a key execute every time |
/// | `key_ttl` | 24 h |
/// | `processing_delay` | 0 |
/// | `max_body_bytes` | 1 MiB |
/// | `max_keys` | 100,000 stored keys (expired evicted first, then oldest completed) |
/// | `max_log` | the last 100,000 requests |
/// | `header_read_timeout` | 30 s to send a request's headers (also the keep-alive idle limit) |
/// | `key_header` | `Idempotency-Key` |
/// | random faults | none; `fault_rate` spreads a rate over all six kinds |
/// | `addr` | `127.0.0.1:0` (a free port) |
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::mock::MockServer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotent_retry::Error> {
/// let server = MockServer::builder()
///     .require_key(true)
///     .key_ttl(Duration::from_secs(60))
///     .processing_delay(Duration::from_millis(5))
///     .max_body_bytes(64 * 1024)
///     .start()
///     .await?;
/// assert!(server.uri().starts_with("http://127.0.0.1:"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MockServerBuilder {
    addr: SocketAddr,
    require_key: bool,
    key_ttl: Duration,
    processing_delay: Duration,
    max_body_bytes: usize,
    max_keys: usize,
    max_log: usize,
    header_read_timeout: Duration,
    key_header: Result<HeaderName, String>,
    seed: u64,
    rates: Vec<(Fault, f64)>,
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            require_key: false,
            key_ttl: Duration::from_secs(24 * 3600),
            processing_delay: Duration::ZERO,
            max_body_bytes: 1024 * 1024,
            max_keys: 100_000,
            max_log: 100_000,
            header_read_timeout: Duration::from_secs(30),
            key_header: Ok(HeaderName::from_static(crate::DEFAULT_KEY_HEADER)),
            seed: 0,
            rates: Vec::new(),
        }
    }
}

impl MockServerBuilder {
    /// Answer `400` to POST/PATCH requests without a key.
    pub fn require_key(mut self, require: bool) -> Self {
        self.require_key = require;
        self
    }

    /// How long a completed key is remembered. After that, the same key executes again:
    /// clients must finish retrying within this time.
    pub fn key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// Time spent inside each operation (the key is in flight meanwhile).
    pub fn processing_delay(mut self, delay: Duration) -> Self {
        self.processing_delay = delay;
        self
    }

    /// Largest accepted body; a larger one gets `413`.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Most keys stored at once (at least 1).
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Most requests kept in the read-back log (older ones are dropped).
    pub fn max_log(mut self, requests: usize) -> Self {
        self.max_log = requests;
        self
    }

    /// How long a client may take to send a request's headers before the connection is
    /// closed (a defence against slowloris-style half requests). It also bounds how long
    /// an idle keep-alive connection stays open between requests.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// The header the key is read from.
    pub fn key_header(mut self, name: &str) -> Self {
        self.key_header =
            HeaderName::try_from(name).map_err(|e| format!("key_header {name:?}: {e}"));
        self
    }

    /// Where to listen; the default is a free port on 127.0.0.1.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Seed for random faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Random faults on `rate` of requests, spread evenly over the six kinds of
    /// [`Fault::all_kinds`] (503 before, 500 after, 2 s delay after, both drops, 429
    /// with `Retry-After: 1`).
    pub fn fault_rate(self, rate: f64) -> Self {
        let kinds = Fault::all_kinds(Duration::from_secs(2), Duration::from_secs(1));
        let each = rate / kinds.len() as f64;
        self.fault_rates(kinds.into_iter().map(|f| (f, each)))
    }

    /// Random faults with a probability each per request (adding up to at most 1).
    pub fn fault_rates(mut self, rates: impl IntoIterator<Item = (Fault, f64)>) -> Self {
        self.rates = rates.into_iter().collect();
        self
    }

    /// Starts the server.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for fault rates outside `[0, 1]` or adding up past 1, or
    /// an invalid key header; [`Error::MockServer`] if the address cannot be bound.
    pub async fn start(self) -> Result<MockServer, Error> {
        self.start_blocking()
    }

    /// Starts the server without needing an async context, for a plain `#[test]`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_blocking(self) -> Result<MockServer, Error> {
        let config_error = |reason: String| Error::InvalidConfig {
            reason,
            source: None,
        };
        let key_header = self.key_header.map_err(config_error)?;
        let random = if self.rates.is_empty() {
            None
        } else {
            Some(RandomFaults::new(self.seed, &self.rates).map_err(config_error)?)
        };
        let io_error = |reason: &str| {
            let reason = reason.to_owned();
            move |source| Error::MockServer {
                reason,
                source: Some(source),
            }
        };
        let listener =
            std::net::TcpListener::bind(self.addr).map_err(io_error("could not bind"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("could not configure the socket"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("could not read the bound address"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("idempotent-mock-server")
            .enable_all()
            .build()
            .map_err(io_error("could not start its runtime"))?;

        let shared = Arc::new(Shared::new(
            Config {
                require_key: self.require_key,
                key_ttl: self.key_ttl,
                processing_delay: self.processing_delay,
                max_body_bytes: self.max_body_bytes,
                max_keys: self.max_keys,
                max_log: self.max_log,
                key_header,
            },
            Faults {
                scripted: Default::default(),
                random,
            },
        ));
        let header_read_timeout = self.header_read_timeout;
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("idempotent-mock-server".into())
            .spawn(move || runtime.block_on(serve(listener, state, stopped, header_read_timeout)))
            .map_err(io_error("could not start its thread"))?;
        Ok(MockServer {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

/// Accepts connections until `stopped` fires.
async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    header_read_timeout: Duration,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that never finishes its headers is cut off instead of holding a task.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .auto_date_header(false);
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| server::handle(shared.clone(), request));
            // Errors here are closed connections, deliberate (faults) or the client's.
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
