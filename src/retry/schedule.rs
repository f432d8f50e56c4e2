//! Scheduling the next attempt after one the classifier retries (backoff, the server's
//! `Retry-After` as a floor, attempts, deadline, the origin's retry budget, the
//! `on_retry` hook), and what a final answer gives back to the budget.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use http::StatusCode;
use tracing::info;

use super::classify::{Attempt, Outcome};
use super::engine::{Engine, Next, Now};
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
        now: Now,
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
        let too_late = |d: Instant| now.get().checked_add(delay).is_none_or(|end| end >= d);
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::retry::engine::fixture::{Setup, policy};
    use crate::retry::engine::{Next, Now};
    use crate::{GiveUpReason, RetryBudget};

    #[test]
    fn without_retry_after_the_backoff_sets_the_wait() {
        let setup = Setup::new(policy(), RetryBudget::unlimited());
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::Retry(Duration::from_millis(5))
        );
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::Retry(Duration::from_millis(10))
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_beyond_the_cap_a_stop() {
        let setup = Setup::new(policy(), RetryBudget::unlimited()).retry_after("2");
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::Retry(Duration::from_secs(2)),
            "the server's 2 s, not the backoff's 5 ms"
        );

        let capped = policy().max_retry_after(Duration::from_secs(30));
        let setup = Setup::new(capped, RetryBudget::unlimited()).retry_after("120");
        let mut engine = setup.engine(t0);
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::GiveUp(GiveUpReason::RetryAfterTooLong),
            "beyond the cap: stop now rather than come back early"
        );
        assert_eq!(engine.made, 1);
    }

    #[test]
    fn a_wait_past_the_deadline_stops_now() {
        let setup = Setup::new(policy(), RetryBudget::unlimited()).retry_after("2");
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        let near_the_end = t0 + Duration::from_millis(8_500);
        assert_eq!(
            engine.after(setup.answer(503), Now::At(near_the_end)),
            Next::GiveUp(GiveUpReason::DeadlineExceeded)
        );
        // The same answer with the wait inside the deadline is retried.
        let mut engine = setup.engine(t0);
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0 + Duration::from_secs(7))),
            Next::Retry(Duration::from_secs(2))
        );
    }

    #[test]
    fn the_last_attempt_is_not_retried() {
        let setup = Setup::new(policy().max_attempts(2), RetryBudget::unlimited());
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        assert!(matches!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::Retry(_)
        ));
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::GiveUp(GiveUpReason::AttemptsExhausted)
        );
    }

    #[test]
    fn an_empty_budget_refuses_the_retry() {
        let budget = RetryBudget::new().capacity(20).transient_cost(14);
        let setup = Setup::new(policy(), budget);
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        assert!(matches!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::Retry(_)
        ));
        assert_eq!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::GiveUp(GiveUpReason::BudgetExhausted),
            "6 tokens left, 14 needed"
        );
        let stats = setup.settings.origins.stats(&setup.url);
        assert_eq!(stats.refused_budget_exhausted, 1);
    }

    #[test]
    fn a_retried_success_refunds_what_it_cost() {
        let budget = RetryBudget::new().capacity(20).transient_cost(14);
        let setup = Setup::new(policy(), budget);
        let tokens = || setup.settings.origins.stats(&setup.url).retry_tokens;
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        assert!(matches!(
            engine.after(setup.answer(503), Now::At(t0)),
            Next::Retry(_)
        ));
        assert_eq!(tokens(), 6);
        assert_eq!(engine.after(setup.answer(201), Now::At(t0)), Next::Done);
        assert_eq!(tokens(), 20, "the 14 it paid, back");
    }
}
