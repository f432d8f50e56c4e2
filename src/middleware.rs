//! Safe retries as one `reqwest-middleware` layer (feature `middleware`).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Extensions, Method};
use reqwest::{Request, Response, ResponseBuilderExt};
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument;

use crate::retry::classify::Outcome;
use crate::retry::engine::Engine;
use crate::retry::settings::Overrides;
use crate::retry::transport::{End, Ending, Transport};
use crate::settings::Settings;
use crate::{Error, GiveUpReason, IdempotencyKey, IdempotentClientBuilder, RetryPolicy, telemetry};

/// A [`reqwest_middleware`] layer that gives each logical request one idempotency key
/// and retries it with this crate's policy, deadline, budget and classifier: safe
/// retries for a `ClientWithMiddleware` by adding one layer.
///
/// ```
/// use idempotent_retry::{IdempotencyMiddleware, IdempotentClient, RetryPolicy};
///
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(IdempotencyMiddleware::new())
///     .build();
///
/// // Or with settings, from the same builder as `IdempotentClient`:
/// let layer = IdempotentClient::builder()
///     .retry_policy(RetryPolicy::exponential().max_attempts(5))
///     .build_middleware()?;
/// # drop((client, layer));
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
///
/// # What it does to a request
///
/// - **Methods that are not idempotent by definition** (`POST`, `PATCH`, and any method
///   other than `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT` and `DELETE`): it sends a key
///   minted once per logical request (or the one you set in the key header, for example
///   a persisted key to resume an operation) and retries with it.
/// - **`PUT` and `DELETE`**, idempotent by definition: keyed and retried the
///   same way, as [`IdempotentClient`](crate::IdempotentClient) does.
/// - **`GET`, `HEAD`, `OPTIONS`, `TRACE`**: no key and no retries (keep whatever retry
///   layer you have for those), but they pass through the origin's circuit breaker and
///   adaptive rate limiter when the layer has them: an open circuit refuses them before
///   any I/O ([`Error::Failed`], [`is_circuit_open`](Error::is_circuit_open); its key
///   is a placeholder, never sent), the limiter paces them, and their outcomes count
///   for both. Without a breaker, an opened circuit or a limiter, they are passed on
///   untouched.
///
/// The final response is returned as it came, its body unread, with the key in its
/// extensions (`response.extensions().get::<IdempotencyKey>()`) and an
/// [`OperationReport`](crate::OperationReport) beside it. A retryable status that is
/// still failing when the attempts run out is returned as that response, as
/// reqwest-retry does: then [`OperationReport::of`](crate::OperationReport::of) says
/// whether the operation may have executed all the same. When the last attempt got no
/// response at all, the error is [`Error::Failed`] (inside
/// `reqwest_middleware::Error::Middleware`; [`Error::from_middleware_error`] finds it)
/// with the key, the attempts and whether the outcome is unknown; another layer's error
/// during an attempt comes back wrapped in [`Error::MiddlewareLayer`], with the key.
///
/// A key remembered in the extensions belongs to one request (method, URL and body):
/// a different request sent with the same extensions gets a key of its own. The
/// response's body is bounded by
/// [`max_response_bytes`](crate::IdempotentClientBuilder::max_response_bytes): reading
/// past it is an error, so no server can make you buffer without end.
///
/// # Ordering, and the pitfall it avoids
///
/// A key must be minted *outside* every retry loop: a layer that mints a key per call,
/// placed inside a retry layer (`.with(retry).with(mint_key)`), runs once per attempt
/// and sends each attempt with a new key, so the server executes the operation again on
/// every retry. This layer mints the key before its own loop, and it keeps the key in
/// the request's middleware extensions, so even inside another retry layer every pass
/// of the same request reuses the first key. Put it anywhere; best alone, since two
/// retry layers multiply their attempts.
///
/// # Errors before any I/O
///
/// A body that cannot be sent twice (a stream) or an invalid key in the key header is
/// [`Error::InvalidRequest`] (inside `reqwest_middleware::Error::Middleware`), and
/// nothing is sent.
#[derive(Clone)]
pub struct IdempotencyMiddleware {
    settings: Arc<Settings>,
}

impl IdempotencyMiddleware {
    /// The middleware with the defaults of [`IdempotentClientBuilder`].
    #[must_use]
    pub fn new() -> Self {
        Self {
            settings: Arc::new(IdempotentClientBuilder::new().settings()),
        }
    }

