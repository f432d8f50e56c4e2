//! The mock server's HTTP side: one handler for operations, one for `/__admin/…`.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::fault::{Fault, FaultRequest, Faults};
use super::store::{Begin, ScopedKey, Store, Stored};
use super::{ReceivedRequest, Stats};
use crate::IdempotencyKey;

pub(crate) type Body = Full<Bytes>;

/// Returned by the handler to make hyper close the connection without an answer.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

/// Settings fixed when the server starts.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) require_key: bool,
    pub(crate) key_ttl: Duration,
    pub(crate) processing_delay: Duration,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_keys: usize,
    pub(crate) max_log: usize,
    pub(crate) key_header: HeaderName,
}

/// Read-back data beyond the store: the request log and the keys that executed twice.
#[derive(Debug, Default)]
struct Book {
    log: VecDeque<ReceivedRequest>,
    /// Key → executions, for keys that executed more than once. Empty when idempotency
    /// held; capped at [`MAX_DUPLICATES`] keys so hostile input cannot grow it forever.
    duplicates: BTreeMap<String, u64>,
}

/// Most distinct duplicate keys remembered (there should be none).
const MAX_DUPLICATES: usize = 10_000;

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    store: Mutex<Store>,
    pub(crate) faults: Mutex<Faults>,
    book: Mutex<Book>,
    executions: AtomicU64,
    requests: AtomicU64,
    replays: AtomicU64,
    conflicts: AtomicU64,
    mismatches: AtomicU64,
    next_id: AtomicU64,
}

