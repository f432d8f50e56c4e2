//! The loop that ties decision, delay and rate cap together for one operation.

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version, header::RETRY_AFTER};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::classify::{Attempt, Decision, Outcome, default_classifier};
use crate::telemetry;
use crate::{
    Error, GiveUpReason, IdempotencyKey, IdempotentClient, IdempotentResponse, RetryPolicy,
};

/// A complete response to one attempt: headers and the whole body.
struct Received {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    url: reqwest::Url,
    body: Bytes,
}

impl Received {
    fn into_response(self, key: IdempotencyKey, attempts: u32) -> IdempotentResponse {
        IdempotentResponse {
            status: self.status,
            version: self.version,
            headers: self.headers,
            url: self.url,
            body: self.body,
            key,
            attempts,
        }
    }
}

type AttemptResult = Result<Received, reqwest::Error>;

/// One attempt, from reqwest's pending response: an answer counts only once its last
/// byte arrived, so a connection lost mid-body is a lost response like any other. The
/// request's timeout bounds all of it. (Takes the pending response, not the request, so
/// that its future does not keep the request's room for its whole life.)
async fn execute(
    pending: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
) -> AttemptResult {
    let mut response = pending.await?;
    let body = match read_body(&mut response).await {
        Ok(body) => body,
        Err(e) => return Err(e.with_url(response.url().clone())),
    };
    Ok(Received {
        status: response.status(),
        version: response.version(),
        headers: std::mem::take(response.headers_mut()),
        url: response.url().clone(),
        body,
    })
}

