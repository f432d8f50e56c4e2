//! Adaptive rate limiting of one origin: AWS's client-side rate limiter ("adaptive"
//! retry mode), a token bucket whose rate follows a CUBIC curve. Off until the origin
//! first throttles; then every attempt, first ones included, takes a token; a throttle
//! cuts the rate, successes grow it back.
//!
//! The state machine takes the time as an argument (`now`), so tests drive it with
//! made-up instants.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A throttle multiplies the rate by this (CUBIC's β, as AWS uses it).
const BETA: f64 = 0.7;
/// How fast the rate grows back along the cubic (CUBIC's C, as AWS uses it).
const SCALE: f64 = 0.4;
/// Weight of the newest half-second in the measured sending rate.
const SMOOTH: f64 = 0.8;
/// The lowest rate the limiter goes to, per second.
const MIN_FILL_RATE: f64 = 0.5;
/// The smallest bucket.
const MIN_CAPACITY: f64 = 1.0;

/// Settings of the per-origin adaptive rate limiter (opt-in, through
/// [`IdempotentClientBuilder::adaptive_rate_limit`](crate::IdempotentClientBuilder::adaptive_rate_limit)).
///
/// It is AWS's client rate limiter: off until an origin first answers with throttling
/// (429, or 503 with `Retry-After`); from then on every attempt to that origin, first
/// attempts included, takes a token from a bucket whose rate a throttle cuts to 70 % of
/// what the client was sending and successes grow back along a cubic curve (the CUBIC
/// congestion-control constants β 0.7 and C 0.4, the sending rate measured over
/// half-second slices and smoothed 0.8, never below 0.5 per second). The wait for a
/// token counts against the operation's deadline; if it would be longer than
/// `max_wait`, the operation stops before any I/O with
/// [`Error::is_rate_limited`](crate::Error::is_rate_limited).
///
/// As AWS warns of its own: the limiter is per origin and shared by the client's
/// clones, so one throttled origin slows every caller of that origin in the process.
///
/// # Default
///
/// | setting | default | why |
/// |---|---|---|
/// | `max_wait` | 10 s | the default attempt timeout: a caller who would wait longer than an attempt may take for a turn is better told at once (AWS's SDKs wait without a bound, or fail at once when told to) |
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::{AdaptiveRateLimit, IdempotentClient};
///
/// let client = IdempotentClient::builder()
///     .adaptive_rate_limit(AdaptiveRateLimit::new().max_wait(Duration::from_secs(5)))
///     .build()?;
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct AdaptiveRateLimit {
    pub(crate) max_wait: Duration,
}

impl Default for AdaptiveRateLimit {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(10),
        }
    }
}

impl AdaptiveRateLimit {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest wait for a token; a longer one ends the operation before any I/O.
    /// Zero: never wait, fail at once when there is no token.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }
}

/// What the limiter says of an attempt about to be sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Turn {
    /// A token taken: go now.
    Now,
    /// No token yet: ask again after this wait (nothing is set aside, so that the
    /// waits follow the rate as it changes, as AWS's bucket does).
    After(Duration),
    /// No token within `max_wait` (the wait it would take); nothing was set aside.
    Refused(Duration),
}

#[derive(Debug)]
struct State {
    /// Off until the first throttle.
    enabled: bool,
    /// Tokens per second.
    fill_rate: f64,
    max_capacity: f64,
    /// May go below zero: tokens set aside for attempts that wait.
    capacity: f64,
    /// When the bucket was last filled, in seconds since the limiter's start.
    last_fill: f64,
    /// The sending rate, measured over half-second slices and smoothed.
    measured_rate: f64,
    /// The start of the current half-second slice.
    slice_start: f64,
    /// Attempts in the current slice.
    slice_count: u64,
    /// The rate when the last throttle came.
    last_max_rate: f64,
    last_throttle: f64,
    /// The time the cubic takes to climb back to `last_max_rate`.
    time_window: f64,
}

/// One origin's limiter.
#[derive(Debug)]
pub(crate) struct Limiter {
    epoch: Instant,
    /// Whether the origin ever throttled: read without the lock, so that an origin
    /// that never did costs its attempts no lock to ask for a turn.
    on: AtomicBool,
    state: Mutex<State>,
}

