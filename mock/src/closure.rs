//! Closure handlers: a route's answer computed by the caller's code, for logic no
//! template expresses. The closure sees a [`MockRequest`] and returns a
//! [`MockResponse`]; for an operation it runs inside the operation, once per key.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;

use super::store::Stored;

/// What a closure handler sees of one request.
#[derive(Debug)]
#[non_exhaustive]
pub struct MockRequest {
    /// The method.
    pub method: Method,
    /// The URL path.
    pub path: String,
    /// The values of the route's `{name}` segments.
    pub params: Vec<(String, String)>,
    /// The query string's pairs, decoded.
    pub query: Vec<(String, String)>,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The body as the templates see it: JSON, or a form body nested by its brackets
    /// (`Null` when there is none).
    pub body: Value,
    /// For an operation, the id drawn for what it creates (the route's `id_prefix` and
    /// a token from the seed), as `{{id}}` would render; empty for a read.
    pub id: String,
    /// For an operation, the route's executions so far including this one, as
    /// `{{seq}}`; 0 for a read.
    pub seq: u64,
}

impl MockRequest {
    /// The value of the `{name}` segment `name`.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        find(&self.params, name)
    }

    /// The first value of query parameter `name`.
    #[must_use]
    pub fn query(&self, name: &str) -> Option<&str> {
        find(&self.query, name)
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A closure handler's answer: status, headers and body. Without a `Content-Type`
/// header the answer says `application/json`.
///
/// ```
/// use idempotent_retry_mock::MockResponse;
/// let answer = MockResponse::json(201, &serde_json::json!({"id": "ch_1"})).header("Request-Id", "req_1");
/// # drop(answer);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct MockResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl MockResponse {
    /// An answer with this status and an empty body.
    ///
    /// ```
    /// use idempotent_retry_mock::MockResponse;
    /// let answer = MockResponse::new(204);
    /// # drop(answer);
    /// ```
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// An answer with this status and `value` as its JSON body.
    ///
    /// ```
    /// use idempotent_retry_mock::MockResponse;
    /// let answer = MockResponse::json(402, &serde_json::json!({"error": {"code": "card_declined"}}));
    /// # drop(answer);
    /// ```
    pub fn json(status: u16, value: &Value) -> Self {
        Self::new(status).body(value.to_string())
    }

    /// Adds a header.
    ///
    /// ```
    /// use idempotent_retry_mock::MockResponse;
    /// let answer = MockResponse::new(200).header("Content-Type", "text/plain").body("ok");
    /// # drop(answer);
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    ///
    /// ```
    /// use idempotent_retry_mock::MockResponse;
    /// let answer = MockResponse::new(200).body(r#"{"ok": true}"#);
    /// # drop(answer);
    /// ```
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// The closure behind a route.
pub(crate) type HandlerFn = dyn Fn(&MockRequest) -> MockResponse + Send + Sync + 'static;

/// A route's closure handler, shared by the route's copies.
#[derive(Clone)]
pub(crate) struct Handler(pub(crate) Arc<HandlerFn>);

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler(..)")
    }
}

impl Handler {
    /// Runs the closure: its answer, checked, ready to store; or why there is none
    /// (it panicked, or answered a status or header that HTTP cannot carry).
    pub(crate) fn answer(&self, request: &MockRequest, route: &str) -> Result<Stored, String> {
        let answer = catch_unwind(AssertUnwindSafe(|| (self.0)(request))).map_err(|panic| {
            format!("the handler of route {route:?} panicked: {}", text(&*panic))
        })?;
        let fail = |what: String| format!("the handler of route {route:?} answered {what}");
        let status = super::response::final_status(answer.status)
            .ok_or_else(|| fail(format!("status {}, not a final HTTP status", answer.status)))?;
        let mut headers = Vec::with_capacity(answer.headers.len() + 2);
        if !answer
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        for (name, value) in &answer.headers {
            let parsed = HeaderName::try_from(name.as_str())
                .map_err(|_| fail(format!("header name {name:?}, which is not valid")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| fail(format!("a value of header {name} that is not valid")))?;
            headers.push((parsed, value));
        }
        if let Ok(value) = HeaderValue::try_from(route) {
            headers.push((HeaderName::from_static("matched-route"), value));
        }
        Ok(Stored {
            status,
            headers: headers.into_boxed_slice(),
            body: answer.body,
        })
    }
}

/// A panic's message, when it has one.
fn text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
