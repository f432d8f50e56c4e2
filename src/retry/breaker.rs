//! The circuit breaker of one origin: a sliding window of attempt outcomes that opens
//! the circuit when too many fail, a break during which sends stop before any I/O, then
//! a few probes that close it again or reopen it for longer.
//!
//! The state machine takes the time as an argument (`now`), so tests drive every
//! transition with made-up instants: no clock, no sleep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::info;

use crate::telemetry::TARGET;

/// Settings of the per-origin circuit breaker (opt-in, through
/// [`IdempotentClientBuilder::circuit_breaker`](crate::IdempotentClientBuilder::circuit_breaker)).
///
/// Failures are the attempts the classifier retries as transient (timeouts, lost
/// connections, 5xx); throttling answers (429, 503 with `Retry-After`, 409) stay out of
/// the window, and any other answer is a success. Once the window holds at least
/// `minimum_throughput` outcomes and the share of failures reaches `failure_ratio`, the
/// circuit opens for `break_duration`: sends to that origin stop before any I/O. Then it
/// is half-open: `half_open_probes` attempts go through; when all succeed it closes
/// with a fresh window and the break goes back to `break_duration`; a failure opens it
/// again with the break doubled, up to `max_break_duration`.
///
/// # Default
///
/// | setting | default | why |
/// |---|---|---|
/// | `failure_ratio` | 0.5 | resilience4j's `failureRateThreshold` (50 %): half the attempts failing is a sick origin, not bad luck |
/// | `minimum_throughput` | 20 | Polly and resilience4j use 100 for busy services; 20 lets a client sending a few operations a second notice an outage within seconds, and no fewer than 20 keeps two unlucky timeouts from opening it |
/// | `sampling_window` | 2 s | how fast a full outage trips it: the window's successes from before the outage must be outweighed, which takes about window ÷ (1 + retries per operation), a second here; resilience4j counts the last 100 calls, about as fast at 100 calls a second; Polly's 30 s would take a quarter of a minute |
/// | `break_duration` | 5 s | Polly's `BreakDuration` |
/// | `half_open_probes` | 1 | Polly's single trial call: one request tells whether the origin is back, at the least cost to it |
/// | `max_break_duration` | 60 s | resilience4j's `waitDurationInOpenState`: a long outage is probed once a minute |
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::{CircuitBreaker, IdempotentClient};
///
/// let client = IdempotentClient::builder()
///     .circuit_breaker(
///         CircuitBreaker::new()
///             .failure_ratio(0.5)
///             .minimum_throughput(20)
///             .sampling_window(Duration::from_secs(2))
///             .break_duration(Duration::from_secs(5))
///             .half_open_probes(1)
///             .max_break_duration(Duration::from_secs(60)),
///     )
///     .build()?;
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct CircuitBreaker {
    pub(crate) failure_ratio: f64,
    pub(crate) minimum_throughput: u32,
    pub(crate) sampling_window: Duration,
    pub(crate) break_duration: Duration,
    pub(crate) half_open_probes: u32,
    pub(crate) max_break_duration: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            minimum_throughput: 20,
            sampling_window: Duration::from_secs(2),
            break_duration: Duration::from_secs(5),
            half_open_probes: 1,
            max_break_duration: Duration::from_secs(60),
        }
    }
}

