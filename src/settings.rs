//! What the client, the middleware and configuration files share: how to key an
//! operation and how to retry it.

use crate::Error;
use crate::retry::breaker::{CircuitBreaker, CircuitState};
use crate::retry::hedging::Hedging;
use crate::retry::limiter::AdaptiveRateLimit;
use crate::retry::origins::OriginStats;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use crate::retry::origins::Origins;
use crate::{Attempt, Decision, KeyFormat, RetryPolicy};

/// The header the key travels in unless [`IdempotentClientBuilder::key_header`] says
/// otherwise: `Idempotency-Key`, as in the IETF draft and Stripe's API.
///
/// [`IdempotentClientBuilder::key_header`]: crate::IdempotentClientBuilder::key_header
pub const DEFAULT_KEY_HEADER: &str = "idempotency-key";

/// The field in which a server says whether to retry an answer, as Stripe does.
pub(crate) const DEFAULT_SHOULD_RETRY_HEADER: &str = "stripe-should-retry";

/// Default time for one attempt, connect to last byte of the response.
pub(crate) const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound on one answer's body: far above any API answer, far below what would
/// hurt the caller's memory.
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A user's retry decision, in place of the default one.
pub(crate) type SharedClassifier = Arc<dyn Fn(&Attempt<'_>) -> Decision + Send + Sync>;

/// Called before each retry's sleep.
pub(crate) type RetryHook = Arc<dyn Fn(&Attempt<'_>, Duration) + Send + Sync>;

/// How to key and how to retry, fixed when a client or middleware is built.
pub(crate) struct Settings {
    pub(crate) policy: RetryPolicy,
    pub(crate) attempt_timeout: Duration,
    /// The longest answer body read; a longer one ends the operation.
    pub(crate) max_response_bytes: usize,
    pub(crate) key_header: HeaderName,
    pub(crate) key_format: KeyFormat,
    /// Where the server's own say on retrying is read, if anywhere.
    pub(crate) should_retry_header: Option<HeaderName>,
    /// Per-origin state: the retry budget of each origin.
    pub(crate) origins: Origins,
    pub(crate) classifier: Option<SharedClassifier>,
    pub(crate) on_retry: Option<RetryHook>,
    /// The circuit breaker's settings, when the client has one.
    pub(crate) breaker: Option<CircuitBreaker>,
    /// Hedging, when the client hedges.
    pub(crate) hedging: Option<Hedging>,
    /// The adaptive rate limiter's settings, when the client has one.
    pub(crate) limiter: Option<AdaptiveRateLimit>,
    /// Whether the key goes on `info` and `warn` events and on the span too.
    pub(crate) log_keys: bool,
    /// The operation journal, for requests with an operation id.
    pub(crate) journal: Option<Box<crate::journaled::JournalSettings>>,
}

/// The circuit methods, shared by the client and the middleware.
impl Settings {
    pub(crate) fn circuit_state(&self, url: &str) -> Result<CircuitState, Error> {
        Ok(self.origins.circuit_state(&parse_url(url)?))
    }

    pub(crate) fn open_circuit(&self, url: &str) -> Result<(), Error> {
        self.origins
            .open_circuit(&parse_url(url)?, self.breaker.as_ref());
        Ok(())
    }

    pub(crate) fn origin_stats(&self, url: &str) -> Result<OriginStats, Error> {
        Ok(self.origins.stats(&parse_url(url)?))
    }

    pub(crate) fn close_circuit(&self, url: &str) -> Result<(), Error> {
        self.origins.close_circuit(&parse_url(url)?);
        Ok(())
    }
}

/// `url` parsed, or [`Error::InvalidUrl`].
fn parse_url(url: &str) -> Result<reqwest::Url, Error> {
    reqwest::Url::parse(url).map_err(|e| Error::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}
