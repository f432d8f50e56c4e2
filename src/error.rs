//! The crate's one error type.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::StatusCode;

use crate::{IdempotencyKey, IdempotentResponse};

/// Everything that can go wrong, in one type.
///
/// Its `Display` never shows the idempotency key: a key can read a stored answer on a
/// server that does not scope keys, so it stays out of logs that print `{e}`. Get it
/// with [`idempotency_key`](Error::idempotency_key).
///
/// Errors from [`send`](crate::IdempotentRequestBuilder::send) and from reading its
/// answer carry the operation's [key](Error::idempotency_key) and how many
/// [attempts](Error::attempts) were made, and answer the one question that matters
/// before you act on a failure: [may this operation have executed?](Error::may_have_executed)
///
/// - `true`: it may have run (an attempt may have reached the server, the key was
///   yours and may have been sent before, or the server said 2xx but the answer could
///   not be read). Never start over with a new key: that could run it twice. Keep the
///   key and send the *same* operation again later with
///   [`idempotency_key`](crate::IdempotentRequestBuilder::idempotency_key); the
///   server's idempotency store makes sure it happens once.
/// - `false`: it did not run (nothing was sent, every connection was refused, or the
///   server answered 408 or 429 itself). Giving up or starting over is safe.
///
/// ```no_run
/// # async fn run(client: idempotent_retry::IdempotentClient) {
/// # let order = ();
/// # fn persist(_: &idempotent_retry::IdempotencyKey) {}
/// match client.post_idempotent("https://api.example/orders").json(&order).send().await {
///     Ok(resp) => println!("{} after {} attempt(s)", resp.status(), resp.attempts()),
///     Err(e) if e.may_have_executed() => {
///         // The order may exist. Resume later with the same key, never a new one.
///         if let Some(key) = e.idempotency_key() {
///             persist(key);
///         }
///     }
///     Err(e) => eprintln!("not placed, safe to give up or start over: {e}"),
/// }
/// # }
/// ```
///
/// To survive a crash inside `send()` as well, store the key *before* sending (the
/// write-ahead pattern): take it from
/// [`IdempotentRequestBuilder::key`](crate::IdempotentRequestBuilder::key), save it
/// with your business record, send, and clear it once an answer is final.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key given by the caller is not 1 to 255 visible ASCII characters. Nothing was sent.
    #[error("invalid idempotency key: {reason}")]
    #[non_exhaustive]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },

    /// A builder was given settings that cannot work together. Nothing was sent.
    #[error("invalid configuration: {reason}")]
    #[non_exhaustive]
    InvalidConfig {
        /// Which setting, and why.
        reason: String,
        /// The underlying error, when reqwest refused to build its client.
        #[source]
        source: Option<reqwest::Error>,
    },

    /// The request could not be built (bad URL, body that failed to serialize, bad
    /// header, a key that cannot be sent in the chosen form). Nothing was sent.
    #[error("request not sent: {reason}")]
    #[non_exhaustive]
    InvalidRequest {
        /// The operation's key.
        key: IdempotencyKey,
        /// What is wrong with the request.
        reason: String,
        /// The underlying error, when reqwest reported it.
        #[source]
        source: Option<reqwest::Error>,
        /// `true` when the key was yours ([`idempotency_key`]): nothing was sent now,
        /// but an earlier call may have sent it.
        ///
        /// [`idempotency_key`]: crate::IdempotentRequestBuilder::idempotency_key
        outcome_unknown: bool,
    },

    /// The operation ended without a final response.
    #[error(
        "operation failed after {attempts} attempt(s): {reason}{}",
        if *outcome_unknown { "; outcome unknown, retry later with the same key" } else { "" }
    )]
    #[non_exhaustive]
    Failed {
        /// The operation's key, the same on every attempt.
        key: IdempotencyKey,
        /// Attempts made, the first one included.
        attempts: u32,
        /// Why no further attempt was made.
        reason: GiveUpReason,
        /// `true` when some attempt may have executed on the server (a timeout, a
        /// connection lost after sending, a 5xx or a 409). `false` only when no attempt
        /// can have executed (refused connections, 408, 429).
        outcome_unknown: bool,
        /// The last attempt's response, when it got one (for example the last 503).
        last_response: Option<Box<IdempotentResponse>>,
        /// The last attempt's transport error, when it got no response.
        #[source]
        source: Option<reqwest::Error>,
        /// The wait the last answer's valid `Retry-After` asked for, counted from this
        /// error's creation (zero if already past).
        retry_after: Option<Duration>,
        /// The instant that `Retry-After` named, to persist.
        retry_at: Option<SystemTime>,
    },

    /// An answer's body was longer than
    /// [`max_response_bytes`](crate::IdempotentClientBuilder::max_response_bytes). It
    /// was not read past the bound, not truncated and not retried. The status says what
    /// the server did; the outcome counts as unknown, so keep the key.
    #[error("answer ({status}) is longer than the {limit} bytes the client reads")]
    #[non_exhaustive]
    ResponseTooLarge {
        /// The operation's key.
        key: IdempotencyKey,
        /// Attempts made, the first one included.
        attempts: u32,
        /// The answer's status.
        status: StatusCode,
        /// The answer's headers.
        headers: Box<http::HeaderMap>,
        /// The bound it passed.
        limit: usize,
    },

    /// Another reqwest-middleware layer, inside [`IdempotencyMiddleware`], failed during
    /// an attempt (feature `middleware`). Nothing says how far that attempt got, so the
    /// outcome is unknown.
    ///
    /// [`IdempotencyMiddleware`]: crate::IdempotencyMiddleware
    #[cfg(feature = "middleware")]
    #[error("operation failed after {attempts} attempt(s): another middleware layer failed")]
    #[non_exhaustive]
    MiddlewareLayer {
        /// The operation's key, the same on every attempt.
        key: IdempotencyKey,
        /// Attempts made, the failed one included.
        attempts: u32,
        /// The other layer's error.
        #[source]
        source: reqwest_middleware::Error,
    },

    /// The operation journal could not record or read the operation, or could not be
    /// opened or read at all (then `operation_id` is empty). Found before the first
    /// attempt, nothing was sent by this call; `outcome_unknown` says whether an earlier
    /// call may have sent it (the journal held a record of it).
    #[error("{}{source}", operation_prefix(operation_id))]
    #[non_exhaustive]
    Journal {
        /// The caller's operation id.
        operation_id: String,
        /// The operation's key, when one was known.
        key: Option<IdempotencyKey>,
        /// Whether the operation may have executed (by an earlier call).
        outcome_unknown: bool,
        /// The journal's error.
        #[source]
        source: crate::journal::JournalError,
    },

    /// A request was sent under an operation id the journal holds for a different
    /// request (method, URL, body, or a key of yours that is not the recorded one).
    /// Nothing was sent. The recorded operation may have executed.
    #[error("operation {operation_id:?} was recorded for a different request: {reason}")]
    #[non_exhaustive]
    OperationMismatch {
        /// The caller's operation id.
        operation_id: String,
        /// The recorded operation's key.
        key: IdempotencyKey,
        /// What differs.
        reason: String,
    },

    /// The operation must not be sent automatically again: it is older than the
    /// journal's `max_resume_age` (the server may have forgotten its key, so a re-send
    /// could execute it twice), or it was marked so before. Nothing was sent by this
    /// call. A person decides: look the operation up at the server by its key.
    #[error("operation {operation_id:?} needs attention ({reason}); it is {}s old", age.as_secs())]
    #[non_exhaustive]
    NeedsAttention {
        /// The caller's operation id.
        operation_id: String,
        /// The operation's key.
        key: IdempotencyKey,
        /// How long ago it was recorded, by the journal's clock.
        age: Duration,
        /// Why.
        reason: String,
        /// The answer that made it need attention, when one did (a resumed send's 401
        /// or 403, an answer the classifier called
        /// [`Unresolved`](crate::Decision::Unresolved)): [`Error::last_response`].
        last_response: Option<Box<IdempotentResponse>>,
    },

    /// A recorded operation was not sent again: it was recorded with secret headers
    /// (never stored), and no value for some of them was at hand, neither on the
    /// request nor from the client's
    /// [`resume_credentials`](crate::IdempotentClientBuilder::resume_credentials).
    /// Nothing was sent; the operation stays pending, and may have executed before.
    #[error(
        "operation {operation_id:?} was not sent again: no value for its secret header(s) {} \
         (give them on the request or with resume_credentials)",
        headers.join(", ")
    )]
    #[non_exhaustive]
    CredentialsMissing {
        /// The caller's operation id.
        operation_id: String,
        /// The operation's key.
        key: IdempotencyKey,
        /// The secret headers without a value, by name.
        headers: Vec<String>,
    },

    /// A person abandoned this operation ([`Resolution::Abandoned`]): it is never sent
    /// again. It may have executed before that.
    ///
    /// [`Resolution::Abandoned`]: crate::journal::Resolution::Abandoned
    #[error("operation {operation_id:?} was abandoned: {reason}")]
    #[non_exhaustive]
    Abandoned {
        /// The caller's operation id.
        operation_id: String,
        /// The operation's key.
        key: IdempotencyKey,
        /// Why, as the person said.
        reason: String,
    },

    /// A completed operation whose answer is no longer kept: the journal keeps only its
    /// tombstone (key, fingerprint, final status and headers) past its `keep_answers`.
    /// Nothing was sent: the operation ran once and is not run again, under its key or
    /// any other. [`may_have_executed`](Error::may_have_executed) reads the status as
    /// for [`Error::Status`].
    #[error(
        "operation {operation_id:?} completed ({status}), but its answer is no longer kept \
         (keep_answers); nothing was sent"
    )]
    #[non_exhaustive]
    AnswerExpired {
        /// The caller's operation id.
        operation_id: String,
        /// The operation's key.
        key: IdempotencyKey,
        /// The final answer's status.
        status: StatusCode,
        /// The final answer's headers (a `Location`, say).
        headers: Box<http::HeaderMap>,
    },

    /// A URL given to a client method (such as
    /// [`circuit_state`](crate::IdempotentClient::circuit_state)) is not an absolute URL.
    #[error("{url:?} is not a URL: {reason}")]
    #[non_exhaustive]
    InvalidUrl {
        /// The text given.
        url: String,
        /// Why it is not one.
        reason: String,
    },

    /// The response body could not be decoded as the requested JSON type. The
    /// operation got its final answer: the status says what the server did.
    #[error("response body ({status}) is not the expected JSON: {source}")]
    #[non_exhaustive]
    Decode {
        /// The operation's key.
        key: IdempotencyKey,
        /// The answer's status.
        status: StatusCode,
        /// Attempts the operation made, the first one included.
        attempts: u32,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// The final answer was a client or server error, turned into an error by
    /// [`IdempotentResponse::error_for_status`]. The answer is kept whole: the status
    /// says what the server did, and [`may_have_executed`](Self::may_have_executed)
    /// whether the operation may have run.
    #[error("the server answered {status}")]
    #[non_exhaustive]
    Status {
        /// The operation's key.
        key: IdempotencyKey,
        /// The answer's status.
        status: StatusCode,
        /// Attempts the operation made, the first one included.
        attempts: u32,
        /// The answer, headers and body included.
        response: Box<IdempotentResponse>,
    },
}

