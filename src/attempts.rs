//! One operation's bookkeeping, between its attempts: the *decision* (classifier), the
//! *delay* (backoff or `Retry-After`, within the deadline) and the *rate cap* (retry
//! budget), with the events that report them. The client's loop and the middleware's
//! both run on it, so they decide alike.

use std::time::{Duration, Instant, SystemTime};

use http::header::RETRY_AFTER;
use http::{Method, StatusCode};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::classify::{Attempt, Decision, Outcome, default_classifier};
use crate::client::Settings;
use crate::telemetry::{self, ErrorType};
use crate::{GiveUpReason, IdempotencyKey, RetryPolicy};

/// What to do after an attempt.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// A final response: hand it to the caller.
    Done,
    /// No further attempt, for this reason.
    GiveUp(GiveUpReason),
    /// Sleep this long, then make another attempt.
    Retry(Duration),
}

/// The state of one operation between its attempts.
pub(crate) struct Attempts<'a> {
    settings: &'a Settings,
    policy: &'a RetryPolicy,
    deadline: Option<Instant>,
    /// Made at the first retry: an operation that succeeds at once never needs it.
    backoff: Option<Box<Backoff>>,
    made: u32,
    outcome_unknown: bool,
    /// The last attempt's status and error class, for the end of the operation's span.
    last_status: Option<StatusCode>,
    last_error: Option<ErrorType>,
}

impl<'a> Attempts<'a> {
    /// Starts the clock of the deadline.
    pub(crate) fn new(settings: &'a Settings, policy: &'a RetryPolicy) -> Self {
        Self {
            settings,
            policy,
            deadline: Instant::now().checked_add(policy.deadline),
            backoff: None,
            made: 0,
            outcome_unknown: false,
            last_status: None,
            last_error: None,
        }
    }

    /// Attempts made so far.
    pub(crate) fn made(&self) -> u32 {
        self.made
    }

    /// Whether some attempt may have executed on the server.
    pub(crate) fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    /// Time for the next attempt: `timeout`, shrunk to what remains of the deadline;
    /// `None` when nothing remains (the sleep was checked against the deadline, but
    /// timers may overshoot), after which the operation has given up.
    pub(crate) fn next_timeout(&self, timeout: Duration) -> Option<Duration> {
        let remaining = self
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = remaining.map_or(timeout, |r| r.min(timeout));
        if timeout.is_zero() && self.made > 0 {
            self.give_up(GiveUpReason::DeadlineExceeded);
            return None;
        }
        Some(timeout)
    }

    /// Classifies one attempt's outcome and decides what follows: spends or refunds the
    /// budget, calls the `on_retry` hook, and reports it all to `tracing`.
    pub(crate) fn after(
        &mut self,
        method: &Method,
        key: &IdempotencyKey,
        outcome: Outcome<'_>,
    ) -> Next {
        self.made += 1;
        let attempt = Attempt {
            method,
            key,
            number: self.made,
            outcome,
        };
        let settings = self.settings;
        let decision = match &settings.classifier {
            Some(classifier) => classifier.classify(&attempt),
            None => default_classifier(&attempt),
        };
        let error_type = telemetry::error_type(&attempt);
        let status = attempt.status();
        (self.last_status, self.last_error) = (status, error_type);
        debug!(
            attempt = self.made,
            "http.request.resend_count" = self.made - 1,
            "http.response.status_code" = status.map(|s| s.as_u16()),
            "error.type" = error_type.map(tracing::field::display),
            error = attempt.error().map(tracing::field::display),
            "idempotency.key" = %key,
            ?decision,
            "attempt finished"
        );
        self.outcome_unknown |= attempt.may_have_executed();

        if decision == Decision::Final {
            if status.is_some() {
                settings.budget.deposit();
                telemetry::record_end(self.made, status, error_type);
                return Next::Done;
            }
            return self.give_up(GiveUpReason::NotRetryable);
        }

        // Advance the schedule on every retry, even when Retry-After overrides it, so
        // the n-th retry always draws the n-th delay.
        let policy = self.policy;
        let backoff_delay = self
            .backoff
            .get_or_insert_with(|| Box::new(Backoff::new(policy)))
            .next_delay();
        let delay = match attempt.headers().and_then(|h| h.get(RETRY_AFTER)) {
            Some(value) => crate::retry_after::parse(value, SystemTime::now())
                .map_or(backoff_delay, |hint| hint.min(policy.max_retry_after)),
            None => backoff_delay,
        };
        if self.made >= policy.max_attempts {
            return self.give_up(GiveUpReason::AttemptsExhausted);
        }
        let too_late = |d: Instant| Instant::now().checked_add(delay).is_none_or(|end| end >= d);
        if self.deadline.is_some_and(too_late) {
            return self.give_up(GiveUpReason::DeadlineExceeded);
        }
        if !settings.budget.try_withdraw(attempt.is_timeout()) {
            return self.give_up(GiveUpReason::BudgetExhausted);
        }

        if let Some(hook) = &settings.on_retry {
            hook(&attempt, delay);
        }
        info!(
            attempt = self.made,
            "http.request.resend_count" = self.made - 1,
            "http.response.status_code" = status.map(|s| s.as_u16()),
            "error.type" = error_type.map(tracing::field::display),
            error = attempt.error().map(tracing::field::display),
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        Next::Retry(delay)
    }

    fn give_up(&self, reason: GiveUpReason) -> Next {
        let attempts = self.made;
        telemetry::record_end(attempts, self.last_status, self.last_error);
        // Fields, not an error's Display: that names the key, which stays at debug.
        warn!(
            attempts,
            "http.request.resend_count" = attempts.saturating_sub(1),
            "error.type" = self.last_error.map(tracing::field::display),
            %reason,
            outcome_unknown = self.outcome_unknown,
            "giving up"
        );
        Next::GiveUp(reason)
    }
}
