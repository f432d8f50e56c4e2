//! One operation's state and its attempt loop ([`Engine::run`]). The loop asks, in
//! order: may the origin take an attempt (`admission.rs`: breaker, rate limiter), what
//! is its timeout (the deadline), may it leave (the front end's `before_attempt`); then
//! it sends it, alone or in a hedged race (`race.rs`), judges the answer (`judge.rs`)
//! and, for a retry, schedules the next attempt (`schedule.rs`: backoff, `Retry-After`,
//! deadline, budget, hook).
//!
//! The contract with a front end: the front end only sends an attempt (a
//! [`Transport`]); the [`Engine`] decides everything else (the attempt's timeout,
//! whether to retry, how long to wait, when to give up and why) and reports each
//! decision to `tracing`, once. The client and the middleware therefore decide alike.
//! Every decision takes the time from its caller: the loop reads the clock, and the
//! unit tests below make time up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tracing::{debug, warn};

use super::backoff::Backoff;
use super::hedging::Hedging;
use super::origins::OriginState;
use super::settings::{Overrides, RetrySettings as Settings};
use super::transport::{End, Ending, Transport};
use crate::telemetry::{self, ErrorType, TARGET};
use crate::{GiveUpReason, IdempotencyKey};

/// What to do after an attempt.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// A final response: hand it to the caller.
    Done,
    /// No further attempt, for this reason.
    GiveUp(GiveUpReason),
    /// Sleep this long, then make another attempt.
    Retry(Duration),
}

/// The time a decision is taken at: the clock, read only if the decision needs it (a
/// first answer that succeeds needs none), or an instant a test made up.
#[derive(Clone, Copy, Debug)]
pub(super) enum Now {
    Clock,
    // Made up only by the unit tests.
    #[cfg_attr(not(test), allow(dead_code))]
    At(Instant),
}

impl Now {
    pub(super) fn get(self) -> Instant {
        match self {
            Now::Clock => Instant::now(),
            Now::At(at) => at,
        }
    }
}

/// The state of one operation between its attempts.
pub(crate) struct Engine<'a> {
    pub(super) settings: &'a Settings,
    /// What the request sets for itself: `None` for the client's settings throughout.
    pub(super) overrides: Option<&'a Overrides>,
    pub(super) method: &'a Method,
    pub(super) url: &'a reqwest::Url,
    pub(super) key: &'a IdempotencyKey,
    pub(super) deadline: Option<Instant>,
    /// Made at the first retry: an operation that succeeds at once never needs it.
    pub(super) backoff: Option<Box<Backoff>>,
    /// The origin's state, looked up when the budget is first needed.
    pub(super) origin: Option<Arc<OriginState>>,
    pub(super) made: u32,
    /// What the last retry paid the budget, given back if the operation succeeds.
    pub(super) last_cost: u32,
    /// Whether the operation may have executed: some attempt may have, or the key may
    /// have been sent before this call.
    pub(super) outcome_unknown: bool,
    /// The last attempt's status and error class, for the end of the operation's span.
    pub(super) last_status: Option<StatusCode>,
    /// The class of the last attempt's transport error, if it had one (a status's
    /// class is the status: see `last_error`). One byte, to keep the state small.
    pub(super) last_transport: Option<telemetry::Transport>,
    /// The attempt in flight, when the origin's circuit let it through and its outcome
    /// is still to be counted: `Some(true)` for a half-open probe.
    pub(super) pass: Option<bool>,
    /// Whether some answer was throttling: no hedge after one.
    pub(super) throttled: bool,
    /// Hedges started (`u16`, saturating: the state stays within its size class).
    pub(super) hedges: u16,
}

impl Drop for Engine<'_> {
    /// A probe whose outcome was never counted (the operation's future was dropped
    /// mid-attempt) gives its slot back, so a cancelled probe does not wedge the circuit.
    fn drop(&mut self) {
        if self.pass == Some(true) {
            if let Some(circuit) = self.origin.as_ref().and_then(|o| o.existing_circuit()) {
                circuit.release();
            }
        }
    }
}

impl<'a> Engine<'a> {
    /// Starts the clock of the deadline at `now`. `fresh_key` says the key was minted for this
    /// call and never left the process: only then can the operation end "not sent".
    /// A key the caller supplied may have been sent before, by an earlier call.
    pub(crate) fn new(
        settings: &'a Settings,
        overrides: Option<&'a Overrides>,
        method: &'a Method,
        url: &'a reqwest::Url,
        key: &'a IdempotencyKey,
        fresh_key: bool,
        now: Instant,
    ) -> Self {
        let policy = Overrides::policy(overrides, settings);
        Self {
            settings,
            overrides,
            method,
            url,
            key,
            deadline: now.checked_add(policy.deadline),
            backoff: None,
            origin: None,
            made: 0,
            last_cost: 0,
            outcome_unknown: !fresh_key,
            last_status: None,
            last_transport: None,
            pass: None,
            throttled: false,
            hedges: 0,
        }
    }