/// `operation "id": ` before a journal error about one operation; nothing before one
/// about the journal itself (opening it, listing it).
fn operation_prefix(id: &str) -> String {
    if id.is_empty() {
        String::new()
    } else {
        format!("operation {id:?}: ")
    }
}

/// Why an operation stopped retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// Every attempt the policy allows was made.
    AttemptsExhausted,
    /// Waiting for another attempt would have passed the deadline.
    DeadlineExceeded,
    /// The client's retry budget could not pay for another retry.
    BudgetExhausted,
    /// The server's `Retry-After` asked for a longer wait than
    /// [`max_retry_after`](crate::RetryPolicy::max_retry_after): the operation stopped
    /// at once rather than come back early. [`Error::retry_at`] says when to.
    RetryAfterTooLong,
    /// The last outcome is an error the classifier does not retry.
    NotRetryable,
    /// An answer was longer than
    /// [`max_response_bytes`](crate::IdempotentClientBuilder::max_response_bytes): it
    /// is never retried nor truncated.
    ResponseTooLarge,
    /// The classifier or the `on_retry` hook panicked. The panic is not passed on, so
    /// that the key and the outcome reach the caller.
    CallbackPanicked,
    /// Another worker holds the journalled operation's lease: it is driving it now.
    LeaseHeld,
    /// The journalled operation's lease was taken over by another worker (this one's
    /// ran out), which goes on with it.
    LeaseLost,
    /// The journalled operation grew older than the journal's `max_resume_age`: it is
    /// left for a person to decide ([`Error::NeedsAttention`] on the next send).
    TooOld,
    /// The journal could not be written between attempts: the operation stays pending.
    JournalFailed,
    /// The origin's circuit is open (its breaker saw too many failures, or it was opened
    /// by hand): nothing more was sent. [`Error::is_circuit_open`] says so too.
    CircuitOpen,
    /// The origin's adaptive rate limiter would have made the operation wait longer
    /// than its `max_wait` for a turn: nothing more was sent.
    /// [`Error::is_rate_limited`] says so too.
    RateLimited,
    /// The journalled operation may not be sent yet: a server asked for a wait that
    /// has not passed ([`Error::retry_after`] says how long is left).
    NotYet,
    /// The classifier called the answer [`Unresolved`](crate::Decision::Unresolved):
    /// final, but about the caller rather than the operation, which may have executed.
    Unresolved,
}