    pub(crate) fn from_settings(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }

    /// As [`IdempotentClient::circuit_state`](crate::IdempotentClient::circuit_state),
    /// for the origins this layer has seen.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) if `url` is not an absolute URL.
    pub fn circuit_state(&self, url: &str) -> Result<crate::CircuitState, crate::Error> {
        self.settings.circuit_state(url)
    }

    /// As [`IdempotentClient::open_circuit`](crate::IdempotentClient::open_circuit).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) if `url` is not an absolute URL.
    pub fn open_circuit(&self, url: &str) -> Result<(), crate::Error> {
        self.settings.open_circuit(url)
    }

    /// As [`IdempotentClient::close_circuit`](crate::IdempotentClient::close_circuit).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`](crate::Error::InvalidUrl) if `url` is not an absolute URL.
    pub fn close_circuit(&self, url: &str) -> Result<(), crate::Error> {
        self.settings.close_circuit(url)
    }
}

impl Default for IdempotencyMiddleware {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for IdempotencyMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings = &*self.settings;
        f.debug_struct("IdempotencyMiddleware")
            .field("policy", &settings.retry.policy)
            .field("attempt_timeout", &settings.attempt_timeout)
            .field("key_header", &settings.key_header)
            .finish_non_exhaustive()
    }
}

/// The key of one logical request, kept in the middleware extensions so that every
/// pass of the same request through this layer, even under an outer retry layer, sends
/// the same one.
#[derive(Clone)]
struct OperationKey {
    key: IdempotencyKey,
    /// The request's [`fingerprint`]: another request gets another key.
    fingerprint: u64,
}

/// Methods passed on untouched: safe ones, which change nothing on the server.
fn is_safe(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

#[async_trait::async_trait]
impl Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if is_safe(request.method()) {
            return pass_safe(&self.settings, request, extensions, next).await;
        }
        let settings = &*self.settings;
        let (key, fresh) = match key_for(settings, &mut request, extensions) {
            Ok(key) => key,
            Err(e) => return Err(reqwest_middleware::Error::middleware(e)),
        };
        if request.try_clone().is_none() {
            return Err(reqwest_middleware::Error::middleware(stream_body(
                key, !fresh,
            )));
        }
        let span = telemetry::operation_span(request.method(), request.url());
        retry(settings, request, key, fresh, extensions, next)
            .instrument(span)
            .await
    }
}

/// A safe request: through the origin's circuit and rate limiter when there are any
/// (one attempt, never retried or hedged, its own timeout kept), else straight on.
async fn pass_safe(
    settings: &Settings,
    request: Request,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    let held_back = settings.retry.breaker.is_some()
        || settings.retry.limiter.is_some()
        || settings.retry.origins.any_circuit();
    if !held_back {
        return next.run(request, extensions).await;
    }
    let once = Overrides {
        policy: Some(RetryPolicy {
            max_attempts: 1,
            ..settings.retry.policy
        }),
        hedging: Some(None),
    };
    // Only for the engine's reports: never sent, since a safe request carries no key.
    let key = IdempotencyKey::new_v4();
    let mut sender = Sender {
        request: &request,
        key: &key,
        extensions,
        next,
        keep_timeout: true,
    };
    let engine = Engine::new(
        &settings.retry,
        Some(&once),
        request.method(),
        request.url(),
        &key,
        true,
        Instant::now(),
    );
    let timeout = request.timeout().copied().unwrap_or(Duration::MAX);
    let ending = engine.run(&mut sender, timeout).await;
    let mut answer = finish(ending, key, settings.max_response_bytes);
    if let Ok(response) = &mut answer {
        // Passed on as it came: no key nor report for a request that had none.
        response.extensions_mut().remove::<IdempotencyKey>();
        response.extensions_mut().remove::<OperationReport>();
    }
    answer
}