impl CircuitBreaker {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// The share of failed attempts in the window that opens the circuit, in (0, 1].
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.failure_ratio = ratio;
        self
    }

    /// Outcomes the window must hold before it may open the circuit, at least 1.
    pub fn minimum_throughput(mut self, outcomes: u32) -> Self {
        self.minimum_throughput = outcomes;
        self
    }

    /// How far back the window looks, more than zero (kept in ten slices: an outcome
    /// leaves the window between 0.9 and 1 window after it happened).
    pub fn sampling_window(mut self, window: Duration) -> Self {
        self.sampling_window = window;
        self
    }

    /// How long the circuit stays open the first time, more than zero.
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
    }

    /// Attempts let through at once while half-open, at least 1; all must succeed to
    /// close the circuit.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// The longest break: each reopening doubles the break up to this, at least
    /// `break_duration`.
    pub fn max_break_duration(mut self, duration: Duration) -> Self {
        self.max_break_duration = duration;
        self
    }

    /// The first setting out of range, named as in a configuration file (relative to
    /// the breaker's own table).
    pub(crate) fn problem(&self) -> Option<String> {
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Some(format!(
                "failure_ratio must be in (0, 1], got {}",
                self.failure_ratio
            ));
        }
        if self.minimum_throughput == 0 {
            return Some("minimum_throughput must be at least 1".to_owned());
        }
        if self.sampling_window.is_zero() {
            return Some("sampling_window must be more than zero".to_owned());
        }
        if self.break_duration.is_zero() {
            return Some("break_duration must be more than zero".to_owned());
        }
        if self.half_open_probes == 0 {
            return Some("half_open_probes must be at least 1".to_owned());
        }
        if self.max_break_duration < self.break_duration {
            return Some(format!(
                "max_break_duration ({:?}) must be at least break_duration ({:?})",
                self.max_break_duration, self.break_duration
            ));
        }
        None
    }
}

/// The state of an origin's circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Sends go through; outcomes are counted.
    Closed,
    /// Sends are refused before any I/O, until the break ends (or, if opened by hand,
    /// until [`close_circuit`](crate::IdempotentClient::close_circuit)).
    Open,
    /// A few probes go through; the others are refused.
    HalfOpen,
}

/// How an attempt counts for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An answer the origin gave as a healthy origin would.
    Success,
    /// An outcome the classifier retries as transient.
    Failure,
    /// A throttling answer: the origin is alive and asks for less; not counted.
    Neutral,
}

/// What the circuit says of one attempt about to be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go; report the outcome with [`Circuit::record`].
    Go,
    /// Go as one of the half-open probes; report the outcome with [`Circuit::record`],
    /// or [`Circuit::release`] the slot if the attempt never ends.
    Probe,
    /// Do not send.
    Refused,
}

/// Slices of the sliding window.
const SLICES: usize = 10;

/// Outcomes in one slice of the window.
#[derive(Clone, Copy, Debug, Default)]
struct Slice {
    /// Which slice of time since the circuit's start these counts belong to.
    index: u64,
    successes: u32,
    failures: u32,
}

/// `d` in whole nanoseconds as u64 (584 years), which divide far faster than u128.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The sliding window: outcomes in [`SLICES`] slices of time, and their sums over the
/// slices in the window that ends at the newest slice counted.
#[derive(Clone, Copy, Debug)]
struct Window {
    slots: [Slice; SLICES],
    /// The slice the sums end at; `u64::MAX` before the first count.
    newest: u64,
    failures: u64,
    total: u64,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            slots: [Slice::default(); SLICES],
            newest: u64::MAX,
            failures: 0,
            total: 0,
        }
    }
}

impl Window {
    /// Counts `verdict` in slice `index`, and gives the failures and the outcomes in the
    /// window that ends there.
    fn count(&mut self, index: u64, verdict: Verdict) -> (u64, u64) {
        // The slots are indexed by time modulo their number; a slot holding an older
        // slice is reset.
        let slot = &mut self.slots[(index % SLICES as u64) as usize];
        if slot.index != index {
            *slot = Slice {
                index,
                ..Slice::default()
            };
        }
        let failed = u64::from(verdict == Verdict::Failure);
        let counted = u64::from(verdict != Verdict::Neutral);
        slot.failures += failed as u32;
        slot.successes += (counted - failed) as u32;
        if index == self.newest {
            // The same slice as the last count (the common case under load): the sums
            // take this outcome alone.
            self.failures += failed;
            self.total += counted;
        } else {
            // Another slice: the sums start again from the slices in its window.
            let oldest = index.saturating_sub(SLICES as u64 - 1);
            let live = self
                .slots
                .iter()
                .filter(|s| s.index >= oldest && s.index <= index);
            (self.failures, self.total) = live.fold((0, 0), |(f, t), s| {
                let f = f + u64::from(s.failures);
                (f, t + u64::from(s.failures) + u64::from(s.successes))
            });
            self.newest = index;
        }
        (self.failures, self.total)
    }
}

