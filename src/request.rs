//! The request builder: reqwest's, restricted to what can be replayed, plus the key.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use tracing::Instrument;

use crate::operation::{Operation, Template};
use crate::retry::settings::Overrides;
use crate::settings::Settings;
use crate::{Error, Hedging, IdempotencyKey, IdempotentClient, IdempotentResponse, RetryPolicy};

/// One logical operation being put together. Nothing is sent until
/// [`send`](Self::send). The operation's key exists from the start (minted when the
/// builder is made, or yours through [`idempotency_key`](Self::idempotency_key)) and
/// [`key`](Self::key) shows it, so that it can be stored before anything is sent.
///
/// Mirrors `reqwest::RequestBuilder`, except that bodies must be replayable: there is no
/// way to attach a stream, so every retry sends the same bytes.
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::{IdempotencyKey, IdempotentClient, RetryPolicy};
///
/// let client = IdempotentClient::new();
/// let request = client
///     .post_idempotent("http://127.0.0.1:8080/payments")
///     .bearer_auth("sk_test_123")
///     .header("x-request-source", "checkout")
///     .query(&[("expand", "customer")])
///     .json(&serde_json::json!({ "amount": 1999, "currency": "eur" }))
///     .timeout(Duration::from_secs(3))
///     .retry_policy(RetryPolicy::exponential().max_attempts(5))
///     .idempotency_key(IdempotencyKey::parse("payment-7f3a")?);
/// # drop(request);
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[must_use = "a request does nothing until you `.send().await` it"]
pub struct IdempotentRequestBuilder {
    client: IdempotentClient,
    request: reqwest::RequestBuilder,
    /// The body, kept here rather than in `request` so that every attempt shares this
    /// one buffer.
    body: Option<Body>,
    key: IdempotencyKey,
    /// Whether `key` was minted here and never left the process (not the caller's).
    fresh_key: bool,
    /// What the request sets for itself. Boxed: an override is rare, and the builder
    /// is moved at every chained call.
    overrides: Option<Box<Overrides>>,
    timeout: Option<Duration>,
    /// The caller's name for the operation, for the journal.
    operation_id: Option<Box<str>>,
}

impl IdempotentRequestBuilder {
    pub(crate) fn new(client: IdempotentClient, request: reqwest::RequestBuilder) -> Self {
        Self {
            client,
            request,
            body: None,
            // The one place a key is minted: once per operation, before any attempt.
            key: IdempotencyKey::new_v4(),
            fresh_key: true,
            overrides: None,
            timeout: None,
            operation_id: None,
        }
    }

    fn map(mut self, f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder) -> Self {
        self.request = f(self.request);
        self
    }

    fn with_body(mut self, bytes: Bytes, content_type: Option<&'static str>) -> Self {
        self.body = Some(Body {
            bytes,
            content_type,
        });
        self
    }

    /// Adds a header. An invalid name or value is reported by `send`, before any I/O.
    /// The key header itself is set with [`idempotency_key`](Self::idempotency_key).
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client.post_idempotent("http://127.0.0.1:8080/orders").header("x-tenant", "acme");
    /// # drop(request);
    /// ```
    pub fn header<K, V>(self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.map(|r| r.header(name, value))
    }

    /// Adds several headers.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let mut headers = http::HeaderMap::new();
    /// headers.insert("x-tenant", http::HeaderValue::from_static("acme"));
    /// let request = client.post_idempotent("http://127.0.0.1:8080/orders").headers(headers);
    /// # drop(request);
    /// ```
    pub fn headers(self, headers: HeaderMap) -> Self {
        self.map(|r| r.headers(headers))
    }

