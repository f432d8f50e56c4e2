//! One operation's bookkeeping and its attempt loop: the *decision* (classifier), the
//! *delay* (backoff or `Retry-After`, within the deadline) and the *rate cap* (retry
//! budget) put together, with the events that report them.
//!
//! The contract with a front end: the front end only sends an attempt (a
//! [`Transport`]); the [`Engine`] decides everything else (the attempt's timeout,
//! whether to retry, how long to wait, when to give up and why) and reports each
//! decision to `tracing`, once, here. The client and the middleware therefore decide
//! alike.

use crate::telemetry::TARGET;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use tracing::{debug, info, warn};

use super::backoff::Backoff;
use super::breaker::{Admission, CircuitState, Verdict};
use super::classify::{Attempt, Decision, Outcome, default_classifier};
use super::hedging::Hedging;
use super::limiter::Turn;
use super::origins::OriginState;
use super::settings::{Overrides, RetrySettings as Settings};
use super::transport::{Detached, End, Ending, Transport};
use crate::telemetry::{self, ErrorType};
use crate::{GiveUpReason, IdempotencyKey};

/// What to do after an attempt.
#[derive(Debug, PartialEq)]
enum Next {
    /// A final response: hand it to the caller.
    Done,
    /// No further attempt, for this reason.
    GiveUp(GiveUpReason),
    /// Sleep this long, then make another attempt.
    Retry(Duration),
}

