//! Hedging: when an attempt has no answer after a delay, another attempt with the
//! *same key* starts beside it, and the first final answer wins. The key makes it safe:
//! a server that honours it executes the operation once, answering the later request
//! with the stored result, or with `409` while the first is still in flight (which the
//! client waits out, never returns).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;

/// Settings of hedging (opt-in, per client with
/// [`IdempotentClientBuilder::hedging`](crate::IdempotentClientBuilder::hedging), or per
/// request with
/// [`IdempotentRequestBuilder::hedging`](crate::IdempotentRequestBuilder::hedging)).
///
/// When an attempt has no answer after `delay`, another attempt with the same key
/// starts (on a second connection pool when the crate built the reqwest client, so a
/// stalled connection does not hold the hedge too); the first final answer wins and the
/// others are dropped. At most `max_hedges` per operation, paid from a per-origin hedge
/// bucket (10 tokens, +0.05 per hedged operation, −1 per hedge: about 5 % extra load at
/// most); none while the origin's circuit is not closed, after a throttling answer in
/// the operation, or without a rate-limiter token; no retry starts while an attempt is
/// in flight. Every attempt started counts: [`attempts`](crate::IdempotentResponse::attempts)
/// includes hedges, and an error after dropped attempts is outcome-unknown.
///
/// GET, HEAD, PUT and DELETE hedge when hedging is on. POST and PATCH only with
/// `keyed_methods(true)`, which is safe only against a server that answers `409` to a
/// second request while the first with the same key is still in flight, on every
/// backend (Stripe does; the IETF draft says SHOULD): a server that does not could run a
/// POST twice.
///
/// # Default
///
/// | setting | default | why |
/// |---|---|---|
/// | `max_hedges` | 1 | one hedge halves a tail caused by one slow server; more multiply load for little (gRPC A6 allows up to 5) |
/// | `keyed_methods` | `false` | POST and PATCH hedge only when you vouch for the server (see above) |
///
/// ```
/// use std::time::Duration;
/// use idempotent_retry::{Hedging, IdempotentClient};
///
/// let client = IdempotentClient::builder()
///     .hedging(Hedging::after(Duration::from_millis(200)).max_hedges(1).keyed_methods(true))
///     .build()?;
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct Hedging {
    pub(crate) delay: Duration,
    pub(crate) max_hedges: u32,
    pub(crate) keyed_methods: bool,
}

/// What a configuration table starts from before its fields are read: no delay, which
/// the table's check refuses (`delay` must be given).
impl Default for Hedging {
    fn default() -> Self {
        Self::after(Duration::ZERO)
    }
}

impl Hedging {
    /// Hedging that starts another attempt when one has no answer after `delay` (which
    /// must be more than zero and less than the attempt timeout).
    pub fn after(delay: Duration) -> Self {
        Self {
            delay,
            max_hedges: 1,
            keyed_methods: false,
        }
    }

    /// The most hedges one operation may start, at least 1.
    pub fn max_hedges(mut self, hedges: u32) -> Self {
        self.max_hedges = hedges;
        self
    }

    /// Whether POST and PATCH hedge too (see above for when that is safe).
    pub fn keyed_methods(mut self, on: bool) -> Self {
        self.keyed_methods = on;
        self
    }

    /// Whether an operation with this method hedges.
    pub(crate) fn covers(&self, method: &Method) -> bool {
        match *method {
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE => true,
            Method::POST | Method::PATCH => self.keyed_methods,
            _ => false,
        }
    }

    /// The first setting out of range, named as in a configuration file (relative to
    /// hedging's own table). `timeout`: the attempt timeout the delay must stay below,
    /// and its name, when it is known (a configuration table is read before it is).
    pub(crate) fn problem(&self, timeout: Option<(Duration, &str)>) -> Option<String> {
        if self.delay.is_zero() {
            return Some("delay must be more than zero, such as \"200ms\"".to_owned());
        }
        if let Some((timeout, name)) = timeout.filter(|(t, _)| self.delay >= *t) {
            return Some(format!(
                "delay ({:?}) must be less than {name} ({timeout:?})",
                self.delay
            ));
        }
        if self.max_hedges == 0 {
            return Some("max_hedges must be at least 1".to_owned());
        }
        None
    }
}

/// Thousandths of a token: the bucket holds 10 tokens.
const CAPACITY: u64 = 10_000;
/// Each hedged operation adds 0.05 of a token.
const DEPOSIT: u64 = 50;
/// Each hedge takes one.
const COST: u64 = 1_000;

/// One origin's hedge bucket and figures.
#[derive(Debug)]
pub(crate) struct HedgeBucket {
    millitokens: AtomicU64,
    sent: AtomicU64,
    won: AtomicU64,
}

impl HedgeBucket {
    pub(crate) fn new() -> Self {
        Self {
            millitokens: AtomicU64::new(CAPACITY),
            sent: AtomicU64::new(0),
            won: AtomicU64::new(0),
        }
    }

    /// A hedged operation starts: a little back into the bucket. A full bucket (the
    /// common case) is only read, not written, so that operations on many threads do
    /// not take turns at its cache line.
    pub(crate) fn deposit(&self) {
        if self.millitokens.load(Ordering::Relaxed) >= CAPACITY {
            return;
        }
        let _ = self
            .millitokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((t + DEPOSIT).min(CAPACITY))
            });
    }

    /// Takes a token for a hedge, if there is one.
    pub(crate) fn try_take(&self) -> bool {
        let taken = self
            .millitokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(COST))
            .is_ok();
        if taken {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// A hedge's answer won.
    pub(crate) fn count_win(&self) {
        self.won.fetch_add(1, Ordering::Relaxed);
    }

    /// Hedges sent and hedges whose answer won.
    pub(crate) fn figures(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.won.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_that_hedge() {
        let plain = Hedging::after(Duration::from_millis(50));
        for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
            assert!(plain.covers(&method), "{method}");
        }
        assert!(!plain.covers(&Method::POST) && !plain.covers(&Method::PATCH));
        let keyed = plain.keyed_methods(true);
        assert!(keyed.covers(&Method::POST) && keyed.covers(&Method::PATCH));
        assert!(!keyed.covers(&Method::OPTIONS));
    }

    #[test]
    fn the_bucket_allows_about_five_percent_extra() {
        let bucket = HedgeBucket::new();
        // Ten hedges from a full bucket, then none until deposits add up to a token.
        for _ in 0..10 {
            assert!(bucket.try_take());
        }
        assert!(!bucket.try_take());
        for _ in 0..19 {
            bucket.deposit();
        }
        assert!(!bucket.try_take(), "19 operations give 0.95 of a token");
        bucket.deposit();
        assert!(bucket.try_take(), "20 operations give one: 5 %");
        assert_eq!(bucket.figures(), (11, 0));
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let timeout = Some((Duration::from_secs(1), "attempt_timeout"));
        let ok = Hedging::after(Duration::from_millis(200));
        assert_eq!(ok.problem(timeout), None);
        let long = Hedging::after(Duration::from_secs(1))
            .problem(timeout)
            .unwrap();
        assert_eq!(long, "delay (1s) must be less than attempt_timeout (1s)");
        assert_eq!(Hedging::after(Duration::from_secs(1)).problem(None), None);
        assert!(Hedging::after(Duration::ZERO).problem(timeout).is_some());
        assert!(Hedging::after(Duration::ZERO).problem(None).is_some());
        let none = ok.max_hedges(0).problem(timeout).unwrap();
        assert!(none.starts_with("max_hedges"), "{none}");
    }
}