/// The whole body. Chunk by chunk rather than `Response::bytes`, whose future is about
/// 1 KiB: it would sit in every operation's state and push it past the allocator's
/// small-object cache. A body that arrives in one chunk is kept without copying.
async fn read_body(response: &mut reqwest::Response) -> Result<Bytes, reqwest::Error> {
    let Some(first) = response.chunk().await? else {
        return Ok(Bytes::new());
    };
    let Some(second) = response.chunk().await? else {
        return Ok(first);
    };
    let mut body = BytesMut::with_capacity(first.len() + second.len());
    body.extend_from_slice(&first);
    body.extend_from_slice(&second);
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// What every attempt sends. Each attempt is put together from these pieces rather
/// than with `reqwest::Request::try_clone`, for two reasons found by profiling: a cloned
/// header map has no spare room, so the default headers reqwest adds to every request
/// made it reallocate; and `try_clone` allocates an extension map only to replace it.
pub(crate) struct Template {
    /// Method, URL, headers (the key header included) and version; no body.
    request: reqwest::Request,
    /// The body, shared by every attempt without copying.
    body: Option<Bytes>,
}

/// Header slots left free in each attempt's map for the headers reqwest adds itself
/// (`accept`, `user-agent` and any default headers of the client).
const ROOM_FOR_CLIENT_HEADERS: usize = 4;

impl Template {
    /// `None` if the body is a stream, which cannot be sent twice.
    pub(crate) fn new(mut request: reqwest::Request) -> Option<Self> {
        let body = match request.body_mut().take() {
            Some(body) => Some(Bytes::copy_from_slice(body.as_bytes()?)),
            None => None,
        };
        Some(Self { request, body })
    }

    pub(crate) fn method(&self) -> &Method {
        self.request.method()
    }

    pub(crate) fn url(&self) -> &reqwest::Url {
        self.request.url()
    }

    /// A fresh copy for one attempt, bounded by `timeout`. `client_timeout` is the one
    /// the reqwest client applies to requests that set none.
    fn attempt(&self, timeout: Duration, client_timeout: Option<Duration>) -> reqwest::Request {
        let template = &self.request;
        let mut request = reqwest::Request::new(template.method().clone(), template.url().clone());
        let headers = request.headers_mut();
        headers.reserve(template.headers().len() + ROOM_FOR_CLIENT_HEADERS);
        for (name, value) in template.headers() {
            headers.append(name.clone(), value.clone());
        }
        *request.version_mut() = template.version();
        *request.body_mut() = self.body.clone().map(reqwest::Body::from);
        if client_timeout != Some(timeout) {
            *request.timeout_mut() = Some(timeout);
        }
        request
    }
}

/// One operation, checked and ready: `send` has validated everything in it.
pub(crate) struct Operation {
    pub(crate) client: IdempotentClient,
    pub(crate) template: Template,
    pub(crate) key: IdempotencyKey,
    /// A per-request policy; `None` for the client's.
    pub(crate) policy: Option<Box<RetryPolicy>>,
    pub(crate) timeout: Duration,
}

impl Operation {
    /// Makes attempts until one gets a final response or the policy, deadline or budget
    /// says stop.
    ///
    /// Fields are used in place rather than moved into locals, and what only retries
    /// need (the schedule, the previous outcome, the sleep) is boxed when first needed:
    /// this future is allocated once per operation and is smallest that way.
    #[allow(clippy::manual_async_fn)] // On purpose: see the comment inside.
    pub(crate) fn run(self) -> impl Future<Output = Result<IdempotentResponse, Error>> + Send {
        // An async block rather than an async fn: the fn would move `self` into a second
        // copy of itself inside its state; the block uses the captured one in place.
        async move {
            let inner = &*self.client.inner;
            let policy = self.policy.as_deref().unwrap_or(&inner.policy);
            let deadline = Instant::now().checked_add(policy.deadline);
            let mut backoff: Option<Box<Backoff>> = None;
            let mut attempts: u32 = 0;
            let mut outcome_unknown = false;
            // The previous attempt's outcome and error class, kept across the sleep.
            let mut last: Option<Box<(AttemptResult, Option<telemetry::ErrorType>)>> = None;
            debug!("idempotency.key" = %self.key, "sending");

            loop {
                let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                let attempt_timeout = remaining.map_or(self.timeout, |r| r.min(self.timeout));
                if let (Some(previous), true) = (last.take(), attempt_timeout.is_zero()) {
                    // The sleep was checked against the deadline, but timers may overshoot.
                    let (previous, error_type) = *previous;
                    let reason = GiveUpReason::DeadlineExceeded;
                    let status = previous.as_ref().ok().map(|r| r.status);
                    telemetry::record_end(attempts, status, error_type);
                    warn!(
                        attempts,
                        "http.request.resend_count" = attempts - 1,
                        "error.type" = error_type.map(tracing::field::display),
                        %reason,
                        outcome_unknown,
                        "giving up"
                    );
                    return Err(give_up(
                        self.key,
                        attempts,
                        reason,
                        outcome_unknown,
                        previous,
                    ));
                }
                // A block, so that nothing of this attempt is kept across the sleep.
                let delay = {
                    let request = self.template.attempt(attempt_timeout, inner.http_timeout);
                    let result = execute(inner.http.execute(request)).await;
                    attempts += 1;

                    let attempt = Attempt {
                        method: self.template.method(),
                        key: &self.key,
                        number: attempts,
                        outcome: match &result {
                            Ok(r) => Outcome::Response {
                                status: r.status,
                                headers: &r.headers,
                            },
                            Err(e) => Outcome::Error(e),
                        },
                    };
                    let decision = match &inner.classifier {
                        Some(classifier) => classifier.classify(&attempt),
                        None => default_classifier(&attempt),
                    };
                    let error_type = telemetry::error_type(&attempt);
                    let status = attempt.status();
                    debug!(
                        attempt = attempts,
                        "http.request.resend_count" = attempts - 1,
                        "http.response.status_code" = status.map(|s| s.as_u16()),
                        "error.type" = error_type.map(tracing::field::display),
                        error = attempt.error().map(tracing::field::display),
                        "idempotency.key" = %self.key,
                        ?decision,
                        "attempt finished"
                    );
                    let executed = attempt.may_have_executed();
                    let timed_out = attempt.is_timeout();

                    outcome_unknown |= executed;
                    if decision == Decision::Final {
                        if let Ok(received) = result {
                            inner.budget.deposit();
                            telemetry::record_end(attempts, status, error_type);
                            return Ok(received.into_response(self.key, attempts));
                        }
                    }

                    // Advance the schedule on every retry, even when Retry-After overrides it, so
                    // the n-th retry always draws the n-th delay.
                    let backoff_delay = backoff
                        .get_or_insert_with(|| Box::new(Backoff::new(policy)))
                        .next_delay();
                    let delay = match result
                        .as_ref()
                        .ok()
                        .and_then(|r| r.headers.get(RETRY_AFTER))
                    {
                        Some(value) => crate::retry_after::parse(value, SystemTime::now())
                            .map_or(backoff_delay, |hint| hint.min(policy.max_retry_after)),
                        None => backoff_delay,
                    };
                    let stop = if decision == Decision::Final {
                        Some(GiveUpReason::NotRetryable)
                    } else if attempts >= policy.max_attempts {
                        Some(GiveUpReason::AttemptsExhausted)
                    } else if deadline.is_some_and(|d| {
                        Instant::now().checked_add(delay).is_none_or(|end| end >= d)
                    }) {
                        Some(GiveUpReason::DeadlineExceeded)
                    } else if !inner.budget.try_withdraw(timed_out) {
                        Some(GiveUpReason::BudgetExhausted)
                    } else {
                        None
                    };
                    if let Some(reason) = stop {
                        telemetry::record_end(attempts, status, error_type);
                        // Fields, not the error's Display: that names the key, which stays at debug.
                        warn!(
                            attempts,
                            "http.request.resend_count" = attempts - 1,
                            "error.type" = error_type.map(tracing::field::display),
                            %reason,
                            outcome_unknown,
                            "giving up"
                        );
                        return Err(give_up(self.key, attempts, reason, outcome_unknown, result));
                    }

                    if let Some(hook) = &inner.on_retry {
                        hook(&attempt, delay);
                    }
                    info!(
                        attempt = attempts,
                        "http.request.resend_count" = attempts - 1,
                        "http.response.status_code" = status.map(|s| s.as_u16()),
                        "error.type" = error_type.map(tracing::field::display),
                        error = attempt.error().map(tracing::field::display),
                        delay_ms = delay.as_millis() as u64,
                        "retrying"
                    );
                    last = Some(Box::new((result, error_type)));
                    delay
                };
                Box::pin(tokio::time::sleep(delay)).await;
            }
        }
    }
}

fn give_up(
    key: IdempotencyKey,
    attempts: u32,
    reason: GiveUpReason,
    outcome_unknown: bool,
    last: AttemptResult,
) -> Error {
    let (last_response, source) = match last {
        Ok(received) => (
            Some(Box::new(received.into_response(key.clone(), attempts))),
            None,
        ),
        Err(e) => (None, Some(e)),
    };
    Error::Failed {
        key,
        attempts,
        reason,
        outcome_unknown,
        last_response,
        source,
    }
}
