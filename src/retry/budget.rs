//! The *rate cap*: a token bucket shared by every operation of one client, so that a
//! failing dependency sees a bounded amount of retry traffic.

use std::sync::atomic::{AtomicU32, Ordering};

/// A retry budget: a token bucket shared by all operations of one client, after the
/// AWS SDKs' "standard" retry mode and gRPC's retry throttling.
///
/// Each retry withdraws [`retry_cost`](Self::retry_cost) tokens, or
/// [`timeout_cost`](Self::timeout_cost) when the failed attempt timed out (a timeout
/// holds server resources longer than a quick error). Each operation that ends with a
/// response the classifier calls final deposits [`success_refund`](Self::success_refund)
/// tokens, up to the capacity. When the bucket cannot pay for a retry, the operation
/// stops with [`GiveUpReason::BudgetExhausted`](crate::GiveUpReason::BudgetExhausted)
/// instead of retrying. First attempts are never throttled.
///
/// # Default
///
/// AWS's numbers: capacity 500, retry cost 5, timeout cost 10, refund 1 per success.
/// A healthy client therefore stays full, while a dependency that fails everything gets
/// at most 100 retries (50 after timeouts) from a full bucket before the client stops
/// retrying until successes refill it.
///
/// ```
/// use idempotent_retry::{IdempotentClient, RetryBudget};
///
/// let client = IdempotentClient::builder()
///     .retry_budget(RetryBudget::new().capacity(100).retry_cost(10))
///     .build()?;
/// # Ok::<(), idempotent_retry::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct RetryBudget {
    pub(crate) capacity: u32,
    pub(crate) retry_cost: u32,
    pub(crate) timeout_cost: u32,
    pub(crate) success_refund: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            capacity: 500,
            retry_cost: 5,
            timeout_cost: 10,
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
            retry_cost: 0,
            timeout_cost: 0,
            success_refund: 0,
        }
    }

    /// Tokens in a full bucket; the bucket starts full.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().capacity(50);
    /// ```
    pub fn capacity(mut self, tokens: u32) -> Self {
        self.capacity = tokens;
        self
    }

    /// Tokens one retry costs after an error other than a timeout.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().retry_cost(2);
    /// ```
    pub fn retry_cost(mut self, tokens: u32) -> Self {
        self.retry_cost = tokens;
        self
    }

    /// Tokens one retry costs after an attempt that timed out.
    ///
    /// ```
    /// use idempotent_retry::RetryBudget;
    /// let budget = RetryBudget::new().timeout_cost(20);
    /// ```
    pub fn timeout_cost(mut self, tokens: u32) -> Self {
        self.timeout_cost = tokens;
        self
    }

    /// Tokens returned to the bucket when an operation ends with a final response.
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

/// The live bucket. Lock-free: the success path is one atomic add when there is room.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    config: RetryBudget,
    tokens: AtomicU32,
}

impl TokenBucket {
    pub(crate) fn new(config: RetryBudget) -> Self {
        Self {
            config,
            tokens: AtomicU32::new(config.capacity),
        }
    }

    /// Pays for one retry; `false` (and nothing withdrawn) when the bucket can't afford it.
    pub(crate) fn try_withdraw(&self, after_timeout: bool) -> bool {
        let cost = if after_timeout {
            self.config.timeout_cost
        } else {
            self.config.retry_cost
        };
        if cost == 0 {
            return true;
        }
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
            .is_ok()
    }

    pub(crate) fn deposit(&self) {
        let (refund, cap) = (self.config.success_refund, self.config.capacity);
        if refund == 0 || self.tokens.load(Ordering::Relaxed) >= cap {
            return;
        }
        // Err only means the bucket filled up meanwhile, which is the state we want.
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < cap).then(|| t.saturating_add(refund).min(cap))
            });
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> u32 {
        self.tokens.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empties_and_refills() {
        let bucket = TokenBucket::new(RetryBudget::new().capacity(10).retry_cost(5));
        assert!(bucket.try_withdraw(false));
        assert!(bucket.try_withdraw(false));
        assert!(!bucket.try_withdraw(false));
        assert_eq!(bucket.available(), 0);
        for _ in 0..5 {
            bucket.deposit();
        }
        assert!(bucket.try_withdraw(false));
        assert!(!bucket.try_withdraw(false));
    }

    #[test]
    fn timeouts_cost_more() {
        let bucket = TokenBucket::new(RetryBudget::new().capacity(15));
        assert!(bucket.try_withdraw(true));
        assert_eq!(bucket.available(), 5);
        assert!(!bucket.try_withdraw(true));
        assert!(bucket.try_withdraw(false));
    }

    #[test]
    fn unlimited_never_refuses() {
        let bucket = TokenBucket::new(RetryBudget::unlimited());
        assert!((0..10_000).all(|i| bucket.try_withdraw(i % 2 == 0)));
    }

    #[test]
    fn shared_across_threads_never_overdraws() {
        let bucket = std::sync::Arc::new(TokenBucket::new(RetryBudget::new().capacity(1000)));
        let granted: usize = (0..4)
            .map(|_| {
                let b = bucket.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.try_withdraw(false)).count())
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
            let bucket = TokenBucket::new(RetryBudget::new().capacity(cap).success_refund(3));
            for op in ops {
                match op {
                    0 => { bucket.try_withdraw(false); }
                    1 => { bucket.try_withdraw(true); }
                    _ => bucket.deposit(),
                }
                prop_assert!(bucket.available() <= cap);
            }
        }
    }
}
