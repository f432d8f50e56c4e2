//! The mock server's settings and its start: bind, runtime, thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::MockServer;
use super::auth::{AdminToken, check_exposure};
use super::error::MockError;
use super::fault::{Fault, Faults, RandomFaults};
use super::route::{Compiled, Route};
use super::serve::serve;
use super::shared::{Config, Shared};
use super::stubs::Loaded;
use super::upstream::Upstream;

/// Settings for a [`MockServer`].
///
/// # Default
///
/// | setting | default |
/// |---|---|
/// | `require_key` | `false`: requests without a key execute every time |
/// | `retry_after_dates` | `false`: `Retry-After` in seconds |
/// | `key_ttl` | 24 h |
/// | `processing_delay` | 0 |
/// | `max_body_bytes` | 1 MiB |
/// | `max_keys` | 100,000 stored keys (expired evicted first, then oldest completed) |
/// | `max_log` | the last 100,000 requests |
/// | `max_log_bytes` | 64 MiB of logged paths, keys, headers and bodies |
/// | `log_credentials` | `false`: `Authorization` is logged as `[redacted]` |
/// | `log_requests` | `false`: nothing printed |
/// | `header_read_timeout` | 30 s to send a request's headers (also the keep-alive idle limit) |
/// | `key_header` | `Idempotency-Key` |
/// | `scope_header` | `Authorization`: keys and created resources are per credential |
/// | random faults | none; `fault_rate` spreads a rate over all eleven kinds |
/// | `outage` | none ([`MockServer::outage`] starts one at any time) |
/// | `stall` | none: no request waits before processing |
/// | `addr` | `127.0.0.1:0` (a free port) |
/// | `admin_token` | none: `/__admin/*` is open, which `start` allows on loopback only |
/// | `threads` | 2 worker threads (a test's server; the binary uses every core) |
/// | routes | none: every POST/PATCH creates a resource (`201 {"id", "path", "body"}`) |
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry_mock::MockServer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), idempotent_retry_mock::MockError> {
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
    retry_after_dates: bool,
    key_ttl: Duration,
    processing_delay: Duration,
    max_body_bytes: usize,
    max_keys: usize,
    max_log: usize,
    max_log_bytes: usize,
    log_credentials: bool,
    header_read_timeout: Duration,
    key_header: Result<HeaderName, String>,
    scope_header: Result<HeaderName, String>,
    seed: u64,
    rates: Vec<(Fault, f64)>,
    routes: Vec<Routes>,
    threads: usize,
    admin_token: Option<Result<AdminToken, String>>,
    log_requests: bool,
    outage: Option<(super::Outage, Duration)>,
    stall: Option<(f64, Duration)>,
    upstream: Option<String>,
    id_pointer: Option<String>,
}

/// Where routes come from, in the order given.
#[derive(Debug, Clone)]
enum Routes {
    /// Boxed: a route is large beside a path.
    One(Box<Route>),
    File(std::path::PathBuf),
}

impl Default for MockServerBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            require_key: false,
            retry_after_dates: false,
            key_ttl: Duration::from_secs(24 * 3600),
            processing_delay: Duration::ZERO,
            max_body_bytes: 1024 * 1024,
            max_keys: 100_000,
            max_log: 100_000,
            max_log_bytes: 64 * 1024 * 1024,
            log_credentials: false,
            header_read_timeout: Duration::from_secs(30),
            key_header: Ok(HeaderName::from_static(crate::key::DEFAULT_KEY_HEADER)),
            scope_header: Ok(http::header::AUTHORIZATION),
            seed: 0,
            rates: Vec::new(),
            routes: Vec::new(),
            threads: 2,
            admin_token: None,
            log_requests: false,
            outage: None,
            stall: None,
            upstream: None,
            id_pointer: None,
        }
    }
}

