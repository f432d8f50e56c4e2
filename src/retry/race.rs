//! The hedged race: the first attempt, and beside it, while it has no answer, a hedge
//! every `Hedging::delay` with the same key (as the plan, the origin and the operation
//! allow), until one answer settles the operation.

use std::time::{Duration, Instant};

use tracing::debug;

use super::breaker::CircuitState;
use super::engine::Engine;
use super::hedging::Hedging;
use super::judge::server_throttled;
use super::limiter::Turn;
use super::transport::{Detached, Transport};
use crate::telemetry::TARGET;

impl<'a> Engine<'a> {
    /// The hedging plan and the first attempt of an operation that hedges (it has
    /// hedging, its method may, and its front end can); `None` for a plain attempt.
    pub(super) fn hedged_start<T: Transport>(
        &self,
        transport: &T,
        timeout: Duration,
    ) -> Option<(&'a Hedging, Detached<T::Answer>)> {
        let plan = self.hedging().filter(|h| h.covers(self.method))?;
        Some((plan, transport.detached(timeout, false)?))
    }

    /// Sends `first` and, while it has no answer, hedges beside it every `plan.delay`
    /// (as the plan, the origin and the operation allow); returns the first final
    /// answer, or the last one when none is final. Answers that are not final while a
    /// sibling is in flight (a `409` for the key in flight, a failure) are counted and
    /// the sibling awaited: no retry starts while an attempt is in flight. Siblings
    /// dropped when one wins count as attempts that may have executed.
    pub(super) async fn race<T: Transport>(
        &mut self,
        transport: &mut T,
        plan: &Hedging,
        first: Detached<T::Answer>,
        timeout: Duration,
    ) -> T::Answer {
        // The origin stays in `self.origin`, looked up here: not held in the race.
        super::admission::origin_in(&mut self.origin, self.settings, self.url)
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
                    .hedge_timeout(timeout, Instant::now())
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

    /// The timeout of a hedge starting at `now`, if one may: none after a throttling answer,
    /// while the circuit is not closed, without a rate-limiter token or a hedge token,
    /// or with no time left before the deadline.
    pub(super) fn hedge_timeout(&self, timeout: Duration, now: Instant) -> Option<Duration> {
        let origin = self.origin.as_deref()?;
        if self.throttled {
            return None;
        }
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
