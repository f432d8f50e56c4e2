//! Routes: the mock server playing the caller's own API. A route is a method and a path
//! (literal and `{name}` segments), conditions on the request, and the answer it
//! renders from templates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use serde::Serialize;

use super::closure::{Handler, MockRequest, MockResponse};
use super::fault::{Fault, Faults, RandomFaults};
use super::shared::lock;
use super::store::Stored;
use super::template::{Context, Fields, Source, Template};

/// One route of the mock server: what requests it answers and how.
///
/// ```
/// use idempotent_retry_mock::{MockServer, Route};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = MockServer::builder()
///     .route(
///         Route::post("/v1/payment_intents")
///             .name("declined")
///             .when("body.payment_method", "pm_card_declined")
///             .status(402)
///             .body(r#"{"error": {"code": "card_declined"}}"#),
///     )
///     .route(
///         Route::post("/v1/payment_intents")
///             .status(200)
///             .id_prefix("pi_")
///             .header("Request-Id", "req_{{seq}}")
///             .body(r#"{"id": "{{id}}", "amount": {{body.amount}}, "status": "succeeded"}"#),
///     )
///     .start()
///     .await?;
/// # drop(server);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Route {
    method: Method,
    path: String,
    name: Option<String>,
    when: Vec<(String, String)>,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    id_prefix: String,
    store: bool,
    rates: Vec<(Fault, f64)>,
    handler: Option<Handler>,
    /// Requests per second, burst, and whether a `429` carries `Retry-After`.
    rate_limit: Option<(u32, u32, bool)>,
    /// Bytes of a large answer streamed instead of the body.
    stream_body: Option<u64>,
}