impl Limiter {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            epoch: now,
            on: AtomicBool::new(false),
            state: Mutex::new(State::off()),
        }
    }

    fn seconds(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.epoch).as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section leaves the state consistent: a poison flag says nothing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token for one attempt, waiting at most `max_wait` for it.
    pub(crate) fn acquire(&self, max_wait: Duration, now: Instant) -> Turn {
        // (An attempt racing the first throttle may go without a token, as it would
        // have had it asked a moment earlier.)
        if !self.on.load(Ordering::Acquire) {
            return Turn::Now;
        }
        let t = self.seconds(now);
        let mut s = self.lock();
        s.refill(t);
        // A token, give or take the rounding of the waits that led here.
        if s.capacity >= 1.0 - 1e-9 {
            s.capacity = (s.capacity - 1.0).max(0.0);
            return Turn::Now;
        }
        // At least a millisecond: a wait rounded down to nothing would ask again at
        // once, and again, until the clock moves.
        let wait = Duration::try_from_secs_f64((1.0 - s.capacity) / s.fill_rate)
            .unwrap_or(Duration::MAX)
            .max(Duration::from_millis(1));
        if wait > max_wait {
            return Turn::Refused(wait);
        }
        Turn::After(wait)
    }

    /// Counts an attempt's outcome (`throttled`: 429, or 503 with `Retry-After`) and
    /// sets the rate from it.
    pub(crate) fn update(&self, throttled: bool, now: Instant) {
        let t = self.seconds(now);
        let mut s = self.lock();
        s.measure(t);
        let measured = s.sending_rate(t);
        let rate = if throttled {
            let rate_to_use = if s.enabled {
                measured.min(s.fill_rate)
            } else {
                measured
            };
            s.last_max_rate = rate_to_use;
            s.time_window = time_window(rate_to_use);
            s.last_throttle = t;
            s.enabled = true;
            self.on.store(true, Ordering::Release);
            rate_to_use * BETA
        } else {
            s.time_window = time_window(s.last_max_rate);
            s.cubic_success(t)
        };
        let rate = rate.min(2.0 * measured);
        s.set_rate(rate, t);
    }

    /// The rate now, tokens per second; `None` while off.
    pub(crate) fn rate(&self) -> Option<f64> {
        let s = self.lock();
        s.enabled.then_some(s.fill_rate)
    }
}

/// How long the cubic takes to climb from the cut back to `max_rate`.
fn time_window(max_rate: f64) -> f64 {
    (max_rate * (1.0 - BETA) / SCALE).cbrt()
}

impl State {
    fn off() -> Self {
        Self {
            enabled: false,
            fill_rate: 0.0,
            max_capacity: 0.0,
            capacity: 0.0,
            last_fill: 0.0,
            measured_rate: 0.0,
            slice_start: 0.0,
            slice_count: 0,
            last_max_rate: 0.0,
            last_throttle: 0.0,
            time_window: 0.0,
        }
    }

    fn refill(&mut self, t: f64) {
        let fill = (t - self.last_fill).max(0.0) * self.fill_rate;
        self.capacity = (self.capacity + fill).min(self.max_capacity);
        self.last_fill = t;
    }

    fn set_rate(&mut self, rate: f64, t: f64) {
        self.refill(t);
        self.fill_rate = rate.max(MIN_FILL_RATE);
        self.max_capacity = rate.max(MIN_CAPACITY);
        self.capacity = self.capacity.min(self.max_capacity);
    }

    /// Counts one attempt in the current half-second slice; at a new slice, folds the
    /// last one's rate into the smoothed measure.
    fn measure(&mut self, t: f64) {
        let slice = (t * 2.0).floor() / 2.0;
        self.slice_count += 1;
        if slice > self.slice_start {
            let current = self.slice_count as f64 / (slice - self.slice_start);
            self.measured_rate = current * SMOOTH + self.measured_rate * (1.0 - SMOOTH);
            self.slice_count = 0;
            self.slice_start = slice;
        }
    }

    /// The sending rate to cut from: the smoothed measure, or, before the first
    /// half-second has been measured, the rate of the current slice so far. (AWS's
    /// limiter starts from a measure of zero, so a throttle in the first half second
    /// drops it to the floor, 0.5 per second, from which it takes seconds to climb back:
    /// a departure from AWS, made on purpose.)
    fn sending_rate(&self, t: f64) -> f64 {
        if self.measured_rate > 0.0 {
            return self.measured_rate;
        }
        // At least 50 ms of slice, so that one early request is not a huge rate.
        self.slice_count as f64 / (t - self.slice_start).max(0.05)
    }

