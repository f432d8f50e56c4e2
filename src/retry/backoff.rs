//! The backoff generator: the exponential delay before each retry, jittered, capped,
//! and total over every input so that no policy can make it panic.

use std::time::Duration;

use crate::rng::SplitMix64;

/// How a backoff delay is randomised, after Brooker, "Exponential Backoff And Jitter"
/// (AWS Architecture Blog, 2015). `d` is the exponential delay for the retry,
/// `min(max_delay, initial_delay × multiplier^(n-1))`.
///
/// # Default
///
/// [`Jitter::Full`]: in Brooker's simulations it makes the fewest calls while finishing
/// about as fast as the others, and it spreads clients that failed together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `d`. Clients that failed together retry together.
    None,
    /// Uniform in `[0, d]`.
    #[default]
    Full,
    /// `d/2` plus uniform in `[0, d/2]`: never shorter than half the delay.
    Equal,
    /// Uniform in `[initial_delay, 3 × previous delay]`, capped at `max_delay`. Ignores
    /// `multiplier`: growth comes from the factor 3 on the previous sleep.
    Decorrelated,
}

/// What the generator draws from: a policy's delays and jitter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) initial: Duration,
    /// The first delay after a throttling answer that named no wait.
    pub(crate) throttled_initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: Jitter,
    /// `None`: a seed from the process's entropy.
    pub(crate) seed: Option<u64>,
}

/// The unbounded delay generator behind `Delays` and the retry loop.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    retry: i32,
    initial: f64,
    /// The base after a throttling answer that named no wait.
    throttled_initial: f64,
    multiplier: f64,
    max: Duration,
    jitter: Jitter,
    previous: Duration,
    rng: SplitMix64,
}

impl Backoff {
    pub(crate) fn new(schedule: Schedule) -> Self {
        Self {
            retry: 0,
            initial: schedule.initial.as_nanos() as f64,
            throttled_initial: schedule.throttled_initial.as_nanos() as f64,
            multiplier: schedule.multiplier,
            max: schedule.max,
            jitter: schedule.jitter,
            previous: schedule.initial.min(schedule.max),
            rng: schedule
                .seed
                .map_or_else(SplitMix64::from_entropy, SplitMix64::new),
        }
    }

    /// The delay before the next retry (the first call gives the delay before retry 1).
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next(self.initial)
    }

    /// The delay before the next retry after a throttling answer that named no wait:
    /// the same schedule, from `throttled_initial_delay`.
    pub(crate) fn next_throttled_delay(&mut self) -> Duration {
        self.next(self.throttled_initial)
    }

    fn next(&mut self, initial: f64) -> Duration {
        let exponent = self.retry;
        self.retry = self.retry.saturating_add(1);
        let base = initial * self.multiplier.powi(exponent);
        let d = clamp(base, self.max).as_nanos() as f64;
        let nanos = match self.jitter {
            Jitter::None => d,
            Jitter::Full => d * self.rng.unit(),
            Jitter::Equal => d / 2.0 + d / 2.0 * self.rng.unit(),
            Jitter::Decorrelated => {
                let low = initial;
                let high = (self.previous.as_nanos() as f64 * 3.0).max(low);
                low + (high - low) * self.rng.unit()
            }
        };
        let delay = clamp(nanos, self.max);
        self.previous = delay;
        delay
    }
}

/// Nanoseconds to a `Duration` in `[0, max]`, total over every `f64` (NaN included), so
/// that no policy, valid or not, can make the schedule panic.
fn clamp(nanos: f64, max: Duration) -> Duration {
    if nanos.is_nan() || nanos >= max.as_nanos() as f64 {
        max
    } else if nanos <= 0.0 {
        Duration::ZERO
    } else {
        // `nanos` is below `max` here; `as` saturates rather than wraps.
        Duration::from_nanos(nanos as u64).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryPolicy;

    #[test]
    fn clamp_is_total() {
        let max = Duration::from_secs(5);
        assert_eq!(clamp(f64::NAN, max), max);
        assert_eq!(clamp(f64::INFINITY, max), max);
        assert_eq!(clamp(-1.0, max), Duration::ZERO);
        assert_eq!(clamp(1e9, max), Duration::from_secs(1));
        assert_eq!(clamp(1e30, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn throttled_delays_grow_from_their_own_base() {
        let policy = RetryPolicy::exponential()
            .initial_delay(Duration::from_millis(10))
            .throttled_initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1))
            .jitter(Jitter::None);
        let mut backoff = policy.backoff();
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
        assert_eq!(backoff.next_throttled_delay(), Duration::from_millis(200));
        assert_eq!(backoff.next_delay(), Duration::from_millis(40));
        assert_eq!(backoff.next_throttled_delay(), Duration::from_millis(800));
        assert_eq!(
            backoff.next_throttled_delay(),
            Duration::from_secs(1),
            "capped"
        );
    }
}
