//! The answers the mock server builds: stored results, problem details, JSON, and the
//! dropped connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use serde_json::{Value, json};

use super::store::Stored;

/// `code` as a final HTTP status (200..=999), the only kind an answer may carry.
pub(crate) fn final_status(code: u16) -> Option<StatusCode> {
    StatusCode::from_u16(code)
        .ok()
        .filter(|s| s.as_u16() >= 200)
}

/// An answer's body: whole, or cut short by a fault (the bytes sent, then an error
/// that makes hyper close the connection before the declared length is reached).
#[derive(Debug)]
pub(crate) struct Body {
    data: Option<Bytes>,
    cut: bool,
    /// For a cut body: whether hyper has been made to flush what it has.
    flushed: bool,
    /// Bytes of filler still to stream (a route's `stream_body`).
    filler: u64,
}

/// The chunk a streamed body is sent in: static, so streaming allocates nothing.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl Body {
    /// The whole body.
    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
            cut: false,
            flushed: false,
            filler: 0,
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Dropped;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Dropped>>> {
        let this = self.get_mut();
        Poll::Ready(match this.data.take() {
            Some(data) => Some(Ok(Frame::data(data))),
            None if this.filler > 0 => {
                let n = usize::try_from(this.filler).map_or(FILLER.len(), |n| n.min(FILLER.len()));
                this.filler -= n as u64;
                Some(Ok(Frame::data(Bytes::from_static(&FILLER[..n]))))
            }
            None if this.cut && !this.flushed => {
                // hyper buffers the head and the first bytes, and an error now would
                // discard them: waiting once makes it flush them to the socket first.
                this.flushed = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None if this.cut => {
                this.cut = false;
                Some(Err(Dropped))
            }
            None => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.cut && self.filler == 0
    }

    fn size_hint(&self) -> SizeHint {
        match &self.data {
            // A cut body's length is the declared one, in its header; a streamed one
            // is not told (chunked).
            _ if self.cut || self.filler > 0 => SizeHint::default(),
            Some(data) => SizeHint::with_exact(data.len() as u64),
            None => SizeHint::with_exact(0),
        }
    }
}

/// `earned` with its body cut in the middle: the head declares the whole length, about
/// half of it is sent, then the connection closes.
pub(crate) fn truncated(earned: Response<Body>) -> Response<Body> {
    let (mut parts, body) = earned.into_parts();
    let whole = body.data.unwrap_or_default();
    // Even an empty answer is declared one byte long, so that something is missing.
    let declared = whole.len().max(1);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(declared));
    let sent = whole.slice(..whole.len() / 2);
    Response::from_parts(
        parts,
        Body {
            data: (!sent.is_empty()).then_some(sent),
            cut: true,
            flushed: false,
            filler: 0,
        },
    )
}

/// The header that marks an answer sent again from the store.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// Returned by the handler to make hyper close the connection without an answer.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Dropped {}

/// A stored result, as first sent or as a replay (`Idempotent-Replayed: true`).
pub(crate) fn stored(stored: &Stored, replayed: bool) -> Response<Body> {
    let mut response = Response::new(Body::full(stored.body.clone()));
    *response.status_mut() = stored.status;
    let headers = response.headers_mut();
    if stored.headers.is_empty() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    for (name, value) in &stored.headers {
        headers.append(name.clone(), value.clone());
    }
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// `stored`'s status and headers with `bytes` bytes of filler as the body, streamed
/// without a declared length.
pub(crate) fn streamed(stored: &Stored, bytes: u64) -> Response<Body> {
    let mut response = self::stored(stored, false);
    *response.body_mut() = Body {
        data: None,
        cut: false,
        flushed: false,
        filler: bytes,
    };
    response
}

/// The body of an RFC 9457 `application/problem+json` answer.
pub(crate) fn problem_body(status: StatusCode, title: &str, detail: &str) -> Bytes {
    let body = json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail });
    Bytes::from(body.to_string())
}

/// An RFC 9457 `application/problem+json` answer.
pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let mut response = Response::new(Body::full(problem_body(status, title, detail)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

pub(crate) fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
