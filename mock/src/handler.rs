//! One request to the mock server, as named steps: route, body, log, key, fault before,
//! the idempotent decision, the operation, fault after.

// A step's early answer is a whole response, moved once per request to hyper, which
// takes it by value: boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::admin;
use super::fault::{After, Phase};
use super::log::Entry;
use super::response::{self, Body, Dropped, problem};
use super::route::Compiled;
use super::shared::{CreatedId, Performed, Resource, Shared};
use super::socket::Sabotage;
use super::store::{Begin, ScopedKey, Stored};
use super::wire::{Echo, decode_key, echo_body, fingerprint};
use crate::key::Key;

/// What a step gives the next one, or the answer that ends the request early.
pub(crate) type Step<T> = Result<T, Result<Response<Body>, Dropped>>;

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    sabotage: Arc<Sabotage>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let path = request.uri().path().to_owned();
    if let Some(admin_path) = path.strip_prefix("/__admin/") {
        let token = shared.config.admin_token.as_ref();
        if let Some(refusal) = token.and_then(|t| t.refusal(request.headers())) {
            return Ok(refusal);
        }
        return Ok(admin::handle(&shared, admin_path, request).await);
    }
    let method = request.method().clone();
    if let Some(outage) = shared.outage.now() {
        return during(&shared, &method, &path, outage, &request);
    }
    if let Some(upstream) = &shared.config.upstream {
        let proxied = super::proxy::handle(&shared, &sabotage, upstream, method, path, request);
        return match proxied.await {
            Ok(answer) | Err(answer) => answer,
        };
    }
    let routes = shared.routes();
    if !routes.is_empty() {
        let wire = (&*sabotage, request);
        return match super::routed::handle(&shared, &routes, method, path, wire).await {
            Ok(answer) | Err(answer) => answer,
        };
    }
    if let Some(answer) = read_back(&shared, &method, &path, request.headers()) {
        return Ok(answer);
    }
    if method != Method::POST && method != Method::PATCH {
        return Ok(problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "the mock server executes POST and PATCH; other methods have nothing to do",
        ));
    }
    match operation(&shared, &sabotage, method, path, request).await {
        Ok(answer) | Err(answer) => answer,
    }
}

/// A request during an outage: logged (without its body, which is not read), then
/// answered with the outage's status or dropped, executing nothing.
fn during(
    shared: &Shared,
    method: &Method,
    path: &str,
    outage: super::outage::Outage,
    request: &Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let key = request
        .headers()
        .get(&shared.config.key_header)
        .map(decode_key);
    let headers = request.headers();
    log(
        shared,
        method,
        path,
        request.uri(),
        headers,
        key.as_ref(),
        (&[], None),
    );
    match outage {
        super::outage::Outage::Status(status) => Ok(problem(
            status,
            "Outage",
            "the server is in an outage; nothing was executed",
        )),
        super::outage::Outage::Drop => Err(Dropped),
    }
}

/// A POST or PATCH: everything after routing.
async fn operation(
    shared: &Arc<Shared>,
    sabotage: &Sabotage,
    method: Method,
    path: String,
    request: Request<Incoming>,
) -> Step<Result<Response<Body>, Dropped>> {
    let Received { parts, key, body } = receive(shared, &method, &path, request).await?;
    log(
        shared,
        &method,
        &path,
        &parts.uri,
        &parts.headers,
        key.as_ref(),
        (&body, None),
    );
    // Refusals first: a request refused for its key or body takes no queued fault.
    let key = check_key(shared, key)?;
    let echo = echo_body(&parts.headers, &body)
        .map_err(|detail| Ok(problem(StatusCode::BAD_REQUEST, "Invalid body", &detail)))?;
    let after = draw_fault(shared, sabotage, None).await?;

    let scope = scope_of(shared, &parts.headers);
    let at = Resource {
        scope: scope.clone(),
        path: path.clone(),
    };
    let Some(key) = key else {
        let stored = execute(shared.clone(), None, at, create(path, echo)).await?;
        return Ok(spoil(sabotage, after, response::stored(&stored, false)).await);
    };
    let scoped = ScopedKey {
        scope,
        key: key.into_boxed_str(),
    };
    let fingerprint = fingerprint(&method, &path, &body);
    let earned = match claim(shared, scoped, fingerprint) {
        Claim::Claimed(scoped) => {
            let stored = execute(shared.clone(), Some(scoped), at, create(path, echo)).await?;
            response::stored(&stored, false)
        }
        Claim::Answer(answer) => answer,
        Claim::Early(answer) => return Err(Ok(answer)),
    };
    Ok(spoil(sabotage, after, earned).await)
}