impl Route {
    /// A route for `method` and `path` (literal segments and `{name}` segments), which
    /// answers `200` with an empty body until told otherwise.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// use idempotent_retry::reqwest::Method;
    /// let route = Route::new(Method::POST, "/v1/charges");
    /// # drop(route);
    /// ```
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            name: None,
            when: Vec::new(),
            status: 200,
            headers: Vec::new(),
            body: String::new(),
            id_prefix: String::new(),
            store: true,
            rates: Vec::new(),
            handler: None,
            rate_limit: None,
            stream_body: None,
        }
    }

    /// A `POST` route: an operation (executed once per key, stored, replayed).
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges");
    /// # drop(route);
    /// ```
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// A `PUT` route: an operation.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::put("/v1/customers/{id}");
    /// # drop(route);
    /// ```
    pub fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    /// A `PATCH` route: an operation.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::patch("/v1/customers/{id}");
    /// # drop(route);
    /// ```
    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }

    /// A `DELETE` route: an operation.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::delete("/v1/customers/{id}");
    /// # drop(route);
    /// ```
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    /// A `GET` route: a read, answered anew every time, never stored.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::get("/v1/customers/{id}").body(r#"{"id": "{{path.id}}"}"#);
    /// # drop(route);
    /// ```
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// The route's name, unique, for read-back and errors (default `"METHOD path#n"`).
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").name("charge");
    /// # drop(route);
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A condition: the request's `field` (`body.x.y`, `query.x`, `header.x`, `path.x`)
    /// has this text (a JSON scalar compares by its JSON text). All must hold; a
    /// missing field fails it.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").when("body.source", "tok_chargeDeclined").status(402);
    /// # drop(route);
    /// ```
    pub fn when(mut self, field: impl Into<String>, value: impl Into<String>) -> Self {
        self.when.push((field.into(), value.into()));
        self
    }

    /// The answer's status (default 200).
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").status(201);
    /// # drop(route);
    /// ```
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// A header of the answer; its value is a template.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").header("Request-Id", "req_{{seq}}");
    /// # drop(route);
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The answer's body, a template (`application/json` unless a `Content-Type`
    /// header says otherwise).
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").body(r#"{"amount": {{body.amount}}}"#);
    /// # drop(route);
    /// ```
    pub fn body(mut self, template: impl Into<String>) -> Self {
        self.body = template.into();
        self
    }

    /// Whether an operation's answer is stored under its key (default `true`). With
    /// `false`, as Stripe does for its `429`s, the answer is sent but nothing executes
    /// or is stored: the key stays free, and a retry with it is answered anew.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").when("header.x-load", "high").status(429).store(false);
    /// # drop(route);
    /// ```
    pub fn store(mut self, store: bool) -> Self {
        self.store = store;
        self
    }

    /// Answers with `bytes` bytes of filler (`x`) instead of the body, streamed in
    /// 64 KiB chunks without a `Content-Length`, so the reader finds its size only by
    /// reading, and never held whole in the server's memory: for testing what a client
    /// does with an answer larger than it will buffer (this crate's
    /// `max_response_bytes`, or your own limit). The status and headers are the
    /// route's. For a route that stores nothing (GET, HEAD, or `store(false)`):
    /// `start` refuses it on a route whose answers are stored under their key.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::get("/v1/exports/{id}").stream_body(256 << 20); // 256 MiB
    /// # drop(route);
    /// ```
    pub fn stream_body(mut self, bytes: u64) -> Self {
        self.stream_body = Some(bytes);
        self
    }

    /// What `{{id}}` starts with, such as `"pi_"`.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").id_prefix("ch_").body(r#"{"id": "{{id}}"}"#);
    /// # drop(route);
    /// ```
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = prefix.into();
        self
    }

    /// Answers with a closure instead of the templates, for logic no template
    /// expresses (state across requests, computed fields). For an operation it runs
    /// inside the operation: once per key, its answer stored and replayed like a
    /// template's; for a read, on every request. A panic, or an answer HTTP cannot
    /// carry, is a `500` that is not stored (the key is let go). `when` conditions
    /// still choose the route.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use idempotent_retry_mock::{MockResponse, Route};
    ///
    /// let balance = AtomicU64::new(10_000);
    /// let route = Route::post("/v1/transfers").handler(move |request| {
    ///     let amount = request.body["amount"].as_u64().unwrap_or(0);
    ///     match balance.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(amount)) {
    ///         Ok(before) => MockResponse::json(201, &serde_json::json!({"id": request.id, "balance": before - amount})),
    ///         Err(_) => MockResponse::json(402, &serde_json::json!({"error": "insufficient_funds"})),
    ///     }
    /// });
    /// # drop(route);
    /// ```
    pub fn handler(
        mut self,
        handler: impl Fn(&MockRequest) -> MockResponse + Send + Sync + 'static,
    ) -> Self {
        self.handler = Some(Handler(Arc::new(handler)));
        self
    }

    /// A rate limit: `per_second` requests a second, `burst` at once. A request past it
    /// is answered `429` before anything else (nothing executes, no queued fault is
    /// used), with `Retry-After` and the IETF `RateLimit-Policy` (`"default";q=<burst>;
    /// w=<seconds>`) and `RateLimit` (`"default";r=0;t=<seconds>`) fields; see
    /// [`rate_limit_retry_after`](Self::rate_limit_retry_after) to leave `Retry-After`
    /// out. Both must be at least 1.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").rate_limit(100, 20);
    /// # drop(route);
    /// ```
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        let retry_after = self.rate_limit.is_none_or(|(_, _, r)| r);
        self.rate_limit = Some((per_second, burst, retry_after));
        self
    }

    /// Whether the rate limit's `429`s carry `Retry-After` (default `true`); without it
    /// only the `RateLimit` fields say when to come back.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").rate_limit(100, 20).rate_limit_retry_after(false);
    /// # drop(route);
    /// ```
    pub fn rate_limit_retry_after(mut self, send: bool) -> Self {
        if let Some((_, _, retry_after)) = &mut self.rate_limit {
            *retry_after = send;
        }
        self
    }

    /// Random faults on `rate` of this route's requests, spread evenly over
    /// [`Fault::all_kinds`], drawn from the route's own generator (seeded from the
    /// server's seed and the route's name, so adding a route changes no other route's
    /// faults). It replaces the server's random plan for this route; queued faults
    /// still come first.
    ///
    /// ```
    /// use idempotent_retry_mock::Route;
    /// let route = Route::post("/v1/charges").fault_rate(0.2);
    /// # drop(route);
    /// ```
    pub fn fault_rate(self, rate: f64) -> Self {
        self.fault_rates(super::fault::spread(rate))
    }

    /// Random faults on this route with a probability each (adding up to at most 1);
    /// see [`fault_rate`](Self::fault_rate).
    ///
    /// ```
    /// use idempotent_retry_mock::{Fault, Route};
    /// let route = Route::post("/v1/charges").fault_rates([(Fault::DropAfterProcessing, 0.1)]);
    /// # drop(route);
    /// ```
    pub fn fault_rates(mut self, rates: impl IntoIterator<Item = (Fault, f64)>) -> Self {
        self.rates = rates.into_iter().collect();
        self
    }
}