/// Locks, recovering the data if a panicking thread poisoned the lock: every critical
/// section here leaves the data consistent, so a poison flag carries no information.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(config: Config, faults: Faults) -> Self {
        Self {
            store: Mutex::new(Store::new(config.key_ttl, config.max_keys)),
            config,
            faults: Mutex::new(faults),
            book: Mutex::default(),
            executions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn executions(&self) -> u64 {
        self.executions.load(Ordering::Acquire)
    }

    pub(crate) fn executions_for(&self, key: &str) -> u64 {
        lock(&self.store).executions_for(key)
    }

    pub(crate) fn duplicates(&self) -> Vec<String> {
        lock(&self.book).duplicates.keys().cloned().collect()
    }

    pub(crate) fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.book).log.iter().cloned().collect()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            executions: self.executions(),
            requests: self.requests.load(Ordering::Acquire),
            replays: self.replays.load(Ordering::Acquire),
            conflicts: self.conflicts.load(Ordering::Acquire),
            mismatches: self.mismatches.load(Ordering::Acquire),
            stored_keys: lock(&self.store).len(),
            faults_queued: lock(&self.faults).scripted.len(),
            duplicates: self.duplicates(),
        }
    }

    pub(crate) fn replays(&self) -> u64 {
        self.replays.load(Ordering::Acquire)
    }

    pub(crate) fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Acquire)
    }

    pub(crate) fn mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Acquire)
    }

    /// Forgets stored keys, counts, the log and queued faults. The random plan, if
    /// any, goes on from where it was.
    pub(crate) fn reset(&self) {
        lock(&self.store).clear();
        lock(&self.faults).scripted.clear();
        *lock(&self.book) = Book::default();
        for counter in [
            &self.executions,
            &self.requests,
            &self.replays,
            &self.conflicts,
            &self.mismatches,
        ] {
            counter.store(0, Ordering::Release);
        }
    }

    /// Counts a request and logs it, unless the log is off (`max_log` 0): then the key
    /// is not even copied.
    fn record(&self, method: &Method, path: &str, key: impl FnOnce() -> Option<String>) {
        self.requests.fetch_add(1, Ordering::AcqRel);
        if self.config.max_log == 0 {
            return;
        }
        let key = key();
        let mut book = lock(&self.book);
        if book.log.len() >= self.config.max_log {
            book.log.pop_front();
        }
        book.log.push_back(ReceivedRequest {
            method: method.clone(),
            path: path.to_owned(),
            key,
            at: Instant::now(),
        });
    }
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let path = request.uri().path().to_owned();
    if let Some(admin_path) = path.strip_prefix("/__admin/") {
        return Ok(admin(&shared, admin_path, request).await);
    }
    let method = request.method().clone();
    if method != Method::POST && method != Method::PATCH {
        return Ok(problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "the mock server executes POST and PATCH; other methods have nothing to do",
        ));
    }
    let (parts, body) = request.into_parts();
    let raw_key = parts.headers.get(&shared.config.key_header);
    let key = raw_key.map(decode_key);
    shared.record(&method, &path, || match (&key, raw_key) {
        (Some(Ok(k)), _) => Some(k.as_str().to_owned()),
        (_, Some(raw)) => Some(String::from_utf8_lossy(raw.as_bytes()).into_owned()),
        (_, None) => None,
    });

    let fault = lock(&shared.faults).next();
    if let Some(fault) = fault.as_ref().filter(|f| f.is_before_processing()) {
        return fail_before(fault);
    }

    let key = match key {
        Some(Ok(key)) => Some(key),
        Some(Err(reason)) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Invalid idempotency key",
                &reason,
            ));
        }
        None if shared.config.require_key => {
            let detail = format!(
                "this server requires the {} header",
                shared.config.key_header
            );
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "Idempotency key required",
                &detail,
            ));
        }
        None => None,
    };
    let body = match Limited::new(body, shared.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let detail = format!("the body is over {} bytes", shared.config.max_body_bytes);
            return Ok(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                &detail,
            ));
        }
        // The client went away mid-body: nobody to answer.
        Err(_) => return Err(Dropped),
    };
    let echo = match echo_body(&parts.headers, &body) {
        Ok(echo) => echo,
        Err(detail) => return Ok(problem(StatusCode::BAD_REQUEST, "Invalid body", &detail)),
    };

    let (stored, replayed) = match key {
        None => (execute(shared.clone(), None, path, echo).await?, false),
        Some(key) => {
            let scoped = ScopedKey {
                scope: parts
                    .headers
                    .get(AUTHORIZATION)
                    .map(|v| Bytes::copy_from_slice(v.as_bytes())),
                key: key.into_boxed_str(),
            };
            let fingerprint = fingerprint(&method, &path, &body);
            let begin = lock(&shared.store).begin(scoped, fingerprint, Instant::now());
            match begin {
                Begin::Execute(scoped) => (
                    execute(shared.clone(), Some(scoped), path, echo).await?,
                    false,
                ),
                Begin::Replay(stored) => {
                    shared.replays.fetch_add(1, Ordering::AcqRel);
                    (stored, true)
                }
                Begin::InFlight => {
                    shared.conflicts.fetch_add(1, Ordering::AcqRel);
                    return fail_after(
                        fault,
                        problem(
                            StatusCode::CONFLICT,
                            "Request in progress",
                            "a request with this idempotency key is still being processed; retry later",
                        ),
                    )
                    .await;
                }
                Begin::Mismatch => {
                    shared.mismatches.fetch_add(1, Ordering::AcqRel);
                    return fail_after(
                        fault,
                        problem(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Idempotency key reused",
                            "this idempotency key was used for a different request (method, path or body)",
                        ),
                    )
                    .await;
                }
                Begin::Full => {
                    let mut response = problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Key store full",
                        "every stored key is still in flight; retry later",
                    );
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    return Ok(response);
                }
            }
        }
    };
    fail_after(fault, stored_response(&stored, replayed)).await
}

/// Runs the operation so that it completes and is stored even if the client
/// disconnects and hyper drops this request's future: inline when there is no
/// processing delay (nothing awaits between [`Store::begin`] and [`Store::complete`], so
/// nothing can cut it short), otherwise in its own task.
async fn execute(
    shared: Arc<Shared>,
    key: Option<Arc<ScopedKey>>,
    path: String,
    echo: Echo,
) -> Result<Arc<Stored>, Dropped> {
    if shared.config.processing_delay.is_zero() {
        return Ok(finish(&shared, key.as_deref(), &path, &echo));
    }
    let task = tokio::spawn(async move {
        tokio::time::sleep(shared.config.processing_delay).await;
        finish(&shared, key.as_deref(), &path, &echo)
    });
    // A join error means the runtime is shutting down: the connection goes with it.
    task.await.map_err(|_| Dropped)
}