impl fmt::Display for GiveUpReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AttemptsExhausted => "all attempts used",
            Self::DeadlineExceeded => "deadline reached",
            Self::BudgetExhausted => "retry budget exhausted",
            Self::RetryAfterTooLong => "the server asked to retry later than max_retry_after",
            Self::NotRetryable => "error is not retryable",
            Self::CallbackPanicked => "the classifier or the on_retry hook panicked",
            Self::ResponseTooLarge => "the answer is longer than max_response_bytes",
            Self::LeaseHeld => "another worker is driving this operation",
            Self::LeaseLost => "another worker took this operation over",
            Self::TooOld => "the operation is older than the journal's max_resume_age",
            Self::JournalFailed => "the journal could not be written",
            Self::NotYet => "the server asked for a wait that has not passed yet",
            Self::CircuitOpen => "the origin's circuit is open",
            Self::RateLimited => "the origin's rate limit left no turn within max_wait",
            Self::Unresolved => "the answer is about the caller, not the operation's outcome",
        })
    }
}

impl Error {
    /// The same error, saying that the operation may have executed: the journal could
    /// not close a record that a resume would send.
    pub(crate) fn into_outcome_unknown(mut self) -> Self {
        if let Self::Failed {
            outcome_unknown, ..
        } = &mut self
        {
            *outcome_unknown = true;
        }
        self
    }