/// One route's read-back figures, as [`Stats`](super::Stats) and `GET /__admin/routes`
/// give them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteStats {
    /// The route's name.
    pub name: String,
    /// `METHOD path`.
    pub route: String,
    /// Requests the route answered (matched), replays and faulted ones included.
    pub requests: u64,
    /// Times it made a fresh answer: executions for an operation (once per key; a
    /// replay is not one), every answer for a read.
    pub executions: u64,
}

fn invalid_header(name: &HeaderName) -> String {
    format!("header {name} does not render to a valid header value")
}

/// One segment of a route's path.
#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

/// A route checked and parsed when the server starts.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// Shared with every log entry of a request the route answered.
    pub(crate) name: Arc<str>,
    pub(crate) method: Method,
    path: String,
    segments: Vec<Segment>,
    when: Vec<(Source, String, String)>,
    pub(crate) status: StatusCode,
    headers: Vec<(HeaderName, Template)>,
    body: Template,
    content_type: bool,
    id_prefix: String,
    /// Whether answers are executions, stored under their key.
    pub(crate) store: bool,
    /// Executions of the route, for `{{seq}}`.
    seq: AtomicU64,
    /// Requests matched, for read-back.
    requests: AtomicU64,
    /// Fresh answers made, for read-back.
    executions: AtomicU64,
    /// Faults aimed at this route: queued, and its own random plan.
    pub(crate) faults: Mutex<Faults>,
    /// The closure that answers instead of the templates, if any.
    pub(crate) handler: Option<Handler>,
    /// The `Matched-Route` header's value: the name, when it can be one.
    matched: Option<HeaderValue>,
    /// The route's rate limit, if any.
    pub(crate) throttle: Option<super::throttle::Throttle>,
    /// Bytes of filler streamed instead of the body, if any.
    pub(crate) stream_body: Option<u64>,
}

/// A route's own random faults, if it has rates: drawn from the server's seed and the
/// route's name, so that adding a route changes no other route's faults.
fn random_faults(
    rates: &[(Fault, f64)],
    seed: u64,
    name: &str,
) -> Result<Option<RandomFaults>, String> {
    if rates.is_empty() {
        return Ok(None);
    }
    RandomFaults::new(seed ^ crate::rng::fnv1a(name.as_bytes()), rates).map(Some)
}

/// A route's path as segments: `{name}` ones take any value, the others their text.
fn segments_of(path: &str) -> Vec<Segment> {
    path[1..]
        .split('/')
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => Segment::Param(param.to_owned()),
                None => Segment::Literal(s.to_owned()),
            },
        )
        .collect()
}

/// A route's headers, each name checked and each value parsed as a template.
fn header_templates(headers: &[(String, String)]) -> Result<Vec<(HeaderName, Template)>, String> {
    headers
        .iter()
        .map(|(header, value)| {
            let parsed = HeaderName::try_from(header.as_str())
                .map_err(|e| format!("header {header:?}: {e}"))?;
            let template = Template::header(value).map_err(|e| format!("header {header:?} {e}"))?;
            Ok((parsed, template))
        })
        .collect()
}

/// Whether the fields a route's templates and conditions read can be there: every
/// `{{path.x}}` names a `{x}` segment, and `{{id}}` (text) sits inside a string.
fn check_fields(
    segments: &[Segment],
    (body, headers): (&Template, &[(HeaderName, Template)]),
    when: &[(Source, String, String)],
) -> Result<(), String> {
    let params: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    let templates =
        std::iter::once((body, "body")).chain(headers.iter().map(|(_, t)| (t, "a header")));
    for (template, whence) in templates {
        for (source, context) in template.fields() {
            match source {
                Source::Path(p) if !params.contains(&p.as_str()) => {
                    return Err(format!(
                        "{whence} uses {{{{path.{p}}}}}, but the path has no {{{p}}} segment"
                    ));
                }
                Source::Id if context == Context::Bare => {
                    return Err(format!(
                        "{whence} has {{{{id}}}} outside a string: an id is text, quote it"
                    ));
                }
                _ => {}
            }
        }
    }
    for (source, field, _) in when {
        if let Source::Path(p) = source {
            if !params.contains(&p.as_str()) {
                return Err(format!("when {field:?}: the path has no {{{p}}} segment"));
            }
        }
    }
    Ok(())
}

