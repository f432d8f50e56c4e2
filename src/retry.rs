//! The loop that ties decision, delay and rate cap together for one operation.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::Body as _;
use tracing::debug;

use crate::attempts::{Attempts, Next};
use crate::classify::Outcome;
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
            Some(body) => Some(body_bytes(body)?),
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

/// The bytes of an in-memory body, not copied (a body of megabytes stays one buffer
/// however many attempts send it); `None` for a stream, which cannot be sent twice.
fn body_bytes(mut body: reqwest::Body) -> Option<Bytes> {
    body.as_bytes()?;
    // reqwest has no accessor that hands over an in-memory body's `Bytes`. Polling the
    // body does, and an in-memory body is always ready, so a no-op waker is enough.
    let mut cx = Context::from_waker(Waker::noop());
    let mut bytes = Bytes::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return Some(bytes),
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                bytes = if bytes.is_empty() {
                    data
                } else {
                    // Not what reqwest does today (one frame); joined, should it change.
                    [bytes, data].concat().into()
                };
            }
            // Neither can happen to an in-memory body; refusing beats losing bytes.
            Poll::Ready(Some(Err(_))) | Poll::Pending => return None,
        }
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
            let settings = &inner.settings;
            let policy = self.policy.as_deref().unwrap_or(&settings.policy);
            let mut attempts = Attempts::new(settings, policy);
            // The previous attempt's outcome, kept across the sleep.
            let mut last: Option<Box<AttemptResult>> = None;
            debug!("idempotency.key" = %self.key, "sending");

            loop {
                let Some(timeout) = attempts.next_timeout(self.timeout) else {
                    let reason = GiveUpReason::DeadlineExceeded;
                    // `next_timeout` only says `None` after a first attempt.
                    let previous = last.map_or_else(|| Err(None), |l| (*l).map_err(Some));
                    return Err(give_up(self.key, &attempts, reason, previous));
                };
                // A block, so that nothing of this attempt is kept across the sleep.
                let delay = {
                    let request = self.template.attempt(timeout, inner.http_timeout);
                    let result = execute(inner.http.execute(request)).await;
                    let outcome = match &result {
                        Ok(r) => Outcome::Response {
                            status: r.status,
                            headers: &r.headers,
                        },
                        Err(e) => Outcome::Error(e),
                    };
                    match attempts.after(self.template.method(), &self.key, outcome) {
                        // `Done` only comes with a response; were it an error, it
                        // would end the operation as one that is not retried.
                        Next::Done => {
                            let reason = GiveUpReason::NotRetryable;
                            return match result {
                                Ok(received) => {
                                    Ok(received.into_response(self.key, attempts.made()))
                                }
                                Err(e) => Err(give_up(self.key, &attempts, reason, Err(Some(e)))),
                            };
                        }
                        Next::GiveUp(reason) => {
                            return Err(give_up(self.key, &attempts, reason, result.map_err(Some)));
                        }
                        Next::Retry(delay) => {
                            last = Some(Box::new(result));
                            delay
                        }
                    }
                };
                Box::pin(tokio::time::sleep(delay)).await;
            }
        }
    }
}

fn give_up(
    key: IdempotencyKey,
    attempts: &Attempts<'_>,
    reason: GiveUpReason,
    last: Result<Received, Option<reqwest::Error>>,
) -> Error {
    let made = attempts.made();
    let (last_response, source) = match last {
        Ok(received) => (
            Some(Box::new(received.into_response(key.clone(), made))),
            None,
        ),
        Err(e) => (None, e),
    };
    Error::Failed {
        key,
        attempts: made,
        reason,
        outcome_unknown: attempts.outcome_unknown(),
        last_response,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Instrument;

    #[test]
    fn in_memory_bodies_are_taken_without_a_copy_and_streams_refused() {
        let payload = Bytes::from(vec![7u8; 1 << 20]);
        let taken = body_bytes(reqwest::Body::from(payload.clone())).unwrap();
        assert_eq!(taken, payload);
        assert_eq!(
            taken.as_ptr(),
            payload.as_ptr(),
            "the same buffer, not a copy"
        );
        assert_eq!(body_bytes(reqwest::Body::from("")), Some(Bytes::new()));
        assert_eq!(
            body_bytes(reqwest::Body::wrap(String::from("a stream"))),
            None
        );
    }

    #[test]
    fn the_boxed_state_stays_in_the_allocators_fast_path() {
        // glibc serves blocks of up to 1,032 bytes from a per-thread cache; this state,
        // boxed once per operation, cost ~1,300 instructions more when it was 2,816
        // bytes (BENCHMARKS.md, section 1). Keep it under the line.
        let request = reqwest::Request::new(Method::POST, "http://127.0.0.1:1/".parse().unwrap());
        let operation = Operation {
            client: IdempotentClient::new(),
            template: Template::new(request).unwrap(),
            key: IdempotencyKey::new_v4(),
            policy: None,
            timeout: Duration::from_secs(1),
        };
        let state = operation.run().instrument(tracing::Span::none());
        let size = std::mem::size_of_val(&state);
        assert!(size <= 1024, "the retry loop's state is {size} bytes");
    }
}