    /// The operation's key, for every error that comes from `send()` or from decoding
    /// its response.
    #[must_use]
    pub fn idempotency_key(&self) -> Option<&IdempotencyKey> {
        match self {
            Self::InvalidRequest { key, .. }
            | Self::Failed { key, .. }
            | Self::Decode { key, .. }
            | Self::Status { key, .. }
            | Self::ResponseTooLarge { key, .. }
            | Self::OperationMismatch { key, .. }
            | Self::NeedsAttention { key, .. }
            | Self::CredentialsMissing { key, .. }
            | Self::Abandoned { key, .. }
            | Self::AnswerExpired { key, .. } => Some(key),
            Self::Journal { key, .. } => key.as_ref(),
            #[cfg(feature = "middleware")]
            Self::MiddlewareLayer { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Attempts made; 0 when the error was found before any I/O.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Failed { attempts, .. }
            | Self::Decode { attempts, .. }
            | Self::Status { attempts, .. }
            | Self::ResponseTooLarge { attempts, .. } => *attempts,
            #[cfg(feature = "middleware")]
            Self::MiddlewareLayer { attempts, .. } => *attempts,
            _ => 0,
        }
    }

    /// Whether the operation may have executed on the server: the question to ask of
    /// every error before acting on it. `true` when the outcome is unknown
    /// ([`is_outcome_unknown`](Self::is_outcome_unknown)), and when the server gave a
    /// final answer that could not be used (a body that does not decode), unless that
    /// answer was a 4xx refusal other than 409. Only when it is `false` is starting
    /// over with a new key safe.
    #[must_use]
    pub fn may_have_executed(&self) -> bool {
        match self {
            Self::Decode { status, .. }
            | Self::Status { status, .. }
            | Self::AnswerExpired { status, .. } => {
                !status.is_client_error() || *status == StatusCode::CONFLICT
            }
            _ => self.is_outcome_unknown(),
        }
    }

    /// Whether the operation ended without a final answer although it may have
    /// executed: some attempt may have reached the server, or the key was yours and may
    /// have been sent before this call (only a key minted for this call, never sent,
    /// can end "not sent"). Keep the key and send the same operation again later.
    #[must_use]
    pub fn is_outcome_unknown(&self) -> bool {
        match self {
            Self::Failed {
                outcome_unknown, ..
            }
            | Self::InvalidRequest {
                outcome_unknown, ..
            }
            | Self::Journal {
                outcome_unknown, ..
            } => *outcome_unknown,
            Self::ResponseTooLarge { .. }
            | Self::OperationMismatch { .. }
            | Self::NeedsAttention { .. }
            | Self::CredentialsMissing { .. }
            | Self::Abandoned { .. } => true,
            #[cfg(feature = "middleware")]
            Self::MiddlewareLayer { .. } => true,
            _ => false,
        }
    }

    /// How long the server asked to wait before the operation is sent again: `Some`
    /// whenever the last answer carried a valid `Retry-After` (seconds, or an HTTP-date
    /// read against the answer's `Date`), counted from this error's creation, zero if
    /// already past. Resume no earlier.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Failed { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The instant [`retry_after`](Self::retry_after) names, as a `SystemTime` to
    /// persist with the key.
    #[must_use]
    pub fn retry_at(&self) -> Option<SystemTime> {
        match self {
            Self::Failed { retry_at, .. } => *retry_at,
            _ => None,
        }
    }

    /// Whether the operation stopped because the origin's circuit is open
    /// ([`CircuitBreaker`](crate::CircuitBreaker), or
    /// [`open_circuit`](crate::IdempotentClient::open_circuit)): nothing more was sent.
    #[must_use]
    pub fn is_circuit_open(&self) -> bool {
        self.give_up_reason() == Some(GiveUpReason::CircuitOpen)
    }

    /// Whether the operation stopped because the origin's adaptive rate limiter had no
    /// turn for it within `max_wait` ([`AdaptiveRateLimit`](crate::AdaptiveRateLimit)):
    /// nothing more was sent.
    #[must_use]
    pub fn is_rate_limited(&self) -> bool {
        self.give_up_reason() == Some(GiveUpReason::RateLimited)
    }

    /// Whether an answer was longer than the client reads
    /// ([`max_response_bytes`](crate::IdempotentClientBuilder::max_response_bytes)).
    #[must_use]
    pub fn is_response_too_large(&self) -> bool {
        matches!(self, Self::ResponseTooLarge { .. })
    }

    /// The headers of the last answer, when there was one.
    #[must_use]
    pub fn headers(&self) -> Option<&http::HeaderMap> {
        match self {
            Self::ResponseTooLarge { headers, .. } | Self::AnswerExpired { headers, .. } => {
                Some(&**headers)
            }
            _ => self.last_response().map(IdempotentResponse::headers),
        }
    }

    /// Whether the last attempt ran out of time.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Failed { source: Some(e), .. } if e.is_timeout())
    }