/// The state of one operation between its attempts.
pub(crate) struct Engine<'a> {
    settings: &'a Settings,
    /// What the request sets for itself: `None` for the client's settings throughout.
    overrides: Option<&'a Overrides>,
    method: &'a Method,
    url: &'a reqwest::Url,
    key: &'a IdempotencyKey,
    deadline: Option<Instant>,
    /// Made at the first retry: an operation that succeeds at once never needs it.
    backoff: Option<Box<Backoff>>,
    /// The origin's state, looked up when the budget is first needed.
    origin: Option<Arc<OriginState>>,
    made: u32,
    /// What the last retry paid the budget, given back if the operation succeeds.
    last_cost: u32,
    /// Whether the operation may have executed: some attempt may have, or the key may
    /// have been sent before this call.
    outcome_unknown: bool,
    /// The last attempt's status and error class, for the end of the operation's span.
    last_status: Option<StatusCode>,
    /// The class of the last attempt's transport error, if it had one (a status's
    /// class is the status: see `last_error`). One byte, to keep the state small.
    last_transport: Option<telemetry::Transport>,
    /// The attempt in flight, when the origin's circuit let it through and its outcome
    /// is still to be counted: `Some(true)` for a half-open probe.
    pass: Option<bool>,
    /// Whether some answer was throttling: no hedge after one.
    throttled: bool,
    /// Hedges started (`u16`, saturating: the state stays within its size class).
    hedges: u16,
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
    /// Starts the clock of the deadline. `fresh_key` says the key was minted for this
    /// call and never left the process: only then can the operation end "not sent".
    /// A key the caller supplied may have been sent before, by an earlier call.
    pub(crate) fn new(
        settings: &'a Settings,
        overrides: Option<&'a Overrides>,
        method: &'a Method,
        url: &'a reqwest::Url,
        key: &'a IdempotencyKey,
        fresh_key: bool,
    ) -> Self {
        let policy = Overrides::policy(overrides, settings);
        Self {
            settings,
            overrides,
            method,
            url,
            key,
            deadline: Instant::now().checked_add(policy.deadline),
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
                match self.after(outcome) {
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
    fn begin_attempt(&self, timeout: Duration, now: Instant) -> Result<Duration, GiveUpReason> {
        let remaining = self.deadline.map(|d| d.saturating_duration_since(now));
        let timeout = remaining.map_or(timeout, |r| r.min(timeout));
        if timeout.is_zero() && self.made > 0 {
            return Err(self.give_up(GiveUpReason::DeadlineExceeded));
        }
        Ok(timeout)
    }

    /// Classifies one attempt's outcome and decides what follows: spends or refunds the
    /// budget, calls the `on_retry` hook, and reports it all to `tracing`.
    fn after(&mut self, outcome: Outcome<'_>) -> Next {
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
            self.tell_origin(Verdict::Success, throttled);
            return Next::GiveUp(self.give_up(GiveUpReason::ResponseTooLarge));
        }
        let settings = self.settings;
        // A panic in the caller's classifier or hook ends the operation with an error
        // that keeps its key and outcome, rather than unwinding through the caller and
        // losing the key of a request that may have executed.
        let Some(decision) = decide(settings, &attempt) else {
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
        self.tell_origin(verdict, throttled);
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
            if let Some(status) = status {
                if succeeded(status) {
                    // A first-attempt success adds a little; a retry that succeeded
                    // gives back what it cost.
                    let budget = settings.origins.budget();
                    let refund = if self.made == 1 {
                        budget.success_refund
                    } else {
                        self.last_cost
                    };
                    // While every bucket is full (nothing has failed), a refund has
                    // nowhere to go: no lookup, the common case costs nothing.
                    if refund > 0 && settings.origins.any_below_full() {
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
            return Next::GiveUp(self.give_up(GiveUpReason::NotRetryable));
        }
        if decision == Decision::Unresolved {
            // An answer about the caller: the operation itself may have executed.
            self.outcome_unknown = true;
            return Next::GiveUp(self.give_up(GiveUpReason::Unresolved));
        }

        // Advance the schedule on every retry, even when Retry-After sets the wait, so
        // the n-th retry always draws the n-th delay.
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
        let too_late = |d: Instant| Instant::now().checked_add(delay).is_none_or(|end| end >= d);
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
            if catch_unwind(AssertUnwindSafe(|| hook(&attempt, delay))).is_err() {
                return Next::GiveUp(self.give_up(GiveUpReason::CallbackPanicked));
            }
        }
        info!(target: TARGET,
            attempt = self.made,
            "http.request.resend_count" = self.made - 1,
            "http.response.status_code" = status.map(|s| s.as_u16()),
            "error.type" = error_type.map(tracing::field::display),
            error = attempt.error().map(|e| tracing::field::display(telemetry::innermost(e))),
            "idempotency.key" = self.logged_key(),
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        Next::Retry(delay)
    }

    /// The attempt numbered `made` (counted already), as the classifier sees it.
    fn attempt<'o>(&self, outcome: Outcome<'o>) -> Attempt<'o>
    where
        'a: 'o,
    {
        let (hint, should_retry) = match outcome {
            Outcome::Response {
                status, headers, ..
            } => (
                super::retry_after::wait(status, headers),
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

    /// Sends `first` and, while it has no answer, hedges beside it every `plan.delay`
    /// (as the plan, the origin and the operation allow); returns the first final
    /// answer, or the last one when none is final. Answers that are not final while a
    /// sibling is in flight (a `409` for the key in flight, a failure) are counted and
    /// the sibling awaited: no retry starts while an attempt is in flight. Siblings
    /// dropped when one wins count as attempts that may have executed.
    async fn race<T: Transport>(
        &mut self,
        transport: &mut T,
        plan: &Hedging,
        first: Detached<T::Answer>,
        timeout: Duration,
    ) -> T::Answer {
        // The origin stays in `self.origin`, looked up here: not held in the race.
        origin_in(&mut self.origin, self.settings, self.url)
            .hedges
            .deposit();
        // The first attempt, and the hedges beside it: no allocation for the list
        // until a hedge starts, and the timer in the race's own state.
        let timer = std::pin::pin!(tokio::time::sleep(plan.delay));
        let mut flights = Flights {
            first: Some(first),
            hedges: Vec::new(),
            hedges_left: plan.max_hedges,
            timer,
        };
        loop {
            let event = std::future::poll_fn(|cx| flights.poll_event(cx)).await;
            let Some((which, answer)) = event else {
                flights.hedges_left -= 1;
                let hedge = self
                    .hedge_timeout(timeout)
                    .filter(|&t| transport.may_hedge(t));
                match hedge {
                    Some(hedge_timeout) => match transport.detached(hedge_timeout, true) {
                        Some(hedge) => {
                            self.hedges = self.hedges.saturating_add(1);
                            debug!(target: TARGET,
                                hedge = self.hedges,
                                "idempotency.key" = %self.key,
                                "hedge started"
                            );
                            flights.hedges.push(hedge);
                            flights
                                .timer
                                .as_mut()
                                .reset(tokio::time::Instant::now() + plan.delay);
                        }
                        None => flights.hedges_left = 0,
                    },
                    None => flights.hedges_left = 0,
                }
                continue;
            };
            match which {
                None => flights.first = None,
                Some(i) => drop(flights.hedges.swap_remove(i)),
            }
            let in_flight = flights.hedges.len() + usize::from(flights.first.is_some());
            if in_flight == 0 || self.settles::<T>(&answer) {
                // The others are dropped in flight: each may have executed.
                let dropped = u32::try_from(in_flight).unwrap_or(u32::MAX);
                self.made = self.made.saturating_add(dropped);
                self.outcome_unknown |= dropped > 0;
                if which.is_some() {
                    if let Some(origin) = &self.origin {
                        origin.hedges.count_win();
                    }
                }
                return answer;
            }
            // Not final, and a sibling is in flight: counted (by the rate limiter too,
            // which measures every attempt), and the sibling awaited.
            self.made += 1;
            match T::outcome(&answer) {
                Some(outcome) => {
                    let attempt = self.attempt(outcome);
                    self.outcome_unknown |= attempt.may_have_executed();
                    if attempt.is_throttling() {
                        self.throttled = true;
                        flights.hedges_left = 0;
                    }
                    let throttled = server_throttled(&attempt);
                    self.tell_limiter(throttled, Instant::now());
                }
                None => self.outcome_unknown = true,
            }
        }
    }

    /// The last attempt's error class: its transport error's, or its 4xx/5xx status.
    fn last_error(&self) -> Option<ErrorType> {
        match (self.last_transport, self.last_status) {
            (Some(kind), _) => Some(ErrorType::Transport(kind)),
            (None, Some(status)) if status.is_client_error() || status.is_server_error() => {
                Some(ErrorType::Status(status))
            }
            (None, _) => None,
        }
    }

    /// The operation's hedging: the request's own, or the client's.
    fn hedging(&self) -> Option<&'a Hedging> {
        Overrides::hedging(self.overrides, self.settings)
    }

    /// The hedging plan and the first attempt of an operation that hedges (it has
    /// hedging, its method may, and its front end can); `None` for a plain attempt.
    fn hedged_start<T: Transport>(
        &self,
        transport: &T,
        timeout: Duration,
    ) -> Option<(&'a Hedging, Detached<T::Answer>)> {
        let plan = self.hedging().filter(|h| h.covers(self.method))?;
        Some((plan, transport.detached(timeout, false)?))
    }

    /// The timeout of a hedge starting now, if one may: none after a throttling answer,
    /// while the circuit is not closed, without a rate-limiter token or a hedge token,
    /// or with no time left before the deadline.
    fn hedge_timeout(&self, timeout: Duration) -> Option<Duration> {
        let origin = self.origin.as_deref()?;
        if self.throttled {
            return None;
        }
        let now = Instant::now();
        let timeout = match self.deadline {
            Some(deadline) => timeout.min(deadline.saturating_duration_since(now)),
            None => timeout,
        };
        if timeout.is_zero() {
            return None;
        }
        if let Some(circuit) = origin.existing_circuit() {
            if circuit.state(now) != CircuitState::Closed {
                return None;
            }
        }
        if self.settings.limiter.is_some()
            && origin.limiter().acquire(Duration::ZERO, now) != Turn::Now
        {
            return None;
        }
        origin.hedges.try_take().then_some(timeout)
    }

    /// Whether `answer`, arriving while a sibling is in flight, ends the operation: a
    /// final answer as the classifier judges it (asked again when the winner is
    /// judged), or an answer not the engine's to judge; never a 409.
    fn settles<T: Transport>(&self, answer: &T::Answer) -> bool {
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

    /// Asks the origin's circuit whether the next attempt may go. Nothing to ask (and
    /// no lookup) while the client has no breaker and no circuit was ever opened by hand.
    fn admit(&mut self, now: Instant) -> Result<(), GiveUpReason> {
        let settings = self.settings;
        let circuits = settings.breaker.is_some() || settings.origins.any_circuit();
        if !circuits {
            return Ok(());
        }
        let origin = origin_in(&mut self.origin, settings, self.url);
        let circuit = match &settings.breaker {
            Some(breaker) => Some(origin.circuit(Some(breaker))),
            None => origin.existing_circuit(),
        };
        let Some(circuit) = circuit else {
            return Ok(());
        };
        match circuit.admit(now) {
            Admission::Go => self.pass = Some(false),
            Admission::Probe => self.pass = Some(true),
            Admission::Refused => {
                origin.count_refusal(GiveUpReason::CircuitOpen);
                return Err(GiveUpReason::CircuitOpen);
            }
        }
        Ok(())
    }

    /// A token from the origin's rate limiter for the next attempt, if the client has
    /// one (always at once while the origin has never throttled), or the wait before
    /// asking again; refused when that wait is longer than `max_wait` or passes the
    /// deadline.
    fn turn(&mut self, now: Instant) -> Result<Option<Duration>, GiveUpReason> {
        let settings = self.settings;
        let Some(config) = &settings.limiter else {
            return Ok(None);
        };
        let origin = origin_in(&mut self.origin, settings, self.url);
        match origin.limiter().acquire(config.max_wait, now) {
            Turn::Now => Ok(None),
            Turn::After(wait) => {
                let too_late = |d: Instant| now.checked_add(wait).is_none_or(|end| end >= d);
                if self.deadline.is_some_and(too_late) {
                    return Err(GiveUpReason::DeadlineExceeded);
                }
                Ok(Some(wait))
            }
            Turn::Refused(_) => {
                origin.count_refusal(GiveUpReason::RateLimited);
                Err(GiveUpReason::RateLimited)
            }
        }
    }

    /// Tells the origin how the attempt that just ended went: its circuit, if it let
    /// the attempt through, and its rate limiter, which measures every attempt.
    fn tell_origin(&mut self, verdict: Verdict, throttled: bool) {
        let probe = self.pass.take();
        if probe.is_none() && self.settings.limiter.is_none() {
            return;
        }
        let now = Instant::now();
        if let Some(probe) = probe {
            let origin = self.origin.as_deref();
            if let Some(circuit) = origin.and_then(OriginState::existing_circuit) {
                circuit.record(probe, verdict, now);
            }
        }
        self.tell_limiter(throttled, now);
    }

    /// Tells the origin's rate limiter, if the client has one, that an attempt ended
    /// (`throttled`: with the server's own throttling).
    fn tell_limiter(&self, throttled: bool, now: Instant) {
        if self.settings.limiter.is_some() {
            if let Some(origin) = self.origin.as_deref() {
                origin.limiter().update(throttled, now);
            }
        }
    }

    /// The state of the operation's origin, looked up once.
    fn origin(&mut self) -> &OriginState {
        origin_in(&mut self.origin, self.settings, self.url)
    }

    /// The key for an event above debug level: only when the client was built with
    /// `log_keys(true)`.
    fn logged_key(&self) -> Option<tracing::field::DisplayValue<&IdempotencyKey>> {
        self.settings
            .log_keys
            .then(|| tracing::field::display(self.key))
    }

    /// Reports the end of an operation that gets no final answer: the one place where
    /// giving up is told.
    fn give_up(&self, reason: GiveUpReason) -> GiveUpReason {
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

/// The attempts of a hedged operation in flight, and the timer of its next hedge.
struct Flights<'t, A> {
    first: Option<Detached<A>>,
    hedges: Vec<Detached<A>>,
    hedges_left: u32,
    timer: std::pin::Pin<&'t mut tokio::time::Sleep>,
}

impl<A> Flights<'_, A> {
    /// `Some((None, a))`: the first attempt answered; `Some((Some(i), a))`: hedge `i`;
    /// `None`: time to hedge.
    #[allow(clippy::type_complexity)] // Read once, by `race`, just above.
    fn poll_event(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<(Option<usize>, A)>> {
        use std::task::Poll;
        if let Some(flight) = self.first.as_mut() {
            if let Poll::Ready(answer) = flight.as_mut().poll(cx) {
                return Poll::Ready(Some((None, answer)));
            }
        }
        for (i, flight) in self.hedges.iter_mut().enumerate() {
            if let Poll::Ready(answer) = flight.as_mut().poll(cx) {
                return Poll::Ready(Some((Some(i), answer)));
            }
        }
        if self.hedges_left > 0 && self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
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

/// The state of `url`'s origin, looked up into `slot` on first use: a function of the
/// slot alone, so that a caller can set the engine's other fields while it holds it.
fn origin_in<'s>(
    slot: &'s mut Option<Arc<OriginState>>,
    settings: &Settings,
    url: &reqwest::Url,
) -> &'s Arc<OriginState> {
    slot.get_or_insert_with(|| settings.origins.get(url))
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
fn server_throttled(attempt: &Attempt<'_>) -> bool {
    let status = attempt.status();
    status == Some(StatusCode::TOO_MANY_REQUESTS)
        || (status == Some(StatusCode::SERVICE_UNAVAILABLE) && attempt.retry_after().is_some())
}

/// Whether a final answer counts as a success for the budget: anything but a 5xx, a
/// 408 or a 429 (which a classifier or the server's own hint may have made final).
fn succeeded(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
}
