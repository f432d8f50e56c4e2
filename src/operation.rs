//! One operation of the client, checked and ready: what every attempt sends (a copy of
//! the operation's template), what counts as an attempt's answer (the whole response,
//! body included), and the caller's result at the end. The retry engine decides
//! everything in between.

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};

use crate::inner::Inner;
use crate::retry::classify::Outcome;
use crate::retry::engine::Engine;
use crate::retry::retry_after;
use crate::retry::settings::Overrides;
use crate::retry::transport::{Detached, End, Ending, Transport};
use crate::{Error, GiveUpReason, IdempotencyKey, IdempotentClient, IdempotentResponse};

/// A complete response to one attempt: headers and the whole body.
pub(crate) struct Received {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    url: reqwest::Url,
    body: Bytes,
}

impl Received {
    fn into_response(self, key: IdempotencyKey, attempts: u32, hedges: u32) -> IdempotentResponse {
        IdempotentResponse {
            status: self.status,
            version: self.version,
            headers: self.headers,
            url: self.url,
            body: self.body,
            key,
            attempts,
            hedges,
        }
    }
}

/// Why an attempt has no usable answer.
pub(crate) enum Failure {
    /// No complete response: timeout, refused or lost connection, ...
    Transport(reqwest::Error),
    /// A response whose body passed the bound: its head, the body left unread.
    TooLarge(Box<Head>),
}

/// What is kept of an answer too long to read.
pub(crate) struct Head {
    status: StatusCode,
    headers: HeaderMap,
}

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Self {
        Self::Transport(e)
    }
}

/// What one attempt of the client gives back.
pub(crate) type Answer = Result<Received, Failure>;

/// One attempt, from reqwest's pending response: an answer counts only once its last
/// byte arrived, so a connection lost mid-body is a lost response like any other. The
/// request's timeout bounds all of it, and `limit` the body's length.
async fn receive(
    pending: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
    limit: usize,
) -> Answer {
    let mut response = pending.await?;
    let body = match read_body(&mut response, limit).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Err(Failure::TooLarge(Box::new(Head {
                status: response.status(),
                headers: std::mem::take(response.headers_mut()),
            })));
        }
        Err(e) => return Err(e.with_url(response.url().clone()).into()),
    };
    Ok(Received {
        status: response.status(),
        version: response.version(),
        headers: std::mem::take(response.headers_mut()),
        url: response.url().clone(),
        body,
    })
}

/// The whole body, chunk by chunk, or `None` as soon as it is known to be longer than
/// `limit` (from its declared length, before reading, or once the bytes read pass it):
/// memory never holds more than `limit` and a chunk. A body that arrives in one chunk
/// is kept without copying.
async fn read_body(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<Bytes>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| usize::try_from(len).map_or(true, |len| len > limit))
    {
        return Ok(None);
    }
    let Some(first) = response.chunk().await? else {
        return Ok(Some(Bytes::new()));
    };
    if first.len() > limit {
        return Ok(None);
    }
    let Some(second) = response.chunk().await? else {
        return Ok(Some(first));
    };
    if first.len() + second.len() > limit {
        return Ok(None);
    }
    let mut body = BytesMut::with_capacity(first.len() + second.len());
    body.extend_from_slice(&first);
    body.extend_from_slice(&second);
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// What every attempt sends. Each attempt is a fresh request made from it, sharing the
/// body's buffer (never copied, however many attempts).
pub(crate) struct Template {
    /// Method, URL, headers (the key header included) and version; no body.
    request: reqwest::Request,
    body: Option<Bytes>,
}

/// Header slots left free in each attempt's map for the headers reqwest adds itself
/// (`accept`, `user-agent` and any default headers of the client), so that adding them
/// does not reallocate the map.
const ROOM_FOR_CLIENT_HEADERS: usize = 4;

impl Template {
    pub(crate) fn new(request: reqwest::Request, body: Option<Bytes>) -> Self {
        Self { request, body }
    }

    pub(crate) fn method(&self) -> &Method {
        self.request.method()
    }

    pub(crate) fn url(&self) -> &reqwest::Url {
        self.request.url()
    }

    pub(crate) fn headers(&self) -> &HeaderMap {
        self.request.headers()
    }

    pub(crate) fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
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
    /// Whether the key was minted for this operation and never sent before.
    pub(crate) fresh_key: bool,
    /// What the request sets for itself; `None` (the common case) for the client's
    /// settings throughout.
    pub(crate) overrides: Option<Box<Overrides>>,
    pub(crate) timeout: Duration,
}

/// One attempt of `template` through `http` (the client's pool, or its hedges'),
/// bounded by `timeout`: a future that borrows none of its arguments.
fn exchange(
    client: &Inner,
    http: &reqwest::Client,
    template: &Template,
    timeout: Duration,
) -> impl Future<Output = Answer> + Send + use<> {
    let request = template.attempt(timeout, client.http_timeout);
    receive(http.execute(request), client.settings.max_response_bytes)
}

/// The client's side of the engine's contract: send one attempt of the template.
pub(crate) struct Sender<'a> {
    client: &'a Inner,
    template: &'a Template,
}

impl Transport for Sender<'_> {
    type Answer = Answer;

    fn send(&mut self, timeout: Duration) -> impl Future<Output = Answer> + Send {
        exchange(self.client, &self.client.http, self.template, timeout)
    }

    fn detached(&self, timeout: Duration, hedge: bool) -> Option<Detached<Answer>> {
        let client = self.client;
        let http = if hedge {
            client.hedge_pool()
        } else {
            &client.http
        };
        Some(Box::pin(exchange(client, http, self.template, timeout)))
    }

    fn outcome(answer: &Answer) -> Option<Outcome<'_>> {
        Some(match answer {
            Ok(r) => Outcome::Response {
                status: r.status,
                headers: &r.headers,
                url: &r.url,
            },
            Err(Failure::Transport(e)) => Outcome::Error(e),
            Err(Failure::TooLarge(head)) => Outcome::TooLarge {
                status: head.status,
                headers: &head.headers,
            },
        })
    }
}