/// A request as received: its head, its key as sent (decoded), its whole body.
pub(crate) struct Received {
    pub(crate) parts: Parts,
    pub(crate) key: Option<Result<Key, String>>,
    pub(crate) body: Bytes,
}

/// Reads the key and the whole body. A request that ends here (its body too large,
/// its client gone) is logged now, without a body; otherwise the caller logs it once it
/// knows the route.
pub(crate) async fn receive(
    shared: &Shared,
    method: &Method,
    path: &str,
    request: Request<Incoming>,
) -> Step<Received> {
    let (parts, body) = request.into_parts();
    let key = parts.headers.get(&shared.config.key_header).map(decode_key);
    match read_body(shared, body).await {
        Ok(body) => Ok(Received { parts, key, body }),
        Err(answer) => {
            log(
                shared,
                method,
                path,
                &parts.uri,
                &parts.headers,
                key.as_ref(),
                (&[], None),
            );
            Err(answer)
        }
    }
}

/// Counts the request and logs it, with the route that answers it, if any.
pub(crate) fn log(
    shared: &Shared,
    method: &Method,
    path: &str,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    key: Option<&Result<Key, String>>,
    (body, route): (&[u8], Option<&Arc<str>>),
) {
    let key = if shared.logging() {
        match key {
            Some(Ok(key)) => Some(Cow::Borrowed(key.as_str())),
            Some(Err(_)) => headers
                .get(&shared.config.key_header)
                .map(|raw| String::from_utf8_lossy(raw.as_bytes())),
            None => None,
        }
    } else {
        None
    };
    shared.record(&Entry {
        method,
        path,
        query: uri.query(),
        key,
        route,
        headers,
        body,
    });
}

/// The caller's scope: the value of the scope header (`Authorization` unless set
/// otherwise), if any.
pub(crate) fn scope_of(shared: &Shared, headers: &http::HeaderMap) -> Option<Bytes> {
    headers
        .get(&shared.config.scope_header)
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
}

/// A GET (or HEAD) of a resource an operation created: `200` with its stored body, for
/// the same caller only.
pub(crate) fn read_back(
    shared: &Shared,
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
) -> Option<Response<Body>> {
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    let stored = shared.resource(scope_of(shared, headers), path)?;
    let mut response = response::stored(&stored, false);
    *response.status_mut() = StatusCode::OK;
    Some(response)
}

/// What the idempotent decision gives a request with a key.
pub(crate) enum Claim {
    /// The key is new: it is in flight now, for this request to execute.
    Claimed(Arc<ScopedKey>),
    /// The key's stored answer (a replay), or a `409` or `422`: what the request earned.
    Answer(Response<Body>),
    /// The server's own state (its store is full of in-flight keys): no fault spoils it.
    Early(Response<Body>),
}

/// The idempotent decision for a request with a key.
pub(crate) fn claim(shared: &Shared, scoped: ScopedKey, fingerprint: u64) -> Claim {
    match shared.begin(scoped, fingerprint) {
        Begin::Execute(scoped) => Claim::Claimed(scoped),
        Begin::Replay(stored) => Claim::Answer(response::stored(&stored, true)),
        Begin::InFlight => Claim::Answer(problem(
            StatusCode::CONFLICT,
            "Request in progress",
            "a request with this idempotency key is still being processed; retry later",
        )),
        Begin::Mismatch => Claim::Answer(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency key reused",
            "this idempotency key was used for a different request (method, path or body)",
        )),
        Begin::Full => Claim::Early(store_full()),
    }
}