/// Why a request matched no route: the nearest route and the condition that failed.
pub(crate) struct NoMatch(pub(crate) String);

/// A `{name}` segment's name and the value a request gave it.
pub(crate) type Params = Vec<(String, String)>;

impl Compiled {
    /// Checks and parses `route`, the `index`-th; the error names the route.
    pub(crate) fn new(route: &Route, index: usize, seed: u64) -> Result<Self, String> {
        let name = route
            .name
            .clone()
            .unwrap_or_else(|| format!("{} {}#{}", route.method, route.path, index + 1));
        let fail = |what: String| format!("route {name:?}: {what}");
        if !route.path.starts_with('/') {
            return Err(fail(format!("path {:?} must start with '/'", route.path)));
        }
        let segments = segments_of(&route.path);
        let status = super::response::final_status(route.status).ok_or_else(|| {
            fail(format!(
                "status {} is not a final HTTP status",
                route.status
            ))
        })?;
        let body = Template::body(&route.body).map_err(|e| fail(format!("body {e}")))?;
        let headers = header_templates(&route.headers).map_err(&fail)?;
        let content_type = headers
            .iter()
            .any(|(name, _)| name == http::header::CONTENT_TYPE);
        let when = route
            .when
            .iter()
            .map(|(field, value)| {
                let source = super::template::field(field)
                    .map_err(|reason| fail(format!("when {field:?}: {reason}")))?;
                Ok((source, field.clone(), value.clone()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        check_fields(&segments, (&body, &headers), &when).map_err(fail)?;
        let random = random_faults(&route.rates, seed, &name).map_err(&fail)?;
        let throttle = route
            .rate_limit
            .map(|(per_second, burst, retry_after)| {
                super::throttle::Throttle::new(per_second, burst, retry_after)
            })
            .transpose()
            .map_err(&fail)?;
        let stores = route.store
            && matches!(
                route.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            );
        if route.stream_body.is_some() && stores {
            return Err(fail(
                "stream_body is for a route that stores nothing: a GET, or store(false)".into(),
            ));
        }
        Ok(Self {
            throttle,
            stream_body: route.stream_body,
            faults: Mutex::new(Faults {
                scripted: Default::default(),
                random,
            }),
            requests: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            handler: route.handler.clone(),
            matched: HeaderValue::try_from(name.as_str()).ok(),
            name: name.into(),
            method: route.method.clone(),
            path: route.path.clone(),
            segments,
            when,
            status,
            headers,
            body,
            content_type,
            id_prefix: route.id_prefix.clone(),
            store: route.store,
            seq: AtomicU64::new(0),
        })
    }

    /// The `{name}` segments' values when `method` and `path` are this route's.
    pub(crate) fn path_params(&self, method: &Method, path: &str) -> Option<Params> {
        if *method != self.method && !(*method == Method::HEAD && self.method == Method::GET) {
            return None;
        }
        // Walked in step, without collecting the parts: a route without `{name}`
        // segments matches without allocating.
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut params = Vec::new();
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.clone(), part.to_owned())),
            }
        }
        parts.next().is_none().then_some(params)
    }

    /// Whether every condition holds; else which one failed.
    pub(crate) fn conditions(&self, fields: &Fields<'_>) -> Result<(), String> {
        for (source, field, want) in &self.when {
            let holds = super::template::text_of(source, fields).is_some_and(|got| got == *want);
            if !holds {
                return Err(format!("{field} is not {want:?}"));
            }
        }
        Ok(())
    }

