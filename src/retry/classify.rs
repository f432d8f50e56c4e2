//! The *decision*: is the outcome of one attempt worth another attempt?

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};

use crate::IdempotencyKey;

/// What to do with the outcome of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// Try again with the same key, if the policy, deadline and budget allow.
    Retry,
    /// Stop here: a response goes back to the caller as `Ok`, an error as `Err`.
    Final,
    /// Stop here, but this answer is about the caller, not the operation's outcome (a
    /// credential refused, a misconfigured base URL's 404), and an earlier attempt may
    /// have executed it. `send()` returns an error that keeps the answer
    /// ([`Error::last_response`](crate::Error::last_response)) and says the operation
    /// may have executed; a journalled operation is not completed with it but stays
    /// open, needing a person's attention, with the answer attached. (The journal
    /// already treats a resumed send's 401 and 403 so.)
    Unresolved,
}

/// The outcome of one attempt, as seen by a
/// [`classifier`](crate::IdempotentClientBuilder::classifier) and by the
/// [`on_retry`](crate::IdempotentClientBuilder::on_retry) hook.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub(crate) method: &'a Method,
    /// The URL the caller gave, before any redirect.
    pub(crate) url: &'a reqwest::Url,
    pub(crate) key: &'a IdempotencyKey,
    pub(crate) number: u32,
    pub(crate) outcome: Outcome<'a>,
    /// The answer's valid `Retry-After`, as a wait from its arrival.
    pub(crate) retry_after: Option<Duration>,
    /// The server's own say on retrying (`Stripe-Should-Retry` by default), read on
    /// non-2xx answers only.
    pub(crate) should_retry: Option<bool>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome<'a> {
    Response {
        status: StatusCode,
        headers: &'a HeaderMap,
        /// The URL that answered: another one than the caller's after a redirect.
        url: &'a reqwest::Url,
    },
    Error(&'a reqwest::Error),
    /// An answer whose body is longer than the client reads: it ends the operation,
    /// never retried.
    TooLarge {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
}

impl<'a> Attempt<'a> {
    /// The request's method.
    #[must_use]
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The operation's key, the same on every attempt.
    #[must_use]
    pub fn idempotency_key(&self) -> &'a IdempotencyKey {
        self.key
    }

    /// Which attempt this was, starting at 1.
    #[must_use]
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The response status, when a complete response arrived.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self.outcome {
            Outcome::Response { status, .. } | Outcome::TooLarge { status, .. } => Some(status),
            Outcome::Error(_) => None,
        }
    }

    /// The response headers, when a complete response arrived.
    #[must_use]
    pub fn headers(&self) -> Option<&'a HeaderMap> {
        match self.outcome {
            Outcome::Response { headers, .. } | Outcome::TooLarge { headers, .. } => Some(headers),
            Outcome::Error(_) => None,
        }
    }

    /// The transport error, when no complete response arrived (timeout, refused
    /// connection, connection reset or closed mid-response, ...).
    #[must_use]
    pub fn error(&self) -> Option<&'a reqwest::Error> {
        match self.outcome {
            Outcome::Error(e) => Some(e),
            Outcome::Response { .. } | Outcome::TooLarge { .. } => None,
        }
    }

    /// The wait the answer's `Retry-After` asks for, when it has a valid one (seconds,
    /// or an HTTP-date read against the answer's `Date`).
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The server's own say on retrying this answer: the `Stripe-Should-Retry` field
    /// (or the one [`should_retry_header`] names) of a non-2xx answer, when it is
    /// `true` or `false`. The default classifier follows it over the status.
    ///
    /// [`should_retry_header`]: crate::IdempotentClientBuilder::should_retry_header
    #[must_use]
    pub fn should_retry_hint(&self) -> Option<bool> {
        self.should_retry
    }

    /// Whether the answer is *throttling*: a `429`, a `503` with a valid
    /// `Retry-After`, or a `409` (the key is still in flight, our own concurrency,
    /// priced the same). Other retryable outcomes are *transient*.
    #[must_use]
    pub fn is_throttling(&self) -> bool {
        match self.status() {
            Some(StatusCode::TOO_MANY_REQUESTS | StatusCode::CONFLICT) => true,
            Some(StatusCode::SERVICE_UNAVAILABLE) => self.retry_after.is_some(),
            _ => false,
        }
    }

    /// Whether the attempt ran out of time.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.error().is_some_and(reqwest::Error::is_timeout)
    }

    /// Whether this attempt may have executed on the server. Not executed is said only
    /// of a connection that was never made (no byte of the request sent: refused, DNS,
    /// TLS handshake) and of a 408 or 429 from the caller's URL itself. Any other answer,
    /// retried or final, any later error, and anything after a redirect (the first
    /// request was answered, and may have run, before the redirect was followed) may
    /// have executed.
    pub(crate) fn may_have_executed(&self) -> bool {
        match self.outcome {
            Outcome::Response { status, url, .. } => {
                url != self.url
                    || !matches!(
                        status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    )
            }
            Outcome::Error(e) => e.url().is_some_and(|u| u != self.url) || !e.is_connect(),
            Outcome::TooLarge { .. } => true,
        }
    }
}

/// The crate's own decision: the server's own say first
/// ([`Attempt::should_retry_hint`], on non-2xx answers), then a status for which
/// [`is_retryable_status`] holds and an error for which [`is_retryable_error`] holds
/// are retried; everything else is final. A
/// classifier of your own
/// ([`IdempotentClientBuilder::classifier`](crate::IdempotentClientBuilder::classifier))
/// falls back to it for what it does not change.
#[must_use]
pub fn default_classifier(attempt: &Attempt<'_>) -> Decision {
    let retry = match attempt.outcome {
        Outcome::Response { status, .. } => attempt
            .should_retry
            .unwrap_or_else(|| is_retryable_status(status)),
        Outcome::Error(e) => is_retryable_error(e),
        Outcome::TooLarge { .. } => false,
    };
    if retry {
        Decision::Retry
    } else {
        Decision::Final
    }
}

