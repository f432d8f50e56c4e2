//! The client: a cheap handle on its reqwest client and settings.

use crate::telemetry::TARGET;
use std::fmt;
use std::sync::Arc;

use reqwest::{IntoUrl, Method};

use crate::inner::Inner;
use crate::{CircuitState, Error, IdempotentClientBuilder, IdempotentRequestBuilder};

/// An HTTP client whose requests carry one idempotency key per logical operation and
/// are retried safely with it.
///
/// Cheap to clone: clones share the connection pool and the retry budget. Build one and
/// reuse it, as with `reqwest::Client`.
///
/// ```
/// use idempotent_retry::IdempotentClient;
///
/// let client = IdempotentClient::new();
/// let request = client.post_idempotent("http://127.0.0.1:8080/orders");
/// # drop(request);
/// ```
#[derive(Clone)]
pub struct IdempotentClient {
    pub(crate) inner: Arc<Inner>,
}

impl IdempotentClient {
    /// A client with the defaults of [`IdempotentClientBuilder`].
    ///
    /// # Panics
    ///
    /// Like `reqwest::Client::new`, if the TLS backend cannot be initialised. Use
    /// [`IdempotentClient::builder`] to get that as an error instead.
    #[must_use]
    pub fn new() -> Self {
        match IdempotentClientBuilder::new().build() {
            Ok(client) => client,
            // The defaults are valid, so only reqwest's TLS initialisation can fail here,
            // where `reqwest::Client::new` panics too (see `# Panics`).
            Err(e) => panic!("could not build the default client: {e}"),
        }
    }

    /// A builder to configure the retry policy, timeouts, key header and more.
    pub fn builder() -> IdempotentClientBuilder {
        IdempotentClientBuilder::new()
    }

    /// Starts a `POST`: one logical operation, one key, retried with it.
    pub fn post_idempotent<U: IntoUrl>(&self, url: U) -> IdempotentRequestBuilder {
        self.request_idempotent(Method::POST, url)
    }

    /// Starts a `PUT`.
    pub fn put_idempotent<U: IntoUrl>(&self, url: U) -> IdempotentRequestBuilder {
        self.request_idempotent(Method::PUT, url)
    }

    /// Starts a `PATCH`.
    pub fn patch_idempotent<U: IntoUrl>(&self, url: U) -> IdempotentRequestBuilder {
        self.request_idempotent(Method::PATCH, url)
    }

    /// Starts a `DELETE`.
    pub fn delete_idempotent<U: IntoUrl>(&self, url: U) -> IdempotentRequestBuilder {
        self.request_idempotent(Method::DELETE, url)
    }

    /// Starts a request with any method. It carries a key like the others.
    ///
    /// ```
    /// use idempotent_retry::{reqwest::Method, IdempotentClient};
    /// let client = IdempotentClient::new();
    /// let request = client.request_idempotent(Method::POST, "http://127.0.0.1:8080/refunds");
    /// # drop(request);
    /// ```
    pub fn request_idempotent<U: IntoUrl>(
        &self,
        method: Method,
        url: U,
    ) -> IdempotentRequestBuilder {
        let request = self.inner.http.request(method, url);
        IdempotentRequestBuilder::new(self.clone(), request)
    }