/// The request's key and whether it is fresh (minted now, never sent): the one in its
/// key header (the caller's), the one an earlier pass of this same request through this
/// layer chose (it may have been sent), or a new one. A remembered key is bound to the
/// request's fingerprint, so a different request sent with the same extensions gets a
/// key of its own. Makes sure the header carries the key.
fn key_for(
    settings: &Settings,
    request: &mut Request,
    extensions: &mut Extensions,
) -> Result<(IdempotencyKey, bool), Error> {
    let fingerprint = fingerprint(request);
    if let Some(value) = request.headers().get(&settings.key_header) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let key = IdempotencyKey::parse(&text).map_err(|e| Error::InvalidKey {
            reason: format!("in the {} header: {e}", settings.key_header),
        })?;
        extensions.insert(OperationKey {
            key: key.clone(),
            fingerprint,
        });
        return Ok((key, false));
    }
    let remembered = extensions
        .get::<OperationKey>()
        .filter(|k| k.fingerprint == fingerprint)
        .map(|k| k.key.clone());
    let (key, fresh) = match remembered {
        Some(key) => (key, false),
        None => {
            let key = IdempotencyKey::new_v4();
            extensions.insert(OperationKey {
                key: key.clone(),
                fingerprint,
            });
            (key, true)
        }
    };
    let value = key
        .header_value(settings.key_format)
        .map_err(|reason| Error::InvalidRequest {
            key: key.clone(),
            reason,
            source: None,
            outcome_unknown: !fresh,
        })?;
    request
        .headers_mut()
        .insert(settings.key_header.clone(), value);
    Ok((key, fresh))
}

/// Method, URL and body: what makes two requests the same logical operation.
fn fingerprint(request: &Request) -> u64 {
    let mut hasher = DefaultHasher::new();
    request.method().as_str().hash(&mut hasher);
    request.url().as_str().hash(&mut hasher);
    request
        .body()
        .and_then(reqwest::Body::as_bytes)
        .hash(&mut hasher);
    hasher.finish()
}

/// The middleware's side of the engine's contract: send one attempt, a copy of the
/// request, down the rest of the chain.
struct Sender<'a, 'n> {
    request: &'a Request,
    key: &'a IdempotencyKey,
    extensions: &'a mut Extensions,
    next: Next<'n>,
    /// Send the request with its own timeout (a safe request), not the attempt's.
    keep_timeout: bool,
}

type Answer = reqwest_middleware::Result<Response>;

impl Transport for Sender<'_, '_> {
    type Answer = Answer;

    fn send(&mut self, timeout: Duration) -> impl Future<Output = Answer> + Send {
        let keep_timeout = self.keep_timeout;
        let attempt = self.request.try_clone().map(|mut attempt| {
            if !keep_timeout {
                *attempt.timeout_mut() = Some(timeout);
            }
            attempt
        });
        let next = self.next.clone();
        let extensions = &mut *self.extensions;
        let key = self.key;
        async move {
            match attempt {
                Some(attempt) => next.run(attempt, extensions).await,
                // `handle` refused bodies that cannot be copied, so this is not reached.
                None => Err(reqwest_middleware::Error::middleware(stream_body(
                    key.clone(),
                    true,
                ))),
            }
        }
    }

    fn outcome(answer: &Answer) -> Option<Outcome<'_>> {
        match answer {
            Ok(response) => Some(Outcome::Response {
                status: response.status(),
                headers: response.headers(),
                url: response.url(),
            }),
            Err(reqwest_middleware::Error::Reqwest(e)) => Some(Outcome::Error(e)),
            // Another layer's own error: not ours to judge or to retry.
            Err(reqwest_middleware::Error::Middleware(_)) => None,
        }
    }
}

fn stream_body(key: IdempotencyKey, outcome_unknown: bool) -> Error {
    Error::InvalidRequest {
        key,
        reason: "the body is a stream, which cannot be sent again on a retry; give it as bytes"
            .to_owned(),
        source: None,
        outcome_unknown,
    }
}

async fn retry(
    settings: &Settings,
    request: Request,
    key: IdempotencyKey,
    fresh_key: bool,
    extensions: &mut Extensions,
    next: Next<'_>,
) -> reqwest_middleware::Result<Response> {
    // A timeout the caller set on the request bounds each attempt, as ours would.
    let timeout: Duration = request
        .timeout()
        .copied()
        .unwrap_or(settings.attempt_timeout);
    let mut sender = Sender {
        request: &request,
        key: &key,
        extensions,
        next,
        keep_timeout: false,
    };
    let engine = Engine::new(
        &settings.retry,
        None,
        request.method(),
        request.url(),
        &key,
        fresh_key,
        Instant::now(),
    );
    let ending = engine.run(&mut sender, timeout).await;
    finish(ending, key, settings.max_response_bytes)
}