/// The operation itself: create the resource, store the answer under the key.
fn finish(shared: &Shared, key: Option<&ScopedKey>, path: &str, echo: &Echo) -> Arc<Stored> {
    let id = shared.next_id.fetch_add(1, Ordering::AcqRel);
    let stored = Arc::new(Stored {
        status: StatusCode::CREATED,
        body: echo.created(id, path),
    });
    shared.executions.fetch_add(1, Ordering::AcqRel);
    if let Some(key) = key {
        let executions = lock(&shared.store).complete(key, stored.clone());
        if executions > 1 {
            let mut book = lock(&shared.book);
            if book.duplicates.len() < MAX_DUPLICATES || book.duplicates.contains_key(&*key.key) {
                book.duplicates.insert(key.key.to_string(), executions);
            }
        }
    }
    stored
}

fn stored_response(stored: &Stored, replayed: bool) -> Response<Body> {
    let mut response = Response::new(Full::new(stored.body.clone()));
    *response.status_mut() = stored.status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn fail_before(fault: &Fault) -> Result<Response<Body>, Dropped> {
    match fault {
        Fault::StatusBeforeProcessing(status) => Ok(problem(
            *status,
            "Injected fault",
            "status before processing",
        )),
        Fault::RateLimited { retry_after } => {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                "injected rate limit; retry after the time in Retry-After",
            );
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
            Ok(response)
        }
        _ => Err(Dropped),
    }
}

/// Applies an *after processing* fault to the answer the request earned.
async fn fail_after(
    fault: Option<Fault>,
    response: Response<Body>,
) -> Result<Response<Body>, Dropped> {
    match fault {
        Some(Fault::StatusAfterProcessing(status)) => Ok(problem(
            status,
            "Injected fault",
            "status after processing: the operation did run",
        )),
        Some(Fault::DelayAfterProcessing(delay)) => {
            tokio::time::sleep(delay).await;
            Ok(response)
        }
        Some(Fault::DropAfterProcessing) => Err(Dropped),
        _ => Ok(response),
    }
}

/// The key from its header, bare or as an RFC 8941 string (`"…"`, with `\"` and `\\`).
pub(crate) fn decode_key(value: &HeaderValue) -> Result<IdempotencyKey, String> {
    let bytes = value.as_bytes();
    let text = match bytes {
        [b'"', inner @ .., b'"'] => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.iter();
            while let Some(&b) = chars.next() {
                let c = match b {
                    b'\\' => match chars.next() {
                        Some(&e @ (b'"' | b'\\')) => e,
                        _ => return Err("bad escape in structured-string key".into()),
                    },
                    b'"' => return Err("unescaped quote in structured-string key".into()),
                    other => other,
                };
                out.push(char::from(c));
            }
            Cow::Owned(out)
        }
        // Borrowed, without a copy, when the bytes are UTF-8 (every valid key is).
        _ => String::from_utf8_lossy(bytes),
    };
    IdempotencyKey::parse(&text).map_err(|e| e.to_string())
}

/// What the created resource echoes of the request body.
#[derive(Debug)]
enum Echo {
    /// The body itself, validated as JSON: echoed as it came, with no parse tree and no
    /// copy (replays, which echo nothing, pay only the validation).
    Json(Bytes),
    /// Anything else, converted.
    Value(Value),
}

