//! What a client's clones share: its reqwest pools, its settings and its journal.

use std::sync::OnceLock;
use std::time::Duration;

use crate::journaled::settings::JournalSettings;
use crate::settings::Settings;

/// The state behind an [`IdempotentClient`](crate::IdempotentClient) handle.
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    /// The total timeout built into `http`, when we built it: attempts with exactly
    /// this timeout leave it unset on the request, which spares reqwest a per-request
    /// extension map.
    pub(crate) http_timeout: Option<Duration>,
    /// A second pool for hedges, when we built `http`: made with the client when it
    /// hedges, or at the first hedge of a request that hedges on its own.
    pub(crate) hedge_http: OnceLock<reqwest::Client>,
    pub(crate) settings: Settings,
    /// The operation journal and what goes with it, for requests with an operation id.
    pub(crate) journal: Option<Box<JournalSettings>>,
}

impl Inner {
    /// The pool a hedge goes through: a second one when we built `http`, so that a
    /// stalled connection (or an HTTP/2 connection stalled for all its streams) does
    /// not hold the hedge too; the caller's own client otherwise. Should the second
    /// pool fail to build (the TLS backend, which built the first one already), the
    /// hedge shares the first.
    pub(crate) fn hedge_pool(&self) -> &reqwest::Client {
        let Some(timeout) = self.http_timeout else {
            return &self.http;
        };
        if let Some(pool) = self.hedge_http.get() {
            return pool;
        }
        match default_http(timeout) {
            // Two racing first hedges may both build one; the first kept is used.
            Ok(pool) => self.hedge_http.get_or_init(|| pool),
            Err(e) => {
                tracing::debug!(target: crate::telemetry::TARGET, error = %e, "hedging through the client's own pool");
                &self.http
            }
        }
    }
}

/// The reqwest client this crate builds: `timeout` on every request, and no redirects
/// (a 3xx is the operation's final answer: a 303 after a POST means it executed, and
/// a 307/308 would send body and key on to another URL).
pub(crate) fn default_http(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}
