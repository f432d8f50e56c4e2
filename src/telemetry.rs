//! What the client tells `tracing`, in the OpenTelemetry HTTP semantic conventions' terms
//! where they have one (`http.request.method`, `url.full`, `server.address`,
//! `server.port`, `http.response.status_code`, `http.request.resend_count`,
//! `error.type`), so that an OpenTelemetry layer exports
//! them under the names dashboards expect.
//!
//! Levels: the operation's span is `info`; each attempt's outcome is a `debug` event, each
//! retry an `info` event, giving up a `warn` event. The key is a secret-like value (a
//! guessed key can read another caller's stored response on a server that does not
//! scope keys), so `idempotency.key` appears only on `debug` events, unless the client
//! was built with `log_keys(true)`. Everything has the one target [`TARGET`].

use std::fmt;

/// The one `tracing` target of everything the client reports (events and spans), not
/// its module paths: filter with `RUST_LOG=idempotent_retry=debug` or
/// `Targets::new().with_target("idempotent_retry", Level::DEBUG)`.
pub const TARGET: &str = "idempotent_retry";

use http::{Method, StatusCode};
use tracing::field::Empty;

use crate::retry::classify::{Attempt, Lost, Outcome, lost};

/// The span of one operation, all of its attempts inside it. `http.response.status_code`,
/// `http.request.resend_count` and `error.type` are recorded when it ends.
pub(crate) fn operation_span(method: &Method, url: &reqwest::Url) -> tracing::Span {
    tracing::info_span!(target: TARGET,
        "idempotent_request",
        "http.request.method" = %method,
        // reqwest has already moved any `user:password@` of the URL into an
        // `Authorization` header (never logged), as the conventions require of `url.full`.
        "url.full" = %url,
        "server.address" = url.host_str(),
        "server.port" = url.port_or_known_default(),
        "http.response.status_code" = Empty,
        "http.request.resend_count" = Empty,
        "error.type" = Empty,
        // `true` when the final answer was a stored one sent again.
        "idempotency.replayed" = Empty,
        // Only with `IdempotentClientBuilder::log_keys(true)`.
        "idempotency.key" = Empty,
        // The caller's operation id, for a journalled send (fresh or resumed).
        operation_id = Empty,
    )
}

/// The innermost cause of an error, which says what happened ("Connection refused (os
/// error 111)", "operation timed out") where the outer ones only say where ("error
/// sending request for url …").
pub(crate) fn innermost<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> &'e (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause
}

/// Records how the operation ended on its span, which is the current one (the retry
/// loop runs inside it): the last attempt's status, if it got one, how many times the
/// request was sent again, the error class, if any, and whether the final answer's
/// `headers` mark it as replayed.
pub(crate) fn record_end(
    attempts: u32,
    status: Option<StatusCode>,
    error: Option<ErrorType>,
    headers: Option<&http::HeaderMap>,
) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if headers.is_some_and(crate::response::is_replayed) {
        span.record("idempotency.replayed", true);
    }
    if let Some(status) = status {
        span.record("http.response.status_code", status.as_u16());
    }
    if attempts > 1 {
        span.record("http.request.resend_count", attempts - 1);
    }
    if let Some(error) = error {
        span.record("error.type", tracing::field::display(error));
    }
}

/// The `error.type` of one attempt's outcome, low-cardinality as the conventions ask: the
/// status code for a 4xx or 5xx answer; for a transport error `timeout`, `connect`,
/// `connection_closed` (reset or closed before the response was complete),
/// `malformed_response` (what came back was not HTTP), `redirect`, `body`,
/// `response_too_large`, or `_OTHER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorType {
    Status(StatusCode),
    Transport(Transport),
}

/// The classes of an attempt that got no usable answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Timeout,
    Connect,
    ConnectionClosed,
    MalformedResponse,
    Redirect,
    Body,
    ResponseTooLarge,
    Other,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::ConnectionClosed => "connection_closed",
            Self::MalformedResponse => "malformed_response",
            Self::Redirect => "redirect",
            Self::Body => "body",
            Self::ResponseTooLarge => "response_too_large",
            Self::Other => "_OTHER",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => f.write_str(status.as_str()),
            Self::Transport(kind) => f.write_str(kind.as_str()),
        }
    }
}

/// The error class of one attempt's outcome; `None` for a 1xx–3xx answer.
pub(crate) fn error_type(attempt: &Attempt<'_>) -> Option<ErrorType> {
    match attempt.outcome {
        Outcome::Response { status, .. } => (status.is_client_error() || status.is_server_error())
            .then_some(ErrorType::Status(status)),
        Outcome::Error(e) => Some(ErrorType::Transport(transport_error_type(e))),
        Outcome::TooLarge { .. } => Some(ErrorType::Transport(Transport::ResponseTooLarge)),
    }
}

fn transport_error_type(error: &reqwest::Error) -> Transport {
    match lost(error) {
        Some(Lost::Timeout) => Transport::Timeout,
        Some(Lost::Connect) => Transport::Connect,
        Some(Lost::Closed) => Transport::ConnectionClosed,
        Some(Lost::Malformed) => Transport::MalformedResponse,
        None if error.is_redirect() => Transport::Redirect,
        None if error.is_body() || error.is_decode() => Transport::Body,
        None => Transport::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdempotencyKey;
    use http::HeaderMap;

    #[test]
    fn error_type_of_answers_is_the_status_for_4xx_and_5xx_only() {
        let headers = HeaderMap::new();
        let key = IdempotencyKey::new_v4();
        let url: reqwest::Url = "http://127.0.0.1:1/".parse().unwrap();
        let of = |code: u16| {
            error_type(&Attempt {
                method: &Method::POST,
                url: &url,
                key: &key,
                number: 1,
                outcome: Outcome::Response {
                    status: StatusCode::from_u16(code).unwrap(),
                    headers: &headers,
                    url: &url,
                },
                retry_after: None,
                should_retry: None,
            })
        };
        let text = |code| of(code).map(|e| e.to_string());
        assert_eq!(text(201), None);
        assert_eq!(text(302), None);
        assert_eq!(text(404).as_deref(), Some("404"));
        assert_eq!(text(503).as_deref(), Some("503"));
    }
}