impl Echo {
    /// The created resource: `{"body":…,"id":…,"path":…}`.
    fn created(&self, id: u64, path: &str) -> Bytes {
        let echo = match self {
            // Validated JSON is UTF-8, so this borrows.
            Echo::Json(raw) => String::from_utf8_lossy(raw),
            Echo::Value(value) => Cow::Owned(value.to_string()),
        };
        let path = Value::from(path);
        let mut text = format!(r#"{{"body":{echo},"id":{id},"path":{path}}}"#);
        // Stored for the key's lifetime: spare capacity would cost ~180 bytes per key.
        text.shrink_to_fit();
        Bytes::from(text)
    }
}

/// What the created resource echoes: JSON as JSON, forms as an object, other text as a
/// string (or as JSON if it is JSON), nothing as `null`.
fn echo_body(headers: &HeaderMap, body: &Bytes) -> Result<Echo, String> {
    let raw_json = || {
        serde_json::from_slice::<&RawValue>(body)
            .map(|raw| Echo::Json(body.slice_ref(raw.get().as_bytes())))
    };
    if body.is_empty() {
        return Ok(Echo::Value(Value::Null));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if content_type == "application/json" || content_type.ends_with("+json") {
        raw_json().map_err(|e| format!("the body is not valid JSON: {e}"))
    } else if content_type == "application/x-www-form-urlencoded" {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| format!("the body is not a valid form: {e}"))?;
        Ok(Echo::Value(Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect(),
        )))
    } else {
        Ok(raw_json().unwrap_or_else(|_| {
            Echo::Value(Value::String(String::from_utf8_lossy(body).into_owned()))
        }))
    }
}

fn fingerprint(method: &Method, path: &str, body: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    method.as_str().hash(&mut hasher);
    path.hash(&mut hasher);
    body.hash(&mut hasher);
    hasher.finish()
}

/// An RFC 9457 `application/problem+json` answer.
pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let body = json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn admin(shared: &Shared, path: &str, request: Request<Incoming>) -> Response<Body> {
    match (request.method(), path) {
        (&Method::GET, "stats") => match serde_json::to_value(shared.stats()) {
            Ok(stats) => json_response(StatusCode::OK, &stats),
            Err(e) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Stats failed",
                &e.to_string(),
            ),
        },
        (&Method::POST, "reset") => {
            shared.reset();
            json_response(StatusCode::OK, &json!({ "reset": true }))
        }
        (&Method::POST, "faults") => {
            let body = match Limited::new(request.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let detail = format!("send at most {MAX_ADMIN_BODY} bytes of JSON");
                    return problem(StatusCode::PAYLOAD_TOO_LARGE, "Body too large", &detail);
                }
            };
            let parsed = serde_json::from_slice::<FaultRequest>(&body)
                .map_err(|e| format!("not a fault request: {e}"))
                .and_then(FaultRequest::into_fault);
            match parsed {
                Ok((fault, times)) => {
                    let mut faults = lock(&shared.faults);
                    faults.inject(fault, times);
                    json_response(StatusCode::OK, &json!({ "queued": faults.scripted.len() }))
                }
                Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid fault", &detail),
            }
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "No such admin endpoint",
            "use GET /__admin/stats, POST /__admin/faults or POST /__admin/reset",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Option<Result<IdempotencyKey, String>> {
        HeaderValue::from_bytes(bytes).ok().map(|v| decode_key(&v))
    }

    #[test]
    fn decodes_both_forms() {
        assert_eq!(decode(b"abc").unwrap().unwrap().as_str(), "abc");
        assert_eq!(decode(b"\"abc\"").unwrap().unwrap().as_str(), "abc");
        assert_eq!(
            decode(b"\"a\\\"b\\\\c\"").unwrap().unwrap().as_str(),
            "a\"b\\c"
        );
        for bad in [&b"\"\""[..], b"\"a\\x\"", b"\"a\"b\"", b"\"a\\\"", b""] {
            assert!(
                decode(bad).unwrap().is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Structured-string encoding as a client would do it, escapes included.
    fn quote(key: &str) -> String {
        let mut out = String::from("\"");
        for c in key.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    proptest! {
        // Fuzzing by property: arbitrary bytes never panic the decoder, and whatever it
        // accepts is a valid key.
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(Ok(key)) = decode(&bytes) {
                prop_assert!(IdempotencyKey::parse(key.as_str()).is_ok());
            }
        }

        #[test]
        fn quoted_keys_round_trip(key in "[!-~]{1,200}") {
            let decoded = decode(quote(&key).as_bytes()).unwrap().unwrap();
            prop_assert_eq!(decoded.as_str(), key.as_str());
        }

        #[test]
        fn echo_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200), kind in 0usize..4) {
            let content_type = ["application/json", "application/x-www-form-urlencoded", "text/plain", "application/problem+json; charset=utf-8"][kind];
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            let _ = echo_body(&headers, &Bytes::from(body));
        }
    }
}
