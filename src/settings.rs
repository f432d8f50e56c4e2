//! What the client, the middleware and configuration files share: how to key an
//! operation and how to retry it.

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
    /// Whether the key goes on `info` and `warn` events and on the span too.
    pub(crate) log_keys: bool,
    /// The operation journal, for requests with an operation id.
    pub(crate) journal: Option<Box<crate::journaled::JournalSettings>>,
}
