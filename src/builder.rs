//! The client's builder: every setting, checked by `build`.

use crate::retry::breaker::CircuitBreaker;
use crate::retry::hedging::Hedging;
use crate::retry::limiter::AdaptiveRateLimit;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::HeaderName;

use crate::inner::Inner;
use crate::journal::{Journal, PendingOperation};
use crate::journaled::settings::{
    DEFAULT_RESUME_CONCURRENCY, JournalSettings, LEASE_MARGIN, ResumeCredentials,
};
use crate::retry::origins::{DEFAULT_MAX_ORIGINS, Origins};
use crate::retry::settings::{RetryHook, RetrySettings, SharedClassifier};
use crate::settings::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_KEY_HEADER, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_SHOULD_RETRY_HEADER, Settings,
};
use crate::{
    Attempt, ClientConfig, Decision, Error, IdempotentClient, KeyFormat, RetryBudget, RetryPolicy,
};

/// Configures an [`IdempotentClient`]. Setters never fail; [`build`](Self::build)
/// reports anything that cannot work.
///
/// # Default
///
/// | setting | default |
/// |---|---|
/// | `retry_policy` | [`RetryPolicy::default`] (3 attempts, 500 ms base, full jitter, 30 s deadline) |
/// | `attempt_timeout` | 10 s per attempt, connect to last byte (shrunk to what remains of the deadline) |
/// | `max_response_bytes` | 16 MiB: far above any API answer, far below what would hurt the caller's memory |
/// | `key_header` | `Idempotency-Key` |
/// | `key_format` | [`KeyFormat::Bare`] |
/// | `should_retry_header` | `Stripe-Should-Retry`: a server that says whether to retry is obeyed, as Stripe's own libraries do |
/// | `retry_budget` | [`RetryBudget::default`], per origin (capacity 500, transient cost 14, throttling cost 5, refund 1: AWS retry behavior 2.1) |
/// | `max_origins` | 10,000 origins remembered; past that, the one whose loss forgets least goes first (see `max_origins`) |
/// | `classifier` | [`default_classifier`](crate::default_classifier) |
/// | `hedging` | none: one attempt at a time ([`Hedging`] gives its defaults) |
/// | `adaptive_rate_limit` | none: attempts are never paced ([`AdaptiveRateLimit`] gives its defaults) |
/// | `circuit_breaker` | none: every origin is always tried ([`CircuitBreaker`] gives the breaker's own defaults and their reasons) |
/// | `log_keys` | `false`: the key is on `debug` events only (a guessed key can read a stored answer on a server that does not scope keys) |
/// | `journal` | none: operations survive lost answers, not a crash of the process ([`journal`](crate::journal)) |
/// | `sensitive_header` | `Authorization`, `Proxy-Authorization` and `Cookie` are never journalled |
/// | `reqwest_client` | `reqwest::Client::builder().timeout(attempt_timeout).redirect(Policy::none()).build()`: the attempt timeout built in, and no redirects followed, so a 3xx is a final answer (a `303` after a POST means it executed) |
#[must_use]
pub struct IdempotentClientBuilder {
    http: Option<reqwest::Client>,
    policy: RetryPolicy,
    attempt_timeout: Duration,
    max_response_bytes: usize,
    key_header: Result<HeaderName, String>,
    key_format: KeyFormat,
    should_retry_header: Result<Option<HeaderName>, String>,
    budget: RetryBudget,
    max_origins: usize,
    classifier: Option<SharedClassifier>,
    on_retry: Option<RetryHook>,
    journal: Option<Arc<dyn Journal>>,
    sensitive: Vec<HeaderName>,
    /// The first invalid `sensitive_header` or `scope_header` name, reported by `build`.
    bad_header_name: Option<String>,
    credentials: Option<ResumeCredentials>,
    scope_headers: Vec<HeaderName>,
    resume_concurrency: usize,
    seal: Option<Arc<dyn crate::journal::BodySeal>>,
    log_keys: bool,
    breaker: Option<CircuitBreaker>,
    limiter: Option<AdaptiveRateLimit>,
    hedging: Option<Hedging>,
}