    /// The state of the circuit of `url`'s origin (scheme, host and port; any URL of it
    /// will do): [`CircuitState::Closed`] for an origin without one. Reading it makes
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] if `url` is not an absolute URL.
    ///
    /// ```
    /// use idempotent_retry::{CircuitState, IdempotentClient};
    /// let client = IdempotentClient::new();
    /// client.open_circuit("https://api.example.com")?;
    /// assert_eq!(client.circuit_state("https://api.example.com/v1/charges")?, CircuitState::Open);
    /// client.close_circuit("https://api.example.com")?;
    /// assert_eq!(client.circuits(), [("https://api.example.com".to_owned(), CircuitState::Closed)]);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn circuit_state(&self, url: &str) -> Result<CircuitState, Error> {
        self.inner.settings.circuit_state(url)
    }

    /// Opens the circuit of `url`'s origin until [`close_circuit`](Self::close_circuit):
    /// every send to it stops before any I/O ([`Error::is_circuit_open`]). Works with or
    /// without a [`CircuitBreaker`](crate::CircuitBreaker): for taking a dependency out
    /// by hand (maintenance, an incident).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] if `url` is not an absolute URL.
    pub fn open_circuit(&self, url: &str) -> Result<(), Error> {
        self.inner.settings.open_circuit(url)
    }

    /// Closes the circuit of `url`'s origin, with a fresh window and the first break:
    /// after [`open_circuit`](Self::open_circuit), or to end a break early.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] if `url` is not an absolute URL.
    pub fn close_circuit(&self, url: &str) -> Result<(), Error> {
        self.inner.settings.close_circuit(url)
    }

    /// What the client holds back of `url`'s origin now: retry tokens, the circuit's
    /// state, the rate limiter's rate, and the operations stopped before an attempt,
    /// by reason. For metrics and health pages; an origin never met reads as new, and
    /// reading makes no state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] if `url` is not an absolute URL.
    ///
    /// ```
    /// use idempotent_retry::{CircuitState, IdempotentClient};
    /// let client = IdempotentClient::new();
    /// let stats = client.origin_stats("https://api.example.com")?;
    /// assert_eq!(stats.circuit, CircuitState::Closed);
    /// assert_eq!(stats.rate_limit, None);
    /// assert_eq!(stats.refused_circuit_open, 0);
    /// # Ok::<(), idempotent_retry::Error>(())
    /// ```
    pub fn origin_stats(&self, url: &str) -> Result<crate::OriginStats, Error> {
        self.inner.settings.origin_stats(url)
    }

    /// Every origin that has a circuit, with its state, sorted by origin: for a health
    /// page.
    #[must_use]
    pub fn circuits(&self) -> Vec<(String, CircuitState)> {
        self.inner.settings.retry.origins.circuits()
    }

    /// The journal's operations that are not completed, oldest first: pending ones, and
    /// those that need a person's attention (`needs_attention` says why). The oldest
    /// pending age against the journal's `max_resume_age` is the figure to alert on.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) without a journal;
    /// [`Error::Journal`](crate::Error::Journal) if it cannot be
    /// read.
    pub async fn pending(&self) -> Result<Vec<crate::journal::PendingOperation>, crate::Error> {
        crate::journaled::pending(self).await
    }

    /// The answer recorded for an operation, by its id, without any I/O to its server:
    /// a completed operation's final answer, or the answer that made an operation need
    /// attention (a resumed send's 401, say); `None` when there is neither (pending,
    /// abandoned, past `keep_answers`, or no such id). Bodies sealed with
    /// [`seal_bodies`](crate::IdempotentClientBuilder::seal_bodies) come back opened.
    /// This is the way to an answer recorded for a request whose shape the application
    /// no longer sends (see [`journal`](crate::journal), "Deploying a new request
    /// shape").
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) without a journal;
    /// [`Error::Journal`](crate::Error::Journal) if it cannot be read, or a sealed
    /// body does not open.
    pub async fn recorded_answer(
        &self,
        operation_id: &str,
    ) -> Result<Option<crate::journal::RecordedAnswer>, crate::Error> {
        crate::journaled::recorded_answer(self, operation_id).await
    }

    /// Sends every pending operation that no live worker holds again, oldest first and
    /// up to [`resume_concurrency`](crate::IdempotentClientBuilder::resume_concurrency)
    /// at once (16 unless set), each under its own lease, with its recorded key and
    /// bytes, and the values of its secret headers from
    /// [`resume_credentials`](crate::IdempotentClientBuilder::resume_credentials) (an
    /// operation whose secrets have no value is not sent: it stays pending, reported
    /// with [`Error::CredentialsMissing`](crate::Error::CredentialsMissing)); call it
    /// when a process starts. Operations too old to resume are not sent: they are
    /// reported as needing attention.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) without a journal;
    /// [`Error::Journal`](crate::Error::Journal) if it cannot be
    /// read. Each operation's own end is in the report.
    pub async fn resume_pending(&self) -> Result<crate::journal::ResumeReport, crate::Error> {
        crate::journaled::resume_pending(self).await
    }

    /// Resumes pending operations every `interval`, forever: spawn it on a worker of a
    /// fleet, so that the operations of a worker that died are taken over once their
    /// leases run out. Each round's failure is a warning event, and the next round
    /// tries again.
    ///
    /// ```no_run
    /// # async fn run(client: idempotent_retry::IdempotentClient) {
    /// tokio::spawn(client.resumer(std::time::Duration::from_secs(30)));
    /// # }
    /// ```
    pub fn resumer(
        &self,
        interval: std::time::Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let client = self.clone();
        async move {
            loop {
                match client.resume_pending().await {
                    Ok(report) => tracing::info!(target: TARGET,
                        completed = report.completed.len(),
                        still_pending = report.still_pending.len(),
                        needs_attention = report.needs_attention.len(),
                        "resumed pending operations"
                    ),
                    Err(e) => {
                        tracing::warn!(target: TARGET, error = %e, "could not resume pending operations")
                    }
                }
                tokio::time::sleep(interval).await;
            }
        }
    }
}

impl Default for IdempotentClient {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IdempotentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner.settings;
        f.debug_struct("IdempotentClient")
            .field("policy", &inner.retry.policy)
            .field("attempt_timeout", &inner.attempt_timeout)
            .field("max_response_bytes", &inner.max_response_bytes)
            .field("key_header", &inner.key_header)
            .field("key_format", &inner.key_format)
            .field("budget", inner.retry.origins.budget())
            .field("classifier", &inner.retry.classifier.is_some())
            .field("on_retry", &inner.retry.on_retry.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_sync_and_cheap_to_clone() {
        fn assert_bounds<T: Send + Sync + Clone + 'static>() {}
        assert_bounds::<IdempotentClient>();
        let a = IdempotentClient::new();
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
    }
}