    /// Draws the next `{{seq}}`: executions of the route, from 1.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The route's executions so far.
    pub(crate) fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Restarts `{{seq}}` and the counts, and drops queued faults (the random plan
    /// goes on from where it was).
    pub(crate) fn reset(&self) {
        for counter in [&self.seq, &self.requests, &self.executions] {
            counter.store(0, Ordering::Release);
        }
        lock(&self.faults).scripted.clear();
    }

    /// Counts a request the route answers.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a fresh answer.
    pub(crate) fn count_execution(&self) {
        self.executions.fetch_add(1, Ordering::AcqRel);
    }

    /// The route's read-back figures.
    pub(crate) fn stats(&self) -> RouteStats {
        RouteStats {
            name: self.name.to_string(),
            route: format!("{} {}", self.method, self.path),
            requests: self.requests.load(Ordering::Acquire),
            executions: self.executions.load(Ordering::Acquire),
        }
    }

    /// The route as `GET /__admin/routes` lists it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let stats = self.stats();
        serde_json::json!({
            "name": stats.name,
            "method": self.method.as_str(),
            "path": self.path,
            "status": self.status.as_u16(),
            "store": self.store,
            "requests": stats.requests,
            "executions": stats.executions,
        })
    }

    /// Whether `selector` addresses this route: its name, or its `METHOD path`.
    pub(crate) fn answers_to(&self, selector: &str) -> bool {
        *self.name == *selector
            || selector.split_once(' ').is_some_and(|(method, path)| {
                method.eq_ignore_ascii_case(self.method.as_str()) && path == self.path
            })
    }

    /// `{{id}}` for execution `n` of the server: the prefix and a token drawn from the
    /// seed.
    pub(crate) fn id(&self, seed: u64, n: u64) -> String {
        let mut rng = crate::rng::SplitMix64::new(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut token = self.id_prefix.clone();
        let alphabet = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut bits = rng.next_u64();
        for _ in 0..14 {
            // The remainder of a division by 62 always indexes the alphabet.
            token.push(char::from(alphabet[(bits % 62) as usize]));
            bits /= 62;
        }
        token
    }

    /// Whether the request fills every placeholder of the answer and its headers
    /// render to valid values, without rendering anything (no allocation): the check
    /// made before an operation draws its id and `{{seq}}`.
    pub(crate) fn check(&self, fields: &Fields<'_>) -> Result<(), String> {
        self.body.check(fields).map_err(|e| e.to_string())?;
        for (name, template) in &self.headers {
            if !template.check_header(fields).map_err(|e| e.to_string())? {
                return Err(invalid_header(name));
            }
        }
        Ok(())
    }

    /// The answer for one request: status, headers (the route's, rendered) and body,
    /// the body and each templated header in one allocation.
    pub(crate) fn render(&self, fields: &Fields<'_>) -> Result<Stored, String> {
        let body = self.body.render(fields).map_err(|e| e.to_string())?;
        let mut headers = Vec::with_capacity(self.headers.len() + 2);
        if !self.content_type {
            // Filler is no JSON.
            let implied = match self.stream_body {
                Some(_) => "application/octet-stream",
                None => "application/json",
            };
            headers.push((
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(implied),
            ));
        }
        for (name, template) in &self.headers {
            let text = template.render(fields).map_err(|e| e.to_string())?;
            let value = HeaderValue::try_from(text).map_err(|_| invalid_header(name))?;
            headers.push((name.clone(), value));
        }
        if let Some(value) = &self.matched {
            headers.push((HeaderName::from_static("matched-route"), value.clone()));
        }
        Ok(Stored {
            status: self.status,
            headers: headers.into_boxed_slice(),
            body: body.into(),
        })
    }

    /// `METHOD path`, for messages.
    pub(crate) fn describe(&self) -> String {
        format!("{:?} ({} {})", self.name, self.method, self.path)
    }
}

/// The index of the first route that answers `method` and `path` and for which `check`
/// (its conditions, given its path parameters) holds, with those parameters; else why
/// none did: the nearest route and the condition that failed.
pub(crate) fn find(
    routes: &[Arc<Compiled>],
    method: &Method,
    path: &str,
    check: impl Fn(&Compiled, &[(String, String)]) -> Result<(), String>,
) -> Result<(usize, Params), NoMatch> {
    let mut nearest = None;
    for (index, route) in routes.iter().enumerate() {
        let Some(params) = route.path_params(method, path) else {
            continue;
        };
        match check(route, &params) {
            Ok(()) => return Ok((index, params)),
            Err(why) => {
                if nearest.is_none() {
                    nearest = Some(format!("nearest route {}: {why}", route.describe()));
                }
            }
        }
    }
    Err(NoMatch(nearest.unwrap_or_else(|| {
        format!("no route answers {method} {path}")
    })))
}
