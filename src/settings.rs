//! What the client and the middleware share: how to key an operation, how long an
//! attempt may take, and how to retry it (the engine's part, [`RetrySettings`]).

use std::time::Duration;

use http::header::HeaderName;

use crate::retry::breaker::CircuitState;
use crate::retry::origins::OriginStats;
use crate::retry::settings::RetrySettings;
use crate::{Error, KeyFormat};

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

/// How to key and how to retry, fixed when a client or middleware is built.
pub(crate) struct Settings {
    /// What the engine reads.
    pub(crate) retry: RetrySettings,
    pub(crate) attempt_timeout: Duration,
    /// The longest answer body read; a longer one ends the operation.
    pub(crate) max_response_bytes: usize,
    pub(crate) key_header: HeaderName,
    pub(crate) key_format: KeyFormat,
}

/// The circuit methods, shared by the client and the middleware.
impl Settings {
    pub(crate) fn circuit_state(&self, url: &str) -> Result<CircuitState, Error> {
        Ok(self.retry.origins.circuit_state(&parse_url(url)?))
    }

    pub(crate) fn open_circuit(&self, url: &str) -> Result<(), Error> {
        self.retry
            .origins
            .open_circuit(&parse_url(url)?, self.retry.breaker.as_ref());
        Ok(())
    }

    pub(crate) fn origin_stats(&self, url: &str) -> Result<OriginStats, Error> {
        Ok(self.retry.origins.stats(&parse_url(url)?))
    }

    pub(crate) fn close_circuit(&self, url: &str) -> Result<(), Error> {
        self.retry.origins.close_circuit(&parse_url(url)?);
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