    /// Serializes `json` as the body and sets `Content-Type: application/json` unless the
    /// request has a content type. A value that fails to serialize is reported by
    /// `send`, before any I/O.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// #[derive(serde::Serialize)]
    /// struct Order { sku: &'static str, qty: u32 }
    /// let request = client
    ///     .post_idempotent("http://127.0.0.1:8080/orders")
    ///     .json(&Order { sku: "tea", qty: 2 });
    /// # drop(request);
    /// ```
    pub fn json<T: Serialize + ?Sized>(self, json: &T) -> Self {
        match serde_json::to_vec(json) {
            Ok(bytes) => self.with_body(bytes.into(), Some("application/json")),
            // reqwest serializes it again and keeps the (same) error for `send` to report.
            Err(_) => self.map(|r| r.json(json)),
        }
    }

    /// Serializes `form` as the body and sets `Content-Type:
    /// application/x-www-form-urlencoded` unless the request has a content type.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client
    ///     .post_idempotent("http://127.0.0.1:8080/charges")
    ///     .form(&[("amount", "2000"), ("currency", "usd")]);
    /// # drop(request);
    /// ```
    pub fn form<T: Serialize + ?Sized>(self, form: &T) -> Self {
        match serde_urlencoded::to_string(form) {
            Ok(text) => self.with_body(text.into(), Some("application/x-www-form-urlencoded")),
            // reqwest serializes it again and keeps the (same) error for `send` to report.
            Err(_) => self.map(|r| r.form(form)),
        }
    }

