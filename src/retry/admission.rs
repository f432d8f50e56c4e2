//! Admission at the origin, before each attempt: its circuit breaker (an open circuit
//! refuses with no I/O) and its adaptive rate limiter (a turn now, a wait, or a
//! refusal); and afterwards, telling both how the attempt went.

use std::time::{Duration, Instant};

use super::breaker::{Admission, Verdict};
use super::engine::{Engine, Now, origin_in};
use super::limiter::Turn;
use super::origins::OriginState;
use crate::GiveUpReason;

impl Engine<'_> {
    /// Asks the origin's circuit whether the next attempt may go. Nothing to ask (and
    /// no lookup) while the client has no breaker and no circuit was ever opened by hand.
    pub(super) fn admit(&mut self, now: Instant) -> Result<(), GiveUpReason> {
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
    pub(super) fn turn(&mut self, now: Instant) -> Result<Option<Duration>, GiveUpReason> {
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

    /// Tells the origin how the attempt that ended at `now` went: its circuit, if it let
    /// the attempt through, and its rate limiter, which measures every attempt.
    pub(super) fn tell_origin(&mut self, verdict: Verdict, throttled: bool, now: Now) {
        let probe = self.pass.take();
        if probe.is_none() && self.settings.limiter.is_none() {
            return;
        }
        let now = now.get();
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
    pub(super) fn tell_limiter(&self, throttled: bool, now: Instant) {
        if self.settings.limiter.is_some() {
            if let Some(origin) = self.origin.as_deref() {
                origin.limiter().update(throttled, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use crate::retry::classify::Outcome;
    use crate::retry::engine::fixture::{Setup, policy};
    use crate::retry::transport::{End, Transport};
    use crate::{GiveUpReason, RetryBudget};

    /// A transport that counts what it is asked to send, and answers nothing useful.
    struct Counting<'a>(&'a AtomicU32);

    impl Transport for Counting<'_> {
        type Answer = ();

        async fn send(&mut self, _: Duration) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }

        fn outcome(_: &()) -> Option<Outcome<'_>> {
            None
        }
    }

    #[test]
    fn an_open_circuit_refuses_the_attempt_at_admission() {
        let setup = Setup::new(policy(), RetryBudget::unlimited());
        setup.settings.origins.open_circuit(&setup.url, None);
        let t0 = Instant::now();
        let mut engine = setup.engine(t0);
        assert_eq!(engine.admit(t0), Err(GiveUpReason::CircuitOpen));
        let stats = setup.settings.origins.stats(&setup.url);
        assert_eq!(stats.refused_circuit_open, 1);
    }

    #[tokio::test]
    async fn an_open_circuit_ends_the_operation_before_any_io() {
        let setup = Setup::new(policy(), RetryBudget::unlimited());
        setup.settings.origins.open_circuit(&setup.url, None);
        let sent = AtomicU32::new(0);
        let engine = setup.engine(Instant::now());
        let ending = engine
            .run(&mut Counting(&sent), Duration::from_secs(1))
            .await;
        assert!(matches!(
            ending.end,
            End::GaveUp(GiveUpReason::CircuitOpen, None)
        ));
        assert_eq!((ending.attempts, sent.into_inner()), (0, 0));
        assert!(!ending.outcome_unknown, "a fresh key that never left");

        // With the circuit closed, the same engine setup sends.
        setup.settings.origins.close_circuit(&setup.url);
        let sent = AtomicU32::new(0);
        let engine = setup.engine(Instant::now());
        let ending = engine
            .run(&mut Counting(&sent), Duration::from_secs(1))
            .await;
        assert!(matches!(ending.end, End::Passed(())));
        assert_eq!(sent.into_inner(), 1);
    }
}
