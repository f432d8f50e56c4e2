//! The policy: how many attempts, how far apart, and within what deadline. The delays
//! themselves come from the backoff generator.

use std::time::Duration;

use super::backoff::{Backoff, Jitter, Schedule};
use crate::Error;

/// When and how often to retry: attempts, exponential delays, jitter and a deadline.
///
/// A small `Copy` value: set it once on the client with
/// [`IdempotentClientBuilder::retry_policy`](crate::IdempotentClientBuilder::retry_policy),
/// or per request with
/// [`IdempotentRequestBuilder::retry_policy`](crate::IdempotentRequestBuilder::retry_policy).
/// Setters never fail; an invalid combination is reported by [`RetryPolicy::validate`],
/// which the client calls before any I/O.
///
/// # Default
///
/// | setting | default | anchor |
/// |---|---|---|
/// | `max_attempts` | 3 (first attempt included) | AWS SDKs' standard mode |
/// | `initial_delay` | 500 ms | Stripe's client libraries |
/// | `multiplier` | 2.0 | AWS and Stripe |
/// | `max_delay` | 5 s | Stripe's client libraries |
/// | `jitter` | [`Jitter::Full`] | AWS SDKs, Brooker 2015 |
/// | `deadline` | 30 s for the whole operation, sleeps included | |
/// | `max_retry_after` | 10 s: a server asking for a longer wait is not waited on; the operation stops at once and says when to come back | |
/// | `throttled_initial_delay` | 1 s: the base after a throttling answer (429, 503 with `Retry-After`, 409 key in flight) that names no wait, since a server that throttles needs longer than a blip does | AWS Retry Behavior 2.1 |
/// | `jitter_seed` | none: each operation draws its own seed | |
///
/// [`RetryPolicy::exponential`] and [`RetryPolicy::default`] give these values.
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::{Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::exponential()
///     .max_attempts(4)
///     .initial_delay(Duration::from_millis(100))
///     .multiplier(2.0)
///     .max_delay(Duration::from_millis(300))
///     .jitter(Jitter::None);
/// let delays: Vec<Duration> = policy.delays().collect();
/// assert_eq!(delays, [100, 200, 300].map(Duration::from_millis));
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) initial_delay: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max_delay: Duration,
    pub(crate) jitter: Jitter,
    pub(crate) deadline: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) throttled_initial_delay: Duration,
    pub(crate) seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_millis(500),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: Jitter::Full,
            deadline: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(10),
            throttled_initial_delay: Duration::from_secs(1),
            seed: None,
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with the defaults listed above.
    pub fn exponential() -> Self {
        Self::default()
    }

    /// One attempt, no retries.
    ///
    /// ```
    /// use idempotent_retry::RetryPolicy;
    /// assert_eq!(RetryPolicy::none().delays().count(), 0);
    /// ```
    pub fn none() -> Self {
        Self::default().max_attempts(1)
    }

    /// Total attempts, the first one included (at least 1).
    ///
    /// ```
    /// use idempotent_retry::RetryPolicy;
    /// assert_eq!(RetryPolicy::exponential().max_attempts(5).delays().count(), 4);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The exponential delay before the first retry (at most `max_delay`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{Jitter, RetryPolicy};
    /// let policy = RetryPolicy::exponential()
    ///     .initial_delay(Duration::from_millis(20))
    ///     .jitter(Jitter::None);
    /// assert_eq!(policy.delays().next(), Some(Duration::from_millis(20)));
    /// ```
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Growth factor between consecutive delays (finite, at least 1.0).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{Jitter, RetryPolicy};
    /// let policy = RetryPolicy::exponential()
    ///     .max_attempts(3)
    ///     .initial_delay(Duration::from_millis(10))
    ///     .multiplier(3.0)
    ///     .jitter(Jitter::None);
    /// assert_eq!(policy.delays().last(), Some(Duration::from_millis(30)));
    /// ```
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Upper bound on any single backoff delay, jitter included.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::RetryPolicy;
    /// let policy = RetryPolicy::exponential()
    ///     .max_attempts(10)
    ///     .max_delay(Duration::from_secs(1));
    /// assert!(policy.delays().all(|d| d <= Duration::from_secs(1)));
    /// ```
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How delays are randomised; see [`Jitter`].
    ///
    /// ```
    /// use idempotent_retry::{Jitter, RetryPolicy};
    /// let policy = RetryPolicy::exponential().jitter(Jitter::Equal);
    /// # assert!(policy.validate().is_ok());
    /// ```
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Time budget for the whole operation, attempts and sleeps included. No sleep is
    /// started that would end past it, and an attempt's timeout shrinks to what remains.
    /// `Duration::MAX` means no deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{Jitter, RetryPolicy};
    /// let policy = RetryPolicy::exponential()
    ///     .max_attempts(10)
    ///     .initial_delay(Duration::from_millis(100))
    ///     .jitter(Jitter::None)
    ///     .deadline(Duration::from_millis(350));
    /// // 100 + 200 fit in 350 ms; 100 + 200 + 400 would not.
    /// assert_eq!(policy.delays().count(), 2);
    /// ```
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Longest `Retry-After` the client waits for within an operation. A server's
    /// `Retry-After` is a floor, never cut short: a longer one ends the operation at
    /// once ([`GiveUpReason::RetryAfterTooLong`](crate::GiveUpReason::RetryAfterTooLong)),
    /// and [`Error::retry_at`](crate::Error::retry_at) says when to send it again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::RetryPolicy;
    /// let policy = RetryPolicy::exponential().max_retry_after(Duration::from_secs(2));
    /// # assert!(policy.validate().is_ok());
    /// ```
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    /// The base delay after a *throttling* answer that names no wait of its own: a
    /// `429`, a `409` (the key is still in flight), or a `503` with `Retry-After`. The
    /// schedule is the same exponential one, grown from this base instead of
    /// `initial_delay`, and capped by `max_delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::RetryPolicy;
    /// let policy = RetryPolicy::exponential().throttled_initial_delay(Duration::from_secs(2));
    /// # assert!(policy.validate().is_ok());
    /// ```
    pub fn throttled_initial_delay(mut self, delay: Duration) -> Self {
        self.throttled_initial_delay = delay;
        self
    }

    /// Makes the jitter deterministic: every operation using this policy sees the same
    /// schedule. Meant for tests and simulations; in production, leave it unset so that
    /// clients that failed together do not retry together.
    ///
    /// ```
    /// use idempotent_retry::RetryPolicy;
    /// let policy = RetryPolicy::exponential().max_attempts(5).jitter_seed(42);
    /// assert_eq!(policy.delays().collect::<Vec<_>>(), policy.delays().collect::<Vec<_>>());
    /// ```
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks that the settings make sense together.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the setting when `max_attempts` is 0, `multiplier`
    /// is below 1.0 or not finite, `initial_delay` exceeds `max_delay`, or `deadline` is
    /// zero.
    pub fn validate(&self) -> Result<(), Error> {
        match self.field_problem() {
            None => Ok(()),
            Some(problem) => Err(Error::InvalidConfig {
                reason: format!("retry policy: {}", problem.replacen(':', "", 1)),
                source: None,
            }),
        }
    }

    /// What makes this policy unusable, as `field: what is wrong`.
    pub(crate) fn field_problem(&self) -> Option<&'static str> {
        if self.max_attempts == 0 {
            Some("max_attempts: must be at least 1")
        } else if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            Some("multiplier: must be finite and at least 1.0")
        } else if self.initial_delay > self.max_delay {
            Some("initial_delay: must not exceed max_delay")
        } else if self.deadline.is_zero() {
            Some("deadline: must be greater than zero")
        } else {
            None
        }
    }

    /// The sleeps this policy would make between attempts, if every attempt failed
    /// instantly: at most `max_attempts - 1` of them, and no more than fit in the deadline.
    ///
    /// Unseeded policies draw fresh jitter on every call. An invalid policy (see
    /// [`validate`](Self::validate)) still yields delays within `[0, max_delay]`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_retry::{Jitter, RetryPolicy};
    /// let policy = RetryPolicy::exponential().max_attempts(4).jitter(Jitter::Full);
    /// for (n, delay) in policy.delays().enumerate() {
    ///     let ceiling = Duration::from_millis(500) * 2u32.pow(n as u32);
    ///     assert!(delay <= ceiling);
    /// }
    /// ```
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: self.backoff(),
            remaining: self.max_attempts.saturating_sub(1),
            slept: Duration::ZERO,
            deadline: self.deadline,
        }
    }

    /// The delay generator for this policy's schedule.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(Schedule {
            initial: self.initial_delay,
            throttled_initial: self.throttled_initial_delay,
            multiplier: self.multiplier,
            max: self.max_delay,
            jitter: self.jitter,
            seed: self.seed,
        })
    }
}