/// The operation's result: a response as it came, with the key and an
/// [`OperationReport`] in its extensions; a transport error, or no attempt at all, as
/// [`Error::Failed`]; another layer's error wrapped in [`Error::MiddlewareLayer`].
fn finish(ending: Ending<Answer>, key: IdempotencyKey, max_response_bytes: usize) -> Answer {
    // The middleware never hedges.
    let Ending {
        end,
        attempts,
        outcome_unknown,
        hedges: _,
    } = ending;
    let (gave_up, last) = match end {
        End::Done(answer) => (None, Some(answer)),
        End::GaveUp(reason, last) => (Some(reason), last),
        End::Passed(answer) => (Some(GiveUpReason::NotRetryable), Some(answer)),
    };
    let error = match last {
        Some(Ok(mut response)) => {
            let report = OperationReport {
                key: key.clone(),
                attempts,
                gave_up,
                outcome_unknown: gave_up.is_some() && outcome_unknown,
            };
            response.extensions_mut().insert(report);
            response.extensions_mut().insert(key);
            return Ok(bounded(response, max_response_bytes));
        }
        Some(Err(reqwest_middleware::Error::Reqwest(e))) => Error::Failed {
            key,
            attempts,
            reason: gave_up.unwrap_or(GiveUpReason::NotRetryable),
            outcome_unknown,
            last_response: None,
            source: Some(e),
            retry_after: None,
            retry_at: None,
        },
        Some(Err(layer)) => Error::MiddlewareLayer {
            key,
            attempts,
            source: layer,
        },
        None => Error::Failed {
            key,
            attempts,
            reason: gave_up.unwrap_or(GiveUpReason::NotRetryable),
            outcome_unknown,
            last_response: None,
            source: None,
            retry_after: None,
            retry_at: None,
        },
    };
    Err(reqwest_middleware::Error::middleware(error))
}

/// The response with its body bounded to `limit` bytes: reading past it is an error
/// (its source an `http_body_util::LengthLimitError`), so no server can make the caller
/// buffer without end.
fn bounded(response: Response, limit: usize) -> Response {
    // A body of a known length within the bound needs no wrapper: the connection
    // delivers no more than the length it declared (and a decoded body has none).
    let fits = |len: u64| usize::try_from(len).is_ok_and(|len| len <= limit);
    if response.content_length().is_some_and(fits) {
        return response;
    }
    let url = response.url().clone();
    let (mut parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    // reqwest keeps the URL in an extension that only its own builder can set.
    if let Ok(marker) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(marker.into_parts().0.extensions);
    }
    let body = reqwest::Body::wrap(http_body_util::Limited::new(body, limit));
    Response::from(http::Response::from_parts(parts, body))
}

/// What the middleware knows of the operation behind a response it returns, kept in
/// the response's extensions: read it with [`OperationReport::of`].
///
/// A response the middleware returns is either the operation's final answer, or the
/// last answer when it gave up retrying (a 503 or 429 still failing when the attempts,
/// the deadline or the budget ran out). In the second case the answer alone does not
/// say whether an earlier attempt executed: a 429 after an attempt that timed out may
/// follow an execution. [`is_outcome_unknown`](Self::is_outcome_unknown) says so.
///
/// ```no_run
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use idempotent_retry::OperationReport;
/// let response = client.post("https://api.example/orders").body("{}").send().await?;
/// if let Some(report) = OperationReport::of(&response) {
///     if report.is_outcome_unknown() {
///         // Keep report.idempotency_key() and send the same operation again later.
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OperationReport {
    key: IdempotencyKey,
    attempts: u32,
    gave_up: Option<GiveUpReason>,
    outcome_unknown: bool,
}

impl OperationReport {
    /// The report in a response from [`IdempotencyMiddleware`]; `None` for a response
    /// that did not come through it (a safe method, another client).
    #[must_use]
    pub fn of(response: &Response) -> Option<&OperationReport> {
        response.extensions().get::<OperationReport>()
    }

    /// The key every attempt carried.
    #[must_use]
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// Attempts made, the first one included.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why the middleware stopped retrying, when this response is not a final answer
    /// but the last one it got.
    #[must_use]
    pub fn give_up_reason(&self) -> Option<GiveUpReason> {
        self.gave_up
    }

    /// Whether the middleware gave up on this answer while the operation may have
    /// executed (an earlier attempt may have reached the server, or the key was yours).
    /// Keep the key and send the same operation again later; never a new key.
    #[must_use]
    pub fn is_outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }
}
