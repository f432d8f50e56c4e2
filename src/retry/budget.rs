//! The *rate cap*: a token bucket per origin, shared by every operation of one client to
//! that origin, so that a failing dependency sees a bounded amount of retry traffic and
//! a healthy one is not held back by it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

/// A retry budget: a token bucket per origin (scheme, host and port of the URL you
/// give), shared by a client and its clones, after the AWS SDKs' retry behavior 2.1
/// and gRPC's retry throttling. One sick dependency drains its own bucket only: retries
/// to every other origin go on.
///
/// Each retry withdraws [`transient_cost`](Self::transient_cost) tokens after a
/// transient failure (a timeout, a lost connection, a 5xx without `Retry-After`), or
/// [`throttling_cost`](Self::throttling_cost) after a throttling answer (429, 409, 503
/// with `Retry-After`). An operation that succeeds after retrying gives the cost of its
/// last retry back; one that succeeds at its first attempt adds
/// [`success_refund`](Self::success_refund), up to the capacity. "Succeeds" means a
/// final answer that is not 5xx, 408 or 429. When the bucket cannot pay for a retry,
/// the operation stops with
/// [`GiveUpReason::BudgetExhausted`](crate::GiveUpReason::BudgetExhausted). First
/// attempts are never held back by it.
///
/// # Default
///
/// AWS retry behavior 2.1: capacity 500, transient cost 14, throttling cost 5, 1 token
/// per first-attempt success. A dependency that fails everything gets at most 35 retries
/// after transient failures (100 after throttling) from a full bucket before retries to
/// it stop until successes refill it; a healthy one stays full.
///
/// ```
/// use idempotent_retry::{IdempotentClient, RetryBudget};
///
/// let client = IdempotentClient::builder()
///     .retry_budget(RetryBudget::new().capacity(100).transient_cost(10))
///     .build()?;
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct RetryBudget {
    pub(crate) capacity: u32,
    pub(crate) transient_cost: u32,
    pub(crate) throttling_cost: u32,
    pub(crate) success_refund: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            capacity: 500,
            transient_cost: 14,
            throttling_cost: 5,
            success_refund: 1,
        }
    }
}

impl RetryBudget {
    /// The default budget (see `# Default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// A budget that never runs out: retries are limited only by the policy.
    ///
    /// ```
    /// use idempotent_retry::{IdempotentClient, RetryBudget};
    /// let client = IdempotentClient::builder().retry_budget(RetryBudget::unlimited()).build()?;
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn unlimited() -> Self {
        Self {
            capacity: 0,
            transient_cost: 0,
            throttling_cost: 0,
            success_refund: 0,
        }
    }

    /// Tokens in a full bucket; each origin's bucket starts full.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().capacity(50);
    /// ```
    pub fn capacity(mut self, tokens: u32) -> Self {
        self.capacity = tokens;
        self
    }

    /// Tokens one retry costs after a transient failure or a timeout.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().transient_cost(10);
    /// ```
    pub fn transient_cost(mut self, tokens: u32) -> Self {
        self.transient_cost = tokens;
        self
    }

    /// Tokens one retry costs after a throttling answer.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().throttling_cost(2);
    /// ```
    pub fn throttling_cost(mut self, tokens: u32) -> Self {
        self.throttling_cost = tokens;
        self
    }

    /// Tokens an operation that succeeds at its first attempt gives the bucket.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().success_refund(5);
    /// ```
    pub fn success_refund(mut self, tokens: u32) -> Self {
        self.success_refund = tokens;
        self
    }
}

/// The live bucket of one origin. Lock-free: paying and refunding are one atomic
/// update each. It keeps a count shared by every bucket of a client up to date: how
/// many are below capacity, so that a client whose buckets are all full (nothing has
/// failed) skips the refund's lookup altogether.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: u32,
    tokens: AtomicU32,
    below_full: Arc<AtomicUsize>,
    /// This bucket's place in `below_full`: [`UNCOUNTED`], [`COUNTED`] or
    /// [`DETACHED`]. Every change of the count goes through it, so a bucket is counted
    /// at most once, and a forgotten one never again.
    counted: AtomicU8,
}

/// Full: not in the shared count.
const UNCOUNTED: u8 = 0;
/// Below capacity: in the shared count, once.
const COUNTED: u8 = 1;
/// Forgotten by its client (evicted): out of the count for good, whatever an
/// operation still holding it does to it.
const DETACHED: u8 = 2;

impl TokenBucket {
    /// A full bucket, counted in `below_full` whenever it is not.
    pub(crate) fn new(capacity: u32, below_full: Arc<AtomicUsize>) -> Self {
        Self {
            capacity,
            tokens: AtomicU32::new(capacity),
            below_full,
            counted: AtomicU8::new(UNCOUNTED),
        }
    }

