//! The client's transport: what one attempt sends (a copy of the operation's template)
//! and what counts as its answer (the whole response, body included). The retry engine
//! decides everything else.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, Version};

use crate::retry::classify::Outcome;
use crate::retry::engine::{End, Ending, Engine, Transport};
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

type Answer = Result<Received, reqwest::Error>;

/// One attempt, from reqwest's pending response: an answer counts only once its last
/// byte arrived, so a connection lost mid-body is a lost response like any other. The
/// request's timeout bounds all of it.
async fn receive(
    pending: impl Future<Output = Result<reqwest::Response, reqwest::Error>>,
) -> Answer {
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

/// The whole body, chunk by chunk; a body that arrives in one chunk is kept without
/// copying.
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
    /// A per-request policy; `None` for the client's.
    pub(crate) policy: Option<Box<RetryPolicy>>,
    pub(crate) timeout: Duration,
}

/// The client's side of the engine's contract: send one attempt of the template.
struct Sender<'a> {
    http: &'a reqwest::Client,
    /// The timeout built into `http`, if any.
    http_timeout: Option<Duration>,
    template: &'a Template,
}

impl Transport for Sender<'_> {
    type Answer = Answer;

    fn send(&mut self, timeout: Duration) -> impl Future<Output = Answer> + Send {
        let request = self.template.attempt(timeout, self.http_timeout);
        receive(self.http.execute(request))
    }

    fn outcome(answer: &Answer) -> Option<Outcome<'_>> {
        Some(match answer {
            Ok(r) => Outcome::Response {
                status: r.status,
                headers: &r.headers,
                url: &r.url,
            },
            Err(e) => Outcome::Error(e),
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
            let inner = &*self.client.inner;
            let settings = &inner.settings;
            let policy = self.policy.as_deref().unwrap_or(&settings.policy);
            let mut sender = Sender {
                http: &inner.http,
                http_timeout: inner.http_timeout,
                template: &self.template,
            };
            let template = &self.template;
            let engine = Engine::new(
                settings,
                policy,
                template.method(),
                template.url(),
                &self.key,
                self.fresh_key,
            );
            let ending = engine.run(&mut sender, self.timeout).await;
            finish(ending, self.key)
        }
    }
}

/// The caller's result: a final answer as `Ok`, anything else as [`Error::Failed`].
fn finish(ending: Ending<Answer>, key: IdempotencyKey) -> Result<IdempotentResponse, Error> {
    let Ending {
        end,
        attempts,
        outcome_unknown,
    } = ending;
    let (reason, last) = match end {
        // The client judges every answer, so nothing is passed on unjudged; and the
        // engine only calls a response final, so `Done` never holds an error.
        End::Done(Ok(received)) | End::Passed(Ok(received)) => {
            return Ok(received.into_response(key, attempts));
        }
        End::Done(Err(e)) | End::Passed(Err(e)) => (GiveUpReason::NotRetryable, Err(Some(e))),
        End::GaveUp(reason, last) => (reason, last.map_or(Err(None), |l| l.map_err(Some))),
    };
    let (last_response, source) = match last {
        Ok(received) => (
            Some(Box::new(received.into_response(key.clone(), attempts))),
            None,
        ),
        Err(e) => (None, e),
    };
    Err(Error::Failed {
        key,
        attempts,
        reason,
        outcome_unknown,
        last_response,
        source,
    })
}

/// The size of one operation's state as `send()` boxes it, for the memory benchmark,
/// which keeps it within the allocators' small-block size classes.
pub(crate) fn state_size() -> usize {
    use tracing::Instrument;
    // Cannot fail: a valid literal URL.
    let Ok(url) = reqwest::Url::parse("http://127.0.0.1:1/") else {
        return 0;
    };
    let request = reqwest::Request::new(Method::POST, url);
    let operation = Operation {
        client: IdempotentClient::new(),
        template: Template::new(request, None),
        key: IdempotencyKey::new_v4(),
        fresh_key: true,
        policy: None,
        timeout: Duration::from_secs(1),
    };
    std::mem::size_of_val(&operation.run().instrument(tracing::Span::none()))
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
}
