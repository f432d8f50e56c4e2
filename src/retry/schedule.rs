//! Scheduling the next attempt after one the classifier retries (backoff, the server's
//! `Retry-After` as a floor, attempts, deadline, the origin's retry budget, the
//! `on_retry` hook), and what a final answer gives back to the budget.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use http::StatusCode;
use tracing::info;

use super::classify::{Attempt, Outcome};
use super::engine::{Engine, Next};
use super::settings::Overrides;
use crate::GiveUpReason;
use crate::telemetry::{self, ErrorType, TARGET};

impl Engine<'_> {
    /// Schedules the retry of an attempt the classifier retries, at `now`: the
    /// backoff's next delay (advanced on every retry, even when `Retry-After` sets the
    /// wait), the server's `Retry-After` as a floor (beyond the policy's cap: stop now
    /// rather than come back early), the attempts and the deadline, the origin's
    /// budget, then the `on_retry` hook.
    pub(super) fn schedule(
        &mut self,
        attempt: &Attempt<'_>,
        error_type: Option<ErrorType>,
        now: Instant,
    ) -> Next {
        // The n-th retry always draws the n-th delay.
        let settings = self.settings;
        let policy = Overrides::policy(self.overrides, settings);
        let backoff = self
            .backoff
            .get_or_insert_with(|| Box::new(policy.backoff()));
        let hint = attempt.retry_after();
        let backoff_delay = if attempt.is_throttling() && hint.is_none() {
            backoff.next_throttled_delay()
        } else {
            backoff.next_delay()
        };
        if self.made >= policy.max_attempts {
            return Next::GiveUp(self.give_up(GiveUpReason::AttemptsExhausted));
        }
        // The server's Retry-After is a floor, never cut short: beyond the cap, stop now
        // rather than come back early.
        let delay = match hint {
            Some(hint) if hint > policy.max_retry_after => {
                return Next::GiveUp(self.give_up(GiveUpReason::RetryAfterTooLong));
            }
            Some(hint) => hint.max(backoff_delay),
            None => backoff_delay,
        };
        let too_late = |d: Instant| now.checked_add(delay).is_none_or(|end| end >= d);
        if self.deadline.is_some_and(too_late) {
            return Next::GiveUp(self.give_up(GiveUpReason::DeadlineExceeded));
        }
        let budget = settings.origins.budget();
        let cost = if attempt.is_throttling() {
            budget.throttling_cost
        } else {
            budget.transient_cost
        };
        if cost > 0 && !self.origin().budget.try_withdraw(cost) {
            self.origin().count_refusal(GiveUpReason::BudgetExhausted);
            return Next::GiveUp(self.give_up(GiveUpReason::BudgetExhausted));
        }
        self.last_cost = cost;

        if let Some(hook) = &settings.on_retry {
            if catch_unwind(AssertUnwindSafe(|| hook(attempt, delay))).is_err() {
                return Next::GiveUp(self.give_up(GiveUpReason::CallbackPanicked));
            }
        }
        info!(target: TARGET,
            attempt = self.made,
            "http.request.resend_count" = self.made - 1,
            "http.response.status_code" = attempt.status().map(|s| s.as_u16()),
            "error.type" = error_type.map(tracing::field::display),
            error = attempt.error().map(|e| tracing::field::display(telemetry::innermost(e))),
            "idempotency.key" = self.logged_key(),
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        Next::Retry(delay)
    }
    /// Ends the operation on a final answer: a success refunds the budget (a
    /// first-attempt one adds a little, a retry that succeeded gives back what it
    /// cost); a final answer with no status (an error the classifier called final)
    /// gives up.
    pub(super) fn final_answer(
        &mut self,
        attempt: &Attempt<'_>,
        error_type: Option<ErrorType>,
    ) -> Next {
        let status = attempt.status();
        if let Some(status) = status {
            if succeeded(status) {
                // A first-attempt success adds a little; a retry that succeeded
                // gives back what it cost.
                let budget = self.settings.origins.budget();
                let refund = if self.made == 1 {
                    budget.success_refund
                } else {
                    self.last_cost
                };
                // While every bucket is full (nothing has failed), a refund has
                // nowhere to go: no lookup, the common case costs nothing.
                if refund > 0 && self.settings.origins.any_below_full() {
                    self.origin().budget.deposit(refund);
                }
            }
            let headers = match attempt.outcome {
                Outcome::Response { headers, .. } => Some(headers),
                Outcome::Error(_) | Outcome::TooLarge { .. } => None,
            };
            telemetry::record_end(self.made, Some(status), error_type, headers);
            return Next::Done;
        }
        Next::GiveUp(self.give_up(GiveUpReason::NotRetryable))
    }
}

/// Whether a final answer counts as a success for the budget: anything but a 5xx, a
/// 408 or a 429 (which a classifier or the server's own hint may have made final).
fn succeeded(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
}