    /// Counts this bucket as below capacity, unless it already is (or is detached).
    fn enter_count(&self) {
        if self
            .counted
            .compare_exchange(UNCOUNTED, COUNTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.below_full.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes this bucket out of the count, if it is in it.
    fn leave_count(&self) {
        if self
            .counted
            .compare_exchange(COUNTED, UNCOUNTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.below_full.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Pays `cost` for one retry; `false` (and nothing withdrawn) when the bucket can't
    /// afford it. A zero cost is always paid.
    pub(crate) fn try_withdraw(&self, cost: u32) -> bool {
        if cost == 0 {
            return true;
        }
        match self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
        {
            Ok(before) => {
                if before == self.capacity {
                    self.enter_count();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Gives `tokens` back, up to the capacity.
    pub(crate) fn deposit(&self, tokens: u32) {
        let cap = self.capacity;
        if tokens == 0 || self.tokens.load(Ordering::Relaxed) >= cap {
            return;
        }
        // Err only means the bucket filled up meanwhile, which is the state we want.
        let deposited = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < cap).then(|| t.saturating_add(tokens).min(cap))
            });
        if deposited.is_ok_and(|before| before.saturating_add(tokens) >= cap) {
            self.leave_count();
        }
    }

    /// Whether the bucket is below capacity.
    pub(crate) fn is_below_full(&self) -> bool {
        self.available() < self.capacity
    }

    /// Takes this bucket out of the count for good: its client forgets it (an
    /// evicted origin). An operation still holding it may pay or refill it later; the
    /// count, which the client's other buckets rely on, no longer moves for it.
    pub(crate) fn detach(&self) {
        if self.counted.swap(DETACHED, Ordering::AcqRel) == COUNTED {
            self.below_full.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Tokens in the bucket now.
    pub(crate) fn available(&self) -> u32 {
        self.tokens.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_shared_count_says_whether_any_bucket_is_below_capacity() {
        let count = Arc::new(AtomicUsize::new(0));
        let (a, b) = (
            TokenBucket::new(10, count.clone()),
            TokenBucket::new(10, count.clone()),
        );
        let below = || count.load(Ordering::Acquire);
        assert_eq!(below(), 0);
        assert!(a.try_withdraw(4));
        assert!(a.try_withdraw(4));
        assert!(b.try_withdraw(1));
        assert_eq!(below(), 2, "each counted once, however many withdrawals");
        a.deposit(4);
        assert_eq!(below(), 2, "still below capacity");
        a.deposit(100);
        b.deposit(1);
        assert_eq!(below(), 0, "both full again");
        a.detach();
        assert_eq!(below(), 0, "never below zero");
    }

    #[test]
    fn a_forgotten_bucket_refilled_later_leaves_the_count_to_the_others() {
        let count = Arc::new(AtomicUsize::new(0));
        let (evicted, other) = (
            TokenBucket::new(10, count.clone()),
            TokenBucket::new(10, count.clone()),
        );
        let below = || count.load(Ordering::Acquire);
        assert!(evicted.try_withdraw(5) && other.try_withdraw(5));
        assert_eq!(below(), 2);
        // Its origin is evicted while an operation still holds it and retries.
        evicted.detach();
        assert_eq!(below(), 1);
        assert!(evicted.try_withdraw(1), "the operation still pays");
        evicted.deposit(100);
        assert_eq!(below(), 1, "the other bucket is still below capacity");
        other.deposit(5);
        assert_eq!(below(), 0);
    }

    #[test]
    fn empties_and_refills() {
        let bucket = TokenBucket::new(10, Arc::default());
        assert!(bucket.try_withdraw(5));
        assert!(bucket.try_withdraw(5));
        assert!(!bucket.try_withdraw(5));
        assert_eq!(bucket.available(), 0);
        bucket.deposit(5);
        assert!(bucket.try_withdraw(5));
        assert!(!bucket.try_withdraw(5));
    }

    #[test]
    fn defaults_are_aws_retry_behavior_2_1() {
        let budget = RetryBudget::default();
        assert_eq!(
            (
                budget.capacity,
                budget.transient_cost,
                budget.throttling_cost,
                budget.success_refund
            ),
            (500, 14, 5, 1)
        );
        let bucket = TokenBucket::new(budget.capacity, Arc::default());
        let transient = (0..)
            .take_while(|_| bucket.try_withdraw(budget.transient_cost))
            .count();
        assert_eq!(transient, 35);
    }

    #[test]
    fn zero_costs_never_refuse() {
        let bucket = TokenBucket::new(0, Arc::default());
        assert!((0..10_000).all(|_| bucket.try_withdraw(0)));
    }

    #[test]
    fn shared_across_threads_never_overdraws() {
        let bucket = std::sync::Arc::new(TokenBucket::new(1000, Arc::default()));
        let granted: usize = (0..4)
            .map(|_| {
                let b = bucket.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.try_withdraw(5)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 200);
    }

    proptest! {
        #[test]
        fn tokens_stay_within_capacity(ops in proptest::collection::vec(0u8..3, 0..200), cap in 0u32..50) {
            let bucket = TokenBucket::new(cap, Arc::default());
            for op in ops {
                match op {
                    0 => { bucket.try_withdraw(5); }
                    1 => { bucket.try_withdraw(14); }
                    _ => bucket.deposit(3),
                }
                prop_assert!(bucket.available() <= cap);
            }
        }
    }
}