impl Default for IdempotentClientBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotentClientBuilder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self {
            http: None,
            policy: RetryPolicy::default(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            key_header: Ok(HeaderName::from_static(DEFAULT_KEY_HEADER)),
            key_format: KeyFormat::default(),
            should_retry_header: Ok(Some(HeaderName::from_static(DEFAULT_SHOULD_RETRY_HEADER))),
            budget: RetryBudget::default(),
            max_origins: DEFAULT_MAX_ORIGINS,
            classifier: None,
            on_retry: None,
            journal: None,
            sensitive: Vec::new(),
            bad_header_name: None,
            credentials: None,
            scope_headers: vec![HeaderName::from_static("stripe-account")],
            resume_concurrency: DEFAULT_RESUME_CONCURRENCY,
            seal: None,
            log_keys: false,
            breaker: None,
            limiter: None,
            hedging: None,
        }
    }

    /// The retry policy for every request of this client (a request can override it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{IdempotentClient, RetryPolicy};
    /// let client = IdempotentClient::builder()
    ///     .retry_policy(RetryPolicy::exponential().max_attempts(5).deadline(Duration::from_secs(10)))
    ///     .build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Time for one attempt, from connecting to the last byte of the response.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().attempt_timeout(Duration::from_secs(2)).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The longest answer body the client reads. Each answer is read whole (an attempt
    /// counts as answered only once its last byte arrived), so this bounds the memory
    /// any server can make one `send()` use. A longer answer is not truncated and not
    /// retried: it ends the operation with an error
    /// ([`Error::is_response_too_large`]) that keeps its status, headers and key, and
    /// whose outcome is unknown (the status says what the server did). A body that
    /// declares its length is refused before it is read.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().max_response_bytes(64 << 20).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Sends requests through your own `reqwest::Client` (proxies, TLS roots, pools).
    /// Its own `timeout`, if any, still applies; ours is set on each attempt.
    ///
    /// Mind its redirect policy: reqwest follows redirects by default, and a `307` or
    /// `308` then re-sends the body *and the key* to the target, possibly another
    /// origin. Build it with `.redirect(reqwest::redirect::Policy::none())` unless you
    /// mean that. Whatever it does, an answer from another URL, or an error after a
    /// redirect, counts as "may have executed".
    ///
    /// ```
    /// use idempotent_retry::{reqwest, IdempotentClient};
    /// let http = reqwest::Client::builder().user_agent("shop/1.0").build()?;
    /// let client = IdempotentClient::builder().reqwest_client(http).build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reqwest_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The header the key is sent in. Any valid header name.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().key_header("X-Idempotency-Key").build()?;
    /// assert!(IdempotentClient::builder().key_header("bad header").build().is_err());
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn key_header<K>(mut self, name: K) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: fmt::Display,
    {
        self.key_header = HeaderName::try_from(name)
            .map_err(|e| format!("key_header is not a valid header name: {e}"));
        self
    }

    /// Bare key (the default) or IETF structured string (`"…"`).
    ///
    /// ```
    /// use idempotent_retry::{IdempotentClient, KeyFormat};
    /// let client = IdempotentClient::builder().key_format(KeyFormat::StructuredString).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.key_format = format;
        self
    }

    /// The field in which the server says whether an answer should be retried, read on
    /// non-2xx answers: `true` retries, `false` makes the answer final, whatever its
    /// status says (anything else is ignored). The default is `Stripe-Should-Retry`,
    /// which Stripe's own client libraries obey both ways. A classifier of yours still
    /// has the last word ([`Attempt::should_retry_hint`]).
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().should_retry_header("X-Should-Retry").build()?;
    /// assert!(IdempotentClient::builder().should_retry_header("bad header").build().is_err());
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn should_retry_header<K>(mut self, name: K) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: fmt::Display,
    {
        self.should_retry_header = HeaderName::try_from(name)
            .map(Some)
            .map_err(|e| format!("should_retry_header is not a valid header name: {e}"));
        self
    }

    /// Reads no should-retry field: the status alone (and your classifier) decides.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().ignore_should_retry_header().build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn ignore_should_retry_header(mut self) -> Self {
        self.should_retry_header = Ok(None);
        self
    }

    /// A circuit breaker per origin (off by default): when too many attempts to an
    /// origin fail, sends to it stop before any I/O for a while, then a probe tells
    /// whether it is back. See [`CircuitBreaker`] for the rules and defaults. A refused
    /// operation ends with [`Error::is_circuit_open`]; like any error it says whether
    /// the operation may have executed (a fresh key: not sent; your own key, or a
    /// retry refused after an attempt: maybe). The circuit methods of
    /// [`IdempotentClient`](crate::IdempotentClient) work with or without it.
    ///
    /// ```
    /// use idempotent_retry::{CircuitBreaker, IdempotentClient};
    /// let client = IdempotentClient::builder().circuit_breaker(CircuitBreaker::new()).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Hedging (off by default): when an attempt has no answer after a delay, another
    /// with the same key starts beside it and the first final answer wins, which cuts
    /// the tail a slow server causes. See [`Hedging`] for the rules, and for when POST
    /// and PATCH may hedge (`keyed_methods`). `build` refuses a delay not shorter than
    /// the attempt timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{Hedging, IdempotentClient};
    /// let client = IdempotentClient::builder()
    ///     .hedging(Hedging::after(Duration::from_millis(200)))
    ///     .build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = Some(hedging);
        self
    }

    /// Adaptive rate limiting per origin (off by default): AWS's client rate limiter,
    /// which stays out of the way until an origin throttles (429, or 503 with
    /// `Retry-After`) and then paces every attempt to it, first ones included, to a
    /// rate that throttles cut and successes grow back. See [`AdaptiveRateLimit`]. An
    /// operation that would wait longer than its `max_wait` for a turn ends before any
    /// I/O with [`Error::is_rate_limited`].
    ///
    /// ```
    /// use idempotent_retry::{AdaptiveRateLimit, IdempotentClient};
    /// let client = IdempotentClient::builder().adaptive_rate_limit(AdaptiveRateLimit::new()).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn adaptive_rate_limit(mut self, limit: AdaptiveRateLimit) -> Self {
        self.limiter = Some(limit);
        self
    }

    /// The retry budget: a bucket per origin, shared by the client's clones;
    /// [`RetryBudget::unlimited`] turns it off.
    ///
    /// ```
    /// use idempotent_retry::{IdempotentClient, RetryBudget};
    /// let client = IdempotentClient::builder().retry_budget(RetryBudget::new().capacity(50)).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Puts the idempotency key (`idempotency.key`) on the operation's `info` span and
    /// on its `info` and `warn` events too (retrying, giving up), for matching your logs
    /// to a provider's dashboard, which lists requests by key. Off by default: the key
    /// stays on `debug` events, because on a server that does not scope keys by
    /// credential, whoever reads a key can read the stored answer.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().log_keys(true).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn log_keys(mut self, on: bool) -> Self {
        self.log_keys = on;
        self
    }

    /// Most origins whose state (retry budget, circuit, rate limiter, hedge bucket) the
    /// client remembers, at least 1, so a client that meets millions of hosts stays
    /// bounded. Past it (counted per shard of the table), one is forgotten, and starts
    /// again as new: an idle one first (a full budget, a closed circuit or none, a
    /// limiter that is not throttling), then the one whose budget has the most tokens;
    /// an origin whose circuit is not closed (by its breaker, or by hand) or whose
    /// limiter is throttling only when nothing else is left to forget.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// let client = IdempotentClient::builder().max_origins(100).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn max_origins(mut self, origins: usize) -> Self {
        self.max_origins = origins;
        self
    }

    /// Replaces the retry decision with yours; fall back to
    /// [`default_classifier`](crate::default_classifier) for what you do not change.
    ///
    /// ```
    /// use http::StatusCode;
    /// use idempotent_retry::{default_classifier, Decision, IdempotentClient};
    ///
    /// let client = IdempotentClient::builder()
    ///     .classifier(|attempt| match attempt.status() {
    ///         // This API answers 404 for a few ms after a write: worth another try.
    ///         Some(StatusCode::NOT_FOUND) => Decision::Retry,
    ///         // We know this server answers 500 only for bad input: never retry it.
    ///         Some(StatusCode::INTERNAL_SERVER_ERROR) => Decision::Final,
    ///         _ => default_classifier(attempt),
    ///     })
    ///     .build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn classifier<F>(mut self, classifier: F) -> Self
    where
        F: Fn(&Attempt<'_>) -> Decision + Send + Sync + 'static,
    {
        self.classifier = Some(Arc::new(classifier));
        self
    }

    /// Called before each retry's sleep with the failed attempt and the delay chosen
    /// (backoff or `Retry-After`): a place for metrics. Keep it quick; it runs inline.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use idempotent_retry::IdempotentClient;
    ///
    /// let retries = Arc::new(AtomicU64::new(0));
    /// let counter = retries.clone();
    /// let client = IdempotentClient::builder()
    ///     .on_retry(move |attempt, delay| {
    ///         counter.fetch_add(1, Ordering::Relaxed);
    ///         eprintln!("attempt {} failed ({:?}), next in {delay:?}", attempt.number(), attempt.status());
    ///     })
    ///     .build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn on_retry<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Attempt<'_>, Duration) + Send + Sync + 'static,
    {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// Records operations in `journal` so that exactly-once survives a crash of this
    /// process: a request with an
    /// [`operation_id`](crate::IdempotentRequestBuilder::operation_id) is recorded before
    /// its first attempt and completed with its final answer. See
    /// [`journal`](crate::journal). Credentials are never recorded: give
    /// [`resume_credentials`](Self::resume_credentials) too, or a resume of a request
    /// that carried `Authorization` sends nothing.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::MemoryJournal;
    ///
    /// let client = IdempotentClient::builder().journal(MemoryJournal::new()).build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn journal(mut self, journal: impl Journal) -> Self {
        self.journal = Some(Arc::new(journal));
        self
    }

    /// A header never written to the journal, besides `Authorization`,
    /// `Proxy-Authorization`, `Cookie` and any value flagged sensitive (an API key
    /// header, a signature). Its name is recorded; a re-send takes its value from the
    /// request at hand, or from [`resume_credentials`](Self::resume_credentials) (or
    /// [`resume_headers`](Self::resume_headers)), and sends nothing without one.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::MemoryJournal;
    ///
    /// let client = IdempotentClient::builder()
    ///     .journal(MemoryJournal::new())
    ///     .sensitive_header("x-api-key")
    ///     .build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn sensitive_header(mut self, name: &str) -> Self {
        if let Some(name) = self.header_name("sensitive_header", name) {
            self.sensitive.push(name);
        }
        self
    }

    /// `name` as a header name, or `None` with the first bad one kept for `build`.
    fn header_name(&mut self, setting: &str, name: &str) -> Option<HeaderName> {
        HeaderName::try_from(name)
            .map_err(|e| {
                self.bad_header_name
                    .get_or_insert_with(|| format!("{setting} {name:?}: {e}"));
            })
            .ok()
    }

    /// A header whose value scopes an operation at its server, besides
    /// `Stripe-Account`: an account or tenant header. A send under a recorded operation
    /// id must carry the recorded value, else it is refused before any I/O
    /// ([`Error::OperationMismatch`](crate::Error::OperationMismatch)): another
    /// account's recorded answer is never returned, and its key never re-sent for
    /// this one. (Secret headers are not compared: their values are never recorded,
    /// and a rotated token must still resume.)
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::MemoryJournal;
    ///
    /// let client = IdempotentClient::builder()
    ///     .journal(MemoryJournal::new())
    ///     .scope_header("x-tenant-id")
    ///     .build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn scope_header(mut self, name: &str) -> Self {
        if let Some(name) = self.header_name("scope_header", name) {
            self.scope_headers.push(name);
        }
        self
    }

    /// Seals the request and answer bodies written to the journal with your cipher
    /// (see [`BodySeal`](crate::journal::BodySeal)); they are opened when read back.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::{BodySeal, MemoryJournal};
    ///
    /// struct MyCipher; // an AEAD with a key from your secret store
    /// impl BodySeal for MyCipher {
    ///     fn seal(&self, plain: &[u8]) -> Vec<u8> { plain.to_vec() /* encrypt here */ }
    ///     fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> { Ok(sealed.to_vec()) }
    /// }
    ///
    /// let client = IdempotentClient::builder()
    ///     .journal(MemoryJournal::new())
    ///     .seal_bodies(MyCipher)
    ///     .build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn seal_bodies(mut self, seal: impl crate::journal::BodySeal) -> Self {
        self.seal = Some(Arc::new(seal));
        self
    }

    /// The values of a resumed operation's secret headers (the headers never
    /// journalled: `Authorization`, `Cookie`, those named with
    /// [`sensitive_header`](Self::sensitive_header)), by the operation's URL: fixed
    /// credentials. For credentials that rotate, use
    /// [`resume_credentials`](Self::resume_credentials); the last of the two set wins.
    ///
    /// The journal records which secret headers an operation carried (their names,
    /// never their values). A resume sends it only when each of them has a value, from
    /// the request at hand or from here; otherwise it sends nothing and the operation
    /// stays pending ([`Error::CredentialsMissing`](crate::Error::CredentialsMissing)).
    /// Only the recorded names are attached: a header an operation did not carry is
    /// never added to it.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::MemoryJournal;
    /// use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
    ///
    /// let client = IdempotentClient::builder()
    ///     .journal(MemoryJournal::new())
    ///     .resume_headers(|_url| {
    ///         let mut headers = HeaderMap::new();
    ///         headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer sk_test_123"));
    ///         headers
    ///     })
    ///     .build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn resume_headers<F>(mut self, headers: F) -> Self
    where
        F: Fn(&reqwest::Url) -> http::HeaderMap + Send + Sync + 'static,
    {
        self.credentials = Some(Arc::new(move |operation: &PendingOperation| {
            let given = reqwest::Url::parse(&operation.url)
                .map(|url| headers(&url))
                .unwrap_or_default();
            Box::pin(std::future::ready(given))
        }));
        self
    }

    /// Where a resumed operation gets the values of its secret headers, asked afresh
    /// for each resumed send that lacks some (so a rotated token is the one sent, never
    /// a stored one): an async function of the operation, giving the headers (typically
    /// `Authorization` from your secret store or token cache). Only the secret headers
    /// the operation was recorded with are taken from what it gives; a name it leaves
    /// out makes that resume send nothing
    /// ([`Error::CredentialsMissing`](crate::Error::CredentialsMissing)).
    ///
    /// A server that scopes keys by *token* rather than by account sees a key re-sent
    /// under a rotated token as new: see [`journal`](crate::journal), "Rotating
    /// credentials".
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::{MemoryJournal, PendingOperation};
    /// use idempotent_retry::reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
    ///
    /// async fn current_token() -> String { "sk_test_rotated".into() }
    ///
    /// let client = IdempotentClient::builder()
    ///     .journal(MemoryJournal::new())
    ///     .resume_credentials(|_op: &PendingOperation| async {
    ///         let mut headers = HeaderMap::new();
    ///         let bearer = format!("Bearer {}", current_token().await);
    ///         if let Ok(value) = HeaderValue::from_str(&bearer) {
    ///             headers.insert(AUTHORIZATION, value);
    ///         }
    ///         headers
    ///     })
    ///     .build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn resume_credentials<F, Fut>(mut self, credentials: F) -> Self
    where
        F: Fn(&PendingOperation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::HeaderMap> + Send + 'static,
    {
        self.credentials = Some(Arc::new(move |operation: &PendingOperation| {
            Box::pin(credentials(operation))
        }));
        self
    }

    /// How many pending operations [`resume_pending`](IdempotentClient::resume_pending)
    /// (and the resumer) send at once, oldest first, each under its own lease: 16
    /// unless set. 1 resumes them one at a time.
    ///
    /// ```
    /// use idempotent_retry::IdempotentClient;
    /// use idempotent_retry::journal::MemoryJournal;
    ///
    /// let client = IdempotentClient::builder()
    ///     .journal(MemoryJournal::new())
    ///     .resume_concurrency(4)
    ///     .build()?;
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn resume_concurrency(mut self, operations: usize) -> Self {
        self.resume_concurrency = operations;
        self
    }

    /// Takes every setting a [`ClientConfig`] holds (retry policy, attempt timeout,
    /// answer bound, key header and form, should-retry field, retry budget, origins,
    /// circuit breaker, adaptive rate limit, hedging), for example one read from a
    /// configuration file.
    /// Later calls still change single settings.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{ClientConfig, IdempotentClient};
    ///
    /// let config: ClientConfig = serde_json::from_str(r#"{"attempt_timeout": "2s"}"#)?;
    /// let client = IdempotentClient::builder()
    ///     .config(&config)
    ///     .on_retry(|attempt, delay| eprintln!("retry {} in {delay:?}", attempt.number()))
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(mut self, config: &ClientConfig) -> Self {
        // Every field named: a new one does not compile until it is applied here.
        let ClientConfig {
            retry_policy,
            attempt_timeout,
            max_response_bytes,
            key_header,
            key_format,
            should_retry_header,
            retry_budget,
            max_origins,
            circuit_breaker,
            adaptive_rate_limit,
            hedging,
            sensitive_headers,
            scope_headers,
            resume_concurrency,
        } = config;
        self.resume_concurrency = *resume_concurrency;
        self.policy = *retry_policy;
        self.attempt_timeout = *attempt_timeout;
        self.max_response_bytes = *max_response_bytes;
        self.key_header = Ok(key_header.clone());
        self.key_format = *key_format;
        self.should_retry_header = Ok(should_retry_header.clone());
        self.budget = *retry_budget;
        self.max_origins = *max_origins;
        self.breaker = circuit_breaker.clone();
        self.limiter = adaptive_rate_limit.clone();
        self.hedging = hedging.clone();
        // Added to what the builder holds: the defaults (`Stripe-Account`) stay.
        for name in sensitive_headers {
            if !self.sensitive.contains(name) {
                self.sensitive.push(name.clone());
            }
        }
        for name in scope_headers {
            if !self.scope_headers.contains(name) {
                self.scope_headers.push(name.clone());
            }
        }
        self
    }

    /// Checks the settings and builds the client.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the setting: an invalid retry policy
    /// ([`RetryPolicy::validate`]), a zero `attempt_timeout`, an invalid `key_header`, or
    /// a reqwest client that could not be built.
    pub fn build(mut self) -> Result<IdempotentClient, Error> {
        self.check()?;
        let ours = |timeout| {
            crate::inner::default_http(timeout).map_err(|source| Error::InvalidConfig {
                reason: "could not build the default reqwest client".to_owned(),
                source: Some(source),
            })
        };
        let (http, http_timeout, hedge_http) = match self.http.take() {
            // The caller's client: hedges share its pool (documented on `Hedging`).
            Some(http) => (http, None, OnceLock::new()),
            None => {
                // A client that hedges gets its second pool now; one that hedges only
                // for some requests gets it at the first hedge.
                let hedge_http = match self.hedging {
                    Some(_) => OnceLock::from(ours(self.attempt_timeout)?),
                    None => OnceLock::new(),
                };
                let http = ours(self.attempt_timeout)?;
                (http, Some(self.attempt_timeout), hedge_http)
            }
        };
        let (settings, journal) = self.split();
        Ok(IdempotentClient {
            inner: Arc::new(Inner {
                http,
                http_timeout,
                hedge_http,
                settings,
                journal,
            }),
        })
    }

    /// Everything `build` checks, before anything is built.
    fn check(&self) -> Result<(), Error> {
        self.policy.validate()?;
        if self.attempt_timeout.is_zero() {
            return Err(config("attempt_timeout must be greater than zero"));
        }
        if let Err(reason) = &self.key_header {
            return Err(config(reason.clone()));
        }
        if let Err(reason) = &self.should_retry_header {
            return Err(config(reason.clone()));
        }
        if self.max_origins == 0 {
            return Err(config("max_origins must be at least 1"));
        }
        if self.resume_concurrency == 0 {
            return Err(config("resume_concurrency must be at least 1"));
        }
        if let Some(reason) = &self.bad_header_name {
            return Err(config(reason.clone()));
        }
        if let Some(problem) = self.breaker.as_ref().and_then(CircuitBreaker::problem) {
            return Err(config(format!("circuit_breaker.{problem}")));
        }
        if let Some(problem) = self
            .hedging
            .as_ref()
            .and_then(|h| h.problem(Some((self.attempt_timeout, "attempt_timeout"))))
        {
            return Err(config(format!("hedging.{problem}")));
        }
        if let Some(journal) = &self.journal {
            let lease = journal.lease_duration();
            if self.attempt_timeout.saturating_add(LEASE_MARGIN) >= lease {
                return Err(config(format!(
                    "the journal's lease_duration ({lease:?}) must exceed attempt_timeout ({:?}) \
                     by more than {LEASE_MARGIN:?}, the time to record an answer",
                    self.attempt_timeout
                )));
            }
        }
        Ok(())
    }

    /// Checks the settings and builds a [`reqwest_middleware`] layer with them, for a
    /// `ClientWithMiddleware`: see [`IdempotencyMiddleware`](crate::IdempotencyMiddleware).
    /// The layer sends through the client it is layered on, so `reqwest_client` plays no
    /// part here.
    ///
    /// ```
    /// use idempotent_retry::{IdempotentClient, RetryPolicy};
    /// let layer = IdempotentClient::builder()
    ///     .retry_policy(RetryPolicy::exponential().max_attempts(4))
    ///     .build_middleware()?;
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(layer)
    ///     .build();
    /// # drop(client);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), but for the reqwest client, which is not built.
    #[cfg(feature = "middleware")]
    pub fn build_middleware(self) -> Result<crate::IdempotencyMiddleware, Error> {
        self.check()?;
        if self.journal.is_some() {
            return Err(config(
                "the middleware does not journal operations: build() a client for a journal",
            ));
        }
        Ok(crate::IdempotencyMiddleware::from_settings(self.settings()))
    }

    /// The settings, once `check` passed (the defaults always pass it).
    #[cfg(feature = "middleware")]
    pub(crate) fn settings(self) -> Settings {
        self.split().0
    }

    /// The settings and the journal's, once `check` passed.
    fn split(self) -> (Settings, Option<Box<JournalSettings>>) {
        let journal = self.journal.map(|journal| {
            Box::new(JournalSettings {
                journal,
                seal: self.seal,
                sensitive: self.sensitive,
                credentials: self.credentials,
                scope_headers: self.scope_headers,
                resume_concurrency: self.resume_concurrency,
            })
        });
        let retry = RetrySettings {
            policy: self.policy,
            should_retry_header: self.should_retry_header.unwrap_or_default(),
            origins: Origins::new(self.budget, self.max_origins),
            classifier: self.classifier,
            on_retry: self.on_retry,
            log_keys: self.log_keys,
            breaker: self.breaker,
            limiter: self.limiter,
            hedging: self.hedging,
        };
        let settings = Settings {
            retry,
            attempt_timeout: self.attempt_timeout,
            max_response_bytes: self.max_response_bytes,
            key_header: self
                .key_header
                .unwrap_or_else(|_| HeaderName::from_static(DEFAULT_KEY_HEADER)),
            key_format: self.key_format,
        };
        (settings, journal)
    }
}

fn config(reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        reason: reason.into(),
        source: None,
    }
}

impl fmt::Debug for IdempotentClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentClientBuilder")
            .field("policy", &self.policy)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("key_header", &self.key_header)
            .field("key_format", &self.key_format)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_rejects_bad_settings() {
        let cases = [
            (
                IdempotentClient::builder()
                    .retry_policy(RetryPolicy::exponential().max_attempts(0)),
                "max_attempts",
            ),
            (
                IdempotentClient::builder().attempt_timeout(Duration::ZERO),
                "attempt_timeout",
            ),
            (
                IdempotentClient::builder().key_header("no spaces"),
                "key_header",
            ),
            (IdempotentClient::builder().key_header(""), "key_header"),
            (
                IdempotentClient::builder().should_retry_header("bad name"),
                "should_retry_header",
            ),
            (IdempotentClient::builder().max_origins(0), "max_origins"),
        ];
        for (builder, needle) in cases {
            let err = builder.build().unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }));
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }
}