    /// Appends query parameters to the URL.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client.post_idempotent("http://127.0.0.1:8080/orders").query(&[("dry_run", "true")]);
    /// # drop(request);
    /// ```
    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        self.map(|r| r.query(query))
    }

    /// Sets the body to these bytes. Only in-memory bodies are accepted, so that every
    /// attempt can send them again; a stream does not compile:
    ///
    /// ```compile_fail,E0277
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let stream = idempotent_retry::reqwest::Body::from("not replayable once wrapped");
    /// client.post_idempotent("http://127.0.0.1:8080/upload").body(stream);
    /// ```
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client.post_idempotent("http://127.0.0.1:8080/upload").body("raw payload");
    /// # drop(request);
    /// ```
    pub fn body(self, body: impl Into<Bytes>) -> Self {
        self.with_body(body.into(), None)
    }

    /// Sets `Authorization: Bearer <token>`.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client.post_idempotent("http://127.0.0.1:8080/orders").bearer_auth("sk_test_123");
    /// # drop(request);
    /// ```
    pub fn bearer_auth<T: fmt::Display>(self, token: T) -> Self {
        self.map(|r| r.bearer_auth(token))
    }

    /// Sets `Authorization: Basic …`.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client
    ///     .post_idempotent("http://127.0.0.1:8080/orders")
    ///     .basic_auth("shop", Some("secret"));
    /// # drop(request);
    /// ```
    pub fn basic_auth<U: fmt::Display, P: fmt::Display>(
        self,
        username: U,
        password: Option<P>,
    ) -> Self {
        self.map(|r| r.basic_auth(username, password))
    }

    /// Time for each attempt of this request, instead of the client's `attempt_timeout`.
    /// The deadline still bounds the whole operation.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client
    ///     .post_idempotent("http://127.0.0.1:8080/orders")
    ///     .timeout(std::time::Duration::from_millis(800));
    /// # drop(request);
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Uses a key you chose or persisted (for example to resume an operation whose
    /// outcome was unknown) instead of minting a new one. It is sent verbatim.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// use idempotent_retry::IdempotencyKey;
    /// let key: IdempotencyKey = "order-1234".parse()?;
    /// let request = client.post_idempotent("http://127.0.0.1:8080/orders").idempotency_key(key);
    /// # drop(request);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.key = key;
        self.fresh_key = false;
        self
    }

    /// The operation's key: the one minted when this builder was made, or the one you
    /// gave. Store it before `send` if your process may stop or drop the `send` future
    /// before an answer: a dropped `send()` leaves the operation's outcome unknown.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client.post_idempotent("http://127.0.0.1:8080/orders");
    /// let key = request.key().clone(); // persist it with the order, then send
    /// # drop((request, key));
    /// ```
    #[must_use]
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// Names the logical operation with your own business id (`"order-42/charge"`), so
    /// that the client's [journal](crate::journal) records it before the first attempt
    /// and a later `send()` with the same id (after a crash, in a re-run of your code)
    /// finds it: a completed operation returns its recorded answer without any I/O, a
    /// pending one is sent again with its recorded key and bytes, a different request is
    /// refused before any I/O. Without a journal, `send()` is an error.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client
    ///     .post_idempotent("http://127.0.0.1:8080/v1/charges")
    ///     .operation_id("order-42/charge");
    /// # drop(request);
    /// ```
    pub fn operation_id(mut self, id: impl Into<String>) -> Self {
        self.operation_id = Some(id.into().into_boxed_str());
        self
    }

    /// A retry policy for this request only.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// use idempotent_retry::RetryPolicy;
    /// let request = client
    ///     .post_idempotent("http://127.0.0.1:8080/orders")
    ///     .retry_policy(RetryPolicy::none());
    /// # drop(request);
    /// ```
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.overrides_mut().policy = Some(policy);
        self
    }

    /// Hedging for this request only, on a client with hedging or without: when an
    /// attempt has no answer after the delay, another with the same key starts beside
    /// it. The rules are the client's ([`Hedging`]): POST and PATCH hedge only with
    /// `keyed_methods(true)`, and only against a server that answers `409` to a key
    /// still in flight. The delay must be less than the request's timeout: `send`
    /// refuses it otherwise, before any I/O.
    ///
    /// On a client whose reqwest client this crate built, hedges go through a second
    /// connection pool, made when the client is built with hedging or else at the
    /// first hedge; on your own reqwest client they share its pool.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// use std::time::Duration;
    /// use idempotent_retry::Hedging;
    /// let request = client
    ///     .put_idempotent("http://127.0.0.1:8080/orders/42")
    ///     .hedging(Hedging::after(Duration::from_millis(150)));
    /// # drop(request);
    /// ```
    pub fn hedging(mut self, hedging: Hedging) -> Self {
        self.overrides_mut().hedging = Some(Some(hedging));
        self
    }

    /// No hedging for this request, whatever the client's.
    ///
    /// ```
    /// # let client = idempotent_retry::IdempotentClient::new();
    /// let request = client.post_idempotent("http://127.0.0.1:8080/payments").no_hedging();
    /// # drop(request);
    /// ```
    pub fn no_hedging(mut self) -> Self {
        self.overrides_mut().hedging = Some(None);
        self
    }

    fn overrides_mut(&mut self) -> &mut Overrides {
        self.overrides.get_or_insert_with(Box::default)
    }

    /// Sends the operation with its key, making attempts until one gets a final
    /// response or the policy, deadline or budget says stop.
    ///
    /// The request is checked when `send` is called; nothing goes on the wire until the
    /// returned future is awaited. Dropping that future after its first poll (a
    /// timeout wrapper, a cancelled task) leaves the outcome unknown: an attempt may be
    /// on its way. Keep [`key`](Self::key) if you may cancel.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidRequest`] before any I/O: bad URL, header or body; an invalid
    ///   per-request policy, timeout or hedging (a delay not below the timeout); the key header set by hand; a key the
    ///   structured-string form cannot carry.
    /// - [`Error::Failed`] when attempts stopped without a final response. Check
    ///   [`Error::is_outcome_unknown`] to learn whether to resume later with the key.
    ///
    /// Responses the classifier calls final (2xx, 3xx, 4xx other than 408/409/429 by
    /// default) are `Ok`, whatever their status, as with reqwest.
    pub fn send(
        mut self,
    ) -> impl Future<Output = Result<IdempotentResponse, Error>> + Send + 'static {
        let operation_id = self.operation_id.take();
        let operation = self.prepare().map(|operation| -> SendFuture {
            let span = crate::telemetry::operation_span(
                operation.template.method(),
                operation.template.url(),
            );
            // Boxed: the retry loop's state holds a whole request. The caller's future
            // holds one pointer, so moving it costs nothing, and nothing is allocated
            // when `prepare` already failed.
            match operation_id {
                Some(id) => {
                    let held = crate::journaled::settings::Held::Wait;
                    Box::pin(crate::journaled::send(operation, id.into(), held).instrument(span))
                }
                None => Box::pin(operation.run().instrument(span)),
            }
        });
        async move { operation?.await }
    }

    /// Everything `send` decides before any I/O: the key, the policy, the timeout and a
    /// request that every attempt can send again.
    fn prepare(self) -> Result<Operation, Error> {
        let Self {
            client,
            request,
            body,
            key,
            fresh_key,
            overrides,
            timeout,
            operation_id: _,
        } = self;
        let settings = &client.inner.settings;
        // Nothing is sent; only a key of the caller's may have been sent before.
        let invalid = |key: IdempotencyKey, reason: String, source| Error::InvalidRequest {
            key,
            reason,
            source,
            outcome_unknown: !fresh_key,
        };

        // The client's own policy was validated when it was built.
        let own_policy = overrides.as_deref().and_then(|o| o.policy.as_ref());
        if let Some(Err(e)) = own_policy.map(RetryPolicy::validate) {
            return Err(invalid(key, e.to_string(), None));
        }
        let timeout = timeout.unwrap_or(settings.attempt_timeout);
        if timeout.is_zero() {
            return Err(invalid(
                key,
                "timeout must be greater than zero".into(),
                None,
            ));
        }
        // The request's own hedging, against the request's timeout. (The client's was
        // checked against the client's attempt timeout; a shorter timeout set here only
        // means its hedges have no time to start.)
        let own_hedging = overrides.as_deref().and_then(|o| o.hedging.as_ref());
        if let Some(problem) = own_hedging
            .and_then(Option::as_ref)
            .and_then(|h| h.problem(Some((timeout, "the request's timeout"))))
        {
            return Err(invalid(key, format!("hedging: {problem}"), None));
        }
        let mut request = match request.build() {
            Ok(request) => request,
            Err(e) => return Err(invalid(key, "could not build the request".into(), Some(e))),
        };
        if let Err(reason) = insert_key(&mut request, &key, settings) {
            return Err(invalid(key, reason, None));
        }
        let body = body.map(|body| {
            if let Some(content_type) = body.content_type {
                request
                    .headers_mut()
                    .entry(CONTENT_TYPE)
                    .or_insert(HeaderValue::from_static(content_type));
            }
            body.bytes
        });
        let template = Template::new(request, body);
        Ok(Operation {
            client,
            template,
            key,
            fresh_key,
            overrides,
            timeout,
        })
    }
}

/// Puts the key in its header, in the client's form; refuses a request whose caller
/// set that header by hand (one lookup: insert, and look at what was there).
fn insert_key(
    request: &mut reqwest::Request,
    key: &IdempotencyKey,
    settings: &Settings,
) -> Result<(), String> {
    let value = key.header_value(settings.key_format)?;
    if request
        .headers_mut()
        .insert(settings.key_header.clone(), value)
        .is_some()
    {
        return Err(format!(
            "the {} header was set by hand; pass the key with .idempotency_key() instead",
            settings.key_header
        ));
    }
    Ok(())
}

impl fmt::Debug for IdempotentRequestBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentRequestBuilder")
            .field("request", &self.request)
            .field("body", &self.body.as_ref().map(|b| b.bytes.len()))
            .field("key", &self.key)
            .field("fresh_key", &self.fresh_key)
            .field("overrides", &self.overrides)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An operation's future, as `send` boxes it: a plain one or a journalled one.
type SendFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<IdempotentResponse, Error>> + Send + 'static>>;

/// A body set through the builder, and the content type that goes with it.
struct Body {
    bytes: Bytes,
    /// Set on the request unless it has a content type already.
    content_type: Option<&'static str>,
}