#[derive(Debug)]
enum State {
    Closed,
    /// `until`: when it turns half-open; `None` when opened by hand.
    Open {
        until: Option<Instant>,
    },
    HalfOpen {
        in_flight: u32,
        passed: u32,
    },
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// The break the next opening lasts.
    next_break: Duration,
    window: Window,
}

/// One origin's circuit. `config` is `None` for a circuit made by a manual open on a
/// client without a breaker: it opens and closes by hand only.
#[derive(Debug)]
pub(crate) struct Circuit {
    config: Option<CircuitBreaker>,
    /// The origin, for the events that report changes.
    origin: Box<str>,
    /// The start of the window's time slices.
    epoch: Instant,
    /// The width of one slice, in nanoseconds (at least 1).
    slice_nanos: u64,
    /// Whether the state is `Closed`, kept beside it under the lock and read without
    /// it: a closed circuit admits an attempt without locking.
    closed: AtomicBool,
    inner: Mutex<Inner>,
}

impl Circuit {
    pub(crate) fn new(config: Option<CircuitBreaker>, origin: &str, now: Instant) -> Self {
        let next_break = config.as_ref().map_or(Duration::ZERO, |c| c.break_duration);
        let slice_nanos = config
            .as_ref()
            .map_or(1, |c| nanos(c.sampling_window / SLICES as u32).max(1));
        Self {
            config,
            origin: origin.into(),
            epoch: now,
            slice_nanos,
            closed: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                state: State::Closed,
                next_break,
                window: Window::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the state consistent: a poison flag says nothing.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state (under the lock, which `inner` is) and its lock-free mirror.
    fn set_state(&self, inner: &mut Inner, state: State) {
        self.closed
            .store(matches!(state, State::Closed), Ordering::Release);
        inner.state = state;
    }

    /// The state now (an open circuit whose break has ended reads half-open).
    pub(crate) fn state(&self, now: Instant) -> CircuitState {
        if self.closed.load(Ordering::Acquire) {
            return CircuitState::Closed;
        }
        match self.lock().state {
            State::Closed => CircuitState::Closed,
            State::Open { until: Some(until) } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// How long until an open circuit's break ends, if it is open for a known time.
    pub(crate) fn reopens_in(&self, now: Instant) -> Option<Duration> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        match self.lock().state {
            State::Open { until: Some(until) } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    /// May an attempt go now?
    pub(crate) fn admit(&self, now: Instant) -> Admission {
        // (An attempt racing the circuit's opening may go, as it would have a moment
        // earlier.)
        if self.closed.load(Ordering::Acquire) {
            return Admission::Go;
        }
        let mut inner = self.lock();
        if let State::Open { until: Some(until) } = inner.state {
            if now >= until {
                let half_open = State::HalfOpen {
                    in_flight: 0,
                    passed: 0,
                };
                self.set_state(&mut inner, half_open);
                info!(target: TARGET, origin = %self.origin, "circuit half-open");
            }
        }
        let probes = self.config.as_ref().map_or(1, |c| c.half_open_probes);
        match &mut inner.state {
            State::Closed => Admission::Go,
            State::Open { .. } => Admission::Refused,
            State::HalfOpen { in_flight, passed } if *in_flight + *passed < probes => {
                *in_flight += 1;
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Refused,
        }
    }

    /// Counts the outcome of an attempt that `admit` let go (`probe`: as a probe).
    pub(crate) fn record(&self, probe: bool, verdict: Verdict, now: Instant) {
        let Some(config) = &self.config else {
            return;
        };
        let mut inner = self.lock();
        if probe {
            self.record_probe(&mut inner, config, verdict, now);
        } else if let State::Closed = inner.state {
            self.record_closed(&mut inner, config, verdict, now);
        }
        // An ordinary attempt that ends while the circuit is open or half-open (it was
        // sent before the circuit opened) is not counted: the probes decide.
    }

    /// Frees the slot of a probe that will never report (its future was dropped).
    pub(crate) fn release(&self) {
        if let State::HalfOpen { in_flight, .. } = &mut self.lock().state {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn record_probe(
        &self,
        inner: &mut Inner,
        config: &CircuitBreaker,
        verdict: Verdict,
        now: Instant,
    ) {
        let State::HalfOpen { in_flight, passed } = &mut inner.state else {
            return;
        };
        *in_flight = in_flight.saturating_sub(1);
        match verdict {
            Verdict::Success => {
                *passed += 1;
                if *passed >= config.half_open_probes {
                    self.reset_closed(inner);
                    info!(target: TARGET, origin = %self.origin, "circuit closed");
                }
            }
            Verdict::Failure => {
                let break_for = inner.next_break;
                self.open(inner, config, break_for, now);
            }
            // A throttled probe says the origin is up but busy: its slot goes to the next.
            Verdict::Neutral => {}
        }
    }

    fn record_closed(
        &self,
        inner: &mut Inner,
        config: &CircuitBreaker,
        verdict: Verdict,
        now: Instant,
    ) {
        if verdict == Verdict::Neutral {
            return;
        }
        let index = nanos(now.saturating_duration_since(self.epoch)) / self.slice_nanos;
        let (failures, total) = inner.window.count(index, verdict);
        let ratio = failures as f64 / total.max(1) as f64;
        if total >= u64::from(config.minimum_throughput) && ratio >= config.failure_ratio {
            let break_for = config.break_duration;
            self.open(inner, config, break_for, now);
        }
    }

    /// Opens the circuit for `break_for`; the next opening lasts twice as long, up to
    /// the cap.
    fn open(&self, inner: &mut Inner, config: &CircuitBreaker, break_for: Duration, now: Instant) {
        let open = State::Open {
            until: now.checked_add(break_for),
        };
        self.set_state(inner, open);
        inner.next_break = break_for.saturating_mul(2).min(config.max_break_duration);
        info!(
            target: TARGET,
            origin = %self.origin,
            break_ms = u64::try_from(break_for.as_millis()).unwrap_or(u64::MAX),
            "circuit opened"
        );
    }

    /// Opens the circuit until [`close`](Self::close).
    pub(crate) fn open_by_hand(&self) {
        self.set_state(&mut self.lock(), State::Open { until: None });
        info!(target: TARGET, origin = %self.origin, "circuit opened by hand");
    }

    /// Closes the circuit with a fresh window and the first break.
    pub(crate) fn close(&self) {
        self.reset_closed(&mut self.lock());
        info!(target: TARGET, origin = %self.origin, "circuit closed by hand");
    }

    /// Closed, with a fresh window and the first break (under the lock, which `inner`
    /// is).
    fn reset_closed(&self, inner: &mut Inner) {
        self.set_state(inner, State::Closed);
        inner.window = Window::default();
        if let Some(config) = &self.config {
            inner.next_break = config.break_duration;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_windows_running_sums_match_a_sum_over_its_slices() {
        // Slices forward, mostly the same one, sometimes a jump past the window and
        // sometimes one back (a clock read taken before another's count).
        let mut rng = crate::rng::SplitMix64::new(18);
        let mut window = Window::default();
        let mut index = 0u64;
        for step in 0..20_000 {
            index = match rng.next_u64() % 20 {
                0 => index + 1 + rng.next_u64() % 15,
                1 => index.saturating_sub(1),
                _ => index,
            };
            let verdict = match rng.next_u64() % 3 {
                0 => Verdict::Failure,
                1 => Verdict::Success,
                _ => Verdict::Neutral,
            };
            let got = window.count(index, verdict);
            let oldest = index.saturating_sub(SLICES as u64 - 1);
            let want = window
                .slots
                .iter()
                .filter(|s| s.index >= oldest && s.index <= index)
                .fold((0, 0), |(f, t), s| {
                    (
                        f + u64::from(s.failures),
                        t + u64::from(s.failures + s.successes),
                    )
                });
            assert_eq!(got, want, "step {step}, slice {index}");
        }
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new()
            .failure_ratio(0.5)
            .minimum_throughput(4)
            .sampling_window(Duration::from_secs(10))
            .break_duration(Duration::from_secs(5))
            .half_open_probes(2)
            .max_break_duration(Duration::from_secs(18))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A circuit whose time starts at `t0`.
    fn circuit() -> (Circuit, Instant) {
        let t0 = Instant::now();
        (Circuit::new(Some(breaker()), "http://a", t0), t0)
    }

    fn go(c: &Circuit, verdict: Verdict, at: Instant) {
        assert_eq!(c.admit(at), Admission::Go);
        c.record(false, verdict, at);
    }

    #[test]
    fn opens_at_the_ratio_only_past_the_minimum_throughput() {
        let (c, t0) = circuit();
        // Three failures: 100 % failed, but fewer than four outcomes.
        for _ in 0..3 {
            go(&c, Verdict::Failure, t0);
        }
        assert_eq!(c.state(t0), CircuitState::Closed);
        // The fourth outcome, a success: 3 of 4 failed, past 0.5.
        go(&c, Verdict::Success, t0);
        assert_eq!(c.state(t0), CircuitState::Open);
        assert_eq!(c.admit(t0 + ms(4_999)), Admission::Refused);
    }

    #[test]
    fn below_the_ratio_it_stays_closed() {
        let (c, t0) = circuit();
        for i in 0..100 {
            let verdict = if i % 3 == 2 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            go(&c, verdict, t0 + ms(i));
        }
        assert_eq!(c.state(t0 + ms(100)), CircuitState::Closed);
    }

    #[test]
    fn throttling_stays_out_of_the_window() {
        let (c, t0) = circuit();
        for _ in 0..50 {
            go(&c, Verdict::Neutral, t0);
        }
        go(&c, Verdict::Failure, t0);
        go(&c, Verdict::Failure, t0);
        go(&c, Verdict::Success, t0);
        assert_eq!(
            c.state(t0),
            CircuitState::Closed,
            "3 counted outcomes, below 4"
        );
        go(&c, Verdict::Success, t0);
        assert_eq!(c.state(t0), CircuitState::Open, "2 of 4 failed: the ratio");
    }

    #[test]
    fn the_window_forgets_old_failures() {
        let (c, t0) = circuit();
        for _ in 0..3 {
            go(&c, Verdict::Failure, t0);
        }
        // Ten seconds later those three have left the window: one more failure is one
        // outcome, not four.
        let later = t0 + Duration::from_secs(10);
        go(&c, Verdict::Failure, later);
        assert_eq!(c.state(later), CircuitState::Closed);
        // Within the window they still count.
        let (c, t0) = circuit();
        for _ in 0..3 {
            go(&c, Verdict::Failure, t0);
        }
        go(&c, Verdict::Failure, t0 + ms(8_999));
        assert_eq!(c.state(t0 + ms(8_999)), CircuitState::Open);
    }

    fn opened() -> (Circuit, Instant) {
        let (c, t0) = circuit();
        for _ in 0..4 {
            go(&c, Verdict::Failure, t0);
        }
        assert_eq!(c.state(t0), CircuitState::Open);
        (c, t0)
    }

    #[test]
    fn after_the_break_probes_go_and_all_must_pass_to_close() {
        let (c, t0) = opened();
        let t = t0 + Duration::from_secs(5);
        assert_eq!(c.state(t), CircuitState::HalfOpen);
        assert_eq!(c.admit(t), Admission::Probe);
        assert_eq!(c.admit(t), Admission::Probe);
        assert_eq!(c.admit(t), Admission::Refused, "two probes at most");
        c.record(true, Verdict::Success, t);
        assert_eq!(c.admit(t), Admission::Refused, "one passed, one in flight");
        c.record(true, Verdict::Success, t);
        assert_eq!(c.state(t), CircuitState::Closed);
        assert_eq!(c.admit(t), Admission::Go);
    }

    #[test]
    fn a_failed_probe_reopens_with_the_break_doubled_up_to_the_cap() {
        let (c, t0) = opened();
        let mut t = t0;
        for expected in [5, 10, 18, 18] {
            // The break that just started lasts `expected` seconds.
            let end = t + Duration::from_secs(expected);
            assert_eq!(c.admit(end - ms(1)), Admission::Refused, "{expected}");
            assert_eq!(c.admit(end), Admission::Probe, "{expected}");
            c.record(true, Verdict::Failure, end);
            t = end;
        }
        // A success after all that closes it and resets the break to 5 s.
        let end = t + Duration::from_secs(18);
        assert_eq!(c.admit(end), Admission::Probe);
        assert_eq!(c.admit(end), Admission::Probe);
        c.record(true, Verdict::Success, end);
        c.record(true, Verdict::Success, end);
        for _ in 0..4 {
            go(&c, Verdict::Failure, end);
        }
        assert_eq!(c.admit(end + ms(4_999)), Admission::Refused);
        assert_eq!(c.admit(end + ms(5_000)), Admission::Probe, "back to 5 s");
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let (c, t0) = opened();
        let t = t0 + Duration::from_secs(5);
        assert_eq!(c.admit(t), Admission::Probe);
        assert_eq!(c.admit(t), Admission::Probe);
        assert_eq!(c.admit(t), Admission::Refused);
        c.release();
        assert_eq!(c.admit(t), Admission::Probe, "the slot came back");
    }

    #[test]
    fn a_throttled_probe_gives_its_slot_to_the_next() {
        let (c, t0) = opened();
        let t = t0 + Duration::from_secs(5);
        assert_eq!(c.admit(t), Admission::Probe);
        c.record(true, Verdict::Neutral, t);
        assert_eq!(c.state(t), CircuitState::HalfOpen);
        assert_eq!(c.admit(t), Admission::Probe);
    }

    #[test]
    fn an_attempt_from_before_the_opening_is_not_counted() {
        let (c, t0) = opened();
        let t = t0 + Duration::from_secs(5);
        assert_eq!(c.admit(t), Admission::Probe);
        // A slow attempt admitted while closed ends now, a success: the probe decides.
        c.record(false, Verdict::Success, t);
        assert_eq!(c.state(t), CircuitState::HalfOpen);
    }

    #[test]
    fn by_hand_it_holds_until_closed_by_hand() {
        for config in [None, Some(breaker())] {
            let t0 = Instant::now();
            let c = Circuit::new(config, "http://a", t0);
            c.open_by_hand();
            let much_later = t0 + Duration::from_secs(3_600);
            assert_eq!(c.admit(much_later), Admission::Refused);
            assert_eq!(c.state(much_later), CircuitState::Open);
            c.close();
            assert_eq!(c.admit(much_later), Admission::Go);
        }
        // Without a breaker, outcomes are not counted: it never opens by itself.
        let t0 = Instant::now();
        let c = Circuit::new(None, "http://a", t0);
        for _ in 0..100 {
            go(&c, Verdict::Failure, t0);
        }
        assert_eq!(c.state(t0), CircuitState::Closed);
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let cases = [
            (CircuitBreaker::new().failure_ratio(0.0), "failure_ratio"),
            (CircuitBreaker::new().failure_ratio(1.5), "failure_ratio"),
            (
                CircuitBreaker::new().failure_ratio(f64::NAN),
                "failure_ratio",
            ),
            (
                CircuitBreaker::new().minimum_throughput(0),
                "minimum_throughput",
            ),
            (
                CircuitBreaker::new().sampling_window(Duration::ZERO),
                "sampling_window",
            ),
            (
                CircuitBreaker::new().break_duration(Duration::ZERO),
                "break_duration",
            ),
            (
                CircuitBreaker::new().half_open_probes(0),
                "half_open_probes",
            ),
            (
                CircuitBreaker::new().max_break_duration(Duration::from_secs(1)),
                "max_break_duration",
            ),
        ];
        for (config, field) in cases {
            let problem = config.problem().unwrap_or_default();
            assert!(problem.starts_with(field), "{problem}");
        }
        assert_eq!(CircuitBreaker::new().problem(), None);
        assert_eq!(CircuitBreaker::new().failure_ratio(1.0).problem(), None);
    }
}
