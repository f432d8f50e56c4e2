//! The backoff generator: the exponential delay before each retry, jittered, capped,
//! and total over every input so that no policy can make it panic.

use std::time::Duration;

use super::policy::{Jitter, RetryPolicy};
use crate::rng::SplitMix64;

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
    pub(crate) fn new(policy: &RetryPolicy) -> Self {
        Self {
            retry: 0,
            initial: policy.initial_delay.as_nanos() as f64,
            throttled_initial: policy.throttled_initial_delay.as_nanos() as f64,
            multiplier: policy.multiplier,
            max: policy.max_delay,
            jitter: policy.jitter,
            previous: policy.initial_delay.min(policy.max_delay),
            rng: policy
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
        let mut backoff = Backoff::new(&policy);
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