impl MockServerBuilder {
    /// Proxy mode: every request that is not `/__admin/*` is forwarded to the server
    /// at `url` (`http://` or `https://`; its path, if any, prefixes every request's),
    /// and its answer passed back as it came. The server then stores and replays
    /// nothing itself: faults act on either side of the upstream (a *before
    /// processing* one without forwarding, an *after processing* one on the upstream's
    /// answer once it has finished), and [`MockServer::keys`](crate::MockServer::keys)
    /// tells, per key, what the upstream answered and whether it executed a key twice.
    /// Routes, matched by method and path alone, bring their own faults and rate
    /// limits; their answers are not used. The upstream's answer is read whole (up to
    /// 16 MiB) before it is passed on, so that a fault can act on it.
    ///
    /// ```no_run
    /// use idempotent_retry_mock::{Fault, MockServer};
    ///
    /// # async fn run() -> Result<(), idempotent_retry_mock::MockError> {
    /// let proxy = MockServer::builder()
    ///     .upstream("http://127.0.0.1:8080")
    ///     .id_pointer("/id")
    ///     .start()
    ///     .await?;
    /// proxy.inject(Fault::DropAfterProcessing, 1);
    /// // ... point your client at proxy.uri(), then:
    /// assert_eq!(proxy.stats().diverged_keys, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.upstream = Some(url.into());
        self
    }

    /// Proxy mode: where an upstream answer's JSON body names the resource it created
    /// (a JSON pointer, `/id` or `/data/id`), so that two answers to one key are
    /// compared by resource rather than by body.
    pub fn id_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.id_pointer = Some(pointer.into());
        self
    }

    /// Rate-limited answers carry `Retry-After` as an HTTP-date, with the answer's `Date`
    /// beside it (whole seconds both), instead of delay-seconds: to test that a client
    /// reads the date against `Date` and never comes back early.
    pub fn retry_after_dates(mut self, dates: bool) -> Self {
        self.retry_after_dates = dates;
        self
    }

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

    /// Most requests kept in the read-back log (older ones are dropped); 0 keeps none.
    pub fn max_log(mut self, requests: usize) -> Self {
        self.max_log = requests;
        self
    }

    /// Most bytes of paths, keys, headers and bodies kept in the read-back log: older
    /// entries are dropped past it, and a body that cannot fit even alone is kept cut
    /// (`body_truncated`).
    pub fn max_log_bytes(mut self, bytes: usize) -> Self {
        self.max_log_bytes = bytes;
        self
    }

    /// Keep `Authorization` and `Proxy-Authorization` values in the log (by default
    /// they read `[redacted]`, so that a log printed by a failing test or served by
    /// `GET /__admin/requests` holds no credential).
    pub fn log_credentials(mut self, keep: bool) -> Self {
        self.log_credentials = keep;
        self
    }

    /// Starts the server in an outage lasting `duration` from its start (see
    /// [`MockServer::outage`], which starts one at any time).
    pub fn outage(mut self, outage: super::Outage, duration: Duration) -> Self {
        self.outage = Some((outage, duration));
        self
    }

    /// Starts the server with `share` of the requests it processes waiting `duration`
    /// before processing (see [`MockServer::stall`], which sets it at any time): tail
    /// latency for testing timeouts and hedging. `start` refuses a share outside
    /// `[0, 1]`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry_mock::MockServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), idempotent_retry_mock::MockError> {
    /// let server = MockServer::builder()
    ///     .stall(0.02, Duration::from_secs(1))
    ///     .seed(7)
    ///     .start()
    ///     .await?;
    /// # drop(server);
    /// # Ok(())
    /// # }
    /// ```
    pub fn stall(mut self, share: f64, duration: Duration) -> Self {
        self.stall = Some((share, duration));
        self
    }

    /// Prints one line per request on standard error once it is answered: method,
    /// path, the key as sent (`-` for none), the status (`replayed` for an answer from
    /// the store, `dropped` for a connection closed by a fault) and the fault drawn:
    /// `POST /orders key=k1 -> 503 fault=status_before_processing`. For watching a
    /// shared server or a demo; a test reads [`MockServer::requests`] instead.
    pub fn log_requests(mut self, on: bool) -> Self {
        self.log_requests = on;
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

    /// The header whose value scopes keys and created resources (default
    /// `Authorization`, as Stripe scopes keys by API key). A server that scopes keys by
    /// *token* sees a key sent again under a rotated token as new, and executes it
    /// again: scope by an account header (`x-account`) to model a server that does not.
    ///
    /// Per scope, the server keeps each key's stored answer, in-flight state and
    /// fingerprint, and the created resources read back by `GET`: a replay, a `409` or a
    /// `422` only ever answers the scope the key was first sent in. Executions are
    /// counted across scopes too: a key that executes in two scopes is in
    /// [`MockServer::duplicates`](super::MockServer::duplicates), with the scopes in
    /// [`duplicate_details`](super::MockServer::duplicate_details).
    pub fn scope_header(mut self, name: &str) -> Self {
        self.scope_header =
            HeaderName::try_from(name).map_err(|e| format!("scope_header {name:?}: {e}"));
        self
    }

    /// Where to listen; the default is a free port on 127.0.0.1. An address beyond
    /// loopback needs an [`admin_token`](Self::admin_token).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Requires `Authorization: Bearer <token>` on every `/__admin/*` request (`401`
    /// without it; compared in constant time). Without a token the admin API is open,
    /// and `start` refuses an address beyond loopback: a shared server (a team's, a CI
    /// fleet's) would let anyone who reaches it reset it or inject faults. Operations
    /// are not affected. The standalone binary reads it from `--admin-token` or the
    /// [`ADMIN_TOKEN_ENV`](super::ADMIN_TOKEN_ENV) environment variable.
    ///
    /// ```
    /// use idempotent_retry_mock::MockServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = MockServer::builder()
    ///     .addr("0.0.0.0:0".parse()?)
    ///     .admin_token("a-long-random-string")
    ///     .start()
    ///     .await?;
    /// let stats = reqwest::Client::new()
    ///     .get(format!("http://127.0.0.1:{}/__admin/stats", server.address().port()))
    ///     .bearer_auth("a-long-random-string")
    ///     .send()
    ///     .await?;
    /// assert_eq!(stats.status(), 200);
    /// # Ok(())
    /// # }
    /// ```
    pub fn admin_token(mut self, token: impl AsRef<str>) -> Self {
        self.admin_token = Some(AdminToken::new(token.as_ref()));
        self
    }

    /// Worker threads of the server's own runtime (at least 1): 2 suit a test; a server
    /// shared by a team or a CI fleet wants one per core.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Seed for random faults and for the ids routes draw (`{{id}}`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Random faults on `rate` of requests, spread evenly over the eleven kinds of
    /// [`Fault::all_kinds`] (503 before, 500 after, 2 s delays before and after, drops
    /// and resets before and after, 429 with `Retry-After: 1`, a truncated answer,
    /// garbage).
    pub fn fault_rate(self, rate: f64) -> Self {
        self.fault_rates(super::fault::spread(rate))
    }

    /// Random faults with a probability each per request (adding up to at most 1).
    pub fn fault_rates(mut self, rates: impl IntoIterator<Item = (Fault, f64)>) -> Self {
        self.rates = rates.into_iter().collect();
        self
    }

    /// Adds a route of your API: with routes, the server answers as they say (tried in
    /// order, first match wins, none: `404`), with every idempotency rule and fault
    /// still applying to operations (POST, PUT, PATCH, DELETE). See [`Route`].
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(Routes::One(Box::new(route)));
        self
    }

    /// Adds the routes of a stub file, TOML or JSON by its extension (read at `start`),
    /// after the routes given so far. The schema is [`Route`]'s, under a top-level
    /// `route` list; unknown fields are refused, and every error names the file, the
    /// route and where. A file may also start the server in an outage and with stalls
    /// (the [`outage`](Self::outage) and [`stall`](Self::stall) given here win over a
    /// file's; of two files, the later one's).
    ///
    /// ```toml
    /// [outage]          # from the start: 503 (or drop = true) for 5 s
    /// status = 503
    /// duration = "5s"
    ///
    /// [stall]           # 2 % of requests wait 1 s before processing
    /// share = 0.02
    /// duration = "1s"
    ///
    /// [[route]]
    /// name = "create"
    /// method = "POST"
    /// path = "/v1/payment_intents"
    /// id_prefix = "pi_"
    /// headers = { "Request-Id" = "req_{{seq}}" }
    /// body = '{"id": "{{id}}", "amount": {{body.amount}}, "status": "succeeded"}'
    /// ```
    pub fn stubs_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.routes.push(Routes::File(path.into()));
        self
    }

    /// Checks the settings and reads and checks the routes (stub files included),
    /// without starting anything: what `start` would refuse, this refuses.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), except for the address, which is not bound.
    pub fn check(&self) -> Result<(), MockError> {
        for header in [&self.key_header, &self.scope_header] {
            if let Err(reason) = header {
                return Err(MockError::InvalidConfig {
                    reason: reason.clone(),
                });
            }
        }
        if !self.rates.is_empty() {
            RandomFaults::new(self.seed, &self.rates)
                .map_err(|reason| MockError::InvalidConfig { reason })?;
        }
        self.checked_admin_token()?;
        let (_, from_files) = self.compiled_routes()?;
        self.proxy_setting()?;
        self.stall_setting(&from_files).map(drop)
    }

    /// The stalls to start with, the builder's over a stub file's, checked.
    fn stall_setting(&self, from_files: &Loaded) -> Result<Option<(f64, Duration)>, MockError> {
        let stall = self.stall.or(from_files.stall);
        if let Some((share, _)) = stall {
            super::stall::check(share).map_err(|reason| MockError::InvalidConfig { reason })?;
        }
        Ok(stall)
    }

    /// The admin token, checked, and refused for its absence beyond loopback.
    fn checked_admin_token(&self) -> Result<Option<AdminToken>, MockError> {
        let config_error = |reason: String| MockError::InvalidConfig { reason };
        let token = self.admin_token.clone().transpose().map_err(config_error)?;
        check_exposure(self.addr, token.as_ref()).map_err(config_error)?;
        Ok(token)
    }

    /// Every route, from builder calls and stub files in order, checked and parsed;
    /// and the outage and stalls the stub files set (the last file's).
    fn compiled_routes(&self) -> Result<(Vec<Compiled>, Loaded), MockError> {
        let config_error = |reason: String| MockError::InvalidConfig { reason };
        let mut listed = Vec::new();
        let mut from_files = Loaded::default();
        for source in &self.routes {
            match source {
                Routes::One(route) => listed.push(Route::clone(route)),
                Routes::File(path) => {
                    let loaded = super::stubs::load(path).map_err(config_error)?;
                    listed.extend(loaded.routes);
                    from_files.outage = loaded.outage.or(from_files.outage);
                    from_files.stall = loaded.stall.or(from_files.stall);
                }
            }
        }
        let mut compiled: Vec<Compiled> = Vec::with_capacity(listed.len());
        for (i, route) in listed.iter().enumerate() {
            let route = Compiled::new(route, i, self.seed).map_err(config_error)?;
            if compiled.iter().any(|r| r.name == route.name) {
                return Err(config_error(format!(
                    "two routes are named {:?}; names must be unique",
                    route.name
                )));
            }
            compiled.push(route);
        }
        Ok((compiled, from_files))
    }

    /// The upstream of proxy mode, checked; an id pointer without an upstream is an
    /// error.
    fn proxy_setting(&self) -> Result<Option<Upstream>, MockError> {
        let config_error = |reason: String| MockError::InvalidConfig { reason };
        let Some(url) = &self.upstream else {
            if self.id_pointer.is_some() {
                return Err(config_error(
                    "id_pointer is for proxy mode: set upstream too".into(),
                ));
            }
            return Ok(None);
        };
        Upstream::new(url, self.id_pointer.clone())
            .map(Some)
            .map_err(config_error)
    }

    /// The listening socket, its address, and the runtime that will serve it.
    fn bound(
        addr: SocketAddr,
        threads: usize,
    ) -> Result<(std::net::TcpListener, SocketAddr, tokio::runtime::Runtime), MockError> {
        let io_error = |reason: &str| {
            let reason = reason.to_owned();
            move |source| MockError::Io { reason, source }
        };
        let listener = std::net::TcpListener::bind(addr).map_err(io_error("could not bind"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("could not configure the socket"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("could not read the bound address"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("idempotent-mock-server")
            .enable_all()
            .build()
            .map_err(io_error("could not start its runtime"))?;
        Ok((listener, addr, runtime))
    }

    /// Starts the server.
    ///
    /// # Errors
    ///
    /// [`MockError::InvalidConfig`] for fault rates outside `[0, 1]` or adding up past 1,
    /// an invalid key header, or an upstream that is not an `http(s)` URL;
    /// [`MockError::Io`] if the address cannot be bound.
    pub async fn start(self) -> Result<MockServer, MockError> {
        self.start_blocking()
    }

    /// Starts the server without needing an async context, for a plain `#[test]`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub fn start_blocking(self) -> Result<MockServer, MockError> {
        let config_error = |reason: String| MockError::InvalidConfig { reason };
        let (routes, from_files) = self.compiled_routes()?;
        let stall = self.stall_setting(&from_files)?;
        let outage = self.outage.or(from_files.outage);
        let admin_token = self.checked_admin_token()?;
        let upstream = self.proxy_setting()?;
        let key_header = self.key_header.map_err(config_error)?;
        let scope_header = self.scope_header.map_err(config_error)?;
        let random = if self.rates.is_empty() {
            None
        } else {
            Some(RandomFaults::new(self.seed, &self.rates).map_err(config_error)?)
        };
        let io_error = |reason: &str| {
            let reason = reason.to_owned();
            move |source| MockError::Io { reason, source }
        };
        let (listener, addr, runtime) = Self::bound(self.addr, self.threads)?;

        let shared = Arc::new(Shared::new(
            Config {
                require_key: self.require_key,
                retry_after_dates: self.retry_after_dates,
                key_ttl: self.key_ttl,
                processing_delay: self.processing_delay,
                max_body_bytes: self.max_body_bytes,
                max_keys: self.max_keys,
                max_log: self.max_log,
                max_log_bytes: self.max_log_bytes,
                log_credentials: self.log_credentials,
                key_header,
                scope_header,
                seed: self.seed,
                admin_token,
                log_requests: self.log_requests,
                upstream,
            },
            Faults {
                scripted: Default::default(),
                random,
            },
            routes,
        ));
        if let Some((outage, duration)) = outage {
            shared.outage.begin(outage, duration);
        }
        if let Some((share, duration)) = stall {
            // Checked above (`stall_setting`): a share in [0, 1] is always taken.
            shared
                .stalls
                .set(share, duration)
                .map_err(|reason| MockError::InvalidConfig { reason })?;
        }
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
            expectations: std::sync::Mutex::default(),
        })
    }
}