impl Operation {
    /// Runs the operation through the retry engine and turns its end into the
    /// caller's result.
    #[allow(clippy::manual_async_fn)] // On purpose: see the comment inside.
    pub(crate) fn run(self) -> impl Future<Output = Result<IdempotentResponse, Error>> + Send {
        // An async block rather than an async fn: the fn would hold `self` twice in its
        // state, as its argument and as the block's capture.
        async move {
            let (engine, mut sender) = self.start();
            let ending = engine.run(&mut sender, self.timeout).await;
            self.finish(ending)
        }
    }

    /// The engine for this operation, and the client's transport for its attempts,
    /// for a caller that drives the engine through a transport of its own around it.
    pub(crate) fn start(&self) -> (Engine<'_>, Sender<'_>) {
        let inner = &*self.client.inner;
        let template = &self.template;
        let engine = Engine::new(
            &inner.settings.retry,
            self.overrides.as_deref(),
            template.method(),
            template.url(),
            &self.key,
            self.fresh_key,
            Instant::now(),
        );
        let sender = Sender {
            client: inner,
            template,
        };
        (engine, sender)
    }

    /// The caller's result for how the engine ended this operation.
    pub(crate) fn finish(self, ending: Ending<Answer>) -> Result<IdempotentResponse, Error> {
        finish(
            ending,
            self.key,
            self.client.inner.settings.max_response_bytes,
        )
    }
}

/// The caller's result: a final answer as `Ok`, anything else as [`Error::Failed`].
fn finish(
    ending: Ending<Answer>,
    key: IdempotencyKey,
    max_response_bytes: usize,
) -> Result<IdempotentResponse, Error> {
    let Ending {
        end,
        attempts,
        outcome_unknown,
        hedges,
    } = ending;
    let (reason, last) = match end {
        // The client judges every answer, so nothing is passed on unjudged; and the
        // engine only calls a response final, so `Done` never holds a failure.
        End::Done(Ok(received)) | End::Passed(Ok(received)) => {
            return Ok(received.into_response(key, attempts, hedges));
        }
        End::Done(Err(failure)) | End::Passed(Err(failure)) => {
            (GiveUpReason::NotRetryable, Some(Err(failure)))
        }
        End::GaveUp(reason, last) => (reason, last),
    };
    let (last_response, source) = match last {
        Some(Ok(received)) => (
            Some(Box::new(received.into_response(
                key.clone(),
                attempts,
                hedges,
            ))),
            None,
        ),
        Some(Err(Failure::Transport(e))) => (None, Some(e)),
        Some(Err(Failure::TooLarge(head))) => {
            return Err(Error::ResponseTooLarge {
                key,
                attempts,
                status: head.status,
                headers: Box::new(head.headers),
                limit: max_response_bytes,
            });
        }
        None => (None, None),
    };
    // Counted from now, the error's creation, right after the answer that named it.
    let retry_after = last_response
        .as_ref()
        .and_then(|r| retry_after::wait(r.status, &r.headers));
    let retry_at = retry_after.and_then(|wait| SystemTime::now().checked_add(wait));
    Err(Error::Failed {
        key,
        attempts,
        reason,
        outcome_unknown,
        last_response,
        source,
        retry_after,
        retry_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attempt_shares_the_body_buffer() {
        let payload = Bytes::from(vec![7u8; 1 << 20]);
        let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
        let template = Template::new(
            reqwest::Request::new(Method::POST, url),
            Some(payload.clone()),
        );
        for _ in 0..3 {
            let attempt = template.attempt(Duration::from_secs(1), None);
            let sent = attempt.body().and_then(reqwest::Body::as_bytes).unwrap();
            assert_eq!(sent, &payload[..]);
            assert_eq!(
                sent.as_ptr(),
                payload.as_ptr(),
                "the same buffer, not a copy"
            );
            assert_eq!(attempt.timeout(), Some(&Duration::from_secs(1)));
        }
        let with_client_timeout =
            template.attempt(Duration::from_secs(1), Some(Duration::from_secs(1)));
        assert_eq!(
            with_client_timeout.timeout(),
            None,
            "the client's own timeout applies"
        );
    }

    /// The size of one operation's state as `send()` boxes it.
    fn state_size() -> usize {
        use tracing::Instrument;
        let url = reqwest::Url::parse("http://127.0.0.1:1/").unwrap();
        let request = reqwest::Request::new(Method::POST, url);
        let operation = Operation {
            client: IdempotentClient::new(),
            template: Template::new(request, None),
            key: IdempotencyKey::new_v4(),
            fresh_key: true,
            overrides: None,
            timeout: Duration::from_secs(1),
        };
        std::mem::size_of_val(&operation.run().instrument(tracing::Span::none()))
    }

    /// glibc's malloc serves blocks up to 1,032 bytes from a per-thread cache; past that,
    /// every operation pays its slow path (about 1,300 instructions more per request,
    /// measured in BENCHMARKS.md section 1). `--nocapture` prints the size.
    #[test]
    fn operation_state_fits_a_small_block() {
        let state = state_size();
        println!("operation state: {state} bytes");
        assert!(state <= 1024, "the retry loop's state is {state} bytes");
    }
}
