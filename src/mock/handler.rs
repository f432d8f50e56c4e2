//! One request to the mock server, as named steps: route, log, fault before, key, body,
//! the idempotent decision, the operation, fault after.

// A step's early answer is a whole response, moved once per request to hyper, which
// takes it by value: boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::admin;
use super::fault::{After, Phase};
use super::response::{self, Body, Dropped, problem};
use super::shared::Shared;
use super::store::{Begin, ScopedKey, Stored};
use super::wire::{Echo, decode_key, echo_body, fingerprint};
use crate::IdempotencyKey;

/// What a step gives the next one, or the answer that ends the request early.
type Step<T> = Result<T, Result<Response<Body>, Dropped>>;

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let path = request.uri().path().to_owned();
    if let Some(admin_path) = path.strip_prefix("/__admin/") {
        return Ok(admin::handle(&shared, admin_path, request).await);
    }
    let method = request.method().clone();
    if method != Method::POST && method != Method::PATCH {
        return Ok(problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "the mock server executes POST and PATCH; other methods have nothing to do",
        ));
    }
    match operation(&shared, method, path, request).await {
        Ok(answer) | Err(answer) => answer,
    }
}

/// A POST or PATCH: everything after routing.
async fn operation(
    shared: &Arc<Shared>,
    method: Method,
    path: String,
    request: Request<Incoming>,
) -> Step<Result<Response<Body>, Dropped>> {
    let (parts, body) = request.into_parts();
    let key = read_key(shared, &method, &path, &parts);
    let after = match shared.next_fault().map(|fault| fault.phase()) {
        Some(Phase::Before(fault)) => return Err(fault.answer(shared.config.retry_after_dates)),
        Some(Phase::After(fault)) => Some(fault),
        None => None,
    };
    let key = check_key(shared, key)?;
    let body = read_body(shared, body).await?;
    let echo = echo_body(&parts.headers, &body)
        .map_err(|detail| Ok(problem(StatusCode::BAD_REQUEST, "Invalid body", &detail)))?;

    let Some(key) = key else {
        let stored = execute(shared.clone(), None, path, echo).await?;
        return Ok(spoil(after, response::stored(&stored, false)).await);
    };
    let scoped = ScopedKey {
        scope: parts
            .headers
            .get(AUTHORIZATION)
            .map(|v| Bytes::copy_from_slice(v.as_bytes())),
        key: key.into_boxed_str(),
    };
    let earned = match shared.begin(scoped, fingerprint(&method, &path, &body)) {
        Begin::Execute(scoped) => {
            let stored = execute(shared.clone(), Some(scoped), path, echo).await?;
            response::stored(&stored, false)
        }
        Begin::Replay(stored) => response::stored(&stored, true),
        Begin::InFlight => problem(
            StatusCode::CONFLICT,
            "Request in progress",
            "a request with this idempotency key is still being processed; retry later",
        ),
        Begin::Mismatch => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency key reused",
            "this idempotency key was used for a different request (method, path or body)",
        ),
        // The server's own state, not the request's answer: no fault spoils it.
        Begin::Full => return Err(Ok(store_full())),
    };
    Ok(spoil(after, earned).await)
}

/// The key as sent, decoded, after counting and logging the request.
fn read_key(
    shared: &Shared,
    method: &Method,
    path: &str,
    parts: &Parts,
) -> Option<Result<IdempotencyKey, String>> {
    let raw = parts.headers.get(&shared.config.key_header);
    let key = raw.map(decode_key);
    shared.record(method, path, || match (&key, raw) {
        (Some(Ok(k)), _) => Some(k.as_str().to_owned()),
        (_, Some(raw)) => Some(String::from_utf8_lossy(raw.as_bytes()).into_owned()),
        (_, None) => None,
    });
    key
}

/// A valid key, or none where the server does not require one.
fn check_key(
    shared: &Shared,
    key: Option<Result<IdempotencyKey, String>>,
) -> Step<Option<IdempotencyKey>> {
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
async fn read_body(shared: &Shared, body: Incoming) -> Step<Bytes> {
    let limit = shared.config.max_body_bytes;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let detail = format!("the body is over {limit} bytes");
            Err(Ok(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                &detail,
            )))
        }
        // The client went away mid-body: nobody to answer.
        Err(_) => Err(Err(Dropped)),
    }
}

/// Runs the operation so that it completes and is stored even if the client
/// disconnects and hyper drops this request's future: inline when there is no
/// processing delay (nothing awaits between the store's decision and its completion,
/// so nothing can cut it short), otherwise in its own task.
async fn execute(
    shared: Arc<Shared>,
    key: Option<Arc<ScopedKey>>,
    path: String,
    echo: Echo,
) -> Step<Arc<Stored>> {
    if shared.config.processing_delay.is_zero() {
        return Ok(create(&shared, key.as_deref(), &path, &echo));
    }
    let task = tokio::spawn(async move {
        tokio::time::sleep(shared.config.processing_delay).await;
        create(&shared, key.as_deref(), &path, &echo)
    });
    // A join error means the runtime is shutting down: the connection goes with it.
    task.await.map_err(|_| Err(Dropped))
}

/// The operation: create the resource, `201` with what it echoes.
fn create(shared: &Shared, key: Option<&ScopedKey>, path: &str, echo: &Echo) -> Arc<Stored> {
    shared.perform(key, |id| Stored {
        status: StatusCode::CREATED,
        body: echo.created(id, path),
    })
}

/// The answer the request earned, spoiled by an *after processing* fault if it has one.
async fn spoil(after: Option<After>, earned: Response<Body>) -> Result<Response<Body>, Dropped> {
    match after {
        Some(fault) => fault.spoil(earned).await,
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