    /// Why the operation stopped retrying, for [`Error::Failed`].
    #[must_use]
    pub fn give_up_reason(&self) -> Option<GiveUpReason> {
        match self {
            Self::Failed { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The last attempt's response, when it got one.
    #[must_use]
    pub fn last_response(&self) -> Option<&IdempotentResponse> {
        match self {
            Self::Failed {
                last_response: Some(r),
                ..
            }
            | Self::Status { response: r, .. }
            | Self::NeedsAttention {
                last_response: Some(r),
                ..
            } => Some(r),
            _ => None,
        }
    }

    /// This crate's error inside an error of a `reqwest-middleware` client, if it is one
    /// (feature `middleware`): what [`IdempotencyMiddleware`](crate::IdempotencyMiddleware)
    /// returns when an operation fails without a response, or is refused before any I/O.
    ///
    /// ```no_run
    /// # async fn run(client: reqwest_middleware::ClientWithMiddleware) {
    /// use idempotent_retry::Error;
    /// if let Err(e) = client.post("https://api.example/orders").body("{}").send().await {
    ///     match Error::from_middleware_error(&e) {
    ///         Some(ours) if ours.is_outcome_unknown() => { /* keep ours.idempotency_key() */ }
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    #[cfg(feature = "middleware")]
    #[must_use]
    pub fn from_middleware_error(error: &reqwest_middleware::Error) -> Option<&Error> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }

    /// The status of the last answer, when there was one: the last attempt's for
    /// [`Error::Failed`], the final answer's for [`Error::Decode`] and
    /// [`Error::AnswerExpired`].
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Decode { status, .. }
            | Self::Status { status, .. }
            | Self::ResponseTooLarge { status, .. }
            | Self::AnswerExpired { status, .. } => Some(*status),
            _ => self.last_response().map(IdempotentResponse::status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static + std::error::Error>() {}
        assert_bounds::<Error>();
    }

    #[test]
    fn display_tells_what_to_do() {
        let err = Error::Failed {
            key: IdempotencyKey::parse("k-1").unwrap(),
            attempts: 3,
            reason: GiveUpReason::AttemptsExhausted,
            outcome_unknown: true,
            last_response: None,
            source: None,
            retry_after: None,
            retry_at: None,
        };
        let text = err.to_string();
        assert!(text.contains("3 attempt"), "{text}");
        assert!(!text.contains("k-1"), "the key leaks into Display: {text}");
        assert!(text.contains("retry later with the same key"), "{text}");
        assert!(err.is_outcome_unknown());
        assert_eq!(err.attempts(), 3);
        assert_eq!(err.give_up_reason(), Some(GiveUpReason::AttemptsExhausted));
    }
}