    /// Makes attempts through `transport`, each bounded by `timeout` (shrunk to what
    /// remains of the deadline), until one gets a final answer or the policy,
    /// deadline or budget says stop.
    pub(crate) async fn run<T: Transport>(
        mut self,
        transport: &mut T,
        timeout: Duration,
    ) -> Ending<T::Answer> {
        tracing::event!(target: TARGET, tracing::Level::DEBUG, "idempotency.key" = %self.key, "sending");
        if self.settings.log_keys {
            tracing::Span::current().record("idempotency.key", tracing::field::display(self.key));
        }
        // The previous attempt's answer, kept across the sleep: boxed, because only a
        // retry needs it and the operation's state stays small. (The sleep shares its
        // room with the attempt, which is never in flight at the same time.)
        let mut last: Option<Box<T::Answer>> = None;
        let end = loop {
            // One clock read for the checks before an attempt, read again after a wait.
            let mut now = Instant::now();
            // The origin first: an open circuit refuses at once, a throttled origin's
            // limiter may ask for waits (which the deadline and `max_wait` count).
            if let Err(reason) = self.admit(now) {
                break End::GaveUp(self.give_up(reason), last.map(|l| *l));
            }
            let turn = loop {
                match self.turn(now) {
                    Ok(Some(wait)) => {
                        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                        debug!(target: TARGET, wait_ms, "waiting for a rate-limit turn");
                        tokio::time::sleep(wait).await;
                        now = Instant::now();
                    }
                    other => break other,
                }
            };
            if let Err(reason) = turn {
                break End::GaveUp(self.give_up(reason), last.map(|l| *l));
            }
            let timeout = match self.begin_attempt(timeout, now) {
                Ok(timeout) => timeout,
                Err(reason) => break End::GaveUp(reason, last.map(|l| *l)),
            };
            if let Err(reason) = transport.before_attempt(self.made, timeout).await {
                break End::GaveUp(self.give_up(reason), last.map(|l| *l));
            }
            // A block, so that nothing of this attempt is kept across the sleep.
            let delay = {
                // The race's state shares its room with a plain attempt's: only one of
                // them is ever in flight.
                // (`if let`, not `match`: its scrutinee is gone before `else`, so a
                // plain attempt's state does not keep room for it.)
                let answer = if let Some((plan, first)) = self.hedged_start(transport, timeout) {
                    self.race(transport, plan, first, timeout).await
                } else {
                    transport.send(timeout).await
                };
                let Some(outcome) = T::outcome(&answer) else {
                    self.made += 1;
                    self.outcome_unknown = true;
                    self.give_up(GiveUpReason::NotRetryable);
                    break End::Passed(answer);
                };
                match self.after(outcome, Now::Clock) {
                    Next::Done => break End::Done(answer),
                    Next::GiveUp(reason) => break End::GaveUp(reason, Some(answer)),
                    Next::Retry(delay) => {
                        last = Some(Box::new(answer));
                        delay
                    }
                }
            };
            tokio::time::sleep(delay).await;
        };
        Ending {
            end,
            attempts: self.made,
            outcome_unknown: self.outcome_unknown,
            hedges: u32::from(self.hedges),
        }
    }

    /// The next attempt's timeout: `timeout`, shrunk to what remains of the deadline.
    /// Gives up (and reports it) when nothing remains after a first attempt: the sleep
    /// was checked against the deadline, but timers may overshoot.
    pub(super) fn begin_attempt(
        &self,
        timeout: Duration,
        now: Instant,
    ) -> Result<Duration, GiveUpReason> {
        let remaining = self.deadline.map(|d| d.saturating_duration_since(now));
        let timeout = remaining.map_or(timeout, |r| r.min(timeout));
        if timeout.is_zero() && self.made > 0 {
            return Err(self.give_up(GiveUpReason::DeadlineExceeded));
        }
        Ok(timeout)
    }

    /// The last attempt's error class: its transport error's, or its 4xx/5xx status.
    pub(super) fn last_error(&self) -> Option<ErrorType> {
        match (self.last_transport, self.last_status) {
            (Some(kind), _) => Some(ErrorType::Transport(kind)),
            (None, Some(status)) if status.is_client_error() || status.is_server_error() => {
                Some(ErrorType::Status(status))
            }
            (None, _) => None,
        }
    }