    /// The rate `t` seconds after the limiter's start, on the cubic through the last
    /// throttle.
    fn cubic_success(&self, t: f64) -> f64 {
        let dt = t - self.last_throttle;
        SCALE * (dt - self.time_window).powi(3) + self.last_max_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(limiter: &Limiter, seconds: f64) -> Instant {
        limiter.epoch + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn the_cubic_follows_aws_published_figures() {
        // AWS's test case: the last throttle at t = 5 s with the rate at 10/s, then
        // successes at t = 5, 6, 7, ... seconds.
        let mut s = State::off();
        s.last_max_rate = 10.0;
        s.last_throttle = 5.0;
        s.time_window = time_window(10.0);
        let expected = [
            (5.0, 7.0),
            (6.0, 9.64893600966),
            (7.0, 10.000030849917364),
            (8.0, 10.453284520772092),
            (9.0, 13.408697022224185),
            (10.0, 21.26626835427364),
            (11.0, 36.425998516920465),
        ];
        for (t, rate) in expected {
            let got = s.cubic_success(t);
            assert!((got - rate).abs() < 1e-9, "t = {t}: {got} vs {rate}");
        }
        // A throttle cuts to 70 %.
        assert!((10.0 * BETA - 7.0).abs() < 1e-12);
        assert!((time_window(10.0) - 7.5f64.cbrt()).abs() < 1e-12);
    }

    #[test]
    fn off_until_the_first_throttle() {
        let limiter = Limiter::new(Instant::now());
        for i in 0..1_000 {
            let now = at(&limiter, f64::from(i) * 0.001);
            assert_eq!(limiter.acquire(Duration::ZERO, now), Turn::Now);
            limiter.update(false, now);
        }
        assert_eq!(limiter.rate(), None);
    }

    /// A limiter that has measured `per_second` attempts a second for two seconds and
    /// then been throttled, at t = 2 s.
    fn throttled_at(per_second: u32) -> Limiter {
        let limiter = Limiter::new(Instant::now());
        let n = 2 * per_second;
        for i in 0..n {
            let t = f64::from(i) / f64::from(per_second);
            limiter.update(false, at(&limiter, t));
        }
        limiter.update(true, at(&limiter, 2.0));
        limiter
    }

    #[test]
    fn a_throttle_cuts_the_rate_to_seventy_percent_of_what_was_sent() {
        let limiter = throttled_at(20);
        let rate = limiter.rate().expect("on after a throttle");
        // The measured rate converges on 20/s (smoothed 0.8 per half second).
        assert!((rate - 0.7 * 20.0).abs() < 0.5, "{rate}");
    }

    #[test]
    fn the_bucket_holds_attempts_to_the_rate() {
        let limiter = throttled_at(20);
        let rate = limiter.rate().unwrap();
        let mut t = 2.0;
        // Whatever the bucket held is used up first; then one token per 1/rate: each
        // attempt that is told to wait gets its token when it asks again after it.
        while limiter.acquire(Duration::ZERO, at(&limiter, t)) == Turn::Now {}
        let mut sent = 0;
        while sent < 30 {
            match limiter.acquire(Duration::from_secs(60), at(&limiter, t)) {
                Turn::Now => sent += 1,
                Turn::After(wait) => {
                    assert!(wait.as_secs_f64() <= 1.0 / rate + 1e-3, "{wait:?}");
                    t += wait.as_secs_f64();
                }
                Turn::Refused(_) => panic!("within a minute"),
            }
        }
        // 30 tokens at `rate` a second, give or take the one the bucket held.
        let took = t - 2.0;
        assert!(
            (took * rate - 30.0).abs() <= 1.0 + 1e-6,
            "{took} s at {rate}/s"
        );
    }

    #[test]
    fn a_wait_past_max_wait_is_refused_and_sets_nothing_aside() {
        let limiter = throttled_at(4);
        let t = at(&limiter, 2.0);
        while limiter.acquire(Duration::ZERO, t) == Turn::Now {}
        let Turn::Refused(wait) = limiter.acquire(Duration::ZERO, t) else {
            panic!("no token and no wait allowed");
        };
        // Refusing took nothing, and neither does a wait: the same wait again.
        assert_eq!(limiter.acquire(Duration::ZERO, t), Turn::Refused(wait));
        assert!(matches!(limiter.acquire(wait, t), Turn::After(w) if w == wait));
        assert!(matches!(limiter.acquire(wait, t), Turn::After(w) if w == wait));
    }

    #[test]
    fn a_throttle_in_the_first_half_second_cuts_from_what_is_being_sent() {
        // 40 requests in the first 100 ms (400 a second), then a 429.
        let limiter = Limiter::new(Instant::now());
        for i in 0..40 {
            limiter.update(false, at(&limiter, f64::from(i) * 0.0025));
        }
        limiter.update(true, at(&limiter, 0.1));
        let rate = limiter.rate().unwrap();
        // 41 requests over 0.1 s, cut to 70 %; not the 0.5 floor.
        assert!((rate - 0.7 * 410.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn successes_grow_the_rate_back_and_it_never_falls_below_the_floor() {
        let limiter = throttled_at(20);
        let cut = limiter.rate().unwrap();
        // Successes at 20/s for ten seconds after the throttle.
        for i in 0..200 {
            let t = 2.0 + f64::from(i) / 20.0;
            limiter.update(false, at(&limiter, t));
        }
        let grown = limiter.rate().unwrap();
        assert!(grown > cut, "{grown} after {cut}");
        // Throttled over and over with nothing sent: down to the floor, not to zero.
        for i in 0..50 {
            limiter.update(true, at(&limiter, 20.0 + f64::from(i) * 10.0));
        }
        assert_eq!(limiter.rate(), Some(MIN_FILL_RATE));
    }
}
