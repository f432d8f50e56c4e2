//! The hedged race: the first attempt, and beside it, while it has no answer, a hedge
//! every `Hedging::delay` with the same key (as the plan, the origin and the operation
//! allow), until one answer settles the operation.

use std::time::{Duration, Instant};

use tracing::debug;

use super::breaker::CircuitState;
use super::engine::{Engine, origin_in};
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
                self.start_hedge(transport, &mut flights, plan, timeout);
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
            if self.count_unsettled::<T>(&answer) {
                flights.hedges_left = 0;
            }
        }
    }

    /// Starts a hedge, if one may start now; when none may, none will.
    fn start_hedge<T: Transport>(
        &mut self,
        transport: &T,
        flights: &mut Flights<'_, T::Answer>,
        plan: &Hedging,
        timeout: Duration,
    ) {
        flights.hedges_left -= 1;
        let hedge = self
            .hedge_timeout(timeout, Instant::now())
            .filter(|&t| transport.may_hedge(t))
            .and_then(|t| transport.detached(t, true));
        let Some(hedge) = hedge else {
            flights.hedges_left = 0;
            return;
        };
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

    /// Counts an answer that does not settle the race while a sibling flies; `true`
    /// when it was throttling, after which no further hedge starts.
    fn count_unsettled<T: Transport>(&mut self, answer: &T::Answer) -> bool {
        self.made += 1;
        let Some(outcome) = T::outcome(answer) else {
            self.outcome_unknown = true;
            return false;
        };
        let attempt = self.attempt(outcome);
        self.outcome_unknown |= attempt.may_have_executed();
        let throttling = attempt.is_throttling();
        self.throttled |= throttling;
        let throttled = server_throttled(&attempt);
        self.tell_limiter(throttled, Instant::now());
        throttling
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use http::{HeaderMap, StatusCode};
    use tokio::sync::watch;

    use crate::retry::classify::Outcome;
    use crate::retry::engine::fixture::{Setup, policy};
    use crate::retry::transport::{Detached, Transport};
    use crate::{Hedging, RetryBudget};

    /// One attempt's answer: which attempt it was (0 the first, 1 the first hedge, …).
    struct Answer {
        which: usize,
        status: StatusCode,
        headers: HeaderMap,
        url: reqwest::Url,
    }

    /// When a scripted attempt answers: once this many attempts have started (so the
    /// order of answers is the script's, whatever the timers do), or never.
    #[derive(Clone, Copy)]
    enum When {
        Started(usize),
        Never,
    }

    /// Attempts that answer as scripted, in the order they start.
    struct Scripted {
        script: Mutex<VecDeque<(When, u16)>>,
        started: watch::Sender<usize>,
        url: reqwest::Url,
    }

    impl Scripted {
        fn new(script: &[(When, u16)]) -> Self {
            Self {
                script: Mutex::new(script.iter().copied().collect()),
                started: watch::Sender::new(0),
                url: reqwest::Url::parse("http://127.0.0.1:1/orders").unwrap(),
            }
        }
    }

    impl Transport for Scripted {
        type Answer = Answer;

        async fn send(&mut self, _: Duration) -> Answer {
            unreachable!("a hedged operation sends detached attempts")
        }

        fn detached(&self, _: Duration, _: bool) -> Option<Detached<Answer>> {
            let (when, status) = self.script.lock().unwrap().pop_front()?;
            let which = *self.started.borrow();
            self.started.send_modify(|n| *n += 1);
            let mut started = self.started.subscribe();
            let url = self.url.clone();
            Some(Box::pin(async move {
                match when {
                    When::Started(n) => drop(started.wait_for(|s| *s >= n).await),
                    When::Never => std::future::pending::<()>().await,
                }
                Answer {
                    which,
                    status: StatusCode::from_u16(status).unwrap(),
                    headers: HeaderMap::new(),
                    url,
                }
            }))
        }

        fn outcome(answer: &Answer) -> Option<Outcome<'_>> {
            Some(Outcome::Response {
                status: answer.status,
                headers: &answer.headers,
                url: &answer.url,
            })
        }
    }

    /// What a race with one hedge after `delay` ended with: the winning answer's
    /// attempt and status, the attempts the race counted (those dropped in flight, and
    /// those answered while a sibling flew), hedges started, and whether the operation
    /// may have executed.
    async fn race(delay: u64, script: &[(When, u16)]) -> (usize, u16, u32, u16, bool) {
        let setup = Setup::new(policy(), RetryBudget::unlimited());
        let plan = Hedging::after(Duration::from_millis(delay)).keyed_methods(true);
        let mut transport = Scripted::new(script);
        let mut engine = setup.engine(Instant::now());
        let timeout = Duration::from_secs(5);
        let first = transport.detached(timeout, false).unwrap();
        let answer = engine.race(&mut transport, &plan, first, timeout).await;
        let counted = (engine.made, engine.hedges, engine.outcome_unknown);
        (
            answer.which,
            answer.status.as_u16(),
            counted.0,
            counted.1,
            counted.2,
        )
    }

    use When::{Never, Started};

    #[tokio::test]
    async fn the_first_attempt_wins_before_any_hedge() {
        let ended = race(60_000, &[(Started(1), 201), (Started(1), 201)]).await;
        assert_eq!(ended, (0, 201, 0, 0, false));
    }

    #[tokio::test]
    async fn the_hedge_wins_and_the_first_counts_as_dropped_in_flight() {
        let ended = race(1, &[(Never, 201), (Started(2), 201)]).await;
        let (which, status, made, hedges, unknown) = ended;
        assert_eq!((which, status, hedges), (1, 201, 1));
        assert_eq!(made, 1, "the first, dropped in flight");
        assert!(unknown, "a dropped attempt may have executed");
    }

    #[tokio::test]
    async fn a_409_while_the_sibling_flies_is_never_the_answer() {
        // Once the hedge holds the key, the first gets 409; the hedge's 201 is the
        // answer (the first is polled first, so its 409 comes first).
        let ended = race(1, &[(Started(2), 409), (Started(2), 201)]).await;
        let (which, status, made, hedges, _) = ended;
        assert_eq!((which, status, hedges), (1, 201, 1));
        assert_eq!(made, 1, "the 409, counted as an attempt");
    }

    #[tokio::test]
    async fn when_both_fail_the_last_answer_is_judged() {
        // The first's 503 while the hedge flies: counted, the hedge awaited; its 503
        // ends the race, for the engine to judge (and retry).
        let ended = race(1, &[(Started(2), 503), (Started(2), 503)]).await;
        let (which, status, made, hedges, unknown) = ended;
        assert_eq!((which, status, made, hedges), (1, 503, 1, 1));
        assert!(unknown);
    }
}