/// The iterator returned by [`RetryPolicy::delays`].
#[derive(Clone, Debug)]
#[must_use = "iterators do nothing unless consumed"]
pub struct Delays {
    backoff: Backoff,
    remaining: u32,
    slept: Duration,
    deadline: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.remaining == 0 {
            return None;
        }
        let delay = self.backoff.next_delay();
        match self.slept.checked_add(delay) {
            Some(total) if total <= self.deadline => {
                self.slept = total;
                self.remaining -= 1;
                Some(delay)
            }
            _ => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

impl std::iter::FusedIterator for Delays {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let p = RetryPolicy::default();
        p.validate().unwrap();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.initial_delay, ms(500));
        assert_eq!(p.max_delay, ms(5000));
        assert_eq!(p.jitter, Jitter::Full);
        assert_eq!(p.deadline, Duration::from_secs(30));
        assert_eq!(RetryPolicy::exponential(), p);
    }

    #[test]
    fn validate_names_each_bad_setting() {
        let base = RetryPolicy::exponential();
        for (policy, needle) in [
            (base.max_attempts(0), "max_attempts"),
            (base.multiplier(0.5), "multiplier"),
            (base.multiplier(f64::NAN), "multiplier"),
            (base.multiplier(f64::INFINITY), "multiplier"),
            (base.initial_delay(ms(10)).max_delay(ms(5)), "initial_delay"),
            (base.deadline(Duration::ZERO), "deadline"),
        ] {
            let err = policy.validate().unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn invalid_policies_never_panic() {
        for m in [f64::NAN, f64::INFINITY, -3.0, 0.0, 1e300] {
            let p = RetryPolicy::exponential()
                .max_attempts(50)
                .multiplier(m)
                .deadline(Duration::MAX);
            for jitter in [
                Jitter::None,
                Jitter::Full,
                Jitter::Equal,
                Jitter::Decorrelated,
            ] {
                assert!(p.jitter(jitter).delays().all(|d| d <= p.max_delay));
            }
        }
        let huge = RetryPolicy::exponential()
            .max_attempts(u32::MAX)
            .initial_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .deadline(Duration::MAX);
        // The first delay is the whole deadline; a second would overflow the sum and stops
        // the schedule instead of panicking.
        let delays: Vec<_> = huge.jitter(Jitter::None).delays().collect();
        assert_eq!(delays, [Duration::MAX]);
    }

    #[test]
    fn none_jitter_exact_sequence() {
        let p = RetryPolicy::exponential()
            .max_attempts(6)
            .initial_delay(ms(100))
            .multiplier(2.0)
            .max_delay(ms(1000))
            .jitter(Jitter::None)
            .deadline(Duration::MAX);
        let got: Vec<_> = p.delays().collect();
        assert_eq!(got, [100, 200, 400, 800, 1000].map(ms));
    }

    #[test]
    fn unseeded_schedules_differ() {
        let p = RetryPolicy::exponential()
            .max_attempts(20)
            .deadline(Duration::MAX);
        let a: Vec<_> = p.delays().collect();
        let b: Vec<_> = p.delays().collect();
        assert_ne!(a, b);
    }

    fn jitter_strategy() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    prop_compose! {
        fn policies()(
            attempts in 1u32..40,
            initial in 0u64..2_000,
            extra in 0u64..20_000,
            multiplier in 1.0f64..4.0,
            jitter in jitter_strategy(),
            deadline in 1u64..200_000,
            seed in any::<u64>(),
        ) -> RetryPolicy {
            RetryPolicy::exponential()
                .max_attempts(attempts)
                .initial_delay(ms(initial))
                .max_delay(ms(initial + extra))
                .multiplier(multiplier)
                .jitter(jitter)
                .deadline(ms(deadline))
                .jitter_seed(seed)
        }
    }

    /// Exponential delay for retry `n` (1-based) computed with integer arithmetic only.
    fn exact(initial: Duration, multiplier: u32, max: Duration, n: u32) -> Duration {
        let mut d = initial;
        for _ in 1..n {
            d = d.saturating_mul(multiplier);
            if d >= max {
                return max;
            }
        }
        d.min(max)
    }

    proptest! {
        #[test]
        fn no_jitter_values_are_exact(
            attempts in 1u32..30,
            initial in 0u64..5_000,
            extra in 0u64..100_000,
            multiplier in 1u32..5,
        ) {
            let (initial, max) = (ms(initial), ms(initial + extra));
            let p = RetryPolicy::exponential()
                .max_attempts(attempts)
                .initial_delay(initial)
                .max_delay(max)
                .multiplier(f64::from(multiplier))
                .jitter(Jitter::None)
                .deadline(Duration::MAX);
            let got: Vec<_> = p.delays().collect();
            let want: Vec<_> = (1..attempts).map(|n| exact(initial, multiplier, max, n)).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn each_jitter_stays_in_its_bounds(p in policies()) {
            let unjittered: Vec<_> = p.jitter(Jitter::None).delays().collect();
            let mut previous = p.initial_delay;
            for (n, delay) in p.delays().enumerate() {
                prop_assert!(delay <= p.max_delay);
                // With no jitter the schedule is `d` itself; when the deadline cut that
                // schedule short, fall back to the formula's value.
                let d = unjittered.get(n).copied().unwrap_or_else(|| {
                    let base = p.initial_delay.as_nanos() as f64 * p.multiplier.powi(n as i32);
                    if base >= p.max_delay.as_nanos() as f64 { p.max_delay }
                    else { Duration::from_nanos(base as u64) }
                });
                match p.jitter {
                    Jitter::None => prop_assert_eq!(delay, d),
                    Jitter::Full => prop_assert!(delay <= d),
                    Jitter::Equal => prop_assert!(delay >= d / 2 && delay <= d),
                    Jitter::Decorrelated => {
                        let high = (previous * 3).max(p.initial_delay).min(p.max_delay);
                        prop_assert!(delay >= p.initial_delay && delay <= high,
                            "{delay:?} outside [{:?}, {high:?}]", p.initial_delay);
                    }
                }
                previous = delay;
            }
        }

        #[test]
        fn same_seed_same_schedule(p in policies()) {
            let a: Vec<_> = p.delays().collect();
            let b: Vec<_> = p.delays().collect();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn never_above_max_delay_nor_count(p in policies()) {
            let delays: Vec<_> = p.delays().collect();
            prop_assert!(delays.len() < p.max_attempts as usize);
            prop_assert!(delays.iter().all(|d| *d <= p.max_delay));
        }

        #[test]
        fn sleeps_never_sum_past_deadline(p in policies()) {
            let total: Duration = p.delays().sum();
            prop_assert!(total <= p.deadline);
        }
    }
}
