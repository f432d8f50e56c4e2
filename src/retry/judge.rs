//! Judging one attempt's answer, for the plain path and the hedged race alike: the
//! attempt as the classifier sees it (the server's `Retry-After` and its own say on
//! retrying read off the answer), the decision (the caller's classifier, a panic in it
//! caught), what the origin is told, and whether the operation ends here.

use std::panic::{AssertUnwindSafe, catch_unwind};

use http::{HeaderMap, StatusCode};
use tracing::debug;

use super::breaker::Verdict;
use super::classify::{Attempt, Decision, Outcome, default_classifier};
use super::engine::{Engine, Next, Now};
use super::retry_after;
use super::settings::RetrySettings as Settings;
use super::transport::Transport;
use crate::GiveUpReason;
use crate::telemetry::{self, ErrorType, TARGET};

impl<'a> Engine<'a> {
    /// Judges one attempt's answer (at `now`) and decides what follows: tells the origin
    /// how it went, ends the operation on a final answer (refunding the budget) or on
    /// one about the caller, or schedules a retry.
    pub(super) fn after(&mut self, outcome: Outcome<'_>, now: Now) -> Next {
        self.made += 1;
        let attempt = self.attempt(outcome);
        self.outcome_unknown |= attempt.may_have_executed();
        self.throttled |= attempt.is_throttling();
        let throttled = server_throttled(&attempt);
        let error_type = telemetry::error_type(&attempt);
        let status = attempt.status();
        self.last_status = status;
        self.last_transport = match error_type {
            Some(ErrorType::Transport(kind)) => Some(kind),
            Some(ErrorType::Status(_)) | None => None,
        };
        if let Outcome::TooLarge { .. } = outcome {
            // An answer, however long: the origin is up.
            self.tell_origin(Verdict::Success, throttled, now);
            return Next::GiveUp(self.give_up(GiveUpReason::ResponseTooLarge));
        }
        // A panic in the caller's classifier or hook ends the operation with an error
        // that keeps its key and outcome, rather than unwinding through the caller and
        // losing the key of a request that may have executed.
        let Some(decision) = decide(self.settings, &attempt) else {
            return Next::GiveUp(self.give_up(GiveUpReason::CallbackPanicked));
        };
        // Failures are what the classifier retries as transient; throttling is neither.
        let verdict = if attempt.is_throttling() {
            Verdict::Neutral
        } else if decision == Decision::Retry {
            Verdict::Failure
        } else {
            Verdict::Success
        };
        self.tell_origin(verdict, throttled, now);
        debug!(target: TARGET,
            attempt = self.made,
            "http.request.resend_count" = self.made - 1,
            "http.response.status_code" = status.map(|s| s.as_u16()),
            "error.type" = error_type.map(tracing::field::display),
            error = attempt.error().map(|e| tracing::field::display(telemetry::innermost(e))),
            "idempotency.key" = %self.key,
            ?decision,
            "attempt finished"
        );

        if decision == Decision::Final {
            return self.final_answer(&attempt, error_type);
        }
        if decision == Decision::Unresolved {
            // An answer about the caller: the operation itself may have executed.
            self.outcome_unknown = true;
            return Next::GiveUp(self.give_up(GiveUpReason::Unresolved));
        }
        self.schedule(&attempt, error_type, now)
    }

    /// The attempt numbered `made` (counted already), as the classifier sees it.
    pub(super) fn attempt<'o>(&self, outcome: Outcome<'o>) -> Attempt<'o>
    where
        'a: 'o,
    {
        let (hint, should_retry) = match outcome {
            Outcome::Response {
                status, headers, ..
            } => (
                retry_after::wait(status, headers),
                should_retry(self.settings, status, headers),
            ),
            Outcome::Error(_) | Outcome::TooLarge { .. } => (None, None),
        };
        Attempt {
            method: self.method,
            url: self.url,
            key: self.key,
            number: self.made,
            outcome,
            retry_after: hint,
            should_retry,
        }
    }

    /// Whether `answer`, arriving while a sibling is in flight, ends the operation: a
    /// final answer as the classifier judges it (asked again when the winner is
    /// judged), or an answer not the engine's to judge; never a 409.
    pub(super) fn settles<T: Transport>(&self, answer: &T::Answer) -> bool {
        let Some(outcome) = T::outcome(answer) else {
            return true;
        };
        // A 409 while a sibling is in flight is the server saying that our own other
        // attempt holds the key: never the operation's answer, whatever the
        // classifier makes of 409s.
        if let Outcome::Response { status, .. } = outcome {
            if status == StatusCode::CONFLICT {
                return false;
            }
        }
        // A panicking classifier ends the operation, as `after` reports when it judges
        // this answer.
        decide(self.settings, &self.attempt(outcome)).is_none_or(|d| d != Decision::Retry)
    }
}

/// The server's own say on retrying a non-2xx answer (`Stripe-Should-Retry` unless
/// configured otherwise): `true` or `false`, any case; anything else is ignored, with a
/// debug event.
fn should_retry(settings: &Settings, status: StatusCode, headers: &HeaderMap) -> Option<bool> {
    if status.is_success() {
        return None;
    }
    let value = headers.get(settings.should_retry_header.as_ref()?)?;
    match value.as_bytes() {
        v if v.eq_ignore_ascii_case(b"true") => Some(true),
        v if v.eq_ignore_ascii_case(b"false") => Some(false),
        _ => {
            debug!(target: TARGET, value = ?value, "ignoring a Stripe-Should-Retry that is neither true nor false");
            None
        }
    }
}

/// The decision on `attempt`: the caller's classifier, or the default one. `None` when
/// the caller's classifier panicked (the panic is not passed on: the operation ends with
/// its key and outcome instead).
fn decide(settings: &Settings, attempt: &Attempt<'_>) -> Option<Decision> {
    match &settings.classifier {
        Some(classifier) => catch_unwind(AssertUnwindSafe(|| classifier(attempt))).ok(),
        None => Some(default_classifier(attempt)),
    }
}

/// Whether `attempt` is the server's own throttling (429, or 503 with `Retry-After`;
/// not our own 409), which cuts the origin's rate limit.
pub(super) fn server_throttled(attempt: &Attempt<'_>) -> bool {
    let status = attempt.status();
    status == Some(StatusCode::TOO_MANY_REQUESTS)
        || (status == Some(StatusCode::SERVICE_UNAVAILABLE) && attempt.retry_after().is_some())
}