/// 408, 409 (same key still in flight), 429, 500, 502, 503 and 504.
///
/// ```
/// use http::StatusCode;
/// use idempotent_retry::is_retryable_status;
/// assert!(is_retryable_status(StatusCode::SERVICE_UNAVAILABLE));
/// assert!(!is_retryable_status(StatusCode::UNPROCESSABLE_ENTITY));
/// ```
#[must_use]
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::CONFLICT
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether a transport error is worth retrying: a timeout, a failed connect, a
/// connection that was reset or closed before the response was complete, or an answer
/// that is not HTTP (bytes no HTTP parser accepts: nothing usable arrived, exactly as if
/// the connection had closed).
///
/// Walks the whole `source()` chain and looks at types (`reqwest::Error`,
/// `hyper::Error`, `std::io::Error` kinds), never at message text. Every failure to
/// connect counts (refused, DNS, TLS handshake), since no byte of the request was sent;
/// redirect-policy errors and request-building errors are not retried.
#[must_use]
pub fn is_retryable_error(error: &(dyn StdError + 'static)) -> bool {
    lost(error).is_some()
}

/// How an attempt was lost, when it was lost in one of the ways worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The attempt ran out of time.
    Timeout,
    /// No connection: refused, DNS, TLS handshake. Nothing was sent.
    Connect,
    /// The connection was reset or closed before the response was complete.
    Closed,
    /// What came back was not an HTTP response.
    Malformed,
}

/// Walks the `source()` chain by type, never by message text, for the first sign of a
/// lost attempt.
pub(crate) fn lost(error: &(dyn StdError + 'static)) -> Option<Lost> {
    let mut current = Some(error);
    while let Some(err) = current {
        let found = if let Some(e) = err.downcast_ref::<reqwest::Error>() {
            if e.is_timeout() {
                Some(Lost::Timeout)
            } else if e.is_connect() {
                Some(Lost::Connect)
            } else {
                None
            }
        } else if let Some(e) = err.downcast_ref::<hyper::Error>() {
            if e.is_timeout() {
                Some(Lost::Timeout)
            } else if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                Some(Lost::Closed)
            } else if e.is_parse() {
                Some(Lost::Malformed)
            } else {
                None
            }
        } else if let Some(e) = err.downcast_ref::<io::Error>() {
            match e.kind() {
                io::ErrorKind::TimedOut => Some(Lost::Timeout),
                io::ErrorKind::ConnectionRefused => Some(Lost::Connect),
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected => Some(Lost::Closed),
                _ => None,
            }
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_are_exactly_the_spec_list() {
        let retried: Vec<u16> = (100..600)
            .filter_map(|c| StatusCode::from_u16(c).ok())
            .filter(|s| is_retryable_status(*s))
            .map(|s| s.as_u16())
            .collect();
        assert_eq!(retried, [408, 409, 429, 500, 502, 503, 504]);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn walks_the_source_chain() {
        let reset = Wrapper(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(is_retryable_error(&reset));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(is_retryable_error(&eof));
        let denied = Wrapper(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!is_retryable_error(&denied));
        let bad_data = Wrapper(io::Error::from(io::ErrorKind::InvalidData));
        assert!(!is_retryable_error(&bad_data));
    }

    #[test]
    fn lost_attempts_are_told_apart() {
        let of = |kind: io::ErrorKind| lost(&Wrapper(io::Error::from(kind)));
        assert_eq!(of(io::ErrorKind::ConnectionReset), Some(Lost::Closed));
        assert_eq!(of(io::ErrorKind::UnexpectedEof), Some(Lost::Closed));
        assert_eq!(of(io::ErrorKind::ConnectionRefused), Some(Lost::Connect));
        assert_eq!(of(io::ErrorKind::TimedOut), Some(Lost::Timeout));
        assert_eq!(of(io::ErrorKind::PermissionDenied), None);
    }

    #[test]
    fn decision_follows_status() {
        let headers = HeaderMap::new();
        let key = IdempotencyKey::new_v4();
        let url: reqwest::Url = "http://127.0.0.1:1/orders".parse().unwrap();
        let elsewhere: reqwest::Url = "http://127.0.0.1:2/orders/1".parse().unwrap();
        let answered_by = |status, by| Attempt {
            method: &Method::POST,
            url: &url,
            key: &key,
            number: 1,
            outcome: Outcome::Response {
                status,
                headers: &headers,
                url: by,
            },
            retry_after: None,
            should_retry: None,
        };
        let attempt = |status| answered_by(status, &url);
        assert_eq!(
            default_classifier(&attempt(StatusCode::BAD_GATEWAY)),
            Decision::Retry
        );
        assert_eq!(
            default_classifier(&attempt(StatusCode::CREATED)),
            Decision::Final
        );
        assert!(attempt(StatusCode::INTERNAL_SERVER_ERROR).may_have_executed());
        assert!(attempt(StatusCode::CONFLICT).may_have_executed());
        assert!(!attempt(StatusCode::TOO_MANY_REQUESTS).may_have_executed());
        assert!(!attempt(StatusCode::REQUEST_TIMEOUT).may_have_executed());
        // Any other answer may have executed, retried or not.
        assert!(attempt(StatusCode::ACCEPTED).may_have_executed());
        assert!(attempt(StatusCode::NOT_FOUND).may_have_executed());
        // A 429 from a redirect's target says nothing of the first request.
        assert!(answered_by(StatusCode::TOO_MANY_REQUESTS, &elsewhere).may_have_executed());
    }
}