/// The request's fault, if any (`route`: the route that answers it): one acting
/// before processing answers now; one acting after is kept for the answer the request
/// earns.
pub(crate) async fn draw_fault(
    shared: &Shared,
    sabotage: &Sabotage,
    route: Option<&Compiled>,
) -> Step<Option<After>> {
    if let Some(stall) = shared.stalls.draw() {
        tokio::time::sleep(stall).await;
    }
    let fault = shared.next_fault(route);
    // Noted for the request's log line, when there is one.
    if let Some(fault) = fault.as_ref().filter(|_| shared.config.log_requests) {
        sabotage.note_fault(fault.name());
    }
    match fault.map(|fault| fault.phase()) {
        Some(Phase::Before(fault)) => {
            match fault.act(shared.config.retry_after_dates, sabotage).await {
                Some(answer) => Err(answer),
                None => Ok(None),
            }
        }
        Some(Phase::After(fault)) => Ok(Some(fault)),
        None => Ok(None),
    }
}

/// A valid key, or none where the server does not require one.
pub(crate) fn check_key(shared: &Shared, key: Option<Result<Key, String>>) -> Step<Option<Key>> {
    match key {
        Some(Ok(key)) => Ok(Some(key)),
        Some(Err(reason)) => Err(Ok(problem(
            StatusCode::BAD_REQUEST,
            "Invalid idempotency key",
            &reason,
        ))),
        None if shared.config.require_key => {
            let detail = format!(
                "this server requires the {} header",
                shared.config.key_header
            );
            Err(Ok(problem(
                StatusCode::BAD_REQUEST,
                "Idempotency key required",
                &detail,
            )))
        }
        None => Ok(None),
    }
}

/// The whole body, up to `max_body_bytes`.
pub(crate) async fn read_body(shared: &Shared, body: Incoming) -> Step<Bytes> {
    use hyper::body::Body as _;
    let limit = shared.config.max_body_bytes;
    let too_large = || {
        let detail = format!("the body is over {limit} bytes");
        Err(Ok(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Body too large",
            &detail,
        )))
    };
    // A declared length past the limit is refused at once, before a byte of the body
    // is read, so a client that sends without reading gets the 413 rather than a
    // broken pipe. (hyper takes the hint from `Content-Length`; a chunked body has
    // none and stops at the limit below.)
    if body.size_hint().lower() > limit as u64 {
        return too_large();
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => too_large(),
        // The client went away mid-body: nobody to answer.
        Err(_) => Err(Err(Dropped)),
    }
}

/// Runs the operation so that it completes and is stored even if the client
/// disconnects and hyper drops this request's future: inline when there is no
/// processing delay (nothing awaits between the store's decision and its completion,
/// so nothing can cut it short), otherwise in its own task.
pub(crate) async fn execute(
    shared: Arc<Shared>,
    key: Option<Arc<ScopedKey>>,
    at: Resource,
    answer: impl FnOnce(&Shared, u64) -> Performed + Send + 'static,
) -> Step<Arc<Stored>> {
    let performed = if shared.config.processing_delay.is_zero() {
        shared.perform(key.as_deref(), &at, |id| answer(&shared, id))
    } else {
        let task = tokio::spawn(async move {
            tokio::time::sleep(shared.config.processing_delay).await;
            shared.perform(key.as_deref(), &at, |id| answer(&shared, id))
        });
        // A join error means the runtime is shutting down: the connection goes with it.
        task.await.map_err(|_| Err(Dropped))?
    };
    performed.map_err(|failed| Ok(response::stored(&failed, false)))
}

/// The built-in operation: create the resource, `201` with what it echoes, readable
/// at its id.
fn create(path: String, echo: Echo) -> impl FnOnce(&Shared, u64) -> Performed + Send + 'static {
    move |_, id| {
        let stored = Stored {
            status: StatusCode::CREATED,
            headers: Box::default(),
            body: echo.created(id, &path),
        };
        Ok((stored, Some(CreatedId::Number(id))))
    }
}

/// The answer the request earned, spoiled by an *after processing* fault if it has one.
pub(crate) async fn spoil(
    sabotage: &Sabotage,
    after: Option<After>,
    earned: Response<Body>,
) -> Result<Response<Body>, Dropped> {
    match after {
        Some(fault) => fault.spoil(earned, sabotage).await,
        None => Ok(earned),
    }
}

fn store_full() -> Response<Body> {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Key store full",
        "every stored key is still in flight; retry later",
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
