//! What the engine reads, fixed when a client or middleware is built, and what one
//! request may set for itself instead.

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::breaker::CircuitBreaker;
use super::classify::{Attempt, Decision};
use super::hedging::Hedging;
use super::limiter::AdaptiveRateLimit;
use super::origins::Origins;
use super::policy::RetryPolicy;

/// A user's retry decision, in place of the default one.
pub(crate) type SharedClassifier = Arc<dyn Fn(&Attempt<'_>) -> Decision + Send + Sync>;

/// Called before each retry's sleep.
pub(crate) type RetryHook = Arc<dyn Fn(&Attempt<'_>, Duration) + Send + Sync>;

/// How to retry: the policy, the decision, and what holds back an origin.
pub(crate) struct RetrySettings {
    pub(crate) policy: RetryPolicy,
    pub(crate) classifier: Option<SharedClassifier>,
    pub(crate) on_retry: Option<RetryHook>,
    /// Where the server's own say on retrying is read, if anywhere.
    pub(crate) should_retry_header: Option<HeaderName>,
    /// Per-origin state: the retry budget, circuit, limiter and hedge bucket of each.
    pub(crate) origins: Origins,
    /// The circuit breaker's settings, when the client has one.
    pub(crate) breaker: Option<CircuitBreaker>,
    /// Hedging, when the client hedges.
    pub(crate) hedging: Option<Hedging>,
    /// The adaptive rate limiter's settings, when the client has one.
    pub(crate) limiter: Option<AdaptiveRateLimit>,
    /// Whether the key goes on `info` and `warn` events and on the span too.
    pub(crate) log_keys: bool,
}

/// What one request sets for itself instead of the client's settings. Boxed where it is
/// kept: an override is rare, and the operation's state stays small.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    /// A retry policy for this request.
    pub(crate) policy: Option<RetryPolicy>,
    /// `Some(Some(h))`: hedge with `h`; `Some(None)`: do not hedge; `None`: as the
    /// client does.
    pub(crate) hedging: Option<Option<Hedging>>,
}

impl Overrides {
    /// The policy of an operation with these overrides on a client with `settings`.
    pub(crate) fn policy<'s>(
        overrides: Option<&'s Self>,
        settings: &'s RetrySettings,
    ) -> &'s RetryPolicy {
        overrides
            .and_then(|o| o.policy.as_ref())
            .unwrap_or(&settings.policy)
    }

    /// The hedging of an operation with these overrides on a client with `settings`.
    pub(crate) fn hedging<'s>(
        overrides: Option<&'s Self>,
        settings: &'s RetrySettings,
    ) -> Option<&'s Hedging> {
        match overrides.and_then(|o| o.hedging.as_ref()) {
            Some(own) => own.as_ref(),
            None => settings.hedging.as_ref(),
        }
    }
}