    /// The operation's hedging: the request's own, or the client's.
    pub(super) fn hedging(&self) -> Option<&'a Hedging> {
        Overrides::hedging(self.overrides, self.settings)
    }

    /// The state of the operation's origin, looked up once.
    pub(super) fn origin(&mut self) -> &OriginState {
        origin_in(&mut self.origin, self.settings, self.url)
    }

    /// The key for an event above debug level: only when the client was built with
    /// `log_keys(true)`.
    pub(super) fn logged_key(&self) -> Option<tracing::field::DisplayValue<&IdempotencyKey>> {
        self.settings
            .log_keys
            .then(|| tracing::field::display(self.key))
    }

    /// Reports the end of an operation that gets no final answer: the one place where
    /// giving up is told.
    pub(super) fn give_up(&self, reason: GiveUpReason) -> GiveUpReason {
        let attempts = self.made;
        let last_error = self.last_error();
        telemetry::record_end(attempts, self.last_status, last_error, None);
        // Fields, not an error's Display: the key stays at debug level.
        warn!(target: TARGET,
            attempts,
            "http.request.resend_count" = attempts.saturating_sub(1),
            "error.type" = last_error.map(tracing::field::display),
            %reason,
            outcome_unknown = self.outcome_unknown,
            "idempotency.key" = self.logged_key(),
            "giving up"
        );
        reason
    }
}

/// The state of `url`'s origin, looked up into `slot` on first use: a function of the
/// slot alone, so that a caller can set the engine's other fields while it holds it.
pub(super) fn origin_in<'s>(
    slot: &'s mut Option<Arc<OriginState>>,
    settings: &Settings,
    url: &reqwest::Url,
) -> &'s Arc<OriginState> {
    slot.get_or_insert_with(|| settings.origins.get(url))
}

/// An engine on made-up settings, and answers to judge, for the unit tests of the
/// engine's parts: every decision takes its time from the test.
#[cfg(test)]
pub(super) mod fixture {
    use std::time::{Duration, Instant};

    use http::{HeaderMap, HeaderValue, Method, StatusCode};

    use super::Engine;
    use crate::retry::classify::Outcome;
    use crate::retry::origins::Origins;
    use crate::retry::settings::RetrySettings;
    use crate::{IdempotencyKey, Jitter, RetryBudget, RetryPolicy};

    /// A policy with 5 ms delays, no jitter, 5 attempts and a 10 s deadline.
    pub(crate) fn policy() -> RetryPolicy {
        RetryPolicy::exponential()
            .max_attempts(5)
            .initial_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(20))
            .jitter(Jitter::None)
            .deadline(Duration::from_secs(10))
    }

    /// What an engine borrows.
    pub(crate) struct Setup {
        pub(crate) settings: RetrySettings,
        pub(crate) method: Method,
        pub(crate) url: reqwest::Url,
        pub(crate) key: IdempotencyKey,
        /// An answer's headers, and the URL it came from, for [`Setup::answer`].
        pub(crate) headers: HeaderMap,
    }

    impl Setup {
        pub(crate) fn new(policy: RetryPolicy, budget: RetryBudget) -> Self {
            Self {
                settings: RetrySettings {
                    policy,
                    classifier: None,
                    on_retry: None,
                    should_retry_header: None,
                    origins: Origins::new(budget, 16),
                    breaker: None,
                    hedging: None,
                    limiter: None,
                    log_keys: false,
                },
                method: Method::POST,
                url: reqwest::Url::parse("http://127.0.0.1:1/orders").unwrap(),
                key: IdempotencyKey::parse("fixture-key").unwrap(),
                headers: HeaderMap::new(),
            }
        }

        /// With `Retry-After: value` on [`Setup::answer`]'s answers.
        pub(crate) fn retry_after(mut self, value: &str) -> Self {
            let value = HeaderValue::from_str(value).unwrap();
            self.headers.insert(http::header::RETRY_AFTER, value);
            self
        }

        /// A fresh operation's engine, its deadline's clock started at `now`.
        pub(crate) fn engine(&self, now: Instant) -> Engine<'_> {
            Engine::new(
                &self.settings,
                None,
                &self.method,
                &self.url,
                &self.key,
                true,
                now,
            )
        }

        /// An answer with this status (and the setup's headers).
        pub(crate) fn answer(&self, status: u16) -> Outcome<'_> {
            Outcome::Response {
                status: StatusCode::from_u16(status).unwrap(),
                headers: &self.headers,
                url: &self.url,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::fixture::{Setup, policy};
    use crate::{GiveUpReason, RetryBudget};

    #[test]
    fn the_deadline_cuts_an_attempts_timeout() {
        let setup = Setup::new(policy(), RetryBudget::unlimited());
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        let timeout = Duration::from_secs(5);
        assert_eq!(engine.begin_attempt(timeout, t0), Ok(timeout));
        let late = t0 + Duration::from_millis(8_500);
        assert_eq!(
            engine.begin_attempt(timeout, late),
            Ok(Duration::from_millis(1_500)),
            "what remains of the 10 s deadline"
        );
        // A first attempt always goes, even with nothing left; after one, it stops.
        let past = t0 + Duration::from_secs(11);
        assert_eq!(engine.begin_attempt(timeout, past), Ok(Duration::ZERO));
        engine.made = 1;
        assert_eq!(
            engine.begin_attempt(timeout, past),
            Err(GiveUpReason::DeadlineExceeded)
        );
    }
}
